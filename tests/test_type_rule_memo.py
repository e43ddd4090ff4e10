"""Type rules are remembered per op (``OpDef.infer``): equal arguments give the rule's
types without running it again, arguments that only look alike (0.0 and -0.0, True and 1,
a list and a tuple) are told apart, failures are never remembered, a new rule forgets."""
from __future__ import annotations

import math

import numpy as np
import pytest

from irgraph import Graph, IRError, TensorType
from irgraph.registry import Attr, OpDef, a_any, get_op


def counted_op():
    """An op whose rule counts its runs; its result shows each argument it was given."""
    op = OpDef(name="probe", kernel=lambda x, *, v, w: x, num_inputs=1,
               attrs={"v": Attr(a_any, 0.0), "w": Attr(a_any, None)}, traits=frozenset())
    runs = []

    @op.type_rule
    def rule(x, *, v, w):
        runs.append((x, v, w))
        if isinstance(v, float) and v == 0:
            n = 1 if math.copysign(1.0, v) < 0 else 2
        else:
            n = 3 if v is True else 4
        if isinstance(w, str) and w == "bad":
            raise ValueError("w may not be 'bad'")
        return TensorType((n,) + x.shape, x.dtype)
    return op, runs


F32 = TensorType((5,))


def test_equal_arguments_run_the_rule_once_and_give_fresh_lists():
    op, runs = counted_op()
    first = op.infer([F32], {"v": 0.0, "w": (1, 2)})
    first.append("junk")                          # the caller's list, not the remembered one
    again = op.infer([TensorType((5,))], {"v": 0.0, "w": (1, 2)})
    assert again == [TensorType((2, 5))] and len(runs) == 1
    assert op.infer([TensorType((6,))], {"v": 0.0, "w": (1, 2)}) == [TensorType((2, 6))]
    assert op.infer([TensorType((5,), "float64")], {"v": 0.0, "w": (1, 2)}) == \
        [TensorType((2, 5), "float64")]
    assert len(runs) == 3


@pytest.mark.parametrize("a, b", [(0.0, -0.0), (True, 1), (1, 1.0), ((1, 2), (1, 2.0)),
                                  (float("nan"), 0.0)])
def test_arguments_that_compare_equal_are_told_apart(a, b):
    op, runs = counted_op()
    want_a = TensorType((_n(a),) + F32.shape)
    want_b = TensorType((_n(b),) + F32.shape)
    assert op.infer([F32], {"v": a, "w": None}) == [want_a]
    assert op.infer([F32], {"v": b, "w": None}) == [want_b]
    assert op.infer([F32], {"v": a, "w": None}) == [want_a]
    assert len(runs) == 2


def _n(v) -> int:
    if isinstance(v, float) and v == 0:
        return 1 if math.copysign(1.0, v) < 0 else 2
    return 3 if v is True else 4


def test_unkeyable_attributes_always_run_the_rule():
    op, runs = counted_op()
    arr = np.zeros(3)
    for _ in range(2):
        assert op.infer([F32], {"v": 0.0, "w": arr}) == [TensorType((2, 5))]
        assert op.infer([F32], {"v": 0.0, "w": [1, 2]}) == [TensorType((2, 5))]
    assert len(runs) == 4


def test_failures_are_reported_every_time_and_a_new_rule_forgets():
    op, runs = counted_op()
    for _ in range(2):
        with pytest.raises(IRError, match="cannot take .*w may not be 'bad'"):
            op.infer([F32], {"v": 0.0, "w": "bad"})
    assert len(runs) == 2
    assert op.infer([F32], {"v": 1.5, "w": None}) == [TensorType((4, 5))]
    op.type_rule(lambda x, *, v, w: TensorType((9,), x.dtype))
    assert op.infer([F32], {"v": 1.5, "w": None}) == [TensorType((9,))]
    op._type_rule = lambda x, *, v, w: TensorType((8,), x.dtype)     # set without the decorator
    assert op.infer([F32], {"v": 1.5, "w": None}) == [TensorType((8,))]


def test_graphs_get_the_registered_rules_types():
    """Building the same node twice (a pass copying a graph) gives the types of the rule,
    also for rules whose result depends on attributes (axes, keepdims)."""
    g = Graph("g")
    x = g.add_input("x", TensorType((2, 3, 4)))
    for _ in range(2):
        assert g.op("sum", x, axis=(1,), keepdims=True).type == TensorType((2, 1, 4))
        assert g.op("sum", x, axis=(1,), keepdims=False).type == TensorType((2, 4))
        assert g.op("sum", x, axis=(0, 2)).type == TensorType((3,))
    with pytest.raises(IRError):
        g.op("add", x, g.add_input("y", TensorType((5,))))
    assert get_op("sum").infer([TensorType((7, 2))], {"axis": (0,), "keepdims": False,
                                                      **_defaults("sum", {"axis", "keepdims"})}
                               ) == [TensorType((2,))]


def _defaults(name: str, given: set) -> dict:
    return {k: a.default for k, a in get_op(name).attrs.items() if k not in given}
