"""ONNX's backend node tests as the importer's conformance gate.

``onnx.backend.test.BackendTest`` drives ``frontend.onnx.backend`` (import + compile + run,
compared with ONNX's expected outputs at the test's own tolerances) over every node test of
the operators listed in SELECTED, on the reference and LLVM backends, and on the Triton
backend (TRITON_INTERPRET=1 on CPU) for TRITON_CASES, a fixed subset of the convolution,
pooling and batch-norm cases (the interpreter takes ~0.5 s per case; all of them pass, see
docs/onnx.md). A case is either run and must pass, or listed in EXCLUDED with its reason;
each excluded case must be refused at import with an ``OnnxImportError`` (no silent
approximation).
"""
from __future__ import annotations

import re
import unittest
import warnings

import pytest

from onnx.backend.test import BackendTest

from irgraph.frontend.onnx import OnnxImportError
from irgraph.frontend.onnx.backend import backend_for

OPERATORS = ("conv", "convtranspose", "maxpool", "averagepool", "lppool", "globalaveragepool",
             "globalmaxpool", "batchnorm", "rnn", "gru", "lstm", "gemm", "matmul", "softmax",
             "logsoftmax", "adam", "adagrad", "momentum", "nesterov_momentum",
             "add", "sub", "mul", "div", "pow", "relu", "tanh", "sigmoid", "exp", "log",
             "sqrt", "abs", "neg", "clip", "hardsigmoid",
             "reshape", "flatten", "transpose", "concat", "slice", "squeeze", "unsqueeze",
             "constant_pad", "edge_pad", "reflect_pad", "wrap_pad",
             "reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "identity", "constant")
# test_<operator> then _<variant> or the end; ReduceSumSquare is another operator
SELECTED = re.compile(r"^test_(%s)(_(?!square)|$)" % "|".join(OPERATORS))

# The one list of node tests of these operators that are not run, with the reason.
EXCLUDED = {
    r"_(u?int8|u?int16|uint32|uint64)(_|$)":
        "an element type the IR lacks (its dtypes: float32, float64, int32, int64, bool)",
    r"^test_identity_(sequence|opt)$":
        "sequence and optional values (the IR has tensors only)",
    r"^test_maxpool_with_argmax_":
        "MaxPool's Indices output (the IR's max_pool has no index output)",
}

TRITON_CASES = ("test_conv_with_strides_padding", "test_conv_with_autopad_same",
                "test_convtranspose", "test_convtranspose_pads", "test_maxpool_2d_pads",
                "test_maxpool_2d_ceil", "test_maxpool_2d_dilations",
                "test_averagepool_2d_pads_count_include_pad", "test_averagepool_2d_ceil",
                "test_averagepool_2d_dilations", "test_lppool_2d_default",
                "test_globalaveragepool", "test_globalmaxpool", "test_batchnorm_example",
                "test_batchnorm_epsilon_training_mode")


def _excluded(name: str) -> str | None:
    return next((why for pat, why in EXCLUDED.items() if re.search(pat, name)), None)


@pytest.fixture(scope="module")
def node_tests():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # ONNX's case generators warn on casts
        from onnx.backend.test.loader import load_node_model_tests
        cases = [c for c in load_node_model_tests() if SELECTED.match(c.name)]
    return cases


def _run(target: str, names: set[str]) -> tuple[int, list[str]]:
    """Run the BackendTest cases in ``names`` on ``target``; (passed, failure reports)."""
    runner = BackendTest(backend_for(target), __name__)
    for name in names:
        runner.include(f"^{re.escape(name)}_cpu$")
    suite = unittest.TestSuite()
    for case in runner.test_cases.values():
        for t in unittest.defaultTestLoader.loadTestsFromTestCase(case):
            if t._testMethodName.removesuffix("_cpu") in names:
                suite.addTest(t)
    result = unittest.TestResult()
    suite.run(result)
    bad = [f"{t._testMethodName}: {err.strip().splitlines()[-1]}"
           for t, err in result.failures + result.errors]
    bad += [f"{t._testMethodName}: skipped ({why})" for t, why in result.skipped]
    return result.testsRun - len(bad), bad


def _report(target: str, passed: int, total: int, excluded: dict[str, str]) -> None:
    print(f"\nONNX node tests on {target}: {passed}/{total} run cases passed; "
          f"{len(excluded)} excluded:")
    for name, why in sorted(excluded.items()):
        print(f"  {name}: {why}")


def _split(cases):
    run = {c.name for c in cases if not _excluded(c.name)}
    excluded = {c.name: _excluded(c.name) for c in cases if _excluded(c.name)}
    return run, excluded


def test_every_operator_has_node_tests(node_tests):
    names = {c.name for c in node_tests}
    for op in OPERATORS:
        assert any(n == f"test_{op}" or n.startswith(f"test_{op}_") for n in names), op
    assert len(names) > 300


def test_excluded_cases_are_refused_at_import(node_tests):
    from irgraph.frontend.onnx import import_onnx
    _, excluded = _split(node_tests)
    assert excluded
    for c in node_tests:
        if c.name in excluded:
            with pytest.raises(OnnxImportError):
                import_onnx(c.model)


@pytest.mark.parametrize("target", ["reference", "llvm"])
def test_node_tests(node_tests, target):
    run, excluded = _split(node_tests)
    passed, bad = _run(target, run)
    _report(target, passed, len(run), excluded)
    assert not bad, "\n".join(bad)
    assert passed == len(run)


def test_node_tests_triton(node_tests):
    names = {c.name for c in node_tests}
    assert set(TRITON_CASES) <= names
    passed, bad = _run("triton", set(TRITON_CASES))
    _report("triton", passed, len(TRITON_CASES), {})
    assert not bad, "\n".join(bad)
    assert passed == len(TRITON_CASES)
