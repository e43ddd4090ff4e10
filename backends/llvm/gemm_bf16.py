"""bfloat16 matrix products on AVX-512 BF16: ``vdpbf16ps`` with float32 accumulators.

Where the host has AVX-512 BF16 (``+avx512bf16`` among llvmlite's host features; never
assumed), a ``matmul``, ``matmul_f32`` or convolution (forward, input and kernel gradients)
of bfloat16 operands is not widened (``native``, the keep rule of
``passes/low_precision.py`` in this backend): its lowering calls this GEMM (the
convolutions through ``lower_conv*`` of ops_conv.py: im2col of the 16-bit words, float32
sums, one rounding per result). Elsewhere, or with ``ENABLED`` off, the op is widened to float32
between rounding casts as every other op.

``llvm.x86.avx512bf16.dpbf16ps.512(acc, a, b)`` multiplies the bfloat16 pairs held in each
32-bit lane of ``a`` and ``b`` and adds both products to the float32 lane of ``acc``. So the
kernel packs a strip of NR = 32 columns of B as (k pair, column) 32-bit words,
``B[2p][n] | B[2p+1][n] << 16`` (a zero half past an odd K), and broadcasts the matching
pair of each row of A; the MR x NR tile of float32 accumulators stays in 24 zmm registers over
the whole of K, then each result is rounded once to bfloat16, to nearest even (NaN kept
quiet): the semantics of every 16-bit op (docs/low_precision.md), with float32 sums in
another order than the reference's; or stored (added) as float32 where the result is
float32 (``matmul_f32``, the convolution gradients' partial sums).
"""
from __future__ import annotations

from llvmlite import ir

from . import jit
from .builder import F32, I16, I32, I64, PTR, STORAGE, broadcast_strides, for_range, i64, \
    prod, row_strides, strided_nest
from .gemm_tiling import splits_rows, workspace_bytes

ENABLED = True          # False: every bf16 product is widened (the fallback, for tests)
MR = 12                 # rows of the register tile
VW = 16                 # float32 lanes of a zmm register
NR = 2 * VW             # columns of the register tile (and of a packed B strip)
KMAX = 16384            # longest contraction kept native (its packed strip: K * 64 bytes)

_V32 = ir.VectorType(I32, VW)
_VF = ir.VectorType(F32, VW)
_V16 = ir.VectorType(I16, VW)


def supported(features: str) -> bool:
    """Whether CPU ``features`` (llvmlite's ``+name,-name`` list) run ``vdpbf16ps``."""
    have = set(features.split(","))
    return ENABLED and "+avx512bf16" in have and "+avx512f" in have


NATIVE_OPS = ("matmul", "matmul_f32", "conv", "conv_fft", "conv_input_grad",
              "conv_kernel_grad")


def contraction(node) -> int:
    """K of the GEMM that computes ``node``: a matmul's inner dimension, a convolution's
    C/groups * prod(kernel) (its im2col rows), its input gradient's O/groups, its kernel
    gradient's output positions (one image's: the images are summed in float32)."""
    x, w = node.inputs
    if node.op in ("conv", "conv_fft"):
        return (x.shape[1] // node.attrs["groups"]) * prod(w.shape[2:])
    if node.op == "conv_input_grad":
        return x.shape[0] // node.attrs["groups"]
    if node.op == "conv_kernel_grad":
        return prod(w.shape[2:])
    return x.shape[-1]


def native(node) -> bool:
    """Whether ``node`` runs on its bfloat16 operands here (else it is widened to float32):
    a bfloat16 ``matmul``/``matmul_f32``/convolution (``NATIVE_OPS``) with 0 < K <= KMAX on
    a host with AVX-512 BF16."""
    if node.op not in NATIVE_OPS or node.inputs[0].dtype != "bfloat16":
        return False
    features = jit.host()[2]
    k = contraction(node)
    return (supported(features) and 0 < k <= KMAX
            and _strip_bytes(k) <= workspace_bytes(features))


def _strip_bytes(k: int) -> int:
    return -(-k // 2) * NR * 4



# ---------------------------------------------------------------- the kernel
def gemm_function(module: ir.Module, a_rows: bool, out_f32: bool = False,
                  accumulate: bool = False) -> ir.Function:
    """``irgraph_gemm_bf16_<r|s>[_f32[_acc]](A, rsa, csa, B, rsb, csb, C, ldc, M, N, K,
    scratch)``: C = bf16(A @ B) with float32 accumulation (``out_f32``: C is float32, the
    sums stored as they are, no rounding; ``accumulate``: added to C's float32 values);
    ``a_rows`` (variant r) when A's elements along K are adjacent (csa == 1: one 32-bit load
    per pair), else two 16-bit loads. Defined in the module that calls it (the node's kernel
    module)."""
    assert out_f32 or not accumulate
    name = (f"irgraph_gemm_bf16_{'r' if a_rows else 's'}{'_f32' if out_f32 else ''}"
            f"{'_acc' if accumulate else ''}")
    if name in module.globals:
        return module.globals[name]
    p16 = ir.PointerType(I16)
    pc = ir.PointerType(F32) if out_f32 else p16
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [
        p16, I64, I64, p16, I64, I64, pc, I64, I64, I64, I64, PTR]), name)
    fn.linkage = "internal"
    _Kernel(module, fn, a_rows, out_f32, accumulate).build()
    return fn


def _splat(v: int, ty=_V32) -> ir.Constant:
    return ir.Constant(ty, [v] * ty.count)


def _min(b, x, y):
    return b.select(b.icmp_signed("<", x, y), x, y)


class _Kernel:
    def __init__(self, module, fn, a_rows: bool, out_f32: bool = False,
                 accumulate: bool = False):
        self.module, self.fn, self.a_rows, self.out_f32 = module, fn, a_rows, out_f32
        self.accumulate = accumulate
        self.b = ir.IRBuilder(fn.append_basic_block("entry"))
        self.entry = fn.entry_basic_block
        self.dot = module.declare_intrinsic(
            "llvm.x86.avx512bf16.dpbf16ps.512", (),
            ir.FunctionType(_VF, [_VF, _V32, _V32]))

    def alloca(self, ty, name=""):
        b = ir.IRBuilder(self.entry)
        b.position_at_start(self.entry)
        return b.alloca(ty, name=name)

    def build(self) -> None:
        b = self.b
        A, rsa, csa, B, rsb, csb, C, ldc, M, N, K, scratch = self.fn.args
        packed = b.bitcast(scratch, ir.PointerType(_V32))
        pairs = b.sdiv(K, i64(2))                       # whole (2p, 2p+1) pairs
        npairs = b.sdiv(b.add(K, i64(1)), i64(2))       # with a last half pair if K is odd
        with for_range(b, 0, N, "jr", NR) as jr:
            nr = _min(b, i64(NR), b.sub(N, jr))
            self.pack(packed, b.gep(B, [b.mul(jr, csb)]), rsb, csb, nr, K, npairs)
            with for_range(b, 0, M, "ir", MR) as ir_:
                mr = _min(b, i64(MR), b.sub(M, ir_))
                self.tile(A, rsa, csa, packed, b.gep(C, [b.add(b.mul(ir_, ldc), jr)]), ldc,
                          ir_, mr, nr, K, pairs)
        b.ret_void()

    def pack(self, dst, src, rsb, csb, nr, K, npairs) -> None:
        """dst[p] = 32 words B[2p][n] | B[2p+1][n] << 16 (zero past K and past ``nr``).
        A whole strip of unit-stride rows (csb == 1: a row-major B, im2col columns) moves
        as vectors: two rows of 32 halves loaded, interleaved, stored as 32 words."""
        b = self.b
        whole = b.and_(b.icmp_signed("==", csb, i64(1)), b.icmp_signed("==", nr, i64(NR)))
        with b.if_else(whole) as (vector, scalar):
            with vector:
                self.pack_rows(dst, src, rsb, K)
            with scalar:
                self.pack_any(dst, src, rsb, csb, nr, K, npairs)

    def pack_rows(self, dst, src, rsb, K) -> None:
        b = self.b
        row = ir.VectorType(I16, NR)
        pairs = b.sdiv(K, i64(2))
        interleave = [i // 2 + (NR if i % 2 else 0) for i in range(2 * NR)]

        def put(p, lo, hi):
            both = b.shuffle_vector(lo, hi, ir.Constant(ir.VectorType(I32, 2 * NR),
                                                        interleave))
            b.store(b.bitcast(both, ir.VectorType(I32, NR)),
                    b.bitcast(b.gep(dst, [b.mul(p, i64(2))]), ir.PointerType(
                        ir.VectorType(I32, NR))), align=4)

        def load(k):
            return b.load(b.bitcast(b.gep(src, [b.mul(k, rsb)]), ir.PointerType(row)),
                          align=2)
        with for_range(b, 0, pairs, "vp") as p:
            k0 = b.mul(p, i64(2))
            put(p, load(k0), load(b.add(k0, i64(1))))
        with b.if_then(b.icmp_signed("<", b.mul(pairs, i64(2)), K)):
            put(pairs, load(b.mul(pairs, i64(2))), ir.Constant(row, [0] * NR))

    def pack_any(self, dst, src, rsb, csb, nr, K, npairs) -> None:
        b = self.b
        words = b.bitcast(dst, ir.PointerType(I32))
        with for_range(b, 0, npairs, "pp") as p:
            k0 = b.mul(p, i64(2))
            k1 = b.add(k0, i64(1))
            has1 = b.icmp_signed("<", k1, K)
            k1s = b.select(has1, k1, k0)
            with for_range(b, 0, i64(NR), "pn") as n:
                ok = b.icmp_signed("<", n, nr)
                col = b.select(ok, n, i64(0))
                lo = b.load(b.gep(src, [b.add(b.mul(k0, rsb), b.mul(col, csb))]))
                hi = b.load(b.gep(src, [b.add(b.mul(k1s, rsb), b.mul(col, csb))]))
                hi = b.select(has1, hi, ir.Constant(I16, 0))
                w = b.or_(b.zext(lo, I32), b.shl(b.zext(hi, I32), ir.Constant(I32, 16)))
                b.store(b.select(ok, w, ir.Constant(I32, 0)),
                        b.gep(words, [b.add(b.mul(p, i64(NR)), n)]))

    def pair(self, row, p, csa, half: bool) -> ir.Value:
        """The 32-bit word A[row][2p] | A[row][2p+1] << 16 (``half``: the high half zero)."""
        b = self.b
        k0 = b.mul(p, i64(2))
        if self.a_rows and not half:
            return b.load(b.bitcast(b.gep(row, [k0]), ir.PointerType(I32)), align=2)
        lo = b.zext(b.load(b.gep(row, [b.mul(k0, csa)])), I32)
        if half:
            return lo
        hi = b.zext(b.load(b.gep(row, [b.mul(b.add(k0, i64(1)), csa)])), I32)
        return b.or_(lo, b.shl(hi, ir.Constant(I32, 16)))

    def tile(self, A, rsa, csa, packed, cptr, ldc, ir_, mr, nr, K, pairs) -> None:
        b = self.b
        accs = [[self.alloca(_VF, f"acc{i}_{v}") for v in range(2)] for i in range(MR)]
        for row in accs:
            for a in row:
                b.store(ir.Constant(_VF, [0.0] * VW), a)
        # rows past a partial tile re-read its last row (their results are not stored)
        rows = [b.gep(A, [b.mul(b.add(ir_, _min(b, i64(i), b.sub(mr, i64(1)))), rsa)])
                for i in range(MR)]
        undef = ir.Constant(_V32, ir.Undefined)
        zeros = ir.Constant(_V32, [0] * VW)

        def step(p, half: bool) -> None:
            bv = [b.load(b.gep(packed, [b.add(b.mul(p, i64(2)), i64(v))]), align=4)
                  for v in range(2)]
            for i in range(MR):
                w = self.pair(rows[i], p, csa, half)
                av = b.shuffle_vector(b.insert_element(undef, w, ir.Constant(I32, 0)), undef,
                                      zeros)
                for v in range(2):
                    b.store(b.call(self.dot, [b.load(accs[i][v]), av, bv[v]]), accs[i][v])

        with for_range(b, 0, pairs, "kp") as p:
            step(p, False)
        with b.if_then(b.icmp_signed("<", b.mul(pairs, i64(2)), K)):
            step(pairs, True)
        full = b.icmp_signed("==", nr, i64(NR))
        for i in range(MR):
            with b.if_then(b.icmp_signed("<", i64(i), mr)):
                crow = b.gep(cptr, [b.mul(i64(i), ldc)])
                if self.out_f32:
                    halves, vty, ety = [b.load(a) for a in accs[i]], _VF, F32
                else:
                    halves, vty, ety = [self.round(b.load(a)) for a in accs[i]], _V16, I16
                align = 4 if self.out_f32 else 2
                with b.if_else(full) as (whole, part):
                    with whole:
                        for v, h in enumerate(halves):
                            at = b.bitcast(b.gep(crow, [i64(v * VW)]), ir.PointerType(vty))
                            if self.accumulate:
                                h = b.fadd(b.load(at, align=align), h)
                            b.store(h, at, align=align)
                    with part:
                        tmp = self.alloca(ir.ArrayType(vty, 2), "edge")
                        for v, h in enumerate(halves):
                            b.store(h, b.gep(tmp, [i64(0), ir.Constant(I32, v)]))
                        flat = b.bitcast(tmp, ir.PointerType(ety))
                        with for_range(b, 0, nr, "en") as n:
                            h = b.load(b.gep(flat, [n]))
                            if self.accumulate:
                                h = b.fadd(b.load(b.gep(crow, [n])), h)
                            b.store(h, b.gep(crow, [n]))

    def round(self, acc) -> ir.Value:
        """float32 lanes rounded to bfloat16 (nearest even; a NaN stays a quiet NaN)."""
        b = self.b
        bits = b.bitcast(acc, _V32)
        odd = b.and_(b.lshr(bits, _splat(16)), _splat(1))
        up = b.add(bits, b.add(_splat(0x7FFF), odd))
        nan = b.fcmp_unordered("uno", acc, acc)
        hi = b.select(nan, b.or_(bits, _splat(0x00400000)), up)
        return b.trunc(b.lshr(hi, _splat(16)), _V16)


# ---------------------------------------------------------------- the matmul lowering
def lower_matmul(ctx, x, y, out, batch, sa, sb, M, K, N) -> None:
    """A bfloat16 ``matmul`` (``native``): this thread's share of each batch element's
    product, split by NR column strips (or by MR row strips when N is narrow)."""
    b = ctx.b
    xs = [s * M * K for s in broadcast_strides(sa[:-2], batch)]
    ys = [s * K * N for s in broadcast_strides(sb[:-2], batch)]
    os_ = [s * M * N for s in row_strides(batch)]
    a_str = (1, M) if x.swapped else (K, 1)
    b_str = (1, K) if y.swapped else (N, 1)
    with strided_nest(b, batch, [xs, ys, os_]) as (xo, yo, oo):
        xp, yp, op = b.gep(x.ptr, [xo]), b.gep(y.ptr, [yo]), b.gep(out.ptr, [oo])
        if out.swapped:         # the result's transpose: C^T = B^T @ A^T
            call_gemm(ctx, yp, b_str[::-1], xp, a_str[::-1], op, M, N, M, K)
        else:
            call_gemm(ctx, xp, a_str, yp, b_str, op, N, M, N, K)


def call_gemm(ctx, a_ptr, a_strides, b_ptr, b_strides, c_ptr, ldc: int, M: int, N: int,
          K: int) -> None:
    """This thread's share of C = A @ B (C float32 or bfloat16, as ``c_ptr`` points)."""
    b = ctx.b
    (rsa, csa), (rsb, csb) = a_strides, b_strides
    fn = gemm_function(ctx.module, csa == 1, c_ptr.type.pointee == F32)
    if M == 0 or N == 0:
        return
    strips = -(-N // NR)
    if not splits_rows(M, N, MR, NR, ctx.max_threads):
        lo, hi = ctx.split(strips)
        n0 = b.mul(lo, i64(NR))
        n1 = _min(b, b.mul(hi, i64(NR)), i64(N))
        with b.if_then(b.icmp_signed("<", n0, n1)):
            b.call(fn, [a_ptr, i64(rsa), i64(csa), b.gep(b_ptr, [b.mul(n0, i64(csb))]),
                        i64(rsb), i64(csb), b.gep(c_ptr, [n0]), i64(ldc), i64(M),
                        b.sub(n1, n0), i64(K), ctx.scratch()])
    else:
        lo, hi = ctx.split(-(-M // MR))
        m0 = b.mul(lo, i64(MR))
        m1 = _min(b, b.mul(hi, i64(MR)), i64(M))
        with b.if_then(b.icmp_signed("<", m0, m1)):
            b.call(fn, [b.gep(a_ptr, [b.mul(m0, i64(rsa))]), i64(rsa), i64(csa), b_ptr,
                        i64(rsb), i64(csb), b.gep(c_ptr, [b.mul(m0, i64(ldc))]), i64(ldc),
                        b.sub(m1, m0), i64(N), i64(K), ctx.scratch()])


assert STORAGE["bfloat16"] == I16
