"""Benchmark of the LLVM backend, side by side with the reference backend, numpy and PyTorch.

    python bench/bench_llvm.py [--quick]

Prints, for this machine (named in the header):
* training steps (forward, backward, Adam) of (a) an MLP 784-512-256-10, batch 128; (b) a
  LeNet-style CNN with batch norm on 1x28x28, batch 64; (c) a tanh RNN, hidden 256, 64 steps,
  batch 32: ms per step on the reference backend, the LLVM backend (default pipeline, and
  with the fusion pass) and PyTorch eager (CPU, 2 threads); ratios use the faster LLVM;
* matmul GFLOP/s (LLVM vs numpy's BLAS; square, and the few-row products of a recurrence
  step on one thread: B read in place up to 144 rows, packed from 145) and conv2d 64x32x32x32 with 3x3 kernels (LLVM vs
  PyTorch) GFLOP/s;
* compile time of (b): cold (empty cache) and cached.
Times are the best of 15-20 runs (3 for the reference): the shared machine is noisy.
A script, not a test: nothing here asserts a speed.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import models  # noqa: E402
from machine import best_of, describe  # noqa: E402  (bench/ is on sys.path when run)

import irgraph.backends as backends  # noqa: E402
import irgraph.frontend as fe  # noqa: E402
from irgraph.frontend import nn, optim  # noqa: E402
from irgraph import Graph, TensorType  # noqa: E402

THREADS = 2


def machine() -> str:
    from irgraph.backends.llvm import jit
    _, cpu, feats = jit.host()
    wide = "avx512" if "+avx512f" in feats else ("avx2" if "+avx2" in feats else "sse")
    return describe(f"LLVM target {cpu} ({wide})", f"numpy {np.__version__}")


SETTLE_S = 0.25   # > OpenBLAS's idle spin (2^28 cycles) and libgomp's spin count


def timeit(fn, reps: int, warmup: int = 1) -> float:
    """Best-of wall time in seconds. Waits first until the previous contestant's idle worker
    threads (OpenBLAS, OpenMP spin after each call) stop spinning on the cores it needs."""
    time.sleep(SETTLE_S)
    for _ in range(warmup):
        fn()
    return best_of(fn, reps)


# ---------------------------------------------------------------- models (ours and torch's)
def ours(kind: str):
    if kind == "mlp":
        return models.mlp()
    if kind == "cnn":
        return models.lenet()
    fe.manual_seed(0)
    return fe.rnn.SequenceClassifier(32, 256, 10)   # fig. 10.5: RNN, head on the last state


def theirs(kind: str):
    import torch
    tn = torch.nn
    if kind == "mlp":
        return tn.Sequential(tn.Linear(784, 512), tn.ReLU(), tn.Linear(512, 256), tn.ReLU(),
                             tn.Linear(256, 10))
    if kind == "cnn":
        return tn.Sequential(tn.Conv2d(1, 6, 5, padding=2), tn.BatchNorm2d(6), tn.ReLU(),
                             tn.MaxPool2d(2), tn.Conv2d(6, 16, 5), tn.BatchNorm2d(16), tn.ReLU(),
                             tn.MaxPool2d(2), tn.Flatten(), tn.Linear(400, 120), tn.ReLU(),
                             tn.Linear(120, 84), tn.ReLU(), tn.Linear(84, 10))

    class Last(tn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = tn.RNN(32, 256)
            self.head = tn.Linear(256, 10)

        def forward(self, x):
            return self.head(self.rnn(x)[1][0])
    return Last()


SHAPES = {"mlp": ((128, 784), 128), "cnn": ((64, 1, 28, 28), 64), "rnn": ((64, 32, 32), 32)}
LABELS = {"mlp": "(a) MLP 784-512-256-10, batch 128",
          "cnn": "(b) LeNet CNN + batch norm, 1x28x28, batch 64",
          "rnn": "(c) tanh RNN, hidden 256, 64 steps, batch 32"}


def batch(kind: str):
    shape, n = SHAPES[kind]
    r = np.random.default_rng(1)
    return r.standard_normal(shape).astype(np.float32), r.integers(0, 10, n).astype(np.int64)


def our_step(kind: str, backend: str, **opts):
    shape, n = SHAPES[kind]
    return fe.compile_train(ours(kind), nn.CrossEntropyLoss(), optim.Adam(lr=1e-3),
                            fe.TensorSpec(shape), fe.TensorSpec((n,), "int64"),
                            backend=backend, **opts)


def torch_step(kind: str):
    import torch
    torch.set_num_threads(THREADS)
    model = theirs(kind)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    x, y = (torch.from_numpy(a) for a in batch(kind))

    def step():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
    return step


def bench_models(quick: bool) -> None:
    print(f"\n{'training step (fwd+bwd+Adam)':48s} {'reference':>11s} {'llvm':>9s} "
          f"{'llvm+fuse':>10s} {'torch':>9s} {'ref/llvm':>9s} {'torch/llvm':>11s}")
    for kind in ("mlp", "cnn", "rnn"):
        x, y = batch(kind)
        nat = our_step(kind, "llvm", threads=THREADS)
        t_llvm = timeit(lambda: nat(x, y), 3 if quick else 20)
        fused = our_step(kind, "llvm", threads=THREADS, pipeline=["default", "fuse"])
        t_fuse = timeit(lambda: fused(x, y), 3 if quick else 20)
        ref = our_step(kind, "reference")
        t_ref = timeit(lambda: ref(x, y), 1 if quick else 3, warmup=1)
        try:
            t_torch = timeit(torch_step(kind), 3 if quick else 20)
        except ImportError:
            t_torch = float("nan")
        best = min(t_llvm, t_fuse)
        print(f"{LABELS[kind]:48s} {t_ref * 1e3:9.1f}ms {t_llvm * 1e3:7.2f}ms "
              f"{t_fuse * 1e3:8.2f}ms {t_torch * 1e3:7.2f}ms {t_ref / best:8.1f}x "
              f"{t_torch / best:10.2f}x")


def one(op, *types, **attrs) -> Graph:
    g = Graph(op)
    xs = [g.add_input(f"x{i}", t) for i, t in enumerate(types)]
    g.set_outputs(g.add_node(op, xs, attrs))
    return g


def bench_kernels(quick: bool) -> None:
    print(f"\n{'kernel':36s} {'llvm GF/s':>10s} {'ref GF/s':>10s} {'ratio':>7s}")
    r = np.random.default_rng(0)
    for n in ((256, 512) if quick else (256, 512, 768, 1024)):
        a, b = (r.standard_normal((n, n)).astype(np.float32) for _ in range(2))
        exe = backends.compile(one("matmul", TensorType((n, n)), TensorType((n, n))), "llvm",
                               threads=THREADS)
        out = [np.empty((n, n), np.float32)]
        t_l = timeit(lambda: exe.call_into(out, a, b), 15)
        t_n = timeit(lambda: np.matmul(a, b), 15)
        fl = 2 * n ** 3
        print(f"{f'matmul {n}^3 (vs numpy BLAS)':36s} {fl / t_l / 1e9:10.1f} "
              f"{fl / t_n / 1e9:10.1f} {t_n / t_l:6.2f}x")
    # few rows of A (a recurrence's h @ W_hh^T per step), one thread: up to 144 rows the
    # micro-kernel reads a row-major B in place; 145 rows pack it as a large GEMM does
    small = ((144, 512, 512), (145, 512, 512)) + (() if quick else ((96, 784, 512),
                                                                  (32, 784, 512)))
    for m, k, n in small:
        a = r.standard_normal((m, k)).astype(np.float32)
        b = r.standard_normal((k, n)).astype(np.float32)
        exe = backends.compile(one("matmul", TensorType((m, k)), TensorType((k, n))), "llvm",
                               threads=1)
        out = [np.empty((m, n), np.float32)]
        t_l = timeit(lambda: exe.call_into(out, a, b), 300)
        t_n = timeit(lambda: np.matmul(a, b), 300)
        fl = 2 * m * k * n
        print(f"{f'matmul {m}x{k} @ {k}x{n}, 1 thread':36s} {fl / t_l / 1e9:10.1f} "
              f"{fl / t_n / 1e9:10.1f} {t_n / t_l:6.2f}x")
    try:
        import torch
        torch.set_num_threads(THREADS)
    except ImportError:
        return
    N, C, H, O = (16 if quick else 64), 32, 32, 32
    x = r.standard_normal((N, C, H, H)).astype(np.float32)
    w = r.standard_normal((O, C, 3, 3)).astype(np.float32)
    g = one("conv", TensorType(x.shape), TensorType(w.shape), stride=(1, 1),
            padding=(1, 1, 1, 1), dilation=(1, 1), groups=1)
    exe = backends.compile(g, "llvm", threads=THREADS)
    out = [np.empty((N, O, H, H), np.float32)]
    t_l = timeit(lambda: exe.call_into(out, x, w), 15)
    tx, tw = torch.from_numpy(x), torch.from_numpy(w)
    t_t = timeit(lambda: torch.nn.functional.conv2d(tx, tw, padding=1), 15)
    fl = 2 * N * O * H * H * C * 9
    print(f"{f'conv2d {N}x{C}x{H}x{H}, 3x3 (vs torch)':36s} {fl / t_l / 1e9:10.1f} "
          f"{fl / t_t / 1e9:10.1f} {t_t / t_l:6.2f}x")


def bench_compile() -> None:
    from irgraph.backends.llvm import clear_cache
    before = os.environ.get("IRGRAPH_CACHE_DIR")
    with tempfile.TemporaryDirectory() as d:
        os.environ["IRGRAPH_CACHE_DIR"] = d          # a fresh cache root (its llvm/ folder)
        try:
            clear_cache()
            t = time.perf_counter()
            our_step("cnn", "llvm", threads=THREADS)
            cold = time.perf_counter() - t
            t = time.perf_counter()
            our_step("cnn", "llvm", threads=THREADS)
            warm = time.perf_counter() - t
        finally:
            if before is None:
                os.environ.pop("IRGRAPH_CACHE_DIR", None)
            else:
                os.environ["IRGRAPH_CACHE_DIR"] = before
    print(f"\ncompile of (b)'s training step: cold {cold:.2f}s, cached {warm:.2f}s "
          f"(includes tracing and the pass pipeline)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, smaller sizes")
    args = ap.parse_args()
    print(f"machine: {machine()}; {THREADS} threads for llvm and torch")
    bench_kernels(args.quick)
    bench_models(args.quick)
    bench_compile()


if __name__ == "__main__":
    main()
