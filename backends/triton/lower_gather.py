"""Triton lowerings of the gather/scatter ops (irgraph/ops/gather.py).

Indices are checked on the host before any launch (a device kernel cannot raise): one
outside ``[-n, n)`` raises the reference kernel's error (``irgraph.errors.RuntimeDataError``)
naming the node. The kernels mask every load and store by the same range test as well, so
even an unchecked index never leaves a buffer.

Scatters run without atomics: each lane owns one output position off the scatter axis and
loops over the index axis in order, so lanes never add into the same element and each
element receives its additions in index order (``np.add.at``'s order): deterministic, and
equal to the reference bit for bit.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from irgraph import Node
from irgraph.errors import RuntimeDataError
from irgraph.ops.core import wrap_dim
from irgraph.ops.gather import wrap_indices

from .kernels import elementwise as ew
from .kernels.elementwise import strided_offset
from .runtime import View, cdiv, contiguous_strides, empty, meta_tensor, numel
from .table import LowerContext, Step, lowering

BLOCK = 256


@triton.jit
def _wrap(v, n):
    v = v.to(tl.int64)
    ok = (v >= -n) & (v < n)
    return tl.where(ok, tl.where(v < 0, v + n, v), 0), ok


@triton.jit
def take_kernel(out_ptr, x_ptr, idx_ptr, total, n, k_len, post, BLOCK: tl.constexpr):
    """out (pre, K, post) = x (pre, n, post) at idx (K) on the middle axis."""
    e = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    mask = e < total
    r = e // post
    q = e % post
    p = r // k_len
    k = r % k_len
    w, ok = _wrap(tl.load(idx_ptr + k, mask=mask, other=0), n)
    v = tl.load(x_ptr + (p * n + w) * post + q, mask=mask & ok)
    tl.store(out_ptr + e, v, mask=mask)


@triton.jit
def take_along_kernel(out_ptr, x_ptr, idx_ptr, meta_ptr, total, n, stride,
                      RANK: tl.constexpr, BLOCK: tl.constexpr):
    """out[i] = x[i with i[axis] = idx[i]]; meta rows: idx shape, x strides (axis: 0)."""
    e = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    mask = e < total
    w, ok = _wrap(tl.load(idx_ptr + e, mask=mask, other=0), n)
    src = strided_offset(e, meta_ptr, 1, RANK) + w * stride
    tl.store(out_ptr + e, tl.load(x_ptr + src, mask=mask & ok), mask=mask)


@triton.jit
def index_add_kernel(out_ptr, idx_ptr, src_ptr, lanes, n, k_len, post, BLOCK: tl.constexpr):
    """out (pre, n, post) += src (pre, K, post) at idx (K); a lane per (p, q), k in order."""
    e = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    mask = e < lanes
    p = e // post
    q = e % post
    for k in range(0, k_len):
        w, ok = _wrap(tl.load(idx_ptr + k + e * 0), n)
        at = (p * n + w) * post + q
        m = mask & ok
        acc = tl.load(out_ptr + at, mask=m, other=0)
        tl.store(out_ptr + at, acc + tl.load(src_ptr + (p * k_len + k) * post + q, mask=m),
                 mask=m)


@triton.jit
def scatter_add_kernel(out_ptr, idx_ptr, src_ptr, meta_ptr, lanes, n, m_len, i_stride,
                       x_stride, RANK: tl.constexpr, BLOCK: tl.constexpr):
    """out[i with i[axis] = idx[i]] += src[i]; a lane per position off the axis, the axis in
    order. meta rows: off-axis shape, idx strides, out strides (off-axis)."""
    e = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    mask = e < lanes
    ibase = strided_offset(e, meta_ptr, 1, RANK)
    obase = strided_offset(e, meta_ptr, 2, RANK)
    for j in range(0, m_len):
        io = ibase + j * i_stride
        w, ok = _wrap(tl.load(idx_ptr + io, mask=mask, other=0), n)
        m = mask & ok
        at = obase + w * x_stride
        acc = tl.load(out_ptr + at, mask=m, other=0)
        tl.store(out_ptr + at, acc + tl.load(src_ptr + io, mask=m), mask=m)


def _checker(node: Node, n: int):
    """Host-side range check of the index tensor: the reference kernel's message."""
    loc = f" (from {node.loc})" if node.loc else ""

    negative = node.attrs.get("negative", True)

    def check(idx: torch.Tensor) -> None:
        if idx.numel() and bool(((idx < (-n if negative else 0)) | (idx >= n)).any()):
            try:
                wrap_indices(node.op, idx.cpu().numpy(), n, negative)
            except ValueError as e:
                raise RuntimeDataError(f"while running {node!r}{loc}: ValueError: {e}") \
                    from None
    return check


def _grid(total: int) -> tuple[int]:
    return (max(1, cdiv(total, BLOCK)),)


@lowering("take")
def _take(node: Node, ctx: LowerContext) -> Step:
    x, idx = node.inputs[0].type, node.inputs[1].type
    out = node.outputs[0].type
    a = wrap_dim(node.attrs["axis"], x.rank)
    n, post = x.shape[a], numel(x.shape[a + 1:])
    check = _checker(node, n)

    def step(xs: list[torch.Tensor]) -> list[torch.Tensor]:
        res = empty(out.shape, out.dtype, ctx.device)
        if out.size:
            check(xs[1])
            take_kernel[_grid(out.size)](res, xs[0], xs[1], out.size, n, idx.size, post,
                                         BLOCK=BLOCK)
        return [res]
    return step


@lowering("take_along_axis")
def _take_along_axis(node: Node, ctx: LowerContext) -> Step:
    x, idx = node.inputs[0].type, node.inputs[1].type
    a = wrap_dim(node.attrs["axis"], x.rank)
    xst = contiguous_strides(x.shape)
    meta = meta_tensor([idx.shape, tuple(0 if d == a else s for d, s in enumerate(xst))],
                       ctx.device)
    check = _checker(node, x.shape[a])

    def step(xs: list[torch.Tensor]) -> list[torch.Tensor]:
        res = empty(idx.shape, x.dtype, ctx.device)
        if idx.size:
            check(xs[1])
            take_along_kernel[_grid(idx.size)](res, xs[0], xs[1], meta, idx.size, x.shape[a],
                                               xst[a], RANK=idx.rank, BLOCK=BLOCK)
        return [res]
    return step


def _copier(t, ctx: LowerContext):
    """A fresh copy of the base an index_add / scatter_add adds into: never the operand's
    own buffer (``copy_view`` returns a contiguous operand itself), which other readers of
    that value still see (an embedding table's gradient, looked up twice, came out doubled:
    both adds went into one zero buffer)."""
    view = View.of(t.shape)
    if view.is_contiguous:
        return lambda x: x.reshape(t.shape).clone()
    return ew.copy_view(view, t.dtype, ctx.device)


@lowering("index_add")
def _index_add(node: Node, ctx: LowerContext) -> Step:
    x, idx = node.inputs[0].type, node.inputs[1].type
    a = wrap_dim(node.attrs["axis"], x.rank)
    n, pre, post = x.shape[a], numel(x.shape[:a]), numel(x.shape[a + 1:])
    copy = _copier(x, ctx)
    check = _checker(node, n)
    lanes = pre * post

    def step(xs: list[torch.Tensor]) -> list[torch.Tensor]:
        if not x.size:
            return [empty(x.shape, x.dtype, ctx.device)]
        check(xs[1])
        res = copy(xs[0])
        if idx.size:
            index_add_kernel[_grid(lanes)](res, xs[1], xs[2], lanes, n, idx.size, post,
                                           BLOCK=BLOCK)
        return [res]
    return step


@lowering("scatter_add")
def _scatter_add(node: Node, ctx: LowerContext) -> Step:
    x, idx = node.inputs[0].type, node.inputs[1].type
    a = wrap_dim(node.attrs["axis"], x.rank)
    ist, xst = contiguous_strides(idx.shape), contiguous_strides(x.shape)
    off = [d for d in range(idx.rank) if d != a]
    shape = tuple(idx.shape[d] for d in off) or (1,)
    meta = meta_tensor([shape, tuple(ist[d] for d in off) or (0,),
                        tuple(xst[d] for d in off) or (0,)], ctx.device)
    lanes = numel(shape)
    copy = _copier(x, ctx)
    check = _checker(node, x.shape[a])

    def step(xs: list[torch.Tensor]) -> list[torch.Tensor]:
        if not x.size:
            return [empty(x.shape, x.dtype, ctx.device)]
        check(xs[1])
        res = copy(xs[0])
        if idx.size:
            scatter_add_kernel[_grid(lanes)](res, xs[1], xs[2], meta, lanes, x.shape[a],
                                             idx.shape[a], ist[a], xst[a], RANK=len(shape),
                                             BLOCK=BLOCK)
        return [res]
    return step
