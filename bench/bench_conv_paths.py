"""Where each convolution path wins (section 9.8): direct (im2col + matmul, the reference
kernel of ``conv``), FFT (``conv_fft``) and separable (d one-dimensional ``conv``s, for a
kernel that is an outer product), with torch.nn.functional.conv2d alongside.

Run: ``python bench/bench_conv_paths.py`` (about a minute). ``--winograd``: the LLVM
backend's Winograd F(4x4, 3x3) path against the path taken without it and torch, one
thread, on ResNet layers; ``--winograd-accuracy``: its float32 error. Otherwise prints, for growing kernels on a
fixed image, the best-of-N time of each path and its ratio to the direct path (< 1: faster),
and checks every path against the direct one. Nothing here is asserted on time.
"""
from __future__ import annotations

import os
import sys
import timeit

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from machine import best_of, describe  # noqa: E402  (bench/ is on sys.path when run)

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


def _llvm_conv(xs, ws, dtype="float32", winograd=None, threads=1):
    """An LLVM ``conv`` (3x3, padding 1): ``winograd`` True / False forces the Winograd
    path on / off (its cost model patched), None leaves the choice to the cost model."""
    from irgraph import Graph, TensorType
    import irgraph.backends as backends
    from irgraph.backends.llvm import conv_winograd
    g = Graph("conv")
    x = g.add_input("x", TensorType(xs, dtype))
    w = g.add_input("w", TensorType(ws, dtype))
    g.set_outputs(g.add_node("conv", [x, w], dict(stride=(1, 1), padding=(1, 1, 1, 1),
                                                  dilation=(1, 1), groups=1)))
    pays = conv_winograd.Winograd.pays
    if winograd is not None:
        conv_winograd.Winograd.pays = lambda self: winograd
    try:
        return backends.compile(g, "llvm", threads=threads, cache=False)
    finally:
        conv_winograd.Winograd.pays = pays


def _cpu_best(fn, repeat: int) -> float:
    """Best-of one-thread CPU time (time.thread_time) of fn(), after one warm-up call."""
    import time
    fn()
    return best_of(fn, repeat, clock=time.thread_time)


WINOGRAD_LAYERS = [     # (N, C, H=W, O): peers' ResNet block, bench_llvm's conv, ResNet-18
    (32, 64, 16, 64), (64, 32, 32, 32),
    (1, 64, 56, 64), (1, 128, 28, 128), (1, 256, 14, 256), (1, 512, 7, 512),
    (8, 64, 56, 64), (8, 128, 28, 128), (8, 256, 14, 256), (8, 512, 7, 512)]


def bench_winograd(layers=WINOGRAD_LAYERS) -> None:
    """LLVM 3x3 stride-1 convolutions on one thread, float32: the Winograd path, the path
    taken without it, and torch (one thread), in effective GFLOP/s (the direct product's
    2 N O C 9 H W flops over the time; one-thread CPU time, best of several, contestants
    interleaved per layer), and which one the cost model picks."""
    from irgraph.backends.llvm import conv_winograd
    from irgraph.backends.llvm.jit import host
    if torch is not None:
        torch.set_num_threads(1)
    print(f"{'layer N x C x HxW -> O':28s} {'winograd':>9s} {'other':>9s} {'torch':>9s} "
          f"{'wino/other':>10s} {'wino/torch':>10s}  chosen")
    for n, c, h, o in layers:
        xs, ws = (n, c, h, h), (o, c, 3, 3)
        r = np.random.default_rng(0)
        x = r.standard_normal(xs).astype(np.float32)
        w = r.standard_normal(ws).astype(np.float32)
        out = [np.empty((n, o, h, h), np.float32)]
        exes = {k: _llvm_conv(xs, ws, winograd=k) for k in (True, False)}
        reps = max(3, min(20, int(1e9 / (2 * n * o * c * 9 * h * h))))
        t = {k: [] for k in ("wino", "other", "torch")}
        for _ in range(3):                  # interleaved rounds, best of each
            t["wino"].append(_cpu_best(lambda: exes[True].call_into(out, x, w), reps))
            t["other"].append(_cpu_best(lambda: exes[False].call_into(out, x, w), reps))
            if torch is not None:
                tx, tw = torch.from_numpy(x), torch.from_numpy(w)
                t["torch"].append(_cpu_best(lambda: TF.conv2d(tx, tw, padding=1), reps))
        best = {k: min(v) if v else float("nan") for k, v in t.items()}
        fl = 2 * n * o * c * 9 * h * h
        chosen = conv_winograd.plan(xs, ws, dict(stride=(1, 1), padding=(1, 1, 1, 1),
                                                 dilation=(1, 1), groups=1), "float32",
                                    host()[2]) is not None
        print(f"{f'{n} x {c} x {h}x{h} -> {o}':28s} {fl / best['wino'] / 1e9:9.1f} "
              f"{fl / best['other'] / 1e9:9.1f} {fl / best['torch'] / 1e9:9.1f} "
              f"{best['other'] / best['wino']:9.2f}x {best['torch'] / best['wino']:9.2f}x  "
              f"{'winograd' if chosen else 'other'}")


def winograd_accuracy(channels=(64, 256, 512)) -> None:
    """max |error| of float32 Winograd, F(4x4, 3x3) and F(2x2, 3x3), and of the float32
    path without it against float64 (torch), absolute and over sqrt(9 C) max|x| max|w|:
    random normal x (4 x C x 12 x 12) and w (32 x C x 3 x 3)."""
    from irgraph.backends.llvm import conv_winograd
    print(f"{'C':>5s} {'form':>6s} {'wino abs':>10s} {'wino scaled':>12s} {'other abs':>10s} "
          f"{'other scaled':>12s} {'max |y|':>8s}")
    rule = conv_winograd.SMALL_CHUNK_TILES, conv_winograd.STREAMED_U_BYTES
    for c in channels:
        xs, ws = (4, c, 12, 12), (32, c, 3, 3)
        r = np.random.default_rng(c)
        x = r.standard_normal(xs).astype(np.float32)
        w = r.standard_normal(ws).astype(np.float32)
        want = TF.conv2d(torch.from_numpy(x.astype(np.float64)),
                         torch.from_numpy(w.astype(np.float64)), padding=1).numpy()
        scale = np.sqrt(9 * c) * np.abs(x).max() * np.abs(w).max()
        other = np.abs(_llvm_conv(xs, ws, winograd=False)(x, w)[0] - want).max()
        for m, forced in ((4, (0, rule[1])), (2, (1 << 30, -1))):
            conv_winograd.SMALL_CHUNK_TILES, conv_winograd.STREAMED_U_BYTES = forced
            try:
                err = np.abs(_llvm_conv(xs, ws, winograd=True)(x, w)[0] - want).max()
            finally:
                conv_winograd.SMALL_CHUNK_TILES, conv_winograd.STREAMED_U_BYTES = rule
            print(f"{c:5d} {f'F({m}x{m})':>6s} {err:10.2e} {err / scale:12.2e} {other:10.2e} "
                  f"{other / scale:12.2e} {np.abs(want).max():8.1f}")


if __name__ == "__main__":
    if "--winograd" in sys.argv or "--winograd-accuracy" in sys.argv:
        print(f"machine: {machine()}")
    if "--winograd" in sys.argv:
        bench_winograd()
    elif "--winograd-accuracy" in sys.argv:
        winograd_accuracy()
    else:
        bench()
