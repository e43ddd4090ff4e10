"""Lowerings of the shape ops: reshape, transpose, broadcast_to, concat, slice, pad."""
from __future__ import annotations

from llvmlite import ir

from irgraph.ops.core import normalize_axes

from .builder import Buf, i64, row_strides
from .elementwise import copy_strided, elementwise
from .lowering import lowering
from .scalar import const


@lowering("reshape", parallel=True)
def _reshape(ctx, node, ins, outs):
    (x,), (out,) = ins, outs
    flat = (out.type.size,)
    copy_strided(ctx, out, x, flat, (1,), (1,))


@lowering("broadcast_to", parallel=True)
def _broadcast_to(ctx, node, ins, outs):
    elementwise(ctx, outs, ins, lambda vs: vs[0])


@lowering("transpose", parallel=True)
def _transpose(ctx, node, ins, outs):
    (x,), (out,) = ins, outs
    src = row_strides(x.shape)
    perm = node.attrs["perm"]
    copy_strided(ctx, out, x, out.shape, row_strides(out.shape), [src[p] for p in perm])


@lowering("concat", parallel=True)
def _concat(ctx, node, ins, outs):
    (out,) = outs
    (axis,) = normalize_axes((node.attrs["axis"],), out.type.rank)
    dst = row_strides(out.shape)
    start = 0
    for x in ins:
        copy_strided(ctx, out, x, x.shape, dst, row_strides(x.shape), start * dst[axis])
        start += x.shape[axis]


@lowering("slice", parallel=True)
def _slice(ctx, node, ins, outs):
    (x,), (out,) = ins, outs
    a = node.attrs
    own = row_strides(x.shape)
    base, strides = 0, []
    for d, b0, e0, s0, st in zip(x.shape, a["starts"], a["stops"], a["steps"], own):
        start, _, step = slice(b0, e0, s0).indices(d)
        base += start * st
        strides.append(step * st)
    copy_strided(ctx, out, x, out.shape, row_strides(out.shape), strides, 0, base)


@lowering("pad", parallel=True)
def _pad(ctx, node, ins, outs):
    (x,), (out,) = ins, outs
    pads, mode = node.attrs["pads"], node.attrs["mode"]
    if out.type.size == 0:
        return
    if out.type.rank == 0:
        copy_strided(ctx, out, x, (), (), ())
        return
    _pad_index(ctx, x, out, pads, mode, node.attrs["value"])


def _pad_index(ctx, x: Buf, out: Buf, pads, mode: str, value: float) -> None:
    """One pass over the output: constant (``value`` outside x), reflect (mirror without the
    edge), replicate (edge value) or circular (wrap around) per axis, as numpy/PyTorch."""
    b = ctx.b
    src, dst = row_strides(x.shape), row_strides(out.shape)
    fill = const(out.dtype, value if out.dtype != "bool" else bool(value))
    with _index_nest(b, out.shape, ctx.split(out.shape[0])) as idx:
        off, doff, inside = i64(0), i64(0), ir.Constant(ir.IntType(1), 1)
        for ax in range(out.type.rank):
            j = b.sub(idx[ax], i64(pads[2 * ax]))
            d = x.shape[ax]
            if mode == "constant":
                ok = b.and_(b.icmp_signed(">=", j, i64(0)), b.icmp_signed("<", j, i64(d)))
                inside = b.and_(inside, ok)
            elif mode == "reflect":
                j = b.select(b.icmp_signed("<", j, i64(0)), b.neg(j), j)
                j = b.select(b.icmp_signed(">=", j, i64(d)), b.sub(i64(2 * (d - 1)), j), j)
            elif mode == "circular" and d:
                j = b.srem(b.add(b.srem(j, i64(d)), i64(d)), i64(d))
            j = _clamp(b, j, 0, max(d - 1, 0))       # never outside the buffer
            off = b.add(off, b.mul(j, i64(src[ax])))
            doff = b.add(doff, b.mul(idx[ax], i64(dst[ax])))
        if x.type.size == 0:
            out.store(b, doff, fill)
        elif mode == "constant":
            with b.if_else(inside) as (then, other):
                with then:
                    out.store(b, doff, x.load(b, off))
                with other:
                    out.store(b, doff, fill)
        else:
            out.store(b, doff, x.load(b, off))


def _clamp(b: ir.IRBuilder, j, lo: int, hi: int):
    j = b.select(b.icmp_signed("<", j, i64(lo)), i64(lo), j)
    return b.select(b.icmp_signed(">", j, i64(hi)), i64(hi), j)


class _index_nest:
    """Nested loops over ``shape`` yielding the index of each axis (outermost split)."""

    def __init__(self, b, shape, outer):
        self.b, self.shape, self.outer = b, shape, outer

    def __enter__(self):
        from .builder import for_range
        self._stack = []
        idx = []
        for ax, d in enumerate(self.shape):
            lo, hi = self.outer if ax == 0 else (i64(0), i64(d))
            cm = for_range(self.b, lo, hi, name=f"p{ax}")
            idx.append(cm.__enter__())
            self._stack.append(cm)
        return idx

    def __exit__(self, *exc):
        for cm in reversed(self._stack):
            cm.__exit__(None, None, None)
        return False

