"""Compile every kernel specialization the Triton tests launch, over the FULL GPU autotune
space, for sm_90 (H100) and sm_80 (A100), without a GPU; print registers, spills, stack and
shared memory per kernel and target, and every failure of the gate's rules.

    TRITON_INTERPRET=1 python bench/triton_aot_full.py [--jobs 2] [--json out.json]
        [pytest selection, default: tests/test_triton_*.py]

The launches are recorded while the selected tests run in Triton's interpreter (the
labels name the test that launched each kernel); then backends/triton/aot.py compiles each
distinct specialization with every configuration of ``kernels.conv.gpu_configs``. The CI gate
(tests/test_triton_aot.py) compiles one representative configuration of a smaller set of
calls. Exits 1 when any compile fails or a hot kernel spills (aot.ALLOWED aside). Expect tens
of minutes on two cores.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from irgraph.backends.triton import aot  # noqa: E402


class _Plugin:
    """Records the launches of every test, labelled by its node id."""

    def __init__(self, rec):
        self.rec = rec

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item):
        self.rec.label = item.nodeid
        yield


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", help="write every result as JSON here")
    ap.add_argument("tests", nargs="*")
    args = ap.parse_args()
    tests = args.tests or sorted(
        os.path.join("tests", f) for f in os.listdir(os.path.join(ROOT, "tests"))
        if f.startswith("test_triton_") and f != "test_triton_aot.py")
    os.chdir(ROOT)
    with aot.record() as rec:
        code = pytest.main(["-q", "-p", "no:cacheprovider", *tests], plugins=[_Plugin(rec)])
    if code not in (0, 1):
        print(f"pytest could not run the selection (exit {code})")
        return 2
    launches = list(rec.launches.values())
    print(f"{len(launches)} distinct launches recorded; compiling for "
          f"{', '.join(f'sm_{a}' for a in aot.TARGETS)} over every GPU tile", flush=True)
    results = aot.compile_launches(launches, all_tiles=True, jobs=args.jobs, timeout=6 * 3600)
    print(aot.table(results))
    bad = aot.failures(results)
    for line in bad:
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.__dict__ for r in results], f, indent=1)
    print(f"{len(results)} compiles, {len(bad)} failures")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
