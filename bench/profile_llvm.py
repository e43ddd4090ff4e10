"""Where an LLVM training step spends its time, node by node (the ``profile=True`` option).

    python bench/profile_llvm.py [mlp|cnn|rnn] [--fuse] [--threads 2] [--steps 50] [--top 25]

Compiles bench_llvm.py's training step (forward, backward, Adam) with per-node cycle
counters, runs it, and prints the slowest nodes and the share of each op. A script, not a
test.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_llvm import batch, machine, our_step  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="cnn", choices=("mlp", "cnn", "rnn"))
    ap.add_argument("--fuse", action="store_true", help="add the fusion pass")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args()
    print(machine())
    opts = {"pipeline": ["default", "fuse"]} if a.fuse else {}
    step = our_step(a.model, "llvm", threads=a.threads, profile=True, **opts)
    x, y = batch(a.model)
    for _ in range(a.steps):
        step(x, y)
    exe = step.executable
    rows = exe.profile()
    total = sum(r["ms"] for r in rows)
    print(f"\n{a.model}: {total / a.steps:.2f} ms per step over {a.steps} steps, "
          f"{len(rows)} nodes\n")
    print(f"{'share':>6s} {'ms/step':>8s}  node")
    for r in rows[:a.top]:
        n = r["node"]
        types = ", ".join(str(v.type) for v in n.inputs)
        print(f"{r['share']:6.1%} {r['ms'] / a.steps:8.3f}  {n.op}({types})")
    print(f"\n{'share':>6s} {'nodes':>6s}  op")
    for op, k, share in exe.profile_by_op():
        print(f"{share:6.1%} {k:6d}  {op}")


if __name__ == "__main__":
    main()
