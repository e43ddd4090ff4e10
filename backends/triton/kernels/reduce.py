"""Row reductions over a contiguous (M, K) matrix: sum, mean, max, min, argmax; softmax rows.

Wrappers move the reduced axes last with one strided copy (skipped when they already are),
then each program reduces BLOCK_M rows, looping over K in BLOCK_K chunks.
"""
from __future__ import annotations

from typing import Callable

import torch
import triton
import triton.language as tl

from ..runtime import View, cdiv, empty, next_pow2, numel
from .elementwise import copy_view

BLOCK_M = 16            # rows per program of argmax and softmax
SPLIT_ROWS = 128        # fewer rows than this, and long ones: split each row over programs
SPLIT_CHUNK = 8192      # columns per program when splitting


@triton.jit
def reduce_rows_kernel(x_ptr, out_ptr, M, K, K_PER, divisor, OP: tl.constexpr,
                       IS_FLOAT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """out[m, s] = OP over the s-th K_PER columns of x[m, :] (grid axis 1 splits long rows;
    ``mean`` divides by ``divisor``); max/min propagate NaN as numpy does."""
    s = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < M
    base = rows.to(tl.int64)[:, None] * K
    k_lo = s * K_PER
    k_hi = tl.minimum(K, k_lo + K_PER)
    if OP == "sum" or OP == "mean":
        acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=out_ptr.dtype.element_ty)
    else:
        first = tl.load(x_ptr + rows.to(tl.int64) * K + k_lo, mask=rmask, other=0)
        acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=x_ptr.dtype.element_ty) + first[:, None]
    nan = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.int1)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        mask = rmask[:, None] & (cols[None, :] < k_hi)
        x = tl.load(x_ptr + base + cols[None, :], mask=mask, other=0)
        if OP == "sum" or OP == "mean":
            acc += x.to(acc.dtype)
        elif OP == "max":
            acc = tl.where(mask, tl.maximum(acc, x), acc)
        else:
            acc = tl.where(mask, tl.minimum(acc, x), acc)
        if IS_FLOAT:
            nan = nan | (mask & (x != x))
    if OP == "sum" or OP == "mean":
        res = tl.sum(acc, axis=1)
        if OP == "mean":
            res = res / divisor
    elif OP == "max":
        res = tl.max(acc, axis=1)
    else:
        res = tl.min(acc, axis=1)
    if IS_FLOAT:
        if OP == "max" or OP == "min":
            res = tl.where(tl.max(nan.to(tl.int32), axis=1) > 0, float("nan"), res)
    tl.store(out_ptr + rows * tl.num_programs(1) + s, res.to(out_ptr.dtype.element_ty),
             mask=rmask)


@triton.jit
def argmax_rows_kernel(x_ptr, out_ptr, M, K, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """Index of the first maximum of each row (a NaN counts as the maximum, as in numpy)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < M
    base = rows.to(tl.int64)[:, None] * K
    best = tl.load(x_ptr + rows.to(tl.int64) * K, mask=rmask, other=0)
    best_i = tl.zeros((BLOCK_M,), dtype=tl.int64)
    found_nan = best != best
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        mask = rmask[:, None] & (cols[None, :] < K)
        x = tl.load(x_ptr + base + cols[None, :], mask=mask, other=0)
        is_nan = mask & (x != x)
        bmax = tl.max(tl.where(mask & ~is_nan, x, best[:, None]), axis=1)
        hit = mask & (x == bmax[:, None])
        bidx = tl.min(tl.where(hit, cols[None, :], K), axis=1).to(tl.int64)
        nidx = tl.min(tl.where(is_nan, cols[None, :], K), axis=1).to(tl.int64)
        take = (bmax > best) & ~found_nan
        best_i = tl.where(take, bidx, best_i)
        best = tl.where(take, bmax, best)
        new_nan = (nidx < K) & ~found_nan
        best_i = tl.where(new_nan, nidx, best_i)
        found_nan = found_nan | new_nan
    tl.store(out_ptr + rows, best_i.to(out_ptr.dtype.element_ty), mask=rmask)


@triton.jit
def softmax_rows_kernel(x_ptr, out_ptr, M, K, LOG: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_K: tl.constexpr):
    """Numerically stable (log-)softmax of each row: an online max/sum pass, then a write pass."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < M
    base = rows.to(tl.int64)[:, None] * K
    m = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32).to(x_ptr.dtype.element_ty)
    s = tl.zeros((BLOCK_M,), dtype=x_ptr.dtype.element_ty)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        mask = rmask[:, None] & (cols[None, :] < K)
        x = tl.load(x_ptr + base + cols[None, :], mask=mask, other=float("-inf"))
        m_new = tl.maximum(m, tl.max(x, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - m_safe) + tl.sum(tl.exp(x - m_safe[:, None]), axis=1)
        m = m_new
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        mask = rmask[:, None] & (cols[None, :] < K)
        x = tl.load(x_ptr + base + cols[None, :], mask=mask, other=0)
        z = x - m[:, None]
        if LOG:
            y = z - tl.log(s)[:, None]
        else:
            y = tl.exp(z) / s[:, None]
        tl.store(out_ptr + base + cols[None, :], y, mask=mask)


def _block_k(k: int) -> int:
    return min(1024, next_pow2(max(k, 1)))


def _block_m(k: int) -> int:
    """Rows per program: a (BLOCK_M, BLOCK_K) tile of about 4096 elements."""
    return max(1, min(64, 4096 // _block_k(k)))


def _row_reduce(op: str, m: int, k: int, is_float: bool, device, dtype: str
                ) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """Launch(es) reducing a contiguous (m, k) matrix into out (m,): one pass, or for few
    long rows, per-chunk partial results (grid axis 1) then a pass over the partials."""
    def launch(x, out, rows, cols, k_per, splits, stage_op, divisor):
        reduce_rows_kernel[(max(1, cdiv(rows, _block_m(k_per))), splits)](
            x, out, rows, cols, k_per, float(divisor), OP=stage_op, IS_FLOAT=is_float,
            BLOCK_M=_block_m(k_per), BLOCK_K=_block_k(k_per))

    if m >= SPLIT_ROWS or k <= 2 * SPLIT_CHUNK:
        return lambda x, out: launch(x, out, m, k, k, 1, op, k)
    splits = cdiv(k, SPLIT_CHUNK)
    first = "sum" if op == "mean" else op

    def run(x: torch.Tensor, out: torch.Tensor) -> None:
        partial = empty((m, splits), dtype, device)
        launch(x, partial, m, k, SPLIT_CHUNK, splits, first, 1)
        launch(partial, out, m, splits, splits, 1, op, k)
    return run


def rows_last(shape, axes) -> tuple[View, int, int]:
    """A view of ``shape`` with ``axes`` moved last, and its (M, K) as a matrix."""
    keep = [i for i in range(len(shape)) if i not in axes]
    perm = keep + list(axes)
    m = numel([shape[i] for i in keep])
    k = numel([shape[i] for i in axes])
    return View.of(shape).permute(perm), m, k


def reduce(op: str, shape, axes, out_shape, dtype: str, out_dtype: str,
           device) -> Callable[[torch.Tensor], torch.Tensor]:
    """Plan a reduction of ``axes`` of a ``shape`` tensor; the result has ``out_shape``."""
    view, m, k = rows_last(tuple(shape), tuple(axes))
    gather = copy_view(view, dtype, device)
    grid = (max(1, cdiv(m, BLOCK_M)),)
    is_float = dtype in ("float32", "float64")
    rowwise = _row_reduce(op, m, k, is_float, device, out_dtype) if op != "argmax" else None

    def run(x: torch.Tensor) -> torch.Tensor:
        out = empty(out_shape, out_dtype, device)
        if m == 0:
            return out
        if k == 0:
            return out.fill_(0 if op == "sum" else float("nan"))
        rows = gather(x)
        if op == "argmax":
            argmax_rows_kernel[grid](rows, out, m, k, BLOCK_M=BLOCK_M, BLOCK_K=_block_k(k))
        else:
            rowwise(rows, out)
        return out
    return run


def softmax(shape, axis: int, dtype: str, log: bool,
            device) -> Callable[[torch.Tensor], torch.Tensor]:
    view, m, k = rows_last(tuple(shape), (axis,))
    gather = copy_view(view, dtype, device)
    rank = len(shape)
    perm = [i for i in range(rank) if i != axis] + [axis]
    inv = [perm.index(i) for i in range(rank)]
    scatter = copy_view(View.of(view.shape).permute(inv), dtype, device)
    grid = (max(1, cdiv(m, BLOCK_M)),)

    def run(x: torch.Tensor) -> torch.Tensor:
        rows = gather(x)
        out = torch.empty_like(rows)
        if m and k:
            softmax_rows_kernel[grid](rows, out, m, k, LOG=log, BLOCK_M=BLOCK_M,
                                      BLOCK_K=_block_k(k))
        return scatter(out)
    return run
