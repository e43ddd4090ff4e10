"""Lowerings of the gather/scatter ops (irgraph/ops/gather.py).

Every index is range-checked before it is used: one outside ``[-n, n)`` records error 3
("an index is out of range") and its element is skipped, so no read or write ever leaves a
buffer; the executable then raises the reference's error. Negative indices wrap once.

Scatters (``index_add``, ``scatter_add``) first copy ``x`` into the output, then add: the
threads own disjoint parts of the output (rows or column ranges for ``index_add``, the
positions off the scatter axis for ``scatter_add``), so no two threads ever add into the
same element, and each element receives its additions in index order, as ``np.add.at``.
"""
from __future__ import annotations

from llvmlite import ir

from irgraph.ops.core import wrap_dim

from .builder import Buf, for_range, i64, prod, row_strides, strided_nest
from .elementwise import copy_strided
from .lowering import lowering
from .scalar import FLOATS, convert


def _checked_index(ctx, idx: Buf, off: ir.Value, n: int, negative: bool = True):
    """``idx[off]`` wrapped into [0, n), and the flag that it was in [-n, n) ([0, n) without
    ``negative``); records error 3 when it was not. Use the index only under the flag."""
    b = ctx.b
    v = convert(ctx, idx.dtype, "int64", idx.load(b, off))
    ok = b.and_(b.icmp_signed(">=", v, i64(-n if negative else 0)),
                b.icmp_signed("<", v, i64(n)))
    with b.if_then(b.not_(ok), likely=False):
        ctx.fail(3)
    w = b.select(b.icmp_signed("<", v, i64(0)), b.add(v, i64(n)), v)
    return w, ok


def _add(b: ir.IRBuilder, dtype: str, x: ir.Value, y: ir.Value) -> ir.Value:
    return b.fadd(x, y) if dtype in FLOATS else b.add(x, y)


def _copy_all(ctx, dst: Buf, src: Buf) -> None:
    st = row_strides(src.shape)
    copy_strided(ctx, dst, src, src.shape, st, st)
    ctx.barrier()


@lowering("take", parallel=True)
def _take(ctx, node, ins, outs):
    (x, idx), (out,) = ins, outs
    if out.type.size == 0:
        return
    a = wrap_dim(node.attrs["axis"], len(x.shape))
    n, pre, post = x.shape[a], prod(x.shape[:a]), prod(x.shape[a + 1:])
    k_len = idx.type.size
    b = ctx.b
    lo, hi = ctx.split(pre * k_len)
    with for_range(b, lo, hi, "row") as r:
        p, k = b.sdiv(r, i64(k_len)), b.srem(r, i64(k_len))
        w, ok = _checked_index(ctx, idx, k, n, node.attrs.get("negative", True))
        with b.if_then(ok):
            src = b.mul(b.add(b.mul(p, i64(n)), w), i64(post))
            dst = b.mul(r, i64(post))
            with for_range(b, 0, post, "q") as q:
                out.store(b, b.add(dst, q), x.load(b, b.add(src, q)))


@lowering("take_along_axis", parallel=True)
def _take_along_axis(ctx, node, ins, outs):
    (x, idx), (out,) = ins, outs
    if out.type.size == 0:
        return
    a = wrap_dim(node.attrs["axis"], len(x.shape))
    n, xst = x.shape[a], row_strides(x.shape)
    b = ctx.b
    x_off = tuple(0 if d == a else s for d, s in enumerate(xst))
    shape = idx.shape
    with strided_nest(b, shape, [row_strides(shape), x_off],
                      outer=ctx.split(shape[0])) as (o, base):
        w, ok = _checked_index(ctx, idx, o, n)
        with b.if_then(ok):
            out.store(b, o, x.load(b, b.add(base, b.mul(w, i64(xst[a])))))


@lowering("index_add", parallel=True, meets=True)      # (a barrier after the copy)
def _index_add(ctx, node, ins, outs):
    (x, idx, src), (out,) = ins, outs
    if out.type.size == 0:
        return
    _copy_all(ctx, out, x)
    a = wrap_dim(node.attrs["axis"], len(x.shape))
    n, pre, post = x.shape[a], prod(x.shape[:a]), prod(x.shape[a + 1:])
    k_len = idx.type.size
    b = ctx.b
    # threads own whole rows p (pre > 1) or a range of columns q (pre == 1: embeddings)
    p_lo, p_hi = ctx.split(pre) if pre > 1 else (i64(0), i64(1))
    q_lo, q_hi = ctx.split(post) if pre == 1 else (i64(0), i64(post))
    with for_range(b, p_lo, p_hi, "p") as p:
        with for_range(b, 0, k_len, "k") as k:
            w, ok = _checked_index(ctx, idx, k, n)
            with b.if_then(ok):
                dst = b.mul(b.add(b.mul(p, i64(n)), w), i64(post))
                s0 = b.mul(b.add(b.mul(p, i64(k_len)), k), i64(post))
                with for_range(b, q_lo, q_hi, "q") as q:
                    at = b.add(dst, q)
                    out.store(b, at, _add(b, out.dtype, out.load(b, at),
                                          src.load(b, b.add(s0, q))))


@lowering("scatter_add", parallel=True, meets=True)    # (a barrier after the copy)
def _scatter_add(ctx, node, ins, outs):
    (x, idx, src), (out,) = ins, outs
    if out.type.size == 0:
        return
    _copy_all(ctx, out, x)
    if idx.type.size == 0:
        return
    a = wrap_dim(node.attrs["axis"], len(x.shape))
    n, xst, ist = x.shape[a], row_strides(x.shape), row_strides(idx.shape)
    b = ctx.b
    # the scatter axis innermost: a thread owns positions off the axis (disjoint outputs)
    order = [d for d in range(len(idx.shape)) if d != a] + [a]
    shape = [idx.shape[d] for d in order]
    i_st = [ist[d] for d in order]
    x_st = [0 if d == a else xst[d] for d in order]
    if len(order) > 1:
        with strided_nest(b, shape, [i_st, x_st], outer=ctx.split(shape[0])) as (o, base):
            _scatter_one(ctx, out, idx, src, o, base, n, xst[a])
    else:
        with ctx.thread0():
            with strided_nest(b, shape, [i_st, x_st]) as (o, base):
                _scatter_one(ctx, out, idx, src, o, base, n, xst[a])


def _scatter_one(ctx, out, idx, src, o, base, n, stride) -> None:
    b = ctx.b
    w, ok = _checked_index(ctx, idx, o, n)
    with b.if_then(ok):
        at = b.add(base, b.mul(w, i64(stride)))
        out.store(b, at, _add(b, out.dtype, out.load(b, at), src.load(b, o)))

