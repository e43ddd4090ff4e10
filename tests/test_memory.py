"""Memory planning: liveness worked by hand, buffer reuse and in-place updates, donated
parameter buffers of a training step, alignment, and a deep MLP whose peak memory follows its
widest layer, not its depth. Every plan is also executed: values stored at their planned
places give the reference results."""
from __future__ import annotations

import numpy as np
import pytest

import irgraph.frontend as fe
from irgraph.frontend import nn, optim
from irgraph import Graph, TensorType
from irgraph.interpreter import interpret
from irgraph.passes.manager import PassManager
from irgraph.passes.memory import liveness, plan_memory
from tests.helpers import run_with_plan


def chain() -> Graph:
    """a = exp(x); b = tanh(a); c = a + b; d = -c  (x: f32[4], 16 bytes per value)."""
    g = Graph("chain")
    x = g.add_input("x", TensorType((4,)))
    a = g.op("exp", x)
    b = g.op("tanh", a)
    c = g.op("add", a, b)
    g.set_outputs([g.op("neg", c)])
    return g


def test_liveness_worked_by_hand():
    g = chain()
    live = {v.name: t for v, t in liveness(g).items()}
    a, b, c, d = (n.outputs[0].name for n in g.nodes)
    assert live == {a: (0, 2), b: (1, 2), c: (2, 3), d: (3, 4)}


def test_reuse_and_in_place_on_the_chain():
    """c overwrites a (a dies at c), d overwrites c: two storages of 64 aligned bytes."""
    g = chain()
    plan = plan_memory(g)
    plan.check()
    a, b, c, d = (n.outputs[0].name for n in g.nodes)
    assert plan.inplace == [(2, c, a), (3, d, c)]
    assert plan.buffers[c].storage == plan.buffers[a].storage == plan.buffers[d].storage
    assert plan.buffers[b].storage != plan.buffers[a].storage
    assert plan.arena_bytes == plan.peak_live_bytes == 128
    assert plan.naive_bytes == 4 * 64
    xs = np.array([0.5, -1.0, 2.0, 0.0], np.float32)
    np.testing.assert_array_equal(run_with_plan(g, plan, [xs])[0][0], interpret(g, [xs])[0])


def test_alignment_and_disjoint_live_storages():
    g = Graph("odd")
    x = g.add_input("x", TensorType((3, 5)))
    a = g.op("exp", x)
    s = g.op("sum", a, axis=(1,))
    t = g.op("transpose", a, perm=(1, 0))
    g.set_outputs([g.op("matmul", t, g.op("reshape", s, shape=(3, 1))), s])
    for align in (1, 16, 256):
        plan = plan_memory(g, alignment=align)
        plan.check()
        assert all(b.offset % align == 0 for b in plan.buffers.values() if b.kind == "arena")
    with pytest.raises(ValueError, match="power of two"):
        plan_memory(g, alignment=24)
    plan = plan_memory(g)
    reshaped = g.nodes[3].outputs[0].name
    assert plan.buffers[reshaped].reuses == s.name           # a view of s
    xs = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    for got, want in zip(run_with_plan(g, plan, [xs])[0], interpret(g, [xs])):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def mlp_peak(widths: list[int], batch: int = 8) -> tuple[int, int]:
    fe.manual_seed(0)
    layers = []
    for i, o in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(i, o), nn.ReLU()]
    g = PassManager("default").run(fe.trace(nn.Sequential(*layers),
                                            fe.TensorSpec((batch, widths[0]))))
    plan = plan_memory(g)
    plan.check()
    return plan.arena_bytes, plan.peak_live_bytes


def test_deep_mlp_peak_follows_the_widest_layer_not_the_depth():
    shallow = mlp_peak([32] * 3)
    deep = mlp_peak([32] * 25)
    assert deep == shallow                        # 12x the layers, the same peak
    wide_once = mlp_peak([32] * 12 + [256] + [32] * 12)
    assert wide_once[0] > 2 * deep[0]             # one wide layer raises it
    wider = mlp_peak([32] * 12 + [512] + [32] * 12)
    assert wider[0] > 1.5 * wide_once[0]          # and it grows with that layer's width
    assert mlp_peak([32] * 3 + [512] + [32] * 3) == wider   # whatever the depth around it


def test_training_step_updates_parameters_in_their_donated_buffers():
    fe.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    step = fe.compile_train(model, nn.CrossEntropyLoss(), optim.SGD(lr=0.1, momentum=0.5),
                            fe.TensorSpec((5, 3)), fe.TensorSpec((5,), "int64"))
    g = step.graph
    plan = plan_memory(g)
    plan.check()
    args = g.arguments
    in_place = {o for o, a in g.donations.items()
                if plan.buffers[g.outputs[o].name].kind == "argument"}
    assert in_place == set(g.donations)                  # every update written in place
    for o in in_place:
        assert plan.buffers[g.outputs[o].name].arg == g.donations[o]
    rng = np.random.default_rng(2)
    vals = []
    for v in args:
        if v.type.dtype == "int64":
            vals.append(rng.integers(0, 2, v.shape))
        else:
            vals.append(rng.uniform(0.1, 0.5, v.shape).astype(v.type.np_dtype))
    want = interpret(g, vals)
    outs, bufs = run_with_plan(g, plan, vals)
    for o, a in g.donations.items():
        np.testing.assert_allclose(bufs[a], want[o], rtol=1e-6)   # the argument now holds it
    np.testing.assert_allclose(outs[0], want[0], rtol=1e-6)


def test_donation_is_not_in_place_while_the_old_value_is_still_read():
    """p' = p * 2 donated to p, but p is read again after: p' goes to the arena."""
    g = Graph("late")
    p = g.add_param("p", TensorType((4,)))
    new = g.op("mul", p, g.op("full", shape=(), value=2.0))
    later = g.op("add", p, new)
    g.set_outputs([later, new])
    g.donations = {1: 0}
    plan = plan_memory(g)
    assert plan.buffers[new.name].kind == "arena"
    ps = np.arange(4, dtype=np.float32)
    outs, _ = run_with_plan(g, plan, [ps])
    np.testing.assert_array_equal(outs[0], ps * 3)


def test_report_names_the_totals():
    text = plan_memory(chain()).report()
    assert "arena 128 B" in text and "peak live 128 B" in text and "2 in place" in text


def test_donation_is_not_in_place_when_the_argument_itself_is_returned():
    """Found by the property test: outputs (w, -x) with -x donated to w. Writing -x into w's
    buffer would change the first output, which is w as it was."""
    g = Graph("ret")
    x = g.add_input("x", TensorType((2,)))
    w = g.add_param("w", TensorType((2,)))
    new = g.op("neg", x)
    g.set_outputs([w, new])
    g.donations = {1: 1}
    plan = plan_memory(g)
    assert plan.buffers[new.name].kind == "arena"
    outs, _ = run_with_plan(g, plan, [np.ones(2, np.float32), np.full(2, 5.0, np.float32)])
    np.testing.assert_array_equal(outs[0], [5.0, 5.0])
