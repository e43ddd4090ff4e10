"""Data-parallel training throughput: examples per second with 1 and 2 processes.

    python bench/bench_dp.py [--steps N] [--backend llvm|reference]

The LeNet-style CNN with batch norm of bench/bench_llvm.py (1x28x28, Adam), global batch 64:
one process on 64, two processes on 32 each (gloo over loopback, frontend.distributed),
each process's LLVM code on one thread. Prints the machine, examples per second (best of
3 timed runs of N steps), the bytes all-reduced per step and where one step's time goes
(gradient graph, averaging, update graph) on rank 0. A script, not a test.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_llvm import ours  # noqa: E402  (bench/ is on sys.path when run)
from machine import describe  # noqa: E402

import irgraph.frontend as fe  # noqa: E402
from irgraph.frontend import distributed as D  # noqa: E402
from irgraph.frontend import nn, optim  # noqa: E402

GLOBAL_BATCH = 64


def data(steps: int):
    r = np.random.default_rng(1)
    return [(r.standard_normal((GLOBAL_BATCH, 1, 28, 28)).astype(np.float32),
             r.integers(0, 10, GLOBAL_BATCH).astype(np.int64)) for _ in range(steps)]


def worker(comm, steps: int, backend: str) -> dict:
    n = GLOBAL_BATCH // comm.world_size
    opts = {"threads": 1} if backend == "llvm" else {}
    step = D.compile_data_parallel(ours("cnn"), nn.CrossEntropyLoss(), optim.Adam(lr=1e-3),
                                   fe.TensorSpec((n, 1, 28, 28)), fe.TensorSpec((n,), "int64"),
                                   comm=comm, backend=backend, check_every=0, **opts)
    batches = [D.shard(b, comm.rank, comm.world_size) for b in data(steps)]
    step(*batches[0])                                   # warm-up
    best = float("inf")
    for _ in range(3):
        for k in step.timings:
            step.timings[k] = 0.0
        comm.barrier()
        t = time.perf_counter()
        for b in batches:
            step(*b)
        comm.barrier()
        elapsed = time.perf_counter() - t
        if elapsed < best:
            best, split = elapsed, {k: v / steps for k, v in step.timings.items()}
    step.check_consistency()
    return {"examples_per_s": steps * GLOBAL_BATCH / best, "split": split,
            "bytes": sum(step.bucket_sizes), "buckets": len(step.bucket_sizes)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--backend", default="llvm")
    a = ap.parse_args()
    print(describe(f"numpy {np.__version__}"))
    print(f"LeNet CNN + batch norm, Adam, global batch {GLOBAL_BATCH}, backend {a.backend} "
          f"(1 thread per process), gloo on loopback")
    base = None
    for p in (1, 2):
        r = D.launch(worker, p, a.steps, a.backend, timeout_s=600)[0]
        base = base or r["examples_per_s"]
        s = r["split"]
        print(f"{p} process(es): {r['examples_per_s']:8.1f} examples/s "
              f"(x{r['examples_per_s'] / base:.2f}); per step on rank 0: gradient "
              f"{1e3 * s['gradient']:.1f} ms, averaging {1e3 * s['all_reduce']:.2f} ms, "
              f"update {1e3 * s['update']:.2f} ms; all-reduce {r['bytes']} bytes in "
              f"{r['buckets']} bucket(s)")


if __name__ == "__main__":
    main()
