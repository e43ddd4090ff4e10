"""Newton, conjugate gradients and L-BFGS (section 8.6) on a multinomial logistic regression
of the digits (4x4-pooled pixels: 170 parameters, so Newton's Hessian is 170x170).

    python examples/second_order.py [--iterations 15] [--quick]

Each iteration is a full-batch step of the method; the loss is convex, so all three should
fall to about the same minimum, Newton in the fewest iterations. Prints the loss per
iteration and the held-out accuracy.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import irgraph as ig  # noqa: E402
from irgraph.frontend.data import load_digits, split  # noqa: E402

METHODS = {
    "Newton (alg. 8.8)": lambda: ig.optim.Newton(damping=1e-3),
    "CG, Polak-Ribiere (alg. 8.9)": lambda: ig.optim.ConjugateGradient(),
    "L-BFGS (8.6.3)": lambda: ig.optim.LBFGS(history_size=10),
}


def model() -> ig.nn.Module:
    ig.manual_seed(0)
    return ig.nn.Sequential(ig.nn.AvgPool2d(2), ig.nn.Flatten(), ig.nn.Linear(16, 10))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="5 iterations (CI)")
    args = ap.parse_args()
    iters = 5 if args.quick else args.iterations
    images, labels = load_digits()
    x, y = (images.astype(np.float32) / 16)[:, None], labels.astype(np.int64)
    tr, te = split(len(x), 0.2, seed=0)
    for name, make in METHODS.items():
        m = model()
        step = ig.compile_train(m, ig.nn.CrossEntropyLoss(), make(),
                                ig.TensorSpec((len(tr), 1, 8, 8)),
                                ig.TensorSpec((len(tr),), "int64"))
        losses = [step(x[tr], y[tr]) for _ in range(iters)]
        acc = float((ig.compile(m, ig.TensorSpec((len(te), 1, 8, 8)))(x[te]).argmax(1)
                     == y[te]).mean())
        print(f"{name:30s} loss " + " ".join(f"{v:.3f}" for v in losses)
              + f"  held-out accuracy {acc:.1%}")


if __name__ == "__main__":
    main()
