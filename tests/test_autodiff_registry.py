"""Registry-wide gradient check: every differentiable op, every sample, VJP vs float64 central
finite differences.

For each sample the op becomes a one-node graph; ``vjp`` gives the input cotangents for random
output cotangents ``c`` (the gradient of L = sum_i <c_i, y_i>). The same graph with every
float32 promoted to float64 gives the reference: central differences of L, coordinate by
coordinate. Where the one-sided differences disagree, the point is a kink (relu at 0, a tie of
max): there the VJP must lie between the one-sided derivatives (a subgradient, the rule of
rules.py's docstring), elsewhere it must equal the central difference.
"""
from __future__ import annotations

import numpy as np
import pytest

import irgraph
from irgraph import Graph, IRError, TensorType
from irgraph.interpreter import interpret
from irgraph.passes.autodiff import VJP_RULES, vjp
from tests.samples import Case, all_samples

SAMPLES = all_samples()
DIFF_OPS = sorted(name for name, op in irgraph.all_ops().items() if op.differentiable)
H = 1e-6          # finite-difference step in float64
KINK = 1e-3       # one-sided differences further apart than this: a non-smooth point


def _promote(v):
    """float32 -> float64 in arrays, dtype attributes and nested tuples."""
    if isinstance(v, np.ndarray) and v.dtype == np.float32:
        return v.astype(np.float64)
    if isinstance(v, str) and v in ("float32", "f32"):
        return "float64"
    if isinstance(v, tuple):
        return tuple(_promote(x) for x in v)
    return v


def _one_node(op: str, inputs: list[np.ndarray], attrs: dict) -> Graph:
    g = Graph(f"{op}_sample")
    args = [g.add_input(f"x{i}", TensorType.of(a)) for i, a in enumerate(inputs)]
    outs = g.add_node(op, args, attrs)
    g.set_outputs(outs)
    return g


def _diff_inputs(case: Case, inputs: list[np.ndarray]) -> list[int]:
    return [i for i, a in enumerate(inputs)
            if i not in case.nondiff and a.dtype.kind == "f" and a.size]


def _float_outputs(g: Graph, among: list[int] | None = None) -> list[int]:
    among = range(len(g.outputs)) if among is None else among
    return [i for i in among if g.outputs[i].type.is_float and g.outputs[i].type.size]


def _vjp_values(g: Graph, inputs, wrt: list[int], of: list[int], cts) -> list[np.ndarray]:
    vg = vjp(g, wrt=[g.inputs[i].name for i in wrt], of=of)
    outs = interpret(vg, list(inputs) + list(cts))
    return [o.astype(np.float64) for o in outs[len(g.outputs):]]


def _fd_check(what: str, g64: Graph, inputs64, wrt, of, cts64, got, rtol, atol, h=H,
              kink=KINK) -> None:
    """Compare ``got`` (VJP per input in ``wrt``) with finite differences of L (in float64
    unless the op only exists in float32: then ``h`` and ``kink`` are larger)."""
    def loss(arrays) -> float:
        outs = interpret(g64, arrays)
        return float(sum(np.sum(outs[i].astype(np.float64) * c) for i, c in zip(of, cts64)))

    base = loss(inputs64)
    for k, i in enumerate(wrt):
        x = inputs64[i]
        for j in np.ndindex(x.shape):
            def at(delta):
                arrays = list(inputs64)
                arrays[i] = x.copy()
                arrays[i][j] += delta
                return loss(arrays)
            up, down = at(h), at(-h)
            right, left = (up - base) / h, (base - down) / h
            g = got[k][j]
            where = f"{what}: d/d%{g64.inputs[i].name}{list(j)}"
            if abs(right - left) > kink * (1 + abs(right) + abs(left)):
                lo, hi = min(left, right), max(left, right)
                tol = atol + rtol * (abs(lo) + abs(hi))
                assert lo - tol <= g <= hi + tol, (
                    f"{where} = {g} at a kink: not between the one-sided derivatives "
                    f"{left} and {right}")
            else:
                central = (up - down) / (2 * h)
                assert abs(g - central) <= atol + rtol * abs(central), (
                    f"{what}: VJP {g} != finite difference {central} ({where})")


def check_graph_vjp(what: str, g: Graph, g64: Graph | None, inputs, inputs64, wrt: list[int],
                    of: list[int], rng) -> None:
    """VJP of ``g`` for random cotangents of outputs ``of`` vs finite differences of ``g64``
    (the same graph in float64; None when the graph only exists in its own dtype)."""
    cts = [rng.standard_normal(g.outputs[i].shape).astype(g.outputs[i].type.np_dtype)
           for i in of]
    cts64 = [c.astype(np.float64) for c in cts]
    got = _vjp_values(g, inputs, wrt, of, cts)
    low = any(g.outputs[i].dtype == "float32" for i in of) or any(
        inputs[i].dtype == np.float32 for i in wrt)
    if g64 is None:
        _fd_check(what, g, inputs, wrt, of, cts64, got, 2e-2 if low else 1e-5,
                  2e-3 if low else 1e-6, 1e-3 if low else H, 5e-2 if low else KINK)
        return
    # the VJP in float64 must match tightly; the one in the sample's dtype to its accuracy
    got64 = _vjp_values(g64, inputs64, wrt, of, cts64)
    _fd_check(what, g64, inputs64, wrt, of, cts64, got64, 1e-5, 1e-6)
    for a, b in zip(got, got64):
        np.testing.assert_allclose(a, b, rtol=2e-3 if low else 1e-6, atol=2e-4 if low else 1e-7,
                                   err_msg=f"{what}: VJP in the sample's dtype vs float64")


def _graphs(op: str, case: Case):
    inputs = [np.asarray(a) for a in case.inputs]
    g = _one_node(op, inputs, case.attrs)
    inputs64 = [_promote(a) for a in inputs]
    try:
        g64 = _one_node(op, inputs64, {k: _promote(v) for k, v in case.attrs.items()})
    except IRError:          # an op defined for float32 only: check in its own dtype
        g64, inputs64 = None, inputs
    return g, g64, inputs, inputs64


def _check_case(op: str, case: Case, seed: int) -> bool:
    """First order on one sample; False when it has nothing to differentiate."""
    g, g64, inputs, inputs64 = _graphs(op, case)
    wrt, of = _diff_inputs(case, inputs), _float_outputs(g)
    if not wrt or not of:
        return False
    check_graph_vjp(op, g, g64, inputs, inputs64, wrt, of, np.random.default_rng(seed))
    return True


def _check_case_second_order(op: str, case: Case, seed: int) -> bool:
    """The VJP graph of one sample, differentiated again w.r.t. the op's inputs."""
    g, g64, inputs, inputs64 = _graphs(op, case)
    wrt, of = _diff_inputs(case, inputs), _float_outputs(g)
    if not wrt or not of:
        return False
    rng = np.random.default_rng(seed)
    names = [g.inputs[i].name for i in wrt]
    first = vjp(g, wrt=names, of=of)
    first64 = vjp(g64, wrt=names, of=of) if g64 is not None else None
    cts = [rng.standard_normal(g.outputs[i].shape) for i in of]
    args = inputs + [c.astype(g.outputs[i].type.np_dtype) for i, c in zip(of, cts)]
    args64 = inputs64 + [c.astype(np.float64 if g64 is not None else g.outputs[i].type.np_dtype)
                         for i, c in zip(of, cts)]
    grads_of = _float_outputs(first, list(range(len(g.outputs), len(first.outputs))))
    check_graph_vjp(f"{op} (second order)", first, first64, args, args64, wrt, grads_of, rng)
    return True


@pytest.mark.parametrize("op", DIFF_OPS)
def test_vjp_matches_finite_differences(op):
    """Every sample of every differentiable op: VJP == float64 central differences."""
    assert op in VJP_RULES, f"op {op!r} is differentiable but has no VJP rule"
    cases = SAMPLES.get(op, [])
    checked = [_check_case(op, case, seed) for seed, case in enumerate(cases)]
    assert any(checked), (f"op {op!r} has no sample with a float input to differentiate "
                          f"(tests/samples)")


@pytest.mark.parametrize("op", DIFF_OPS)
def test_vjp_of_vjp_matches_finite_differences(op):
    """Rules are written with IR ops, so each VJP graph differentiates again (second order)."""
    cases = SAMPLES.get(op, [])
    checked = [_check_case_second_order(op, case, seed) for seed, case in enumerate(cases)]
    assert any(checked), f"op {op!r} has no sample with a float input to differentiate"


def test_every_differentiable_op_has_a_rule():
    missing = [op for op in DIFF_OPS if op not in VJP_RULES]
    assert not missing, f"differentiable ops without a VJP rule: {missing}"


def test_rules_only_for_registered_ops():
    unknown = sorted(set(VJP_RULES) - set(irgraph.all_ops()))
    assert not unknown, f"VJP rules for ops that are not registered: {unknown}"


def test_nondifferentiable_ops_say_why():
    for name, op in irgraph.all_ops().items():
        assert op.differentiable or op.nondiff_reason, name
