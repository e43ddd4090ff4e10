"""A partial batch: one step compiled per batch size (``fit.per_shape``) against one step
padded and masked (``compile_train(..., dynamic_batch=True)``).

    python bench/bench_dynamic_batch.py --batch 32 --backend llvm

Prints the compiles and compile seconds each needs to serve every batch size 1..B, and the
median step time at a few sizes. The disk cache of the LLVM backend is off, so every
compile is a real one.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import irgraph.frontend as fe  # noqa: E402
from irgraph.frontend import nn, optim  # noqa: E402
from irgraph.frontend.fit import per_shape  # noqa: E402


def model(d_in: int, hidden: int, classes: int):
    fe.manual_seed(0)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                         nn.ReLU(), nn.Linear(hidden, classes))


def median_step(step, x, y, repeat: int) -> float:
    step(x, y)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        step(x, y)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--backend", default="llvm")
    ap.add_argument("--d-in", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=20)
    a = ap.parse_args()
    opts = {"cache": False} if a.backend == "llvm" else {}
    b, rng = a.batch, np.random.default_rng(0)
    xs = {n: rng.standard_normal((n, a.d_in)).astype(np.float32) for n in range(1, b + 1)}
    ys = {n: rng.integers(0, 10, n).astype(np.int64) for n in range(1, b + 1)}
    spec = (fe.TensorSpec((b, a.d_in)), fe.TensorSpec((b,), "int64"))

    t0 = time.perf_counter()
    dyn = fe.compile_train(model(a.d_in, a.hidden, 10), nn.CrossEntropyLoss(),
                           optim.SGD(lr=1e-3), *spec, backend=a.backend, dynamic_batch=True,
                           **opts)
    dyn_compile = time.perf_counter() - t0
    m, opt = model(a.d_in, a.hidden, 10), optim.SGD(lr=1e-3)
    fresh = per_shape(lambda n: fe.compile_train(
        m, nn.CrossEntropyLoss(), opt, fe.TensorSpec((n, a.d_in)), fe.TensorSpec((n,), "int64"),
        backend=a.backend, **opts), maxsize=b)
    t0 = time.perf_counter()
    for n in range(1, b + 1):
        fresh(xs[n], ys[n])
    fresh_compile = time.perf_counter() - t0

    print(f"MLP {a.d_in}-{a.hidden}-{a.hidden}-10, SGD, backend {a.backend}, batches 1..{b}")
    print(f"  per_shape:     {fresh.cache_info().misses} compiles, {fresh_compile:.2f} s "
          f"(compiles and one step each)")
    print(f"  dynamic_batch: 1 compile, {dyn_compile:.2f} s")
    print(f"  {'rows':>5} {'per_shape ms':>13} {'dynamic ms':>11}")
    for n in sorted({1, 2, b // 4, b // 2, b - 1, b} - {0}):
        tf = median_step(fresh, xs[n], ys[n], a.repeat)
        td = median_step(dyn, xs[n], ys[n], a.repeat)
        print(f"  {n:>5} {tf * 1e3:>13.3f} {td * 1e3:>11.3f}")


if __name__ == "__main__":
    main()
