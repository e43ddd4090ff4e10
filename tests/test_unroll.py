"""BPTT: the unroll pass (eq. 10.1-10.7), the rolled reverse-time scan, checkpoint recompute
and truncation, checked against an independent numpy implementation of eq. 10.17-10.21 (and
the parameter gradients that follow from them), against torch.nn.RNN + cross-entropy, and
against each other."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import irgraph.frontend as fe
from irgraph.frontend import nn
from irgraph import parse, verify
from irgraph.interpreter import interpret
from irgraph.passes.autodiff import value_and_grad
from irgraph.passes.unroll import (bptt, save_states, scan_length, stored_state_bytes, truncate,
                           unroll)
from tests.samples.recurrence import SAMPLES


class LossOf(nn.Module):
    """Wraps a chapter 10 model so that tracing names its parameters."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x, y):
        return self.m.loss(x, y)


def make_model(d=3, h=4, c=5, seed=0):
    fe.manual_seed(seed)
    model = nn.RNNSequenceModel(d, h, c)
    for p in model.parameters():
        p.data = p.data.astype(np.float64) * 2.0       # larger weights: livelier gradients
    return model


def loss_graph(model, steps, batch=2, d=3):
    return fe.trace(LossOf(model), fe.TensorSpec((steps, batch, d), "float64"),
                    fe.TensorSpec((steps, batch), "int64"), name="seq_nll")


def data(steps, batch=2, d=3, c=5, seed=1):
    r = np.random.default_rng(seed)
    return r.standard_normal((steps, batch, d)), r.integers(0, c, (steps, batch))


def arguments(g, model, x, y):
    params = dict(LossOf(model).named_parameters())
    return [x, y] + [params[p.name].data for p in g.params]


def grads_by_name(g, outs):
    return {p.name.split(".", 1)[1]: o for p, o in zip(g.params, outs[1:])}


# ------------------------------------------------------------------ numpy eq. 10.8-10.21
def numpy_bptt(model, x, y, truncate_k=None):
    """Forward eq. 10.8-10.14 and backward eq. 10.17-10.21 written out in numpy (row vectors:
    a = b + h W^T + x U^T, o = c + h V^T). ``truncate_k``: no gradient crosses the start of a
    chunk of k steps."""
    U, W = model.rnn.weight_ih_l0.data, model.rnn.weight_hh_l0.data
    b = model.rnn.bias_ih_l0.data + model.rnn.bias_hh_l0.data
    V, c = model.out.weight.data, model.out.bias.data
    steps, batch, _ = x.shape
    hs = [np.zeros((batch, W.shape[0]))]
    go, loss = [], 0.0
    for t in range(steps):
        hs.append(np.tanh(b + hs[-1] @ W.T + x[t] @ U.T))          # eq. 10.8-10.9
        o = c + hs[-1] @ V.T                                         # eq. 10.10
        p = np.exp(o - o.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)                                 # eq. 10.11
        loss -= np.log(p[np.arange(batch), y[t]]).sum()              # eq. 10.12-10.14
        onehot = np.eye(o.shape[1])[y[t]]
        go.append(p - onehot)                                        # eq. 10.17-10.18
    grads = {k: 0.0 for k in ("U", "W", "b", "V", "c")}
    gh_next = None
    for t in reversed(range(steps)):
        gh = go[t] @ V                                               # eq. 10.19
        cut = truncate_k is not None and (t + 1) % truncate_k == 0
        if gh_next is not None and not cut:
            gh = gh + (gh_next * (1 - hs[t + 2] ** 2)) @ W           # eq. 10.20-10.21
        ga = gh * (1 - hs[t + 1] ** 2)
        grads["c"] = grads["c"] + go[t].sum(0)
        grads["V"] = grads["V"] + go[t].T @ hs[t + 1]
        grads["b"] = grads["b"] + ga.sum(0)
        grads["W"] = grads["W"] + ga.T @ hs[t]
        grads["U"] = grads["U"] + ga.T @ x[t]
        gh_next = gh
    return loss, grads


def check_against_numpy(got: dict, loss, want_loss, want):
    np.testing.assert_allclose(loss, want_loss, rtol=1e-10)
    pairs = {"rnn.weight_ih_l0": "U", "rnn.weight_hh_l0": "W", "rnn.bias_ih_l0": "b",
             "rnn.bias_hh_l0": "b", "out.weight": "V", "out.bias": "c"}
    for name, key in pairs.items():
        np.testing.assert_allclose(got[name], want[key], rtol=1e-9, atol=1e-11,
                                   err_msg=name)


# ------------------------------------------------------------------ unroll
@pytest.mark.parametrize("i", range(len(SAMPLES["scan"])))
def test_unroll_keeps_values_of_every_scan_sample(i):
    """Unfolding (eq. 10.1-10.7) leaves no scan and computes the same outputs in every mode."""
    from tests.helpers import build
    case = SAMPLES["scan"][i]
    g = build("scan", case)
    u = unroll(g)
    verify(u)
    assert not any(n.op == "scan" for n in u.nodes)
    assert parse(str(u)) == u
    for a, b in zip(interpret(u, case.inputs), interpret(g, case.inputs)):
        np.testing.assert_array_equal(a, b)


def test_unrolled_parameter_is_one_value_used_at_every_step():
    """Eq. 10.1-10.7: the unfolded graph uses the same W at each of the tau steps."""
    g = loss_graph(make_model(), steps=6)
    u = unroll(g)
    w = u.param("m.rnn.weight_hh_l0")
    users = [n for n in u.nodes if any(v is w for v in n.inputs)]
    assert len(users) == 1 and users[0].op == "transpose"    # W^T, computed once
    wt = users[0].outputs[0]
    assert sum(1 for n in u.nodes if any(v is wt for v in n.inputs)) == 6


@pytest.mark.parametrize("mode", ["unrolled", "rolled"])
def test_bptt_gradients_equal_numpy_eq_10_17_to_10_21(mode):
    model = make_model()
    x, y = data(7)
    g = loss_graph(model, 7)
    vg = bptt(g, mode=mode)
    assert any(n.op == "scan" for n in vg.nodes) == (mode == "rolled")
    outs = interpret(vg, arguments(g, model, x, y))
    want_loss, want = numpy_bptt(model, x, y)
    check_against_numpy(grads_by_name(g, outs), outs[0], want_loss, want)


@pytest.mark.parametrize("mode", ["unrolled", "rolled"])
def test_bptt_gradients_equal_torch_rnn_with_cross_entropy(mode):
    model = make_model(seed=3)
    x, y = data(6, seed=4)
    g = loss_graph(model, 6)
    outs = interpret(bptt(g, mode=mode), arguments(g, model, x, y))
    rnn = torch.nn.RNN(3, 4).double()
    lin = torch.nn.Linear(4, 5).double()
    with torch.no_grad():
        for name, p in rnn.named_parameters():
            p.copy_(torch.from_numpy(getattr(model.rnn, name).data))
        lin.weight.copy_(torch.from_numpy(model.out.weight.data))
        lin.bias.copy_(torch.from_numpy(model.out.bias.data))
    hs, _ = rnn(torch.from_numpy(x))
    loss = torch.nn.functional.cross_entropy(lin(hs).reshape(-1, 5),
                                             torch.from_numpy(y).reshape(-1), reduction="sum")
    loss.backward()
    np.testing.assert_allclose(outs[0], loss.item(), rtol=1e-12)
    got = grads_by_name(g, outs)
    for name, p in list(rnn.named_parameters()):
        np.testing.assert_allclose(got["rnn." + name], p.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got["out.weight"], lin.weight.grad.numpy(), rtol=1e-9)


@pytest.mark.parametrize("kw", [dict(), dict(reverse=True), dict(masked=True),
                                dict(masked=True, reverse=True)])
def test_rolled_and_unrolled_gradients_agree_for_every_mode(kw):
    """The same loss through a scan in each mode: unrolled BPTT == rolled BPTT (also with
    checkpoints every 3 states, which recomputes the rest)."""
    from tests.samples.recurrence import elman
    from irgraph import Graph, TensorType
    g = Graph("f")
    h0 = g.add_input("h0", TensorType((2, 3), "float64"))
    xs = g.add_input("xs", TensorType((8, 2, 2), "float64"))
    extra = [g.add_input("m", TensorType((8, 2), "bool"))] if kw.get("masked") else []
    w = g.add_param("W", TensorType((3, 3), "float64"))
    u = g.add_param("U", TensorType((2, 3), "float64"))
    hT, hs = g.op("scan", h0, xs, *extra, w, u, body=elman(), num_carry=1, num_seq=1, **kw)
    g.set_outputs([g.op("add", g.op("sum", g.op("mul", hs, hs)), g.op("sum", hT))])
    r = np.random.default_rng(0)
    args = [r.standard_normal(v.shape) if v.type.is_float else r.random(v.shape) > 0.3
            for v in g.arguments]
    wrt = ["h0", "xs", "W", "U"]
    ref = interpret(bptt(g, wrt, mode="unrolled"), args)
    for ck in (1, 3):
        got = interpret(bptt(g, wrt, mode="rolled", checkpoint=ck), args)
        for a, b in zip(got, ref):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


def node_count(g) -> int:
    """Nodes of a graph, counting those of scan bodies too (code size)."""
    return sum(1 + (node_count(n.attrs["body"]) if n.op == "scan" else 0) for n in g.nodes)


def test_rolled_gradient_graph_size_does_not_grow_with_tau():
    rolled, unrolled = {}, {}
    for steps in (4, 16, 64):
        g = loss_graph(make_model(), steps)
        rolled[steps] = node_count(bptt(g, mode="rolled"))
        unrolled[steps] = node_count(bptt(g, mode="unrolled"))
    assert rolled[4] == rolled[16] == rolled[64]
    assert unrolled[64] > 10 * unrolled[4]                  # unrolled grows linearly


def test_auto_mode_unrolls_short_scans_and_keeps_long_ones_rolled():
    short, long = loss_graph(make_model(), 5), loss_graph(make_model(), 20)
    assert not any(n.op == "scan" for n in bptt(short, threshold=8).nodes)
    assert any(n.op == "scan" for n in bptt(long, threshold=8).nodes)
    assert any(n.op == "scan" for n in unroll(long, max_length=8).nodes)


def test_saved_states_are_the_forward_scan_outputs_and_cost_O_tau_bytes():
    """save_states: the forward scan itself keeps its tau states (no second forward pass);
    their bytes grow linearly with tau, and checkpoints every k keep ceil(tau/k)."""
    model = make_model()
    per_state = 2 * 4 * 8                                    # (batch, hidden) float64
    for steps in (6, 12):
        g = save_states(loss_graph(model, steps))
        assert stored_state_bytes(g) == steps * per_state
        assert stored_state_bytes(save_states(loss_graph(model, steps), every=4)) == \
            -(-steps // 4) * per_state
        vg = value_and_grad(g)
        forward = [n for n in vg.nodes if n.op == "scan" and not n.attrs["reverse"]]
        assert len(forward) == 1


def test_merge_scans_runs_the_forward_once_after_plain_autodiff():
    """value_and_grad without save_states: the VJP rule adds a state-keeping twin of the
    forward scan; merge_scans keeps one forward scan and the same values."""
    from irgraph.passes.unroll import merge_scans
    model = make_model()
    x, y = data(6)
    g = loss_graph(model, 6)
    vg = value_and_grad(g)
    merged = merge_scans(vg)

    def forward_scans(graph):
        return sum(1 for n in graph.nodes if n.op == "scan" and not n.attrs["reverse"])
    assert (forward_scans(vg), forward_scans(merged)) == (2, 1)
    for a, b in zip(interpret(merged, arguments(g, model, x, y)),
                    interpret(vg, arguments(g, model, x, y))):
        np.testing.assert_array_equal(a, b)


def test_memory_planner_sees_the_stored_states_and_the_recompute_saving():
    """Peak live bytes (passes/memory.py) of the gradient graph: keeping all tau states costs
    what the stored states weigh more than keeping every 4th; the gap grows with tau."""
    from irgraph.passes.memory import plan_memory
    gaps = {}
    for steps in (8, 16):
        g = loss_graph(make_model(), steps)
        full = plan_memory(bptt(g, mode="rolled")).peak_live_bytes
        ck = plan_memory(bptt(g, mode="rolled", checkpoint=4)).peak_live_bytes
        gaps[steps] = full - ck
        saved = stored_state_bytes(save_states(g)) - stored_state_bytes(save_states(g, 4))
        assert 0 < gaps[steps] <= saved + 64 * 8
    assert gaps[16] > gaps[8]


@pytest.mark.parametrize("mode", ["unrolled", "rolled"])
def test_truncated_bptt_equals_numpy_truncation(mode):
    """Gradients flow back at most k steps: the numpy recurrence (eq. 10.21) with the term
    from the next chunk dropped; the loss (forward) is unchanged."""
    model = make_model(seed=5)
    x, y = data(10, seed=6)
    g = loss_graph(model, 10)
    t = truncate(g, 4)
    assert parse(str(t)) == t
    np.testing.assert_allclose(interpret(t, arguments(g, model, x, y))[0],
                               interpret(g, arguments(g, model, x, y))[0], rtol=1e-14)
    outs = interpret(bptt(g, mode=mode, truncate_k=4), arguments(g, model, x, y))
    want_loss, want = numpy_bptt(model, x, y, truncate_k=4)
    check_against_numpy(grads_by_name(g, outs), outs[0], want_loss, want)
    _, full = numpy_bptt(model, x, y)
    assert not np.allclose(want["W"], full["W"])             # the truncation mattered


def test_truncated_state_carried_across_chunks_by_the_caller():
    """Chunked training: the final state of one compiled chunk is the next one's initial
    state; the chunks reproduce the hidden states of the whole sequence."""
    fe.manual_seed(0)
    rnn = nn.RNN(3, 4)

    class Chunk(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = rnn

        def forward(self, x, h):
            return self.rnn(x, h)
    whole = fe.compile(Chunk(), fe.TensorSpec((9, 2, 3)), fe.TensorSpec((1, 2, 4)))
    chunk = fe.compile(Chunk(), fe.TensorSpec((3, 2, 3)), fe.TensorSpec((1, 2, 4)))
    x = np.random.default_rng(0).standard_normal((9, 2, 3)).astype(np.float32)
    h = np.zeros((1, 2, 4), np.float32)
    outs = []
    for i in range(3):
        o, h = chunk(x[3 * i:3 * i + 3], h)
        outs.append(o)
    o_all, h_all = whole(x, np.zeros((1, 2, 4), np.float32))
    np.testing.assert_allclose(np.concatenate(outs), o_all, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h, h_all, rtol=1e-5, atol=1e-6)


def test_scan_lengths_and_bad_modes():
    g = loss_graph(make_model(), 5)
    assert [scan_length(n) for n in g.nodes if n.op == "scan"] == [5]
    with pytest.raises(ValueError, match="mode"):
        bptt(g, mode="sideways")
    with pytest.raises(ValueError, match="k must be"):
        truncate(g, 0)
    with pytest.raises(ValueError, match="every"):
        save_states(g, 0)
