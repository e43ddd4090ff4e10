"""Depthwise 2-D convolution (one input channel per group: MobileNet's 3x3 layers) plane by
plane on a zero-padded copy.

im2col + GEMM would make one tiny GEMM (one row of weights, R = kh * kw) per image and
channel. Here each (image, output channel) plane is copied into a per-thread buffer with a
zero border (the border written once per call: every plane overwrites only the interior),
and every output row is one loop over its OW outputs with all the kernel's taps unrolled,
``y[oh, ow] = sum w[kh, kw] * xp[oh * s0 + kh * d0, ow * s1 + kw * d1]``: no edge cases, a
trip count known at compile time (so the vectorizer takes the row's width, however narrow),
y written once in place. Threads split the planes.

A stride splits the padded copy's columns into phases (column q in phase q % s1), so a
strided row reads each tap's inputs contiguously. Narrow planes (late layers: rows of 7 to
32) are built with explicit vectors rather than left to the vectorizer, which would run
such rows as one short vector and a scalar remainder, or not at all: each image row is
one vector load, scattered into its phase rows by shuffles (zeros at the border) and
stored as whole vectors; each output row is one vector per tap, its lanes then stored one
by one through the epilogue (``narrow``).
"""
from __future__ import annotations

from llvmlite import ir

from .builder import I32, Buf, fma_intrinsic, for_range, i64


def applies(x_shape, w_shape, groups: int, dtype: str) -> bool:
    """2-D, float, one input channel per group, more than one group."""
    return (len(x_shape) == 4 and dtype in ("float32", "float64") and groups > 1
            and w_shape[1] == 1 and x_shape[1] == groups)


def padded_shape(x_shape, padding) -> tuple[int, int]:
    return (x_shape[2] + padding[0] + padding[1], x_shape[3] + padding[2] + padding[3])


def phase_width(x_shape, padding, stride) -> int:
    """Columns of each of the ``stride[1]`` phase planes of the padded copy."""
    return -(-padded_shape(x_shape, padding)[1] // stride[1])


# phase rows at most this wide are built and read as explicit vectors (``narrow``), an
# output row's as a multiple of LANES
NARROW = 32
LANES = 8
# a stride-1 plane of at most FLAT output positions (OH x Wq, the junk columns counted) is
# computed as one flat run of vectors of FLAT_LANES (``_out_vectors``)
FLAT, FLAT_LANES = 64, 16


def narrow(x_shape, padding, stride) -> bool:
    return phase_width(x_shape, padding, stride) <= NARROW


def lanes(OW: int) -> int:
    """Lanes of a ``narrow`` output row's vectors: OW rounded up to a multiple of LANES."""
    return -(-OW // LANES) * LANES


def phase_rows(x_shape, padding, stride) -> int:
    """Rows of each phase plane: the padded rows, and for ``narrow`` rows as many more as
    a row's vector of ``lanes(Wq)`` overruns its Wq columns (written with zeros)."""
    hp = padded_shape(x_shape, padding)[0]
    if not narrow(x_shape, padding, stride):
        return hp
    wq = phase_width(x_shape, padding, stride)
    return hp + -(-(lanes(wq) - wq) // wq)


def scratch_elems(x_shape, w_shape, padding, stride, dilation) -> int:
    """Per thread: the padded plane, its columns split into ``stride[1]`` phase planes; for
    ``narrow`` rows, the output rows' vectors read past the last row's end too."""
    wq = phase_width(x_shape, padding, stride)
    slack = (max(lanes(wq), FLAT_LANES) + (w_shape[3] - 1) * dilation[1] // stride[1]
             if narrow(x_shape, padding, stride) else 0)
    return stride[1] * phase_rows(x_shape, padding, stride) * wq + slack


TINY = 160     # output positions x taps up to which a plane is one unrolled body


def _taps(size: int, out: int, k: int, s: int, pad_lo: int, d: int):
    """Per output index along one axis: [(kernel offset, input index)] inside x."""
    return [[(kk, o * s - pad_lo + kk * d) for kk in range(k)
             if 0 <= o * s - pad_lo + kk * d < size] for o in range(out)]


def _tiny(ctx, x: Buf, w: Buf, y: Buf, stride, padding, dilation, put) -> None:
    """Planes of a few outputs (late layers: 4x4, 2x2): every output of a plane written by
    straight-line code over its taps inside x (offsets known at compile time), no padded
    copy and no loops inside a plane; the loop over planes is the only one."""
    b = ctx.b
    N, C, H, W = x.shape
    _, _, K0, K1 = w.shape
    OH, OW = y.shape[2:]
    rows = _taps(H, OH, K0, stride[0], padding[0], dilation[0])
    cols = _taps(W, OW, K1, stride[1], padding[2], dilation[1])
    lo, hi = ctx.split(N * C)
    with for_range(b, lo, hi, "dwt") as plane:
        n, c = b.sdiv(plane, i64(C)), b.srem(plane, i64(C))
        xb = b.mul(plane, i64(H * W))
        wb = b.mul(b.srem(plane, i64(C)), i64(K0 * K1))
        yb = b.mul(plane, i64(OH * OW))
        wk = {}
        for oh in range(OH):
            for ow in range(OW):
                acc = ir.Constant(y.elem, 0.0)
                for kh, ih in rows[oh]:
                    for kw, iw in cols[ow]:
                        if (kh, kw) not in wk:
                            wk[kh, kw] = w.load(b, b.add(wb, i64(kh * K1 + kw)))
                        v = x.load(b, b.add(xb, i64(ih * W + iw)))
                        acc = b.fadd(acc, b.fmul(wk[kh, kw], v))
                put(b.add(yb, i64(oh * OW + ow)), (n, c, i64(oh), i64(ow)), acc)


def lower(ctx, x: Buf, w: Buf, y: Buf, stride, padding, dilation, xp, put=None) -> None:
    """``xp``: this thread's scratch of ``scratch_elems`` elements. ``put(offset, (n, o, oh,
    ow), value)`` stores each output (default: into y; a fused region applies its epilogue)."""
    b = ctx.b
    N, C, H, W = x.shape
    O, _, K0, K1 = w.shape
    OH, OW = y.shape[2:]
    mult = O // C
    if put is None:
        def put(off, idx, v):
            y.store(b, off, v)
    if mult == 1 and OH * OW * K0 * K1 <= TINY:
        _tiny(ctx, x, w, y, stride, padding, dilation, put)
        return
    s0, s1 = stride
    Hp = phase_rows(x.shape, padding, stride)
    Wq = phase_width(x.shape, padding, stride)
    vector = narrow(x.shape, padding, stride)
    zero = ir.Constant(y.elem, 0.0)
    with for_range(b, 0, scratch_elems(x.shape, w.shape, padding, stride, dilation),
                   "dwz") as i:
        b.store(zero, b.gep(xp, [i]))
    taps = phase_taps(w.shape, stride, dilation, Hp, Wq)
    lo, hi = ctx.split(N * O)
    with for_range(b, lo, hi, "dwp") as plane:
        n, o = b.sdiv(plane, i64(O)), b.srem(plane, i64(O))
        c = b.sdiv(o, i64(mult))
        xplane = b.mul(b.add(b.mul(n, i64(C)), c), i64(H * W))
        with for_range(b, 0, H, "dwh") as h:
            src = b.add(xplane, b.mul(h, i64(W)))
            row = b.mul(b.add(h, i64(padding[0])), i64(Wq))
            if vector:
                _fill_vector(b, xp, row, x, src, W, padding[2], s1, Hp, Wq)
            else:
                fill_row(ctx, xp, row, lambda iw: x.load(b, b.add(src, iw)), W, padding[2], s1,
                         Hp, Wq)
        wk = [w.load(b, b.add(b.mul(o, i64(K0 * K1)), i64(t))) for _, t in taps]
        yplane = b.mul(plane, i64(OH * OW))

        def put_at(oh, ow, acc):
            put(b.add(b.add(yplane, b.mul(oh, i64(OW))), ow), (n, o, oh, ow), acc)
        if vector:
            _out_vectors(ctx, xp, taps, wk, i64(0), i64(OH), OW, s0, Wq, put_at)
        else:
            out_rows(ctx, xp, taps, wk, i64(0), i64(OH), OW, s0, Wq, put_at, pairs=True)


def phase_taps(w_shape, stride, dilation, Hp: int, Wq: int) -> list[tuple[int, int]]:
    """(offset in the phase layout of ``Hp`` rows of ``Wq`` columns per phase, index in the
    kernel) of every tap: padded column q lands in phase q % s1, column q // s1, so a
    strided output row reads each tap's inputs contiguously."""
    K0, K1 = w_shape[2:]
    s1 = stride[1]
    d0, d1 = dilation
    return [(((kw * d1) % s1) * Hp * Wq + kh * d0 * Wq + (kw * d1) // s1, kh * K1 + kw)
            for kh in range(K0) for kw in range(K1)]


def fill_row(ctx, xp, row, value, W: int, pad_left: int, s1: int, Hp: int, Wq: int,
             border: bool = False) -> None:
    """One padded row of the phase layout (``row``: its offset in phase 0, a multiple of
    Wq): input columns iw < W from ``value(iw)`` (an ir value), into every phase; the
    border columns are left as they are (zero), or zeroed too with ``border``."""
    b = ctx.b
    for q in range(s1):
        # input columns iw = j * s1 + q - pad_left inside x, for phase columns j
        j_lo = max(0, -(-(pad_left - q) // s1))
        j_hi = max(j_lo, min(Wq, (W - 1 + pad_left - q) // s1 + 1))
        dst = b.add(i64(q * Hp * Wq), row)
        if border:
            zero = ir.Constant(xp.type.pointee, 0.0)
            for j in list(range(j_lo)) + list(range(j_hi, Wq)):
                b.store(zero, b.gep(xp, [b.add(dst, i64(j))]))
        if j_hi <= j_lo:
            continue
        with for_range(b, j_lo, j_hi, "dww") as j:
            iw = b.add(b.mul(j, i64(s1)), i64(q - pad_left))
            b.store(value(iw), b.gep(xp, [b.add(dst, j)]))


def _fill_vector(b, xp, row, x: Buf, src, W: int, pad_left: int, s1: int, Hp: int,
                 Ws: int) -> None:
    """``fill_row`` for ``narrow`` rows of ``Ws`` columns, whole: the image row ``x[src:src
    + W]`` as one vector, each phase row one shuffle of it (zeros outside the image) stored
    as one vector of ``lanes(Ws)``, whose lanes past Ws (zeros) run on into the next row
    (filled after this one, or a padding row) or the plane's spare rows (``phase_rows``)."""
    elem = xp.type.pointee
    ptr = b.bitcast(x.at(b, src), ir.PointerType(ir.VectorType(elem, W)))
    v = b.load(ptr, align=4)
    zeros = ir.Constant(ir.VectorType(elem, W), None)
    V = lanes(Ws)
    for q in range(s1):
        cols = [j * s1 + q - pad_left for j in range(V)]
        mask = [iw if 0 <= iw < W else W for iw in cols]
        r = b.shuffle_vector(v, zeros, ir.Constant(ir.VectorType(I32, V), mask))
        dst = b.gep(xp, [b.add(i64(q * Hp * Ws), row)])
        b.store(r, b.bitcast(dst, ir.PointerType(r.type)), align=4)


def _out_vectors(ctx, xp, taps, wk, r0, r1, OW: int, s0: int, Ws: int, put) -> None:
    """``out_rows`` for ``narrow`` rows of ``Ws`` columns: each output row one vector of
    ``lanes(OW)`` lanes per tap (lanes past OW read on into the next row or the scratch's
    slack, and are dropped), then ``put(r, ow, value)`` lane by lane; a whole stride-1
    plane of at most ``FLAT`` positions (7 x 7: 7 rows of 9) as one flat run of vectors
    (4 of 16 lanes per tap, not 7 of 8)."""
    b = ctx.b
    flat = (s0 == 1 and isinstance(r0, ir.Constant) and r0.constant == 0
            and isinstance(r1, ir.Constant) and r1.constant * Ws <= FLAT)
    V = FLAT_LANES if flat else lanes(OW)
    vec = ir.VectorType(xp.type.pointee, V)
    undef = ir.Constant(vec, ir.Undefined)
    bcast = ir.Constant(ir.VectorType(I32, V), [0] * V)
    wv = [b.shuffle_vector(b.insert_element(undef, w, ir.Constant(I32, 0)), undef, bcast)
          for w in wk]
    if flat:
        # stride 1: output (oh, ow) at oh * Ws + ow reads every tap at that offset plus
        # the tap's, so the whole plane (junk columns past OW included) is one run
        OH = r1.constant
        for i0 in range(0, OH * Ws, V):
            acc = tap_sum(b, [(w, b.load(b.bitcast(b.gep(xp, [i64(i0 + off)]),
                                                  ir.PointerType(vec)), align=4))
                              for (off, _), w in zip(taps, wv)])
            for lane in range(V):
                oh, ow = divmod(i0 + lane, Ws)
                if oh < OH and ow < OW:
                    put(i64(oh), i64(ow), b.extract_element(acc, ir.Constant(I32, lane)))
        return
    with for_range(b, r0, r1, "dwoh") as oh:
        top = b.mul(oh, i64(s0 * Ws))
        acc = tap_sum(b, [(w, b.load(b.bitcast(b.gep(xp, [b.add(top, i64(off))]),
                                              ir.PointerType(vec)), align=4))
                          for (off, _), w in zip(taps, wv)])
        for ow in range(OW):
            put(oh, i64(ow), b.extract_element(acc, ir.Constant(I32, ow)))


# the taps' products summed in this many chains of fused multiply-adds, then the chains
# added (one chain of nine dependent adds kept a 3x3 row's vectors waiting on each other)
TAP_CHAINS = 3


def tap_sum(b, terms):
    """sum of w * x over ``terms`` ((w, x) pairs, scalars or vectors alike): ``TAP_CHAINS``
    chains of fused multiply-adds over consecutive terms (a 3x3 kernel: one per kernel
    row), the chains then added in order."""
    fma = fma_intrinsic(b.module, terms[0][1].type)
    size = -(-len(terms) // TAP_CHAINS)
    chains = []
    for i in range(0, len(terms), size):
        w, x = terms[i]
        acc = b.fmul(w, x)
        for w, x in terms[i + 1:i + size]:
            acc = b.call(fma, [w, x, acc])
        chains.append(acc)
    total = chains[0]
    for c in chains[1:]:
        total = b.fadd(total, c)
    return total


def out_rows(ctx, xp, taps, wk, r0, r1, OW: int, s0: int, Wq: int, put,
             pairs: bool = False) -> None:
    """Output rows r0 <= r < r1 of one plane from its phase layout at ``xp`` (row r reads
    padded rows from r * s0): ``put(r, ow, value)`` for each output. With ``pairs``, rows
    go in pairs, both rows' taps loaded before either is stored, so the loads they share
    (a 3x3 kernel at stride 1: two of its three rows) are made once: a whole plane, one
    thread, ReLU6, 32 x 112 x 112 0.190 -> 0.174 ms, 144 x 56 x 56 0.198 -> 0.178, at
    stride 2 (no rows shared) 96 x 112 x 112 0.302 -> 0.290. A chain's band
    (conv_chain.py) keeps single rows: in pairs MobileNetV2 at batch 8 (its bands' rows
    stored through the expand's epilogue into the project's columns) ran 21-22 -> 25-27
    ms on two threads."""
    b = ctx.b

    def rows(oh, count: int):
        top = b.mul(oh, i64(s0 * Wq))
        with for_range(b, 0, OW, "dwow") as ow:
            at = b.add(top, ow)
            loads = {}

            def load(off):
                if off not in loads:
                    loads[off] = b.load(b.gep(xp, [b.add(at, i64(off))]))
                return loads[off]
            sums = [tap_sum(b, [(wv, load(off + k * s0 * Wq)) for (off, _), wv in zip(taps, wk)])
                    for k in range(count)]
            for k, v in enumerate(sums):
                put(b.add(oh, i64(k)), ow, v)
    if not pairs:
        with for_range(b, r0, r1, "dwoh") as oh:
            rows(oh, 1)
        return
    r0 = i64(r0) if isinstance(r0, int) else r0
    r1 = i64(r1) if isinstance(r1, int) else r1
    with for_range(b, 0, b.sdiv(b.sub(r1, r0), i64(2)), "dwoh2") as j:
        rows(b.add(r0, b.mul(j, i64(2))), 2)
    with b.if_then(b.icmp_signed("!=", b.srem(b.sub(r1, r0), i64(2)), i64(0))):
        rows(b.sub(r1, i64(1)), 1)
