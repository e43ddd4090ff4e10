"""``fused`` regions of kind ``conv_chain`` (passes/conv_chains.py: ``[pointwise] depthwise
[pointwise]`` convolution regions, MobileNet's inverted-residual block) band by band.

Threads take (image, band) pairs as claimed shares, a band being a run of rows of the
chain's output (every link keeps or, at a stride, shrinks the rows). For one band the rows
each link needs are worked out backwards (a depthwise link with stride s, padding p,
kernel k and dilation d reads input rows [r0*s - p, (r1-1)*s - p + (k-1)*d + 1), clipped to
the image; a pointwise link the rows it makes), then the links run forwards on this
thread's scratch:

* the first pointwise link (expand): one GEMM of its weights with the band's columns of the
  image (in NCHW a band of rows of one image is a range of columns of the C x H*W matrix)
  into ``T``; its epilogue (bias, ReLU6, ...) applied to each value as it is copied into
  ``D``, the depthwise link's zero-padded input rows in conv_depthwise's phase layout (the
  rows outside the image zero); without it, ``D`` is copied from the image;
* the depthwise link computes the band's output rows from ``D`` (conv_depthwise's row
  loop), its epilogue applied to each value, into ``T2`` (or the chain's output if last);
* the last pointwise link (project): one GEMM of its weights with ``T2`` written into the
  band's columns of the output, then its epilogue (bias, residual add) over them while in
  cache.

Only the chain's output is written to memory outside the scratch. Chains whose expanded
tensor of one image fits the L2 cache, or of the whole batch the last-level cache
(``BANDED_FROM``, ``BATCH_BANDED_FROM``), are not formed by this backend's pass
(``banded``, ``llvm_conv_chains``): their links run as separate regions, whose GEMMs over
whole images fill their register tiles better than a band's. The band's height is the
largest whose intermediates (``T``, ``D`` and ``T2``) fit ``BAND_BYTES`` together, raised
where the rows the expand GEMM recomputes at band edges (the halo) would exceed
``MAX_HALO`` of its work, then moved so the project GEMM's columns fill whole register
tiles (``band_rows``). Band boundaries depend on the shapes alone, so every thread count
gives the same bits.
"""
from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir

from irgraph.passes.conv_chains import Link, body_links

from . import conv_depthwise
from .builder import Buf, for_range, i64
from .conv_direct import arrays, scratch_bytes
from .gemm_tiling import tiling
from .lowering import fused_kind, kind_declines
from .ops_conv import thread_gemm, epilogue_tail
from .ops_core import SCALAR

# L2 cache per core here (1 MiB); a band's intermediates (T, D and T2, T and D live
# together while D is filled, D and T2 while the depthwise link runs) take about half of
# it, the rest left to the weights, the GEMM's packed panels and the output band
L2_BYTES = 1 << 20
BAND_BYTES = L2_BYTES // 2
# one image's depthwise input (the expanded tensor) bigger than this, and the whole
# batch's bigger than BATCH_BANDED_FROM: the chain runs band by band; smaller ones stay in
# cache between the links run one by one (the last-level cache holds about this much for
# one core here: MobileNetV2's 56x56 blocks at batch 1, 1.8 MB, gained nothing banded)
BANDED_FROM = L2_BYTES
BATCH_BANDED_FROM = 4 << 20
# a strided depthwise link's chain only from this many times that: its bands' expand GEMMs (twice
# the rows, a halo row each) and narrow project GEMMs cost more than the round trip of
# the expanded tensor through memory. MobileNetV2's features.4 (144 x 56 x 56, 1.8 MB an
# image, stride 2) at batch 8, Intel Xeon (AVX-512, L2 2 MB), in-network profile, two
# runs each: one thread 4.0 -> 2.6 ms banded -> by links; two threads 2.0-2.1 -> 1.3-1.4,
# the whole network 24.7-25.2 -> 23.5-23.8 ms. Its 112 x 112 block (96 channels, 4.8 MB)
# stays banded (3.0-3.2 ms against onnxruntime's 5.0-5.3), as do the stride-1 blocks of
# 1.6 and 1.8 MB (by links: 1.5 -> 2.4-2.5 ms and 2.4 -> 3.5)
STRIDED_BANDED = 2
# bands one row shorter where that makes the (image, band) shares even: the threads
# claim them in turns, and an odd count leaves one thread a band behind at batch 1
# (MobileNetV2's 112 x 112 block: 7 bands of 8 rows, 8 of 7 with a last partial strip of
# the project GEMM's columns). A rule of the shapes alone: every thread count runs the
# same bands, so gives the same bits
EVEN_SHARES = True
# at most this share of the expand GEMM's work recomputed for the halo rows between bands
# (the band is made taller past BAND_BYTES rather than recompute more: on MobileNetV2's
# 56x56 and 112x112 blocks 10% ran 5-8% faster at batch 8 than 20%)
MAX_HALO = 0.1


@dataclass(frozen=True)
class Chain:
    """A chain's links and the geometry of its band loop."""
    pre: Link | None            # the pointwise link before the depthwise one
    dw: Link
    post: Link | None           # the pointwise link after it
    rows: int                   # output rows per band
    nr: int = 1                 # the GEMM's register tile width (columns)

    @property
    def x_shape(self):          # the depthwise link's input (N, C, H, W)
        return self.dw.conv.inputs[0].shape

    @property
    def out_shape(self):        # the depthwise link's output (N, C, OH, OW)
        return self.dw.conv.outputs[0].shape

    @property
    def bands(self) -> int:
        return -(-self.out_shape[2] // self.rows)

    def parts(self) -> list[int]:
        """Elements of this thread's T, D and T2 (0 for a missing link)."""
        return _parts(self.pre, self.dw, self.post, self.rows, self.nr)


def _padded_rows(dw: Link, rows: int) -> int:
    """Rows of the depthwise link's padded input that ``rows`` output rows read."""
    a = dw.conv.attrs
    return (rows - 1) * a["stride"][0] + (dw.conv.inputs[1].shape[2] - 1) * a["dilation"][0] + 1


def expand_ld(dw: Link, rows: int, nr: int) -> int:
    """Columns of each channel's row of T: a band's input rows, rounded up to whole tiles
    of ``nr`` (the expand GEMM makes a few columns past the band rather than a partial
    strip)."""
    _, _, H, W = dw.conv.inputs[0].shape
    return -(-min(H, _padded_rows(dw, rows)) * W // nr) * nr


def _parts(pre, dw, post, rows: int, nr: int = 1) -> list[int]:
    N, C, H, W = dw.conv.inputs[0].shape
    a = dw.conv.attrs
    hb = _padded_rows(dw, rows)
    wq = conv_depthwise.phase_width((N, C, H, W), a["padding"], a["stride"])
    return [C * expand_ld(dw, rows, nr) if pre is not None else 0,
            C * a["stride"][1] * hb * wq,
            C * rows * dw.conv.outputs[0].shape[3] if post is not None else 0]


def _span(dw: Link, r0: int, r1: int) -> tuple[int, int]:
    """The image rows [lo, hi) of the depthwise link's input that output rows [r0, r1)
    read."""
    a = dw.conv.attrs
    H = dw.conv.inputs[0].shape[2]
    top = r0 * a["stride"][0] - a["padding"][0]
    return max(0, top), min(H, top + _padded_rows(dw, r1 - r0))


def halo(dw: Link, rows: int) -> float:
    """The expand link's rows made by all bands of ``rows`` output rows over the image's
    rows, less one: the share recomputed at band edges."""
    OH, H = dw.conv.outputs[0].shape[2], dw.conv.inputs[0].shape[2]
    made = sum(max(0, hi - lo) for lo, hi in
               (_span(dw, r0, min(r0 + rows, OH)) for r0 in range(0, OH, rows)))
    return made / H - 1


def band_rows(pre, dw, post, nr: int = 1, budget: int | None = None) -> int:
    """Output rows per band (see the module docstring): the most whose intermediates fit
    ``budget`` (``BAND_BYTES``), raised until the halo is at most ``MAX_HALO``; then, among
    the heights from half to twice that (the halo still within bounds), the closest one
    whose project GEMM's columns (its output rows) are a whole multiple of ``nr``, the
    GEMM's register tile width: a last, partial strip costs a call far more than its share
    of the columns (the expand GEMM makes a few columns past its band instead,
    ``expand_ld``)."""
    budget = BAND_BYTES if budget is None else budget
    item = dw.conv.inputs[0].type.np_dtype.itemsize
    OH, OW = dw.conv.outputs[0].shape[2:]
    rows = 1
    while rows < OH and sum(_parts(pre, dw, post, rows + 1, nr)) * item <= budget:
        rows += 1
    while pre is not None and rows < OH and halo(dw, rows) > MAX_HALO:
        rows += 1

    def partial(r: int) -> bool:
        return post is not None and r * OW % nr != 0

    def halo_ok(r: int) -> bool:
        return r == rows or pre is None or halo(dw, r) <= MAX_HALO
    near = [r for r in range(max(1, rows // 2), min(OH, 2 * rows) + 1) if halo_ok(r)]
    best = min(near, key=lambda r: (partial(r), abs(r - rows), -r))
    # an even count of (image, band) shares where a band one row shorter gives it
    # (``EVEN_SHARES``)
    N = dw.conv.inputs[0].shape[0]
    if (EVEN_SHARES and N * -(-OH // best) % 2 and best > 1
            and N * -(-OH // (best - 1)) % 2 == 0 and halo_ok(best - 1)):
        best -= 1
    return best


def banded(links: list[Link]) -> bool:
    """Whether a chain of ``links`` (``chain_links``) runs band by band: every epilogue op
    has a scalar lowering, and one image's depthwise input outgrows the L2 cache (twice
    that at a stride, ``STRIDED_BANDED``) and the batch's the last level's
    (``BANDED_FROM``, ``BATCH_BANDED_FROM``; smaller ones stay in
    cache between the links run one by one, whose GEMMs, over whole images or several at
    once, fill their register tiles better than a band's). The backend's pass forms only
    these chains (``llvm_conv_chains``)."""
    if any(n.op not in SCALAR for k in links for n in k.tail):
        return False
    dw = next(k for k in links if k.kind == "depthwise").conv
    x = dw.inputs[0]
    strided = any(s != 1 for s in dw.attrs["stride"])
    return (x.type.nbytes // x.shape[0] > (STRIDED_BANDED if strided else 1) * BANDED_FROM
            and x.type.nbytes > BATCH_BANDED_FROM)


def chain_of(node, features: str = "") -> Chain | None:
    """The chain a ``conv_chain`` region runs band by band on a CPU with ``features``; None
    where its body is not one (``body_links``) or not ``banded`` (its links then run one
    by one)."""
    links = body_links(node.attrs["body"])
    if links is None or not banded(links):
        return None
    i = [k.kind for k in links].index("depthwise")
    pre = links[0] if i == 1 else None
    dw = links[i]
    post = links[i + 1] if i + 1 < len(links) else None
    nr = tiling(dw.conv.inputs[0].dtype, features).nr
    return Chain(pre, dw, post, band_rows(pre, dw, post, nr), nr)


def _scratch(node, threads, features) -> int:
    ch = chain_of(node, features)
    return 0 if ch is None else threads * scratch_bytes(ch.dw.conv.inputs[0].dtype, ch.parts())


def _meets(node, threads, features) -> bool | None:
    """Claimed shares (each in its thread's own scratch): never meets."""
    return None if chain_of(node, features) is None else False


@fused_kind("conv_chain", scratch_rule=_scratch, meets_rule=_meets)
def _conv_chain(ctx, node, ins, outs) -> bool:
    ch = chain_of(node, ctx.features)
    if ch is None or kind_declines(node, ins, outs):
        return False
    b = ctx.b
    body = node.attrs["body"]
    buf = dict(zip(body.inputs, ins))
    pre, dw, post = ch.pre, ch.dw, ch.post
    y = outs[0]
    dtype = y.dtype

    def bound(link: Link) -> dict:
        return {inner: buf[outer] for inner, outer in link.binding.items() if outer in buf}

    def tail(link: Link):
        f = epilogue_tail(ctx, link.conv, link.tail, [link.result], bound(link))

        def put(off, idx, acc, fixed=None):
            return f(off, idx, acc, fixed)[0]
        put.hoist = f.hoist
        return put

    def weights(link: Link) -> Buf:
        return bound(link)[link.conv.inputs[1]]
    first = pre or dw
    x = bound(first)[first.conv.inputs[0]]
    N, C, H, W = ch.x_shape
    _, _, OH, OW = ch.out_shape
    a = dw.conv.attrs
    (s0, s1), (pt, _, pl, _) = a["stride"], a["padding"]
    K0, K1 = dw.conv.inputs[1].shape[2:]
    R = ch.rows
    HB = _padded_rows(dw, R)
    Wq = conv_depthwise.phase_width(ch.x_shape, a["padding"], a["stride"])
    plane = s1 * HB * Wq
    taps = conv_depthwise.phase_taps(dw.conv.inputs[1].shape, a["stride"], a["dilation"], HB,
                                     Wq)
    parts = ch.parts()
    T, D, T2 = arrays(ctx, dtype, ctx.thread_scratch(scratch_bytes(dtype, parts)), parts)
    zero = ir.Constant(y.elem, 0.0)
    ldt = expand_ld(dw, R, ch.nr)
    ldt2 = R * OW
    put_pre = tail(pre) if pre is not None else None
    put_dw = tail(dw)
    put_post = tail(post) if post is not None else None
    wdw = weights(dw)

    def smaller(u, v):
        return b.select(b.icmp_signed("<", u, v), u, v)

    def larger(u, v):
        return b.select(b.icmp_signed(">", u, v), u, v)
    nb = ch.bands
    lo, hi = ctx.split(N * nb)
    with for_range(b, lo, hi, "band") as u:
        n, k = b.sdiv(u, i64(nb)), b.srem(u, i64(nb))
        r0 = b.mul(k, i64(R))
        r1 = smaller(b.add(r0, i64(R)), i64(OH))
        p0 = b.sub(b.mul(r0, i64(s0)), i64(pt))       # image row of the band's first padded row
        hb = b.add(b.mul(b.sub(b.sub(r1, r0), i64(1)), i64(s0)),
                   i64((K0 - 1) * a["dilation"][0] + 1))
        ia = larger(p0, i64(0))
        ib = larger(smaller(b.add(p0, hb), i64(H)), ia)
        if pre is not None:
            C0 = pre.conv.inputs[0].shape[1]
            cols = b.mul(b.sub(ib, ia), i64(W))
            # whole tiles, while the columns stay inside the image's plane
            tiles = b.mul(b.sdiv(b.add(cols, i64(ch.nr - 1)), i64(ch.nr)), i64(ch.nr))
            cols = b.select(b.icmp_signed(">", cols, i64(0)),
                            smaller(tiles, b.mul(b.sub(i64(H), ia), i64(W))), cols)
            with b.if_then(b.icmp_signed(">", cols, i64(0))):
                src = b.gep(x.ptr, [b.add(b.mul(n, i64(C0 * H * W)), b.mul(ia, i64(W)))])
                thread_gemm(ctx, dtype, weights(pre).ptr, (C0, 1), src, (H * W, 1), T, ldt, C,
                            cols, C0)
        with for_range(b, 0, C, "cc") as c:
            dplane = b.gep(D, [b.mul(c, i64(plane))])
            with for_range(b, 0, hb, "ccr") as lr:
                ih = b.add(p0, lr)
                inside = b.and_(b.icmp_signed(">=", ih, i64(0)), b.icmp_signed("<", ih, i64(H)))
                row = b.mul(lr, i64(Wq))
                with b.if_else(inside) as (then, otherwise):
                    with then:
                        if pre is not None:
                            trow = b.add(b.mul(c, i64(ldt)), b.mul(b.sub(ih, ia), i64(W)))
                            row_fixed = put_pre.hoist((n, c, ih, i64(0)), 1)

                            def value(iw):
                                acc = b.load(b.gep(T, [b.add(trow, iw)]))
                                return put_pre(None, (n, c, ih, iw), acc, row_fixed)
                        else:
                            xrow = b.mul(b.add(b.mul(b.add(b.mul(n, i64(C)), c), i64(H)), ih),
                                         i64(W))

                            def value(iw):
                                return x.load(b, b.add(xrow, iw))
                        conv_depthwise.fill_row(ctx, dplane, row, value, W, pl, s1, HB, Wq,
                                                border=True)
                    with otherwise:
                        conv_depthwise.fill_row(ctx, dplane, row, lambda iw: zero, W, pl, s1,
                                                HB, Wq, border=True)
            wk = [wdw.load(b, b.add(b.mul(c, i64(K0 * K1)), i64(t))) for _, t in taps]
            plane_fixed = put_dw.hoist((n, c, i64(0), i64(0)), 2)
            if post is not None:
                trow2 = b.mul(c, i64(ldt2))

                def put(j, ow, acc):
                    v = put_dw(None, (n, c, b.add(r0, j), ow), acc, plane_fixed)
                    b.store(v, b.gep(T2, [b.add(trow2, b.add(b.mul(j, i64(OW)), ow))]))
            else:
                yplane = b.mul(b.add(b.mul(n, i64(C)), c), i64(OH * OW))

                def put(j, ow, acc):
                    oh = b.add(r0, j)
                    off = b.add(yplane, b.add(b.mul(oh, i64(OW)), ow))
                    y.store(b, off, put_dw(off, (n, c, oh, ow), acc, plane_fixed))
            conv_depthwise.out_rows(ctx, dplane, taps, wk, i64(0), b.sub(r1, r0), OW, s0, Wq,
                                    put)
        if post is not None:
            Co, P = post.conv.outputs[0].shape[1], OH * OW
            q0, q1 = b.mul(r0, i64(OW)), b.mul(r1, i64(OW))
            dst = b.gep(y.ptr, [b.add(b.mul(n, i64(Co * P)), q0)])
            thread_gemm(ctx, dtype, weights(post).ptr, (C, 1), T2, (ldt2, 1), dst, P, Co,
                        b.sub(q1, q0), C)
            with for_range(b, 0, Co, "cco") as o:
                orow = b.mul(b.add(b.mul(n, i64(Co)), o), i64(P))
                fixed = put_post.hoist((n, o, i64(0), i64(0)), 2)
                with for_range(b, q0, q1, "ccp") as p:
                    off = b.add(orow, p)
                    idx = (n, o, b.sdiv(p, i64(OW)), b.srem(p, i64(OW)))
                    y.store(b, off, put_post(off, idx, y.load(b, off), fixed))
    return True
