"""Lowerings of the pooling ops (section 9.3) and their gradients.

The window geometry (positions, validity, PyTorch's divisors) comes from the registry's own
helpers in irgraph/ops/pool.py, evaluated at compile time into small constant tables: per
axis and output index, the window start and the range of kernel offsets inside the input.
The generated loops then visit exactly the valid elements of each window, (N*C) planes split
across threads; a gradient scatters only into its own plane, so threads never collide.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from llvmlite import ir

from irgraph.ops.pool import (adaptive_avg_geometry, adaptive_axes, avg_geometry,
                              max_axes)

from .builder import F64, REGISTER, Buf, for_range, i64, prod, row_strides, strided_nest
from .gemm import tiling
from .lowering import lowering
from . import scalar as sc
from .scalar import FLOATS, const


@dataclass
class Geometry:
    spatial: tuple[int, ...]          # input spatial shape
    out: tuple[int, ...]              # output spatial shape
    start: list[np.ndarray]           # per axis, (out,) window starts
    kbeg: list[np.ndarray]            # per axis, first kernel offset inside the input
    kend: list[np.ndarray]            # per axis, one past the last
    step: list[int]                   # per axis, distance between kernel offsets
    div: np.ndarray | None = None     # (*out,) divisors of average pooling
    full: list[int] = None            # per axis: the window width when every window on it
                                      # lies wholly inside x (then unrolled), else 0


def _geometry(spatial, axes, steps, div=None) -> Geometry:
    start, kbeg, kend = [], [], []
    for pos, ok, st in axes:
        anyv = ok.any(axis=1)
        first = np.where(anyv, ok.argmax(axis=1), 0)
        last = np.where(anyv, ok.shape[1] - ok[:, ::-1].argmax(axis=1), 0)
        start.append(pos[:, 0].astype(np.int64))
        kbeg.append(first.astype(np.int64))
        kend.append(last.astype(np.int64))
    out = tuple(len(s) for s in start)
    full = [int(ok.shape[1]) if ok.all() and ok.shape[1] <= UNROLL else 0 for _, ok, _ in axes]
    return Geometry(tuple(spatial), out, start, kbeg, kend, list(steps),
                    None if div is None else np.broadcast_to(div, out).astype(np.float64), full)


UNROLL = 8      # window widths up to this are unrolled when no window leaves the input


def _regular(node, spatial, avg: bool) -> Geometry:
    a = node.attrs
    if avg:
        axes, div = avg_geometry(tuple(spatial), a)
        return _geometry(spatial, axes, [1] * len(spatial), div)
    return _geometry(spatial, max_axes((0, 0) + tuple(spatial), a), a["dilation"])


def _adaptive(node, spatial, avg: bool) -> Geometry:
    out = node.attrs["output_size"]
    if avg:
        axes, div = adaptive_avg_geometry(tuple(spatial), out)
        return _geometry(spatial, axes, [1] * len(spatial), div)
    return _geometry(spatial, adaptive_axes(tuple(spatial), out), [1] * len(spatial))


def _windows(ctx, geo: Geometry, planes: int, on_window):
    """Loops: planes (thread-split), output positions; calls
    ``on_window(plane, out_flat, visit)`` where ``visit(fn)`` loops over the window's valid
    elements calling ``fn(in_flat)`` (offsets within the plane)."""
    b = ctx.b
    d = len(geo.out)
    tables = [(ctx.global_array("pool.start", geo.start[i]),
               ctx.global_array("pool.kbeg", geo.kbeg[i]),
               ctx.global_array("pool.kend", geo.kend[i])) for i in range(d)]
    ostr, istr = row_strides(geo.out), row_strides(geo.spatial)
    lo, hi = ctx.split(planes)
    with for_range(b, lo, hi, "plane") as plane:
        _out_loops(ctx, geo, tables, ostr, istr, plane, on_window, 0, [])


def _out_loops(ctx, geo, tables, ostr, istr, plane, on_window, ax, idx):
    b = ctx.b
    if ax == len(geo.out):
        oflat = i64(0)
        for i, o in enumerate(idx):
            oflat = b.add(oflat, b.mul(o, i64(ostr[i])))

        def visit(fn):
            _k_loops(ctx, geo, tables, istr, idx, fn, 0, i64(0))
        on_window(plane, oflat, visit)
        return
    with for_range(b, 0, geo.out[ax], f"o{ax}") as o:
        _out_loops(ctx, geo, tables, ostr, istr, plane, on_window, ax + 1, idx + [o])


def _k_loops(ctx, geo, tables, istr, idx, fn, ax, acc):
    b = ctx.b
    if ax == len(idx):
        fn(acc)
        return
    start_t, kbeg_t, kend_t = tables[ax]
    o = idx[ax]
    start = b.load(b.gep(start_t, [o]))
    if geo.full[ax]:              # every window whole: a fixed, unrolled run of offsets
        for k in range(geo.full[ax]):
            pos = b.add(start, i64(k * geo.step[ax]))
            _k_loops(ctx, geo, tables, istr, idx, fn, ax + 1,
                     b.add(acc, b.mul(pos, i64(istr[ax]))))
        return
    k0, k1 = b.load(b.gep(kbeg_t, [o])), b.load(b.gep(kend_t, [o]))
    with for_range(b, k0, k1, f"k{ax}") as k:
        pos = b.add(start, b.mul(k, i64(geo.step[ax])))
        _k_loops(ctx, geo, tables, istr, idx, fn, ax + 1, b.add(acc, b.mul(pos, i64(istr[ax]))))


def _argmax_window(ctx, x: Buf, xbase, visit, dt, whole: bool = False):
    """(found, best value, flat index) of the window's first maximum; NaN wins. ``whole``:
    every window is whole and unrolled (``_whole``), so its first element starts the search."""
    b = ctx.b
    best = ctx.alloca(REGISTER[dt], "best")
    arg = ctx.alloca(REGISTER["int64"], "arg")
    have = ctx.alloca(ir.IntType(1), "have")
    b.store(const(dt, float("-inf")), best)
    b.store(i64(-1), arg)
    b.store(ir.Constant(ir.IntType(1), 0), have)
    yes = ir.Constant(ir.IntType(1), 1)

    def fn(off):
        v = x.load(b, b.add(xbase, off))
        if whole and fn.first:
            fn.first = False              # (unrolled windows: the first visit is static)
            b.store(v, best)
            b.store(off, arg)
            b.store(yes, have)
            return
        cur = b.load(best)
        better = sc.compare(ctx, dt, ">", v, cur)
        if not whole:
            better = b.or_(b.not_(b.load(have)), better)
        if dt in FLOATS:
            # NaN wins over a number: v != v while cur == cur
            better = b.or_(better, b.and_(sc.is_nan(ctx, v), b.not_(sc.is_nan(ctx, cur))))
        b.store(b.select(better, v, cur), best)
        b.store(b.select(better, off, b.load(arg)), arg)
        b.store(yes, have)
    fn.first = True
    visit(fn)
    return (yes if whole else b.load(have)), b.load(best), b.load(arg)


def _zero_plane(ctx, buf: Buf, base, size: int) -> None:
    b = ctx.b
    with for_range(b, 0, size, "z") as z:
        buf.store(b, b.add(base, z), const(buf.dtype, 0))


def _lower_max(kind: str, geo_fn):
    """kind: 'forward' (x -> y), 'grad' (x, gy -> dx), 'select' (x, v -> v at argmax)."""
    def lower(ctx, node, ins, outs):
        x, out = ins[0], outs[0]
        geo = geo_fn(node, x.shape[2:], False)
        dt, b = x.dtype, ctx.b
        isz, osz = prod(geo.spatial), prod(geo.out)
        planes = x.shape[0] * x.shape[1]

        whole = _whole(geo)
        if kind != "select" and whole and _tiles(node, geo):
            _tile_pool(ctx, node, geo, x, ins[1] if kind == "grad" else None, out, planes)
            return
        if kind == "forward" and _row_pool(ctx, node, geo, x, out, planes):
            return

        def on_window(plane, oflat, visit):
            xbase = b.mul(plane, i64(isz))
            obase = b.mul(plane, i64(osz))
            have, best, arg = _argmax_window(ctx, x, xbase, visit, dt, whole)
            if kind == "forward":
                out.store(b, b.add(obase, oflat), b.select(have, best, const(dt, "-inf")))
            elif kind == "select":
                v = ins[1].load(b, b.add(xbase, b.select(have, arg, i64(0))))
                out.store(b, b.add(obase, oflat), b.select(have, v, const(dt, 0)))
            else:
                with b.if_then(have):
                    dst = b.add(xbase, arg)
                    g = ins[1].load(b, b.add(obase, oflat))
                    out.store(b, dst, b.fadd(out.load(b, dst), g))
        if kind == "grad":
            _with_zeroed_planes(ctx, out, planes, isz, geo, on_window)
        else:
            _windows(ctx, geo, planes, on_window)
    return lower


def _tile_pool(ctx, node, geo: Geometry, x: Buf, gy: Buf | None, out: Buf, planes: int
               ) -> None:
    """max_pool (``gy`` None) or max_pool_grad over disjoint windows that tile x. The
    gradient writes every dx element once (the window's gradient at its first maximum, NaN
    first, else zero): no zeroing pass, no read-modify-write. Windows two wide along the last axis (2x2/2 pooling) run as explicit
    vectors of ``vw`` windows: deinterleaving loads, blends, interleaving stores (a scalar
    running argmax compiles to mispredicted branches)."""
    b, dt = ctx.b, x.dtype
    k = node.attrs["kernel_size"]
    istr, ostr = row_strides(geo.spatial), row_strides(geo.out)
    step = [kk * s for kk, s in zip(k, istr)]
    isz, osz = prod(geo.spatial), prod(geo.out)
    outer = list(itertools.product(*map(range, k[:-1])))   # kernel offsets but the last axis
    row_offs = [sum(i * s for i, s in zip(ks, istr)) for ks in outer]
    kl, ol = k[-1], geo.out[-1]
    vw = tiling(dt, ctx.features).vw if dt in FLOATS and kl == 2 else 0
    while vw > ol:
        vw //= 2
    vw = vw if vw >= 2 else 0
    nvec = ol // vw if vw else 0
    lo, hi = ctx.split(planes)
    with for_range(b, lo, hi, "plane") as plane:
        bases = [b.mul(plane, i64(isz)), b.mul(plane, i64(osz))]
        with strided_nest(b, geo.out[:-1], [step[:-1], ostr[:-1]], bases) as (xo, oo):
            if nvec:
                with for_range(b, 0, nvec, "jv") as jv:
                    _pairs(ctx, dt, vw, x, gy, out, b.add(xo, b.mul(jv, i64(2 * vw))),
                           b.add(oo, b.mul(jv, i64(vw))), row_offs)
                if ol % vw:     # the last vw windows again: same values, no scalar tail
                    _pairs(ctx, dt, vw, x, gy, out, b.add(xo, i64(2 * (ol - vw))),
                           b.add(oo, i64(ol - vw)), row_offs)
            with for_range(b, ol if nvec else 0, ol, "j") as j:
                xj = b.add(xo, b.mul(j, i64(kl)))
                offs = [r + c for r in row_offs for c in range(kl)]
                vals = [x.load(b, b.add(xj, i64(off))) for off in offs]
                best, choice = _first_max(ctx, dt, vals, lambda i: i64(i), i64(0))
                if gy is None:
                    out.store(b, b.add(oo, j), best)
                else:
                    g = gy.load(b, b.add(oo, j))
                    for idx, off in enumerate(offs):
                        out.store(b, b.add(xj, i64(off)), b.select(
                            b.icmp_signed("==", choice, i64(idx)), g, const(dt, 0)))


def _row_pool(ctx, node, geo: Geometry, x: Buf, out: Buf, planes: int) -> bool:
    """2-D max_pool forward as running maxima of output rows: for each output row, every
    input row of its windows updates the whole row at once (the windows wholly inside x
    along the last axis: one loop over them, vectorized across outputs, the kernel's
    columns unrolled; the few at the edges one by one). A window holding a NaN gives NaN,
    as the window scan does (here the last NaN visited). False (nothing
    emitted) where it does not apply: other ranks, adaptive windows, non-float types."""
    a = node.attrs
    if len(geo.spatial) != 2 or x.dtype not in ("float32", "float64") or \
            "kernel_size" not in a or 0 in geo.out:
        return False
    b, dt = ctx.b, x.dtype
    K1, d1 = a["kernel_size"][1], geo.step[1]
    OH, OW = geo.out
    W = geo.spatial[1]
    st = geo.start[1]
    s1 = int(st[1] - st[0]) if OW > 1 else 1
    if not np.array_equal(st, st[0] + s1 * np.arange(OW)):
        return False
    inner = np.nonzero((geo.kbeg[1] == 0) & (geo.kend[1] == K1))[0]
    i0, i1 = (int(inner[0]), int(inner[-1]) + 1) if len(inner) else (0, 0)
    if len(inner) != i1 - i0:
        return False
    edges = [ow for ow in range(OW) if not i0 <= ow < i1]
    start0, kbeg0, kend0 = (ctx.global_array(n, t[0]) for n, t in
                            (("pool.start", geo.start), ("pool.kbeg", geo.kbeg),
                             ("pool.kend", geo.kend)))
    isz, osz = prod(geo.spatial), prod(geo.out)

    def better(v, cur):
        # v where it is larger or NaN: a NaN once taken stays (nothing compares larger),
        # a later NaN replaces it (the output is NaN either way); two compares, not four
        return b.select(b.or_(sc.compare(ctx, dt, ">", v, cur), sc.is_nan(ctx, v)), v, cur)

    lo, hi = ctx.split(planes)
    with for_range(b, lo, hi, "plane") as plane:
        with for_range(b, 0, OH, "oh") as oh:
            orow = b.add(b.mul(plane, i64(osz)), b.mul(oh, i64(OW)))
            with for_range(b, 0, OW, "ow0") as ow:
                out.store(b, b.add(orow, ow), const(dt, "-inf"))
            s0 = b.load(b.gep(start0, [oh]))
            k0, k1 = b.load(b.gep(kbeg0, [oh])), b.load(b.gep(kend0, [oh]))
            with for_range(b, k0, k1, "kh") as kh:
                ih = b.add(s0, b.mul(kh, i64(geo.step[0])))
                xrow = b.add(b.mul(plane, i64(isz)), b.mul(ih, i64(W)))
                with for_range(b, i0, i1, "ow") as ow:
                    at = b.add(orow, ow)
                    v = out.load(b, at)
                    first = b.add(xrow, b.add(b.mul(ow, i64(s1)), i64(int(st[0]))))
                    for kw in range(K1):
                        v = better(x.load(b, b.add(first, i64(kw * d1))), v)
                    out.store(b, at, v)
                for ow in edges:
                    at = b.add(orow, i64(ow))
                    v = out.load(b, at)
                    for kw in range(int(geo.kbeg[1][ow]), int(geo.kend[1][ow])):
                        v = better(x.load(b, b.add(xrow, i64(int(st[ow]) + kw * d1))), v)
                    out.store(b, at, v)
    return True


def _first_max(ctx, dt, vals, index, first_index):
    """(maximum, index of its first occurrence) of ``vals``, a NaN counting as the maximum;
    scalars or vectors alike: ``index(i)`` makes the constant for position i."""
    b = ctx.b
    best, arg = vals[0], first_index
    for i, v in enumerate(vals[1:], 1):
        better = sc.compare(ctx, dt, ">", v, best)
        if dt in FLOATS:
            better = b.or_(better, b.and_(sc.is_nan(ctx, v), b.not_(sc.is_nan(ctx, best))))
        best = b.select(better, v, best)
        arg = b.select(better, index(i), arg)
    return best, arg


def _pairs(ctx, dt, vw: int, x: Buf, gy: Buf | None, out: Buf, xrow, orow, row_offs) -> None:
    """``vw`` adjacent windows, two wide along the last axis, as vectors: their maxima into
    ``out`` (forward) or ``gy`` routed to their first maxima in ``out`` (gradient)."""
    b = ctx.b
    elem = x.elem
    wide_t, vec_t = ir.VectorType(elem, 2 * vw), ir.VectorType(elem, vw)
    undef = ir.Constant(wide_t, ir.Undefined)
    ivec = ir.VectorType(ir.IntType(32), vw)
    align = 4 if dt == "float32" else 8

    def mask(ix):
        ix = list(ix)
        return ir.Constant(ir.VectorType(ir.IntType(32), len(ix)), ix)

    def vptr(buf, at, t):
        return b.bitcast(buf.at(b, at), ir.PointerType(t))
    vals = []
    for r in row_offs:
        wide = b.load(vptr(x, b.add(xrow, i64(r)), wide_t), align=align)
        vals += [b.shuffle_vector(wide, undef, mask(range(c, 2 * vw, 2))) for c in (0, 1)]
    splat = lambda i: ir.Constant(ivec, [i] * vw)      # noqa: E731
    best, arg = _first_max(ctx, dt, vals, splat, splat(0))
    if gy is None:
        b.store(best, vptr(out, orow, vec_t), align=align)
        return
    g = b.load(vptr(gy, orow, vec_t), align=align)
    zero = ir.Constant(vec_t, [0.0] * vw)
    picked = [b.select(b.icmp_signed("==", arg, splat(i)), g, zero) for i in range(len(vals))]
    inter = mask(i for p in range(vw) for i in (p, vw + p))
    for n, r in enumerate(row_offs):
        both = b.shuffle_vector(picked[2 * n], picked[2 * n + 1], inter)
        b.store(both, vptr(out, b.add(xrow, i64(r)), wide_t), align=align)


def _whole(geo: Geometry) -> bool:
    """Every window lies inside x on every axis, with its offsets unrolled."""
    return all(geo.full)


def _tiles(node, geo: Geometry) -> bool:
    """The windows are disjoint and cover x exactly (kernel == stride, no dilation, no
    padding, sizes multiples): a gradient can write each element once, zero or picked."""
    a = node.attrs
    if "kernel_size" not in a:
        return False
    return all(k == s == w and d == 1 and o * k == n for k, s, w, d, o, n in zip(
        a["kernel_size"], a["stride"], geo.full, a["dilation"], geo.out, geo.spatial))


def _with_zeroed_planes(ctx, out: Buf, planes: int, size: int, geo, on_window) -> None:
    """Zero each plane of a gradient, then scatter into it (same thread, same plane)."""
    b = ctx.b

    def wrapped(plane, oflat, visit):
        with b.if_then(b.icmp_signed("==", oflat, i64(0))):
            _zero_plane(ctx, out, b.mul(plane, i64(size)), size)
        on_window(plane, oflat, visit)
    _windows(ctx, geo, planes, wrapped)


def _lower_avg(kind: str, geo_fn):
    """kind: 'forward' (x -> mean of each window), 'grad' (gy -> dx)."""
    def lower(ctx, node, ins, outs):
        src, out = ins[0], outs[0]
        spatial = (node.attrs["input_size"] if kind == "grad" else src.shape[2:])
        geo = geo_fn(node, tuple(spatial), True)
        dt, b = src.dtype, ctx.b
        isz, osz = prod(geo.spatial), prod(geo.out)
        planes = src.shape[0] * src.shape[1]
        divs = ctx.global_array("pool.div", geo.div)
        acc = ctx.alloca(F64, "acc")

        def on_window(plane, oflat, visit):
            xbase = b.mul(plane, i64(isz))
            obase = b.mul(plane, i64(osz))
            div = b.load(b.gep(divs, [oflat]))
            if kind == "forward":
                b.store(ir.Constant(F64, 0.0), acc)
                visit(lambda off: b.store(b.fadd(b.load(acc), sc.convert(
                    ctx, dt, "float64", src.load(b, b.add(xbase, off)))), acc))
                out.store(b, b.add(obase, oflat), sc.convert(ctx, "float64", dt,
                                                             b.fdiv(b.load(acc), div)))
            else:
                g = b.fdiv(sc.convert(ctx, dt, "float64", src.load(b, b.add(obase, oflat))), div)
                gv = sc.convert(ctx, "float64", dt, g)

                def add(off):
                    dst = b.add(xbase, off)
                    out.store(b, dst, b.fadd(out.load(b, dst), gv))
                visit(add)
        if kind == "grad":
            _with_zeroed_planes(ctx, out, planes, isz, geo, on_window)
        else:
            _windows(ctx, geo, planes, on_window)
    return lower


for _name, _fn in {"max_pool": _lower_max("forward", _regular),
                   "max_pool_grad": _lower_max("grad", _regular),
                   "max_pool_select": _lower_max("select", _regular),
                   "adaptive_max_pool": _lower_max("forward", _adaptive),
                   "adaptive_max_pool_grad": _lower_max("grad", _adaptive),
                   "adaptive_max_pool_select": _lower_max("select", _adaptive),
                   "avg_pool": _lower_avg("forward", _regular),
                   "avg_pool_grad": _lower_avg("grad", _regular),
                   "adaptive_avg_pool": _lower_avg("forward", _adaptive),
                   "adaptive_avg_pool_grad": _lower_avg("grad", _adaptive)}.items():
    lowering(_name, parallel=True)(_fn)
