"""The optimizer-update ops (irgraph/ops/optim.py) one at a time: formulas of alg. 8.1-8.7,
eq. 8.39 and section 8.2.4 written out in numpy, and the type rules' errors."""
from __future__ import annotations

import numpy as np
import pytest

import irgraph
from irgraph import Graph, TensorType
from irgraph.interpreter import interpret

R = np.random.default_rng(0)
P, G, S1 = R.standard_normal(6), R.standard_normal(6), R.standard_normal(6)
S2 = R.uniform(0.1, 1.0, 6)


def run(op: str, *args, **attrs) -> list[np.ndarray]:
    """Build a one-node graph (so the type rule runs), print/parse it, interpret it."""
    g = Graph("t")
    vs = [g.add_input(f"a{i}", TensorType.of(np.asarray(a))) for i, a in enumerate(args)]
    g.set_outputs(g.add_node(op, vs, attrs))
    assert irgraph.parse(str(g)) == g
    return interpret(g, [np.asarray(a) for a in args])


def s(v: float) -> np.ndarray:
    return np.asarray(v, np.float64)


def test_sgd_alg_8_1():
    (p,) = run("sgd_update", P, G, s(0.3))
    np.testing.assert_allclose(p, P - 0.3 * G, rtol=1e-15)


def test_momentum_alg_8_2_and_torch_forms():
    p, v = run("momentum_update", P, G, S1, s(0.1), s(0.9), convention="text")
    np.testing.assert_allclose(v, 0.9 * S1 - 0.1 * G, rtol=1e-15)
    np.testing.assert_allclose(p, P + v, rtol=1e-15)
    p, v = run("momentum_update", P, G, S1, s(0.1), s(0.9), convention="torch")
    np.testing.assert_allclose(v, 0.9 * S1 + G, rtol=1e-15)
    np.testing.assert_allclose(p, P - 0.1 * v, rtol=1e-15)
    p, v = run("momentum_update", P, G, S1, s(0.1), s(0.9), convention="torch", nesterov=True)
    np.testing.assert_allclose(p, P - 0.1 * (G + 0.9 * (0.9 * S1 + G)), rtol=1e-15)


def test_adagrad_alg_8_4():
    p, r = run("adagrad_update", P, G, S2, s(0.1), s(1e-2))
    np.testing.assert_allclose(r, S2 + G * G, rtol=1e-15)
    np.testing.assert_allclose(p, P - 0.1 * G / (1e-2 + np.sqrt(S2 + G * G)), rtol=1e-15)


@pytest.mark.parametrize("convention", ["text", "torch"])
def test_rmsprop_alg_8_5_eps_placement(convention):
    p, r = run("rmsprop_update", P, G, S2, s(0.01), s(0.9), s(0.5), convention=convention)
    r2 = 0.9 * S2 + 0.1 * G * G
    np.testing.assert_allclose(r, r2, rtol=1e-15)
    denom = np.sqrt(0.5 + r2) if convention == "text" else np.sqrt(r2) + 0.5
    np.testing.assert_allclose(p, P - 0.01 * G / denom, rtol=1e-14)


@pytest.mark.parametrize("convention", ["text", "torch"])
def test_rmsprop_momentum_alg_8_6(convention):
    p, r, v = run("rmsprop_momentum_update", P, G, S2, S1, s(0.01), s(0.9), s(0.0), s(0.5),
                  convention=convention)
    r2 = 0.9 * S2 + 0.1 * G * G
    if convention == "text":       # v <- alpha v - eps / sqrt(r) (.) g;  theta <- theta + v
        v2 = 0.5 * S1 - 0.01 / np.sqrt(r2) * G
        p2 = P + v2
    else:
        v2 = 0.5 * S1 + G / np.sqrt(r2)
        p2 = P - 0.01 * v2
    for got, want in ((r, r2), (v, v2), (p, p2)):
        np.testing.assert_allclose(got, want, rtol=1e-14)


@pytest.mark.parametrize("convention", ["text", "torch"])
def test_adam_alg_8_7_bias_correction_and_delta(convention):
    t, b1, b2, d = 3.0, 0.8, 0.9, 0.25
    p, m, v = run("adam_update", P, G, S1, S2, s(0.01), s(b1), s(b2), s(d), s(t),
                  convention=convention)
    s2, r2 = b1 * S1 + (1 - b1) * G, b2 * S2 + (1 - b2) * G * G
    sh, rh = s2 / (1 - b1 ** t), r2 / (1 - b2 ** t)
    denom = np.sqrt(rh + d) if convention == "text" else np.sqrt(rh) + d
    np.testing.assert_allclose(m, s2, rtol=1e-15)
    np.testing.assert_allclose(v, r2, rtol=1e-15)
    np.testing.assert_allclose(p, P - 0.01 * sh / denom, rtol=1e-14)


def test_polyak_eq_8_39():
    (a,) = run("polyak_update", S1, P, s(0.75))
    np.testing.assert_allclose(a, 0.75 * S1 + 0.25 * P, rtol=1e-15)


def test_global_norm_and_clipping_section_8_2_4():
    a, b = R.standard_normal((2, 3)), R.standard_normal(4)
    (n,) = run("global_norm", a, b)
    assert n.shape == () and n == pytest.approx(np.sqrt((a ** 2).sum() + (b ** 2).sum()))
    (c,) = run("clip_by_norm", a, n, s(0.5), eps=0.0)     # above the threshold: norm -> 0.5
    np.testing.assert_allclose(c, a * 0.5 / n, rtol=1e-15)
    (c,) = run("clip_by_norm", a, n, s(1e3))               # below: unchanged
    np.testing.assert_array_equal(c, a)
    (c,) = run("clip_by_value", b, s(0.3))
    np.testing.assert_array_equal(c, np.clip(b, -0.3, 0.3))


def test_float32_stays_float32():
    p32 = P.astype(np.float32)
    outs = run("adam_update", p32, p32, p32, p32 * p32, *[np.float32(v) for v in
                                                         (0.1, 0.9, 0.99, 1e-8, 1.0)],
               convention="torch")
    assert all(o.dtype == np.float32 for o in outs)


@pytest.mark.parametrize("args,match", [
    ((P, G, S1[:3], s(0.1), s(0.9)), "input 2 is f64\\[3\\]"),
    ((P, G, S1, np.ones(1), s(0.9)), "hyperparameter input 3"),
    ((P, G, S1, np.float32(0.1), s(0.9)), "rank-0 float64"),
    ((P.astype(np.int64), G, S1, s(0.1), s(0.9)), "float tensor"),
])
def test_type_rule_errors(args, match):
    with pytest.raises(irgraph.IRError, match=match):
        run("momentum_update", *args)


def test_update_ops_are_non_differentiable_with_a_reason():
    for name in ("sgd_update", "momentum_update", "adagrad_update", "rmsprop_update",
                 "rmsprop_momentum_update", "adam_update", "polyak_update", "global_norm",
                 "clip_by_norm", "clip_by_value"):
        op = irgraph.get_op(name)
        assert not op.differentiable and "optimizer" in op.nondiff_reason
