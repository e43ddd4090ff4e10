"""Op traits: every op declares them, each table a pass or backend keeps is the registry's
query, and the traits say what the kernels do (checked on the ops' numpy kernels)."""
from __future__ import annotations

import numpy as np
import pytest

import irgraph
from irgraph.registry import TRAITS, all_ops, get_op, ops_with, register_op
from irgraph.types import TensorType

OPS = sorted(all_ops())


@pytest.mark.parametrize("name", OPS)
def test_every_op_declares_known_traits(name):
    traits = get_op(name).traits
    assert traits is not None, f"op {name!r} does not declare its traits (register_op(traits=))"
    assert traits <= set(TRAITS), f"op {name!r}: unknown traits {sorted(traits - set(TRAITS))}"


def test_register_op_rejects_unknown_and_string_traits():
    with pytest.raises(ValueError, match=r"op 'bogus_op': unknown trait\(s\) \['elementwize'\]"):
        register_op("bogus_op", traits={"elementwize"})(lambda x: x)
    with pytest.raises(TypeError, match="traits must be a set of names"):
        register_op("bogus_op", traits="elementwise")(lambda x: x)
    with pytest.raises(ValueError, match="unknown trait 'pure'"):
        ops_with("pure")
    assert "bogus_op" not in all_ops()


def test_ops_with_is_the_intersection():
    both = ops_with("elementwise", "float_only")
    assert both == ops_with("elementwise") & ops_with("float_only")
    assert {"exp", "tanh", "erf"} <= both and "add" not in both and "mean" not in both


def test_pass_and_backend_tables_are_registry_queries():
    from irgraph.backends.llvm.executable import FALLIBLE_OPS
    from irgraph.backends.llvm.ops_recurrence import REDUCE_OPS
    from irgraph.passes.analysis import COMMUTATIVE, CONST_SOURCES, EFFECT_OPS
    from irgraph.passes.fusion import ELEMENTWISE, REDUCTIONS
    from irgraph.passes.memory import INPLACE_OPS, VIEW_OPS
    assert ELEMENTWISE == ops_with("elementwise")
    assert REDUCTIONS == ops_with("reduction")
    assert REDUCE_OPS == ops_with("reduction")
    assert INPLACE_OPS == ops_with("inplace")
    assert VIEW_OPS == ops_with("view")
    assert COMMUTATIVE == ops_with("commutative")
    assert CONST_SOURCES == ops_with("constant")
    assert EFFECT_OPS == ops_with("effect")
    assert FALLIBLE_OPS == ops_with("fallible")


def test_random_graph_op_lists_come_from_the_registry():
    from tests import random_graphs as rg
    ops = all_ops()
    for names, arity in ((rg.UNARY, 1), (rg.BINARY, 2)):
        assert names and set(names) <= ops_with("elementwise")
        assert all(ops[n].num_inputs == arity and ops[n].differentiable for n in names)
    assert set(rg.REDUCE) == ops_with("reduction")
    # the hand-written lists these replaced, plus erf, sin, cos and fmod (added to the
    # registry since)
    assert set(rg.UNARY) == {"neg", "exp", "tanh", "sigmoid", "relu", "abs", "square", "sqrt",
                             "log", "rsqrt", "erf", "sin", "cos"}
    assert set(rg.BINARY) == {"add", "sub", "mul", "div", "maximum", "minimum", "pow", "fmod"}


# ---------------------------------------------------------------- traits against the kernels
def _attrs(op):
    return op.check_attrs({"dtype": "float32"} if "dtype" in op.attrs else {})


_NO_REQUIRED = [n for n in sorted(ops_with("elementwise"))
                if all(k == "dtype" for k in all_ops()[n].attrs) and n != "where"]


@pytest.mark.parametrize("name", _NO_REQUIRED)
def test_elementwise_commutes_with_a_permutation(name):
    """An elementwise kernel's result at i reads only the operands at i: permuting every
    operand permutes the result the same way."""
    op = get_op(name)
    rng = np.random.default_rng(0)
    n = op.num_inputs
    xs = [rng.uniform(0.5, 2.0, 12).astype(np.float32) for _ in range(n)]
    perm = rng.permutation(12)
    attrs = _attrs(op)
    ys = op.run(xs, attrs)
    ys_p = op.run([x[perm] for x in xs], attrs)
    for y, yp in zip(ys, ys_p):
        np.testing.assert_array_equal(np.asarray(y)[perm], yp)


def test_where_is_elementwise():
    op = get_op("where")
    rng = np.random.default_rng(1)
    c, x, y = rng.uniform(size=10) > 0.5, rng.normal(size=10), rng.normal(size=10)
    perm = rng.permutation(10)
    np.testing.assert_array_equal(op.run([c, x, y], {})[0][perm],
                                  op.run([c[perm], x[perm], y[perm]], {})[0])


def _rejects_ints(op) -> bool:
    t = TensorType((3,), "int64")
    try:
        op.infer([t] * op.num_inputs, op.check_attrs({}))
    except irgraph.IRError:
        return True
    return False


@pytest.mark.parametrize("name", sorted(n for n in ops_with("elementwise") | ops_with("reduction")
                                        if n != "where" and (not all_ops()[n].attrs
                                        or set(all_ops()[n].attrs) == {"axis", "keepdims"})))
def test_float_only_is_what_the_type_rule_says(name):
    op = get_op(name)
    assert _rejects_ints(op) == op.has("float_only"), name


@pytest.mark.parametrize("name", sorted(ops_with("commutative")))
def test_commutative_kernels_ignore_operand_order(name):
    op = get_op(name)
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 3, (4, 1)).astype(np.float32), rng.integers(0, 3, (1, 5))
    if name.startswith("logical"):
        a, b = a > 1, b > 1
    b = b.astype(a.dtype)
    np.testing.assert_array_equal(op.run([a, b], {})[0], op.run([b, a], {})[0])


def test_constant_ops_take_no_inputs_and_effects_are_few():
    assert all(all_ops()[n].num_inputs == 0 for n in ops_with("constant"))
    assert ops_with("effect") == {"check_finite"}
    assert ops_with("view") <= {"reshape"}


# ---------------------------------------------------------------- the Triton elementwise table
def test_triton_table_is_the_registry_elementwise_ops():
    from irgraph.backends.triton import codegen
    from irgraph.backends.triton.kernels import elementwise as ew
    handled = set(ew.UNARY + ew.BINARY + ew.TERNARY) - {"copy"}
    assert handled | set(codegen._PASS_THROUGH) == ops_with("elementwise")
    assert set(ew.FLOAT_ONLY) == ops_with("float_only") & handled
    for names, arity in ((ew.UNARY, 1), (ew.BINARY, 2), (ew.TERNARY, 3)):
        assert all(all_ops()[n].num_inputs == arity for n in names if n != "copy")


def test_triton_elementwise_raises_for_an_op_it_does_not_handle(monkeypatch):
    import torch

    from irgraph.backends.triton.kernels import elementwise as ew
    from irgraph.backends.triton.runtime import View
    x = torch.arange(4, dtype=torch.float32)
    with pytest.raises(ValueError, match="elementwise op 'cube' does not take 1 input"):
        ew.elementwise("cube", (4,), "float32", [View.of((4,))], ["float32"], "cpu")
    # past the host check, the kernel itself refuses an op it has no branch for (it used to
    # compute x * x for any unknown unary op)
    monkeypatch.setattr(ew, "UNARY", ew.UNARY + ("cube",))
    run = ew.elementwise("cube", (4,), "float32", [View.of((4,))], ["float32"], "cpu")
    with pytest.raises(Exception, match="an op with no unary branch"):
        run(x)
    monkeypatch.setattr(ew, "BINARY", ew.BINARY + ("hypot",))
    run = ew.elementwise("hypot", (4,), "float32", [View.of((4,))] * 2, ["float32"] * 2, "cpu")
    with pytest.raises(Exception, match="an op with no binary branch"):
        run(x, x)
    # the table's ops still compute
    run = ew.elementwise("square", (4,), "float32", [View.of((4,))], ["float32"], "cpu")
    np.testing.assert_array_equal(run(x).numpy(), [0, 1, 4, 9])
