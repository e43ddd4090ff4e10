"""Batch normalization (section 8.7.1, eq. 8.34-8.36): per-channel statistics, then one
normalizing pass; and its backward (two kernels: per-channel sums, then dx).
x is seen as (A, C, B): A the axes before the channel axis, B those after.

The IR's ``batch_norm`` VJP is written with core ops (passes/autodiff/rules_norm.py), so
graphs differentiate through the elementwise and reduction kernels; ``batch_norm_backward``
is the fused form for callers holding the statistics (and for a future gradient op).
"""
from __future__ import annotations

from typing import Callable

import torch
import triton
import triton.language as tl

from ..runtime import cdiv, empty, numel

BLOCK = 1024


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
    ty = mean_ptr.dtype.element_ty
    tl.store(mean_ptr + c, mean.to(ty))
    tl.store(var_ptr + c, var.to(ty))
    rm = tl.load(rm_ptr + c).to(tl.float64)
    rv = tl.load(rv_ptr + c).to(tl.float64)
    unbiased = var * M / tl.maximum(M - 1, 1)
    tl.store(new_rm_ptr + c, ((1 - momentum) * rm + momentum * mean).to(ty))
    tl.store(new_rv_ptr + c, ((1 - momentum) * rv + momentum * unbiased).to(ty))


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


@triton.jit
def bn_grad_stats_kernel(x_ptr, gy_ptr, mean_ptr, var_ptr, dgamma_ptr, dbeta_ptr, A, C, B,
                         eps, BLOCK: tl.constexpr):
    """Per channel: dbeta = sum(gy), dgamma = sum(gy * xhat) (float64 accumulation)."""
    c = tl.program_id(0)
    M = A * B
    inv = 1.0 / tl.sqrt(tl.load(var_ptr + c).to(tl.float64) + eps)
    mean = tl.load(mean_ptr + c).to(tl.float64)
    s_gy = tl.zeros((BLOCK,), tl.float64)
    s_gx = tl.zeros((BLOCK,), tl.float64)
    for j0 in range(0, M, BLOCK):
        j = j0 + tl.arange(0, BLOCK)
        idx = (j // B).to(tl.int64) * C * B + c * B + j % B
        gy = tl.load(gy_ptr + idx, mask=j < M, other=0).to(tl.float64)
        x = tl.load(x_ptr + idx, mask=j < M, other=0).to(tl.float64)
        s_gy += gy
        s_gx += gy * (x - mean) * inv
    ty = dgamma_ptr.dtype.element_ty
    tl.store(dbeta_ptr + c, tl.sum(s_gy, axis=0).to(ty))
    tl.store(dgamma_ptr + c, tl.sum(s_gx, axis=0).to(ty))


@triton.jit
def bn_grad_input_kernel(x_ptr, gy_ptr, mean_ptr, var_ptr, gamma_ptr, dgamma_ptr, dbeta_ptr,
                         dx_ptr, n, C, B, M, eps, TRAINING: tl.constexpr,
                         BLOCK: tl.constexpr):
    """dx = gamma / sigma (gy - dbeta / M - xhat dgamma / M) in training (the batch
    statistics depend on x, eq. 8.35-8.36), gamma gy / sigma with fixed statistics."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    c = (offs // B) % C
    inv = 1.0 / tl.sqrt(tl.load(var_ptr + c, mask=mask, other=1) + eps)
    gy = tl.load(gy_ptr + offs, mask=mask, other=0)
    g = tl.load(gamma_ptr + c, mask=mask, other=0)
    if TRAINING:
        xhat = (tl.load(x_ptr + offs, mask=mask, other=0)
                - tl.load(mean_ptr + c, mask=mask, other=0)) * inv
        db = tl.load(dbeta_ptr + c, mask=mask, other=0)
        dg = tl.load(dgamma_ptr + c, mask=mask, other=0)
        dx = g * inv * (gy - db / M - xhat * dg / M)
    else:
        dx = g * inv * gy
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


def batch_norm_backward(shape, axis: int, training: bool, eps: float, dtype: str,
                        device) -> Callable[..., list[torch.Tensor]]:
    """Plan ``(x, gy, mean, var, gamma) -> (dx, dgamma, dbeta)``: the statistics are the
    batch's (training) or the running ones (inference); the running-average outputs are
    not differentiated here."""
    axis %= len(shape)
    a, c, b = numel(shape[:axis]), shape[axis], numel(shape[axis + 1:])
    n = numel(shape)

    def run(x, gy, mean, var, gamma) -> list[torch.Tensor]:
        dgamma, dbeta = empty((c,), dtype, device), empty((c,), dtype, device)
        dx = empty(shape, dtype, device)
        if c:
            bn_grad_stats_kernel[(c,)](x, gy, mean, var, dgamma, dbeta, a, c, b, float(eps),
                                       BLOCK=BLOCK)
        if n:
            bn_grad_input_kernel[(cdiv(n, BLOCK),)](x, gy, mean, var, gamma, dgamma, dbeta,
                                                    dx, n, c, b, a * b, float(eps),
                                                    TRAINING=training, BLOCK=BLOCK)
        return [dx, dgamma, dbeta]
    return run


def batch_norm_stats(shape, axis: int, dtype: str, device) -> Callable:
    """Plan ``x -> (mean, biased var)`` per channel (the statistics of eq. 8.35-8.36)."""
    axis %= len(shape)
    a, c, b = numel(shape[:axis]), shape[axis], numel(shape[axis + 1:])

    def run(x: torch.Tensor) -> list[torch.Tensor]:
        mean, var = empty((c,), dtype, device), empty((c,), dtype, device)
        dummy = empty((c,), dtype, device)
        if c:
            bn_stats_kernel[(c,)](x, mean, mean, mean, var, dummy, dummy, a, c, b, 0.0,
                                  BLOCK=BLOCK)
        return [mean, var]
    return run


def batch_norm(shape, axis: int, training: bool, eps: float, momentum: float, dtype: str,
               device) -> Callable[..., list[torch.Tensor]]:
    """Plan ``(x, gamma, beta, running_mean, running_var) -> (y, new_mean, new_var)``."""
    axis %= len(shape)
    a, c, b = numel(shape[:axis]), shape[axis], numel(shape[axis + 1:])
    n = numel(shape)

    def run(x, gamma, beta, rm, rv) -> list[torch.Tensor]:
        if training:
            mean, var = empty((c,), dtype, device), empty((c,), dtype, device)
            new_rm, new_rv = empty((c,), dtype, device), empty((c,), dtype, device)
            if c:
                bn_stats_kernel[(c,)](x, rm, rv, mean, var, new_rm, new_rv, a, c, b,
                                      float(momentum), BLOCK=BLOCK)
        else:
            mean, var, new_rm, new_rv = rm, rv, rm, rv
        y = empty(shape, dtype, device)
        if n:
            bn_apply_kernel[(cdiv(n, BLOCK),)](x, mean, var, gamma, beta, y, n, c, b,
                                               float(eps), BLOCK=BLOCK)
        return [y, new_rm, new_rv]
    return run
