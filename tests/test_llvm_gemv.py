"""Products with at most four rows of A and a row-major B on the LLVM backend
(backends/llvm/gemv.py: B streamed once, no packing) against float64 numpy: column counts
that leave whole blocks, single vectors and single columns, A transposed (strided rows),
batched operands, float64, one and two threads; and the form's reach."""
from __future__ import annotations

import numpy as np
import pytest

import irgraph.backends as backends
from irgraph import Graph, TensorType
from irgraph.backends.llvm import gemv


def _matmul(a_shape, b_shape, dtype, transpose_a=False):
    g = Graph("mm")
    a = g.add_input("a", TensorType(a_shape, dtype))
    w = g.add_input("w", TensorType(b_shape, dtype))
    if transpose_a:
        a = g.add_node("transpose", [a], dict(perm=(1, 0)))[0]
    g.set_outputs(g.add_node("matmul", [a, w], {}))
    return g


@pytest.mark.parametrize("M,K,N,dtype,threads", [
    (1, 512, 1000, "float32", 2),     # (AVX-512) 3 blocks of 256, 14 vectors, 8 columns
    (1, 37, 16, "float32", 1),        # one vector
    (3, 100, 37, "float32", 2),       # no whole block; two vectors and 5 columns
    (4, 64, 129, "float32", 1),       # two blocks and one column
    (2, 300, 70, "float64", 2),       # float64: 8 lanes
    (2, 50, 300, "float32", 1),       # (AVX-512) 2 blocks of 128, 2 vectors, 12 columns
    (3, 40, 250, "float64", 2),       # (AVX-512) 6 blocks of 40, one vector, 2 columns
    # one row: sweeps over chunks of C (8 KiB), K mod 8 rows one at a time
    (1, 45, 2100, "float32", 2),      # chunks of 2048 and 48 columns, 4 columns
    (1, 19, 1030, "float64", 1),      # chunks of 1024 and 0 + 6 columns
    (1, 37, 20, "float32", 2),        # one block: the second thread has no share
])
def test_few_row_products_match_numpy(M, K, N, dtype, threads):
    rng = np.random.default_rng(M * 1000 + N)
    a = rng.standard_normal((M, K)).astype(dtype)
    w = rng.standard_normal((K, N)).astype(dtype)
    got = backends.compile(_matmul((M, K), (K, N), dtype), "llvm", threads=threads,
                           cache=False)(a, w)[0]
    want = a.astype(np.float64) @ w.astype(np.float64)
    scale = np.abs(a).astype(np.float64) @ np.abs(w).astype(np.float64)
    tol = 1e-6 if dtype == "float32" else 1e-14
    assert np.all(np.abs(got - want) <= tol * scale), np.abs(got - want).max()


def test_transposed_a_and_batched_product():
    """A read through strides (a folded transpose), and a batch sharing B (rows folded)."""
    rng = np.random.default_rng(7)
    at = rng.standard_normal((90, 3)).astype(np.float32)
    w = rng.standard_normal((90, 50)).astype(np.float32)
    got = backends.compile(_matmul((90, 3), (90, 50), "float32", transpose_a=True), "llvm",
                           threads=2, cache=False)(at, w)[0]
    np.testing.assert_allclose(got, at.T.astype(np.float64) @ w, rtol=1e-5, atol=1e-4)
    x = rng.standard_normal((2, 2, 40)).astype(np.float32)
    w2 = rng.standard_normal((40, 33)).astype(np.float32)
    got = backends.compile(_matmul((2, 2, 40), (40, 33), "float32"), "llvm", threads=2,
                           cache=False)(x, w2)[0]
    np.testing.assert_allclose(got, x.astype(np.float64) @ w2, rtol=1e-5, atol=1e-4)


def test_blocks_fill_half_the_vector_registers():
    wide, avx2 = "+avx2,+fma,+avx512f", "+avx2,+fma"
    assert [gemv.vectors(m, wide) for m in range(1, 5)] == [16, 8, 5, 4]
    assert [gemv.vectors(m, avx2) for m in range(1, 5)] == [8, 4, 2, 2]


def test_reach():
    f = "+avx2,+fma,+avx512f"
    assert gemv.applies("float32", 1, 1000, 512, (1000, 1), f)
    assert gemv.applies("float32", 4, 16, 1, (16, 1), f)
    assert not gemv.applies("float32", 5, 1000, 512, (1000, 1), f)       # rows
    assert not gemv.applies("float32", 1, 1000, 512, (1, 512), f)        # B transposed
    assert not gemv.applies("float32", 1, 15, 512, (15, 1), f)           # under a vector
    assert not gemv.applies("int32", 1, 1000, 512, (1000, 1), f)


@pytest.mark.parametrize("M,transpose_a,dtype", [
    (16, False, "float32"), (64, True, "float32"), (70, False, "float64"),
    (7, True, "float64"), (100, False, "float32")])
def test_last_row_strips_of_any_height_match_numpy(M, transpose_a, dtype):
    """The packed GEMM's last strip of rows, of every height (``Tiling.heights``), A read in
    place or packed (transposed), against float64 numpy."""
    K, N = 37, 70
    rng = np.random.default_rng(M)
    a = rng.standard_normal((K, M) if transpose_a else (M, K)).astype(dtype)
    w = rng.standard_normal((K, N)).astype(dtype)
    g = _matmul(a.shape, (K, N), dtype, transpose_a=transpose_a)
    got = backends.compile(g, "llvm", threads=1, cache=False)(a, w)[0]
    am = (a.T if transpose_a else a).astype(np.float64)
    want = am @ w.astype(np.float64)
    scale = np.abs(am) @ np.abs(w).astype(np.float64)
    tol = 1e-6 if dtype == "float32" else 1e-14
    assert np.all(np.abs(got - want) <= tol * scale), np.abs(got - want).max()
