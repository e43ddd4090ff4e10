"""Print the conformance table: per op and backend, how many of torch's samples agree.

    TRITON_INTERPRET=1 python -m tests.conformance.report [--backends reference,llvm,triton]
        [--ops NAME,...] [--modules]

Runs every sample (also those the CI suite thins out: harness.CI_STRIDE); a failing sample not
in the unsupported table is printed with its reason.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TRITON_INTERPRET", "1")


def main(argv=None) -> int:
    from tests.conformance import harness as H
    from tests.conformance import opinfo_map as M
    from tests.conformance import summary
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="reference,llvm")
    ap.add_argument("--ops", default=None, help="comma-separated OpInfo names (default: all)")
    ap.add_argument("--modules", action="store_true", help="the ModuleInfo suite as well")
    args = ap.parse_args(argv)
    backend_names = args.backends.split(",")
    ops = args.ops.split(",") if args.ops else sorted(M.OPS)
    t0 = time.perf_counter()
    failed = 0
    print(f"{'op':44s} {'dtype':8s} " + " ".join(f"{b:>16s}" for b in backend_names))
    for op in ops:
        entry = M.OPS[op]
        for dtype in ("float32", "float64"):
            res = H.check_op(op, entry.fn, entry.tol, dtype, backend_names, stride=1)
            cells, bad_lines = [], []
            for b in backend_names:
                agree, listed, bad, notes = H.judge(res[b], b,
                                                    lambda s, bk: M.unsupported(op, s, bk),
                                                    M.KNOWN)
                summary.record("opinfo", b, agree, listed, len(bad))
                cells.append(f"{agree}/{len(res[b])}" + (f" ({listed} listed)" if listed else ""))
                bad_lines += bad + notes
                failed += len(bad)
            print(f"{op:44s} {dtype:8s} " + " ".join(f"{c:>16s}" for c in cells), flush=True)
            for line in bad_lines[:10]:
                print("    " + line[:300])
    if args.modules:
        from tests.conformance import modules
        failed += modules.report(backend_names)
    print()
    for line in summary.lines():
        print(line)
    print(f"{time.perf_counter() - t0:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
