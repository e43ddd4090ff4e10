"""The recurrence node of the IR (fig. 10.2): semantics of ``scan`` against plain numpy loops
(forward, reverse, masked, no sequences), its text form, the verifier's and type rule's
errors, its cost, and ``stop_gradient``."""
from __future__ import annotations

import numpy as np
import pytest

import irgraph.frontend as fe
from irgraph import Graph, IRError, TensorType, parse, verify
from irgraph.interpreter import ExecutionError, interpret
from irgraph.passes.autodiff import grad
from tests.helpers import elman_args as args
from tests.helpers import elman_graph, numpy_elman
from tests.samples.recurrence import counter, elman

F64 = "float64"


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_scan_runs_the_body_once_per_step_like_a_numpy_loop(reverse, masked):
    a = args(masked=masked)
    hT, hs = interpret(elman_graph(reverse=reverse, masked=masked), a)
    mask = a[2] if masked else None
    want_h, want_ys = numpy_elman(a[0], a[1], a[-2], a[-1], reverse, mask)
    np.testing.assert_allclose(hT, want_h, rtol=1e-12)
    np.testing.assert_allclose(hs, want_ys, rtol=1e-12)


def test_saved_states_are_the_carries_entering_each_kth_step():
    a = args(steps=5)
    outs = interpret(elman_graph(steps=5, save_every=2), a)
    _, hs = numpy_elman(a[0], a[1], a[2], a[3])
    np.testing.assert_allclose(outs[2], np.stack([a[0], hs[1], hs[3]]), rtol=1e-12)
    rev = interpret(elman_graph(steps=5, save_every=2, reverse=True), a)
    _, hr = numpy_elman(a[0], a[1], a[2], a[3], reverse=True)
    np.testing.assert_allclose(rev[2], np.stack([a[0], hr[3], hr[1]]), rtol=1e-12)


def test_scan_without_sequences_counts_its_steps_with_an_integer_carry():
    g = Graph("count")
    h0 = g.add_input("h0", TensorType((3,), F64))
    i0 = g.add_input("i0", TensorType((), "int64"))
    w = g.add_param("W", TensorType((3, 3), F64))
    g.set_outputs(g.add_node("scan", [h0, i0, w], dict(body=counter(), num_carry=2, num_seq=0,
                                                       length=4)))
    r = np.random.default_rng(1)
    h, wv = r.standard_normal(3), r.standard_normal((3, 3))
    hT, iT, steps = interpret(g, [h, np.array(0), wv])
    for t in range(1, 5):
        h = np.tanh(h @ wv) * (1 + t / 10)
    np.testing.assert_allclose(hT, h, rtol=1e-12)
    assert iT == 4 and steps.tolist() == [1, 2, 3, 4]


def test_text_form_round_trips_with_the_body_inline():
    for attrs in (dict(), dict(reverse=True, masked=True, save_every=3)):
        g = elman_graph(**attrs)
        text = str(g)
        assert "body=graph elman(%h: f64[2,3], %x: f64[2,2]) params(%W" in text
        assert parse(text) == g
        assert str(parse(text)) == text


def test_traced_rnn_prints_parses_and_runs_the_same():
    fe.manual_seed(0)
    model = fe.nn.RNN(3, 4, num_layers=2, bidirectional=True)

    class M(fe.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = model

        def forward(self, x, n):
            return self.rnn(x, lengths=n)
    g = fe.trace(M(), fe.TensorSpec((5, 2, 3)), fe.TensorSpec((2,), "int64"))
    back = parse(str(g))
    assert back == g and verify(back)
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    a = [x, np.array([5, 2])] + [dict(M().named_parameters())[p.name].data for p in g.params]
    for u, v in zip(interpret(back, a), interpret(g, a)):
        np.testing.assert_array_equal(u, v)


def build(inputs, **attrs):
    g = Graph("bad")
    vals = [g.add_input(f"a{i}", t) for i, t in enumerate(inputs)]
    return g.add_node("scan", vals, attrs)


T = TensorType


@pytest.mark.parametrize("inputs,attrs,message", [
    ([T((2, 3), F64), T((4, 2, 5), F64), T((3, 3), F64), T((2, 3), F64)], {},
     r"body argument 1 \(%x, a sequence slice\) is f64\[2,2\], the scan gives f64\[2,5\]"),
    ([T((2, 3), F64), T((4, 2, 2), F64), T((3, 3), F64)], {},
     "takes 4 arguments but the scan gives it 3"),
    ([T((2, 3), "float32"), T((4, 2, 2), F64), T((3, 3), F64), T((2, 3), F64)], {},
     r"%h, a carry\) is f64\[2,3\], the scan gives f32\[2,3\]"),
    ([T((2, 3), F64), T((4, 2, 2), F64), T((4, 3), "bool"), T((3, 3), F64), T((2, 3), F64)],
     dict(masked=True), r"mask must be bool\[4,2\]"),
    ([T((2, 3), F64), T((4, 2, 2), F64), T((3, 3), F64), T((2, 3), F64)], dict(length=5),
     "sequences of different lengths"),
])
def test_type_rule_names_what_is_wrong(inputs, attrs, message):
    with pytest.raises(IRError, match=message):
        build(inputs, body=elman(), num_carry=1, num_seq=1, **attrs)


def test_carry_that_changes_type_is_refused():
    body = Graph("grow")
    h = body.add_input("h", T((3,), F64))
    body.set_outputs([body.op("concat", h, h, axis=0)])
    with pytest.raises(IRError, match="new carry .* keeps its type"):
        build([T((3,), F64)], body=body, num_carry=1, num_seq=0, length=2)


def test_scan_without_sequences_needs_a_length():
    body = Graph("id")
    h = body.add_input("h", T((3,), F64))
    body.set_outputs([h])
    with pytest.raises(IRError, match="no sequences and no length"):
        build([T((3,), F64)], body=body, num_carry=1, num_seq=0)


def test_verifier_checks_the_body_graph():
    g = elman_graph()
    body = g.nodes[0].attrs["body"]
    body.nodes[0].outputs[0].type = T((2, 4), F64)      # corrupt the body
    with pytest.raises(IRError, match="subgraph attribute 'body' is invalid"):
        verify(g)


def test_error_inside_the_body_names_the_step_and_the_scan():
    body = Graph("bad_index")
    h = body.add_input("h", T((), "int64"))
    x = body.add_input("x", T((2,), F64))
    logp = body.op("reshape", x, shape=(1, 2))
    loss = body.op("nll_loss", logp, body.op("reshape", h, shape=(1,)))
    body.set_outputs([body.op("add", h, body.op("full", shape=(), value=1.0, dtype="int64")),
                      loss])
    g = Graph("f")
    ins = [g.add_input("h0", T((), "int64")), g.add_input("xs", T((3, 2), F64))]
    g.set_outputs(g.add_node("scan", ins, dict(body=body, num_carry=1, num_seq=1)))
    with pytest.raises(ExecutionError, match=r"step t=2 of the scan body.*nll_loss"):
        interpret(g, [np.array(0), np.zeros((3, 2))])


def test_cost_is_tau_times_the_body_cost():
    c4 = elman_graph(steps=4).nodes[0]
    c8 = elman_graph(steps=8).nodes[0]
    cost = [n.opdef.cost([v.type for v in n.inputs], [v.type for v in n.outputs], n.attrs)
            for n in (c4, c8)]
    assert cost[1].flops == 2 * cost[0].flops > 0
    body_flops = 2 * (2 * 3 * 3 + 2 * 3 * 2) + 2 * 3 + 6 * 2 * 3   # 2 matmuls, add, tanh
    assert cost[0].flops == 4 * body_flops


def test_stop_gradient_is_the_identity_and_blocks_the_gradient():
    g = Graph("f")
    x = g.add_input("x", T((3,), F64))
    y = g.op("mul", x, g.op("stop_gradient", x))
    g.set_outputs([g.op("sum", y)])
    a = np.array([1.0, -2.0, 3.0])
    assert interpret(g, [a])[0] == pytest.approx(14.0)
    np.testing.assert_allclose(interpret(grad(g), [a])[0], a)   # d/dx x*c = c, not 2x
