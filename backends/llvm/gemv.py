"""Products with a few rows of A and a row-major B: C[i, :] = sum_k A[i, k] * B[k, :] with B
streamed once (a classifier's last layer at batch 1, a recurrence's step).

The packed GEMM's register tile is MR rows tall: with one row of A it would run MR - 1 rows
of multiply-adds on a repeated row, and pack B (read it, write it, read it again) when N is
not a whole number of strips. Here B's rows are read in place, NV vectors of columns at a
time (``vectors``): M x NV accumulators, per k one broadcast of A[i, k] per row and NV
loads of B. The
whole vectors past the last whole block run as one narrower block, the last N mod vw
columns one by one.
One row of A (``_sweep``: each B element serves one multiply-add, the product is B's
memory stream) goes over C in chunks that stay in L1 instead, adding ROW_GROUP rows of B
per pass: ROW_GROUP long contiguous streams, which the hardware prefetches, where the
blocks read 1 KiB runs a row apart (1 x 2048 @ 2048 x 2048 on one thread: 15 -> 25
GFLOP/s).
Threads split the column blocks.
"""
from __future__ import annotations

from llvmlite import ir

from .builder import STORAGE, fma_intrinsic, for_range, i64
from .gemm_tiling import tiling

MAX_ROWS = 4        # rows of A (and of C) this form takes
ROW_GROUP = 8       # one row of A: rows of B per sweep over a chunk of C
CHUNK_BYTES = 8192  # one row of A: the chunk of C the sweeps go over (stays in L1)


def vectors(M: int, features: str) -> int:
    """Vectors of columns per block: M x nv accumulators fill half the vector registers (32
    with AVX-512, else 16), so each k row of B is read in runs as long as the registers
    allow (one row of A: 16 vectors, 1 KiB of float32)."""
    regs = 32 if "+avx512f" in features else 16
    return max(1, regs // 2 // M)


def applies(dtype: str, M: int, N: int, K: int, b_strides, features: str) -> bool:
    """A float product of at most MAX_ROWS rows whose B has unit column stride and at least
    one vector of columns."""
    return (dtype in ("float32", "float64") and 0 < M <= MAX_ROWS and K > 0
            and b_strides[1] == 1 and N >= tiling(dtype, features).vw)


def emit(ctx, dtype: str, a_ptr, a_strides, b_ptr, b_strides, c_ptr, ldc: int, M: int,
         N: int, K: int) -> None:
    """This thread's share of C = A @ B (``applies`` holds)."""
    b = ctx.b
    vw = tiling(dtype, ctx.features).vw
    nv = vectors(M, ctx.features)
    block = nv * vw
    blocks = -(-N // block)
    full = N // block
    lo, hi = ctx.split(blocks)
    if M == 1:
        # the thread's whole vectors of columns by row sweeps, the last N mod vw columns
        # by the thread whose share ends at the last block
        whole = N - N % vw
        n0 = b.mul(lo, i64(block))
        n1 = b.mul(hi, i64(block))
        n1 = b.select(b.icmp_signed("<", n1, i64(whole)), n1, i64(whole))
        with b.if_then(b.icmp_signed("<", n0, n1)):
            _sweep(ctx, dtype, a_ptr, a_strides, b_ptr, b_strides[0], c_ptr, K, n0, n1)
        if N % vw:
            last = b.and_(b.icmp_signed("<", lo, hi), b.icmp_signed("==", hi, i64(blocks)))
            with b.if_then(last):
                for j in range(whole, N):
                    _column(ctx, dtype, a_ptr, a_strides, b_ptr, b_strides[0], c_ptr, ldc,
                            M, K, j)
        return
    top = b.select(b.icmp_signed("<", hi, i64(full)), hi, i64(full))
    with for_range(b, lo, top, "gvb") as blk:
        _tile(ctx, dtype, a_ptr, a_strides, b_ptr, b_strides[0], c_ptr, ldc, M, K,
              b.mul(blk, i64(block)), nv)
    if full < blocks:           # the thread holding the last, partial block
        with b.if_then(b.icmp_signed(">", hi, i64(full))):
            if (N - full * block) // vw:    # the whole vectors left, as one narrower block
                _tile(ctx, dtype, a_ptr, a_strides, b_ptr, b_strides[0], c_ptr, ldc, M, K,
                      i64(full * block), (N - full * block) // vw)
            for j in range(N - N % vw, N):
                _column(ctx, dtype, a_ptr, a_strides, b_ptr, b_strides[0], c_ptr, ldc, M, K,
                        j)


def _sweep(ctx, dtype, a_ptr, a_str, b_ptr, rsb: int, c_ptr, K: int, n0, n1) -> None:
    """C[0, n0:n1] (whole vectors) for one row of A, by chunks of CHUNK_BYTES of C (kept in
    L1): the chunk zeroed, then per group of ROW_GROUP rows of B one pass adding
    sum_g A[0, k + g] * B[k + g, chunk] to each vector of it (ROW_GROUP contiguous streams
    of B, which the hardware prefetches), the last K mod ROW_GROUP rows one at a time."""
    b = ctx.b
    vw = tiling(dtype, ctx.features).vw
    vec = ir.VectorType(STORAGE[dtype], vw)
    vp = ir.PointerType(vec)
    align = 4 if dtype == "float32" else 8
    fma = _fma(ctx, dtype, vw)
    undef = ir.Constant(vec, ir.Undefined)
    splat = ir.Constant(ir.VectorType(ir.IntType(32), vw), [0] * vw)
    chunk = CHUNK_BYTES // align

    def broadcast(k):
        a = b.load(b.gep(a_ptr, [b.mul(k, i64(a_str[1]))]))
        return b.shuffle_vector(b.insert_element(undef, a, ir.Constant(ir.IntType(32), 0)),
                                undef, splat)
    with for_range(b, n0, n1, "gsc", chunk) as c0:
        c1 = b.add(c0, i64(chunk))
        c1 = b.select(b.icmp_signed("<", c1, n1), c1, n1)
        with for_range(b, c0, c1, "gsz", vw) as n:
            b.store(ir.Constant(vec, [0.0] * vw), b.bitcast(b.gep(c_ptr, [n]), vp),
                    align=align)
        grouped = K - K % ROW_GROUP
        for g_rows, start, stop in ((ROW_GROUP, 0, grouped), (1, grouped, K)):
            with for_range(b, start, stop, f"gsk{g_rows}", g_rows) as k0:
                ks = [b.add(k0, i64(g)) for g in range(g_rows)]
                avs = [broadcast(k) for k in ks]
                rows = [b.gep(b_ptr, [b.mul(k, i64(rsb))]) for k in ks]
                with for_range(b, c0, c1, f"gsn{g_rows}", vw) as n:
                    cp = b.bitcast(b.gep(c_ptr, [n]), vp)
                    acc = b.load(cp, align=align)
                    for av, row in zip(avs, rows):
                        bv = b.load(b.bitcast(b.gep(row, [n]), vp), align=align)
                        acc = b.call(fma, [av, bv, acc])
                    b.store(acc, cp, align=align)


def _fma(ctx, dtype: str, vw: int):
    """The vector fused multiply-add intrinsic for ``dtype`` at ``vw`` lanes."""
    return fma_intrinsic(ctx.module, ir.VectorType(STORAGE[dtype], vw))


def _tile(ctx, dtype, a_ptr, a_str, b_ptr, rsb: int, c_ptr, ldc: int, M: int, K: int, j0,
          nv: int) -> None:
    """C[0:M, j0 : j0 + nv * vw] from M x nv vector accumulators over k."""
    b = ctx.b
    elem = STORAGE[dtype]
    vw = tiling(dtype, ctx.features).vw
    vec = ir.VectorType(elem, vw)
    vp = ir.PointerType(vec)
    align = 4 if dtype == "float32" else 8
    fma = _fma(ctx, dtype, vw)
    accs = [[ctx.alloca(vec, f"gv{i}_{v}") for v in range(nv)] for i in range(M)]
    zero = ir.Constant(vec, [0.0] * vw)
    for row in accs:
        for a in row:
            b.store(zero, a)
    undef = ir.Constant(vec, ir.Undefined)
    splat = ir.Constant(ir.VectorType(ir.IntType(32), vw), [0] * vw)
    with for_range(b, 0, K, "gvk") as k:
        brow = b.gep(b_ptr, [b.add(b.mul(k, i64(rsb)), j0)])
        bv = [b.load(b.bitcast(b.gep(brow, [i64(v * vw)]), vp), align=align)
              for v in range(nv)]
        for i in range(M):
            a = b.load(b.gep(a_ptr, [b.add(i64(i * a_str[0]), b.mul(k, i64(a_str[1])))]))
            av = b.shuffle_vector(b.insert_element(undef, a, ir.Constant(ir.IntType(32), 0)),
                                  undef, splat)
            for v in range(nv):
                b.store(b.call(fma, [av, bv[v], b.load(accs[i][v])]), accs[i][v])
    for i in range(M):
        crow = b.gep(c_ptr, [b.add(i64(i * ldc), j0)])
        for v in range(nv):
            b.store(b.load(accs[i][v]), b.bitcast(b.gep(crow, [i64(v * vw)]), vp), align=align)


def _column(ctx, dtype, a_ptr, a_str, b_ptr, rsb: int, c_ptr, ldc: int, M: int, K: int,
            j: int) -> None:
    """C[0:M, j] one multiply-add at a time (fewer than a vector of columns are left)."""
    b = ctx.b
    elem = STORAGE[dtype]
    accs = [ctx.alloca(elem, f"gc{i}") for i in range(M)]
    for a in accs:
        b.store(ir.Constant(elem, 0.0), a)
    with for_range(b, 0, K, "gck") as k:
        bk = b.load(b.gep(b_ptr, [b.add(b.mul(k, i64(rsb)), i64(j))]))
        for i in range(M):
            a = b.load(b.gep(a_ptr, [b.add(i64(i * a_str[0]), b.mul(k, i64(a_str[1])))]))
            b.store(b.fadd(b.load(accs[i]), b.fmul(a, bk)), accs[i])
    for i in range(M):
        b.store(b.load(accs[i]), b.gep(c_ptr, [i64(i * ldc + j)]))
