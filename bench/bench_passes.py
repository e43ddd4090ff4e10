"""The optimizing pipeline on a small CNN with batch norm and a deep MLP: time per pass, what
each pipeline leaves (nodes, bytes moved by the cost model, memory-plan arena), and the
forward time of each compiled form on each backend that compiles it, with torch beside.

    python bench/bench_passes.py [--backends reference llvm triton] [--repeat 20]

Nothing here is asserted; the numbers name the machine they ran on.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from machine import describe  # noqa: E402  (bench/ is on sys.path when run)

import irgraph.backends as backends  # noqa: E402
import irgraph.frontend as fe  # noqa: E402
from irgraph.frontend import nn  # noqa: E402
from irgraph.passes.fold_params import fold_params  # noqa: E402
from irgraph.passes.manager import PassManager  # noqa: E402
from irgraph.passes.memory import plan_memory  # noqa: E402

BATCH = 16


def machine() -> str:
    return describe()


def cnn() -> nn.Module:
    fe.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 10)).eval()


def mlp() -> nn.Module:
    fe.manual_seed(0)
    layers = []
    for _ in range(12):
        layers += [nn.Linear(128, 128), nn.Tanh()]
    return nn.Sequential(*layers)


def traffic(g) -> tuple[int, int]:
    flops = moved = 0
    for n in g.nodes:
        c = n.opdef.cost([v.type for v in n.inputs], [v.type for v in n.outputs], n.attrs)
        flops, moved = flops + c.flops, moved + c.bytes
    return flops, moved


def best_of(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def torch_time(model_name: str, x: np.ndarray, repeat: int) -> float | None:
    try:
        import torch
    except ImportError:
        return None
    T = torch.nn
    if model_name == "cnn":
        tm = T.Sequential(T.Conv2d(3, 16, 3, padding=1), T.BatchNorm2d(16), T.ReLU(),
                          T.MaxPool2d(2), T.Conv2d(16, 32, 3, padding=1), T.BatchNorm2d(32),
                          T.ReLU(), T.MaxPool2d(2), T.Flatten(), T.Linear(512, 10)).eval()
    else:
        tm = T.Sequential(*[m for _ in range(12) for m in (T.Linear(128, 128), T.Tanh())])
    xt = torch.tensor(x)
    with torch.no_grad():
        return best_of(lambda: tm(xt), repeat)


def bench_model(name: str, model: nn.Module, shape, backend_names, repeat: int) -> None:
    spec = fe.TensorSpec(shape)
    g = fe.trace(model, spec)
    weights = {n: p.data for n, p in model.named_parameters(buffers=True)}
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    print(f"\n== {name}: input {shape}")
    pm = PassManager("default, fuse", kind="inference")
    fused = pm.run(g)
    print(pm.report())
    simplified = PassManager("default").run(g)
    frozen, frozen_w = fold_params(simplified, weights)
    forms = {"traced": (g, weights), "default": (simplified, weights),
             "default+fold_params": (frozen, frozen_w), "default+fuse": (fused, weights)}
    print(f"{'form':<22} {'nodes':>6} {'MFLOP':>8} {'MB moved':>9} {'arena KB':>9} "
          f"{'naive KB':>9}")
    for form, (graph, _) in forms.items():
        flops, moved = traffic(graph)
        plan = plan_memory(graph)
        print(f"{form:<22} {len(graph.nodes):>6} {flops / 1e6:>8.2f} {moved / 1e6:>9.2f} "
              f"{plan.arena_bytes / 1024:>9.1f} {plan.naive_bytes / 1024:>9.1f}")
    tt = torch_time(name, x, repeat)
    print(f"forward time, best of {repeat} (ratio to the traced graph on the same backend); "
          f"torch CPU: {tt * 1e3:.3f} ms" if tt else "torch: n/a")
    for b in backend_names:
        base = None
        for form, (graph, w) in forms.items():
            try:
                exe = backends.compile(graph, b)
                args = [x] + [w[p.name] for p in graph.params]
                t = best_of(lambda: exe(*args), repeat)
            except Exception as e:          # a backend that cannot compile this form
                print(f"  {b:<10} {form:<22} n/a ({type(e).__name__}: {str(e)[:60]})")
                continue
            base = base or t
            print(f"  {b:<10} {form:<22} {t * 1e3:>9.3f} ms  x{t / base:.2f}"
                  + (f"  (torch x{t / tt:.1f})" if tt else ""))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backends", nargs="+", default=["reference"])
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    bench_model("cnn", cnn(), (BATCH, 3, 16, 16), args.backends, args.repeat)
    bench_model("mlp", mlp(), (BATCH, 128), args.backends, args.repeat)


if __name__ == "__main__":
    main()
