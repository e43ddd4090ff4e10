"""An MLP and a CNN on the 8x8 digits that ship with irgraph: training steps compiled for
LLVM, trained with irgraph.frontend.fit, evaluated on a held-out fifth (fixed seeded split).

    python examples/digits.py [--epochs 10] [--backend llvm] [--quick]

Prints each model's parameter count, the loss per epoch and the held-out accuracy (chance is
10%; expect over 95%).
"""
from __future__ import annotations

import argparse
import io
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import irgraph as ig  # noqa: E402
from irgraph.frontend.data import DataLoader, load_digits, split  # noqa: E402
from irgraph.frontend.fit import fit  # noqa: E402


def mlp() -> ig.nn.Module:
    return ig.nn.Sequential(ig.nn.Flatten(), ig.nn.Linear(64, 64), ig.nn.ReLU(),
                            ig.nn.Linear(64, 10))


def cnn() -> ig.nn.Module:
    return ig.nn.Sequential(ig.nn.Conv2d(1, 16, 3, padding=1), ig.nn.BatchNorm2d(16), ig.nn.ReLU(),
                            ig.nn.MaxPool2d(2), ig.nn.Conv2d(16, 32, 3, padding=1), ig.nn.ReLU(),
                            ig.nn.MaxPool2d(2), ig.nn.Flatten(), ig.nn.Linear(128, 10))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--backend", default="llvm", choices=["reference", "llvm", "triton"])
    ap.add_argument("--quick", action="store_true", help="3 epochs (CI)")
    args = ap.parse_args()
    epochs = 3 if args.quick else args.epochs
    images, labels = load_digits()
    x, y = (images.astype(np.float32) / 16)[:, None], labels.astype(np.int64)
    tr, te = split(len(x), 0.2, seed=0)
    for name, build in (("MLP", mlp), ("CNN", cnn)):
        ig.manual_seed(0)
        model = build()
        n_params = sum(p.data.size for _, p in model.named_parameters())
        step = ig.compile_train(model, ig.nn.CrossEntropyLoss(), ig.optim.Adam(lr=0.01),
                                ig.TensorSpec((64, 1, 8, 8)), ig.TensorSpec((64,), "int64"),
                                backend=args.backend)
        hist = fit(step, DataLoader(x[tr], y[tr], batch_size=64, shuffle=True, drop_last=True),
                   epochs, out=io.StringIO())
        model.eval()
        logits = ig.compile(model, ig.TensorSpec((len(te), 1, 8, 8)), backend=args.backend)(x[te])
        acc = float((logits.argmax(1) == y[te]).mean())
        print(f"{name}: {n_params:,} parameters; loss per epoch "
              + " ".join(f"{v:.3f}" for v in hist.loss)
              + f"; held-out accuracy {acc:.1%} ({len(te)} digits)")


if __name__ == "__main__":
    main()
