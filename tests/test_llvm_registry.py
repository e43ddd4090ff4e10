"""Registry-wide: every op's samples (tests/samples) compiled by the LLVM backend (one module,
one native entry, 2 threads) match the reference backend (the numpy oracle). For a
differentiable op the compiled graph is its VJP graph (passes.autodiff.vjp: the forward outputs
and the cotangent of every float input, for fixed random output cotangents), so every op's
forward AND its gradient run natively. An op with no lowering fails here unless
backends/llvm's UNLOWERABLE states why.

Tolerances per op class (float32): exact for moves/selection/comparisons and integers;
rtol 2e-5 / atol 2e-6 for arithmetic and transcendental elementwise ops (libm vs numpy's
SIMD kernels differ by a few ulp); rtol 1e-4 / atol 1e-5 for reductions, matmul and
convolutions (a different summation order over up to a few hundred terms)."""
from __future__ import annotations

import numpy as np
import pytest

import irgraph.backends as backends
import irgraph
from irgraph.backends.llvm import LOWERINGS, UNLOWERABLE
from irgraph import Graph, IRError, TensorType
from irgraph.passes.autodiff import vjp
from tests.samples import Case, all_samples

SAMPLES = all_samples()
CASES = [(op, i, c) for op, cases in sorted(SAMPLES.items()) for i, c in enumerate(cases)]
IDS = [f"{op}-{i}" for op, i, _ in CASES]
ACCUMULATING = {"sum", "mean", "matmul", "softmax", "log_softmax", "nll_loss", "mse_loss",
                "global_norm", "conv", "conv_fft", "conv_input_grad", "conv_kernel_grad",
                "tiled_conv", "locally_connected", "batch_norm", "avg_pool", "avg_pool_grad",
                "adaptive_avg_pool", "adaptive_avg_pool_grad", "fold", "scan", "fused",
                "clip_by_norm"}


def build(op: str, case: Case) -> Graph:
    g = Graph(f"one_{op}")
    xs = [g.add_input(f"x{i}", TensorType.of(a)) for i, a in enumerate(case.inputs)]
    g.set_outputs(g.add_node(op, xs, case.attrs))
    return g


def with_gradient(op: str, case: Case) -> tuple[Graph, list[np.ndarray]]:
    """The sample's graph and arguments; for a differentiable op with float inputs and outputs,
    its VJP graph with seeded random cotangents appended to the arguments."""
    g = build(op, case)
    args = list(case.inputs)
    wrt = [v.name for i, v in enumerate(g.inputs)
           if i not in case.nondiff and v.type.is_float and v.type.size]
    of = [j for j, v in enumerate(g.outputs) if v.type.is_float and v.type.size]
    if not irgraph.get_op(op).differentiable or not wrt or not of:
        return g, args
    vg = vjp(g, wrt=wrt, of=of)
    rng = np.random.default_rng(len(IDS))
    cts = [rng.standard_normal(g.outputs[j].shape).astype(g.outputs[j].type.np_dtype)
           for j in of]
    return vg, args + cts


def tolerance(op: str, dtype) -> dict:
    if dtype == np.float64:
        return dict(rtol=1e-9, atol=1e-11)
    if op in ACCUMULATING:
        return dict(rtol=1e-4, atol=1e-5)
    return dict(rtol=2e-5, atol=2e-6)


def test_every_op_has_a_lowering_or_a_reason():
    missing = sorted(set(irgraph.all_ops()) - set(LOWERINGS) - set(UNLOWERABLE))
    assert not missing, f"ops without an LLVM lowering (backends/llvm): {missing}"
    assert all(len(why) > 20 for why in UNLOWERABLE.values())


def test_every_op_has_samples():
    assert not sorted(set(LOWERINGS) - set(SAMPLES))


@pytest.mark.parametrize("op,i,case", CASES, ids=IDS)
def test_llvm_matches_reference(op, i, case):
    g = build(op, case)
    if op in UNLOWERABLE:
        with pytest.raises(IRError, match=op):
            backends.compile(g, "llvm")
        return
    try:
        expect = backends.compile(g, "reference")(*case.inputs)
    except Exception as e:               # the reference rejects the data: so must we
        with pytest.raises(type(e) if isinstance(e, ValueError) else Exception):
            backends.compile(g, "llvm", threads=2)(*case.inputs)
        return
    g, args = with_gradient(op, case)
    expect = backends.compile(g, "reference")(*args)
    got = backends.compile(g, "llvm", threads=2)(*args)
    assert len(got) == len(expect)
    for e, r in zip(expect, got):
        assert isinstance(r, np.ndarray) and r.shape == e.shape and r.dtype == e.dtype
        if e.dtype.kind == "f":
            np.testing.assert_allclose(r, e, **tolerance(op, e.dtype), equal_nan=True,
                                       err_msg=f"{op} sample {i}: {case.note}")
        else:
            np.testing.assert_array_equal(r, e, err_msg=f"{op} sample {i}: {case.note}")
