"""Direct convolution at stride 1 on a padded grid: no im2col, no packed copy of the input.

With the input of one image and group zero-padded into ``xp`` (channels x padded spatial,
row-major) and q the flat index of an output position in the padded layout, every tap of
the kernel reads the input at a fixed shift:

    grid[o, q] = sum over r = (c, k) of w[o, r] * xp[off(r) + q],
    off(c, k) = c * padded_plane + sum_ax k_ax * dilation_ax * padded_stride_ax

so the GEMM's B operand is ``xp`` itself, read at R shifted offsets (a constant table).
The micro-kernel keeps an MR x NR tile of ``grid`` in vector registers (the packed GEMM's
tiling); grid positions past the right edge of the output are computed and dropped when
the valid ones are copied out (``(padded width - out width) / padded width`` extra work,
against im2col's R x P copy). Weights are packed once per node into MR-tall strips, in any
order a caller gives: the input gradient (eq. 9.13) is this same convolution of the
output gradient, padded by dilation * (k - 1) - padding, with the kernel flipped and its
channel axes swapped.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from llvmlite import ir

from .builder import Buf, fma_intrinsic, for_range, i64, prod, row_strides, strided_nest
from .gemm_tiling import tiling
from .module import ALIGN


@dataclass(frozen=True)
class Direct:
    """One direct convolution: ``cin`` channels of ``spatial`` padded by ``pads`` (lo, hi
    per axis) into ``cout`` channels of ``out``."""
    cin: int
    cout: int
    spatial: tuple[int, ...]
    pads: tuple[int, ...]
    kernel: tuple[int, ...]
    dilation: tuple[int, ...]
    dtype: str
    features: str

    @property
    def padded(self) -> tuple[int, ...]:
        return tuple(s + self.pads[2 * i] + self.pads[2 * i + 1]
                     for i, s in enumerate(self.spatial))

    @property
    def out(self) -> tuple[int, ...]:
        return tuple(p - d * (k - 1) for p, k, d in zip(self.padded, self.kernel, self.dilation))

    @property
    def mr(self) -> int:
        return tiling(self.dtype, self.features).mr

    @property
    def nr(self) -> int:
        return tiling(self.dtype, self.features).nr

    @property
    def R(self) -> int:
        return self.cin * prod(self.kernel)

    def offsets(self) -> np.ndarray:
        """off(r) for r = (c, k) in row-major order."""
        pst = row_strides(self.padded)
        taps = np.zeros(self.kernel, np.int64)
        for ax, (k, d) in enumerate(zip(self.kernel, self.dilation)):
            view = [1] * len(self.kernel)
            view[ax] = k
            taps = taps + (np.arange(k) * d * pst[ax]).reshape(view)
        return (np.arange(self.cin)[:, None] * prod(self.padded) + taps.ravel()).ravel()

    @property
    def Q(self) -> int:
        """Grid positions from the first output to the last (the valid ones among them)."""
        pst = row_strides(self.padded)
        return 1 + sum((o - 1) * s for o, s in zip(self.out, pst))

    @property
    def Qpad(self) -> int:
        return -(-self.Q // self.nr) * self.nr

    # scratch, in elements, per thread: padded input, grid, packed weights
    @property
    def xp_elems(self) -> int:
        return max(self.cin * prod(self.padded), int(self.offsets().max()) + self.Qpad)

    @property
    def grid_elems(self) -> int:
        return self.cout * self.Qpad

    @property
    def wpack_elems(self) -> int:
        return -(-self.cout // self.mr) * self.mr * self.R

    def forward_parts(self, groups: int) -> list[int]:
        """Per-thread scratch arrays (elements) of a convolution: padded input, grid, the
        packed weights of every group (one after another, ``wpack_elems`` each)."""
        return [self.xp_elems, self.grid_elems, self.wpack_elems * groups]

    def kernel_grad_parts(self) -> list[int]:
        """... of a kernel gradient: padded input, gy grid, per-lane partial sums of dW (or,
        vectorized over the output channels: padded input, gy transposed, dW transposed)."""
        lanes = self.channel_lanes()
        if lanes is not None:
            ogp = lanes[0] * lanes[1]
            return [self.xp_elems, prod(self.out) * ogp, self.R * ogp]
        return [self.xp_elems, self.grid_elems,
                self.cout * self.R * tiling(self.dtype, self.features).vw]

    def channel_lanes(self) -> tuple[int, int] | None:
        """(vector width, vectors) per output position when the kernel gradient runs
        vectorized over the output channels: every multiply-add then falls on a valid
        position, none on the grid's padding. Only for ``cout`` one to four whole vectors:
        half-width vectors with padded lanes (LeNet's 6 channels in 8 of AVX-512's 16 lanes
        of float32) measured slower than the grid's dot products."""
        vw = tiling(self.dtype, self.features).vw
        v, rest = divmod(self.cout, vw)
        return (vw, v) if rest == 0 and 1 <= v <= 4 else None

    def scatter_parts(self, groups: int) -> list[int]:
        """... of an input gradient by scattering: padded dx, gy grid, each group's
        weights per tap in MR-wide strips."""
        strips = -(-self.cin // self.mr)
        return [self.xp_elems, self.grid_elems,
                groups * prod(self.kernel) * strips * self.cout * self.mr]

    def scratch_bytes(self, parts: list[int]) -> int:
        return scratch_bytes(self.dtype, parts)

    def beats_im2col(self, images: int, threads: int) -> bool:
        """The forward convolution's extra work against im2col + GEMM's, both relative to
        the multiply-adds: the grid's wasted columns plus the weights packed per call
        (``vw`` multiply-adds per vector instruction, one copied element about one vector
        instruction), against im2col's copy of R elements per output position, which a
        column of the GEMM repays over cout / vw vector multiply-adds."""
        vw = tiling(self.dtype, self.features).vw
        P = max(prod(self.out), 1)
        per_thread = max(-(-images // max(threads, 1)), 1)
        direct = (self.Qpad - P) / P + vw / (per_thread * P)
        return direct < vw / self.cout

    def worth_it(self) -> bool:
        """The grid's extra columns cost less than im2col's copy (and it fits the scratch)."""
        waste = self.Q / max(prod(self.out), 1)
        return waste < 2.0 and self.xp_elems < (1 << 22)


def usable(spatial, kernel, stride, padding, dilation) -> bool:
    return all(s == 1 for s in stride) and all(p >= 0 for p in padding) and all(
        k >= 1 for k in kernel) and all(
        s + padding[2 * i] + padding[2 * i + 1] - d * (k - 1) >= 1
        for i, (s, k, d) in enumerate(zip(spatial, kernel, dilation)))


def _offsets(dtype: str, parts: list[int]) -> list[int]:
    """Byte offsets of consecutive ALIGN-aligned arrays of ``parts`` elements, then the
    total."""
    item = np.dtype(dtype).itemsize
    offs = [0]
    for n in parts:
        offs.append(offs[-1] + -(-n * item // ALIGN) * ALIGN)
    return offs


def scratch_bytes(dtype: str, parts: list[int]) -> int:
    """Bytes of the ALIGN-aligned arrays of ``parts`` elements laid out by ``arrays``."""
    return _offsets(dtype, parts)[-1]


def _elem(dtype: str) -> ir.Type:
    return ir.FloatType() if dtype == "float32" else ir.DoubleType()


def arrays(ctx, dtype: str, base: ir.Value, parts: list[int]) -> list[ir.Value]:
    """Typed pointers to the scratch arrays laid out by ``_offsets`` from ``base`` (i8*)."""
    b, ep = ctx.b, ir.PointerType(_elem(dtype))
    return [b.bitcast(b.gep(base, [i64(o)]), ep) for o in _offsets(dtype, parts)[:-1]]


def thread_scratch(ctx, nbytes: int) -> ir.Value:
    return ctx.thread_scratch(nbytes)


def zero(ctx, ptr, n: int, elem) -> None:
    b = ctx.b
    with for_range(b, 0, n, "dz") as i:
        b.store(ir.Constant(elem, 0.0), b.gep(ptr, [i]))


def pack_weights(ctx, dc: Direct, dst, w: Buf, w_offset) -> None:
    """dst[strip][r][i] = w[w_offset(o, r)] for o = strip*MR + i (zero past cout), r < R."""
    b, mr, R = ctx.b, dc.mr, dc.R
    strips = -(-dc.cout // mr)
    with for_range(b, 0, strips * mr, "wo") as o:
        strip, i = b.sdiv(o, i64(mr)), b.srem(o, i64(mr))
        inside = b.icmp_signed("<", o, i64(dc.cout))
        safe_o = b.select(inside, o, i64(0))
        with for_range(b, 0, R, "wr") as r:
            v = w.load(b, w_offset(safe_o, r))
            v = b.select(inside, v, ir.Constant(w.elem, 0.0))
            at = b.add(b.mul(b.add(b.mul(strip, i64(R)), r), i64(mr)), i)
            b.store(v, b.gep(dst, [at]))


def load_padded(ctx, dc: Direct, src: Buf, base, xp) -> None:
    """The interior of xp (its zero border set once per node) from ``cin`` planes of src."""
    _interior(ctx, dc, xp, src, base, into_padded=True)


def _interior(ctx, dc: Direct, xp, buf: Buf, base, into_padded: bool) -> None:
    """Copy ``cin`` planes between ``buf`` (at ``base``) and the interior of padded ``xp``."""
    b = ctx.b
    d = len(dc.spatial)
    pst = row_strides(dc.padded)
    sst = row_strides(dc.spatial)
    lead = sum(dc.pads[2 * ax] * pst[ax] for ax in range(d))
    plane_p, plane = prod(dc.padded), prod(dc.spatial)
    shape = (dc.cin,) + dc.spatial[:-1]
    with strided_nest(b, shape, [(plane_p,) + pst[:-1], (plane,) + sst[:-1]],
                      [i64(lead), base]) as (xo, so):
        with for_range(b, 0, dc.spatial[-1], "lp") as j:
            at = b.gep(xp, [b.add(xo, j)])
            if into_padded:
                b.store(buf.load(b, b.add(so, j)), at)
            else:
                buf.store(b, b.add(so, j), b.load(at))


class _Tiles:
    """The MR x NR register tile of vector FMAs both the convolution and the scattered input
    gradient run: ``rows`` accumulators of NR (2 vectors) each, started at zero or from
    memory, a loop of rank-1 updates acc[i] += a(k, i) * b(k)[0:NR], stored to memory."""

    def __init__(self, ctx, dtype: str, features: str, vw: int | None = None):
        self.ctx, self.b = ctx, ctx.b
        t = tiling(dtype, features)
        self.dtype, self.features = dtype, features
        self.vw, self.nv = vw or t.vw, t.nr // t.vw
        self.regs = _registers(features)
        self.vec = ir.VectorType(_elem(dtype), self.vw)
        self.vp = ir.PointerType(self.vec)
        self.align = 4 if dtype == "float32" else 8
        self.fma = fma_intrinsic(ctx.module, self.vec)

    def _vector(self, ptr, v: int):
        return self.b.bitcast(self.b.gep(ptr, [i64(v * self.vw)]), self.vp)

    def columns(self, rows: int, Q: int, tile) -> None:
        """``tile(q0, nv, tiles)`` over the columns [0, Q) (``tiles`` the _Tiles to run):
        tiles of two vectors a row, a runtime loop, then one tile of the whole vectors
        left and, for the last few columns, one of half-width vectors: the columns past Q
        computed and dropped are under half a vector, not up to a whole tile."""
        width = self.nv * self.vw
        full = Q // width
        if full:
            with for_range(self.b, 0, full * width, "tq", width) as q0:
                tile(q0, self.nv, self)
        done = full * width
        whole, left = divmod(Q - done, self.vw)
        if whole:
            tile(i64(done), whole, self)
            done += whole * self.vw
        if left:
            half = self.vw // 2
            if left <= half and half >= 4:
                tile(i64(done), 1, _Tiles(self.ctx, self.dtype, self.features, half))
            else:
                tile(i64(done), 1, self)

    def run(self, rows: int, count, a_ptr, b_ptr, out_ptr, accumulate: bool,
            nv: int | None = None) -> None:
        """acc[i] (= out_ptr(i)[0:nv*vw] when ``accumulate``, else 0) += sum over k < count
        of *a_ptr(k, i) * b_ptr(k)[0:nv*vw]; then out_ptr(i)[0:nv*vw] = acc[i] (nv vectors,
        NR's by default)."""
        b, ctx, vw = self.b, self.ctx, self.vw
        nv = self.nv if nv is None else nv
        accs = [[ctx.alloca(self.vec, f"t{i}_{v}") for v in range(nv)]
                for i in range(rows)]
        for i, row in enumerate(accs):
            for v, a in enumerate(row):
                b.store(b.load(self._vector(out_ptr(i), v), align=self.align) if accumulate
                        else ir.Constant(self.vec, [0.0] * vw), a)
        undef = ir.Constant(self.vec, ir.Undefined)
        splat0 = ir.Constant(ir.VectorType(ir.IntType(32), vw), [0] * vw)
        with for_range(b, 0, count, "tk") as k:
            src = b_ptr(k)
            bv = [b.load(self._vector(src, v), align=self.align) for v in range(nv)]
            for i in range(rows):
                av = b.shuffle_vector(b.insert_element(undef, b.load(a_ptr(k, i)), ir.Constant(
                    ir.IntType(32), 0)), undef, splat0)
                for v in range(nv):
                    b.store(b.call(self.fma, [av, bv[v], b.load(accs[i][v])]), accs[i][v])
        for i in range(rows):
            for v in range(nv):
                b.store(b.load(accs[i][v]), self._vector(out_ptr(i), v), align=self.align)


def compute_grid(ctx, dc: Direct, xp, wpack, grid, offs) -> None:
    """grid[o, q] for every o < cout (MR strips) and q < Q (``_Tiles.columns``)."""
    b, mr, R = ctx.b, dc.mr, dc.R
    tiles = _Tiles(ctx, dc.dtype, dc.features)
    for strip in range(-(-dc.cout // mr)):
        rows = min(mr, dc.cout - strip * mr)
        wstrip = b.gep(wpack, [i64(strip * mr * R)])

        def tile(q0, nv, tiles, wstrip=wstrip, strip=strip, rows=rows):
            tiles.run(rows, i64(R),
                      lambda r, i: b.gep(wstrip, [b.add(b.mul(r, i64(mr)), i64(i))]),
                      lambda r: b.gep(xp, [b.add(b.load(b.gep(offs, [r])), q0)]),
                      lambda i: b.gep(grid, [b.add(i64((strip * mr + i) * dc.Qpad), q0)]),
                      accumulate=False, nv=nv)
        tiles.columns(rows, dc.Q, tile)


def store_valid(ctx, dc: Direct, grid, dst: Buf, base) -> None:
    """dst[base + o*P + p] = grid[o, q(p)] for the valid output positions p."""
    b = ctx.b
    pst = row_strides(dc.padded)
    ost = row_strides(dc.out)
    P = prod(dc.out)
    shape = (dc.cout,) + dc.out[:-1]
    with strided_nest(b, shape, [(dc.Qpad,) + pst[:-1], (P,) + ost[:-1]],
                      [i64(0), base]) as (go, do):
        with for_range(b, 0, dc.out[-1], "sv") as j:
            dst.store(b, b.add(do, j), b.load(b.gep(grid, [b.add(go, j)])))


def convolve(ctx, dc: Direct, groups: int, images: int, src: Buf, dst: Buf, w: Buf,
             w_offset) -> None:
    """dst[n, g*cout + o] = direct conv of src[n, g*cin : (g+1)*cin] for every image n
    (threads split the images; each packs the weights into its own scratch once).
    ``w_offset(g, o, r)`` takes the group as an i64 value: the groups are a loop of the
    generated code, one body for all of them."""
    b = ctx.b
    parts = dc.forward_parts(groups)
    xp, grid, wpacks = arrays(ctx, dc.dtype, thread_scratch(ctx, dc.scratch_bytes(parts)),
                              parts)
    zero(ctx, xp, dc.xp_elems, _elem(dc.dtype))
    with for_range(b, 0, groups, "dwg") as g:
        pack_weights(ctx, dc, b.gep(wpacks, [b.mul(g, i64(dc.wpack_elems))]), w,
                     lambda o, r: w_offset(g, o, r))
    offs = ctx.global_array("conv.taps", dc.offsets())
    plane_in, plane_out = prod(dc.spatial), prod(dc.out)
    lo, hi = ctx.split(images)
    with for_range(b, lo, hi, "dimg") as n:
        with for_range(b, 0, groups, "dgrp") as g:
            ng = b.add(b.mul(n, i64(groups)), g)
            load_padded(ctx, dc, src, b.mul(ng, i64(dc.cin * plane_in)), xp)
            compute_grid(ctx, dc, xp, b.gep(wpacks, [b.mul(g, i64(dc.wpack_elems))]), grid,
                         offs)
            store_valid(ctx, dc, grid, dst, b.mul(ng, i64(dc.cout * plane_out)))


# ---------------------------------------------------------------- the kernel gradient
# (eq. 9.11 at stride 1) dW[o, r] = sum over images and grid positions q of
# gy_grid[o, q] * xp[off(r) + q]: dot products along q, MO x NRR of them at a time in
# vector registers, accumulated per lane into a per-thread buffer (lanes and threads
# summed once at the end).
# (MO, NRR): MO x NRR accumulators, NRR input vectors and one gy vector fit in the vector
# registers, 16 (9 or 8 accumulators) or 32 (AVX-512: 24, 20 or 15; LeNet's 1 -> 6 kernel
# gradient, batch 64, one thread: 6 x 4 0.20 ms against 3 x 3's 0.24)
TILES = {16: ((3, 3), (4, 2)), 32: ((6, 4), (4, 5), (3, 5))}


def _dot_tile_shape(og: int, features: str) -> tuple[int, int]:
    """The tile whose row blocks divide ``og`` (no thin last block), else the first."""
    tiles = TILES[_registers(features)]
    return next(((mo, nrr) for mo, nrr in tiles if og % mo == 0), tiles[0])


def load_grid(ctx, dc: Direct, src: Buf, base, grid) -> None:
    """grid[o, q(p)] = src[base + o*P + p] (the inverse of store_valid)."""
    b = ctx.b
    pst = row_strides(dc.padded)
    ost = row_strides(dc.out)
    P = prod(dc.out)
    with strided_nest(b, (dc.cout,) + dc.out[:-1], [(dc.Qpad,) + pst[:-1], (P,) + ost[:-1]],
                      [i64(0), base]) as (go, so):
        with for_range(b, 0, dc.out[-1], "lg") as j:
            b.store(src.load(b, b.add(so, j)), b.gep(grid, [b.add(go, j)]))


def kernel_gradient(ctx, dc: Direct, groups: int, images: int, x: Buf, gy: Buf, dw: Buf
                    ) -> None:
    if dc.channel_lanes() is not None:
        _channel_kernel_gradient(ctx, dc, groups, images, x, gy, dw)
        return
    b = ctx.b
    vw = tiling(dc.dtype, dc.features).vw
    elem = _elem(dc.dtype)
    vec = ir.VectorType(elem, vw)
    parts = dc.kernel_grad_parts()
    nbytes = dc.scratch_bytes(parts)
    xp, grid, lanes = arrays(ctx, dc.dtype, thread_scratch(ctx, nbytes), parts)
    lanes_at = _offsets(dc.dtype, parts)[2]
    R, og = dc.R, dc.cout
    offs = ctx.global_array("conv.taps", dc.offsets())
    plane_in, plane_out = prod(dc.spatial), prod(dc.out)
    with for_range(b, 0, groups, "kgrp") as g:     # every thread runs every group
        zero(ctx, xp, dc.xp_elems, elem)
        zero(ctx, grid, dc.grid_elems, elem)
        zero(ctx, lanes, og * R * vw, elem)
        lo, hi = ctx.split(images)
        with for_range(b, lo, hi, "kimg") as n:
            ng = b.add(b.mul(n, i64(groups)), g)
            load_padded(ctx, dc, x, b.mul(ng, i64(dc.cin * plane_in)), xp)
            load_grid(ctx, dc, gy, b.mul(ng, i64(og * plane_out)), grid)
            _dot_tiles(ctx, dc, xp, grid, lanes, offs, vec)
        ctx.barrier()
        _sum_lanes(ctx, dc, nbytes, lanes_at, dw, b.mul(g, i64(og * R)), vw, elem)
        ctx.barrier()


def _dot_tiles(ctx, dc: Direct, xp, grid, lanes, offs, vec) -> None:
    b, R, og, vw = ctx.b, dc.R, dc.cout, vec.count
    vp = ir.PointerType(vec)
    align = 4 if dc.dtype == "float32" else 8
    zero_v = ir.Constant(vec, [0.0] * vw)

    def block(o0: int, rows: int, r0, cols: int) -> None:
        accs = [[ctx.alloca(vec, f"k{i}_{j}") for j in range(cols)] for i in range(rows)]
        for row in accs:
            for a in row:
                b.store(zero_v, a)
        xrows = [b.gep(xp, [b.load(b.gep(offs, [b.add(r0, i64(j))]))]) for j in range(cols)]
        grows = [b.gep(grid, [i64((o0 + i) * dc.Qpad)]) for i in range(rows)]
        with for_range(b, 0, dc.Qpad, "kq", vw) as q:
            xv = [b.load(b.bitcast(b.gep(p, [q]), vp), align=align) for p in xrows]
            for i in range(rows):
                gv = b.load(b.bitcast(b.gep(grows[i], [q]), vp), align=align)
                for j in range(cols):
                    prod_ = b.fmul(gv, xv[j])
                    s = b.fadd(b.load(accs[i][j]), prod_)
                    s.flags.append("contract")
                    b.store(s, accs[i][j])
        for i in range(rows):
            for j in range(cols):
                at = b.mul(b.add(i64((o0 + i) * R), b.add(r0, i64(j))), i64(vw))
                p = b.bitcast(b.gep(lanes, [at]), vp)
                b.store(b.fadd(b.load(p, align=align), b.load(accs[i][j])), p, align=align)

    mo, nrr = _dot_tile_shape(og, dc.features)
    full, tail = divmod(R, nrr)
    for o0 in range(0, og, mo):
        rows = min(mo, og - o0)
        if full:
            with for_range(b, 0, full * nrr, "kr", nrr) as r0:
                block(o0, rows, r0, nrr)
        if tail:
            block(o0, rows, i64(full * nrr), tail)


def _sum_lanes(ctx, dc: Direct, nbytes: int, first: int, dw: Buf, dbase, vw: int,
               elem) -> None:
    """dw[dbase + e] = sum over threads and lanes of lanes_t[e, :] (entries split)."""
    b = ctx.b
    n = dc.cout * dc.R
    lo, hi = ctx.split(n)
    nt = ctx.nthreads if not ctx.single else i64(1)
    acc = ctx.alloca(elem, "ksum")
    with for_range(b, lo, hi, "ke") as e:
        b.store(ir.Constant(elem, 0.0), acc)
        with for_range(b, 0, nt, "kt") as t:
            raw = b.gep(ctx.node_scratch, [b.add(b.mul(t, i64(nbytes)), i64(first))])
            p = b.gep(b.bitcast(raw, ir.PointerType(elem)), [b.mul(e, i64(vw))])
            for lane in range(vw):
                b.store(b.fadd(b.load(acc), b.load(b.gep(p, [i64(lane)]))), acc)
        dw.store(b, b.add(dbase, e), b.load(acc))


# ---------------------------------------------------------------- the input gradient, scattered
# (eq. 9.13 at stride 1) on the forward convolution's grid: dxp[c, q + tap(k)] += sum over o
# of w[o, c, k] * gy_grid[o, q], one register tile per (tap, MR channels, NR positions),
# accumulated in the padded dx (read, update, write); then dx is dxp's interior. Every
# multiply-add is one the text's h sums (no zero padding of gy), so it beats the flipped
# convolution when that one's grid is much wider.


def scatter_input_grad(ctx, dc: Direct, groups: int, images: int, gy: Buf, dx: Buf, w: Buf
                       ) -> None:
    """``dc``: the forward convolution (cin = dx's channels per group, cout = gy's)."""
    b, mr = ctx.b, dc.mr
    kp, og, cg = prod(dc.kernel), dc.cout, dc.cin
    strips = -(-cg // mr)
    parts = dc.scatter_parts(groups)
    dxp, grid, wpack = arrays(ctx, dc.dtype, thread_scratch(ctx, dc.scratch_bytes(parts)),
                              parts)
    elem = _elem(dc.dtype)
    zero(ctx, grid, dc.grid_elems, elem)
    # wpack[g][k][strip][o][i] = w[g*og + o, strip*mr + i, k] (zero past cg)
    per_tap = strips * og * mr
    with for_range(b, 0, groups * kp * per_tap, "sw") as e:
        gk, rest = b.sdiv(e, i64(per_tap)), b.srem(e, i64(per_tap))
        g, k = b.sdiv(gk, i64(kp)), b.srem(gk, i64(kp))
        strip, rest = b.sdiv(rest, i64(og * mr)), b.srem(rest, i64(og * mr))
        o, i = b.sdiv(rest, i64(mr)), b.srem(rest, i64(mr))
        c = b.add(b.mul(strip, i64(mr)), i)
        inside = b.icmp_signed("<", c, i64(cg))
        at = b.add(b.mul(b.add(b.mul(b.add(b.mul(g, i64(og)), o), i64(cg)),
                               b.select(inside, c, i64(0))), i64(kp)), k)
        b.store(b.select(inside, w.load(b, at), ir.Constant(elem, 0.0)), b.gep(wpack, [e]))
    taps = ctx.global_array("conv.taps", dc.offsets()[:kp])      # channel 0: the taps alone
    plane_p, plane_in, plane_out = prod(dc.padded), prod(dc.spatial), prod(dc.out)
    tiles = _Tiles(ctx, dc.dtype, dc.features)
    lo, hi = ctx.split(images)
    with for_range(b, lo, hi, "simg") as n:
        with for_range(b, 0, groups, "sgrp") as gi:
            ng = b.add(b.mul(n, i64(groups)), gi)
            zero(ctx, dxp, dc.xp_elems, elem)
            load_grid(ctx, dc, gy, b.mul(ng, i64(og * plane_out)), grid)
            with for_range(b, 0, kp, "stap") as k:
                tap = b.load(b.gep(taps, [k]))
                for strip in range(strips):
                    rows = min(mr, cg - strip * mr)
                    wk = b.gep(wpack, [b.mul(b.add(b.mul(gi, i64(kp)), k), i64(per_tap))])
                    ws = b.gep(wk, [i64(strip * og * mr)])

                    def tile(q0, nv, tiles, rows=rows, ws=ws, strip=strip):
                        at = b.add(tap, q0)
                        tiles.run(rows, i64(og),
                                  lambda o, i: b.gep(ws, [b.add(b.mul(o, i64(mr)), i64(i))]),
                                  lambda o: b.gep(grid, [b.add(b.mul(o, i64(dc.Qpad)), q0)]),
                                  lambda i: b.gep(dxp, [b.add(at, i64(
                                      (strip * mr + i) * plane_p))]),
                                  accumulate=True, nv=nv)
                    tiles.columns(rows, dc.Q, tile)
            _interior(ctx, dc, dxp, dx, b.mul(ng, i64(cg * plane_in)), into_padded=False)


# ---------------------------------------------------------------- the kernel gradient over channels
# dW^T[r, o] = sum over images and valid output positions p of xp[off(r) + q(p)] * gyT[p, o]:
# per position, V vectors of gy (its output channels, transposed once per image) and, for a
# block of T taps held in T x V vector registers, one broadcast input element each. No
# multiply-add falls on the grid's padding and every loop is as long as the output.


def _registers(features: str) -> int:
    return 32 if "+avx512f" in features else 16


def channel_taps(dc: Direct) -> int:
    """Taps per register block: T x V accumulators, V gy vectors and a broadcast fit."""
    v = dc.channel_lanes()[1]
    return max(1, min(dc.R, (_registers(dc.features) - 1 - v) // v))


def _channel_kernel_gradient(ctx, dc: Direct, groups: int, images: int, x: Buf, gy: Buf,
                             dw: Buf) -> None:
    b = ctx.b
    vw, nv = dc.channel_lanes()
    elem = _elem(dc.dtype)
    vec = ir.VectorType(elem, vw)
    vp = ir.PointerType(vec)
    align = 4 if dc.dtype == "float32" else 8
    parts = dc.kernel_grad_parts()
    nbytes = dc.scratch_bytes(parts)
    xp, gyt, part = arrays(ctx, dc.dtype, thread_scratch(ctx, nbytes), parts)
    part_at = _offsets(dc.dtype, parts)[2]
    R, og, ogp = dc.R, dc.cout, vw * nv       # gyT and dW^T rows padded to ogp lanes
    P, plane_in = prod(dc.out), prod(dc.spatial)
    offs = ctx.global_array("conv.taps", dc.offsets())
    padded = any(dc.pads)
    T = channel_taps(dc)
    undef = ir.Constant(vec, ir.Undefined)
    splat0 = ir.Constant(ir.VectorType(ir.IntType(32), vw), [0] * vw)
    pst, ost = row_strides(dc.padded), row_strides(dc.out)

    def block(src, r0, taps: int) -> None:
        accs = [[ctx.alloca(vec, f"c{i}_{v}") for v in range(nv)] for i in range(taps)]
        rows = [b.add(r0, i64(i)) for i in range(taps)]
        for i, row in enumerate(accs):
            for v, a in enumerate(row):
                at = b.add(b.mul(rows[i], i64(ogp)), i64(v * vw))
                b.store(b.load(b.bitcast(b.gep(part, [at]), vp), align=align), a)
        xs = [b.gep(src, [b.load(b.gep(offs, [r]))]) for r in rows]
        with strided_nest(b, dc.out[:-1], [pst[:-1], ost[:-1]]) as (qo, po):
            with for_range(b, 0, dc.out[-1], "cq") as j:
                q, p = b.add(qo, j), b.add(po, j)
                gv = [b.load(b.bitcast(b.gep(gyt, [b.add(b.mul(p, i64(ogp)), i64(v * vw))]),
                                       vp), align=align) for v in range(nv)]
                for i in range(taps):
                    s = b.shuffle_vector(b.insert_element(undef, b.load(b.gep(xs[i], [q])),
                                                          ir.Constant(ir.IntType(32), 0)),
                                         undef, splat0)
                    for v in range(nv):
                        prod_ = b.fmul(s, gv[v])
                        acc = b.fadd(b.load(accs[i][v]), prod_)
                        acc.flags.append("contract")
                        b.store(acc, accs[i][v])
        for i, row in enumerate(accs):
            for v, a in enumerate(row):
                at = b.add(b.mul(rows[i], i64(ogp)), i64(v * vw))
                b.store(b.load(a), b.bitcast(b.gep(part, [at]), vp), align=align)

    with for_range(b, 0, groups, "cgrp") as g:      # every thread runs every group
        if padded:
            zero(ctx, xp, dc.xp_elems, elem)
        zero(ctx, part, R * ogp, elem)
        if ogp > og:                                # the padding lanes of gyT stay zero
            zero(ctx, gyt, P * ogp, elem)
        lo, hi = ctx.split(images)
        with for_range(b, lo, hi, "cimg") as n:
            ng = b.add(b.mul(n, i64(groups)), g)
            xbase = b.mul(ng, i64(dc.cin * plane_in))
            if padded:
                load_padded(ctx, dc, x, xbase, xp)
                src = xp
            else:                                   # the input is its own padded grid
                src = b.gep(x.ptr, [xbase])
            gbase = b.mul(ng, i64(og * P))
            with for_range(b, 0, og, "ct") as o:    # gyT[p, o] = gy[n, g*og + o, p]
                ob = b.add(gbase, b.mul(o, i64(P)))
                with for_range(b, 0, P, "cp") as p:
                    b.store(gy.load(b, b.add(ob, p)), b.gep(gyt, [b.add(b.mul(p, i64(ogp)),
                                                                        o)]))
            full, tail = divmod(R, T)
            if full:
                with for_range(b, 0, full * T, "cr", T) as r0:
                    block(src, r0, T)
            if tail:
                block(src, i64(full * T), tail)
        ctx.barrier()
        _sum_transposed(ctx, dc, ogp, nbytes, part_at, dw, b.mul(g, i64(og * R)), elem)
        ctx.barrier()


def _sum_transposed(ctx, dc: Direct, ogp: int, nbytes: int, first: int, dw: Buf, dbase,
                    elem) -> None:
    """dw[dbase + o*R + r] = sum over threads of part_t[r*ogp + o] (entries split)."""
    b, R, og = ctx.b, dc.R, dc.cout
    lo, hi = ctx.split(og * R)
    nt = ctx.nthreads if not ctx.single else i64(1)
    acc = ctx.alloca(elem, "csum")
    with for_range(b, lo, hi, "ce") as e:
        o, r = b.sdiv(e, i64(R)), b.srem(e, i64(R))
        at = b.add(b.mul(r, i64(ogp)), o)
        b.store(ir.Constant(elem, 0.0), acc)
        with for_range(b, 0, nt, "ctt") as t:
            raw = b.gep(ctx.node_scratch, [b.add(b.mul(t, i64(nbytes)), i64(first))])
            p = b.bitcast(raw, ir.PointerType(elem))
            b.store(b.fadd(b.load(acc), b.load(b.gep(p, [at]))), acc)
        dw.store(b, b.add(dbase, e), b.load(acc))
