"""Convolutions with few output positions: register-tiled dot products along R, or one GEMM
over the batch's columns.

When an image's output has fewer positions P than the GEMM's register tile is wide (the
late layers of an image network: 4x4, 2x2, 1x1 grids), the GEMM ``W (O x R) @ cols (R x P)``
would run most vector lanes on padding. Here the batch's output positions are the columns
j = n * P + p, J = N * P of them, and both operands run along R instead:

    y[n, o, p] = sum_r w[o, r] * colsT[j, r]

``colsT`` (J x Rp, row-major, written once per call by a transposed im2col) and the weights'
rows (read in place: no packing) are contiguous along r, so an MO x PN tile of outputs keeps
MO * PN vector accumulators over R, loads MO weight vectors and PN column vectors per step,
and sums each accumulator's lanes once at the end. The weights stream once per block of
columns (the blocks sized to stay in cache), which is the whole cost of a batch-1 late layer.

A batch of such images with N * P columns or more than the tile's width is instead one GEMM
``W (O x R) @ cols (R x N*P)`` (im2col of every image side by side), its result put back in
(N, O, P) order: the GEMM's cache blocking then streams the weights once.

R need not divide by the vector width: a row of ``colsT`` keeps its first ``nv * vw``
elements in place and puts the last ``t = R mod vw`` at the end of one more vector, after
``vw - t`` zeros, so that vector multiplies the weights' last ``vw`` elements (in bounds,
the first ``vw - t`` of them times zero): no masked load, no scalar tail.
"""
from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir

from .builder import STORAGE, fma_intrinsic, for_range, i64
from .gemm_tiling import tiling

COLS_BLOCK_BYTES = 192 * 1024    # the columns one pass over the weights keeps in cache
MAX_SCRATCH_BYTES = 32 << 20     # larger batches keep the per-image paths' scratch


@dataclass(frozen=True)
class DotConv:
    N: int          # images
    O: int          # output channels
    P: int          # output positions per image
    R: int          # C * prod(kernel)
    dtype: str
    features: str

    @property
    def vw(self) -> int:
        return tiling(self.dtype, self.features).vw

    @property
    def tile(self) -> tuple[int, int]:
        """(MO, PN): MO * PN accumulators and MO + 1 operands within the vector registers
        (32 with AVX-512, 16 otherwise)."""
        return (4, 4) if "+avx512f" in self.features else (3, 4)

    @property
    def J(self) -> int:
        return self.N * self.P

    @property
    def nv(self) -> int:
        return self.R // self.vw

    @property
    def tail(self) -> int:
        return self.R % self.vw

    @property
    def Rp(self) -> int:
        """Elements per row of colsT: the whole vectors, then one for the tail."""
        return (self.nv + (1 if self.tail else 0)) * self.vw

    def pos(self, b, r):
        """Where element r of a column goes in its colsT row."""
        if not self.tail:
            return r
        shift = b.select(b.icmp_signed(">=", r, i64(self.nv * self.vw)),
                         i64(self.vw - self.tail), i64(0))
        return b.add(r, shift)

    @property
    def dots(self) -> bool:
        """Dot products when all the batch's columns are fewer than a GEMM tile is wide;
        else (a batch of small grids) one GEMM over the batch's columns side by side."""
        return self.J < tiling(self.dtype, self.features).nr

    @property
    def cols_elems(self) -> int:
        return self.J * self.Rp if self.dots else self.J * self.R

    def scratch_parts(self) -> list[int]:
        """Elements of the scratch arrays: colsT (dots), or cols and the GEMM's O x J result."""
        return [self.cols_elems] if self.dots else [self.cols_elems, self.O * self.J]

    @property
    def jblock(self) -> int:
        """Columns per pass over the weights (whole PN tiles)."""
        item = 4 if self.dtype == "float32" else 8
        pn = self.tile[1]
        per = max(1, COLS_BLOCK_BYTES // (self.Rp * item) // pn) * pn
        return min(per, -(-self.J // pn) * pn)


def plan(N: int, C: int, O: int, P: int, R: int, groups: int, dtype: str,
         features: str) -> DotConv | None:
    """The dot-product form when it pays: one group, a float type, fewer output positions
    than the GEMM tile is wide, rows of at least one vector, and the batch's columns (and
    the GEMM's result) within MAX_SCRATCH_BYTES."""
    if dtype not in ("float32", "float64") or groups != 1 or N * P == 0:
        return None
    t = tiling(dtype, features)
    if P >= t.nr or R < t.vw:
        return None
    dc = DotConv(N, O, P, R, dtype, features)
    item = 4 if dtype == "float32" else 8
    return dc if sum(dc.scratch_parts()) * item <= MAX_SCRATCH_BYTES else None


def zero_gaps(ctx, dc: DotConv, cols, j_lo, j_hi) -> None:
    """The zeros before each row's tail (columns j_lo..j_hi)."""
    if not dc.tail:
        return
    b = ctx.b
    z = ir.Constant(STORAGE[dc.dtype], 0.0)
    with for_range(b, j_lo, j_hi, "dzj") as j:
        row = b.mul(j, i64(dc.Rp))
        for i in range(dc.vw - dc.tail):
            b.store(z, b.gep(cols, [b.add(row, i64(dc.nv * dc.vw + i))]))


def multiply(ctx, dc: DotConv, w, cols, y) -> None:
    """y[n, o, p] = sum_r w[o, r] * cols[n * P + p, pos(r)]; threads split the output
    channels in MO-row tiles (every column for each)."""
    b = ctx.b
    mo, pn = dc.tile
    full_o = dc.O // mo
    tiles = -(-dc.O // mo)
    lo, hi = ctx.split(tiles)
    JB = dc.jblock
    with for_range(b, 0, dc.J, "djb", JB) as jb:
        jend = b.select(b.icmp_signed("<", b.add(jb, i64(JB)), i64(dc.J)),
                        b.add(jb, i64(JB)), i64(dc.J))
        # whole tiles of output channels, then the last partial one
        top = b.select(b.icmp_signed("<", hi, i64(full_o)), hi, i64(full_o))
        with for_range(b, lo, top, "dot") as ot:
            _row_tiles(ctx, dc, w, cols, y, b.mul(ot, i64(mo)), mo, jb, jend)
        if dc.O % mo:
            with b.if_then(b.icmp_signed(">", hi, i64(full_o))):
                _row_tiles(ctx, dc, w, cols, y, i64(full_o * mo), dc.O % mo, jb, jend)


def _row_tiles(ctx, dc: DotConv, w, cols, y, o0, mo: int, jb, jend) -> None:
    """Output channels o0..o0+mo against columns [jb, jend): whole PN tiles, then the rest
    one column at a time."""
    b = ctx.b
    pn = dc.tile[1]
    nfull = b.sdiv(b.sub(jend, jb), i64(pn))
    jfull = b.add(jb, b.mul(nfull, i64(pn)))
    with for_range(b, jb, jfull, "djt", pn) as j0:
        _tile(ctx, dc, w, cols, y, o0, mo, j0, pn)
    with for_range(b, jfull, jend, "djr") as j0:
        _tile(ctx, dc, w, cols, y, o0, mo, j0, 1)


def _tile(ctx, dc: DotConv, w, cols, y, o0, mo: int, j0, pn: int) -> None:
    b = ctx.b
    elem = STORAGE[dc.dtype]
    vec = ir.VectorType(elem, dc.vw)
    vp = ir.PointerType(vec)
    align = 4 if dc.dtype == "float32" else 8
    fma = fma_intrinsic(ctx.module, vec)
    zero = ir.Constant(vec, [0.0] * dc.vw)
    accs = [[ctx.alloca(vec, f"dacc{i}_{j}") for j in range(pn)] for i in range(mo)]
    for row in accs:
        for a in row:
            b.store(zero, a)
    wrows = [b.gep(w, [b.mul(b.add(o0, i64(i)), i64(dc.R))]) for i in range(mo)]
    crows = [b.gep(cols, [b.mul(b.add(j0, i64(j)), i64(dc.Rp))]) for j in range(pn)]

    def step(w_at, c_at):
        wv = [b.load(b.bitcast(b.gep(r, [w_at]), vp), align=align) for r in wrows]
        cv = [b.load(b.bitcast(b.gep(c, [c_at]), vp), align=align) for c in crows]
        for i in range(mo):
            for j in range(pn):
                b.store(b.call(fma, [wv[i], cv[j], b.load(accs[i][j])]), accs[i][j])

    with for_range(b, 0, dc.nv * dc.vw, "dk", dc.vw) as k:
        step(k, k)
    if dc.tail:
        step(i64(dc.R - dc.vw), i64(dc.nv * dc.vw))
    bases = []
    for j in range(pn):
        col = b.add(j0, i64(j))
        n = b.sdiv(col, i64(dc.P))
        # y[n, o, p] with p = col - n * P: col + n * (O - 1) * P + o * P
        bases.append(b.add(col, b.mul(n, i64((dc.O - 1) * dc.P))))
    labelled = [((i, j), b.load(accs[i][j])) for i in range(mo) for j in range(pn)]
    for (i, j), total in lane_sums(b, labelled, dc.vw):
        at = b.add(bases[j], b.mul(b.add(o0, i64(i)), i64(dc.P)))
        b.store(total, b.gep(y, [at]))


def lane_sums(b, labelled, width: int):
    """[(label, sum of the lanes of v)] for [(label, v)]: vectors of ``width`` lanes summed
    ``width`` at a time by pairwise transposing adds (two vectors -> one holding both halves'
    partial sums, lanes grouped by label), width - 1 adds per ``width`` vectors instead of
    log2(width) per vector; a last incomplete group is filled with zeros."""
    i32 = ir.IntType(32)
    out = []
    for at in range(0, len(labelled), width):
        group = labelled[at:at + width]
        vecs = [([label], v) for label, v in group]
        zero = ir.Constant(group[0][1].type, [0.0] * width)
        while len(vecs) < width:
            vecs.append(([None], zero))
        lanes = width               # lanes per label in every vector
        while lanes > 1:
            half = lanes // 2
            nxt = []
            for (la, va), (lb, vb) in zip(vecs[0::2], vecs[1::2]):
                lo, hi, labels = [], [], []
                for t in range(len(la)):
                    for src, lab in ((0, la[t]), (width, lb[t])):
                        lo += [src + t * lanes + k for k in range(half)]
                        hi += [src + t * lanes + half + k for k in range(half)]
                        labels.append(lab)
                s_lo = b.shuffle_vector(va, vb, ir.Constant(ir.VectorType(i32, width), lo))
                s_hi = b.shuffle_vector(va, vb, ir.Constant(ir.VectorType(i32, width), hi))
                nxt.append((labels, b.fadd(s_lo, s_hi)))
            vecs, lanes = nxt, half
        (labels, v), = vecs
        out += [(lab, b.extract_element(v, ir.Constant(i32, k)))
                for k, lab in enumerate(labels) if lab is not None]
    return out
