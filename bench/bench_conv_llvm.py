"""Convolution GFLOP/s on the LLVM backend beside numpy's sgemm peak measured in the same run.

    python bench/bench_conv_llvm.py [--threads 2] [--repeats 30] [--only SUBSTRING] [--cpu]

Each row: one ``conv`` node (float32) of ResNet-18 at a 64x64 input (batch 1 and 8), the
bench_llvm.py conv2d 64x32x32x32 3x3 and peers.py's ResNet-ish 64-channel block layer;
GFLOP/s = 2 * N * O * P * C/g * prod(kernel) / best time, and its share of numpy's sgemm
GFLOP/s (512^3, the same thread count). ``--cpu`` (one thread only) times by the calling
thread's CPU time instead of the wall clock: on a machine shared with other processes, time
spent descheduled then does not count. A script, not a test: nothing here asserts a speed.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, pin_threads  # noqa: E402

# (name, N, C, H, O, k, stride, pad)
SHAPES = [
    ("r18 conv1 7x7/2", 1, 3, 64, 64, 7, 2, 3),
    ("r18 l1 3x3", 1, 64, 16, 64, 3, 1, 1),
    ("r18 l2 3x3/2", 1, 64, 16, 128, 3, 2, 1),
    ("r18 l2 1x1/2", 1, 64, 16, 128, 1, 2, 0),
    ("r18 l2 3x3", 1, 128, 8, 128, 3, 1, 1),
    ("r18 l3 3x3", 1, 256, 4, 256, 3, 1, 1),
    ("r18 l4 3x3/2", 1, 256, 4, 512, 3, 2, 1),
    ("r18 l4 3x3", 1, 512, 2, 512, 3, 1, 1),
    ("r18 l1 3x3 b8", 8, 64, 16, 64, 3, 1, 1),
    ("r18 l2 3x3 b8", 8, 128, 8, 128, 3, 1, 1),
    ("r18 l3 3x3 b8", 8, 256, 4, 256, 3, 1, 1),
    ("r18 l4 3x3 b8", 8, 512, 2, 512, 3, 1, 1),
    ("r18 conv1 7x7/2 b8", 8, 3, 64, 64, 7, 2, 3),
    ("r18 l2 3x3/2 b8", 8, 64, 16, 128, 3, 2, 1),
    ("r18 l3 3x3/2 b8", 8, 128, 8, 256, 3, 2, 1),
    ("r18 l4 3x3/2 b8", 8, 256, 4, 512, 3, 2, 1),
    ("r18 l3 1x1/2 b8", 8, 128, 8, 256, 1, 2, 0),
    ("conv2d 64x32x32x32", 64, 32, 32, 32, 3, 1, 1),
    ("resnet-ish b32 64x16x16", 32, 64, 16, 64, 3, 1, 1),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--only", default="")
    ap.add_argument("--cpu", action="store_true", help="thread CPU time (with --threads 1)")
    a = ap.parse_args()
    if a.cpu and a.threads != 1:
        ap.error("--cpu times the calling thread alone: use it with --threads 1")
    clock = time.thread_time if a.cpu else time.perf_counter

    def best_of(fn, repeats):
        best = float("inf")
        for _ in range(repeats):
            t0 = clock()
            fn()
            best = min(best, clock() - t0)
        return best
    pin_threads(a.threads)
    import numpy as np

    from irgraph import Graph, TensorType
    from irgraph import backends
    print(describe(f"numpy {np.__version__}", f"{a.threads} threads"),
          f"load average {os.getloadavg()[0]:.2f}")
    r = np.random.default_rng(0)
    n = 512
    ma, mb = (r.standard_normal((n, n)).astype(np.float32) for _ in range(2))
    peak = 2 * n ** 3 / best_of(lambda: ma @ mb, a.repeats) / 1e9
    print(f"numpy sgemm {n}^3: {peak:.1f} GFLOP/s\n")
    print(f"{'conv':26s} {'ms':>8s} {'GFLOP/s':>8s} {'of sgemm':>9s}")
    for name, N, C, H, O, k, s, p in SHAPES:
        if a.only not in name:
            continue
        x = r.standard_normal((N, C, H, H)).astype(np.float32)
        w = r.standard_normal((O, C, k, k)).astype(np.float32)
        g = Graph("conv")
        xv, wv = g.add_input("x", TensorType(x.shape)), g.add_input("w", TensorType(w.shape))
        ys = g.add_node("conv", [xv, wv], dict(stride=(s, s), padding=(p, p, p, p),
                                                dilation=(1, 1), groups=1))
        g.set_outputs(ys)
        y = ys[0]
        exe = backends.compile(g, "llvm", threads=a.threads)
        out = [np.empty(y.type.shape, np.float32)]
        exe.call_into(out, x, w)
        t = best_of(lambda: exe.call_into(out, x, w), a.repeats)
        P = y.type.shape[2] * y.type.shape[3]
        gf = 2 * N * O * P * C * k * k / t / 1e9
        print(f"{name:26s} {t * 1e3:8.3f} {gf:8.1f} {gf / peak:8.0%}", flush=True)
    peak2 = 2 * n ** 3 / best_of(lambda: ma @ mb, a.repeats) / 1e9
    print(f"\nnumpy sgemm {n}^3 again: {peak2:.1f} GFLOP/s; load average "
          f"{os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
