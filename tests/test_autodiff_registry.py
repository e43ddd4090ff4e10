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
from passes.autodiff import VJP_RULES, vjp
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


def _cotangents(g: Graph, rng) -> tuple[list[int], list[np.ndarray]]:
    of = [i for i, v in enumerate(g.outputs) if v.type.is_float]
    cts = [rng.standard_normal(g.outputs[i].shape).astype(g.outputs[i].type.np_dtype)
           for i in of]
    return of, cts


def _run(g: Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
    node = g.nodes[0]
    return node.opdef.run([a.copy() for a in inputs], node.attrs)


def _vjp_values(g: Graph, inputs, wrt: list[int], of: list[int], cts) -> list[np.ndarray]:
    vg = vjp(g, wrt=[f"x{i}" for i in wrt], of=of)
    outs = interpret(vg, list(inputs) + list(cts))
    return [o.astype(np.float64) for o in outs[len(g.outputs):]]


def _fd_check(op: str, g64: Graph, inputs64, wrt, of, cts64, got, rtol, atol) -> None:
    """Compare ``got`` (VJP per input in ``wrt``) with finite differences of L in float64."""
    def loss(arrays) -> float:
        outs = _run(g64, arrays)
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
            up, down = at(H), at(-H)
            right, left = (up - base) / H, (base - down) / H
            g = got[k][j]
            where = f"{op}: d/dx{i}{list(j)}"
            if abs(right - left) > KINK * (1 + abs(right) + abs(left)):
                lo, hi = min(left, right), max(left, right)
                tol = atol + rtol * (abs(lo) + abs(hi))
                assert lo - tol <= g <= hi + tol, (
                    f"{where} = {g} at a kink: not between the one-sided derivatives "
                    f"{left} and {right}")
            else:
                central = (up - down) / (2 * H)
                assert abs(g - central) <= atol + rtol * abs(central), (
                    f"{where}: VJP {g} != finite difference {central}")


def _check_case(op: str, case: Case, seed: int) -> bool:
    """Check one sample; False when it has nothing to differentiate."""
    inputs = [np.asarray(a) for a in case.inputs]
    wrt = _diff_inputs(case, inputs)
    g = _one_node(op, inputs, case.attrs)
    of, cts = _cotangents(g, np.random.default_rng(seed))
    if not wrt or not of:
        return False
    got = _vjp_values(g, inputs, wrt, of, cts)
    inputs64 = [_promote(a) for a in inputs]
    try:
        g64 = _one_node(op, inputs64, {k: _promote(v) for k, v in case.attrs.items()})
    except IRError:          # an op defined for float32 only: check in its own dtype
        g64, inputs64 = g, inputs
    cts64 = [c.astype(np.float64) for c in cts]
    low = any(a.dtype == np.float32 for a in inputs) or any(c.dtype == np.float32 for c in cts)
    if g64 is not g:
        # the VJP in float64 must match tightly; the float32 one to float32 accuracy
        got64 = _vjp_values(g64, inputs64, wrt, of,
                            [c.astype(g64.outputs[i].type.np_dtype) for i, c in zip(of, cts)])
        _fd_check(op, g64, inputs64, wrt, of, cts64, got64, 1e-5, 1e-6)
        for a, b in zip(got, got64):
            np.testing.assert_allclose(a, b, rtol=2e-3 if low else 1e-6, atol=2e-4 if low
                                       else 1e-7, err_msg=f"{op}: float32 VJP vs float64 VJP")
    else:
        _fd_check(op, g, inputs, wrt, of, cts64, got, 2e-2 if low else 1e-5,
                  2e-3 if low else 1e-6)
    return True


@pytest.mark.parametrize("op", DIFF_OPS)
def test_vjp_matches_finite_differences(op):
    """Every sample of every differentiable op: VJP == float64 central differences."""
    assert op in VJP_RULES, f"op {op!r} is differentiable but has no VJP rule"
    cases = SAMPLES.get(op, [])
    checked = [_check_case(op, case, seed) for seed, case in enumerate(cases)]
    assert any(checked), (f"op {op!r} has no sample with a float input to differentiate "
                          f"(tests/samples)")


def test_every_differentiable_op_has_a_rule():
    missing = [op for op in DIFF_OPS if op not in VJP_RULES]
    assert not missing, f"differentiable ops without a VJP rule: {missing}"


def test_rules_only_for_registered_ops():
    unknown = sorted(set(VJP_RULES) - set(irgraph.all_ops()))
    assert not unknown, f"VJP rules for ops that are not registered: {unknown}"


def test_nondifferentiable_ops_say_why():
    for name, op in irgraph.all_ops().items():
        assert op.differentiable or op.nondiff_reason, name
