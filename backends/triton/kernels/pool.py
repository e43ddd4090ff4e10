"""Pooling kernels (section 9.3): max, average and adaptive, forward and backward.

One kernel serves every variant. The window geometry (stride, padding, dilation, ceil_mode,
adaptive regions) is computed once at compile time by the op module's own helpers and handed
to the kernel as per-axis position tables: ``pos[axis][out_index, j]`` is the input index of
window element j, or -1 where the window reads padding. Every pooling is seen as 3-D.

* ``max``: first maximum in window order, a NaN counts as the maximum (PyTorch's rule);
  ``max_select`` reads another tensor at those positions; ``max_grad`` adds the output
  gradient there (atomic adds: windows may overlap).
* ``avg``: window sum divided by a precomputed divisor (PyTorch's count_include_pad and
  divisor_override rules); ``avg_grad`` spreads gy / divisor over the window.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import triton
import triton.language as tl

from ..runtime import cdiv, numel, to_device
from .elementwise import fill

BLOCK = 256


@triton.jit
def pool_kernel(x_ptr, v_ptr, y_ptr, tab_ptr, div_ptr, NC, D, H, W, OD, OH, OW, KD, KH, KW,
                TAB_H, TAB_W, MODE: tl.constexpr, BLOCK: tl.constexpr):
    """One output window per lane; see the module docstring for MODE."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    P = OD * OH * OW
    mask = offs < NC * P
    nc = offs // P
    p = offs % P
    od = p // (OH * OW)
    oh = (p // OW) % OH
    ow = p % OW
    base = nc.to(tl.int64) * (D * H * W)
    if MODE == "avg_grad" or MODE == "max_grad":
        gy = tl.load(v_ptr + offs, mask=mask, other=0)
    if MODE == "avg" or MODE == "avg_grad":
        div = tl.load(div_ptr + p, mask=mask, other=1)
    if MODE == "avg_grad":
        share = gy / div
    best = tl.full((BLOCK,), float("-inf"), tl.float32).to(x_ptr.dtype.element_ty)
    best_i = tl.full((BLOCK,), -1, tl.int64)
    acc = tl.zeros((BLOCK,), tl.float32).to(x_ptr.dtype.element_ty)
    for jd in range(KD):
        pd = tl.load(tab_ptr + od * KD + jd, mask=mask, other=-1)
        for jh in range(KH):
            ph = tl.load(tab_ptr + TAB_H + oh * KH + jh, mask=mask, other=-1)
            for jw in range(KW):
                pw = tl.load(tab_ptr + TAB_W + ow * KW + jw, mask=mask, other=-1)
                ok = mask & (pd >= 0) & (ph >= 0) & (pw >= 0)
                idx = (pd * H + ph) * W + pw
                if MODE == "avg":
                    acc += tl.load(x_ptr + base + idx, mask=ok, other=0)
                elif MODE == "avg_grad":
                    tl.atomic_add(y_ptr + base + idx, share, mask=ok)
                else:
                    v = tl.load(x_ptr + base + idx, mask=ok, other=float("-inf"))
                    take = ok & ((v > best) | ((v != v) & (best == best)) | (best_i < 0))
                    best = tl.where(take, v, best)
                    best_i = tl.where(take, idx, best_i)
    found = mask & (best_i >= 0)
    if MODE == "avg":
        tl.store(y_ptr + offs, (acc / div).to(y_ptr.dtype.element_ty), mask=mask)
    elif MODE == "max":
        tl.store(y_ptr + offs, best, mask=mask)
    elif MODE == "max_select":
        sel = tl.load(v_ptr + base + best_i, mask=found, other=0)
        tl.store(y_ptr + offs, sel, mask=mask)
    elif MODE == "max_grad":
        tl.atomic_add(y_ptr + base + best_i, gy, mask=found)


def position_tables(axes: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]
                    ) -> tuple[np.ndarray, list[int], list[int]]:
    """Flatten per-axis (positions (out, k), valid (out, k), start) into one int64 table of
    three axes (missing leading axes get one window of one element at 0); -1 marks padding.
    Returns (table, per-axis (out, k) sizes, per-axis offsets in the table)."""
    tabs = [np.zeros((1, 1), np.int64)] * (3 - len(axes))
    tabs += [np.where(ok, pos, -1).astype(np.int64) for pos, ok, _ in axes]
    offsets, at = [], 0
    for t in tabs:
        offsets.append(at)
        at += t.size
    return np.concatenate([t.reshape(-1) for t in tabs]), [t.shape for t in tabs], offsets


class Pool:
    """A planned pooling: ``run(x, v=None)`` for one MODE over fixed geometry."""

    def __init__(self, mode: str, in_shape, axes, divisor: np.ndarray | None, dtype: str,
                 device):
        table, shapes, offsets = position_tables(axes)
        self.mode, self.dtype, self.device = mode, dtype, device
        self.in_shape = tuple(in_shape)
        self.out_spatial = tuple(s[0] for s in shapes[3 - len(axes):])
        self.out_shape = self.in_shape[:2] + self.out_spatial
        self.table = to_device(table, "int64", device)
        div = divisor if divisor is not None else np.ones(1)
        self.div = to_device(np.asarray(div, np.float64).reshape(-1), dtype, device)
        spatial = (1,) * (3 - len(axes)) + self.in_shape[2:]
        nc = self.in_shape[0] * self.in_shape[1]
        self.args = (nc,) + spatial + tuple(s[0] for s in shapes) + tuple(
            s[1] for s in shapes) + (offsets[1], offsets[2])
        self.n = nc * numel(self.out_spatial)
        self.zeros = fill(self.in_shape, 0.0, dtype, device)

    def __call__(self, x: torch.Tensor, v: torch.Tensor | None = None) -> torch.Tensor:
        """max/avg/max_select(x, v) -> pooled; max_grad(x, gy) / avg_grad(gy) -> input grad."""
        if self.mode in ("max_grad", "avg_grad"):
            y = self.zeros()
        else:
            y = torch.empty(self.out_shape, dtype=x.dtype, device=self.device)
        if self.n:
            pool_kernel[(cdiv(self.n, BLOCK),)](x, v if v is not None else x, y, self.table,
                                                self.div, *self.args, MODE=self.mode,
                                                BLOCK=BLOCK)
        return y
