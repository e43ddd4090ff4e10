"""Test set-up: Triton kernels run in the interpreter on the CPU unless a GPU is asked for."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_terminal_summary(terminalreporter):
    """The conformance suites' pass counts per backend (printed even under -q)."""
    import sys
    summary = sys.modules.get("tests.conformance.summary")
    if summary is not None and summary.COUNTS:
        terminalreporter.section("PyTorch conformance (OpInfo / ModuleInfo samples)")
        for line in summary.lines():
            terminalreporter.write_line(line)
