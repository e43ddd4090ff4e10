"""Every pass, property-tested on random graphs over the core ops (tests/random_graphs.py):
the reference backend gives the same results before and after, the result verifies, prints
and parses back, and the input graph is left unchanged."""
from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import irgraph.backends as backends
import irgraph.backends.llvm  # noqa: F401  (the backends register the passes they declare:
import irgraph.backends.triton  # noqa: F401  imported here, the list below is always whole)
import irgraph
from irgraph.interpreter import interpret
from irgraph.ops.debug import NonFiniteError
from irgraph.passes.fold_params import fold_params
from irgraph.passes.manager import PassManager, all_passes
from irgraph.passes.memory import plan_memory
from tests.random_graphs import random_args, random_graph
from tests.helpers import run_with_plan

# IRGRAPH_PASS_EXAMPLES=500 runs a deeper search (the suite keeps 40 to stay fast)
SETTINGS = settings(max_examples=int(os.environ.get("IRGRAPH_PASS_EXAMPLES", "40")),
                    deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# Every registered pass is property-tested below unless it is listed here with the reason
# and the place that tests it instead (test_every_pass_is_tested keeps the list honest).
_SCAN_ONLY = ("rewrites scan nodes only (random graphs hold none): tests/test_unroll.py, "
              "tests/test_scan_passes.py")
NOT_HERE = {
    "debug_nans": "may raise by design: test_debug_nans_agrees_or_names_a_non_finite_value",
    "unroll": _SCAN_ONLY, "unroll_short": _SCAN_ONLY, "bptt": _SCAN_ONLY,
    "merge_scans": _SCAN_ONLY, "save_states": _SCAN_ONLY,
}
GRAPH_PASSES = sorted(set(all_passes()) - set(NOT_HERE))


def test_every_pass_is_tested():
    """A pass registered in passes/manager.py is property-tested here or named in NOT_HERE
    (and NOT_HERE names only registered passes)."""
    assert set(NOT_HERE) <= set(all_passes()), sorted(set(NOT_HERE) - set(all_passes()))
    assert set(GRAPH_PASSES) | set(NOT_HERE) == set(all_passes())
    assert {"constant_fold", "algebraic", "cse", "dce", "simplify", "simplify_subgraphs",
            "strip_dead_state", "strip_training", "fold_bn", "fuse"} <= set(GRAPH_PASSES)


def run_reference(g, args):
    """What a caller sees: the outputs that are not state updates, then every argument
    buffer after the call (donated outputs are written into them)."""
    bufs = [a.copy() for a in args]
    with np.errstate(all="ignore"):
        outs = backends.compile(g, "reference")(*bufs)
    return [o for i, o in enumerate(outs) if i not in g.donations] + bufs


def assert_same(before, after):
    assert len(before) == len(after)
    for a, b in zip(before, after):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(b, a, rtol=2e-6, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("name", GRAPH_PASSES)
@SETTINGS
@given(g=random_graph())
def test_pass_preserves_results(name, g):
    text = str(g)
    args = random_args(g)
    out = PassManager([name]).run(g)          # verifies, checks the input is untouched
    assert str(g) == text
    assert irgraph.parse(str(out)) == out
    assert [v.type for v in out.arguments] == [v.type for v in g.arguments]
    assert_same(run_reference(g, args), run_reference(out, args))


@SETTINGS
@given(g=random_graph())
def test_full_pipelines_preserve_results(g):
    args = random_args(g, seed=1)
    expect = run_reference(g, args)
    for spec in ("default", "default, fuse", "fuse, simplify, fuse"):
        assert_same(expect, run_reference(PassManager(spec).run(g), args))


@SETTINGS
@given(g=random_graph())
def test_debug_nans_agrees_or_names_a_non_finite_value(g):
    """Instrumented: the same results when every value is finite; else NonFiniteError."""
    args = random_args(g, seed=2)
    with np.errstate(all="ignore"):
        env_finite = _all_finite(g, args)
    checked = PassManager(["debug_nans"]).run(g)
    if env_finite:
        assert_same(run_reference(g, args), run_reference(checked, args))
    else:
        with pytest.raises(NonFiniteError, match="first non-finite value"):
            run_reference(checked, args)


def _all_finite(g, args) -> bool:
    """Whether every float argument and node output of ``g`` is finite on ``args``."""
    probe = g.copy()
    probe.set_outputs([v for v in probe.values() if v.type.is_float])
    return all(np.all(np.isfinite(a)) for a in interpret(probe, args))


@SETTINGS
@given(g=random_graph())
def test_memory_plan_runs_correctly(g):
    """Execute with every value stored at its planned place (arena offsets, in place, donated
    buffers): results equal the reference, so no live value was overwritten."""
    for graph in (g, PassManager("simplify, fuse").run(g)):
        plan = plan_memory(graph)
        plan.check()
        args = random_args(graph, seed=3)
        with np.errstate(all="ignore"):
            want = interpret(graph, args)
        assert_same(want, run_with_plan(graph, plan, args)[0])


@SETTINGS
@given(g=random_graph())
def test_fold_params_preserves_results(g):
    args = random_args(g, seed=4)
    n = len(g.inputs)
    weights = {p.name: a for p, a in zip(g.params, args[n:])}
    folded, new_weights = fold_params(g, weights)
    new_args = args[:n] + [new_weights[p.name] for p in folded.params]
    with np.errstate(all="ignore"):
        assert_same(interpret(g, args), interpret(folded, new_args))


def test_an_output_that_is_an_updated_parameter_keeps_its_old_value():
    """Found by the property test above: after fold_bn the graph returns the parameter m
    itself while another output is donated into m's buffer; the caller must still get m's
    value from before the update (backends/base.py copies such outputs first)."""
    g = irgraph.Graph("bn")
    g.add_input("x", irgraph.TensorType((2, 1)))
    m = g.add_param("m", irgraph.TensorType((1,)))
    v = g.add_param("v", irgraph.TensorType((1,)))
    g.set_outputs([m, v])
    g.donations = {1: 1}                        # m <- v, while m itself is output 0
    m0, v0 = np.array([-1.0], np.float32), np.array([2.0], np.float32)
    bufs = [np.zeros((2, 1), np.float32), m0.copy(), v0.copy()]
    outs = backends.compile(g, "reference")(*bufs)
    np.testing.assert_array_equal(outs[0], m0)          # the value m had
    np.testing.assert_array_equal(bufs[1], v0)          # m's buffer now holds v
