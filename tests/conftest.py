"""Test set-up: Triton kernels run in the interpreter on the CPU unless a GPU is asked for."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

# Property tests draw the same examples on every run (a red run is a real, reproducible
# failure, never a rare draw); HYPOTHESIS_PROFILE=explore searches afresh with new seeds.
from hypothesis import settings  # noqa: E402

settings.register_profile("repeatable", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

# ``pytest -m quick``: a fast subset for the inner loop (under a minute on two cores) that
# touches every package: the IR and registry, the passes, the reference, LLVM and Triton
# backends, and the frontend. Node-id prefixes: a file, or one test of a file.
QUICK = (
    "tests/test_registry_traits.py",            # irgraph: op traits and derived tables
    "tests/test_liveness.py",                   # irgraph: liveness
    "tests/test_ir_checks.py",                  # irgraph: builder, verifier, parser errors
    "tests/test_simplify.py",                   # passes
    "tests/test_pass_manager.py",               # passes: the manager
    "tests/test_pass_properties.py::test_every_pass_is_tested",
    "tests/test_memory.py",                     # passes: memory planning
    "tests/test_fusion.py",                     # passes: fusion
    "tests/test_smoke.py",                      # frontend -> passes -> reference, autodiff
    "tests/test_llvm.py::test_maximum_minimum_propagate_nan",   # LLVM backend
    "tests/test_triton_backend.py::test_numpy_in_numpy_out",  # Triton (interpreted)
    "tests/test_frontend.py::test_operator_matches_torch",   # frontend vs torch
    "tests/test_frontend.py::test_unary_methods_match_torch",
)


def pytest_collection_modifyitems(config, items):
    import pytest
    for item in items:
        if item.nodeid.startswith(QUICK):
            item.add_marker(pytest.mark.quick)


def pytest_terminal_summary(terminalreporter):
    """The conformance suites' pass counts per backend (printed even under -q)."""
    import sys
    summary = sys.modules.get("tests.conformance.summary")
    if summary is not None and summary.COUNTS:
        terminalreporter.section("PyTorch conformance (OpInfo / ModuleInfo samples)")
        for line in summary.lines():
            terminalreporter.write_line(line)
