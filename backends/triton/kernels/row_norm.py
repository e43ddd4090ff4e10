"""Normalization over the trailing axes (layer, group and instance norm: ``fused`` regions of
kind ``normalize``, passes/layer_regions.py) in one kernel.

x is seen as (R, N): R rows of N elements. One program takes ``ROWS`` rows and sweeps each
twice in blocks of ``BLOCK`` elements, each element shifted by the row's first one (exact in
floating point for elements near it, so a large mean costs no digits: ``x - mean`` is
``(x - x0) - (mean - x0)``). The first sweep gathers the statistics: per block, the exact
mean and sum of squared deviations of its shifted elements (two passes over registers),
merged into the row's running count, mean and sum of squares with the parallel-variance
formula (Chan, Golub and LeVeque), so a long row cancels no digits either. The second sweep
writes ``y = (x - mean) * rsqrt(var + eps)``, times the weight, plus the bias, and the
intermediates the region exports (the backward reads ``x - mean``, the reciprocal deviation
and ``y``). A row within one block is read once more by the second sweep, from the cache.

Statistics accumulate in float32 (float64 for float64 rows); 16-bit operands widen on load
and every stored result is rounded once (``store_as``).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import triton
import triton.language as tl

from ..runtime import cdiv, empty, next_pow2
from .elementwise import store_as, widen

# what a region may export besides its output: one value per row, or one per element
ROW_ROLES = ("mean", "var", "vare", "r")
FULL_ROLES = ("d", "sq", "y", "yw")
MAX_BLOCK = 4096          # the longest block of a row in registers (longer rows loop)
TILE = 4096               # elements per program: short rows are taken several at a time


@triton.jit
def row_norm_kernel(x_ptr, w_ptr, b_ptr, out_ptr, mean_ptr, var_ptr, vare_ptr, r_ptr,
                    d_ptr, sq_ptr, y_ptr, yw_ptr, R, N, eps,
                    HAS_W: tl.constexpr, HAS_B: tl.constexpr, STORE_MEAN: tl.constexpr,
                    STORE_VAR: tl.constexpr, STORE_VARE: tl.constexpr, STORE_R: tl.constexpr,
                    STORE_D: tl.constexpr, STORE_SQ: tl.constexpr, STORE_Y: tl.constexpr,
                    STORE_YW: tl.constexpr, CENTERED: tl.constexpr, WIDE: tl.constexpr,
                    ROWS: tl.constexpr, BLOCK: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    live = rows < R
    first = rows.to(tl.int64) * N
    base = first[:, None]
    cols = tl.arange(0, BLOCK)
    if WIDE:
        zero = tl.zeros((ROWS,), tl.float64)
    else:
        zero = tl.zeros((ROWS,), tl.float32)
    if CENTERED:
        shift = widen(tl.load(x_ptr + first, mask=live, other=0)).to(zero.dtype)
    else:                                   # an RMS norm: mean(x * x), x itself
        shift = zero
    count = zero
    mean = zero
    m2 = zero
    for start in range(0, N, BLOCK):
        c = start + cols
        inside = live[:, None] & (c < N)[None, :]
        x = widen(tl.load(x_ptr + base + c[None, :], mask=inside, other=0)).to(zero.dtype)
        x = tl.where(inside, x - shift[:, None], 0.0)
        if CENTERED:
            nb = (tl.minimum(N - start, BLOCK) + zero).to(zero.dtype)
            mb = tl.sum(x, axis=1) / nb
            db = tl.where(inside, x - mb[:, None], 0.0)
            m2b = tl.sum(db * db, axis=1)
            delta = mb - mean
            total = count + nb
            mean = mean + delta * (nb / total)
            m2 = m2 + m2b + delta * delta * (count * (nb / total))
            count = total
        else:
            m2 = m2 + tl.sum(x * x, axis=1)
    var = m2 / N
    vare = var + eps
    if WIDE:
        r = 1.0 / tl.sqrt(vare)             # float64: correctly rounded
    else:
        r = 1.0 / tl.sqrt_rn(vare)
    if STORE_MEAN:
        tl.store(mean_ptr + rows, store_as(shift + mean, mean_ptr.dtype.element_ty), mask=live)
    if STORE_VAR:
        tl.store(var_ptr + rows, store_as(var, var_ptr.dtype.element_ty), mask=live)
    if STORE_VARE:
        tl.store(vare_ptr + rows, store_as(vare, vare_ptr.dtype.element_ty), mask=live)
    if STORE_R:
        tl.store(r_ptr + rows, store_as(r, r_ptr.dtype.element_ty), mask=live)
    for start in range(0, N, BLOCK):
        c = start + cols
        inside = live[:, None] & (c < N)[None, :]
        at = base + c[None, :]
        x = widen(tl.load(x_ptr + at, mask=inside, other=0)).to(zero.dtype)
        d = (x - shift[:, None]) - mean[:, None]
        y = d * r[:, None]
        if STORE_D:
            tl.store(d_ptr + at, store_as(d, d_ptr.dtype.element_ty), mask=inside)
        if STORE_SQ:
            tl.store(sq_ptr + at, store_as(d * d, sq_ptr.dtype.element_ty), mask=inside)
        if STORE_Y:
            tl.store(y_ptr + at, store_as(y, y_ptr.dtype.element_ty), mask=inside)
        if HAS_W:
            w = widen(tl.load(w_ptr + c, mask=c < N, other=0)).to(zero.dtype)
            y = y * w[None, :]
            if STORE_YW:
                tl.store(yw_ptr + at, store_as(y, yw_ptr.dtype.element_ty), mask=inside)
        if HAS_B:
            b = widen(tl.load(b_ptr + c, mask=c < N, other=0)).to(zero.dtype)
            y = y + b[None, :]
        tl.store(out_ptr + at, store_as(y, out_ptr.dtype.element_ty), mask=inside)


def tiles(n: int) -> tuple[int, int]:
    """(ROWS, BLOCK) for rows of ``n`` elements: a row in one block up to ``MAX_BLOCK``
    (longer rows loop over blocks), and as many rows per program as fill ``TILE``."""
    block = max(16, min(next_pow2(n), MAX_BLOCK))
    return max(1, min(64, TILE // block)), block


def row_norm(shape: Sequence[int], axes: int, eps: float, dtype: str, exports: Sequence[str],
             device, centered: bool = True) -> Callable:
    """A launcher ``run(x, weight, bias) -> {role: tensor}`` (weight/bias None when absent)
    normalizing ``x`` of ``shape`` over its last ``axes`` axes; the result holds ``out`` (the
    normalized, weighted and shifted x) and each role of ``exports`` (ROW_ROLES, one value
    per row in keepdims shape, and FULL_ROLES, of x's shape). ``centered=False``: an RMS
    norm (``x * rsqrt(mean(x * x) + eps)``, then the weight and bias; no mean or d)."""
    shape = tuple(shape)
    n = 1
    for s in shape[len(shape) - axes:]:
        n *= s
    r = 1
    for s in shape[:len(shape) - axes]:
        r *= s
    row_shape = shape[:len(shape) - axes] + (1,) * axes
    known = [k for k in ROW_ROLES + FULL_ROLES if centered or k not in ("mean", "d")]
    unknown = set(exports) - set(known)
    if unknown:
        raise ValueError(f"row_norm: no result named {sorted(unknown)}; a region exports "
                         f"{known}")
    if n == 0:
        raise ValueError(f"row_norm: rows of shape {list(shape)} over the last {axes} axes "
                         "are empty")
    rows, block = tiles(n)
    grid = (cdiv(r, rows),)
    warps = 4 if rows * block <= 2048 else 8

    def run(x, weight=None, bias=None) -> dict[str, torch.Tensor]:
        got = {"out": empty(shape, dtype, device)}
        for role in exports:
            got[role] = empty(row_shape if role in ROW_ROLES else shape, dtype, device)
        if r == 0:
            return got
        x = x.contiguous()
        dummy = got["out"]
        w = weight.contiguous() if weight is not None else dummy
        b = bias.contiguous() if bias is not None else dummy
        row_norm_kernel[grid](
            x, w, b, got["out"], *(got.get(k, dummy) for k in ROW_ROLES + FULL_ROLES),
            r, n, float(eps), HAS_W=weight is not None, HAS_B=bias is not None,
            **{f"STORE_{k.upper()}": k in exports for k in ROW_ROLES + FULL_ROLES},
            CENTERED=centered, WIDE=dtype == "float64", ROWS=rows, BLOCK=block, num_warps=warps)
        return got
    return run
