"""Winograd convolution F(4x4, 3x3), or F(2x2, 3x3), for 3x3, stride-1 layers (float32,
float64).

Each 4x4 block of outputs of one image and output channel comes from a 6x6 tile of the
zero-padded input (tiles overlap by 2; the last tile of a row or column may hang past the
output, its extra values computed and dropped):

    Y = A^T [ sum over c of (G g_oc G^T) * (B^T d_c B) ] A       (* elementwise, 6x6)

so the 9 multiply-adds per output and channel become 36 / 16 = 2.25 (4x fewer). F(2x2,
3x3) takes 2x2 blocks from 4x4 tiles: 16 / 4 = 4 multiply-adds (2.25x fewer), and its U
is 16 / 36 the size; ``plan`` takes it where F(4x4)'s U would stream from memory at few
tiles per GEMM (``Form``). Per call:

1. weights: U[xi][c][o] = (G g_oc G^T)[xi] (weights change every training step);
2. per chunk of images: the input copied channel-last into a zero-padded grid P (border
   and the overhang of partial tiles zero), then V[xi][t][c] = (B^T d_c B)[xi] for every
   tile t, vectorised over channels (vw at a time, channels zero-padded to a multiple of
   vw);
3. 36 GEMMs M[xi] (tiles x O) = V[xi] (tiles x C) @ U[xi] (C x O) on the packed GEMM of
   gemm.py: the tiles of every image of a chunk side by side in the rows, so each U[xi]
   streams once per chunk; threads take whole GEMMs;
4. Y = A^T M A per tile, vectorised over output channels, stored into y (only the outputs
   inside the plane); a fused region's epilogue (bias, activation, residual: ``tail``)
   then runs over the chunk's images while they are in cache.

The input gradient of such a layer (``plan_input_grad``) is the same convolution of gy,
padded by 2 - padding, with the kernel flipped and its channel axes swapped (only the
weights are read differently).

Threads split the rows of P, the tiles and the 36 (16) GEMMs (``ctx.split``), a barrier
after each phase. F(4x4) is the default: half the tiles' transform work per output and 1.8x
fewer multiplies than F(2x2), and its error stays small at every channel count measured
below; F(2x2) where its smaller U is what decides the time.

Accuracy (random normal x (4 x C x 12 x 12) and w (32 x C x 3 x 3), float32 against
float64, ``python bench/bench_conv_paths.py --winograd-accuracy``): max |error| over
sqrt(9 C) max|x| max|w| is 1.2e-6 at C = 64, 2.1e-6 at 256, 1.8e-6 at 512 (max |error|
5e-4, 1.9e-3, 2.3e-3 on outputs up to 86, 181, 285), against 2e-7 to 4.5e-7 for the
float32 path without Winograd: 4-6x the error, from the transforms' constants up to 8
and 5. F(2x2, 3x3), whose constants are 1 and 1/2: 7e-8, 1.3e-7, 1.2e-7. Float64 stays
within about 1e-15 of that scale.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from fractions import Fraction as Fr

from llvmlite import ir

from .builder import Buf, fma_intrinsic, for_range, i64
from .lowering import PREP_HEADER
from .conv_direct import arrays, scratch_bytes
from .gemm import gemm_function, transpose
from .gemm_tiling import tiling

# F(4x4, 3x3)
BT = [[4, 0, -5, 0, 1, 0],
      [0, -4, -4, 1, 1, 0],
      [0, 4, -4, -1, 1, 0],
      [0, -2, -1, 2, 1, 0],
      [0, 2, -1, -2, 1, 0],
      [0, 4, 0, -5, 0, 1]]
G = [[Fr(1, 4), 0, 0],
     [Fr(-1, 6), Fr(-1, 6), Fr(-1, 6)],
     [Fr(-1, 6), Fr(1, 6), Fr(-1, 6)],
     [Fr(1, 24), Fr(1, 12), Fr(1, 6)],
     [Fr(1, 24), Fr(-1, 12), Fr(1, 6)],
     [0, 0, 1]]
AT = [[1, 1, 1, 1, 1, 0],
      [0, 1, -1, 2, -2, 0],
      [0, 1, 1, 4, 4, 0],
      [0, 1, -1, 8, -8, 1]]
# F(2x2, 3x3)
BT2 = [[1, 0, -1, 0],
       [0, 1, 1, 0],
       [0, -1, 1, 0],
       [0, 1, 0, -1]]
G2 = [[1, 0, 0],
      [Fr(1, 2), Fr(1, 2), Fr(1, 2)],
      [Fr(1, 2), Fr(-1, 2), Fr(1, 2)],
      [0, 0, 1]]
AT2 = [[1, 1, 1, 0],
       [0, 1, -1, -1]]

MIN_CHANNELS = 16           # fewer input or output channels: the transforms do not pay
CHUNK_BYTES = 3 << 19       # V and M of one chunk of images (about half the L2 cache)
MIN_CHUNK_TILES, MAX_CHUNK_TILES = 32, 256
MAX_SCRATCH = 96 << 20      # bytes; a larger plan is left to the other paths
# the cost model, in cycles of one core (measured on an AVX-512 host, one thread; the
# transforms are bound by their scattered loads and stores, not by their arithmetic)
FMA_PER_CYCLE = 1.0         # vector multiply-adds of the packed GEMM per cycle
TRANSFORM_IN = 400          # one tile of vw channels: 36 loads, B^T d B, 36 stores
TRANSFORM_OUT = 700         # one tile of vw channels: 36 loads, A^T M A, the stores into y
# F(2x2)'s: 16 loads and stores in, 16 loads and 4 outputs out (scaled by the loads and
# stores, which bind them)
TRANSFORM_IN2 = 180
TRANSFORM_OUT2 = 270
# F(2x2, 3x3) where F(4x4)'s chunks would have fewer tiles than this and its U more bytes
# than this: each GEMM then streams U[xi] (kept from call to call, or made per call) from
# memory at more bytes per multiply-add than memory delivers, and F(2x2)'s U is 16 / 36 of
# it at 1.4x the multiply-adds (its tiles fill the GEMM's rows better as well: 49 on 14 x
# 14 against 16). ResNet-18's 256-channel layers on 14 x 14 at batch 1 (U 9.4 MB against
# 4.2): see ``Form``
SMALL_CHUNK_TILES = 32
STREAMED_U_BYTES = 4 << 20
COPY = 1.5                  # one element copied channel-last into the padded grid
WEIGHT_GATHER = 18          # one (o, c) pair's 9 weights loaded into vector lanes
WEIGHT_VECTOR = 108         # G g G^T and its 36 stores, per vw pairs (F(4x4))
BYTES_PER_CYCLE = 16        # U written, then read once per chunk, from outside L2
PAYS_BELOW = 0.8            # Winograd's estimate against the direct product's


@dataclass(frozen=True)
class Winograd:
    N: int
    C: int
    O: int
    H: int
    W: int
    pads: tuple[int, int, int, int]       # top, bottom, left, right
    dtype: str
    features: str
    # the input gradient's convolution of gy: w read as w[c][o] with the kernel flipped
    flipped: bool = False
    threads: int = 1
    m: int = 4          # outputs per tile side: F(m x m, 3 x 3), ``FORMS``

    @property
    def item(self) -> int:      # bytes of an element
        return 4 if self.dtype == "float32" else 8

    @property
    def form(self) -> "Form":
        return FORMS[self.m]

    @property
    def win(self) -> int:       # input tile side
        return self.m + 2

    @property
    def xi(self) -> int:        # transformed positions: one GEMM each
        return self.win * self.win

    def weight_index(self, b, o, c, k: int):
        """The element of w holding tap k of this convolution's kernel (o, c)."""
        if self.flipped:
            return b.add(b.mul(b.add(b.mul(c, i64(self.O)), o), i64(9)), i64(8 - k))
        return b.add(b.mul(b.add(b.mul(o, i64(self.C)), c), i64(9)), i64(k))

    @property
    def vw(self) -> int:
        return tiling(self.dtype, self.features).vw

    @property
    def out(self) -> tuple[int, int]:
        t, bo, l, r = self.pads
        return self.H + t + bo - 2, self.W + l + r - 2

    @property
    def tiles(self) -> tuple[int, int]:
        ho, wo = self.out
        return -(-ho // self.m), -(-wo // self.m)

    @property
    def grid(self) -> tuple[int, int]:
        th, tw = self.tiles
        return self.m * th + 2, self.m * tw + 2

    @property
    def Cp(self) -> int:
        return -(-self.C // self.vw) * self.vw

    @property
    def Op(self) -> int:
        return -(-self.O // self.vw) * self.vw

    @property
    def per_image(self) -> int:
        th, tw = self.tiles
        return th * tw

    @property
    def own(self) -> bool:
        """Each thread runs whole chunks in its own P, V, M (no barrier inside a chunk),
        when there are at least as many chunks as threads; else the threads split each
        chunk's work, meeting after every phase."""
        return self.threads > 1 and -(-self.N // self._images()) >= self.threads

    @property
    def nb(self) -> int:
        """Images per chunk (``_images``), evened out over the threads when they take
        whole chunks (5 chunks on 2 threads become 6)."""
        nb = self._images()
        if self.own:
            per = -(-self.N // nb)
            nb = -(-self.N // (-(-per // self.threads) * self.threads))
        return nb

    @property
    def chunks(self) -> int:
        return -(-self.N // self.nb)

    def _images(self) -> int:
        """Images per chunk: V and M of a chunk within about CHUNK_BYTES (they stay in
        cache between the transforms and the GEMMs), unless U, read again by every chunk,
        would then move more bytes than they do (at least C O / (C + O) tiles: 128 at 256
        channels); MIN_CHUNK_TILES to MAX_CHUNK_TILES tiles, at least one image."""
        item = self.item
        tiles = max(CHUNK_BYTES // (self.xi * (self.Cp + self.Op) * item),
                    self.C * self.O // (self.C + self.O))
        tiles = min(max(tiles, MIN_CHUNK_TILES), MAX_CHUNK_TILES)
        return max(1, min(self.N, tiles // self.per_image))

    @property
    def Tc(self) -> int:
        return self.nb * self.per_image

    def chunk_parts(self) -> list[int]:
        """Scratch arrays (elements) of a chunk: the padded channel-last grid P, V, M (one
        set per thread where the threads take whole chunks, after U's XI C Op elements)."""
        hp, wp = self.grid
        return [self.nb * hp * wp * self.Cp, self.xi * self.Tc * self.Cp,
                self.xi * self.Tc * self.Op]

    def scratch_bytes(self) -> int:
        copies = self.threads if self.own else 1
        return (scratch_bytes(self.dtype, [self.xi * self.C * self.Op])
                + copies * scratch_bytes(self.dtype, self.chunk_parts()))

    def pays(self) -> bool:
        """Winograd's estimated cycles against the direct product's (9 multiply-adds per
        output position and (c, o) pair on the packed GEMM): its 36 (16) per tile and pair
        on the same GEMM, the transforms, the channel-last copy and U (36 C O values
        written once and read by every chunk)."""
        vw, (ho, wo) = self.vw, self.out
        item = self.item
        T = self.N * self.per_image
        hp, wp = self.grid
        chunks = self.chunks
        direct = self.N * ho * wo * 9 * self.C * self.O / (vw * FMA_PER_CYCLE)
        f = self.form
        wino = (self.xi * T * self.C * self.O / (vw * FMA_PER_CYCLE)
                + T * (self.Cp * f.transform_in + self.Op * f.transform_out) / vw
                + self.N * hp * wp * self.Cp * COPY
                + self.C * self.O * (WEIGHT_GATHER + WEIGHT_VECTOR * self.xi / 36 / vw
                                     + self.xi * item * (1 + chunks) / BYTES_PER_CYCLE))
        return wino < PAYS_BELOW * direct


def plan(x_shape, w_shape, attrs, dtype: str, features: str,
         threads: int = 1) -> Winograd | None:
    """The Winograd plan of a convolution when it applies and pays, else None: 2-D, a 3x3
    kernel, stride 1, dilation 1, one group, float32/float64, at least MIN_CHANNELS input
    and output channels, an output plane of at least 4x4."""
    if (dtype not in ("float32", "float64") or len(x_shape) != 4
            or tuple(w_shape[2:]) != (3, 3) or attrs["groups"] != 1
            or tuple(attrs["stride"]) != (1, 1) or tuple(attrs["dilation"]) != (1, 1)
            or any(p < 0 for p in attrs["padding"])
            or min(x_shape[1], w_shape[0]) < MIN_CHANNELS or x_shape[0] < 1):
        return None
    wg = Winograd(x_shape[0], x_shape[1], w_shape[0], x_shape[2], x_shape[3],
                  tuple(attrs["padding"]), dtype, features, threads=max(threads, 1))
    # the chunk before it is evened out over the threads: the form, like the tiles' values,
    # the same on every thread count
    if (wg._images() * wg.per_image < SMALL_CHUNK_TILES
            and wg.xi * wg.C * wg.Op * wg.item > STREAMED_U_BYTES):
        wg = replace(wg, m=2)
    if min(wg.out) < wg.m or wg.scratch_bytes() > MAX_SCRATCH or not wg.pays():
        return None
    return wg


def plan_input_grad(w_shape, gy_shape, attrs, dtype: str, features: str,
                    threads: int = 1) -> Winograd | None:
    """``conv_input_grad`` of a 3x3 stride-1 convolution (eq. 9.13) as the Winograd
    convolution of gy padded by 2 - padding per side, the kernel flipped and its channel
    axes swapped; None where ``plan`` declines it or a padding exceeds 2."""
    pads = tuple(2 - p for p in attrs["padding"])
    if len(w_shape) != 4 or any(p < 0 for p in pads):
        return None
    wg = plan(gy_shape, (w_shape[1], w_shape[0]) + tuple(w_shape[2:]),
              dict(attrs, padding=pads), dtype, features, threads)
    if wg is None or wg.out != tuple(attrs["input_size"]):
        return None
    return replace(wg, flipped=True)


# ---------------------------------------------------------------- code


def _combine(b, mat, vals, const):
    """out[i] = sum_j mat[i][j] * vals[j] (zero terms skipped, +-1 without a multiply)."""
    out = []
    for row in mat:
        acc = None
        for c, v in zip(row, vals):
            if c == 0:
                continue
            mag = abs(c)
            term = v if mag == 1 else b.fmul(const(float(mag)), v)
            if acc is None:
                acc = term if c > 0 else b.fsub(const(0.0), term)
            else:
                acc = b.fadd(acc, term) if c > 0 else b.fsub(acc, term)
        out.append(acc if acc is not None else const(0.0))
    return out


def _sandwich(b, mat, tile, const):
    """mat @ tile @ mat^T of a square list-of-lists of values; ``mat`` a matrix or a
    function of (builder, values) giving mat @ values."""
    apply = mat if callable(mat) else (lambda b_, vals: _combine(b_, mat, vals, const))
    cols = list(zip(*tile))
    left = [apply(b, list(col)) for col in cols]                     # left[k][i]
    rows = [[left[k][i] for k in range(len(cols))] for i in range(len(left[0]))]
    return [apply(b, row) for row in rows]


class _Fma:
    """fma(a, x, y) = a * x + y (one rounding) on vectors of ``vw`` ``elem``."""

    def __init__(self, module, vec):
        self.vec = vec
        self.fn = fma_intrinsic(module, vec)

    def __call__(self, b, a: float, x, y):
        return b.call(self.fn, [ir.Constant(self.vec, [a] * self.vec.count), x, y])


def _input_rows(fma):
    """BT @ d, factored: 14 operations instead of 28 (the rows of BT share sums)."""
    def apply(b, d):
        t1, t2 = b.fadd(d[1], d[2]), b.fadd(d[3], d[4])
        t3, t4 = b.fsub(d[1], d[2]), b.fsub(d[4], d[3])
        t5, t6 = b.fsub(d[3], d[1]), b.fsub(d[4], d[2])
        return [fma(b, 4.0, d[0], fma(b, -5.0, d[2], d[4])),
                fma(b, -4.0, t1, t2),
                fma(b, 4.0, t3, t4),
                fma(b, 2.0, t5, t6),
                fma(b, -2.0, t5, t6),
                fma(b, 4.0, d[1], fma(b, -5.0, d[3], d[5]))]
    return apply


def _output_rows(fma):
    """AT @ m, factored (the rows of AT share m1 +- m2 and m3 +- m4)."""
    def apply(b, m):
        a, p = b.fadd(m[1], m[2]), b.fsub(m[1], m[2])
        c, d = b.fadd(m[3], m[4]), b.fsub(m[3], m[4])
        return [b.fadd(b.fadd(m[0], a), c),
                fma(b, 2.0, d, p),
                fma(b, 4.0, c, a),
                b.fadd(fma(b, 8.0, d, p), m[5])]
    return apply


def _input_rows2(fma):
    """BT2 @ d."""
    def apply(b, d):
        return [b.fsub(d[0], d[2]), b.fadd(d[1], d[2]), b.fsub(d[2], d[1]),
                b.fsub(d[1], d[3])]
    return apply


def _output_rows2(fma):
    """AT2 @ m."""
    def apply(b, m):
        a = b.fadd(m[1], m[2])
        return [b.fadd(m[0], a), b.fsub(b.fsub(m[1], m[2]), m[3])]
    return apply


@dataclass(frozen=True)
class Form:
    """F(m x m, 3 x 3): its matrices (G as exact fractions), the factored B^T d and A^T m
    its code emits, and the cost model's cycles of its transforms per tile of vw channels.

    F(2x2) is chosen where F(4x4)'s U would stream from memory at few tiles per GEMM
    (``plan``: ``SMALL_CHUNK_TILES``, ``STREAMED_U_BYTES``). ResNet-18 at batch 1, Intel
    Xeon (AVX-512), its three 256 -> 256 layers on 14 x 14 (bias, ReLU, kept U), in-network
    profile, one thread: 1.66 -> 1.22-1.25 ms each (onnxruntime about 1.30); alone, two
    threads, the cache flushed before each call, best of 40, two runs: 1.04-1.09 -> 0.95-1.01
    ms; warm, 0.52 either way."""
    m: int
    bt: list
    g: list
    at: list
    input_rows: object          # fma -> (builder, values) -> BT @ values
    output_rows: object         # fma -> (builder, values) -> AT @ values
    transform_in: int
    transform_out: int


FORMS = {4: Form(4, BT, G, AT, _input_rows, _output_rows, TRANSFORM_IN, TRANSFORM_OUT),
         2: Form(2, BT2, G2, AT2, _input_rows2, _output_rows2, TRANSFORM_IN2, TRANSFORM_OUT2)}


def lower(ctx, wg: Winograd, x: Buf, w: Buf, y: Buf, tail=None, prep=None) -> None:
    """y = the convolution of x with w by ``wg``'s plan. ``tail(n, p0, p1)``: a fused
    region's epilogue over output positions [p0, p1) of image n (every channel), run on
    each chunk's images right after its output transform, while they are in cache.
    ``prep``: a prepared-weights block (``Ctx.prep``, of ``prepared_bytes``) when w keeps
    its values from call to call: U is made there by the first call only."""
    b = ctx.b
    U = arrays(ctx, wg.dtype, ctx.node_scratch if prep is None
               else b.gep(prep, [i64(PREP_HEADER)]), [wg.xi * wg.C * wg.Op])[0]

    # 1. U[xi][c][o] = (G g G^T)[xi], vw output channels at a time (lanes past O repeat
    # the last channel: they land in U's padding columns, which no GEMM reads); with a
    # prepared block, only while its flag says U is not there yet (every thread reads the
    # flag before the barrier, every one sets it after: all take the same branch)
    if prep is not None:
        assert not wg.flipped, "a flipped kernel is a gradient's: its weights change"
        flag = b.bitcast(prep, ir.PointerType(ir.IntType(64)))
        ready = b.load_atomic(flag, "monotonic", 8)
        with b.if_then(b.icmp_signed("==", ready, i64(0))):
            _transform_weights(ctx, wg, w, U)
            ctx.barrier()
            b.store_atomic(i64(1), flag, "monotonic", 8)
    else:
        _transform_weights(ctx, wg, w, U)
        ctx.barrier()
    _chunks(ctx, wg, x, y, U, tail)


def prepared_bytes(wg: Winograd) -> int:
    """The bytes of a prepared-weights block: its flag, then U."""
    return PREP_HEADER + scratch_bytes(wg.dtype, [wg.xi * wg.C * wg.Op])


def _transform_weights(ctx, wg: Winograd, w: Buf, U) -> None:
    """U[xi][c][o] = (G g_oc G^T)[xi], this thread's share of the input channels."""
    b = ctx.b
    vw, C, O, Op = wg.vw, wg.C, wg.O, wg.Op
    vec = ir.VectorType(w.elem, vw)
    vp = ir.PointerType(vec)
    align = 4 if wg.dtype == "float32" else 8

    def vconst(v):
        return ir.Constant(vec, [v] * vw)
    lo, hi = ctx.split(C)
    with for_range(b, lo, hi, "wgc") as c:
        def weights(og, lanes: int):
            def tap(k):
                v = ir.Constant(vec, ir.Undefined)
                for lane in range(vw):
                    o = b.add(og, i64(min(lane, lanes - 1)))
                    v = b.insert_element(v, w.load(b, wg.weight_index(b, o, c, k)),
                                         ir.Constant(ir.IntType(32), lane))
                return v
            u = _sandwich(b, wg.form.g, [[tap(3 * r + s) for s in range(3)] for r in range(3)],
                          vconst)
            base = b.add(b.mul(c, i64(Op)), og)
            for xi in range(wg.xi):
                b.store(u[xi // wg.win][xi % wg.win],
                        b.bitcast(b.gep(U, [b.add(base, i64(xi * C * Op))]), vp),
                        align=align)
        _per_group(b, O, vw, weights)


def _chunks(ctx, wg: Winograd, x: Buf, y: Buf, U, tail) -> None:
    """Phases 2 to 4 (and the tail) for every chunk of images, U made."""
    b = ctx.b
    elem = x.elem
    vw = wg.vw
    vec = ir.VectorType(elem, vw)
    vp = ir.PointerType(vec)
    align = 4 if wg.dtype == "float32" else 8
    C, O, Cp, Op, Tc = wg.C, wg.O, wg.Cp, wg.Op, wg.Tc
    ho, wo = wg.out
    th, tw = wg.tiles
    hp, wp = wg.grid
    tile, win, nxi = wg.m, wg.win, wg.xi
    mine = i64(scratch_bytes(wg.dtype, [nxi * C * Op]))
    if wg.own:
        mine = b.add(mine, b.mul(ctx.tid, i64(scratch_bytes(wg.dtype, wg.chunk_parts()))))
    P, V, M = arrays(ctx, wg.dtype, b.gep(ctx.node_scratch, [mine]), wg.chunk_parts())
    fma = _Fma(ctx.module, vec)

    def vconst(v):
        return ir.Constant(vec, [v] * vw)
    gemm = gemm_function(ctx.module, wg.dtype, ctx.features)
    if wg.own:      # whole chunks per thread: no split or barrier inside one
        def part(n):
            return i64(0), n if isinstance(n, ir.Value) else i64(n)

        def sync():
            pass
        first, last = ctx.split(wg.chunks)
    else:
        part, sync = ctx.split, ctx.barrier
        first, last = i64(0), i64(wg.chunks)
    with for_range(b, first, last, "wchunk") as chunk:
        n0 = b.mul(chunk, i64(wg.nb))
        nimg = b.sub(i64(wg.N), n0)
        nimg = b.select(b.icmp_signed("<", nimg, i64(wg.nb)), nimg, i64(wg.nb))
        ntiles = b.mul(nimg, i64(wg.per_image))
        _copy_padded(ctx, wg, x, P, n0, nimg, part)
        sync()
        # 2. V[xi][t][c] = (B^T d B)[xi]
        lo, hi = part(ntiles)
        with for_range(b, lo, hi, "wtin") as t:
            nl, rest = b.sdiv(t, i64(th * tw)), b.srem(t, i64(th * tw))
            i, j = b.sdiv(rest, i64(tw)), b.srem(rest, i64(tw))
            row0 = b.add(b.mul(nl, i64(hp)), b.mul(i, i64(tile)))
            base = b.mul(b.add(b.mul(row0, i64(wp)), b.mul(j, i64(tile))), i64(Cp))
            vbase = b.mul(t, i64(Cp))
            with for_range(b, 0, Cp, "wcg", vw) as cg:
                at = b.add(base, cg)
                d = [[b.load(b.bitcast(b.gep(P, [b.add(at, i64((r * wp + s) * Cp))]), vp),
                             align=align) for s in range(win)] for r in range(win)]
                v = _sandwich(b, wg.form.input_rows(fma), d, vconst)
                dst = b.add(vbase, cg)
                for xi in range(nxi):
                    b.store(v[xi // win][xi % win],
                            b.bitcast(b.gep(V, [b.add(dst, i64(xi * Tc * Cp))]), vp),
                            align=align)
        sync()
        # 3. M[xi] = V[xi] @ U[xi]
        lo, hi = part(nxi)
        with for_range(b, lo, hi, "wxi") as xi:
            a_ptr = b.gep(V, [b.mul(xi, i64(Tc * Cp))])
            b_ptr = b.gep(U, [b.mul(xi, i64(C * Op))])
            c_ptr = b.gep(M, [b.mul(xi, i64(Tc * Op))])
            b.call(gemm, [a_ptr, i64(Cp), i64(1), b_ptr, i64(Op), i64(1), c_ptr, i64(Op),
                          ntiles, i64(O), i64(C), ctx.scratch(), i64(0)])
        sync()
        # 4. y = A^T M A
        lo, hi = part(ntiles)
        with for_range(b, lo, hi, "wtout") as t:
            nl, rest = b.sdiv(t, i64(th * tw)), b.srem(t, i64(th * tw))
            i, j = b.sdiv(rest, i64(tw)), b.srem(rest, i64(tw))
            n = b.add(n0, nl)
            r0, s0 = b.mul(i, i64(tile)), b.mul(j, i64(tile))
            ybase = b.add(b.mul(b.mul(n, i64(O)), i64(ho * wo)),
                          b.add(b.mul(r0, i64(wo)), s0))
            rows = b.sub(i64(ho), r0)
            cols = b.sub(i64(wo), s0)
            full = b.and_(b.icmp_signed(">=", rows, i64(tile)),
                          b.icmp_signed(">=", cols, i64(tile)))
            mbase = b.mul(t, i64(Op))

            def group(og, lanes: int):
                at = b.add(mbase, og)
                m = [[b.load(b.bitcast(b.gep(M, [b.add(at, i64(xi * Tc * Op))]), vp),
                             align=align) for xi in range(r * win, (r + 1) * win)]
                     for r in range(win)]
                out = _sandwich(b, wg.form.output_rows(fma), m, vconst)
                obase = b.add(ybase, b.mul(og, i64(ho * wo)))

                def stores(guarded: bool):
                    for r in range(tile):
                        for s in range(tile):
                            def put(r=r, s=s):
                                for lane in range(lanes):
                                    v = b.extract_element(out[r][s], ir.Constant(
                                        ir.IntType(32), lane))
                                    off = i64(lane * ho * wo + r * wo + s)
                                    y.store(b, b.add(obase, off), v)
                            if guarded:
                                ok = b.and_(b.icmp_signed(">", rows, i64(r)),
                                            b.icmp_signed(">", cols, i64(s)))
                                with b.if_then(ok):
                                    put()
                            else:
                                put()
                def rows_at_once():
                    # a whole row of the tile per channel: the vectors (one per column)
                    # interleaved, then each channel's values stored together
                    q = ir.VectorType(ir.IntType(32), 2 * vw)
                    pair = ir.Constant(q, [k // 2 + (k % 2) * vw for k in range(2 * vw)])
                    quad = ir.Constant(ir.VectorType(ir.IntType(32), 4 * vw), [
                        (k // 4) * 2 + (k % 4 // 2) * 2 * vw + k % 2 for k in range(4 * vw)])
                    qp = ir.PointerType(ir.VectorType(elem, tile))
                    for r in range(tile):
                        abcd = b.shuffle_vector(out[r][0], out[r][1], pair)
                        if tile == 4:
                            cd = b.shuffle_vector(out[r][2], out[r][3], pair)
                            abcd = b.shuffle_vector(abcd, cd, quad)
                        undef = ir.Constant(abcd.type, ir.Undefined)
                        for lane in range(lanes):
                            four = b.shuffle_vector(abcd, undef, ir.Constant(
                                ir.VectorType(ir.IntType(32), tile),
                                list(range(tile * lane, tile * lane + tile))))
                            off = i64(lane * ho * wo + r * wo)
                            b.store(four, b.bitcast(y.at(b, b.add(obase, off)), qp),
                                    align=align)
                with b.if_else(full) as (whole, edge):
                    with whole:
                        rows_at_once()
                    with edge:
                        stores(True)
            _per_group(b, O, vw, group)
        sync()
        if tail is not None:
            with for_range(b, 0, nimg, "wtail") as nl:
                p0, p1 = part(ho * wo)
                tail(b.add(n0, nl), p0, p1)


def _per_group(b, n: int, vw: int, body) -> None:
    """``body(first, lanes)`` for the groups of vw of range(n): a loop over the whole groups,
    then the last partial one (lanes < vw) unrolled."""
    whole = n // vw * vw
    if whole:
        with for_range(b, 0, whole, "wgrp", vw) as first:
            body(first, vw)
    if n % vw:
        body(i64(whole), n % vw)


def _copy_padded(ctx, wg: Winograd, x: Buf, P, n0, nimg, part) -> None:
    """P[nl][yy][xx][c] = x[n0 + nl][c][yy - top][xx - left], zero outside x and for the
    channels past C; ``part`` gives this thread's rows (nl, yy). Blocks of bs channels x bs columns
    move as bs vector loads, a transpose in registers and bs vector stores; the channels
    and columns past whole blocks one by one."""
    b = ctx.b
    C, Cp, H, W = wg.C, wg.Cp, wg.H, wg.W
    hp, wp = wg.grid
    pt, _, pl, _ = wg.pads
    elem = x.elem
    zero = ir.Constant(elem, 0.0)
    bs = min(wg.vw, 8)
    bvec = ir.VectorType(elem, bs)
    bp = ir.PointerType(bvec)
    align = 4 if wg.dtype == "float32" else 8
    cb, xb = C // bs * bs, W // bs * bs

    def zeros(start, n):
        with for_range(b, 0, n, "wz") as e:
            b.store(zero, b.gep(P, [b.add(start, e)]))

    lo, hi = part(b.mul(nimg, i64(hp)))
    with for_range(b, lo, hi, "wrow") as rr:
        nl, yy = b.sdiv(rr, i64(hp)), b.srem(rr, i64(hp))
        prow = b.mul(rr, i64(wp * Cp))
        iy = b.sub(yy, i64(pt))
        inside = b.and_(b.icmp_signed(">=", iy, i64(0)), b.icmp_signed("<", iy, i64(H)))
        with b.if_else(inside) as (copy, blank):
            with copy:
                xrow = b.add(b.mul(b.mul(b.add(n0, nl), i64(C)), i64(H * W)),
                             b.mul(iy, i64(W)))
                first = b.add(prow, i64(pl * Cp))       # P at column pl, channel 0
                if pl:
                    zeros(prow, pl * Cp)
                if wp > pl + W:
                    zeros(b.add(prow, i64((pl + W) * Cp)), (wp - pl - W) * Cp)
                if Cp > C:
                    with for_range(b, 0, W, "wzx") as ix:
                        zeros(b.add(first, b.add(b.mul(ix, i64(Cp)), i64(C))), Cp - C)
                if cb and xb:
                    with for_range(b, 0, cb, "wbc", bs) as c0:
                        with for_range(b, 0, xb, "wbx", bs) as x0:
                            src = b.add(b.add(xrow, b.mul(c0, i64(H * W))), x0)
                            rows = [b.load(b.bitcast(x.at(b, b.add(src, i64(i * H * W))), bp),
                                           align=align) for i in range(bs)]
                            dst = b.add(b.add(first, b.mul(x0, i64(Cp))), c0)
                            for j, col in enumerate(transpose(b, rows, bs)):
                                b.store(col, b.bitcast(b.gep(P, [b.add(dst, i64(j * Cp))]), bp),
                                        align=align)

                def scalar(c_lo, c_hi, x_lo):
                    with for_range(b, c_lo, c_hi, "wcc") as c:
                        src = b.add(xrow, b.mul(c, i64(H * W)))
                        dst = b.add(first, c)
                        with for_range(b, x_lo, W, "wcx") as ix:
                            b.store(x.load(b, b.add(src, ix)),
                                    b.gep(P, [b.add(dst, b.mul(ix, i64(Cp)))]))
                if xb < W:
                    scalar(0, cb, xb)               # the columns past whole blocks
                scalar(cb, C, 0)                    # the channels past whole blocks
            with blank:
                zeros(prow, wp * Cp)
