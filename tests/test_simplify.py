"""Simplification: constant folding, the identity table, CSE, DCE, and dropping training-only
work (batch norm in inference mode against PyTorch, dead state updates)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from irgraph import Graph, TensorType
from irgraph.interpreter import interpret
from irgraph.passes.identities import RULES
from irgraph.passes.inference import strip_dead_state, strip_training
from irgraph.passes.manager import PassManager
from irgraph.passes.simplify import (FOLD_ARRAY_LIMIT, algebraic, constant_fold, cse, dce, simplify,
                             simplify_subgraphs)

F32 = TensorType((2, 3))


def ops(g: Graph) -> list[str]:
    return [n.op for n in g.nodes]


def one_input(shape=(2, 3), dtype="float32"):
    g = Graph("t")
    return g, g.add_input("x", TensorType(shape, dtype))


def run(g, *args):
    return interpret(g, [np.asarray(a) for a in args])


# ---------------------------------------------------------------- constant folding
def test_constant_fold_worked_example():
    """(2 * 3) + x: the constant product is evaluated once; 6 is a splat ``full``."""
    g, x = one_input((4,))
    six = g.op("mul", g.op("full", shape=(), value=2.0), g.op("full", shape=(), value=3.0))
    g.set_outputs([g.op("add", x, six)])
    out = dce(constant_fold(g))
    assert ops(out) == ["full", "add"]
    assert out.nodes[0].attrs["value"] == 6.0
    np.testing.assert_array_equal(run(out, np.arange(4, dtype=np.float32))[0], [6, 7, 8, 9])


def test_constant_fold_non_splat_array_and_iota():
    """iota(3) * 2 + 1 = [1, 3, 5] becomes a ``constant`` array."""
    g = Graph("t")
    i = g.op("iota", shape=(3,), axis=0, dtype="float32")
    two, one = g.op("full", shape=(), value=2.0), g.op("full", shape=(), value=1.0)
    g.set_outputs([g.op("add", g.op("mul", i, two), one)])
    out = dce(constant_fold(g))
    assert ops(out) == ["constant"]
    np.testing.assert_array_equal(out.nodes[0].attrs["value"], [1.0, 3.0, 5.0])


def test_constant_fold_keeps_big_arrays_and_signed_zero():
    g = Graph("t")
    n = FOLD_ARRAY_LIMIT + 1
    big = g.op("iota", shape=(n,), axis=0, dtype="float32")
    neg0 = g.op("neg", g.op("full", shape=(2,), value=0.0))
    g.set_outputs([g.op("exp", big), neg0])
    out = constant_fold(g)
    assert "exp" in ops(out)                          # too big to print as a constant
    assert np.signbit(run(out)[1]).all()             # -0.0 stays -0.0
    folded = [n for n in out.nodes if n.op == "full" and n.outputs[0] is out.outputs[1]]
    assert folded and str(folded[0].attrs["value"]) == "-0.0"


def test_constant_fold_leaves_failing_kernels_for_run_time():
    """nll_loss with an out-of-range target is not folded: the error comes at run time."""
    g = Graph("t")
    logp = g.op("constant", value=np.log(np.full((2, 3), 1 / 3, np.float32)))
    target = g.op("constant", value=np.array([0, 7]))
    g.set_outputs([g.op("nll_loss", logp, target)])
    assert "nll_loss" in ops(constant_fold(g))


# ---------------------------------------------------------------- identities
def _splat(g, v):
    return g.op("full", shape=(), value=v)


def _identity_cases():
    """(name, build(g, x) -> output, op that must be gone). x is f32[2,3]."""
    return [
        ("x+0", lambda g, x: g.op("add", x, _splat(g, 0.0)), "add"),
        ("0+x", lambda g, x: g.op("add", _splat(g, 0.0), x), "add"),
        ("x-0", lambda g, x: g.op("sub", x, _splat(g, 0.0)), "sub"),
        ("x*1", lambda g, x: g.op("mul", x, _splat(g, 1.0)), "mul"),
        ("1*x", lambda g, x: g.op("mul", _splat(g, 1.0), x), "mul"),
        ("x/1", lambda g, x: g.op("div", x, _splat(g, 1.0)), "div"),
        ("x*-1", lambda g, x: g.op("mul", x, _splat(g, -1.0)), "mul"),
        ("x**1", lambda g, x: g.op("pow", x, _splat(g, 1.0)), "pow"),
        ("x**2", lambda g, x: g.op("pow", x, _splat(g, 2.0)), "pow"),
        ("x**0.5", lambda g, x: g.op("pow", g.op("abs", x), _splat(g, 0.5)), "pow"),
        ("--x", lambda g, x: g.op("neg", g.op("neg", x)), "neg"),
        ("x+-y", lambda g, x: g.op("add", x, g.op("neg", g.op("exp", x))), "add"),
        ("x--y", lambda g, x: g.op("sub", x, g.op("neg", g.op("exp", x))), "neg"),
        ("relu relu", lambda g, x: g.op("relu", g.op("relu", x)), None),
        ("abs(-x)", lambda g, x: g.op("abs", g.op("neg", x)), "neg"),
        ("(-x)^2", lambda g, x: g.op("square", g.op("neg", x)), "neg"),
        ("max(x,x)", lambda g, x: g.op("maximum", x, x), "maximum"),
        ("where(c,x,x)", lambda g, x: g.op("where", g.op("gt", x, _splat(g, 0.0)), x, x),
         "where"),
        ("double transpose", lambda g, x: g.op("transpose", g.op("transpose", x, perm=(1, 0)),
                                              perm=(1, 0)), "transpose"),
        ("identity transpose", lambda g, x: g.op("transpose", x, perm=(0, 1)), "transpose"),
        ("reshape chain", lambda g, x: g.op("reshape", g.op("reshape", x, shape=(6,)),
                                           shape=(2, 3)), "reshape"),
        ("reshape same", lambda g, x: g.op("reshape", x, shape=(2, 3)), "reshape"),
        ("broadcast same", lambda g, x: g.op("broadcast_to", x, shape=(2, 3)), "broadcast_to"),
        ("cast same", lambda g, x: g.op("cast", x, dtype="float32"), "cast"),
        ("sum unit axis", lambda g, x: g.op("sum", g.op("reshape", x, shape=(2, 1, 3)),
                                           axis=(1,)), "sum"),
        ("full slice", lambda g, x: g.op("slice", x, starts=(0, 0), stops=(2, 99),
                                        steps=(1, 1)), "slice"),
        ("concat one", lambda g, x: g.op("concat", x, axis=0), "concat"),
    ]


@pytest.mark.parametrize("name,build,gone", _identity_cases(),
                         ids=[c[0] for c in _identity_cases()])
def test_identity_rule_fires_and_keeps_the_value(name, build, gone):
    g, x = one_input()
    g.set_outputs([build(g, x)])
    out = simplify(g)
    if gone is not None:
        assert gone not in ops(out), f"{name}: {out}"
    assert len(out.nodes) < len(g.nodes)
    xs = np.array([[1.5, -2.0, 0.25], [3.0, -0.5, 4.0]], np.float32)
    np.testing.assert_array_equal(run(out, xs)[0], run(g, xs)[0])


def test_every_rule_is_a_commented_row_of_the_table():
    """The identities are data: one ``(op, rewrite)`` row per rule, each with its comment."""
    import inspect

    import irgraph.passes.identities as ids
    src = inspect.getsource(ids)
    rows = [ln for ln in src[src.index("RULES: list"):].splitlines() if ln.strip().startswith("(")]
    assert len(rows) == len(RULES)
    for (op, fn), row in zip(RULES, rows):
        assert f'("{op}", {fn.__name__})' in row and "#" in row, row


def test_x_times_zero_is_not_simplified_because_of_inf():
    """x*0 -> 0 is false for x = inf (NaN), so the table has no such rule."""
    g, x = one_input((2,))
    g.set_outputs([g.op("mul", x, _splat(g, 0.0))])
    out = simplify(g)
    assert "mul" in ops(out)
    assert np.isnan(run(out, np.array([np.inf, 1.0], np.float32))[0][0])


def test_broadcasting_identity_keeps_the_shape():
    """x[3] + zeros[2,3] is a broadcast, not x: the rule must not fire."""
    g, x = one_input((3,))
    g.set_outputs([g.op("add", x, g.op("full", shape=(2, 3), value=0.0))])
    out = algebraic(g)
    assert out.outputs[0].shape == (2, 3)


def test_transpose_composition():
    """transpose(transpose(x, (1,2,0)), (1,2,0)) = transpose(x, (2,0,1))."""
    g, x = one_input((2, 3, 4))
    g.set_outputs([g.op("transpose", g.op("transpose", x, perm=(1, 2, 0)), perm=(1, 2, 0))])
    out = simplify(g)
    assert ops(out) == ["transpose"] and out.nodes[0].attrs["perm"] == (2, 0, 1)
    xs = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(run(out, xs)[0], xs.transpose(2, 0, 1))


# ---------------------------------------------------------------- CSE and DCE
def test_cse_merges_commutative_operands_but_not_different_attributes():
    g, x = one_input()
    y = g.op("exp", x)
    a, b = g.op("mul", x, y), g.op("mul", y, x)
    z0, z1 = g.op("full", shape=(), value=0.0), g.op("full", shape=(), value=-0.0)
    s0, s1 = g.op("sum", x, axis=(0,)), g.op("sum", x, axis=(1,))
    g.set_outputs([g.op("sub", a, b), z0, z1, s0, s1])
    out = cse(g)
    assert ops(out).count("mul") == 1
    assert ops(out).count("full") == 2 and ops(out).count("sum") == 2


def test_dce_keeps_the_signature_and_effects():
    g, x = one_input()
    g.add_param("unused", F32)
    g.op("exp", x)
    kept = g.op("tanh", x)
    g.op("check_finite", x, checked_op="input", node="input %x")
    g.set_outputs([kept])
    out = dce(g)
    assert ops(out) == ["tanh", "check_finite"]
    assert [v.name for v in out.arguments] == ["x", "unused"]


def test_simplify_reaches_a_fixed_point():
    """((x*1)+0) - (-(x*1)) needs several rounds: the result is x + x."""
    g, x = one_input()
    y = g.op("add", g.op("mul", x, _splat(g, 1.0)), _splat(g, 0.0))
    g.set_outputs([g.op("sub", y, g.op("neg", g.op("mul", x, _splat(g, 1.0))))])
    out = simplify(g)
    assert ops(out) == ["add"] and out.nodes[0].inputs == (out.inputs[0],) * 2


# ---------------------------------------------------------------- training-only work
def bn_graph(training: bool, outputs=("y",), shape=(4, 3, 5, 5)) -> Graph:
    g = Graph("bn")
    x = g.add_input("x", TensorType(shape))
    c = shape[1]
    ps = [g.add_param(n, TensorType((c,))) for n in ("gamma", "beta", "rm", "rv")]
    y, m, v = g.op("batch_norm", x, *ps, training=training, eps=1e-3, momentum=0.2)
    vals = {"y": y, "m": m, "v": v}
    g.set_outputs([vals[o] for o in outputs])
    return g


def bn_args(shape=(4, 3, 5, 5), seed=0):
    rng = np.random.default_rng(seed)
    c = shape[1]
    return [rng.standard_normal(shape).astype(np.float32) * 2 + 1,
            rng.uniform(0.5, 2, c).astype(np.float32), rng.standard_normal(c).astype(np.float32),
            rng.standard_normal(c).astype(np.float32), rng.uniform(0.5, 2, c).astype(np.float32)]


@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (6, 3), (2, 3, 7)])
def test_inference_batch_norm_becomes_scale_and_shift_matching_torch(shape):
    """Eq. 8.35 with the running statistics: the rewritten graph equals torch's eval BN."""
    g = bn_graph(False, ("y", "m", "v"), shape)
    out = PassManager("strip_training, simplify").run(g)
    assert "batch_norm" not in ops(out)
    assert out.outputs[1] is out.params[2] and out.outputs[2] is out.params[3]
    x, gamma, beta, rm, rv = bn_args(shape)
    want = torch.nn.functional.batch_norm(torch.tensor(x), torch.tensor(rm), torch.tensor(rv),
                                          torch.tensor(gamma), torch.tensor(beta),
                                          training=False, eps=1e-3).numpy()
    got = run(out, x, gamma, beta, rm, rv)
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got[1], rm)


def test_training_batch_norm_with_unused_statistics_matches_torch():
    """Eq. 8.35-8.37 with batch statistics; the running-average update is dropped."""
    g = bn_graph(True)
    out = PassManager("strip_training, simplify").run(g)
    assert "batch_norm" not in ops(out)
    x, gamma, beta, rm, rv = bn_args()
    want = torch.nn.functional.batch_norm(torch.tensor(x), torch.tensor(rm), torch.tensor(rv),
                                          torch.tensor(gamma), torch.tensor(beta),
                                          training=True, eps=1e-3).numpy()
    np.testing.assert_allclose(run(out, x, gamma, beta, rm, rv)[0], want, rtol=1e-5,
                               atol=1e-5)


def test_training_batch_norm_whose_statistics_are_used_is_kept():
    g = bn_graph(True, ("y", "m"))
    assert "batch_norm" in ops(strip_training(g))


def test_dead_state_updates_are_dropped_with_their_donations():
    g = Graph("net")
    x = g.add_input("x", F32)
    rm = g.add_param("rm", TensorType((3,)))
    cnt = g.add_param("count", TensorType(()))
    y = g.op("relu", x)
    new_cnt = g.op("add", cnt, _splat(g, 1.0))
    g.set_outputs([y, rm, new_cnt])
    g.donations = {1: 1, 2: 2}
    out = PassManager("strip_dead_state").run(g)
    assert len(out.outputs) == 2 and out.donations == {1: 2}
    xs = np.ones((2, 3), np.float32)
    res = run(out, xs, np.zeros(3, np.float32), np.array(4.0, np.float32))
    np.testing.assert_array_equal(res[1], 5.0)
    assert strip_dead_state(bn_graph(False)) is not None


def test_subgraphs_are_simplified_too():
    """The step body of a scan (eq. 10.5's recurrence h' = tanh(h*1 + --x)) loses its
    identities; the results do not change."""
    body = Graph("cell")
    h = body.add_input("h", F32)
    x = body.add_input("x", F32)
    s = body.op("add", body.op("mul", h, _splat(body, 1.0)), body.op("neg", body.op("neg", x)))
    h1 = body.op("tanh", s)
    body.set_outputs([h1, h1])
    g = Graph("rnn")
    h0 = g.add_input("h0", F32)
    xs = g.add_input("xs", TensorType((4, 2, 3)))
    g.set_outputs(list(g.op("scan", h0, xs, body=body, num_carry=1, num_seq=1)))
    out = simplify_subgraphs(g)
    assert [n.op for n in out.nodes[0].attrs["body"].nodes] == ["add", "tanh"]
    rng = np.random.default_rng(0)
    args = [rng.standard_normal((2, 3)).astype(np.float32),
            rng.standard_normal((4, 2, 3)).astype(np.float32)]
    hs = [args[0]]
    for t in range(4):
        hs.append(np.tanh(hs[-1] + args[1][t]))
    got = run(out, *args)
    np.testing.assert_allclose(got[0], hs[-1], rtol=1e-6)
    np.testing.assert_allclose(got[1], np.stack(hs[1:]), rtol=1e-6)


def test_passes_give_back_their_input_when_nothing_changes():
    """No copy when there is nothing to do (simplify's fixed point relies on it)."""
    g, x = one_input()
    g.set_outputs([g.op("exp", x)])
    for p in (constant_fold, algebraic, cse, dce, simplify):
        assert p(g) is g
