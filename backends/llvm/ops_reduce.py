"""Lowerings of reductions (sum, mean, max, min, argmax), softmax, log_softmax and the
losses (nll_loss: eq. 10.12-10.14; mse_loss).

A reduction over trailing axes keeps a register accumulator per output element (threads
split the outputs); any other reduction walks the input in memory order and accumulates
into the output (unit-stride inner loop), on one thread.
"""
from __future__ import annotations

from irgraph.ops.core import normalize_axes

from .builder import REGISTER, Buf, for_range, i64, prod, row_strides, strided_nest
from .elementwise import elementwise
from .lowering import lowering
from . import scalar as sc
from .scalar import FLOATS, const


def _combine(ctx, op: str, dt: str, acc, x):
    b = ctx.b
    if op in ("max", "min"):
        return sc.maximum(ctx, dt, acc, x, want_max=(op == "max"))
    if dt == "bool":
        return b.or_(acc, x)
    if dt in FLOATS:
        r = b.fadd(acc, x)
        r.flags.append("reassoc")     # lets LLVM vectorize the sum (numpy sums pairwise)
        return r
    return b.add(acc, x)


def _identity(op: str, dt: str):
    if op in ("sum", "mean"):
        return const(dt, 0)
    if dt in FLOATS:
        return const(dt, float("-inf") if op == "max" else float("inf"))
    if dt == "bool":
        return const(dt, op == "min")
    bits = REGISTER[dt].width
    return const(dt, -(1 << (bits - 1)) if op == "max" else (1 << (bits - 1)) - 1)


def _finish(ctx, op: str, dt: str, acc, n: int):
    if op != "mean" or dt == "bool":
        return acc
    if dt in FLOATS:
        return ctx.b.fdiv(acc, const(dt, n))
    return ctx.b.sdiv(acc, const(dt, max(n, 1)))


def _split_axes(shape, axes):
    """(outer, inner) sizes when every reduced axis (of size > 1) follows every kept one."""
    big = [i for i, d in enumerate(shape) if d != 1]
    kept = [i for i in big if i not in axes]
    red = [i for i in big if i in axes]
    if kept and red and max(kept) > min(red):
        return None
    return prod([shape[i] for i in kept]), prod([shape[i] for i in red])


def _lower_reduce(ctx, node, ins, outs):
    (x,), (out,) = ins, outs
    op, dt = node.op, x.dtype
    axes = normalize_axes(node.attrs["axis"], x.type.rank)
    n = prod([x.shape[a] for a in axes])
    split = _split_axes(x.shape, axes)
    if split is not None:
        _reduce_suffix(ctx, op, dt, x, out, split[0], split[1], n)
    else:
        with ctx.thread0():
            _reduce_scatter(ctx, op, dt, x, out, axes, n)


def _reduce_suffix(ctx, op, dt, x: Buf, out: Buf, outer: int, inner: int, n: int) -> None:
    b = ctx.b
    acc = ctx.alloca(REGISTER[dt], "acc")
    lo, hi = ctx.split(outer)
    with for_range(b, lo, hi, "o") as o:
        b.store(_identity(op, dt), acc)
        base = b.mul(o, i64(inner))
        with for_range(b, 0, inner, "r") as r:
            b.store(_combine(ctx, op, dt, b.load(acc), x.load(b, b.add(base, r))), acc)
        out.store(b, o, _finish(ctx, op, dt, b.load(acc), n))


def _reduce_scatter(ctx, op, dt, x: Buf, out: Buf, axes, n: int) -> None:
    b = ctx.b
    ident = _identity(op, dt)
    elementwise(ctx, [out], [], lambda vs: ident, parallel=False)
    kept = [0 if i in axes else 1 for i in range(x.type.rank)]
    ostr = row_strides([d if k else 1 for d, k in zip(x.shape, kept)])
    ostr = [s if k else 0 for s, k in zip(ostr, kept)]
    with strided_nest(b, x.shape, [row_strides(x.shape), ostr]) as (xo, oo):
        out.store(b, oo, _combine(ctx, op, dt, out.load(b, oo), x.load(b, xo)))
    if op == "mean":
        elementwise(ctx, [out], [out], lambda vs: _finish(ctx, op, dt, vs[0], n),
                    parallel=False)


for _op in ("sum", "mean", "max", "min"):
    lowering(_op, parallel=True)(_lower_reduce)


def _axis_view(shape, axis: int) -> tuple[int, int, int]:
    """(outer, n, inner): the tensor seen as outer x n x inner around ``axis``."""
    return prod(shape[:axis]), shape[axis], prod(shape[axis + 1:])


@lowering("argmax", parallel=True)
def _argmax(ctx, node, ins, outs):
    """The first maximum; a NaN counts as the maximum (numpy's rule)."""
    (x,), (out,) = ins, outs
    (axis,) = normalize_axes((node.attrs["axis"],), x.type.rank)
    outer, n, inner = _axis_view(x.shape, axis)
    dt, b = x.dtype, ctx.b
    best = ctx.alloca(REGISTER[dt], "best")
    besti = ctx.alloca(REGISTER["int64"], "besti")
    lo, hi = ctx.split(outer * inner)
    with for_range(b, lo, hi, "p") as p:
        base = b.add(b.mul(b.sdiv(p, i64(inner)), i64(n * inner)), b.srem(p, i64(inner)))
        b.store(x.load(b, base), best)
        b.store(i64(0), besti)
        with for_range(b, 1, n, "k") as k:
            v = x.load(b, b.add(base, b.mul(k, i64(inner))))
            cur = b.load(best)
            better = sc.compare(ctx, dt, ">", v, cur)
            if dt in FLOATS:
                better = b.or_(better, b.and_(sc.is_nan(ctx, v),
                                              b.not_(sc.is_nan(ctx, cur))))
            b.store(b.select(better, v, cur), best)
            b.store(b.select(better, k, b.load(besti)), besti)
        out.store(b, p, b.load(besti))


def _softmax_like(log: bool):
    def lower(ctx, node, ins, outs):
        (x,), (out,) = ins, outs
        (axis,) = normalize_axes((node.attrs["axis"],), x.type.rank)
        outer, n, inner = _axis_view(x.shape, axis)
        dt, b = x.dtype, ctx.b
        m = ctx.alloca(REGISTER[dt], "m")
        s = ctx.alloca(REGISTER[dt], "s")
        lo, hi = ctx.split(outer * inner)
        with for_range(b, lo, hi, "p") as p:
            base = b.add(b.mul(b.sdiv(p, i64(inner)), i64(n * inner)), b.srem(p, i64(inner)))

            def at(k):
                return b.add(base, b.mul(k, i64(inner)))
            b.store(const(dt, float("-inf")), m)
            with for_range(b, 0, n, "k") as k:
                b.store(sc.maximum(ctx, dt, b.load(m), x.load(b, at(k))), m)
            mx = b.load(m)
            b.store(const(dt, 0), s)
            with for_range(b, 0, n, "k") as k:
                e = sc.call(ctx, "exp", b.fsub(x.load(b, at(k)), mx))
                if not log:
                    out.store(b, at(k), e)
                acc = b.fadd(b.load(s), e)
                acc.flags.append("reassoc")     # a vector of partial sums: the loop vectorizes
                b.store(acc, s)
            total = b.load(s)
            lse = sc.call(ctx, "log", total) if log else b.fdiv(const(dt, 1), total)
            with for_range(b, 0, n, "k") as k:
                if log:
                    out.store(b, at(k), b.fsub(b.fsub(x.load(b, at(k)), mx), lse))
                else:
                    out.store(b, at(k), b.fmul(out.load(b, at(k)), lse))
    return lower


lowering("softmax", parallel=True)(_softmax_like(False))
lowering("log_softmax", parallel=True)(_softmax_like(True))


@lowering("nll_loss", parallel=False)
def _nll_loss(ctx, node, ins, outs):
    """-logp[n, t, ...] per target; ignore_index adds nothing; mean divides by the count."""
    (logp, target), (out,) = ins, outs
    red, ignore = node.attrs["reduction"], node.attrs["ignore_index"]
    dt, b = logp.dtype, ctx.b
    N, C = logp.shape[0], logp.shape[1]
    D = prod(logp.shape[2:])
    total = ctx.alloca(REGISTER[dt], "total")
    count = ctx.alloca(REGISTER[dt], "count")
    b.store(const(dt, 0), total)
    b.store(const(dt, 0), count)
    per = ctx.alloca(REGISTER[dt], "per")
    with for_range(b, 0, N * D, "q") as q:
        t = sc.convert(ctx, target.dtype, "int64", target.load(b, q))
        b.store(const(dt, 0), per)
        keep = b.icmp_signed("!=", t, i64(ignore))
        with b.if_then(keep):
            bad = b.or_(b.icmp_signed("<", t, i64(0)), b.icmp_signed(">=", t, i64(C)))
            with b.if_else(bad) as (then, other):
                with then:
                    ctx.fail(1)
                with other:
                    nn = b.sdiv(q, i64(D))
                    j = b.srem(q, i64(D))
                    off = b.add(b.mul(b.add(b.mul(nn, i64(C)), t), i64(D)), j)
                    b.store(b.fneg(logp.load(b, off)), per)
                    b.store(b.fadd(b.load(count), const(dt, 1)), count)
        v = b.load(per)
        if red == "none":
            out.store(b, q, v)
        b.store(b.fadd(b.load(total), v), total)
    if red == "sum":
        out.store(b, i64(0), b.load(total))
    elif red == "mean":
        out.store(b, i64(0), b.fdiv(b.load(total), b.load(count)))


@lowering("mse_loss", parallel=False)
def _mse_loss(ctx, node, ins, outs):
    (x, y), (out,) = ins, outs
    dt, b = x.dtype, ctx.b
    red = node.attrs["reduction"]

    def sq(vs):
        d = b.fsub(vs[0], vs[1])
        return b.fmul(d, d)
    if red == "none":
        elementwise(ctx, outs, ins, sq, parallel=False)
        return
    total = ctx.alloca(REGISTER[dt], "total")
    b.store(const(dt, 0), total)
    with for_range(b, 0, x.type.size, "q") as q:
        d = sq([x.load(b, q), y.load(b, q)])
        r = b.fadd(b.load(total), d)
        r.flags.append("reassoc")
        b.store(r, total)
    res = b.load(total)
    if red == "mean":
        res = b.fdiv(res, const(dt, x.type.size))
    out.store(b, i64(0), res)

