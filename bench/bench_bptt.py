"""BPTT unrolled vs rolled: compile time, code size and step time for tau = 16, 64, 256.

The model is the network of eq. 10.8-10.14 (tanh RNN, affine output, summed NLL); a step is
one evaluation of the loss and all parameter gradients. "compile" is the BPTT pass (unroll
or not, autodiff, verification) plus the backend's compile. torch (the same network,
forward + backward, CPU) is printed beside as a yardstick.

    python bench/bench_bptt.py [--backend reference|llvm|triton] [--taus 16 64 256]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from machine import best_of, describe  # noqa: E402  (bench/ is on sys.path when run)

import irgraph.backends as backends  # noqa: E402
import irgraph.frontend as fe  # noqa: E402
from irgraph.frontend import nn  # noqa: E402
from irgraph.passes.unroll import bptt  # noqa: E402

BATCH, INPUT, HIDDEN, CLASSES = 8, 16, 32, 10


def machine() -> str:
    return describe(f"Python {platform.python_version()}")


class Loss(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.m = model

    def forward(self, x, y):
        return self.m.loss(x, y)


def node_count(g) -> int:
    return sum(1 + (node_count(n.attrs["body"]) if n.op == "scan" else 0) for n in g.nodes)



def torch_step(tau: int, x, y) -> float:
    import torch
    torch.set_num_threads(1)                # one thread, like the reference backend
    rnn, lin = torch.nn.RNN(INPUT, HIDDEN), torch.nn.Linear(HIDDEN, CLASSES)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).reshape(-1)

    def step():
        rnn.zero_grad()
        lin.zero_grad()
        h, _ = rnn(xt)
        torch.nn.functional.cross_entropy(lin(h).reshape(-1, CLASSES), yt,
                                          reduction="sum").backward()
    step()
    return best_of(step, 5)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="reference")
    ap.add_argument("--taus", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"machine: {machine()}; backend: {args.backend}; batch {BATCH}, input {INPUT}, "
          f"hidden {HIDDEN}, classes {CLASSES}, float32")
    print(f"{'tau':>5} {'form':>9} {'nodes':>7} {'compile s':>10} {'step ms':>9} "
          f"{'torch ms':>9} {'step/torch':>10}")
    fe.manual_seed(0)
    model = nn.RNNSequenceModel(INPUT, HIDDEN, CLASSES)
    params = dict(Loss(model).named_parameters())
    warm = fe.trace(Loss(model), fe.TensorSpec((2, BATCH, INPUT)), fe.TensorSpec((2, BATCH),
                                                                                "int64"))
    backends.compile(bptt(warm, mode="unrolled"), args.backend)     # imports, caches
    for tau in args.taus:
        r = np.random.default_rng(tau)
        x = r.standard_normal((tau, BATCH, INPUT)).astype(np.float32)
        y = r.integers(0, CLASSES, (tau, BATCH))
        g = fe.trace(Loss(model), fe.TensorSpec(x.shape), fe.TensorSpec(y.shape, "int64"))
        call = [x, y] + [params[p.name].data for p in g.params]
        ref = torch_step(tau, x, y)
        results = {}
        for form in ("unrolled", "rolled"):
            t0 = time.perf_counter()
            vg = bptt(g, mode=form)
            exe = backends.compile(vg, args.backend)
            compile_s = time.perf_counter() - t0
            results[form] = exe(*call)
            step = best_of(lambda: exe(*call), args.repeats)
            print(f"{tau:>5} {form:>9} {node_count(vg):>7} {compile_s:>10.3f} "
                  f"{1e3 * step:>9.2f} {1e3 * ref:>9.2f} {step / ref:>10.3g}")
        same = all(np.allclose(a, b, rtol=1e-4, atol=1e-5)
                   for a, b in zip(results["unrolled"], results["rolled"]))
        print(f"{'':>5} unrolled and rolled gradients agree: {same}")


if __name__ == "__main__":
    main()
