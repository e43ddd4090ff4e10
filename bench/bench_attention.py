"""Attention on LLVM: the composition (the (L, S) scores of each head written, softmaxed and
read back) vs the row-block region (backends/llvm/ops_attention.py: one block of query rows'
scores in cache at a time), and the normalize region's two passes (and, with the gradient,
the rows region of its backward) vs the composition of LayerNorm. Head dim 64, 4 heads, 2 threads, float32; best of ``--repeats`` alternating runs.

    python bench/bench_attention.py [--seqs 128 256 512 2048] [--heads 4] [--repeats 5]
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import best_of, describe, pin_threads  # noqa: E402

THREADS = 2
pin_threads(THREADS)

import numpy as np  # noqa: E402

import irgraph.backends as backends  # noqa: E402
import irgraph.frontend as fe  # noqa: E402
from irgraph.backends.llvm import ops_attention, ops_norm  # noqa: E402
from irgraph.frontend import F, nn  # noqa: E402


def alternating(exes, args, repeats: int) -> tuple[float, ...]:
    """Best seconds of each executable, their runs alternating (the machine may be shared,
    so both see the same load)."""
    best = [float("inf")] * len(exes)
    for _ in range(repeats):
        for i, e in enumerate(exes):
            best[i] = min(best[i], best_of(lambda e=e: e(*args), 1))
    return tuple(best)


def attention(seq: int, heads: int, d: int, causal: bool, repeats: int) -> tuple[float, float]:
    """(composition seconds, row-block seconds)."""
    r = np.random.default_rng(0)
    specs = [fe.TensorSpec((1, heads, seq, d))] * 3
    args = [r.standard_normal(s.shape).astype(np.float32) for s in specs]
    g = fe.trace(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
                 *specs)
    exes = []
    for mode in ("never", "always"):          # the composition, then the row blocks
        ops_attention.MODE = mode
        try:
            exes.append(backends.compile(g, "llvm", threads=THREADS, cache=False))
        finally:
            ops_attention.MODE = "auto"
    a, b = exes[0](*args), exes[1](*args)
    assert np.allclose(a, b, rtol=1e-4, atol=1e-5), np.abs(a - b).max()
    return alternating(exes, args, repeats)


def layer_norm(rows: int, width: int, repeats: int) -> tuple[float, float]:
    ln = nn.LayerNorm(width)
    g = fe.trace(ln, fe.TensorSpec((rows, width)))
    x = np.random.default_rng(0).standard_normal((rows, width)).astype(np.float32)
    args = [x, ln.weight.data, ln.bias.data]
    exes = []
    for regions in (False, True):              # the composition, then the two passes
        ops_norm.REGIONS = regions
        try:
            exes.append(backends.compile(g, "llvm", threads=THREADS, cache=False))
        finally:
            ops_norm.REGIONS = True
    return alternating(exes, args, repeats)


def layer_norm_grad(rows: int, width: int, repeats: int) -> tuple[float, float]:
    """Forward and backward (the gradients of x, weight and bias) of a LayerNorm."""
    ln = nn.LayerNorm(width)
    r = np.random.default_rng(0)
    x = r.standard_normal((rows, width)).astype(np.float32)
    gy = r.standard_normal((rows, width)).astype(np.float32)
    exes = []
    for regions in (False, True):
        ops_norm.REGIONS = regions
        try:
            exes.append(fe.grad(lambda a, g: (ln(a) * g).sum(), fe.TensorSpec(x.shape),
                                fe.TensorSpec(x.shape), model=ln, wrt=["a", "weight", "bias"],
                                backend="llvm", threads=THREADS, cache=False))
        finally:
            ops_norm.REGIONS = True
    return alternating(exes, [x, gy], repeats)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqs", type=int, nargs="+", default=[128, 256, 512, 2048])
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print(f"machine: {describe()}")
    print(f"attention, {args.heads} heads, head dim {args.d}, float32, {THREADS} threads "
          f"(by default row blocks when causal or under {ops_attention.MAX_KEYS} keys)")
    print(f"{'seq':>6} {'causal':>7} {'composed ms':>12} {'row-block ms':>13} {'speedup':>8}")
    for seq in args.seqs:
        for causal in (False, True):
            t0, t1 = attention(seq, args.heads, args.d, causal, args.repeats)
            print(f"{seq:>6} {str(causal):>7} {1e3 * t0:>12.2f} {1e3 * t1:>13.2f} "
                  f"{t0 / t1:>7.2f}x")
    print(f"\n{'layer norm':>16} {'composed ms':>12} {'two-pass ms':>12} {'speedup':>8}")
    for rows, width in ((2048, 256), (256, 4096)):
        t0, t1 = layer_norm(rows, width, args.repeats)
        print(f"{f'{rows}x{width}':>16} {1e3 * t0:>12.3f} {1e3 * t1:>12.3f} {t0 / t1:>7.2f}x")
    print(f"\n{'layer norm grad':>16} {'composed ms':>12} {'regions ms':>12} {'speedup':>8}")
    for rows, width in ((2048, 256), (256, 4096)):
        t0, t1 = layer_norm_grad(rows, width, args.repeats)
        print(f"{f'{rows}x{width}':>16} {1e3 * t0:>12.3f} {1e3 * t1:>12.3f} {t0 / t1:>7.2f}x")


if __name__ == "__main__":
    main()
