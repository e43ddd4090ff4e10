"""Chapter 8's optimizers side by side: one MLP, one data set, one compiled training step each.

    python examples/train_optimizers.py [--backend llvm] [--steps 200]

Prints the loss after every 50 steps and the final training accuracy for SGD (eq. 8.14's
linear decay), momentum, Nesterov, AdaGrad, RMSProp (+ Nesterov), Adam and L-BFGS, all
from the same initial weights (Glorot initialization, eq. 8.23).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import irgraph as ig  # noqa: E402

OPTIMIZERS = {
    "SGD, linear decay": lambda: ig.optim.SGD(lr=ig.optim.LinearDecay(0.5, 0.005, 150)),
    "momentum (8.2)": lambda: ig.optim.SGD(lr=0.05, momentum=0.9),
    "Nesterov (8.3)": lambda: ig.optim.SGD(lr=0.05, momentum=0.9, nesterov=True),
    "AdaGrad (8.4)": lambda: ig.optim.AdaGrad(lr=0.1),
    "RMSProp (8.5)": lambda: ig.optim.RMSprop(lr=0.01, alpha=0.9),
    "RMSProp+Nesterov (8.6)": lambda: ig.optim.RMSprop(lr=0.01, alpha=0.9, momentum=0.5,
                                                    nesterov=True),
    "Adam (8.7)": lambda: ig.optim.Adam(lr=0.02),
    "L-BFGS (8.6.3)": lambda: ig.optim.LBFGS(history_size=10),
}


def two_spirals(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    r = np.random.default_rng(seed)
    t = r.uniform(0.5, 3.0, n)
    y = r.integers(0, 2, n)
    angle = t * 2.0 + np.pi * y
    x = np.stack([t * np.cos(angle), t * np.sin(angle)], 1) + 0.1 * r.standard_normal((n, 2))
    return x.astype(np.float32), y.astype(np.int64)


def model() -> ig.nn.Module:
    ig.manual_seed(0)
    m = ig.nn.Sequential(ig.nn.Linear(2, 32), ig.nn.Tanh(), ig.nn.Linear(32, 32), ig.nn.Tanh(),
                         ig.nn.Linear(32, 2))
    for layer in (m[0], m[2], m[4]):
        ig.init.xavier_uniform_(layer.weight, gain=ig.init.calculate_gain("tanh"))
        ig.init.zeros_(layer.bias)
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backend", default="reference")
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    x, y = two_spirals(128)
    for name, make in OPTIMIZERS.items():
        net = model()
        step = ig.compile_train(net, ig.nn.CrossEntropyLoss(), make(), ig.TensorSpec(x.shape),
                                ig.TensorSpec(y.shape, "int64"), backend=args.backend)
        steps = args.steps if "BFGS" not in name else args.steps // 4
        losses = [step(x, y) for _ in range(steps)]
        logits = ig.compile(net.eval(), ig.TensorSpec(x.shape), backend=args.backend)(x)
        acc = float(np.mean(logits.argmax(1) == y))
        curve = " ".join(f"{v:.3f}" for v in losses[::max(steps // 4, 1)])
        print(f"{name:24s} loss {curve} -> {losses[-1]:.4f}   accuracy {acc:.2f}")


if __name__ == "__main__":
    main()
