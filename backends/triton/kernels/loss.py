"""Loss kernels: negative log-likelihood picks (eq. 10.12-10.14) and mean squared error.

The reductions reuse the row-reduction kernel; only the pick of -log p(target) is new.
"""
from __future__ import annotations

from typing import Callable

import torch
import triton
import triton.language as tl

from ..runtime import cdiv, empty, numel
from . import elementwise as ew
from . import reduce as red

BLOCK = 256


@triton.jit
def nll_pick_kernel(logp_ptr, target_ptr, per_ptr, keep_ptr, M, C, inner, ignore_index,
                    BLOCK: tl.constexpr):
    """per[m] = -logp[n, target[m], d] (0 where ignored; NaN for a target outside [0, C)).

    ``m`` enumerates (n, d) of logp's (N, C, D) layout, ``inner`` = D.
    """
    m = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = m < M
    t = tl.load(target_ptr + m, mask=mask, other=0).to(tl.int64)
    keep = t != ignore_index
    ok = (t >= 0) & (t < C)
    n = m.to(tl.int64) // inner
    d = m.to(tl.int64) % inner
    src = (n * C + tl.where(ok, t, 0)) * inner + d
    x = tl.load(logp_ptr + src, mask=mask & keep & ok, other=0)
    per = tl.where(keep, tl.where(ok, -x, float("nan")), 0.0)
    tl.store(per_ptr + m, per.to(per_ptr.dtype.element_ty), mask=mask)
    tl.store(keep_ptr + m, keep.to(keep_ptr.dtype.element_ty), mask=mask)


def nll_loss(logp_shape, dtype: str, target_dtype: str, reduction: str, ignore_index: int,
             device) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    n, c = logp_shape[0], logp_shape[1]
    inner = numel(logp_shape[2:])
    tshape = (n,) + tuple(logp_shape[2:])
    m = n * inner
    total = red.reduce("sum", (m,), (0,), (), dtype, dtype, device)
    divide = ew.elementwise("div", (), dtype, [ew.View.of(())] * 2, [dtype] * 2, device)

    def run(logp: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        per = empty(tshape, dtype, device)
        keep = empty(tshape, dtype, device)
        if m:
            nll_pick_kernel[(cdiv(m, BLOCK),)](logp, target, per, keep, m, c, inner,
                                               ignore_index, BLOCK=BLOCK)
        if reduction == "none":
            return per
        s = total(per.view(m))
        return s if reduction == "sum" else divide(s, total(keep.view(m)))
    return run


def mse_loss(shape, dtype: str, reduction: str,
             device) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    views = [ew.View.of(shape)] * 2
    diff = ew.elementwise("sub", shape, dtype, views, [dtype] * 2, device)
    square = ew.elementwise("square", shape, dtype, views[:1], [dtype], device)
    rank = len(shape)
    total = red.reduce(reduction, shape, tuple(range(rank)), (), dtype, dtype, device) \
        if reduction != "none" else None

    def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        sq = square(diff(x, y))
        return sq if total is None else total(sq)
    return run
