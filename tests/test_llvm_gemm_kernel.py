"""The GEMM runtime kernel (backends/llvm/gemm.py) called directly, for every register tiling.

``irgraph_gemm_<dtype>(A, rsa, csa, B, rsb, csb, C, ldc, M, N, K, scratch, accumulate)`` is
built for the AVX-512, AVX2 and SSE tilings (the IR of each runs on this machine) and checked
against numpy in float64 on: every height of the last row strip (each register tile height,
and the rows between them), A read in place, packed (transposed) and packed because its rows
fall in the same cache sets, B read in place, packed by rows, packed by register transposes
(rows along k) and gathered, ``accumulate`` = 1, a row stride of C wider than N (the padding
untouched), blocks past KC, MC and NC, and the column blocks of a row-major B under at most
MC rows of A (B read in place, a last partial strip packed).
"""
from __future__ import annotations

import ctypes
from functools import lru_cache

import numpy as np
import pytest

from irgraph.backends.llvm import gemm, gemm_tiling, jit

FEATURES = {"avx512": "+avx2,+avx512f,+fma", "avx2": "+avx2,+fma", "sse": "+sse4.2"}
I64, PTR = ctypes.c_int64, ctypes.c_void_p
PROTO = ctypes.CFUNCTYPE(None, PTR, I64, I64, PTR, I64, I64, PTR, I64, I64, I64, I64, PTR, I64)
RNG = np.random.default_rng(11)


@lru_cache(maxsize=None)
def kernels(kind: str):
    """(loaded engine, {dtype: function}) of the runtime module built for ``kind``'s tiling."""
    features = FEATURES[kind]
    if kind == "avx512" and "+avx512f" not in jit.host()[2]:
        features = jit.host()[2]    # this CPU runs no 512-bit code: its own tiling instead
    triple = jit.host()[0]
    loaded = jit.Loaded(jit.emit_object(jit.optimize(str(gemm.runtime_module(features, triple)))),
                        None)
    fns = {d: PROTO(loaded.engine.get_function_address(f"irgraph_gemm_{d}"))
           for d in ("float32", "float64")}
    return loaded, fns, features


def run(kind, dtype, a, rsa, csa, b, rsb, csb, c, ldc, M, N, K, accumulate=0):
    """The kernel on flat buffers (bounds checked here: the native code trusts them)."""
    for buf, rs, cs, rows, cols in ((a, rsa, csa, M, K), (b, rsb, csb, K, N), (c, ldc, 1, M, N)):
        assert buf.dtype == np.dtype(dtype) and buf.ndim == 1
        assert (rows - 1) * rs + (cols - 1) * cs < buf.size
    _, fns, features = kernels(kind)
    scratch = np.zeros(gemm_tiling.workspace_bytes(features) // 8 + 8, np.float64)
    fns[dtype](a.ctypes.data, rsa, csa, b.ctypes.data, rsb, csb, c.ctypes.data, ldc, M, N, K,
               scratch.ctypes.data, accumulate)


def view(buf, rs, cs, rows, cols):
    """The float64 matrix the kernel reads at (row stride, column stride)."""
    i, j = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    return buf[i * rs + j * cs].astype(np.float64)


def check(kind, dtype, M, N, K, a_layout="rows", b_layout="rows", accumulate=0, pad=0):
    """C (row stride N + pad) = A @ B (or += when ``accumulate``) against numpy.

    A layouts: "rows" (row-major), "cols" (a transposed operand: packed), "aliased" (rows a
    multiple of 4 KiB apart). B layouts: "rows", "cols" (rows along k), "gather" (no unit
    stride), "aliased"."""
    period = 4096 // np.dtype(dtype).itemsize
    rsa, csa = {"rows": (K, 1), "cols": (1, M), "aliased": (-(-K // period) * period, 1)}[
        a_layout]
    rsb, csb = {"rows": (N, 1), "cols": (1, K), "gather": (2 * N, 2),
                "aliased": (-(-N // period) * period, 1)}[b_layout]
    a = RNG.standard_normal((M - 1) * rsa + (K - 1) * csa + 1).astype(dtype)
    b = RNG.standard_normal((K - 1) * rsb + (N - 1) * csb + 1).astype(dtype)
    ldc = N + pad
    c0 = RNG.standard_normal(M * ldc).astype(dtype)
    c = c0.copy()
    run(kind, dtype, a, rsa, csa, b, rsb, csb, c, ldc, M, N, K, accumulate)
    want = view(a, rsa, csa, M, K) @ view(b, rsb, csb, K, N)
    if accumulate:
        want += view(c0, ldc, 1, M, N)
    tol = 2e-5 * np.sqrt(K) if dtype == "float32" else 1e-12 * np.sqrt(K)
    got = c.reshape(M, ldc)
    np.testing.assert_allclose(got[:, :N], want, rtol=tol, atol=tol,
                               err_msg=f"{kind} {dtype} M={M} N={N} K={K} A {a_layout} "
                                       f"B {b_layout} accumulate={accumulate}")
    np.testing.assert_array_equal(got[:, N:], c0.reshape(M, ldc)[:, N:])


KINDS = list(FEATURES)
DTYPES = ["float32", "float64"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_last_strip_height(kind, dtype):
    """M from 1 to 2 MR + 1: the last strip of every height, through each register tile;
    A in place and packed, B in place (N whole strips) and packed (N not: a last strip of
    3 columns and of one vector, one vector wide, and of one vector and a column)."""
    t = gemm_tiling.tiling(dtype, kernels(kind)[2])
    assert t.heights()[-1] == t.mr and list(t.heights()) == sorted(set(t.heights()))
    for M in range(1, 2 * t.mr + 2):
        for N in (2 * t.nr, t.nr + 3, t.nr + t.vw, t.nr + t.vw + 1):
            for a_layout in ("rows", "cols"):
                check(kind, dtype, M, N, 13, a_layout=a_layout)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("a_layout", ["rows", "cols", "aliased"])
@pytest.mark.parametrize("b_layout", ["rows", "cols", "gather", "aliased"])
def test_operand_layouts_accumulate_and_padded_c(kind, dtype, a_layout, b_layout):
    t = gemm_tiling.tiling(dtype, kernels(kind)[2])
    for M, N, K in ((3 * t.mr - 1, 2 * t.nr, 2 * t.vw + 3), (t.mr + 1, 3 * t.nr + 1, 7),
                    (32, 2 * t.nr, 33), (2 * t.mr, t.nr + t.vw, 5)):
        for accumulate in (0, 1):
            check(kind, dtype, M, N, K, a_layout, b_layout, accumulate=accumulate, pad=5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("a_layout", ["rows", "cols", "aliased"])
def test_row_major_b_in_column_blocks(kind, dtype, a_layout):
    """A row-major B under at most MC rows: C in column blocks of about B_BLOCK_BYTES of B,
    whole strips read in place, a last partial strip packed. Several blocks, the last one
    narrower and ending in a partial strip; two K blocks (C accumulated over them); M of
    MC rows, of a partial last strip, and of one row; N narrower than one strip; and MC + 1
    rows (the packed path again)."""
    t = gemm_tiling.tiling(dtype, kernels(kind)[2])
    size = np.dtype(dtype).itemsize
    # a block holds at most B_BLOCK_BYTES / (size * K-block) columns, a K block being at
    # least K / 2 rows when K <= 2 KC: N spans more than two blocks
    for M, K in ((gemm_tiling.MC, gemm_tiling.KC + 3), (t.mr + 1, 20), (1, 7)):
        N = 2 * gemm_tiling.B_BLOCK_BYTES // (size * max(1, K // 2)) + t.nr + 5
        for accumulate in (0, 1):
            check(kind, dtype, M, N, K, a_layout, "rows", accumulate=accumulate, pad=3)
    check(kind, dtype, 5, t.nr - 3, 9, a_layout, "rows", pad=2)
    check(kind, dtype, gemm_tiling.MC + 1, 2 * t.nr + 7, 11, a_layout, "rows", accumulate=1)


@pytest.mark.parametrize("kind", KINDS)
def test_blocks_past_kc_mc_and_nc(kind):
    """Every blocking loop more than one step (K split in equal blocks), C accumulated."""
    M, N, K = gemm_tiling.MC + 5, gemm_tiling.NC + 21, gemm_tiling.KC + 3
    check(kind, "float64", M, N, K, "rows", "cols", accumulate=1)
    check(kind, "float32", 40, N, K, "cols", "rows")


def test_runtime_object_key_follows_the_kernel_source(tmp_path, monkeypatch):
    """The cached runtime object (``gemm.runtime_object``) is keyed by the backend's source:
    an edit to the GEMM, its tiling or the few-row product gives another key, so a changed
    kernel is compiled afresh, never loaded from the cache."""
    import shutil

    from irgraph.backends import cache
    copies = []
    for src in cache.source_roots():
        dst = tmp_path / src.name
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        copies.append(dst)
    monkeypatch.setattr(cache, "source_roots", lambda: copies)
    monkeypatch.setattr(cache, "source_hash", cache.source_hash.__wrapped__)
    keys = []
    # the key runtime_object asks the cache for (the lookup answers: nothing compiled)
    monkeypatch.setattr(jit, "cache_load", lambda key: keys.append(key) or b"object")

    def key():
        assert gemm.runtime_object.__wrapped__() == b"object"
        return keys[-1]
    seen = {key()}
    assert key() in seen                    # the same source: the same key
    for rel in ("llvm/gemm.py", "llvm/gemm_tiling.py", "llvm/gemv.py"):
        with open(tmp_path / "backends" / rel, "a") as f:
            f.write("\n# changed\n")
        assert key() not in seen, rel
        seen.add(keys[-1])


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("m,k,n,ta", [(24, 300, 600, False), (gemm_tiling.MC, 40, 1000, True),
                                      (13, 20, 9000, False), (7, 5, 45, False),
                                      (320, 96, 49, False),
                                      (2 * gemm_tiling.MC + 7, 300, 33, True)])
def test_matmul_threads(m, k, n, ta, threads, monkeypatch):
    """The matmul lowering on products that take the column blocks of a row-major B (each
    thread's columns from a strip boundary, its last block ending in a partial strip; A
    transposed: packed) and the transposed product of few columns (the threads' runs of
    rows each over MC rows: 49 and 33 columns, 12 x 32 tiles), shared by 1 and 2 threads,
    in float32 and float64, against numpy."""
    import irgraph.backends as backends
    from irgraph import Graph, TensorType
    from irgraph.backends.llvm import workers
    monkeypatch.setattr(workers, "PARALLEL_FLOPS", 0)     # small: shared all the same
    monkeypatch.setattr(workers, "PARALLEL_BYTES", 0)
    for dtype in DTYPES:
        g = Graph("mm")
        a = g.add_input("a", TensorType((k, m) if ta else (m, k), dtype))
        b = g.add_input("b", TensorType((k, n), dtype))
        g.set_outputs([g.op("matmul", g.op("transpose", a, perm=(1, 0)) if ta else a, b)])
        exe = backends.compile(g, "llvm", threads=threads, cache=False)
        av = RNG.standard_normal((k, m) if ta else (m, k)).astype(dtype)
        bv = RNG.standard_normal((k, n)).astype(dtype)
        (c,) = exe(av, bv)
        want = (av.T if ta else av).astype(np.float64) @ bv.astype(np.float64)
        tol = 2e-5 * np.sqrt(k) if dtype == "float32" else 1e-12 * np.sqrt(k)
        np.testing.assert_allclose(c, want, rtol=tol, atol=tol, err_msg=f"{dtype} {m}x{k}x{n}")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("a_layout,b_layout", [("rows", "rows"), ("cols", "cols"),
                                               ("rows", "gather"), ("aliased", "rows")])
def test_few_columns_as_the_transposed_product(kind, dtype, a_layout, b_layout):
    """Over MC rows, fewer than 3 NR strips of columns and K <= 2 KC, C = A @ B runs as
    C^T = B^T @ A^T written transposed where those tiles pad at least 1/8 less. By hand
    (MR x NR tiles, vectors of vw): NR + vw + 3 columns compute 2 NR as columns (a
    strip and a second one, which one vector would not hold), as rows NR + vw + 3
    rounded up to a tile height (52 of 64 with 12 x 32 tiles: 0.81); NR + 1 columns of
    a packed A ("cols") compute NR + vw (36 of 48 rows: 0.75), while with A's rows
    contiguous the last column is a dot product (``tail_columns``): 33 columns as they
    are, against 36 rows, and the usual nest runs (so for NR + vw + 1); only SSE's
    float64 tiles (4 x 4, vw 2) pad as much either way and keep the usual tiles. Rows
    past one register strip, one MC block and one NC block of the transposed product, or
    ending in a wide strip; two K blocks (the transposed tiles add to C); a padded row
    stride of C."""
    t = gemm_tiling.tiling(dtype, kernels(kind)[2])
    for M, N, K in ((gemm_tiling.MC + 48, t.nr + t.vw + 3, 9),
                    (gemm_tiling.MC + 48, t.nr + t.vw + 1, 9),
                    (gemm_tiling.MC + 5, t.nr + 1, gemm_tiling.KC + 3),
                    (gemm_tiling.NC + 37, t.nr + t.vw + 3, 5),
                    # rows ending in a wide strip of the transposed nest (gemm.wide_from)
                    ((gemm_tiling.MC // t.nr + 1) * t.nr + t.vw, t.nr + t.vw + 3, 9)):
        for accumulate in (0, 1):
            check(kind, dtype, M, N, K, a_layout, b_layout, accumulate=accumulate, pad=3)


# ---------------------------------------------------------------- the epilogue entry

def ep_kernel(kind, dtype):
    """``irgraph_gemm_ep_<dtype>`` of ``kind``'s runtime module (gemm.gemm_function)."""
    loaded, _, features = kernels(kind)
    scalar = ctypes.c_float if dtype == "float32" else ctypes.c_double
    proto = ctypes.CFUNCTYPE(None, PTR, I64, I64, PTR, I64, I64, PTR, I64, I64, I64, I64, PTR,
                             I64, PTR, PTR, I64, scalar, scalar, I64)
    return proto(loaded.engine.get_function_address(f"irgraph_gemm_ep_{dtype}")), features


def check_ep(kind, dtype, M, N, K, *, bias=True, residual=None, lo=None, hi=None,
             lo_inclusive=False, hi_inclusive=False, accumulate=0, b_layout="rows",
             specials=False, extra_flags=0):
    """C (row stride N + 3) = epilogue(A @ B) against numpy in float64, worked out from
    the rule: y (+ C's old value when accumulating) + bias[row], + R before the clamps
    (``residual`` = "before") or after them ("after"), lo where y < lo (<=: inclusive),
    hi where y > hi (>=). ``specials``: rows of A holding NaN, +inf and -inf.
    ``extra_flags``: bits the kernel does not know (the general epilogue then, never one
    of ``gemm.EP_FORMS``)."""
    fn, features = ep_kernel(kind, dtype)
    rsb, csb = {"rows": (N, 1), "cols": (1, K)}[b_layout]
    a = RNG.standard_normal((M, K)).astype(dtype)
    if specials:
        a[0, 1], a[min(1, M - 1), 0], a[M - 1, K - 1] = np.nan, np.inf, -np.inf
    b = np.abs(RNG.standard_normal((K - 1) * rsb + (N - 1) * csb + 1)).astype(dtype) + 0.1
    ldc, ldr = N + 3, N + 5
    c0 = RNG.standard_normal(M * ldc).astype(dtype)
    c = c0.copy()
    bias_v = RNG.standard_normal(M).astype(dtype) * 3
    r = RNG.standard_normal(M * ldr).astype(dtype) * 3
    flags = ((gemm.EP_BIAS if bias else 0)
             | {None: 0, "before": gemm.EP_RES_BEFORE, "after": gemm.EP_RES_AFTER}[residual]
             | (gemm.EP_LO | (gemm.EP_LO_INCLUSIVE if lo_inclusive else 0) if lo is not None
                else 0)
             | (gemm.EP_HI | (gemm.EP_HI_INCLUSIVE if hi_inclusive else 0) if hi is not None
                else 0) | extra_flags)
    scratch = np.zeros(gemm_tiling.workspace_bytes(features) // 8 + 8, np.float64)
    fn(a.ctypes.data, K, 1, b.ctypes.data, rsb, csb, c.ctypes.data, ldc, M, N, K,
       scratch.ctypes.data, accumulate, bias_v.ctypes.data if bias else None,
       r.ctypes.data if residual else None, ldr, -np.inf if lo is None else lo,
       np.inf if hi is None else hi, flags)
    with np.errstate(invalid="ignore"):
        y = a.astype(np.float64) @ view(b, rsb, csb, K, N)
        if accumulate:
            y += view(c0, ldc, 1, M, N)
        if bias:
            y += bias_v.astype(np.float64)[:, None]
        res = view(r, ldr, 1, M, N)
        if residual == "before":
            y += res
        if lo is not None:
            y = np.where(y <= lo if lo_inclusive else y < lo, lo, y)
        if hi is not None:
            y = np.where(y >= hi if hi_inclusive else y > hi, hi, y)
        if residual == "after":
            y += res
    got = c.reshape(M, ldc)
    tol = 4e-5 * np.sqrt(K) if dtype == "float32" else 1e-12 * np.sqrt(K)
    np.testing.assert_allclose(got[:, :N], y, rtol=tol, atol=tol,
                               err_msg=f"{kind} {dtype} M={M} N={N} K={K} flags={flags}")
    np.testing.assert_array_equal(got[:, N:], c0.reshape(M, ldc)[:, N:])
    if specials:
        assert np.isnan(got[0, :N]).all() and (np.isnan(y[0]) == np.isnan(got[0, :N])).all()
    return got[:, :N]


EP_FORMS = [dict(lo=0.0, hi=6.0), dict(), dict(residual="before", lo=0.0),
            dict(lo=0.0, lo_inclusive=True), dict(residual="after", lo=-1.0, hi=1.5),
            dict(bias=False, residual="before", hi=0.5, hi_inclusive=True),
            dict(residual="before"), dict(residual="before", lo=0.0, lo_inclusive=True)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_epilogue_entry_every_nest_and_tile(kind, dtype):
    """Each epilogue form (bias, clamps strict and inclusive, the residual before or after
    them) on: the column blocks of a row-major B (M <= MC) with partial row and column
    tiles, the packed nest (B transposed; M past MC), K past KC (two K blocks: the
    epilogue applied once, on the last), C accumulated, and few columns over many rows
    (a product the plain entry would run transposed)."""
    t = gemm_tiling.tiling(dtype, kernels(kind)[2])
    shapes = [(t.mr + 1, t.nr + t.vw + 1, 9, "rows"), (2 * t.mr, 2 * t.nr, 13, "rows"),
              (gemm_tiling.MC + 7, t.nr + 3, 11, "cols"), (5, t.nr - 1, 7, "rows"),
              (t.mr - 1, t.nr + 5, gemm_tiling.KC + 9, "rows"),
              (gemm_tiling.MC + 48, t.nr + t.vw + 1, 9, "rows")]
    for i, (M, N, K, bl) in enumerate(shapes):
        for j, form in enumerate(EP_FORMS):
            check_ep(kind, dtype, M, N, K, b_layout=bl, accumulate=(i + j) % 2, **form)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_epilogue_in_the_transposed_nest(kind, dtype):
    """The transposed nest (C^T = B^T @ A^T, ``_GemmBuilder.transposes``) applies the
    epilogue in its transposed stores: each row of C a vector of the tile's rows, the bias
    per row of C, the residual loaded under the store's mask; the general epilogue on its
    partial tiles. Few columns over many rows at a short K (its tiles pad less), with two
    K blocks (the epilogue once, on the last), and an A of ``gemm.TAIL_STREAM_BYTES`` or
    more whose last column would be a dot product (49 = 48 + 1: a 3x3 convolution of 512
    channels on 7 x 7), every form, C accumulated or not, against numpy."""
    t = gemm_tiling.tiling(dtype, kernels(kind)[2])
    item = np.dtype(dtype).itemsize
    long_k = gemm.TAIL_STREAM_BYTES // (item * 192) + 1
    shapes = [(gemm_tiling.MC + 48, t.nr + t.vw + 3, 9),
              (gemm_tiling.MC + 5, t.nr + t.vw + 3, gemm_tiling.KC + 3),
              (192, t.vw + 1, long_k), (192, 2 * t.vw + 1, long_k),
              (192, t.nr + t.vw + 1, long_k)]
    for i, (M, N, K) in enumerate(shapes):
        forms = EP_FORMS if K < 1000 else EP_FORMS[i % 2::3]
        for j, form in enumerate(forms):
            check_ep(kind, dtype, M, N, K, accumulate=(i + j) % 2, **form)


@pytest.mark.parametrize("dtype", DTYPES)
def test_epilogue_nan_and_infinities(dtype):
    """NaN stays NaN through both clamps (ordered compares), +inf becomes hi, -inf lo; the
    ReLU6 bounds are reached exactly."""
    kind = "avx2"
    for M, N in ((7, 40), (24, 64)):
        got = check_ep(kind, dtype, M, N, 17, lo=0.0, hi=6.0, specials=True)
        assert np.isnan(got[0]).all() and not np.isnan(got[1:]).any()
        assert (got[1] == 6.0).all() and (got[M - 1] == 0.0).all()     # +inf, -inf
        got = check_ep(kind, dtype, M, N, 17, lo=0.0, lo_inclusive=True, specials=True)
        assert np.isposinf(got[min(1, M - 1)]).all() and np.isnan(got[0]).all()


@pytest.mark.parametrize("kind", KINDS)
def test_epilogue_forms_match_the_general_epilogue(kind):
    """Each epilogue form emitted with only its own steps (``gemm.EP_FORMS``) stores what
    the general one (every step under its flag) stores, bit for bit, NaN and infinities
    included; both against numpy in check_ep."""
    t = gemm_tiling.tiling("float32", kernels(kind)[2])
    for form in EP_FORMS:
        outs = []
        for extra in (0, 128):
            state = RNG.bit_generator.state
            outs.append(check_ep(kind, "float32", t.mr + 2, t.nr + t.vw + 3, 19,
                                 specials=True, extra_flags=extra, **form))
            RNG.bit_generator.state = state         # the same operands for both
        np.testing.assert_array_equal(outs[0], outs[1])


def test_epilogue_flags_zero_is_the_plain_product():
    """No flags: the epilogue entry computes the plain product (the transposed nest
    included), bit for bit what ``irgraph_gemm_<dtype>`` stores."""
    _, fns, features = kernels("avx2")
    for M, N, K in ((gemm_tiling.MC + 48, 41, 9), (30, 70, 300)):
        a = RNG.standard_normal(M * K)
        b = RNG.standard_normal(K * N)
        scratch = np.zeros(gemm_tiling.workspace_bytes(features) // 8 + 8, np.float64)
        c1, c2 = np.zeros(M * N), np.zeros(M * N)
        fns["float64"](a.ctypes.data, K, 1, b.ctypes.data, N, 1, c1.ctypes.data, N, M, N, K,
                       scratch.ctypes.data, 0)
        fn, _ = ep_kernel("avx2", "float64")
        fn(a.ctypes.data, K, 1, b.ctypes.data, N, 1, c2.ctypes.data, N, M, N, K,
           scratch.ctypes.data, 0, None, None, 0, -np.inf, np.inf, 0)
        np.testing.assert_array_equal(c1, c2)
        np.testing.assert_allclose(c1.reshape(M, N), a.reshape(M, K) @ b.reshape(K, N),
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_last_columns_as_dot_products(kind, dtype):
    """N % vw of at most ``gemm.TAIL_COLUMNS`` columns past whole vectors (a 1x1
    convolution on 7 x 7: 49 = 48 + 1; up to ``LONG_TAIL_COLUMNS`` where K is long: 14 x
    14, 196 = 192 + 4), with A's rows contiguous, are dot products
    along k: a matrix times one or two vectors, a last vector and a column, several
    strips and two, three or four columns (all at once, each row of A read once); one K
    block and two (``gemm.DOT_K``: the first stores, the second adds), C accumulated or
    not, rows in groups and a remainder, past MC (the packed nest) and within it (the
    column blocks); the epilogue forms on them. A packed (its rows not contiguous) keeps
    the tiles: the same products."""
    t = gemm_tiling.tiling(dtype, kernels(kind)[2])
    assert gemm.TAIL_COLUMNS >= 1 and gemm.LONG_TAIL_COLUMNS == 4
    for N in (1, 2, t.vw + 1, t.nr + t.vw + 1, 3 * t.nr + 2, 2 * t.vw + 3, t.nr + 4):
        for M, K in ((7, 13), (gemm_tiling.MC + 6, gemm_tiling.KC + 9), (4 * 3, 2 * t.vw),
                     (6, gemm.DOT_K + t.vw + 3)):
            for accumulate in (0, 1):
                for a_layout in ("rows", "cols"):
                    check(kind, dtype, M, N, K, a_layout, "rows", accumulate=accumulate,
                          pad=2)
                check(kind, dtype, M, N, K, "rows", "cols", accumulate=accumulate)
        for j, form in enumerate(EP_FORMS):
            check_ep(kind, dtype, 9, N, gemm_tiling.KC + 5, accumulate=j % 2, **form)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_products_narrower_than_a_vector(kind, dtype):
    """Fewer columns than a vector (a classifier's 10) from NARROW_SWAP MR-row tiles up:
    the transposed nest (C written transposed, A^T packed), every operand layout, K past
    one KC block, accumulate and a padded C; below that, and for the columns the dot-product
    tail takes, the nest as it is."""
    t = gemm_tiling.tiling(dtype, kernels(kind)[2])
    layouts = [("rows", "rows"), ("cols", "cols"), ("aliased", "gather")]
    for N in sorted({1, 3, t.vw // 2 + 1, t.vw - 1}):
        for M in (gemm.NARROW_SWAP * t.mr - 1, gemm.NARROW_SWAP * t.mr, 5 * t.mr + 3, 130):
            for K in (10, gemm_tiling.KC + 44):
                for a_layout, b_layout in layouts:
                    check(kind, dtype, M, N, K, a_layout, b_layout)
                check(kind, dtype, M, N, K, accumulate=1, pad=3)
