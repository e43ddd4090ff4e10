"""Registry-wide: every op's samples (tests/samples) run through the Triton backend, with its
kernels in Triton's interpreter on the CPU, and match the reference backend (the numpy
oracle). An op without a Triton kernel fails here unless NO_KERNEL states why."""
from __future__ import annotations

import numpy as np
import pytest

import irgraph.backends as backends
import irgraph
from irgraph.backends.triton import KERNELS
from irgraph import Graph, TensorType
from tests.samples import Case, all_samples

SAMPLES = all_samples()
CASES = [(op, i, c) for op, cases in sorted(SAMPLES.items()) for i, c in enumerate(cases)]
IDS = [f"{op}-{i}" for op, i, _ in CASES]
# op -> why the Triton backend does not run it (empty: every op has a kernel)
NO_KERNEL: dict[str, str] = {}


def build(op: str, case: Case) -> Graph:
    g = Graph(f"one_{op}")
    xs = [g.add_input(f"x{i}", TensorType.of(a)) for i, a in enumerate(case.inputs)]
    g.set_outputs(g.add_node(op, xs, case.attrs))
    return g


def tolerance(dtype) -> dict:
    return dict(rtol=1e-9, atol=1e-10) if dtype == np.float64 else dict(rtol=2e-5, atol=2e-6)


def test_every_op_has_a_triton_kernel_or_a_reason():
    missing = sorted(set(irgraph.all_ops()) - set(KERNELS) - set(NO_KERNEL))
    assert not missing, f"ops without a Triton kernel (backends/triton): {missing}"


def test_each_lowering_file_holds_one_op_family():
    """backends/triton/lower_<family>.py lowers the ops of irgraph/ops/<family>.py only (the
    family is the registry module that defines the op's type rule)."""
    from irgraph.backends.triton.table import GROUP_KERNELS
    wrong = {}
    for op, fn in KERNELS.items():
        module = (GROUP_KERNELS.get(op) or fn).__module__.rsplit(".", 1)[-1]
        family = irgraph.get_op(op)._type_rule.__module__
        if module.startswith("lower_") and family.startswith("irgraph.ops.") \
                and module != "lower_" + family.rsplit(".", 1)[-1]:
            wrong[op] = f"lowered in {module}.py, defined in {family}"
    assert not wrong, wrong


@pytest.mark.parametrize("op,i,case", CASES, ids=IDS)
def test_triton_matches_reference(op, i, case):
    if op in NO_KERNEL:
        with pytest.raises(backends.triton.UnsupportedOpError, match=op):
            backends.compile(build(op, case), "triton")
        return
    g = build(op, case)
    expect = backends.compile(g, "reference")(*case.inputs)
    got = backends.compile(g, "triton")(*case.inputs)
    assert len(got) == len(expect)
    for e, r in zip(expect, got):
        assert isinstance(r, np.ndarray) and r.shape == e.shape and r.dtype == e.dtype
        if e.dtype.kind == "f":
            np.testing.assert_allclose(r, e, **tolerance(e.dtype), equal_nan=True,
                                       err_msg=f"{op} sample {i}: {case.note}")
        else:
            np.testing.assert_array_equal(r, e, err_msg=f"{op} sample {i}: {case.note}")
