"""Pass counts of the conformance suites, per suite and backend; pytest prints them at the end
of a run (tests/conftest.py) and ``python -m tests.conformance.report`` prints them in full."""
from __future__ import annotations

import collections

# (suite, backend) -> Counter of "agree", "listed" (in the unsupported table), "failed"
COUNTS: dict[tuple[str, str], collections.Counter] = collections.defaultdict(
    collections.Counter)
NOTES: list[str] = []


def record(suite: str, backend: str, agree: int, listed: int, failed: int) -> None:
    c = COUNTS[(suite, backend)]
    c["agree"] += agree
    c["listed"] += listed
    c["failed"] += failed


def lines() -> list[str]:
    out = []
    for (suite, backend), c in sorted(COUNTS.items()):
        total = c["agree"] + c["listed"] + c["failed"]
        out.append(f"{suite:8s} {backend:10s} {c['agree']:6d} of {total:6d} samples agree with "
                   f"torch; {c['listed']} listed as unsupported; {c['failed']} failed")
    return out + NOTES
