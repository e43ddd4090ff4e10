"""Host time per call of the LLVM backend: the Python work around the native call.

    python bench/bench_host.py [--calls 3000]

For a graph of one small node (4-element add), the median wall time of ``exe(...)`` and of
``exe.call_into(...)`` (the native work is a few nanoseconds); for the training steps of
``bench/peers.py`` (MLP, LeNet, RNN on one thread), the mean time of a step with its native
call replaced by nothing (what is left is validating, passing and donating some 30-60
arrays, the optimizer's hyperparameters, the loss), beside numpy's own cost of one tiny
ufunc call for scale. A script, not a test: nothing here asserts a speed.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import describe, median_of  # noqa: E402

import numpy as np  # noqa: E402


def median_us(fn, calls: int) -> float:
    return 1e6 * median_of(fn, calls, warmup=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=3000)
    args = ap.parse_args()
    import irgraph.backends as backends
    import irgraph.frontend as fe
    from irgraph import Graph, TensorType
    from irgraph.frontend import nn, optim
    import peers

    print(describe(f"numpy {np.__version__}"))
    g = Graph("add")
    xs = [g.add_input(f"x{i}", TensorType((4,))) for i in range(2)]
    g.set_outputs([g.op("add", *xs)])
    exe = backends.compile(g, "llvm", threads=1)
    z = np.zeros(4, np.float32)
    out = [np.empty(4, np.float32)]
    print(f"one 4-element add: exe(...) {median_us(lambda: exe(z, z), args.calls):.1f} us, "
          f"call_into {median_us(lambda: exe.call_into(out, z, z), args.calls):.1f} us, "
          f"numpy np.add {median_us(lambda: np.add(z, z, out=out[0]), args.calls):.1f} us "
          f"(medians)")
    for name in ("mlp", "lenet", "rnn"):
        fe.manual_seed(0)
        x, y = peers.batch(name)
        step = fe.compile_train(peers.ours_models()[name](), nn.CrossEntropyLoss(),
                                optim.Adam(lr=1e-3, convention="torch"),
                                fe.TensorSpec(x.shape), fe.TensorSpec(y.shape, "int64"),
                                backend="llvm", threads=1)
        ex = step.executable
        ex._call = lambda table: None           # the native step itself left out
        for _ in range(100):
            step(x, y)
        t = time.perf_counter_ns()
        for _ in range(args.calls):
            step(x, y)
        per = (time.perf_counter_ns() - t) / args.calls / 1e3
        print(f"{name} training step, host work: {per:.1f} us per step "
              f"({len(ex.graph.arguments)} arguments)")


if __name__ == "__main__":
    main()
