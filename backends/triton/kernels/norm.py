"""Batch normalization (section 8.7.1, eq. 8.34-8.36): per-channel statistics, then one
normalizing pass. x is seen as (A, C, B): A the axes before the channel axis, B those after.

The IR's ``batch_norm`` VJP is written with core ops (passes/autodiff/rules_norm.py), so
graphs differentiate through the elementwise and reduction kernels.
"""
from __future__ import annotations

from typing import Callable

import torch
import triton
import triton.language as tl

from ..runtime import cdiv, empty, next_pow2, numel

BLOCK = 1024


@triton.jit
def _store_stats(c, mean, var, M, momentum, rm_ptr, rv_ptr, mean_ptr, var_ptr, new_rm_ptr,
                 new_rv_ptr):
    """Channel c's batch mean and biased variance, and its running averages updated as
    PyTorch's (``momentum``; the running variance takes the unbiased estimate)."""
    ty = mean_ptr.dtype.element_ty
    tl.store(mean_ptr + c, mean.to(ty))
    tl.store(var_ptr + c, var.to(ty))
    rm = tl.load(rm_ptr + c).to(tl.float64)
    rv = tl.load(rv_ptr + c).to(tl.float64)
    unbiased = var * M / tl.maximum(M - 1, 1)
    tl.store(new_rm_ptr + c, ((1 - momentum) * rm + momentum * mean).to(ty))
    tl.store(new_rv_ptr + c, ((1 - momentum) * rv + momentum * unbiased).to(ty))


@triton.jit
def bn_stats_kernel(x_ptr, rm_ptr, rv_ptr, mean_ptr, var_ptr, new_rm_ptr, new_rv_ptr,
                    A, C, B, momentum, BLOCK: tl.constexpr):
    """One program per channel: mean (eq. 8.35) and biased variance (eq. 8.36, two passes for
    accuracy); running averages updated as PyTorch (unbiased variance)."""
    c = tl.program_id(0)
    M = A * B
    acc = tl.zeros((BLOCK,), tl.float64)
    for j0 in range(0, M, BLOCK):
        j = j0 + tl.arange(0, BLOCK)
        idx = (j // B).to(tl.int64) * C * B + c * B + j % B
        acc += tl.load(x_ptr + idx, mask=j < M, other=0).to(tl.float64)
    mean = tl.sum(acc, axis=0) / M
    acc2 = tl.zeros((BLOCK,), tl.float64)
    for j0 in range(0, M, BLOCK):
        j = j0 + tl.arange(0, BLOCK)
        idx = (j // B).to(tl.int64) * C * B + c * B + j % B
        d = tl.load(x_ptr + idx, mask=j < M, other=0).to(tl.float64) - mean
        acc2 += tl.where(j < M, d * d, 0.0)
    var = tl.sum(acc2, axis=0) / M
    _store_stats(c, mean, var, M, momentum, rm_ptr, rv_ptr, mean_ptr, var_ptr, new_rm_ptr,
                 new_rv_ptr)


@triton.jit
def bn_partial_kernel(x_ptr, part_ptr, A, C, B, J_PER, BLOCK: tl.constexpr):
    """Program (c, s): float64 sums of (x - x0) and (x - x0)^2 over the s-th J_PER elements
    of channel c, shifted by the channel's first element x0 against cancellation."""
    c = tl.program_id(0)
    s = tl.program_id(1)
    M = A * B
    x0 = tl.load(x_ptr + c * B).to(tl.float64)
    s1 = tl.zeros((BLOCK,), tl.float64)
    s2 = tl.zeros((BLOCK,), tl.float64)
    hi = tl.minimum(M, (s + 1) * J_PER)
    for j0 in range(s * J_PER, hi, BLOCK):
        j = j0 + tl.arange(0, BLOCK)
        idx = (j // B).to(tl.int64) * C * B + c * B + j % B
        d = tl.load(x_ptr + idx, mask=j < hi, other=0).to(tl.float64) - x0
        d = tl.where(j < hi, d, 0.0)
        s1 += d
        s2 += d * d
    base = (c * tl.num_programs(1) + s) * 2
    tl.store(part_ptr + base, tl.sum(s1, axis=0))
    tl.store(part_ptr + base + 1, tl.sum(s2, axis=0))


@triton.jit
def bn_combine_kernel(x_ptr, part_ptr, rm_ptr, rv_ptr, mean_ptr, var_ptr, new_rm_ptr,
                      new_rv_ptr, C, B, M, SPLITS, momentum, BLOCK: tl.constexpr):
    """Per channel: mean and biased variance from the partial sums; running averages."""
    c = tl.program_id(0)
    s1 = tl.zeros((BLOCK,), tl.float64)
    s2 = tl.zeros((BLOCK,), tl.float64)
    for k0 in range(0, SPLITS, BLOCK):
        k = k0 + tl.arange(0, BLOCK)
        s1 += tl.load(part_ptr + (c * SPLITS + k) * 2, mask=k < SPLITS, other=0)
        s2 += tl.load(part_ptr + (c * SPLITS + k) * 2 + 1, mask=k < SPLITS, other=0)
    d1 = tl.sum(s1, axis=0) / M
    var = tl.maximum(tl.sum(s2, axis=0) / M - d1 * d1, 0.0)
    mean = tl.load(x_ptr + c * B).to(tl.float64) + d1
    _store_stats(c, mean, var, M, momentum, rm_ptr, rv_ptr, mean_ptr, var_ptr, new_rm_ptr,
                 new_rv_ptr)


SPLIT_ABOVE = 1 << 15     # values per channel above which statistics split over programs
SPLIT_CHUNK = 1 << 14


def channel_stats(a: int, c: int, b: int, dtype: str, device):
    """Plan ``(x, rm, rv, momentum) -> (mean, var, new_rm, new_rv)``: one two-pass program
    per channel, or, for many values per channel, partial sums over a (C, splits) grid."""
    m = a * b
    splits = cdiv(m, SPLIT_CHUNK) if m > SPLIT_ABOVE else 1

    def run(x, rm, rv, momentum: float) -> list[torch.Tensor]:
        outs = [empty((c,), dtype, device) for _ in range(4)]
        if not c:
            return outs
        if splits == 1:
            bn_stats_kernel[(c,)](x, rm, rv, *outs, a, c, b, momentum, BLOCK=BLOCK)
            return outs
        part = torch.empty((c, splits, 2), dtype=torch.float64, device=device)
        bn_partial_kernel[(c, splits)](x, part, a, c, b, SPLIT_CHUNK, BLOCK=BLOCK)
        bn_combine_kernel[(c,)](x, part, rm, rv, *outs, c, b, m, splits, momentum,
                                BLOCK=min(1024, next_pow2(splits)))
        return outs
    return run


@triton.jit
def bn_apply_kernel(x_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, y_ptr, n, C, B, eps,
                    BLOCK: tl.constexpr):
    """y = gamma (x - mu) / sqrt(var + eps) + beta (eq. 8.34)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    c = (offs // B) % C
    x = tl.load(x_ptr + offs, mask=mask, other=0)
    mean = tl.load(mean_ptr + c, mask=mask, other=0)
    var = tl.load(var_ptr + c, mask=mask, other=1)
    g = tl.load(gamma_ptr + c, mask=mask, other=0)
    b = tl.load(beta_ptr + c, mask=mask, other=0)
    y = g * ((x - mean) / tl.sqrt(var + eps)) + b
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


def batch_norm(shape, axis: int, training: bool, eps: float, momentum: float, dtype: str,
               device) -> Callable[..., list[torch.Tensor]]:
    """Plan ``(x, gamma, beta, running_mean, running_var) -> (y, new_mean, new_var)``."""
    axis %= len(shape)
    a, c, b = numel(shape[:axis]), shape[axis], numel(shape[axis + 1:])
    n = numel(shape)

    stats = channel_stats(a, c, b, dtype, device)

    def run(x, gamma, beta, rm, rv) -> list[torch.Tensor]:
        if training:
            mean, var, new_rm, new_rv = stats(x, rm, rv, float(momentum))
        else:
            mean, var, new_rm, new_rv = rm, rv, rm, rv
        y = empty(shape, dtype, device)
        if n:
            bn_apply_kernel[(cdiv(n, BLOCK),)](x, mean, var, gamma, beta, y, n, c, b,
                                               float(eps), BLOCK=BLOCK)
        return [y, new_rm, new_rv]
    return run
