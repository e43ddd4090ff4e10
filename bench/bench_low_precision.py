"""bfloat16 vs float32 on the LLVM backend, beside torch's bfloat16 CPU path: a 1024^3 GEMM
(and matmul_f32: bfloat16 operands, float32 result), 2-D convolutions (3x3, strided, 1x1)
and a LeNet-style training step (autocast="bf16"). Prints the machine and the detected
features (avx512bf16: the vdpbf16ps instruction; f16c: half conversions).

    python bench/bench_low_precision.py [--n 1024] [--reps 5] [--skip-lenet]
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import irgraph.backends as backends  # noqa: E402
from irgraph.backends.llvm import gemm_bf16, jit  # noqa: E402
from bench.machine import best_of, describe  # noqa: E402
from irgraph.frontend import TensorSpec, compile_train, manual_seed, nn, optim  # noqa: E402
from irgraph import Graph, TensorType  # noqa: E402


def best(fn, reps):
    """One warm-up call, then the best of ``reps``."""
    fn()
    return best_of(fn, reps)


def gemm(n, reps):
    rng = np.random.default_rng(0)
    a32, b32 = rng.standard_normal((n, n), np.float32), rng.standard_normal((n, n), np.float32)
    rows = []
    # bfloat16: vdpbf16ps where the host has AVX-512 BF16, and the widening fallback
    for dt, native in (("float32", True), ("bfloat16", True), ("bfloat16", False)):
        g = Graph("gemm")
        x, y = g.add_input("a", TensorType((n, n), dt)), g.add_input("b", TensorType((n, n), dt))
        g.set_outputs([g.op("matmul", x, y)])
        gemm_bf16.ENABLED = native
        try:
            exe = backends.compile(g, "llvm")
            kept = gemm_bf16.native(g.nodes[0])
        finally:
            gemm_bf16.ENABLED = True
        a, b = a32.astype(dt), b32.astype(dt)
        how = " vdpbf16ps" if kept else (" widened" if dt == "bfloat16" else "")
        rows.append((f"llvm {dt}{how}", best(lambda: exe(a, b), reps)))
    g = Graph("gemm_f32")
    x, y = g.add_input("a", TensorType((n, n), "bfloat16")), g.add_input(
        "b", TensorType((n, n), "bfloat16"))
    g.set_outputs([g.op("matmul_f32", x, y)])
    exe_f32 = backends.compile(g, "llvm")
    how = " vdpbf16ps" if gemm_bf16.native(g.nodes[0]) else " widened"
    a, b = a32.astype("bfloat16"), b32.astype("bfloat16")
    rows.append((f"llvm bf16->f32{how}", best(lambda: exe_f32(a, b), reps)))
    for dt in (torch.float32, torch.bfloat16):
        ta, tb = torch.from_numpy(a32).to(dt), torch.from_numpy(b32).to(dt)
        rows.append((f"torch {dt}", best(lambda: ta @ tb, reps)))
    for name, t in rows:
        print(f"  GEMM {n}^3 {name:24s} {t * 1e3:8.2f} ms  {2 * n ** 3 / t / 1e9:7.1f} GFLOP/s")


# (batch, in channels, out channels, size, kernel, stride, padding)
CONVS = [(8, 64, 64, 28, 3, 1, 1), (8, 64, 128, 28, 3, 2, 1), (8, 128, 128, 14, 1, 1, 0)]


def conv(reps):
    """Each convolution (forward; backward: its input and kernel gradients together) on LLVM
    in float32, in bfloat16 (vdpbf16ps, and widened), and in torch float32 and bfloat16 (its
    CPU bf16 convolution), side by side."""
    rng = np.random.default_rng(3)
    for n, c, o, hw, k, s, p in CONVS:
        out = (hw + 2 * p - k) // s + 1
        x32 = rng.standard_normal((n, c, hw, hw), np.float32)
        w32 = rng.standard_normal((o, c, k, k), np.float32) / np.sqrt(c * k * k)
        gy32 = rng.standard_normal((n, o, out, out), np.float32)
        a = dict(stride=(s, s), padding=(p,) * 4, dilation=(1, 1))
        for what in ("forward", "backward"):
            rows = []
            for dt, native in (("float32", True), ("bfloat16", True), ("bfloat16", False)):
                g = Graph("conv")
                x = g.add_input("x", TensorType(x32.shape, dt))
                w = g.add_input("w", TensorType(w32.shape, dt))
                if what == "forward":
                    g.set_outputs([g.op("conv", x, w, **a)])
                else:
                    gy = g.add_input("gy", TensorType(gy32.shape, dt))
                    g.set_outputs([g.op("conv_input_grad", w, gy, input_size=(hw, hw), **a),
                                   g.op("conv_kernel_grad", x, gy, kernel_size=(k, k), **a)])
                gemm_bf16.ENABLED = native
                try:
                    exe = backends.compile(g, "llvm")
                    kept = all(gemm_bf16.native(v.node) for v in g.outputs)
                finally:
                    gemm_bf16.ENABLED = True
                args = [v.astype(dt) for v in (x32, w32, gy32)[:len(g.inputs)]]
                how = " vdpbf16ps" if kept else (" widened" if dt == "bfloat16" else "")
                rows.append((f"llvm {dt}{how}", best(lambda: exe(*args), reps)))
            for dt in (torch.float32, torch.bfloat16):
                tx, tw, tg = (torch.from_numpy(v).to(dt) for v in (x32, w32, gy32))
                if what == "forward":
                    def run():
                        torch.nn.functional.conv2d(tx, tw, stride=s, padding=p)
                else:
                    def run():
                        torch.nn.grad.conv2d_input(tx.shape, tw, tg, stride=s, padding=p)
                        torch.nn.grad.conv2d_weight(tx, tw.shape, tg, stride=s, padding=p)
                rows.append((f"torch {dt}", best(run, reps)))
            flops = 2 * n * o * out * out * c * k * k * (1 if what == "forward" else 2)
            for name, t in rows:
                print(f"  conv {what:8s} {n}x{c}x{hw}^2 -> {o} k{k} s{s} {name:24s} "
                      f"{t * 1e3:8.2f} ms  {flops / t / 1e9:7.1f} GFLOP/s")


def lenet_step(reps, batch=64):
    x = np.random.default_rng(1).standard_normal((batch, 1, 28, 28)).astype(np.float32)
    y = np.random.default_rng(2).integers(0, 10, batch).astype(np.int64)

    def model():
        manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                             nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                             nn.Linear(84, 10))
    for ac in (None, "bf16"):
        m = model()
        step = compile_train(m, nn.CrossEntropyLoss(), optim.SGD(m.parameters(), lr=0.01),
                             TensorSpec(x.shape), TensorSpec(y.shape, "int64"),
                             backend="llvm", autocast=ac)
        print(f"  LeNet step llvm {ac or 'float32':10s} {best(lambda: step(x, y), reps) * 1e3:8.2f} ms")
    tm = torch.nn.Sequential(torch.nn.Conv2d(1, 6, 5, padding=2), torch.nn.ReLU(),
                             torch.nn.MaxPool2d(2), torch.nn.Conv2d(6, 16, 5), torch.nn.ReLU(),
                             torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(400, 120),
                             torch.nn.ReLU(), torch.nn.Linear(120, 84), torch.nn.ReLU(),
                             torch.nn.Linear(84, 10))
    topt = torch.optim.SGD(tm.parameters(), lr=0.01)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    for ac in (False, True):
        def tstep():
            topt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=ac):
                loss = torch.nn.functional.cross_entropy(tm(tx), ty)
            loss.backward()
            topt.step()
        print(f"  LeNet step torch {'bf16' if ac else 'float32':9s} {best(tstep, reps) * 1e3:8.2f} ms")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--skip-lenet", action="store_true")
    a = p.parse_args()
    _, cpu, features = jit.host()
    have = {f: f"+{f}" in features.split(",") for f in ("avx512bf16", "avx512f", "f16c", "avx2")}
    print(describe(f"torch {torch.__version__}", f"llvm cpu {cpu}"))
    print("  detected:", ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in have.items()))
    gemm(a.n, a.reps)
    conv(a.reps)
    if not a.skip_lenet:
        lenet_step(a.reps)


if __name__ == "__main__":
    main()
