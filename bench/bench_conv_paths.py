"""Where each convolution path wins (section 9.8): direct (im2col + matmul, the reference
kernel of ``conv``), FFT (``conv_fft``) and separable (d one-dimensional ``conv``s, for a
kernel that is an outer product), with torch.nn.functional.conv2d alongside.

Run: ``python bench/bench_conv_paths.py`` (about a minute). Prints, for growing kernels on a
fixed image, the best-of-N time of each path and its ratio to the direct path (< 1: faster),
and checks every path against the direct one. Nothing here is asserted on time.
"""
from __future__ import annotations

import os
import sys
import timeit

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from machine import describe  # noqa: E402  (bench/ is on sys.path when run)

import irgraph  # noqa: E402

try:
    import torch
    import torch.nn.functional as TF
except ImportError:          # the table still prints without the torch column
    torch = None


def _run(op: str, *xs, **attrs) -> np.ndarray:
    d = irgraph.get_op(op)
    return d.run(list(xs), d.check_attrs(attrs))[0]


def _attrs(k: int, groups: int = 1, axis: int | None = None) -> dict:
    """'same' padding for a k-wide kernel, on both axes or only ``axis``."""
    p = (k // 2, k - 1 - k // 2)
    pads = [p if axis in (None, i) else (0, 0) for i in range(2)]
    return dict(stride=(1, 1), padding=pads[0] + pads[1], dilation=(1, 1), groups=groups)


def _best(fn, repeat: int) -> float:
    return min(timeit.repeat(fn, number=1, repeat=repeat))


def machine() -> str:
    return describe(f"numpy {np.__version__}",
                    *([f"torch {torch.__version__}"] if torch else []))


def bench(n=2, c=8, o=8, size=64, kernels=(3, 5, 9, 15, 25, 41), repeat=5) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, size, size)).astype(np.float32)
    print(f"machine: {machine()}")
    print(f"input {x.shape} float32, {o} output channels, 'same' padding; best of {repeat}")
    head = f"{'k':>4} {'direct ms':>10} {'fft ms':>9} {'fft/dir':>8} {'sep ms':>9} " \
           f"{'sep/dir':>8}" + (f" {'torch ms':>9} {'torch/dir':>9}" if torch else "")
    print(head)
    for k in kernels:
        v0 = rng.standard_normal((o, c, k)).astype(np.float32)
        v1 = rng.standard_normal((o, k)).astype(np.float32)
        w = np.ascontiguousarray(v0[:, :, :, None] * v1[:, None, None, :])
        a = _attrs(k)
        w0, w1 = v0[:, :, :, None], v1[:, None, None, :]

        def direct():
            return _run("conv", x, w, **a)

        def fft():
            return _run("conv_fft", x, w, **a)

        def separable():
            y = _run("conv", x, w0, **_attrs(k, axis=0))
            return _run("conv", y, w1, **_attrs(k, o, axis=1))

        ref = direct()
        for path in (fft, separable):
            err = np.abs(path() - ref).max() / np.abs(ref).max()
            assert err < 1e-4, f"{path.__name__} differs from direct by {err:.2e} at k={k}"
        t = {f.__name__: _best(f, repeat) for f in (direct, fft, separable)}
        row = f"{k:>4} {t['direct'] * 1e3:>10.2f} {t['fft'] * 1e3:>9.2f} " \
              f"{t['fft'] / t['direct']:>8.2f} {t['separable'] * 1e3:>9.2f} " \
              f"{t['separable'] / t['direct']:>8.2f}"
        if torch is not None:
            xt, wt = torch.from_numpy(x), torch.from_numpy(w)
            pad = (k // 2, k - 1 - k // 2) * 2
            tt = _best(lambda: TF.conv2d(TF.pad(xt, pad), wt), repeat)
            row += f" {tt * 1e3:>9.2f} {tt / t['direct']:>9.2f}"
        print(row)


if __name__ == "__main__":
    bench()
