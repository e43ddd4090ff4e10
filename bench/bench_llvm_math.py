"""Throughput of the LLVM backend's inline float32 exp/log/tanh/sigmoid, beside numpy and
PyTorch (CPU), on one 2^20-element array.

    python bench/bench_llvm_math.py

A script, not a test: nothing here asserts a speed. Prints the machine and, per function,
ns per element and the ratios numpy/llvm and torch/llvm (above 1: llvm is faster).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import irgraph.backends as backends  # noqa: E402
from bench_llvm import machine, timeit  # noqa: E402
from irgraph import Graph, TensorType  # noqa: E402

N = 1 << 20


def unary(op: str) -> Graph:
    g = Graph(op)
    x = g.add_input("x", TensorType((N,)))
    g.set_outputs(g.add_node(op, [x], {}))
    return g


def main() -> None:
    import torch
    print(f"machine: {machine()}; {N} float32 elements")
    x = np.random.default_rng(0).uniform(-10, 10, N).astype(np.float32)
    pos = np.abs(x) + np.float32(1e-3)
    tx, tpos = torch.from_numpy(x), torch.from_numpy(pos)
    refs = {"exp": (np.exp, torch.exp), "log": (np.log, torch.log),
            "tanh": (np.tanh, torch.tanh),
            "sigmoid": (lambda a: 1 / (1 + np.exp(-a)), torch.sigmoid)}
    print(f"{'op':8s} {'threads':>7s} {'llvm ns/el':>11s} {'numpy/llvm':>11s} {'torch/llvm':>11s}")
    for op, (fn_np, fn_t) in refs.items():
        arg, targ = (pos, tpos) if op == "log" else (x, tx)
        t_np = timeit(lambda: fn_np(arg), 10)
        for threads in (1, 2):
            torch.set_num_threads(threads)
            exe = backends.compile(unary(op), "llvm", threads=threads)
            out = [np.empty(N, np.float32)]
            t_l = timeit(lambda: exe.call_into(out, arg), 10)
            t_t = timeit(lambda: fn_t(targ), 10)
            print(f"{op:8s} {threads:7d} {t_l / N * 1e9:11.2f} {t_np / t_l:11.2f} "
                  f"{t_t / t_l:11.2f}")


if __name__ == "__main__":
    main()
