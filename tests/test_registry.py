"""Registry-wide tests: every registered op (of every family) has samples, a type rule that
agrees with its kernel, a text form that round-trips, a differentiability statement and a
cost. Families add ops and ``tests/samples/<family>.py``; these tests then cover them."""
from __future__ import annotations

import math

import numpy as np
import pytest

import irgraph
from irgraph import Graph, TensorType
from irgraph.registry import (_REGISTRY, Attr, Cost, OpDef, a_any, a_array, a_float, a_graph,
                              a_optional, a_str)
from tests.helpers import build
from tests.samples import all_samples

SAMPLES = all_samples()
CASES = [(op, i, c) for op, cases in sorted(SAMPLES.items()) for i, c in enumerate(cases)]
IDS = [f"{op}-{i}" for op, i, _ in CASES]


def test_every_registered_op_has_samples():
    missing = sorted(set(irgraph.all_ops()) - set(SAMPLES))
    assert not missing, f"ops without samples in tests/samples/<family>.py: {missing}"


def test_samples_name_only_registered_ops():
    unknown = sorted(set(SAMPLES) - set(irgraph.all_ops()))
    assert not unknown, f"samples for ops that are not registered: {unknown}"


@pytest.mark.parametrize("op,i,case", CASES, ids=IDS)
def test_type_rule_agrees_with_kernel(op, i, case):
    """The registry's type rule predicts exactly the shapes and dtypes its kernel returns."""
    opdef = irgraph.get_op(op)
    attrs = opdef.check_attrs(case.attrs)
    types = opdef.infer([TensorType.of(a) for a in case.inputs], attrs)
    with np.errstate(all="ignore"):
        outs = opdef.run([np.array(a) for a in case.inputs], attrs)
    assert len(outs) == len(types)
    for t, out in zip(types, outs):
        out = np.asarray(out)
        assert (out.shape, out.dtype.name) == (t.shape, t.dtype), f"{op}: {t} vs {out.shape}"


@pytest.mark.parametrize("op,i,case", CASES, ids=IDS)
def test_kernel_leaves_inputs_alone(op, i, case):
    """Kernels are pure: the interpreter hands them arrays the caller still owns."""
    opdef = irgraph.get_op(op)
    inputs = [np.array(a) for a in case.inputs]
    for a in inputs:
        a.setflags(write=False)
    with np.errstate(all="ignore"):
        opdef.run(inputs, opdef.check_attrs(case.attrs))
    for a, orig in zip(inputs, case.inputs):
        np.testing.assert_array_equal(a, orig)


@pytest.mark.parametrize("op,i,case", CASES, ids=IDS)
def test_print_parse_print_is_identity(op, i, case):
    g = build(op, case)
    text = str(g)
    back = irgraph.parse(text)
    assert str(back) == text
    assert back == g
    assert irgraph.parse(str(back)) == back


@pytest.mark.parametrize("op", sorted(irgraph.all_ops()))
def test_op_is_differentiable_or_says_why(op):
    opdef = irgraph.get_op(op)
    assert opdef.differentiable or opdef.nondiff_reason.strip()
    if not opdef.differentiable:
        assert len(opdef.nondiff_reason) > 5


@pytest.mark.parametrize("op,i,case", CASES, ids=IDS)
def test_cost_is_non_negative_ints(op, i, case):
    g = build(op, case)
    node = g.nodes[0]
    cost = node.opdef.cost([v.type for v in node.inputs], [v.type for v in node.outputs],
                           node.attrs)
    assert isinstance(cost, Cost)
    for field in (cost.flops, cost.bytes):
        assert isinstance(field, (int, np.integer)) and not isinstance(field, bool)
        assert field >= 0


@pytest.mark.parametrize("op,i,case", CASES, ids=IDS)
def test_interpreter_runs_each_sample(op, i, case):
    """The verified one-node graph runs on the reference backend with the kernel's result."""
    import irgraph.backends as backends
    g = build(op, case)
    irgraph.verify(g)
    got = backends.compile(g, "reference")(*case.inputs)
    opdef = irgraph.get_op(op)
    with np.errstate(all="ignore"):
        want = opdef.run(list(case.inputs), opdef.check_attrs(case.attrs))
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ attributes of every kind
@pytest.fixture
def any_attr_op(monkeypatch):
    """A temporary op with one attribute of each kind the text format knows."""
    op = OpDef("test.attrs", lambda x, **kw: x, {
        "body": Attr(a_optional(a_graph), None), "arr": Attr(a_optional(a_array), None),
        "f": Attr(a_float, 0.0), "s": Attr(a_str, ""), "anything": Attr(a_any, None)}, 1,
        nondiff_reason="test op")
    op.type_rule(lambda x, **kw: x)
    monkeypatch.setitem(_REGISTRY, op.name, op)
    return op.name


def _body() -> Graph:
    sub = Graph("body")
    x = sub.add_input("h", TensorType((2,), "float32"))
    p = sub.add_param("w", TensorType((2,), "float32"))
    sub.set_outputs([sub.op("tanh", sub.op("add", x, p, loc="model.py:3"))])
    return sub


ATTR_VALUES = [
    {"f": 1e-7}, {"f": float("inf")}, {"f": float("-inf")}, {"f": 1e300}, {"f": -0.0},
    {"f": 2.5e-320}, {"s": 'quote " backslash \\ newline \n tab \t unicode \u00e9'},
    {"s": "graph %x = add(%y) { } # not a comment"}, {"anything": None},
    {"anything": (1, (2.5, "a", (None, True)), (), False)}, {"anything": -7},
    {"arr": np.arange(6, dtype=np.float32).reshape(2, 3) / 7},
    {"arr": np.array([np.inf, -np.inf, 1e-38], np.float32)},
    {"arr": np.array(3, np.int64)}, {"arr": np.zeros((0, 3), np.int32)},
    {"arr": np.array([[True], [False]])},
    {"arr": np.array([2 ** 62, -2 ** 62], np.int64)},
    {"body": _body()},
    {"body": _body(), "arr": np.ones((1,), np.float64), "f": 3.0, "s": "x",
     "anything": ("nested", [1, [2]])},
]


@pytest.mark.parametrize("attrs", ATTR_VALUES, ids=range(len(ATTR_VALUES)))
def test_attribute_kinds_round_trip(any_attr_op, attrs):
    g = Graph("attrs")
    x = g.add_input("x", TensorType((2,), "float32"))
    g.set_outputs([g.op(any_attr_op, x, loc="file.py:12", **attrs)])
    text = str(g)
    back = irgraph.parse(text)
    assert str(back) == text
    got = back.nodes[0].attrs
    for key, want in attrs.items():
        if isinstance(want, np.ndarray):
            assert got[key].dtype == want.dtype and got[key].shape == want.shape
            np.testing.assert_array_equal(got[key], want)
        elif isinstance(want, float):
            assert math.copysign(1, got[key]) == math.copysign(1, want)
            assert got[key] == want
        elif isinstance(want, Graph):
            assert got[key] == want and got[key].nodes[0].loc == "model.py:3"
        elif key == "anything" and isinstance(want, tuple):
            assert got[key] == a_any(want)
        else:
            assert got[key] == want
    assert back.nodes[0].loc == "file.py:12"


def test_nan_attribute_round_trips(any_attr_op):
    g = Graph("nan")
    x = g.add_input("x", TensorType((2,), "float32"))
    g.set_outputs([g.op(any_attr_op, x, f=float("nan"), arr=np.array([np.nan], np.float64))])
    back = irgraph.parse(str(g))
    assert math.isnan(back.nodes[0].attrs["f"])
    assert np.isnan(back.nodes[0].attrs["arr"]).all()
    assert str(back) == str(g)


def test_float32_array_attributes_round_trip_bit_exactly(any_attr_op):
    arr = np.random.default_rng(0).standard_normal(50).astype(np.float32)
    g = Graph("bits")
    x = g.add_input("x", TensorType((2,), "float32"))
    g.set_outputs([g.op(any_attr_op, x, arr=arr)])
    got = irgraph.parse(str(g)).nodes[0].attrs["arr"]
    assert got.tobytes() == arr.tobytes()
