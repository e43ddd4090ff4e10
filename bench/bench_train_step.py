"""One compiled training step (forward + loss + gradients + optimizer update, one graph) per
backend and optimizer, beside torch's forward + backward + optimizer.step() on the same MLP;
prints median milliseconds per step and the ratio to torch, and names the machine.

    python bench/bench_train_step.py [--backends reference llvm] [--repeat 20]
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

import irgraph.frontend as fe  # noqa: E402
from irgraph.frontend import nn, optim  # noqa: E402
from irgraph.frontend.train import compile_train  # noqa: E402

BATCH, SIZES = 64, (256, 512, 512, 10)
OPTIMIZERS = {
    "sgd+momentum": (lambda: optim.SGD(lr=0.01, momentum=0.9, convention="torch"),
                     lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9)),
    "adam": (lambda: optim.Adam(lr=1e-3, convention="torch"),
             lambda p: torch.optim.Adam(p, lr=1e-3)),
    "rmsprop": (lambda: optim.RMSprop(lr=1e-3, convention="torch"),
                lambda p: torch.optim.RMSprop(p, lr=1e-3)),
}


def machine() -> str:
    return describe(f"torch {torch.__version__}")


def mlp() -> nn.Module:
    layers: list = []
    for i, (m, n) in enumerate(zip(SIZES, SIZES[1:])):
        layers.append(nn.Linear(m, n))
        if i < len(SIZES) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def torch_mlp(ours: nn.Module) -> torch.nn.Module:
    layers: list = []
    for layer in ours._modules.values():
        if isinstance(layer, nn.Linear):
            t = torch.nn.Linear(layer.in_features, layer.out_features)
            with torch.no_grad():
                t.weight.copy_(torch.from_numpy(layer.weight.data))
                t.bias.copy_(torch.from_numpy(layer.bias.data))
            layers.append(t)
        else:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def median_ms(fn, repeat: int) -> float:
    fn()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return 1e3 * statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backends", nargs="+", default=["reference", "llvm"])
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    print(f"machine: {machine()}")
    print(f"MLP {SIZES}, batch {BATCH}, float32; median ms per training step")
    r = np.random.default_rng(0)
    x = r.standard_normal((BATCH, SIZES[0])).astype(np.float32)
    y = r.integers(0, SIZES[-1], BATCH)
    print(f"{'optimizer':14s} {'backend':10s} {'ours ms':>9s} {'torch ms':>9s} {'ours/torch':>10s}")
    for name, (make, make_torch) in OPTIMIZERS.items():
        fe.manual_seed(0)
        model = mlp()
        tmodel = torch_mlp(model)
        topt = make_torch(tmodel.parameters())
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)

        def torch_step():
            topt.zero_grad()
            torch.nn.functional.cross_entropy(tmodel(tx), ty).backward()
            topt.step()
        t_ms = median_ms(torch_step, args.repeat)
        for backend in args.backends:
            fe.manual_seed(0)
            step = compile_train(mlp(), nn.CrossEntropyLoss(), make(),
                                 fe.TensorSpec(x.shape), fe.TensorSpec(y.shape, "int64"),
                                 backend=backend)
            ms = median_ms(lambda: step(x, y), args.repeat)
            print(f"{name:14s} {backend:10s} {ms:9.2f} {t_ms:9.2f} {ms / t_ms:10.2f}")


if __name__ == "__main__":
    main()
