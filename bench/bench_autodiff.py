"""Autodiff cost: transform time, gradient graph size, and the time of one loss + all parameter
gradients (MLP with cross-entropy) per backend, with torch's forward + backward beside it;
then the Hessian graph's build time and size as n grows.

    python bench/bench_autodiff.py [--backends reference llvm] [--repeat 20]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from machine import describe  # noqa: E402  (bench/ is on sys.path when run)

import irgraph.backends as backends  # noqa: E402
from irgraph import Graph, TensorType  # noqa: E402
from irgraph.passes.autodiff import hessian, value_and_grad  # noqa: E402

BATCH, SIZES = 64, (256, 512, 512, 10)


def machine() -> str:
    return describe(f"torch {torch.__version__}")


def mlp_graph() -> Graph:
    g = Graph("mlp")
    h = g.add_input("x", TensorType((BATCH, SIZES[0])))
    y = g.add_input("y", TensorType((BATCH,), "int64"))
    for i, (m, n) in enumerate(zip(SIZES, SIZES[1:])):
        w = g.add_param(f"w{i}", TensorType((m, n)))
        b = g.add_param(f"b{i}", TensorType((n,)))
        h = g.op("add", g.op("matmul", h, w), b)
        if i < len(SIZES) - 2:
            h = g.op("relu", h)
    g.set_outputs([g.op("nll_loss", g.op("log_softmax", h, axis=1), y)])
    return g


def median_time(fn, repeat: int) -> float:
    fn()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backends", nargs="*", default=["reference", "llvm"])
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    rng = np.random.default_rng(0)
    g = mlp_graph()
    t = time.perf_counter()
    vg = value_and_grad(g)
    print(f"MLP {SIZES}, batch {BATCH}: transform {1e3 * (time.perf_counter() - t):.1f} ms, "
          f"{len(g.nodes)} forward nodes -> {len(vg.nodes)} nodes with gradients")
    x = rng.standard_normal((BATCH, SIZES[0])).astype(np.float32)
    y = rng.integers(0, SIZES[-1], BATCH)
    ws = [rng.standard_normal(p.shape).astype(np.float32) * 0.05 for p in g.params]

    tw = [torch.tensor(w, requires_grad=True) for w in ws]
    tx, ty = torch.tensor(x), torch.tensor(y)

    def torch_step():
        h = tx
        for i in range(0, len(tw), 2):
            h = h @ tw[i] + tw[i + 1]
            if i < len(tw) - 2:
                h = torch.relu(h)
        loss = torch.nn.functional.cross_entropy(h, ty)
        return torch.autograd.grad(loss, tw)
    t_torch = median_time(torch_step, args.repeat)
    print(f"  torch forward+backward: {1e3 * t_torch:8.3f} ms")
    for name in args.backends:
        exe = backends.compile(vg, name)
        t_b = median_time(lambda: exe(x, y, *ws), args.repeat)
        print(f"  {name:>9} loss+grads:  {1e3 * t_b:8.3f} ms  ({t_b / t_torch:5.2f}x torch)")

    print("Hessian graph of mean(tanh(x W + b)^2), W: (k, k):")
    for k in (4, 8, 12):
        h = Graph("h")
        xv = h.add_input("x", TensorType((16, k), "float64"))
        w = h.add_param("w", TensorType((k, k), "float64"))
        b = h.add_param("b", TensorType((k,), "float64"))
        out = h.op("tanh", h.op("add", h.op("matmul", xv, w), b))
        h.set_outputs([h.op("mean", h.op("square", out))])
        t = time.perf_counter()
        hg = hessian(h, max_size=k * k + k)
        print(f"  n = {k * k + k:4d}: build {time.perf_counter() - t:6.2f} s, "
              f"{len(hg.nodes)} nodes")


if __name__ == "__main__":
    main()
