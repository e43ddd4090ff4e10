"""A convolutional autoencoder of the digits: strided convolutions down to 8 x 2x2 codes (32
numbers for 64 pixels),
transposed convolutions back up to 8x8 (chapter 14's undercomplete autoencoder).

    python examples/autoencoder.py [--epochs 30] [--backend llvm] [--quick]

Prints the held-out reconstruction error next to the error of always predicting the mean
training image (the autoencoder should be several times lower), and one digit drawn in
characters before and after.
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


class AutoEncoder(ig.nn.Module):
    def __init__(self):
        super().__init__()
        self.encode = ig.nn.Sequential(ig.nn.Conv2d(1, 16, 3, stride=2, padding=1), ig.nn.ReLU(),
                                       ig.nn.Conv2d(16, 8, 3, stride=2, padding=1), ig.nn.ReLU())
        self.decode = ig.nn.Sequential(ig.nn.ConvTranspose2d(8, 16, 2, stride=2), ig.nn.ReLU(),
                                       ig.nn.ConvTranspose2d(16, 1, 2, stride=2), ig.nn.Sigmoid())

    def forward(self, x):
        return self.decode(self.encode(x))


def draw(img: np.ndarray) -> list[str]:
    shades = " .:-=+*#%@"
    return ["".join(shades[min(9, int(v * 10))] * 2 for v in row) for row in img]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--backend", default="llvm", choices=["reference", "llvm", "triton"])
    ap.add_argument("--quick", action="store_true", help="8 epochs (CI)")
    args = ap.parse_args()
    epochs = 8 if args.quick else args.epochs
    images, _ = load_digits()
    x = (images.astype(np.float32) / 16)[:, None]
    tr, te = split(len(x), 0.2, seed=0)
    ig.manual_seed(0)
    model = AutoEncoder()
    step = ig.compile_train(model, ig.nn.MSELoss(), ig.optim.Adam(lr=0.01),
                            ig.TensorSpec((64, 1, 8, 8)), ig.TensorSpec((64, 1, 8, 8)),
                            backend=args.backend)
    hist = fit(step, DataLoader(x[tr], x[tr], batch_size=64, shuffle=True, drop_last=True),
               epochs, out=io.StringIO())
    recon = ig.compile(model, ig.TensorSpec((len(te), 1, 8, 8)), backend=args.backend)(x[te])
    err = float(((recon - x[te]) ** 2).mean())
    base = float(((x[tr].mean(0) - x[te]) ** 2).mean())
    print("training loss per epoch: " + " ".join(f"{v:.4f}" for v in hist.loss))
    print(f"held-out reconstruction MSE {err:.4f} vs {base:.4f} for the mean image "
          f"({base / err:.1f}x lower); codes are 8x2x2 = 32 numbers per 64-pixel digit")
    for a, b in zip(draw(x[te][0, 0]), draw(recon[0, 0])):
        print(f"  {a}   {b}")


if __name__ == "__main__":
    main()
