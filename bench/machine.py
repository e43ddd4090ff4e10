"""The machine a benchmark ran on, named the same way by every script in bench/."""
from __future__ import annotations

import os
import platform
import time


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or what platform knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(*extra: str) -> str:
    """``"<cpu>, <n> logical CPUs, <OS>"`` followed by ``extra`` (library versions...)."""
    return ", ".join([cpu_model(), f"{os.cpu_count()} logical CPUs", platform.system(), *extra])


def pin_threads(n: int) -> None:
    """Every BLAS/OpenMP pool of this process (numpy's too) to ``n`` threads: call before
    numpy or torch is imported."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


def best_of(fn, repeats: int, clock=time.perf_counter) -> float:
    """The least disturbed of ``repeats`` timed calls of ``fn`` (seconds): the machine may be
    shared. ``clock=time.thread_time``: the calling thread's CPU time (time spent
    descheduled does not count; for one-thread runs)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return best


def median_of(fn, repeats: int, warmup: int = 1, clock=time.perf_counter) -> float:
    """The median of ``repeats`` timed calls of ``fn`` (seconds), after ``warmup`` untimed."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        ts.append(clock() - t0)
    ts.sort()
    return ts[len(ts) // 2]
