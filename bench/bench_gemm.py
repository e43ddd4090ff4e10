"""The LLVM GEMM on one thread, side by side with numpy's BLAS on one thread, on the matmul
shapes of the models (an MLP's forward and backward products, a recurrence's step) and 1024^3.

    python bench/bench_gemm.py [--reps 30] [--float64]

Each row: M x K x N and the operand layout ("B^T": B stored [N, K], the folded transpose of a
linear layer's weight; "A^T": A stored [K, M], the weight gradient x^T @ gy), then GFLOP/s of
ours (the whole ``call_into``, and net of its Python cost: the same graph on 2 x 2 x 2
operands, timed alike, subtracted) and of numpy (OPENBLAS_NUM_THREADS=1), and the ratio of
the net to numpy. Times are one-thread CPU time (``time.thread_time``), the best of
``--reps`` calls, ours and numpy's interleaved; a call runs R independent products (R
distinct A operands, one B, as a recurrence's steps share a weight) of at least ~60 MFLOP
in all. A script, not a test: nothing here asserts a speed.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import best_of, describe, pin_threads  # noqa: E402

pin_threads(1)      # before numpy loads its BLAS

import numpy as np  # noqa: E402

import irgraph.backends as backends  # noqa: E402
from irgraph import Graph, TensorType  # noqa: E402

SHAPES = [  # (M, K, N, A transposed, B transposed)
    (128, 784, 512, False, True),
    (784, 128, 512, True, False),
    (128, 512, 256, False, False),
    (128, 256, 512, False, False),
    (128, 512, 256, False, True),
    (32, 256, 256, False, False),
    (32, 256, 1024, False, False),
    (64, 576, 1024, False, False),
    (1024, 1024, 1024, False, False),
]


def batch_graph(M, K, N, ta, tb, reps, dtype):
    """``reps`` products A_r @ B (A_r given [K, M] and transposed when ``ta``; B given [N, K]
    and transposed when ``tb``)."""
    g = Graph("gemm")
    b = g.add_input("b", TensorType((N, K) if tb else (K, N), dtype))
    if tb:
        (b,) = g.add_node("transpose", [b], {"perm": [1, 0]})
    outs = []
    for r in range(reps):
        a = g.add_input(f"a{r}", TensorType((K, M) if ta else (M, K), dtype))
        if ta:
            (a,) = g.add_node("transpose", [a], {"perm": [1, 0]})
        outs += g.add_node("matmul", [a, b], {})
    g.set_outputs(outs)
    return g


def cpu_best(fn, reps: int) -> float:
    return best_of(fn, reps, clock=time.thread_time)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--float64", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated MxKxN rows to run")
    a = ap.parse_args()
    from irgraph.backends.llvm import jit
    _, cpu, feats = jit.host()
    print(describe(f"LLVM target {cpu}", f"numpy {np.__version__}"))
    dtype = "float64" if a.float64 else "float32"
    rng = np.random.default_rng(0)
    print(f"{'shape':>16s} {'layout':>6s} {'R':>3s} {'ours':>8s} {'net':>8s} {'numpy':>8s}  "
          f"net/numpy  (GFLOP/s)")
    for M, K, N, ta, tb in SHAPES:
        name = f"{M}x{K}x{N}"
        if a.only and name not in a.only.split(","):
            continue
        flop = 2 * M * K * N
        R = max(1, min(32, round(6e7 / flop)))
        g = batch_graph(M, K, N, ta, tb, R, dtype)
        exe = backends.compile(g, "llvm", threads=1)
        bm = rng.standard_normal((N, K) if tb else (K, N)).astype(dtype)
        As = [rng.standard_normal((K, M) if ta else (M, K)).astype(dtype) for _ in range(R)]
        out = [np.empty((M, N), dtype) for _ in range(R)]
        exe.call_into(out, bm, *As)
        bv = bm.T if tb else bm
        av = [x.T if ta else x for x in As]
        tol = 1e-3 * np.sqrt(K) if dtype == "float32" else 1e-9 * np.sqrt(K)
        for o, x in zip(out, av):
            np.testing.assert_allclose(o, x @ bv, rtol=tol, atol=tol)
        nout = [np.empty((M, N), dtype) for _ in range(R)]

        tiny = backends.compile(batch_graph(2, 2, 2, False, False, R, dtype), "llvm", threads=1)
        t_args = [np.ones((2, 2), dtype) for _ in range(R + 1)]
        t_out = [np.empty((2, 2), dtype) for _ in range(R)]

        def ours():
            exe.call_into(out, bm, *As)

        def overhead():
            tiny.call_into(t_out, *t_args)

        def theirs():
            for x, o in zip(av, nout):
                np.matmul(x, bv, out=o)
        t_o = t_v = t_n = float("inf")
        for _ in range(a.reps):             # interleaved: all see the same machine load
            t_o = min(t_o, cpu_best(ours, 1))
            t_v = min(t_v, cpu_best(overhead, 1))
            t_n = min(t_n, cpu_best(theirs, 1))
        go, gnet, gn = (R * flop / t / 1e9 for t in (t_o, t_o - t_v, t_n))
        lay = "A^T" if ta else ("B^T" if tb else "")
        print(f"{name:>16s} {lay:>6s} {R:3d} {go:8.1f} {gnet:8.1f} {gn:8.1f}  {gnet / gn:5.2f}",
              flush=True)


if __name__ == "__main__":
    main()
