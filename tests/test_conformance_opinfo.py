"""PyTorch conformance on torch's own per-op sample inputs (OpInfo, common_methods_invocations).

Every sample of every OpInfo entry the frontend implements (tests/conformance/opinfo_map.py),
float32 and float64, forward outputs and gradients (vjp with a random cotangent) against torch
and torch.autograd, on the reference and LLVM backends; a few samples of each op on Triton
(interpreter). Samples the frontend does not take are listed in ONE table with the reason
(``opinfo_map.UNSUPPORTED``); any other failure fails. Counts: the end of the pytest run, or
``python -m tests.conformance.report``.
"""
import pytest

from irgraph.backends.triton import KERNELS
from tests.conformance import harness as H
from tests.conformance import opinfo_map as M
from tests.conformance import summary

CPU_BACKENDS = ("reference", "llvm")
TRITON_SAMPLES = 1          # per op, float32: the interpreter runs a kernel at Python speed


def _check(op: str, dtype: str, backends, limit=None):
    entry = M.OPS[op]
    results = H.check_op(op, entry.fn, entry.tol, dtype, backends, limit)
    problems = []
    for backend, pairs in results.items():
        agree, listed, bad, notes = H.judge(pairs, backend,
                                            lambda s, b: M.unsupported(op, s, b), M.KNOWN)
        summary.record("opinfo", backend, agree, listed, len(bad))
        summary.NOTES.extend(f"opinfo {op} {dtype}: {n}" for n in notes)
        problems += bad
    assert not problems, f"{op} ({dtype}): {len(problems)} samples disagree with torch:\n" + \
        "\n".join(problems[:20])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("op", sorted(M.OPS))
def test_opinfo_samples_agree_with_torch_on_reference_and_llvm(op, dtype):
    _check(op, dtype, CPU_BACKENDS)


def _triton_ready(op: str) -> bool:
    entry = M.OPS[op]
    group = H.samples(op, "float32")[:TRITON_SAMPLES]
    try:
        return H.graph_ops(op, entry.fn, group) <= set(KERNELS)
    except Exception:   # noqa: BLE001 -- a sample the frontend refuses: judged by the CPU test
        return False


TRITON_OPS = sorted(M.OPS)


@pytest.mark.parametrize("op", TRITON_OPS)
def test_opinfo_samples_agree_with_torch_on_triton(op):
    if not _triton_ready(op):
        summary.NOTES.append(f"opinfo {op}: not run on triton (an op without a Triton kernel)")
        return
    _check(op, "float32", ("triton",), TRITON_SAMPLES)


def test_the_unsupported_table_names_only_mapped_ops():
    assert not {u.op for u in M.UNSUPPORTED} - set(M.OPS)
