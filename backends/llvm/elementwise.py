"""Elementwise loop nests: one coalesced, thread-split loop nest per node, broadcasting by
zero strides. The inner loop is unit-stride where the operands allow, so LLVM vectorizes it.
"""
from __future__ import annotations

from typing import Callable, Sequence

from llvmlite import ir

from .builder import Buf, broadcast_strides, coalesce, i64, row_strides, strided_nest
from .lowering import Ctx

ScalarFn = Callable[[list[ir.Value]], "ir.Value | list[ir.Value]"]

# the dimensions a size-generic kernel's lowering sees its tensors with (module.size_generic:
# the output's coalesced dimensions, in order; an input has 1 where it broadcasts):
# ``elementwise`` loops over the kernel's dimension arguments instead, with strides computed
# from them. A lowering that used these numbers in any other way would compute wrong
# results at every size, not silently at some.
RUNTIME_DIMS = (1009, 1013, 1019, 1021)


def runtime_strides(b: ir.IRBuilder, dims: Sequence[ir.Value], reads: Sequence[bool]):
    """Row-major strides over ``dims`` of an operand that walks the dimensions where
    ``reads`` is true (0 where it broadcasts); the innermost one read stays the constant 1."""
    out: list = [0] * len(dims)
    acc = 1
    for i in reversed(range(len(dims))):
        if reads[i]:
            out[i] = acc
            acc = dims[i] if acc == 1 else b.mul(acc, dims[i])
    return out


def loop_dims(ctx: Ctx, shape: Sequence[int], strides: Sequence[Sequence[int]]):
    """The coalesced loop nest over ``shape`` (``builder.coalesce``): (dimensions, strides
    per operand). In a size-generic kernel (``module.size_generic``) the dimensions are the
    kernel's arguments and the strides are computed from them."""
    cshape, cstrides = coalesce(shape, strides)
    if ctx.runtime_dims is None:
        return cshape, cstrides
    dims = ctx.runtime_dims
    if cshape != RUNTIME_DIMS[:len(dims)]:
        raise AssertionError(f"llvm backend: a size-generic kernel over shape {shape}")
    return tuple(dims), [runtime_strides(ctx.b, dims, [x != 0 for x in st])
                         for st in cstrides]


def elementwise(ctx: Ctx, outs: Sequence[Buf], ins: Sequence[Buf], fn: ScalarFn,
                parallel: bool = True) -> None:
    """outs[k][i] = fn([x[i] for x in ins])[k] over the (common) output shape."""
    shape = outs[0].shape
    strides = [row_strides(shape)] * len(outs) + [broadcast_strides(x.shape, shape)
                                                  for x in ins]
    cshape, cstrides = loop_dims(ctx, shape, strides)
    if not cshape:
        with ctx.thread0():
            _body(ctx, outs, ins, fn, [i64(0)] * len(strides))
        return
    outer = ctx.split(cshape[0]) if parallel else None
    with strided_nest(ctx.b, cshape, cstrides, outer=outer) as offs:
        _body(ctx, outs, ins, fn, offs)


def _body(ctx: Ctx, outs, ins, fn, offs) -> None:
    b = ctx.b
    vals = [x.load(b, o) for x, o in zip(ins, offs[len(outs):])]
    res = fn(vals)
    res = res if isinstance(res, (list, tuple)) else [res]
    for out, o, v in zip(outs, offs, res):
        out.store(b, o, v)


def copy_strided(ctx: Ctx, dst: Buf, src: Buf, shape: Sequence[int],
                 dst_strides: Sequence[int], src_strides: Sequence[int],
                 dst_base: int = 0, src_base: int = 0, parallel: bool = True) -> None:
    """dst[dst_base + i.dst_strides] = src[src_base + i.src_strides] over ``shape``."""
    cshape, (ds, ss) = coalesce(shape, [dst_strides, src_strides])
    if any(d == 0 for d in shape):
        return
    b = ctx.b
    if not cshape:
        with ctx.thread0():
            dst.store(b, i64(dst_base), src.load(b, i64(src_base)))
        return
    outer = ctx.split(cshape[0]) if parallel else None
    with strided_nest(b, cshape, [ds, ss], [i64(dst_base), i64(src_base)], outer) as (do, so):
        dst.store(b, do, src.load(b, so))
