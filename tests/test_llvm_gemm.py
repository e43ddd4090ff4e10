"""The LLVM backend's packed GEMM (backends/llvm/gemm.py) on every operand layout.

Each of A and B is read row-major or through a folded transpose, so the packing routine sees
both strip layouts (contiguous strips moved as vectors, strided strips element by element)
and partial edge strips; results are compared with numpy in float64 or float32.
"""
from __future__ import annotations

import numpy as np
import pytest

import irgraph.backends as backends
from irgraph import Graph, TensorType

from tests.helpers import run_guarded

RNG = np.random.default_rng(7)


def _graph(m: int, k: int, n: int, ta: bool, tb: bool, dtype: str) -> Graph:
    """C = op(A) @ op(B) with op a transpose where asked (folded into the GEMM's strides)."""
    g = Graph("gemm")
    a = g.add_input("a", TensorType((k, m) if ta else (m, k), dtype))
    b = g.add_input("b", TensorType((n, k) if tb else (k, n), dtype))
    a2 = g.op("transpose", a, perm=(1, 0)) if ta else a
    b2 = g.op("transpose", b, perm=(1, 0)) if tb else b
    g.set_outputs([g.op("matmul", a2, b2)])
    return g


@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("m,k,n", [(1, 3, 1), (6, 5, 16), (7, 9, 17), (13, 300, 35),
                                   (50, 40, 3), (2, 17, 70),
                                   # a last wide strip (NR + one vector: gemm.wide_from) on
                                   # 512-bit vectors (float32 44, 48 before the dot-product
                                   # column) and 256-bit ones (22)
                                   (29, 300, 44), (160, 300, 49), (20, 40, 22),
                                   (100, 70, 48)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gemm_every_operand_layout_matches_numpy(m, k, n, ta, tb, dtype):
    exe = backends.compile(_graph(m, k, n, ta, tb, dtype), "llvm", threads=2)
    a = RNG.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = RNG.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    (c,) = run_guarded(exe, [a, b])
    want = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
    tol = 1e-4 if dtype == "float32" else 1e-10
    np.testing.assert_allclose(c, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("threads", [1, 2])
def test_gemm_strips_past_one_kc_and_mc_block(threads):
    """M past MC, K past KC, N past NC: every blocking loop takes more than one step."""
    from irgraph.backends.llvm.gemm import KC, MC, NC
    m, k, n = MC + 7, KC + 5, NC + 19
    exe = backends.compile(_graph(m, k, n, False, True, "float32"), "llvm", threads=threads)
    a = RNG.standard_normal((m, k)).astype(np.float32)
    b = RNG.standard_normal((n, k)).astype(np.float32)
    (c,) = exe(a, b)
    np.testing.assert_allclose(c, a.astype(np.float64) @ b.T.astype(np.float64),
                               rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("as_output", [True, False])
@pytest.mark.parametrize("batch", [(), (3,)])
@pytest.mark.parametrize("threads", [1, 2])
def test_transposed_product_written_directly(as_output, batch, threads):
    """transpose(A @ B) with nothing else reading A @ B (a weight gradient put back in W's
    layout): the GEMM writes B^T A^T into the transpose's buffer, the transpose never runs;
    (A @ B)^T = B^T A^T is checked against numpy, with the operands themselves transposed
    views too (x^T @ g)."""
    m, k, n = 37, 19, 29
    g = Graph("wgrad")
    x = g.add_input("x", TensorType(batch + (k, m)))
    gy = g.add_input("gy", TensorType(batch + (k, n)))
    r = len(batch) + 2
    swap = tuple(range(r - 2)) + (r - 1, r - 2)
    prod = g.op("matmul", g.op("transpose", x, perm=swap), gy)
    t = g.op("transpose", prod, perm=swap)
    g.set_outputs([t] if as_output else [g.op("neg", t)])
    exe = backends.compile(g, "llvm", threads=threads)
    assert len(exe.plan.t_out) == 1
    xa = RNG.standard_normal(batch + (k, m)).astype(np.float32)
    ga = RNG.standard_normal(batch + (k, n)).astype(np.float32)
    (c,) = run_guarded(exe, [xa, ga])
    want = np.swapaxes(np.swapaxes(xa, -1, -2).astype(np.float64) @ ga, -1, -2)
    np.testing.assert_allclose(c, want if as_output else -want, rtol=1e-4, atol=1e-4)


def test_transposed_product_not_used_when_the_product_is_read_elsewhere():
    g = Graph("both")
    a, b = g.add_input("a", TensorType((5, 6))), g.add_input("b", TensorType((6, 7)))
    p = g.op("matmul", a, b)
    g.set_outputs([g.op("transpose", p, perm=(1, 0)), g.op("neg", p)])
    exe = backends.compile(g, "llvm", threads=2)
    assert not exe.plan.t_out
    aa = RNG.standard_normal((5, 6)).astype(np.float32)
    ba = RNG.standard_normal((6, 7)).astype(np.float32)
    t, n = run_guarded(exe, [aa, ba])
    np.testing.assert_allclose(t, (aa @ ba).T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(n, -(aa @ ba), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("threads", [1, 2])
def test_conv_kernel_grad_through_the_gemm_matches_torch(threads):
    """Eq. 9.11 for LeNet's second convolution (dW block 16 x 150, past DOT_LIMIT: one
    accumulating GEMM per image) vs torch's weight gradient."""
    import torch
    from irgraph.backends.llvm.ops_conv import DOT_LIMIT
    assert 16 * 6 * 25 > DOT_LIMIT
    attrs = dict(stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups=1,
                 kernel_size=(5, 5))
    g = Graph("kgrad")
    x = g.add_input("x", TensorType((5, 6, 14, 14)))
    gy = g.add_input("gy", TensorType((5, 16, 10, 10)))
    g.set_outputs(g.add_node("conv_kernel_grad", [x, gy], attrs))
    exe = backends.compile(g, "llvm", threads=threads)
    xa = RNG.standard_normal((5, 6, 14, 14)).astype(np.float32)
    ga = RNG.standard_normal((5, 16, 10, 10)).astype(np.float32)
    (dw,) = run_guarded(exe, [xa, ga])
    want = torch.nn.grad.conv2d_weight(torch.from_numpy(xa), (16, 6, 5, 5),
                                       torch.from_numpy(ga))
    np.testing.assert_allclose(dw, want.numpy(), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("k", [15, 16, 17, 48, 203])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("threads", [1, 2])
def test_b_rows_along_k_pack_by_register_transposes(k, dtype, threads):
    """x @ W^T (a linear layer): B's strips lie along k and pack as vw x vw blocks
    transposed in registers plus a tail of k % vw; small integers make every product and
    sum exact, so one misplaced element shows as a wrong value, not a rounding difference.
    M spans the in-place and packed A paths, N whole strips and a partial one."""
    for m, n in [(5, 64 + 9), (130, 97)]:
        exe = backends.compile(_graph(m, k, n, False, True, dtype), "llvm", threads=threads)
        a = RNG.integers(-4, 5, (m, k)).astype(dtype)
        b = RNG.integers(-4, 5, (n, k)).astype(dtype)
        (c,) = run_guarded(exe, [a, b])
        np.testing.assert_array_equal(c, a.astype(np.int64) @ b.T.astype(np.int64))


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("m,n", [(100, 40), (37, 49), (300, 196), (96, 70)])
def test_gemm_split_by_rows_where_columns_are_few(m, n, threads, monkeypatch):
    """Threads sharing one GEMM take runs of MR rows when its columns make fewer than 4
    NR strips per thread (``splits_rows``), with a short last run; against numpy."""
    from irgraph.backends.llvm import jit, workers
    from irgraph.backends.llvm.gemm_tiling import splits_rows, tiling
    monkeypatch.setattr(workers, "PARALLEL_FLOPS", 0)     # small: split all the same
    monkeypatch.setattr(workers, "PARALLEL_BYTES", 0)
    t = tiling("float32", jit.host()[2])
    if (t.mr, t.nr) == (12, 32) and threads > 1:    # by hand: 2, 2, 7, 3 strips < 8
        assert splits_rows(m, n, t.mr, t.nr, threads)
    k = 70
    exe = backends.compile(_graph(m, k, n, False, False, "float32"), "llvm", threads=threads,
                           cache=False)
    a = RNG.standard_normal((m, k)).astype(np.float32)
    b = RNG.standard_normal((k, n)).astype(np.float32)
    (c,) = run_guarded(exe, [a, b])
    np.testing.assert_allclose(c, a.astype(np.float64) @ b, rtol=1e-4, atol=1e-4)


def test_splits_rows_rule():
    """Worked by hand with 12 x 32 register tiles: 49 columns are 2 strips, fewer than 4
    per thread on 2 threads, and 1280 rows 107 runs: rows; 784 columns (28x28) are 25
    strips: columns; 12 rows are one run, not more than 2 strips: columns."""
    from irgraph.backends.llvm.gemm_tiling import splits_rows
    assert splits_rows(1280, 49, 12, 32, 2)
    assert splits_rows(96, 196, 12, 32, 2)          # 7 strips < 8, 8 runs > 7
    assert not splits_rows(72, 196, 12, 32, 2)      # 6 runs: not more than 7 strips
    assert not splits_rows(1280, 784, 12, 32, 2)    # 25 strips
    assert not splits_rows(12, 49, 12, 32, 2)
    assert not splits_rows(96, 196, 12, 32, 1)      # one thread: 7 strips >= 4


def test_wide_strip_tiles():
    """The tiles of a wide strip (three vectors) keep the MR x NR tile's accumulators."""
    from irgraph.backends.llvm.gemm_tiling import tiling
    assert tiling("float32", "+avx512f").wide() == (8, (4, 8))      # 12 x 2 -> 8 x 3
    assert tiling("float64", "+avx2").wide() == (4, (2, 4))         # 6 x 2 -> 4 x 3
