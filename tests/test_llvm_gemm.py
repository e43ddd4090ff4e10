"""The LLVM backend's packed GEMM (backends/llvm/gemm.py) on every operand layout.

Each of A and B is read row-major or through a folded transpose, so the packing routine sees
both strip layouts (contiguous strips moved as vectors, strided strips element by element)
and partial edge strips; results are compared with numpy in float64 or float32.
"""
from __future__ import annotations

import numpy as np
import pytest

import backends
from irgraph import Graph, TensorType

from tests.test_llvm import run_guarded

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
                                   (50, 40, 3), (2, 17, 70)])
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
    from backends.llvm.gemm import KC, MC, NC
    m, k, n = MC + 7, KC + 5, NC + 19
    exe = backends.compile(_graph(m, k, n, False, True, "float32"), "llvm", threads=threads)
    a = RNG.standard_normal((m, k)).astype(np.float32)
    b = RNG.standard_normal((n, k)).astype(np.float32)
    (c,) = exe(a, b)
    np.testing.assert_allclose(c, a.astype(np.float64) @ b.T.astype(np.float64),
                               rtol=1e-4, atol=1e-3)
