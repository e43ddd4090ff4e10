"""Depthwise 2-D convolution (one input channel per group: MobileNet's 3x3 layers) as
multiply-adds into whole output rows.

im2col + GEMM would make one tiny GEMM (one row of weights, R = kh * kw) per image and
channel. Here each output plane is its own small loop nest: for an output row, every input
row its windows touch adds ``w[o, kh, kw] * x[row, ow * stride + kw * dilation - pad]`` into
the row, the outputs whose windows lie inside x along the last axis in one loop (vectorized
across outputs, the kernel's columns unrolled), the few at the edges one by one. The valid
kernel rows per output row come from tables computed at compile time. Threads split the
(image, output channel) planes.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir

from .builder import Buf, for_range, i64


def applies(x_shape, w_shape, groups: int, dtype: str) -> bool:
    """2-D, float, one input channel per group, more than one group."""
    return (len(x_shape) == 4 and dtype in ("float32", "float64") and groups > 1
            and w_shape[1] == 1 and x_shape[1] == groups)


def _axis(size: int, out: int, k: int, s: int, pad_lo: int, d: int):
    """Per output index: window start, first and one-past-last kernel offset inside x."""
    start = np.arange(out, dtype=np.int64) * s - pad_lo
    ks = np.arange(k)
    pos = start[:, None] + ks[None, :] * d
    ok = (pos >= 0) & (pos < size)
    anyv = ok.any(axis=1)
    first = np.where(anyv, ok.argmax(axis=1), 0)
    last = np.where(anyv, k - ok[:, ::-1].argmax(axis=1), 0)
    return start, first.astype(np.int64), last.astype(np.int64)


def lower(ctx, x: Buf, w: Buf, y: Buf, stride, padding, dilation) -> None:
    b = ctx.b
    N, C, H, W = x.shape
    O, _, K0, K1 = w.shape
    OH, OW = y.shape[2:]
    mult = O // C
    s0, s1 = stride
    d0, d1 = dilation
    st0, kb0, ke0 = _axis(H, OH, K0, s0, padding[0], d0)
    st1, kb1, ke1 = _axis(W, OW, K1, s1, padding[2], d1)
    inner = np.nonzero((kb1 == 0) & (ke1 == K1))[0]
    i0, i1 = (int(inner[0]), int(inner[-1]) + 1) if len(inner) else (0, 0)
    assert len(inner) == i1 - i0        # the windows inside x are one run of outputs
    edges = [ow for ow in range(OW) if not i0 <= ow < i1]
    t_start, t_beg, t_end = (ctx.global_array(n, t) for n, t in
                             (("dw.start", st0), ("dw.kbeg", kb0), ("dw.kend", ke0)))
    zero = ir.Constant(y.elem, 0.0)
    lo, hi = ctx.split(N * O)
    with for_range(b, lo, hi, "dwp") as plane:
        n, o = b.sdiv(plane, i64(O)), b.srem(plane, i64(O))
        c = b.sdiv(o, i64(mult))
        xplane = b.mul(b.add(b.mul(n, i64(C)), c), i64(H * W))
        yplane = b.mul(plane, i64(OH * OW))
        wbase = b.mul(o, i64(K0 * K1))
        with for_range(b, 0, OH, "dwoh") as oh:
            orow = b.add(yplane, b.mul(oh, i64(OW)))
            with for_range(b, 0, OW, "dwz") as ow:
                y.store(b, b.add(orow, ow), zero)
            top = b.load(b.gep(t_start, [oh]))
            k0, k1 = b.load(b.gep(t_beg, [oh])), b.load(b.gep(t_end, [oh]))
            with for_range(b, k0, k1, "dwkh") as kh:
                ih = b.add(top, b.mul(kh, i64(d0)))
                xrow = b.add(xplane, b.mul(ih, i64(W)))
                wrow = b.add(wbase, b.mul(kh, i64(K1)))
                wk = [w.load(b, b.add(wrow, i64(kw))) for kw in range(K1)]
                with for_range(b, i0, i1, "dwow") as ow:
                    at = b.add(orow, ow)
                    acc = y.load(b, at)
                    first = b.add(xrow, b.add(b.mul(ow, i64(s1)), i64(int(st1[0]))))
                    for kw in range(K1):
                        v = x.load(b, b.add(first, i64(kw * d1)))
                        acc = b.fadd(acc, b.fmul(wk[kw], v))
                    y.store(b, at, acc)
                for ow in edges:
                    at = b.add(orow, i64(ow))
                    acc = y.load(b, at)
                    for kw in range(int(kb1[ow]), int(ke1[ow])):
                        v = x.load(b, b.add(xrow, i64(int(st1[ow]) + kw * d1)))
                        acc = b.fadd(acc, b.fmul(wk[kw], v))
                    y.store(b, at, acc)
