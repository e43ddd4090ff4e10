"""Lowerings of reductions (sum, mean, max, min, argmax), softmax, log_softmax and the
losses (nll_loss: eq. 10.12-10.14; mse_loss).

Adjacent reduced (or kept) axes are merged into runs. When the last run is reduced, each
output element keeps a register accumulator over contiguous rows (threads split the
outputs); when it is kept, rows are added element-wise into output rows (threads split the
columns). Both inner loops are unit-stride and vectorize.
"""
from __future__ import annotations

from contextlib import contextmanager

from irgraph.ops.core import axis_split, normalize_axes

from llvmlite import ir

from .builder import REGISTER, Buf, for_range, i64, prod, strided_nest
from .elementwise import elementwise
from .gemm_tiling import tiling
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


def _finish(ctx, op: str, dt: str, acc, n):
    if op != "mean" or dt == "bool":
        return acc
    if dt in FLOATS:        # (n: a constant, or an i64 value in a size-generic kernel)
        return ctx.b.fdiv(acc, const(dt, n) if isinstance(n, int)
                          else sc.convert(ctx, "int64", dt, n))
    return ctx.b.sdiv(acc, const(dt, max(n, 1)))


def _groups(shape, axes) -> list[tuple[int, bool]]:
    """The tensor as runs of adjacent axes that are all reduced or all kept, each merged into
    one: [(size, reduced)] in memory order (axes of size 1 dropped)."""
    out: list[tuple[int, bool]] = []
    for i, d in enumerate(shape):
        if d == 1:
            continue
        red = i in axes
        if out and out[-1][1] == red:
            out[-1] = (out[-1][0] * d, red)
        else:
            out.append((d, red))
    return out


def _reduce_generic(node):
    """One kernel for every size of a float reduction: the runs of ``_groups`` are its
    dimensions (the output walks the kept ones), so a reduction with the same pattern of
    reduced and kept runs at other sizes shares it (``Lowering.size_generic``). A last run
    shorter than ``PAR_COLUMNS`` keeps a kernel of its size: kept, it is run by one thread;
    reduced, LLVM picks vectors for its known length (for an unknown one, the widest, four
    at a time: a shorter row would be summed by the scalar loop alone)."""
    x = node.inputs[0]
    if x.dtype not in FLOATS or x.type.size == 0:
        return None
    groups = _groups(x.shape, normalize_axes(node.attrs["axis"], x.type.rank))
    if not groups or groups[-1][0] < PAR_COLUMNS:
        return None
    return (tuple(d for d, _ in groups),
            [tuple(not r for _, r in groups), (True,) * len(groups)])


def _lower_reduce(ctx, node, ins, outs):
    (x,), (out,) = ins, outs
    op, dt = node.op, x.dtype
    if ctx.runtime_dims is not None:            # the runs' sizes are arguments
        dims = ctx.runtime_dims
        reduced = [True] * len(dims) if out.type.rank == 0 else [d == 1 for d in out.shape]
        groups = list(zip(dims, reduced))
        n = _prod(ctx.b, [d for d, r in groups if r])
    else:
        axes = normalize_axes(node.attrs["axis"], x.type.rank)
        n = prod([x.shape[a] for a in axes])
        groups = _groups(x.shape, axes) or [(1, True)]
    if groups[-1][1]:
        _reduce_rows(ctx, op, dt, x, out, groups, n)
    else:
        _reduce_columns(ctx, op, dt, x, out, groups, n)


def _group_strides(b, groups) -> list:
    return _strides(b, [d for d, _ in groups])


def _v(x):
    """An i64 of a size: a constant, or the value itself (a size-generic kernel's)."""
    return i64(x) if isinstance(x, int) else x


def _mul(b, x, y):
    if isinstance(x, int) and isinstance(y, int):
        return x * y
    if isinstance(x, int) and x == 1:
        return y
    return b.mul(_v(x), _v(y))


def _prod(b, sizes):
    acc = 1
    for d in sizes:
        acc = _mul(b, acc, d)
    return acc


def _strides(b, sizes) -> list:
    """Row-major strides of ``sizes`` (constants, or values where the sizes are)."""
    out, acc = [], 1
    for d in reversed(sizes):
        out.append(acc)
        acc = _mul(b, acc, d)
    return out[::-1]


def _reduce_rows(ctx, op, dt, x: Buf, out: Buf, groups, n: int) -> None:
    """The last run is reduced: each output element (threads split them) keeps a register
    accumulator and sums contiguous rows, one per index of the other reduced runs."""
    b = ctx.b
    xst = _group_strides(b, groups)
    kept = [(d, s) for (d, r), s in zip(groups, xst) if not r]
    outer = [(d, s) for (d, r), s in zip(groups[:-1], xst) if r]
    inner = groups[-1][0]
    acc = ctx.alloca(REGISTER[dt], "acc")
    lo, hi = ctx.split(_prod(b, [d for d, _ in kept]))
    with for_range(b, lo, hi, "o") as o:
        base, rest = i64(0), o                  # o's offset in x, kept runs row-major
        for d, s in reversed(kept):
            base = b.add(base, b.mul(b.srem(rest, _v(d)), _v(s)))
            rest = b.sdiv(rest, _v(d))
        b.store(_identity(op, dt), acc)
        with strided_nest(b, [d for d, _ in outer], [[s for _, s in outer]],
                          bases=[base]) as (row,):
            with for_range(b, 0, inner, "r") as r:
                v = x.load(b, b.add(row, r))
                b.store(_combine(ctx, op, dt, b.load(acc), v), acc)
        out.store(b, o, _finish(ctx, op, dt, b.load(acc), n))


PAR_COLUMNS = 64      # a kept last run at least this long is split across threads


def _reduce_columns(ctx, op, dt, x: Buf, out: Buf, groups, n: int) -> None:
    """The last run is kept: the input is walked in memory order and each contiguous row is
    added element-wise into its output row (a vector loop); threads split the columns."""
    inner = groups[-1][0]
    if isinstance(inner, int) and inner < PAR_COLUMNS:   # (size-generic: never)
        with ctx.thread0():
            _columns(ctx, op, dt, x, out, groups, n)
    else:
        _columns(ctx, op, dt, x, out, groups, n)


def _columns(ctx, op, dt, x: Buf, out: Buf, groups, n: int) -> None:
    b = ctx.b
    inner = groups[-1][0]
    xst = _group_strides(b, groups)[:-1]
    kept_sizes = [d for d, r in groups[:-1] if not r] + [inner]
    kept_strides = _strides(b, kept_sizes)[:-1]
    ost_kept = iter(kept_strides)
    ost = [0 if r else next(ost_kept) for (_, r) in groups[:-1]]
    shape = [d for d, _ in groups[:-1]]
    lo, hi = ctx.split(inner)
    ident = _identity(op, dt)
    kshape = [d for d, r in groups[:-1] if not r]
    with strided_nest(b, kshape, [kept_strides]) as (oo,):
        with for_range(b, lo, hi, "j") as j:
            out.store(b, b.add(oo, j), ident)
    with strided_nest(b, shape, [xst, ost]) as (xo, oo):
        with for_range(b, lo, hi, "j") as j:
            at = b.add(oo, j)
            out.store(b, at, _combine(ctx, op, dt, out.load(b, at), x.load(b, b.add(xo, j))))
    if op == "mean" and dt != "bool":
        with strided_nest(b, kshape, [kept_strides]) as (oo,):
            with for_range(b, lo, hi, "j") as j:
                at = b.add(oo, j)
                out.store(b, at, _finish(ctx, op, dt, out.load(b, at), n))


for _op in ("sum", "mean", "max", "min"):
    lowering(_op, parallel=True, size_generic=_reduce_generic)(_lower_reduce)


@contextmanager
def _lanes(ctx, x: Buf, axis: int):
    """Loop over this thread's lanes along ``axis`` (every index but the axis one); yields
    (lane, its first element's offset, the axis length, the axis stride)."""
    outer, n, inner = axis_split(x.shape, axis)   # a 0-d tensor is 1 x 1 x 1
    b = ctx.b
    lo, hi = ctx.split(outer * inner)
    with for_range(b, lo, hi, "p") as p:
        base = b.add(b.mul(b.sdiv(p, i64(inner)), i64(n * inner)), b.srem(p, i64(inner)))
        yield p, base, n, inner


@lowering("argmax", parallel=True)
def _argmax(ctx, node, ins, outs):
    """The first maximum; a NaN counts as the maximum (numpy's rule)."""
    (x,), (out,) = ins, outs
    dt, b = x.dtype, ctx.b
    best = ctx.alloca(REGISTER[dt], "best")
    besti = ctx.alloca(REGISTER["int64"], "besti")
    with _lanes(ctx, x, node.attrs["axis"]) as (p, base, n, inner):
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
        dt, b = x.dtype, ctx.b
        m = ctx.alloca(REGISTER[dt], "m")
        s = ctx.alloca(REGISTER[dt], "s")
        with _lanes(ctx, x, node.attrs["axis"]) as (_, base, n, inner):

            def at(k):
                return b.add(base, b.mul(k, i64(inner)))
            # the largest non-NaN value; a NaN in the row still makes every result NaN,
            # through exp(NaN - m) in the sum
            _row_max(ctx, x, base, n, inner, m)
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


def _row_max(ctx, x: Buf, base, n: int, inner: int, m) -> None:
    """``m`` = the largest non-NaN of the ``n`` elements ``inner`` apart from ``base``.
    Contiguous float32/float64 rows: register-wide maxnum over whole vectors, then one
    horizontal reduction; the rest (and strided rows) a scalar compare-and-select. Not a
    maxnum loop left to the vectorizer: LLVM 22 aborts the process (its cost models
    disagreeing) on such a loop over 20-23, 28-31 or 44-47 floats on AVX-512."""
    b, dt = ctx.b, x.dtype
    ty = REGISTER[dt]
    b.store(const(dt, float("-inf")), m)
    start = 0
    if inner == 1 and dt in ("float32", "float64"):
        vw = tiling(dt, ctx.features).vw
        whole = n // vw
        if whole:
            vec = ir.VectorType(ty, vw)
            acc = ctx.alloca(vec, "mvec")
            b.store(ir.Constant(vec, [float("-inf")] * vw), acc)
            suffix = f"v{vw}f{32 if dt == 'float32' else 64}"
            maxv = ctx.extern(f"llvm.maxnum.{suffix}", vec, [vec, vec])
            with for_range(b, 0, whole, "kv") as kv:
                p = b.bitcast(x.at(b, b.add(base, b.mul(kv, i64(vw)))), ir.PointerType(vec))
                v = b.load(p, align=4 if dt == "float32" else 8)     # element-aligned
                b.store(b.call(maxv, [b.load(acc), v]), acc)
            red = ctx.extern(f"llvm.vector.reduce.fmax.{suffix}", ty, [vec])
            b.store(b.call(red, [b.load(acc)]), m)
            start = whole * vw
    if start < n:
        with for_range(b, start, n, "k") as k:
            v = x.load(b, b.add(base, b.mul(k, i64(inner))))
            cur = b.load(m)
            b.store(b.select(b.fcmp_ordered(">", v, cur), v, cur), m)


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

