"""Blocked, packed, register-tiled GEMM in LLVM IR, and the matmul lowering built on it.

C[M,N] = A[M,K] @ B[K,N] with arbitrary element strides for A and B (so transposed operands
cost nothing) and row stride ``ldc`` for C. The classic scheme (Goto/BLIS):

    for jc in N by NC:  for pc in K by KC:  pack B panel (KC x NC, NR-wide column strips)
        for ic in M by MC:  pack A block (MC x KC, MR-tall row strips)
            for each NR strip, for each MR strip:  MR x NR micro-kernel with vector FMAs

The micro-kernel keeps MR x NR accumulators in vector registers (NR = 2 vectors); partial
tiles at the edges go through a stack tile so no load or store leaves C, A or B, and a last
row strip runs the shortest tile height (``Tiling.heights``) that holds it. When M fits one
MC block the B panel is not packed up front: each strip is packed just before its tiles.

A row-major B under at most MC rows of A (a 1x1 convolution's image, a recurrence's step)
takes another nest (``_GemmBuilder.column_blocks``): B read in place in column blocks that
stay in L2, each swept by every row strip of A in turn. Many rows and few columns run as
C^T = B^T @ A^T where its tiles pad less (``_GemmBuilder.transposes``), each tile transposed
in registers on its way into C; so does a product whose last column would be a dot product
over an A of ``TAIL_STREAM_BYTES`` or more. The last N % vw columns, when at most ``TAIL_COLUMNS``
and A's rows are contiguous, are dot products along k (``_GemmBuilder.dot_columns``), not a
tile's mostly empty vector; past the whole NR strips, columns that fill over half a vector
join the last strip as one three-vector-wide strip (``_GemmBuilder.wide_from``): 49 columns
run as one strip of 48 and one dot product. An A read in place under the
packed nest has its rows a few strips ahead prefetched into L2 (``prefetch_ahead``): a
model's weights stream from memory on every call.

The epilogue entry (``gemm_function(..., epilogue=True)``: bias per row, clamps, a residual)
applies it to the tiles of the last K block as they are stored: the forms of ``EP_FORMS``
in registers, any other form and partial tiles through one function over the block just
stored (still in L1); the transposed nest applies it to each row of C its transposed tile
stores (the residual loaded under the store's mask).
"""
from __future__ import annotations

from functools import lru_cache

from llvmlite import ir

from .builder import (F32, I32, I64, PTR, STORAGE, Buf, broadcast_strides, fma_intrinsic,
                      for_range, i64, prod, row_strides, strided_nest)
from . import gemm_bf16, gemv, jit
from .gemm_tiling import B_BLOCK_BYTES, KC, MC, NC, Tiling, splits_rows, tiling
from .lowering import Ctx, lowering


def _arg_types(elem, epilogue: bool = False):
    p = ir.PointerType(elem)
    return [p, I64, I64, p, I64, I64, p, I64, I64, I64, I64, PTR, I64] + (
        [p, p, I64, elem, elem, I64] if epilogue else [])


# the epilogue's ``flags`` (irgraph_gemm_ep_<dtype>)
EP_BIAS = 1             # y += bias[row]
EP_RES_BEFORE = 2       # y += R[row, col] before the clamps
EP_RES_AFTER = 4        # y += R[row, col] after the clamps
EP_LO_INCLUSIVE = 8     # the lower clamp takes lo where y <= lo (else where y < lo)
EP_HI_INCLUSIVE = 16    # the upper clamp takes hi where y >= hi (else where y > hi)
EP_LO = 32              # a lower clamp is given (without: lo = -inf, which clamps nothing)
EP_HI = 64              # an upper clamp is given (hi = +inf without)
# the flags whose epilogue is emitted with only its own operations (conv + bias, + ReLU, +
# ReLU6 as ONNX's Clip and as hardtanh, its lower bound taking y <= 0, + residual, +
# residual + ReLU); any other runs the general one, every step a select
EP_FORMS = (EP_BIAS, EP_BIAS | EP_LO | EP_LO_INCLUSIVE, EP_BIAS | EP_LO | EP_HI,
            EP_BIAS | EP_LO | EP_LO_INCLUSIVE | EP_HI,
            EP_BIAS | EP_RES_BEFORE, EP_BIAS | EP_RES_BEFORE | EP_LO | EP_LO_INCLUSIVE)


def gemm_function(module: ir.Module, dtype: str, features: str,
                  epilogue: bool = False, prepacked: bool = False) -> ir.Function:
    """``irgraph_gemm_<dtype>(A, rsa, csa, B, rsb, csb, C, ldc, M, N, K, scratch, accumulate)``:
    C = A @ B, or C += A @ B when ``accumulate`` is nonzero.

    ``epilogue``: ``irgraph_gemm_ep_<dtype>(..., accumulate, bias, R, ldr, lo, hi, flags)``,
    each element y of the finished sum (the tile's registers in the last K block, C's old
    value added first when accumulating) stored as, in this order: y + bias[row] (EP_BIAS),
    y + R[row * ldr + col] (EP_RES_BEFORE), lo where y < lo (y <= lo: EP_LO_INCLUSIVE), hi
    where y > hi (y >= hi: EP_HI_INCLUSIVE), y + R[row * ldr + col] (EP_RES_AFTER);
    EP_LO / EP_HI say a clamp is given (the flags of ``EP_FORMS`` run only their steps). The
    clamps are ordered compares and selects, so a NaN stays NaN, as the graph's
    where(lt(y, lo), lo, y), maximum(y, lo) and relu; no clamp: lo = -inf, hi = +inf. bias
    and R are read only under their flags (null otherwise); R must not overlap C.

    ``prepacked``: ``irgraph_gemm_pre_<dtype>(..., flags, pre)``, the epilogue entry with
    ``pre``, a block (``prepacked_bytes``) where A's packed form is kept between calls for
    the transposed nest, which otherwise packs A^T on every call (a model's weights: C^T =
    B^T A^T, ``_GemmBuilder.prepared``); null: none.

    Graph modules only declare it: the kernels live in one runtime object (``runtime_module``)
    compiled once per CPU and cached, so a graph's own compile stays small."""
    name = f"irgraph_gemm_{'pre_' if prepacked else 'ep_' if epilogue else ''}{dtype}"
    if name in module.globals:
        return module.globals[name]
    elem = STORAGE[dtype]
    args = _arg_types(elem, epilogue or prepacked) + ([PTR] if prepacked else [])
    return ir.Function(module, ir.FunctionType(ir.VoidType(), args), name)


def no_epilogue(dtype: str) -> list:
    """The epilogue arguments (bias, R, ldr, lo, hi, flags) that apply none."""
    elem = STORAGE[dtype]
    null = ir.Constant(ir.PointerType(elem), None)
    return [null, null, i64(0), ir.Constant(elem, float("-inf")),
            ir.Constant(elem, float("inf")), i64(0)]


PRE_HEADER = 64     # bytes of a prepacked block before A's panels: state, A, M, K, rsa, csa
PRE_READY, PRE_PACKING = 2, 1       # its states (0: empty)


def _panel_columns(n: int, t: Tiling) -> int:
    """The columns a packed panel of ``n`` columns takes at most (``wide_from``'s strips:
    whole NR strips, the last partial one padded, or a wide last strip of NR + vw)."""
    return -(-n // t.nr) * t.nr + t.vw


def prepacked_bytes(M: int, K: int, dtype: str, features: str) -> int:
    """The bytes of a ``pre`` block for an A of at most M x K (``_GemmBuilder.prepack``)."""
    t = tiling(dtype, features)
    cols = sum(_panel_columns(min(NC, M - j), t) for j in range(0, M, NC))
    return PRE_HEADER + cols * K * (4 if dtype == "float32" else 8)


def runtime_module(features: str, triple: str = "") -> ir.Module:
    """The module defining the GEMM kernels of every float dtype for this CPU: the epilogue
    entry holds the nests, the plain one calls it with no epilogue."""
    module = ir.Module(name="irgraph_runtime")
    module.triple = triple
    for dtype in ("float32", "float64"):
        elem = STORAGE[dtype]
        pre = gemm_function(module, dtype, features, prepacked=True)
        _GemmBuilder(module, pre, elem, tiling(dtype, features)).build()
        ep = gemm_function(module, dtype, features, epilogue=True)
        b = ir.IRBuilder(ep.append_basic_block("entry"))
        b.call(pre, list(ep.args) + [ir.Constant(PTR, None)])
        b.ret_void()
        fn = gemm_function(module, dtype, features)
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        b.call(pre, list(fn.args) + no_epilogue(dtype) + [ir.Constant(PTR, None)])
        b.ret_void()
    return module


@lru_cache(maxsize=None)
def runtime_object() -> bytes:
    """The shared kernels (GEMM) for this CPU, compiled once and cached on disk."""
    features = jit.host()[2]
    return jit.compiled_module("irgraph runtime",
                               lambda triple: runtime_module(features, triple))


class _GemmBuilder:
    def __init__(self, module, fn, elem, t: Tiling):
        self.module, self.fn, self.elem, self.t = module, fn, elem, t
        self.vec = ir.VectorType(elem, t.vw)
        self.b = ir.IRBuilder(fn.append_basic_block("entry"))
        self.entry = fn.entry_basic_block
        self.c_t = False        # the nest being emitted computes C^T = B^T A^T into C
        self.micros = {}        # (height, width, A in place, c_t): the tile's function

    def alloca(self, ty, name=""):
        b = ir.IRBuilder(self.entry)
        b.position_at_start(self.entry)
        return b.alloca(ty, name=name)

    def zero(self):
        return ir.Constant(self.elem, 0.0)

    def build(self) -> None:
        b, t = self.b, self.t
        A, rsa, csa, B, rsb, csb, C, ldc, M, N, K, scratch, accumulate = self.fn.args[:13]
        scratch.add_attribute("noalias")        # the thread's own workspace
        self.epilogue = self.fn.args[13:19]     # bias, R, ldr, lo, hi, flags
        pre = self.fn.args[19]                  # A's prepacked block, or null
        self.ep_on = b.icmp_signed("!=", self.epilogue[5], i64(0))
        ep = ir.PointerType(self.elem)
        bp = b.bitcast(scratch, ep)
        ap = b.gep(bp, [i64(KC * (NC + t.nr))], inbounds=True)
        tail = self.tail_columns(N, csa)
        with b.if_else(self.transposes(M, N, tail)) as (swap, keep):
            with swap:
                self.c_t = True
                ops = (B, csb, rsb, A, csa, rsa, N, M)
                packed = self.prepared(pre, A, rsa, csa, M, K)
                with b.if_else(b.icmp_unsigned("!=", packed, ir.Constant(packed.type, None))
                               ) as (kept, fresh):
                    with kept:
                        self.blocked(bp, ap, ops, pre=packed)
                    with fresh:
                        self.blocked(bp, ap, ops)
                self.c_t = False
            with keep:
                main = b.sub(N, tail)
                with b.if_then(b.icmp_signed(">", main, i64(0))):
                    with b.if_else(b.and_(b.icmp_signed("==", csb, i64(1)),
                                          b.icmp_signed("<=", M, i64(MC)))) as (rows, other):
                        with rows:
                            self.column_blocks(bp, ap, main)
                        with other:
                            self.blocked(bp, ap, (A, rsa, csa, B, rsb, csb, M, main))
                with b.if_then(b.icmp_signed(">", tail, i64(0))):
                    self.dot_columns(bp, main, N)
        b.ret_void()

    def tail_columns(self, N, csa):
        """The last columns left to ``dot_columns``: N % vw when that is at most
        ``TAIL_COLUMNS`` (``LONG_TAIL_COLUMNS`` where K is at least ``LONG_TAIL_K``) and
        A's rows are contiguous, else none. A tile spends a whole vector on them (49
        columns, a 1x1 convolution on 7 x 7, fill 32 + 32: 77% of the multiply-adds kept;
        as 48 + one dot product, 98%). A dot product of a short K spends more on its
        reduction than the tile's empty lanes cost: 196 columns (14 x 14) as 192 + 4, 1x1
        convolution + bias, one thread, in-process A/B, median of 300 calls: 96 x 576 @ 576
        x 196 0.246 -> 0.227 ms, 64 x 384 @ 384 x 196 0.135 -> 0.123, 576 x 96 @ 96 x 196
        0.267 -> 0.258; 384 x 64 @ 64 x 196 9% slower (so K < 96 keeps two)."""
        b, t = self.b, self.t
        K = self.fn.args[10]
        rest = b.srem(N, i64(t.vw))
        most = b.select(b.icmp_signed(">=", K, i64(LONG_TAIL_K)), i64(LONG_TAIL_COLUMNS),
                        i64(TAIL_COLUMNS))
        ok = b.and_(b.icmp_signed("<=", rest, most), b.icmp_signed("==", csa, i64(1)))
        return b.select(ok, rest, i64(0))

    def dot_columns(self, bp, n0, n1) -> None:
        """C[:, n0:n1] = A @ B[:, n0:n1] (+ C when accumulating), then the epilogue over
        those columns: per K block of at most ``DOT_K``, the T = n1 - n0 columns of B
        copied side by side into the scratch, then rows of A (contiguous) in groups
        (``dot_rows``), each multiplied along k in vectors against all T columns at once
        (A read once for every column: a weight matrix larger than L2 streams from memory
        once, not once per column), each of the group's T sums reduced in a tree; the
        first block stores, the others add. One loop nest per T (``LONG_TAIL_COLUMNS`` at
        most), so that the accumulators stay in registers."""
        b, t = self.b, self.t
        A, rsa, csa, B, rsb, csb, C, ldc, M, N, K, scratch, accumulate = self.fn.args[:13]
        vw, vec = t.vw, self.vec
        vp = ir.PointerType(vec)
        align = self.elem_align()
        zero = ir.Constant(vec, [0.0] * vw)
        fma, sfma = self.fma(vec), self.fma(self.elem)
        fresh = b.icmp_signed("==", accumulate, i64(0))

        def put(row, c, pc, s):
            p = b.gep(C, [b.add(b.mul(row, ldc), c)])
            adds = b.or_(b.icmp_signed(">", pc, i64(0)), b.not_(fresh))
            b.store(b.select(adds, b.fadd(b.load(p), s), s), p)

        def rows_dot(i0, h, T, pc, kc, kfull):
            accs = [[self.alloca(vec, f"dot{h}x{T}_{r}_{j}") for j in range(T)]
                    for r in range(h)]
            for row in accs:
                for a in row:
                    b.store(zero, a)
            arows = [b.gep(A, [b.add(b.mul(b.add(i0, i64(r)), rsa), pc)]) for r in range(h)]
            bcols = [b.gep(bp, [i64(j * DOT_K)]) for j in range(T)]
            with for_range(b, 0, kfull, "dk", vw) as k:
                bv = [b.load(b.bitcast(b.gep(col, [k]), vp), align=align) for col in bcols]
                for r in range(h):
                    av = b.load(b.bitcast(b.gep(arows[r], [k]), vp), align=align)
                    for j in range(T):
                        b.store(b.call(fma, [av, bv[j], b.load(accs[r][j])]), accs[r][j])
            sacc = [[self.alloca(self.elem, f"dots{h}x{T}_{r}_{j}") for j in range(T)]
                    for r in range(h)]
            for r in range(h):
                for j in range(T):
                    b.store(self.reduce_sum(b.load(accs[r][j])), sacc[r][j])
            with for_range(b, kfull, kc, "dr") as k:
                bk = [b.load(b.gep(col, [k])) for col in bcols]
                for r in range(h):
                    ak = b.load(b.gep(arows[r], [k]))
                    for j in range(T):
                        b.store(b.call(sfma, [ak, bk[j], b.load(sacc[r][j])]), sacc[r][j])
            for r in range(h):
                for j in range(T):
                    put(b.add(i0, i64(r)), b.add(n0, i64(j)), pc, b.load(sacc[r][j]))

        T = b.sub(n1, n0)
        with for_range(b, 0, K, "dp", DOT_K) as pc:
            kc = _min(b, i64(DOT_K), b.sub(K, pc))
            with for_range(b, 0, T, "dc") as j:
                col = b.gep(bp, [b.mul(j, i64(DOT_K))])
                at = b.gep(B, [b.add(b.mul(pc, rsb), b.mul(b.add(n0, j), csb))])
                with for_range(b, 0, kc, "dcp") as k:
                    b.store(b.load(b.gep(at, [b.mul(k, rsb)])), b.gep(col, [k]))
            kfull = b.mul(b.sdiv(kc, i64(vw)), i64(vw))
            fn = b.function
            done = fn.append_basic_block("dot_done")
            switch = b.switch(T, done)
            for n in range(1, LONG_TAIL_COLUMNS + 1):
                block = fn.append_basic_block(f"dot_cols{n}")
                switch.add_case(i64(n), block)
                b.position_at_end(block)
                h = self.dot_rows(n)
                mfull = b.mul(b.sdiv(M, i64(h)), i64(h))
                with for_range(b, 0, mfull, "di", h) as i0:
                    rows_dot(i0, h, n, pc, kc, kfull)
                with for_range(b, mfull, M, "dj") as i0:
                    rows_dot(i0, 1, n, pc, kc, kfull)
                b.branch(done)
            b.position_at_end(done)
        with b.if_then(self.ep_on):
            bias, res, ldr, lo, hi, flags = self.epilogue
            b.call(self.epilogue_block(), [b.gep(C, [n0]), ldc, bias,
                                           b.gep(res, [n0]), ldr, lo, hi, flags, M,
                                           b.sub(n1, n0)])

    def dot_rows(self, T: int) -> int:
        """Rows of A per group of ``dot_columns`` against T columns: ``DOT_ROWS`` where its
        DOT_ROWS x T accumulators, DOT_ROWS vectors of A and T of B fit the vector
        registers (32 with AVX-512, 16 otherwise), else half as many."""
        regs = 32 if self.t.vw * self.elem_align() == 64 else 16
        h = DOT_ROWS
        while h > 1 and h * T + h + T > regs:
            h //= 2
        return h

    def prefetch(self):
        """The ``llvm.prefetch`` intrinsic (address, write?, locality, data)."""
        return self.module.globals.get("llvm.prefetch.p0") or ir.Function(
            self.module, ir.FunctionType(ir.VoidType(), [PTR, I32, I32, I32]),
            "llvm.prefetch.p0")

    def fma(self, ty):
        """The ``llvm.fma`` intrinsic on ``ty`` (the element type or the vector)."""
        return fma_intrinsic(self.module, ty)

    def reduce_sum(self, v):
        """The sum of a vector's lanes, halves added in a tree (log2(vw) steps)."""
        b = self.b
        n = self.t.vw
        while n > 1:
            h = n // 2
            lo = b.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, h), list(range(h))))
            hi = b.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, h),
                                                    list(range(h, n))))
            v, n = b.fadd(lo, hi), h
        return b.extract_element(v, ir.Constant(I32, 0))

    def padded(self, n, columns: bool):
        """The rows (``columns``: columns) the tiles compute for ``n``: whole MR tiles and
        the shortest height holding the rest; whole NR strips and one vector or one strip
        for the rest."""
        b, t = self.b, self.t
        unit = t.nr if columns else t.mr
        rest = b.srem(n, i64(unit))
        if columns:
            last = b.select(b.icmp_signed("<=", rest, i64(t.vw)), i64(t.vw), i64(t.nr))
        else:
            step = t.heights()[0]
            last = b.mul(b.sdiv(b.add(rest, i64(step - 1)), i64(step)), i64(step))
        last = b.select(b.icmp_signed("==", rest, i64(0)), i64(0), last)
        return b.add(b.sub(n, rest), last)

    def transposes(self, M, N, tail):
        """Whether C = A @ B runs as C^T = B^T @ A^T (C written transposed): over MC rows,
        fewer than 3 NR strips of columns, which the transposed tiles pad at least 1/8
        less, the last ``tail`` columns (``tail_columns``) counted as they are, and K at
        most 2 KC. Measured on one thread, CPU time, median of 400 calls, in-process A/B
        (transposed -> as it is), ms: 960 x 320 @ 320 x 20 0.198 -> 0.241, 960 x 320 @ 320 x
        40 0.318 -> 0.352 (transposed: kept); with a dot-product tail the columns are no
        longer padded, and the transposed nest, which packs A^T on every call, loses: 960 x
        320 @ 320 x 49 0.378 -> 0.351, 960 x 320 @ 320 x 17 0.196 -> 0.174, 600 x 256 @ 256
        x 33 0.170 -> 0.129, 1280 x 320 @ 320 x 49 0.496 -> 0.457 (as it is, now).

        But where A is ``TAIL_STREAM_BYTES`` or more, the tail's pass reads all of A again
        from beyond L2 (the weights of a 3x3 convolution of 512 channels on 7 x 7: 9.4 MB for
        one column of 49): then the transposed nest runs at any K where its tiles pad at
        most 1/8 more, with the epilogue in its transposed stores. That convolution with
        bias, residual and ReLU, one thread, CPU time, best of 90, two runs each, Intel
        Xeon (AVX-512): 2.33 -> 2.07-2.09 ms (onnxruntime 1.49-1.50); two threads (each
        half of the weights, 4.7 MB) 1.21-1.25 -> 1.17-1.21.

        And at any M from ``NARROW_SWAP`` tiles of rows, fewer columns than a vector where
        the transposed tiles pad less: a classifier's 10 columns filled 10 of each tile's
        vw lanes (128 x 256 @ 256 x 10, one thread: 18-20 -> 15-16 us with the call)."""
        b, t = self.b, self.t
        K = self.fn.args[10]
        tall = b.and_(b.icmp_signed(">", M, i64(MC)), b.icmp_signed("<", N, i64(3 * t.nr)))
        few = b.and_(tall, b.icmp_signed("<=", K, i64(2 * KC)))
        work = b.mul(self.padded(M, False),
                     b.add(self.padded(b.sub(N, tail), True), tail))
        swapped = b.mul(self.padded(N, False), self.padded(M, True))
        pads_less = b.icmp_signed("<=", b.mul(swapped, i64(8)), b.mul(work, i64(7)))
        # a dot-product tail over an A of TAIL_STREAM_BYTES or more reads all of A a second
        # time, from beyond L2: swapped, at any K, where its tiles pad at most 1/8 more
        streams = b.and_(b.and_(tall, b.icmp_signed(">", tail, i64(0))),
                         b.icmp_signed(">=", b.mul(b.mul(M, K), i64(self.elem_align())),
                                       i64(TAIL_STREAM_BYTES)))
        near = b.icmp_signed("<=", b.mul(swapped, i64(8)), b.mul(work, i64(9)))
        # fewer columns than a vector (a classifier's 10) leave most of every tile's lanes
        # empty at any M; transposed, the rows fill them (``NARROW_SWAP``)
        narrow = b.and_(b.icmp_signed("<", N, i64(t.vw)),
                        b.icmp_signed(">=", M, i64(NARROW_SWAP * t.mr)))
        return b.or_(b.or_(b.and_(few, pads_less), b.and_(streams, near)),
                     b.and_(narrow, pads_less))

    def last_block(self, pc, kc):
        """Whether the epilogue applies in the K block at ``pc``: the last, one given."""
        b = self.b
        return b.and_(self.ep_on, b.icmp_signed(">=", b.add(pc, kc), self.fn.args[10]))

    def k_blocks(self):
        """The step of K in equal blocks of at most KC (784 = 4 x 196, not 3 x 256 + 16:
        a thin last block would cost a whole pass over C for a few multiply-adds)."""
        b, K = self.b, self.fn.args[10]
        kblocks = b.sdiv(b.add(K, i64(KC - 1)), i64(KC))
        return b.sdiv(b.add(K, b.sub(kblocks, i64(1))), kblocks)

    def column_blocks(self, bp, ap, n) -> None:
        """A row-major B under at most MC rows of A (packed A fits its workspace): C in
        column blocks of about ``B_BLOCK_BYTES`` of B, each swept by every MR-row strip of
        A in turn (C written a few rows at a time along their length), B's whole strips
        read in place (the block stays in L2 for the row strips after the first) and a
        last partial strip packed (zero-filled) once per block.

        Measured on one thread (AMD znver4, L2 1 MiB; one-thread CPU time of 8 products,
        each with its own B fresh from memory, best of 15, interleaved; numpy's OpenBLAS
        beside) against the former nest for M <= 96 (NR strips outer, rows inner, B in
        place prefetching the next strip; a partial strip or M > 96: packed strip by
        strip), in ms: 96 x 16 @ 16 x 12544 7.10 -> 3.71 (OpenBLAS 5.57; C written 96
        rows at a time 5.44), 24 x 144 @ 144 x 3136 5.12 -> 1.82 (3.59), 32 x 96 @ 96 x
        12544 16.8 -> 6.46 (11.1), 16 x 32 @ 32 x 12544 4.66 -> 1.45, 144 x 24 @ 24 x 3136
        2.25 -> 1.81 (2.37); a B in cache no slower (32 x 256 @ 256 x 1024, one B for
        all: 0.70 -> 0.69). Packing each block row by row (sequential runs the prefetchers
        follow) instead of reading it in place: 24 x 144 @ 144 x 3136 3.59, 32 x 96 @ 96 x
        12544 9.2. Blocks of 128 KiB or 512 KiB: the same within noise. More rows (in
        place A): no gain (576 x 96 @ 96 x 196 and 1024 x 1000 @ 1000 x 1024 within 5%)."""
        b, t = self.b, self.t
        A, rsa, csa, B, rsb, csb, C, ldc, M, N, K, scratch, accumulate = self.fn.args[:13]
        N = n                            # the columns before ``dot_columns``' tail
        kstep = self.k_blocks()
        size = 4 if self.elem == F32 else 8
        nb = b.mul(b.sdiv(b.sdiv(i64(B_BLOCK_BYTES // size), kstep), i64(t.nr)), i64(t.nr))
        nb = b.select(b.icmp_signed("<", nb, i64(t.nr)), i64(t.nr), nb)
        with for_range(b, 0, N, "jb", nb) as jc:
            nc = _min(b, nb, b.sub(N, jc))
            whole = b.mul(b.sdiv(nc, i64(t.nr)), i64(t.nr))
            with for_range(b, 0, K, "pb", kstep) as pc:
                kc = _min(b, kstep, b.sub(K, pc))
                first = b.and_(b.icmp_signed("==", pc, i64(0)),
                               b.icmp_signed("==", accumulate, i64(0)))
                first = (first, self.last_block(pc, kc))
                bsrc = b.gep(B, [b.add(b.mul(pc, rsb), jc)])
                main = self.wide_from(nc)
                with b.if_else(b.icmp_signed("<", main, nc)) as (wide, narrow):
                    with wide:      # a wide strip: packed unless whole
                        with b.if_then(b.icmp_signed("<", b.sub(nc, main),
                                                     i64(t.nr + t.vw))):
                            self.pack(bp, b.gep(bsrc, [main]), i64(1), rsb, b.sub(nc, main),
                                      kc, t.nr + t.vw)
                    with narrow:
                        with b.if_then(b.icmp_signed("<", whole, nc)):
                            self.pack(bp, b.gep(bsrc, [whole]), i64(1), rsb,
                                      b.sub(nc, whole), kc, t.nr)
                asrc = b.gep(A, [b.mul(pc, csa)])
                in_place = b.and_(b.icmp_signed("==", csa, i64(1)),
                                  b.not_(self.set_aliased(rsa)))
                bv = (bsrc, rsb, bp, whole, main)
                with b.if_else(in_place) as (rows, other):
                    with rows:
                        self.macro_rows(asrc, bv, C, ldc, jc, M, nc, kc, first,
                                        a_rows=(rsa, i64(1)))
                    with other:
                        self.pack(ap, asrc, rsa, csa, M, kc, t.mr)
                        self.macro_rows(ap, bv, C, ldc, jc, M, nc, kc, first)

    def macro_rows(self, ap, b_view, C, ldc, jc, mc, nc, kc, first, a_rows=None) -> None:
        """The tiles of a block of C, MR-row strip after strip, each along the block.
        ``b_view`` = (B block, row stride, packed last strip, columns in whole strips, start
        of a last wide strip (``wide_from``: nc if none), packed unless whole)."""
        b, t = self.b, self.t
        bsrc, rsb, packed, whole, main = b_view
        wide_w = t.nr + t.vw
        wide_in_place = b.icmp_signed("==", b.sub(nc, main), i64(wide_w))
        with for_range(b, 0, mc, "ib", t.mr) as ir_:
            def args_at(jr, bpanel, bstride, nr):
                # the strip after next into L2, as the tiles go: rows far apart are K
                # separate streams the hardware prefetchers do not follow. The next strip
                # instead comes too late from memory: 24 x 144 @ 144 x 3136, fresh B, 4.99
                # -> 2.11 ms; 32 x 96 @ 96 x 12544 18.9 -> 6.55; three strips ahead: the same
                pf = (b.gep(bsrc, [b.add(jr, i64(2 * t.nr))]), rsb)

                def args(i0, apanel, a_at, mr):
                    cptr = b.gep(C, [b.add(b.mul(i0, ldc), b.add(jc, jr))])
                    return (apanel, bpanel, bstride, cptr, ldc, kc, mr, nr, first, a_at, pf,
                            (i0, b.add(jc, jr)))
                return args
            with for_range(b, 0, main, "jb", t.nr) as jr:
                in_place = b.icmp_signed("<", jr, whole)
                bpanel = b.select(in_place, b.gep(bsrc, [jr]), packed)
                bstride = b.select(in_place, rsb, i64(t.nr))
                nr = _min(b, i64(t.nr), b.sub(nc, jr))
                self.row_tiles(ap, a_rows, ir_, mc, kc, t.mr, t.heights(), t.nr,
                               args_at(jr, bpanel, bstride, nr))
            with b.if_then(b.icmp_signed("<", main, nc)):
                bpanel = b.select(wide_in_place, b.gep(bsrc, [main]), packed)
                bstride = b.select(wide_in_place, rsb, i64(wide_w))
                rows, heights = t.wide()
                self.row_tiles(ap, a_rows, ir_, mc, kc, rows, heights, wide_w,
                               args_at(main, bpanel, bstride, b.sub(nc, main)))

    def row_tiles(self, ap, a_rows, ir_, mc, kc, rows: int, heights, w: int, args) -> None:
        """The tiles of the MR-row strip of A at ``ir_`` (of ``mc`` rows) against a strip
        of ``w`` columns (NR, or NR + vw: a wide strip), at most ``rows`` rows each from
        the strip's top (packed A: MR-row strips; ``a_rows``: A in place). ``args(first
        row, A at it, (A rows) or None, rows)``: the tile's arguments (``call_micro``)."""
        b, t = self.b, self.t
        for top in range(0, t.mr, rows):
            i0 = b.add(ir_, i64(top))
            mr = _min(b, i64(min(rows, t.mr - top)), b.sub(mc, i0))
            with b.if_then(b.icmp_signed(">", mr, i64(0))):
                if a_rows is None:      # packed MR-row strips: row top of this one
                    apanel, a_at = b.gep(ap, [b.add(b.mul(ir_, kc), i64(top))]), None
                else:
                    apanel, a_at = b.gep(ap, [b.mul(i0, a_rows[0])]), (a_rows, mr)
                self.tiles(args(i0, apanel, a_at, mr), mr, heights,
                           0 if w == t.nr else w // t.vw)

    def prepared(self, pre, A, rsa, csa, M, K):
        """A's panels in ``pre`` (the block's data, an element pointer), or null where they
        are not there and this call cannot make them. The header says whose panels the
        block holds (A's address, M, K, strides); a call for another A (a thread count
        changed, so another run of rows) packs again. The first call to claim an empty or
        stale block (a compare-and-swap to PRE_PACKING) packs A into it
        (``prepack``), then marks it PRE_READY; a call finding it being packed by another
        thread packs its strips as it goes, as without a block."""
        b = self.b
        ep = ir.PointerType(self.elem)
        out = self.alloca(ep, "pre")
        b.store(ir.Constant(ep, None), out)
        with b.if_then(b.icmp_unsigned("!=", pre, ir.Constant(PTR, None))):
            hdr = b.bitcast(pre, ir.PointerType(I64))
            data = b.bitcast(b.gep(pre, [i64(PRE_HEADER)]), ep)
            who = [b.ptrtoint(A, I64), M, K, rsa, csa]

            def word(k):
                return b.gep(hdr, [i64(k)])
            state = b.load_atomic(hdr, "acquire", 8)
            same = ir.Constant(ir.IntType(1), 1)
            for k, v in enumerate(who):
                same = b.and_(same, b.icmp_signed("==", b.load_atomic(word(k + 1), "monotonic",
                                                                      8), v))
            ready = b.and_(b.icmp_signed("==", state, i64(PRE_READY)), same)
            with b.if_else(ready) as (found, other):
                with found:
                    b.store(data, out)
                with other:
                    with b.if_then(b.icmp_signed("!=", state, i64(PRE_PACKING))):
                        pair = b.cmpxchg(hdr, state, i64(PRE_PACKING), "acq_rel", "monotonic")
                        with b.if_then(b.extract_value(pair, 1)):
                            for k, v in enumerate(who):
                                b.store_atomic(v, word(k + 1), "monotonic", 8)
                            self.prepack(A, rsa, csa, M, data)
                            b.store_atomic(i64(PRE_READY), hdr, "release", 8)
                            b.store(data, out)
        return b.load(out)

    def panel_offset(self, jc, pc, nc):
        """Where the packed panel of columns [jc, jc + nc) and the K block at pc starts in
        a prepacked block's data (``_panel_columns`` columns per K row of each NC block)."""
        b, t = self.b, self.t
        K = self.fn.args[10]

        def cols(n):
            return b.add(b.mul(b.sdiv(b.add(n, i64(t.nr - 1)), i64(t.nr)), i64(t.nr)),
                         i64(t.vw))
        whole = b.mul(b.mul(b.sdiv(jc, i64(NC)), cols(i64(NC))), K)
        return b.add(whole, b.mul(pc, cols(nc)))

    def pack_panel(self, dst, src, s_strip, s_k, nc, kc) -> None:
        """The panel of ``nc`` columns (a strip each ``s_strip`` apart in src) and kc rows:
        NR-wide strips, and a last wide one where ``wide_from`` makes it."""
        b, t = self.b, self.t
        main = self.wide_from(nc)
        self.pack(dst, src, s_strip, s_k, main, kc, t.nr)
        with b.if_then(b.icmp_signed("<", main, nc)):
            self.pack(b.gep(dst, [b.mul(main, kc)]), b.gep(src, [b.mul(main, s_strip)]),
                      s_strip, s_k, b.sub(nc, main), kc, t.nr + t.vw)

    def prepack(self, A, rsa, csa, M, data) -> None:
        """Every panel the transposed nest packs of A^T (its B), at ``panel_offset``."""
        b = self.b
        K = self.fn.args[10]
        with for_range(b, 0, M, "qjc", NC) as jc:
            nc = _min(b, i64(NC), b.sub(M, jc))
            kstep = self.k_blocks()
            with for_range(b, 0, K, "qpc", kstep) as pc:
                kc = _min(b, kstep, b.sub(K, pc))
                src = b.gep(A, [b.add(b.mul(jc, rsa), b.mul(pc, csa))])
                self.pack_panel(b.gep(data, [self.panel_offset(jc, pc, nc)]), src, rsa, csa,
                                nc, kc)

    def blocked(self, bp, ap, operands, pre=None) -> None:
        """The Goto/BLIS nest (module docstring) on ``operands`` = (A, its row and column
        strides, B, its strides, M, N); ``pre``: B's panels packed before (``prepack``)."""
        b, t = self.b, self.t
        C, ldc, K, accumulate = (self.fn.args[i] for i in (6, 7, 10, 12))
        A, rsa, csa, B, rsb, csb, M, N = operands
        with for_range(b, 0, N, "jc", NC) as jc:
            nc = _min(b, i64(NC), b.sub(N, jc))
            kstep = self.k_blocks()
            with for_range(b, 0, K, "pc", kstep) as pc:
                kc = _min(b, kstep, b.sub(K, pc))
                first = b.and_(b.icmp_signed("==", pc, i64(0)),
                               b.icmp_signed("==", accumulate, i64(0)))
                first = (first, self.last_block(pc, kc))
                bsrc = b.gep(B, [b.add(b.mul(pc, rsb), b.mul(jc, csb))])
                # A in one MC block: each B strip is packed just before the tiles that read
                # it, which find it in L1, not the whole panel first (written to L2 and read
                # back); with several blocks the panel is packed once for all of them
                if pre is not None:
                    by_strip = ir.Constant(ir.IntType(1), 0)
                    panel = b.gep(pre, [self.panel_offset(jc, pc, nc)])
                else:
                    by_strip = b.icmp_signed("<=", M, i64(MC))
                    with b.if_then(b.not_(by_strip)):
                        self.pack_panel(bp, bsrc, csb, rsb, nc, kc)
                    panel = bp
                bv = (bsrc, rsb, csb, by_strip)
                with for_range(b, 0, M, "ic", MC) as ic:
                    mc = _min(b, i64(MC), b.sub(M, ic))
                    asrc = b.gep(A, [b.add(b.mul(ic, rsa), b.mul(pc, csa))])
                    if self.c_t:    # A = B^T, B's columns: packed
                        self.pack(ap, asrc, rsa, csa, mc, kc, t.mr)
                        self.macro(ap, panel, C, ldc, ic, jc, mc, nc, kc, first, b_view=bv)
                    else:
                        self.a_in_place_or_packed(ap, panel, asrc, (rsa, csa), C, ldc, ic, jc,
                                                  mc, nc, kc, first, bv)

    def a_in_place_or_packed(self, ap, bp, asrc, a_strides, C, ldc, ic, jc, mc, nc, kc,
                             first, bv) -> None:
        """The tiles of an MC block of A: a row-major A read in place (MR row streams,
        broadcast loads; no packing, which both threads would do for all of A), any other
        packed."""
        b, t = self.b, self.t
        rsa, csa = a_strides
        in_place = b.and_(b.icmp_signed("==", csa, i64(1)), b.not_(self.set_aliased(rsa)))
        with b.if_else(in_place) as (rows, other):
            with rows:
                self.macro(asrc, bp, C, ldc, ic, jc, mc, nc, kc, first,
                           a_rows=(rsa, i64(1)), b_view=bv)
            with other:
                self.pack(ap, asrc, rsa, csa, mc, kc, t.mr)
                self.macro(ap, bp, C, ldc, ic, jc, mc, nc, kc, first, b_view=bv)

    def set_aliased(self, stride):
        """Whether rows ``stride`` elements apart fall in the same L1 cache sets (a multiple
        of 4 KiB apart: 1024 x 1024 float32): read in place, the MR rows of A would evict
        each other at every k, so such an A is packed."""
        period = 4096 // (4 if self.elem == F32 else 8)
        return self.b.icmp_signed("==", self.b.srem(stride, i64(period)), i64(0))

    def pack(self, dst, src, s_strip, s_k, n, kc, w: int) -> None:
        """dst[strip][k][r] = src[(strip*w + r)*s_strip + k*s_k], zero past ``n``.

        Whole strips skip the bounds selects; a strip contiguous in memory (s_strip == 1:
        rows of a row-major B, columns of a transposed A) moves as one vector per k."""
        b = self.b
        full = b.sdiv(n, i64(w))
        nstrips = b.sdiv(b.add(n, i64(w - 1)), i64(w))
        with b.if_else(b.icmp_signed("==", s_strip, i64(1))) as (unit, other):
            with unit:
                with for_range(b, 0, full, "pu") as s:
                    self.pack_strip(dst, src, s, i64(1), s_k, kc, w, vector=True)
            with other:
                if w % self.t.vw == 0:
                    # a strip along k (s_k == 1: B = W^T of a linear layer, packed on every
                    # call) moves as vw x vw blocks transposed in registers, not one
                    # element at a time
                    with b.if_else(b.icmp_signed("==", s_k, i64(1))) as (along_k, gather):
                        with along_k:
                            with for_range(b, 0, full, "pt") as s:
                                self.pack_strip_transposed(dst, src, s, s_strip, kc, w)
                        with gather:
                            with for_range(b, 0, full, "pf") as s:
                                self.pack_strip(dst, src, s, s_strip, s_k, kc, w,
                                                vector=False)
                else:
                    with for_range(b, 0, full, "pf") as s:
                        self.pack_strip(dst, src, s, s_strip, s_k, kc, w, vector=False)
        with for_range(b, full, nstrips, "ps") as s:
            base = b.mul(s, b.mul(kc, i64(w)))
            with for_range(b, 0, kc, "pk") as k:
                row = b.add(base, b.mul(k, i64(w)))
                for r in range(w):
                    idx = b.add(b.mul(s, i64(w)), i64(r))
                    ok = b.icmp_signed("<", idx, n)
                    safe = b.select(ok, idx, i64(0))
                    v = b.load(b.gep(src, [b.add(b.mul(safe, s_strip), b.mul(k, s_k))]))
                    b.store(b.select(ok, v, self.zero()), b.gep(dst, [b.add(row, i64(r))]))

    def pack_strip(self, dst, src, s, s_strip, s_k, kc, w: int, vector: bool) -> None:
        """One whole strip: no bounds tests; ``vector`` when its w elements are adjacent."""
        b = self.b
        base = b.mul(s, b.mul(kc, i64(w)))
        first = b.mul(b.mul(s, i64(w)), s_strip)
        vt = ir.VectorType(self.elem, w)
        with for_range(b, 0, kc, "pk") as k:
            row = b.gep(dst, [b.add(base, b.mul(k, i64(w)))])
            at = b.add(first, b.mul(k, s_k))
            if vector:
                v = b.load(b.bitcast(b.gep(src, [at]), ir.PointerType(vt)),
                           align=self.elem_align())
                b.store(v, b.bitcast(row, ir.PointerType(vt)), align=self.elem_align())
            else:
                for r in range(w):
                    v = b.load(b.gep(src, [b.add(at, b.mul(i64(r), s_strip))]))
                    b.store(v, b.gep(row, [i64(r)]))

    def pack_strip_transposed(self, dst, src, s, s_strip, kc, w: int) -> None:
        """One whole strip whose rows lie along k (k stride 1, row r at r * s_strip):
        dst[k][r] = src[r * s_strip + k]. Each vw x vw block is vw vector loads (one per
        row), a transpose in registers (log2 vw rounds of two-input shuffles swapping the
        off-diagonal halves of ever larger blocks) and vw vector stores; the last kc % vw
        values of k one by one."""
        b, vw = self.b, self.t.vw
        vt = self.vec
        vp = ir.PointerType(vt)
        base = b.mul(s, b.mul(kc, i64(w)))
        first = b.mul(b.mul(s, i64(w)), s_strip)
        kfull = b.mul(b.sdiv(kc, i64(vw)), i64(vw))
        with for_range(b, 0, kfull, "tk", vw) as k0:
            for c in range(w // vw):
                rows = []
                for r in range(vw):
                    at = b.add(b.add(first, b.mul(i64(c * vw + r), s_strip)), k0)
                    rows.append(b.load(b.bitcast(b.gep(src, [at]), vp),
                                       align=self.elem_align()))
                cols = transpose(b, rows, vw)
                for j in range(vw):
                    at = b.add(base, b.add(b.mul(b.add(k0, i64(j)), i64(w)), i64(c * vw)))
                    b.store(cols[j], b.bitcast(b.gep(dst, [at]), vp), align=self.elem_align())
        with for_range(b, kfull, kc, "tr") as k:
            row = b.add(base, b.mul(k, i64(w)))
            at = b.add(first, k)
            for r in range(w):
                v = b.load(b.gep(src, [b.add(at, b.mul(i64(r), s_strip))]))
                b.store(v, b.gep(dst, [b.add(row, i64(r))]))

    def macro(self, ap, bp, C, ldc, ic, jc, mc, nc, kc, first, a_rows=None,
              b_view=None) -> None:
        """``a_rows`` = (row stride, k stride): A read in place instead of packed strips.
        ``b_view`` = (B block, row stride, column stride, packed strip by strip here?). The
        last columns, when one vector's worth past a whole strip, run as one wide strip
        (``wide_from``)."""
        b, t = self.b, self.t
        main = self.wide_from(nc)
        with for_range(b, 0, main, "jr", t.nr) as jr:
            self.strip(ap, bp, C, ldc, ic, jc, jr, mc, nc, kc, first, a_rows, b_view, t.nr,
                       t.mr, t.heights())
        rows, heights = t.wide()
        with b.if_then(b.icmp_signed("<", main, nc)):
            self.strip(ap, bp, C, ldc, ic, jc, main, mc, nc, kc, first, a_rows, b_view,
                       t.nr + t.vw, rows, heights)

    def wide_from(self, nc):
        """The column where a last wide strip of ``nc`` columns starts (nc if none): where
        the columns past the whole NR strips fill over half a vector (and at most one), the
        last whole strip and they are one strip of NR + vw columns, its tiles three
        vectors wide (``Tiling.wide``: 8 x 3 for 12 x 2), which read each row of A once
        for those columns, not twice (as a 12 x 2 tile and a 12 x 1).

        Measured on one thread (znver4), 1x1 convolution + bias, CPU time, median of 300
        calls, in-process A/B, ms (32 + 16 -> 48 columns): 160 x 960 on 7 x 7 0.177 ->
        0.154, on 6 x 8 0.168 -> 0.146; 320 x 960 on 7 x 7 0.320 -> 0.296; 960 x 160 0.157
        -> 0.153; 1280 x 320 0.415 -> 0.402; 192 x 32 on 28 x 28 (24 strips + 16) 0.106 ->
        0.105. A rest of 4 (196 columns, 14 x 14) as a 36-wide strip: 1% slower, so kept
        as it was. Both nests take it (``macro``, ``macro_rows``): a product split by rows
        between two threads runs each half through ``column_blocks`` (160 x 960 on 7 x 7,
        two threads: 0.136 -> 0.102 ms, best of 300)."""
        b, t = self.b, self.t
        rest = b.srem(nc, i64(t.nr))
        wide = b.and_(b.icmp_signed(">", nc, i64(t.nr)),
                      b.and_(b.icmp_signed(">", rest, i64(t.vw // 2)),
                             b.icmp_signed("<=", rest, i64(t.vw))))
        return b.select(wide, b.sub(b.sub(nc, rest), i64(t.nr)), nc)

    def strip(self, ap, bp, C, ldc, ic, jc, jr, mc, nc, kc, first, a_rows, b_view, w: int,
              rows: int, heights) -> None:
        """The tiles of the strip of ``w`` columns (at most) from ``jr``: per MR-row strip
        of A, tiles of at most ``rows`` rows (MR, or less for a wide strip) from its top.
        The strip is packed here first when packing by strip, else found in the panel at
        jr * kc (strips of NR columns before it)."""
        b, t = self.b, self.t
        bsrc, rsb, csb, by_strip = b_view
        # a strip packed here goes to the panel's first strip, which stays in cache
        bpanel = b.gep(bp, [b.select(by_strip, i64(0), b.mul(jr, kc))])
        bstride = i64(w)
        nr = _min(b, i64(w), b.sub(nc, jr))
        with b.if_then(by_strip):
            self.pack(bpanel, b.gep(bsrc, [b.mul(jr, csb)]), csb, rsb, nr, kc, w)
        # per k, the tiles prefetch into L2 the strip B_AHEAD strips on in a panel packed
        # before (a kept one comes from memory on every call); a strip packed here: its own
        ahead = b.gep(bp, [b.mul(b.add(jr, i64(B_AHEAD * t.nr)), kc)])
        pf = (b.select(by_strip, bpanel, ahead), bstride)
        with for_range(b, 0, mc, "ir", t.mr) as ir_:
            if a_rows is not None:
                with b.if_then(b.icmp_signed("==", jr, i64(0))):
                    self.prefetch_ahead(b.gep(ap, [b.mul(ir_, a_rows[0])]), a_rows[0],
                                        b.add(ic, ir_), kc)
            col = b.add(jc, jr)

            def args(i0, apanel, a_at, mr):
                row = b.add(ic, i0)
                cptr = b.gep(C, [b.add(b.mul(col, ldc), row) if self.c_t else
                                 b.add(b.mul(row, ldc), col)])
                return (apanel, bpanel, bstride, cptr, ldc, kc, mr, nr, first, a_at, pf,
                        (row, col))
            self.row_tiles(ap, a_rows, ir_, mc, kc, rows, heights, w, args)

    def prefetch_ahead(self, apanel, rs, row, kc) -> None:
        """While the first column strip's tile of rows [row, row + MR) of an in-place A
        runs, the rows ``A_AHEAD`` strips further on into L2 (those of A's M rows there
        are). A 1x1 convolution's weights (A) come from the last-level cache or memory on
        every call of a model whose weights exceed L2 (MobileNetV2's 14 MB), and the tiles
        read them as MR interleaved runs of a few lines each (160 elements of a row of 960
        x 160 weights), too short for the hardware prefetchers.

        One thread, CPU time, 1x1 convolution + bias, median of 300 calls, the weights
        drawn in turn from 12 MB of copies, with and without, in one process (two runs), ms:
        960 x 160 on 7 x 7 0.301 -> 0.241 and 0.300 -> 0.242; 1280 x 320 on 7 x 7 0.627 ->
        0.550 and 0.668 -> 0.565; 960 x 320 on 7 x 7 0.481 -> 0.428; 576 x 96 on 14 x 14
        0.313 -> 0.288; the same weights every call: 1.5-2% slower over those shapes.
        Imported MobileNetV2, batch 1, median: one thread 10.0 -> 9.4, two 10.9 -> 10.4.
        Two strips ahead or four: 5-7% over three shapes, three 9-10%; into L1: none."""
        b, t = self.b, self.t
        M = self.fn.args[8]
        rows = _min(b, i64(t.mr), b.sub(M, b.add(row, i64(A_AHEAD * t.mr))))
        first = b.gep(apanel, [b.mul(i64(A_AHEAD * t.mr), rs)])
        fn = self.prefetch()
        with for_range(b, 0, rows, "pfr") as r:
            at = b.gep(first, [b.mul(r, rs)])
            with for_range(b, 0, kc, "pfk", self.line_elems()) as k:     # a line at a time
                b.call(fn, [b.bitcast(b.gep(at, [k]), PTR), ir.Constant(I32, 0),
                            ir.Constant(I32, 2), ir.Constant(I32, 1)])

    def tiles(self, args, mr, heights, width: int = 0) -> None:
        """The micro-kernel of the shortest of ``heights`` holding ``mr`` rows; a last
        strip of at most one vector of columns (``args[7]``) runs an MR x 1 vector tile
        (196 columns, a 1x1 convolution on 14 x 14, are 6 strips and 4 columns: 96 x 576
        @ 576 x 196 on one thread, 8 products, 2.14 -> 1.94 ms; 576 x 96 @ 96 x 196 2.13
        -> 1.92, OpenBLAS 1.86), one height only: the runtime object compiles once per
        CPU, and every tile variant adds to that time."""
        b, t = self.b, self.t
        if not width:
            with b.if_else(b.icmp_signed("<=", args[7], i64(t.vw))) as (narrow, wide):
                with narrow:
                    self.call_micro(args, t.mr, 1)
                with wide:
                    self.tiles(args, mr, heights, t.nr // t.vw)
            return
        if len(heights) == 1:
            self.call_micro(args, heights[0], width)
            return
        with b.if_else(b.icmp_signed("<=", mr, i64(heights[0]))) as (low, tall):
            with low:
                self.call_micro(args, heights[0], width)
            with tall:
                self.tiles(args, mr, heights[1:], width)

    def call_micro(self, args, height: int, width: int) -> None:
        """A call of the tile's function (``micro`` emitted once per height, width, A read
        in place or packed, and C transposed or not, whichever nest calls it: with every
        nest inlining its own tiles the runtime object compiled in 9.0 s instead of 4.9 on
        one znver4 core, and ran no faster)."""
        apanel, bpanel, bstride, cptr, ldc, kc, mr, nr, (first, last), a_at, pf, at = args
        key = (height, width, a_at is not None, self.c_t)
        if key not in self.micros:
            ep = ir.PointerType(self.elem)
            fty = ir.FunctionType(ir.VoidType(), [ep, I64, ep, I64, ep, I64, I64, I64, I64,
                                                  ir.IntType(1), ep, I64, ep, ep, I64,
                                                  self.elem, self.elem, I64, ir.IntType(1)])
            name = (f"{self.fn.name}.tile{height}x{width}{'r' if key[2] else 'p'}"
                    f"{'t' if self.c_t else ''}")
            f = ir.Function(self.module, fty, name)
            f.linkage = "internal"
            f.attributes.add("noinline")
            saved = self.b, self.entry
            self.entry = f.append_basic_block("entry")      # the tile's allocas
            body = f.append_basic_block("body")
            self.b = ir.IRBuilder(body)
            ap_, rs, bp_, bs, cp, ld, k, m, n, fst, pfp, pfs = f.args[:12]
            self.micro(ap_, bp_, bs, cp, ld, k, m, n, (fst, f.args[12:]),
                       a_at=((rs, i64(1)), m) if key[2] else None, pf=(pfp, pfs),
                       height=height, width=width)
            self.b.ret_void()
            ir.IRBuilder(self.entry).branch(body)
            self.b, self.entry = saved
            self.micros[key] = f
        b = self.b
        rs = a_at[0][0] if a_at is not None else i64(0)
        # the epilogue's operands at the tile's first row and column of C (the transposed
        # nest's tile at (row, col) of C^T starts at C's row col, column row)
        bias, res, ldr, lo, hi, flags = self.epilogue
        row, col = at[::-1] if self.c_t else at
        more = [b.gep(bias, [row]), b.gep(res, [b.add(b.mul(row, ldr), col)]), ldr, lo, hi,
                flags, last]
        b.call(self.micros[key], [apanel, rs, bpanel, bstride, cptr, ldc, kc, mr, nr,
                                  first, pf[0], pf[1]] + more)

    def micro(self, apanel, bpanel, bstride, cptr, ldc, kc, mr, nr, first,
              a_at=None, pf=None, height: int = 0, width: int = 0) -> None:
        """A ``height`` x ``width`` vectors tile (``mr`` <= height rows and ``nr`` columns
        of it kept); packed A strips stay MR wide, packed B strips NR. ``pf`` = (row 0,
        row stride): per k, the NR elements of that row are prefetched into L2."""
        b, t = self.b, self.t
        height = height or t.mr
        nv = width or t.nr // t.vw
        vp = ir.PointerType(self.vec)
        accs = [[self.alloca(self.vec, f"acc{height}_{i}_{v}") for v in range(nv)]
                for i in range(height)]
        zero = ir.Constant(self.vec, [0.0] * t.vw)
        for row in accs:
            for a in row:
                b.store(zero, a)
        fma = self.fma(self.vec)
        mask = ir.Constant(ir.VectorType(I32, t.vw), [0] * t.vw)
        undef = ir.Constant(self.vec, ir.Undefined)
        if a_at is not None:        # rows of A in place; a partial tile re-reads its last row
            (rs, ks), mr_ = a_at
            rows = [b.gep(apanel, [b.mul(_min(b, i64(i), b.sub(mr_, i64(1))), rs)])
                    for i in range(height)]
        prefetch = self.prefetch()
        line = self.line_elems()
        # the C lines of these rows' next strip, made writable in cache while this tile
        # computes: a large C's rows are far apart, and a store to a line not in cache
        # waits for it (a 1x1 convolution over 112x112 positions writes 5 MB per image)
        for i in range(0 if self.c_t else height):
            ci = b.gep(cptr, [b.add(b.mul(i64(i), ldc), i64(t.nr))])
            for at in range(0, t.nr, line):
                b.call(prefetch, [b.bitcast(b.gep(ci, [i64(at)]), PTR), ir.Constant(I32, 1),
                                  ir.Constant(I32, 3), ir.Constant(I32, 1)])
        ep = first[1]
        if not self.c_t:    # the residual's lines of this tile, read after the multiply-adds
            res, ldr, flags = ep[1], ep[2], ep[5]
            reads = b.and_(ep[6], b.icmp_signed("!=", b.and_(flags, i64(EP_RES_BEFORE |
                                                                        EP_RES_AFTER)), i64(0)))
            with b.if_then(reads):
                for i in range(height):
                    ri = b.gep(res, [b.mul(i64(i), ldr)])
                    for at in range(0, nv * t.vw, line):
                        b.call(prefetch, [b.bitcast(b.gep(ri, [i64(at)]), PTR),
                                          ir.Constant(I32, 0), ir.Constant(I32, 3),
                                          ir.Constant(I32, 1)])
        with for_range(b, 0, kc, "k") as k:
            bk = b.gep(bpanel, [b.mul(k, bstride)])
            if pf is not None:
                pk = b.gep(pf[0], [b.mul(k, pf[1])])
                for at in range(0, nv * t.vw, line):
                    b.call(prefetch, [b.bitcast(b.gep(pk, [i64(at)]), PTR),
                                      ir.Constant(I32, 0), ir.Constant(I32, 2),
                                      ir.Constant(I32, 1)])
            bv = [b.load(b.bitcast(b.gep(bk, [i64(v * t.vw)]), vp), align=self.elem_align())
                  for v in range(nv)]
            if a_at is None:
                ak = b.gep(apanel, [b.mul(k, i64(t.mr))])
            for i in range(height):
                a = b.load(b.gep(ak, [i64(i)]) if a_at is None else b.gep(rows[i], [k]))
                av = b.shuffle_vector(b.insert_element(undef, a, ir.Constant(I32, 0)), undef, mask)
                for v in range(nv):
                    b.store(b.call(fma, [av, bv[v], b.load(accs[i][v])]), accs[i][v])
        full = b.and_(b.icmp_signed("==", mr, i64(height)),
                      b.icmp_signed("==", nr, i64(nv * t.vw)))
        first, ep = first

        def general():      # the tile as it is, then the general epilogue over it in C
            bias, res, ldr, lo, hi, flags, _ = ep
            rows, cols = (nr, mr) if self.c_t else (mr, nr)     # of C
            b.call(self.epilogue_block(), [cptr, ldc, bias, res, ldr, lo, hi, flags, rows,
                                           cols])

        def full_tile(form):
            if form is None:
                self.store_full(accs, cptr, ldc, first, vp)
                general()
            else:
                self.store_full(accs, cptr, ldc, first, vp, self.epilogue_form(ep, form))
        with b.if_else(full) as (then, other):
            with then:
                if not ep:
                    self.store_full(accs, cptr, ldc, first, vp)
                else:
                    with b.if_else(ep[6]) as (last, before):    # the last K block
                        with last:
                            self.by_form(ep[5], full_tile)
                        with before:
                            self.store_full(accs, cptr, ldc, first, vp)
            with other:
                self.store_partial(accs, cptr, ldc, mr, nr, first, vp)
                if ep:
                    with b.if_then(ep[6]):
                        general()

    def epilogue_block(self) -> ir.Function:
        """``<gemm>.epilogue(C, ldc, bias, R, ldr, lo, hi, flags, mr, nr)``: the general
        epilogue (``epilogue_of``) over an mr x nr block of C in place, element by element:
        partial tiles, and whole ones of flags outside ``EP_FORMS``, just stored (in L1).
        One function: emitted in every tile it would double the runtime's compile time."""
        name = f"{self.fn.name}.epilogue"
        if name in self.module.globals:
            return self.module.globals[name]
        ep = ir.PointerType(self.elem)
        f = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [
            ep, I64, ep, ep, I64, self.elem, self.elem, I64, I64, I64]), name)
        f.linkage = "internal"
        f.attributes.add("noinline")
        saved = self.b, self.entry
        self.entry = f.append_basic_block("entry")
        body = f.append_basic_block("body")
        self.b = b = ir.IRBuilder(body)
        C, ldc, bias, res, ldr, lo, hi, flags, mr, nr = f.args
        apply = self.epilogue_of((bias, res, ldr, lo, hi, flags, None))
        with for_range(b, 0, mr, "ei") as i:
            with for_range(b, 0, nr, "ej") as j:
                p = b.gep(C, [b.add(b.mul(i, ldc), j)])
                b.store(apply(b.load(p), i, j), p)
        b.ret_void()
        ir.IRBuilder(self.entry).branch(body)
        self.b, self.entry = saved
        return f

    def by_form(self, flags, emit) -> None:
        """``emit(form)`` for each of ``EP_FORMS`` where ``flags`` is that form, and
        ``emit(None)`` (the general epilogue) for any other."""
        b = self.b
        fn = b.function
        done = fn.append_basic_block("ep_done")
        general = fn.append_basic_block("ep_general")
        switch = b.switch(flags, general)
        for form in EP_FORMS:
            block = fn.append_basic_block(f"ep_form{form}")
            switch.add_case(i64(form), block)
            b.position_at_end(block)
            emit(form)
            b.branch(done)
        b.position_at_end(general)
        emit(None)
        b.branch(done)
        b.position_at_end(done)

    def splat(self, x, vector: bool):
        """The scalar x in every lane of a vector (x itself for a scalar)."""
        if not vector:
            return x
        b, t = self.b, self.t
        v = b.insert_element(ir.Constant(self.vec, ir.Undefined), x, ir.Constant(I32, 0))
        return b.shuffle_vector(v, ir.Constant(self.vec, ir.Undefined),
                                ir.Constant(ir.VectorType(I32, t.vw), [0] * t.vw))

    def epilogue_of(self, ep):
        """``apply(y, row, col)``: the epilogue (``gemm_function``) of the element or
        vector y at (row, col) of the tile (``col`` a multiple of the vector width for a
        vector); ``ep`` = the tile's (bias, R, ldr, lo, hi, flags, last). Every step under
        its flag, each operand read only under its flag (else from a zero on the stack)."""
        b, t = self.b, self.t
        bias, res, ldr, lo, hi, flags, _ = ep
        zeros = self.alloca(self.vec, "ep_zero")
        b.store(ir.Constant(self.vec, [0.0] * t.vw), zeros)
        zero = b.bitcast(zeros, ir.PointerType(self.elem))

        def flag(bit):
            return b.icmp_signed("!=", b.and_(flags, i64(bit)), i64(0))
        has_bias, before, after = flag(EP_BIAS), flag(EP_RES_BEFORE), flag(EP_RES_AFTER)
        lo_inc, hi_inc = flag(EP_LO_INCLUSIVE), flag(EP_HI_INCLUSIVE)
        has_res = b.or_(before, after)
        splat = self.splat

        def apply(y, row, col, load=None):
            vector = isinstance(y.type, ir.VectorType)
            by = b.load(b.select(has_bias, b.gep(bias, [row]), zero))
            y = b.select(has_bias, b.fadd(y, splat(by, vector)), y)
            rp = b.select(has_res, b.gep(res, [b.add(b.mul(row, ldr), col)]), zero)
            r = self.load_res(rp, vector, load)
            y = b.select(before, b.fadd(y, r), y)
            lo_, hi_ = splat(lo, vector), splat(hi, vector)
            below = b.select(lo_inc, b.fcmp_ordered("<=", y, lo_), b.fcmp_ordered("<", y, lo_))
            y = b.select(below, lo_, y)
            above = b.select(hi_inc, b.fcmp_ordered(">=", y, hi_), b.fcmp_ordered(">", y, hi_))
            y = b.select(above, hi_, y)
            return b.select(after, b.fadd(y, r), y)
        return apply

    def load_res(self, rp, vector: bool, load=None):
        """The residual's element at ``rp``, or its vector there: by ``load(rp)`` where
        given (a masked load: the transposed tile's partial rows), else whole."""
        b = self.b
        if not vector:
            return b.load(rp)
        if load is not None:
            return load(rp)
        return b.load(b.bitcast(rp, ir.PointerType(self.vec)), align=self.elem_align())

    def epilogue_form(self, ep, form: int):
        """``epilogue_of`` for the flags ``form`` known when emitting: only its steps."""
        b = self.b
        bias, res, ldr, lo, hi, _, _ = ep
        splat = self.splat

        def apply(y, row, col, load=None):
            vector = isinstance(y.type, ir.VectorType)
            if form & EP_BIAS:
                y = b.fadd(y, splat(b.load(b.gep(bias, [row])), vector))
            if form & (EP_RES_BEFORE | EP_RES_AFTER):
                r = self.load_res(b.gep(res, [b.add(b.mul(row, ldr), col)]), vector, load)
            if form & EP_RES_BEFORE:
                y = b.fadd(y, r)
            if form & EP_LO:
                lo_ = splat(lo, vector)
                y = b.select(b.fcmp_ordered("<=" if form & EP_LO_INCLUSIVE else "<", y, lo_),
                             lo_, y)
            if form & EP_HI:
                hi_ = splat(hi, vector)
                y = b.select(b.fcmp_ordered(">=" if form & EP_HI_INCLUSIVE else ">", y, hi_),
                             hi_, y)
            if form & EP_RES_AFTER:
                y = b.fadd(y, r)
            return y
        return apply

    def elem_align(self) -> int:
        return 4 if self.elem == F32 else 8

    def line_elems(self) -> int:
        """Elements per 64-byte cache line (one prefetch each)."""
        return 64 // self.elem_align()

    def store_full(self, accs, cptr, ldc, first, vp, epilogue=None) -> None:
        """The tile into C: stored (the first K block, no ``accumulate``) or added, through
        ``epilogue`` (``epilogue_of``) if given. C is not read on the first block: a
        product with a short K over a large C (a 1x1 convolution of 16 channels) would
        otherwise wait on a load from memory per vector."""
        b, t = self.b, self.t
        if self.c_t:
            self.store_transposed(accs, cptr, ldc, first, epilogue)
            return
        ptrs = [[b.bitcast(b.gep(cptr, [b.add(b.mul(i64(i), ldc), i64(v * t.vw))]), vp)
                 for v in range(len(row))] for i, row in enumerate(accs)]
        if epilogue is not None:    # C's old values added into the tile, then one store
            with b.if_then(b.not_(first)):
                for i, row in enumerate(accs):
                    for v, a in enumerate(row):
                        c = b.load(ptrs[i][v], align=self.elem_align())
                        b.store(b.fadd(c, b.load(a)), a)
            for i, row in enumerate(accs):
                for v, a in enumerate(row):
                    b.store(epilogue(b.load(a), i64(i), i64(v * t.vw)), ptrs[i][v],
                            align=self.elem_align())
            return
        with b.if_else(first) as (store, add):
            for adding in (False, True):
                with (add if adding else store):
                    for i, row in enumerate(accs):
                        for v, a in enumerate(row):
                            p = ptrs[i][v]
                            acc = b.load(a)
                            if adding:
                                acc = b.fadd(b.load(p, align=self.elem_align()), acc)
                            b.store(acc, p, align=self.elem_align())

    def store_transposed(self, accs, cptr, ldc, first, epilogue=None) -> None:
        """A whole tile of C^T into C: per vector of columns, the tile's rows in blocks of
        vw transposed in registers (``transpose``, zero rows past the tile), each result
        vector one row of C, its first ``height`` lanes stored (masked), through
        ``epilogue`` (``epilogue_of``, its residual loaded under the same mask) if given."""
        b, t = self.b, self.t
        vw, height = t.vw, len(accs)
        suffix = f"v{vw}{'f32' if self.elem == F32 else 'f64'}.p0"
        mty = ir.VectorType(ir.IntType(1), vw)
        mstore = self.module.globals.get(f"llvm.masked.store.{suffix}") or ir.Function(
            self.module, ir.FunctionType(ir.VoidType(), [self.vec, PTR, I32, mty]),
            f"llvm.masked.store.{suffix}")
        mload = self.module.globals.get(f"llvm.masked.load.{suffix}") or ir.Function(
            self.module, ir.FunctionType(self.vec, [PTR, I32, mty, self.vec]),
            f"llvm.masked.load.{suffix}")
        zero = ir.Constant(self.vec, [0.0] * vw)
        align = ir.Constant(I32, self.elem_align())

        def masked_load(p, mask):
            return b.call(mload, [b.bitcast(p, PTR), align, mask, zero])
        blocks = []     # (column of the tile, first row, rows, the vector of those rows)
        for v in range(len(accs[0])):
            for r0 in range(0, height, vw):
                rows = [b.load(accs[i][v]) for i in range(r0, min(r0 + vw, height))]
                lanes = len(rows)
                cols = transpose(b, rows + [zero] * (vw - lanes), vw)
                blocks += [(v * vw + j, r0, lanes, cols[j]) for j in range(vw)]
        with b.if_else(first) as (store, add):
            for adding in (False, True):
                with (add if adding else store):
                    for j, r0, lanes, vec in blocks:
                        p = b.gep(cptr, [b.add(b.mul(i64(j), ldc), i64(r0))])
                        mask = ir.Constant(mty, [1 if lane < lanes else 0
                                                 for lane in range(vw)])
                        if adding:
                            vec = b.fadd(masked_load(p, mask), vec)
                        if epilogue is not None:
                            vec = epilogue(vec, i64(j), i64(r0),
                                           lambda q, m=mask: masked_load(q, m))
                        b.call(mstore, [vec, b.bitcast(p, PTR), align, mask])

    def store_partial(self, accs, cptr, ldc, mr, nr, first, vp) -> None:
        b, t = self.b, self.t
        w = len(accs[0]) * t.vw
        tile = self.alloca(ir.ArrayType(self.elem, len(accs) * w), "tile")
        tp = b.bitcast(tile, ir.PointerType(self.elem))
        for i, row in enumerate(accs):
            for v, a in enumerate(row):
                b.store(b.load(a), b.bitcast(b.gep(tp, [i64(i * w + v * t.vw)]), vp),
                        align=self.elem_align())
        with for_range(b, 0, mr, "ti") as i:
            with for_range(b, 0, nr, "tj") as j:
                src = b.load(b.gep(tp, [b.add(b.mul(i, i64(w)), j)]))
                p = b.gep(cptr, [b.add(b.mul(j, ldc), i) if self.c_t else
                                 b.add(b.mul(i, ldc), j)])
                with b.if_else(first) as (store, add):
                    with store:
                        b.store(src, p)
                    with add:
                        b.store(b.fadd(b.load(p), src), p)


# the row strips of an in-place A ahead of the tiles whose rows are prefetched
# (``_GemmBuilder.prefetch_ahead``)
A_AHEAD = 3
# the column strips ahead of the one a packed panel's tiles read that they prefetch (a
# kept panel, ``prepacked``, streams from memory: a model's weights). A 3x3 convolution of
# 512 channels on 7 x 7 (its transposed nest reads 9.4 MB of kept W^T), bias and ReLU,
# the cache flushed before each call, best of 30, four alternating runs each, Intel Xeon
# (AVX-512), ms: one thread 2.52-2.77 -> 2.18-2.51, two 1.56-1.86 -> 1.41-1.54
# (onnxruntime 2.07 and 1.13); before, the tiles prefetched the strip they read
B_AHEAD = 2

# a product of fewer columns than a vector runs transposed from this many MR row tiles
NARROW_SWAP = 2
# the last columns a dot product per row computes rather than a tile's vector
# (``_GemmBuilder.tail_columns``), and the rows of A each pass of it takes at a time
TAIL_COLUMNS = 2
LONG_TAIL_COLUMNS, LONG_TAIL_K = 4, 96
# bytes of A from which a dot-product tail's second pass over it costs more than the
# transposed nest's packing (``_GemmBuilder.transposes``)
TAIL_STREAM_BYTES = 4 << 20
DOT_ROWS = 4
# elements of k per block of ``dot_columns`` (its T columns of B side by side in the scratch)
DOT_K = 4096


def run_columns(n: int, K: int, t: Tiling) -> int:
    """The columns the tiles of C = A @ B (A's rows contiguous, no transposed nest) spend
    on ``n`` columns of B: ``tail_columns``' dot products as they are, the rest in whole
    NR strips and a last partial one of a vector or a strip (``padded``)."""
    rest = n % t.vw
    tail = rest if rest <= (LONG_TAIL_COLUMNS if K >= LONG_TAIL_K else TAIL_COLUMNS) else 0
    part = (n - tail) % t.nr
    return n - part + (0 if part == 0 else t.vw if part <= t.vw else t.nr)


def _min(b, x, y):
    return b.select(b.icmp_signed("<", x, y), x, y)


def transpose(b, rows: list, n: int) -> list:
    """The n x n transpose of n vectors of n elements (n a power of two): at the round of
    block size h, rows i and i + h (bit h of i clear) swap the off-diagonal h x h blocks
    of their 2h x 2h block, so out[j][i] = rows[i][j] after log2(n) rounds."""
    h = 1
    while h < n:
        nxt = list(rows)
        for i in range(n):
            if i & h:
                continue
            lo, hi = rows[i], rows[i + h]
            nxt[i] = b.shuffle_vector(lo, hi, ir.Constant(ir.VectorType(I32, n), [
                j if not j & h else n + j - h for j in range(n)]))
            nxt[i + h] = b.shuffle_vector(lo, hi, ir.Constant(ir.VectorType(I32, n), [
                j + h if not j & h else n + j for j in range(n)]))
        rows, h = nxt, 2 * h
    return rows


# ---------------------------------------------------------------- the matmul lowering


def matmul_dims(a_shape, b_shape):
    """(batch shape, M, K, N) with numpy's promotion of 1-D operands."""
    sa = a_shape if len(a_shape) > 1 else (1,) + tuple(a_shape)
    sb = b_shape if len(b_shape) > 1 else tuple(b_shape) + (1,)
    import numpy as np
    batch = tuple(np.broadcast_shapes(sa[:-2], sb[:-2]))
    return batch, sa, sb, sa[-2], sa[-1], sb[-1]


def call_gemm(ctx: Ctx, dtype: str, a_ptr, a_strides, b_ptr, b_strides, c_ptr, ldc: int,
              M: int, N: int, K: int, pre=None) -> None:
    """Emit this thread's share of C = A @ B: split N by NR strips, or M by MR runs where
    ``splits_rows``. ``pre(rows_of)``: the prepared block keeping A's packed form
    (``gemm_function``'s ``pre``) of the whole A (rows_of None) or of this thread's run of
    rows (its id)."""
    b = ctx.b
    t = tiling(dtype, ctx.features)
    fn = gemm_function(ctx.module, dtype, ctx.features, prepacked=pre is not None)
    (rsa, csa), (rsb, csb) = a_strides, b_strides
    if K == 0:
        with ctx.thread0():
            with strided_nest(b, (M, N), [(ldc, 1)], [i64(0)]) as (o,):
                b.store(ir.Constant(STORAGE[dtype], 0.0), b.gep(c_ptr, [o]))
        return
    if M == 0 or N == 0:
        return
    if gemv.applies(dtype, M, N, K, b_strides, ctx.features):
        gemv.emit(ctx, dtype, a_ptr, a_strides, b_ptr, b_strides, c_ptr, ldc, M, N, K)
        return

    def extra(rows_of=None):
        return [] if pre is None else no_epilogue(dtype) + [pre(rows_of)]
    strips = -(-N // t.nr)
    if not splits_rows(M, N, t.mr, t.nr, ctx.max_threads):
        lo, hi = ctx.split(strips)
        n0 = b.mul(lo, i64(t.nr))
        n1 = _min(b, b.mul(hi, i64(t.nr)), i64(N))
        with b.if_then(b.icmp_signed("<", n0, n1)):
            b.call(fn, [a_ptr, i64(rsa), i64(csa), b.gep(b_ptr, [b.mul(n0, i64(csb))]),
                        i64(rsb), i64(csb), b.gep(c_ptr, [n0]), i64(ldc), i64(M),
                        b.sub(n1, n0), i64(K), ctx.scratch(), i64(0)] + extra())
    else:
        lo, hi = ctx.split(-(-M // t.mr))
        m0 = b.mul(lo, i64(t.mr))
        m1 = _min(b, b.mul(hi, i64(t.mr)), i64(M))
        with b.if_then(b.icmp_signed("<", m0, m1)):
            b.call(fn, [b.gep(a_ptr, [b.mul(m0, i64(rsa))]), i64(rsa), i64(csa), b_ptr,
                        i64(rsb), i64(csb), b.gep(c_ptr, [b.mul(m0, i64(ldc))]), i64(ldc),
                        b.sub(m1, m0), i64(N), i64(K), ctx.scratch(), i64(0)]
                   + extra(ctx.tid))


@lowering("matmul", "matmul_f32", parallel=True)
def _matmul(ctx, node, ins, outs):
    """``matmul``; ``matmul_f32`` arrives here on float32 operands (widened) or, where
    gemm_bf16.native holds, on bfloat16 ones with a float32 result."""
    (x, y), (out,) = ins, outs
    batch, sa, sb, M, K, N = matmul_dims(x.shape, y.shape)
    if x.dtype == "bfloat16":       # kept unwidened where gemm_bf16.native holds
        return gemm_bf16.lower_matmul(ctx, x, y, out, batch, sa, sb, M, K, N)
    if out.dtype not in ("float32", "float64"):
        return _matmul_int(ctx, x, y, out, batch, sa, sb, M, K, N)
    xs = [s * M * K for s in broadcast_strides(sa[:-2], batch)]
    ys = [s * K * N for s in broadcast_strides(sb[:-2], batch)]
    os_ = [s * M * N for s in row_strides(batch)]
    # a folded transpose: the operand's memory holds its last two axes swapped
    a_str = (1, M) if x.swapped else (K, 1)
    b_str = (1, K) if y.swapped else (N, 1)
    b = ctx.b
    if (batch and not x.swapped and not out.swapped and not any(ys)
            and tuple(sa[:-2]) == tuple(batch)):
        # a shared right operand (x_t W for every t, a linear layer on (N, T, F)): the
        # batch folds into the rows of ONE GEMM, (B*M x K) @ (K x N)
        call_gemm(ctx, out.dtype, x.ptr, a_str, y.ptr, b_str, out.ptr, N,
                  prod(batch) * M, N, K)
        return
    with strided_nest(b, batch, [xs, ys, os_]) as (xo, yo, oo):
        xp, yp, op = b.gep(x.ptr, [xo]), b.gep(y.ptr, [yo]), b.gep(out.ptr, [oo])
        if out.swapped:         # the result's transpose: C^T = B^T @ A^T
            call_gemm(ctx, out.dtype, yp, b_str[::-1], xp, a_str[::-1], op, M, N, M, K)
        else:
            call_gemm(ctx, out.dtype, xp, a_str, yp, b_str, op, N, M, N, K)


def _matmul_int(ctx, x: Buf, y: Buf, out: Buf, batch, sa, sb, M, K, N) -> None:
    """Integer matmul (wrapping, as numpy): plain loops on thread 0."""
    b = ctx.b
    xs = [s * M * K for s in broadcast_strides(sa[:-2], batch)] + [K, 0, 1]
    ys = [s * K * N for s in broadcast_strides(sb[:-2], batch)] + [0, 1, N]
    os_ = [s * M * N for s in row_strides(batch)] + [N, 1, 0]
    with ctx.thread0():
        elementwise_zero(ctx, out)
        with strided_nest(b, batch + (M, N, K), [xs, ys, os_]) as (xo, yo, oo):
            v = b.mul(x.load(b, xo), y.load(b, yo))
            out.store(b, oo, b.add(out.load(b, oo), v))


def elementwise_zero(ctx, out: Buf) -> None:
    b = ctx.b
    with strided_nest(b, (out.type.size,), [(1,)]) as (o,):
        b.store(ir.Constant(out.elem, 0), out.at(b, o))

