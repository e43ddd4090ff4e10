"""Graph-level behaviour of the autodiff transform: what the gradient graph contains, errors,
the text format, and an MLP with cross-entropy against torch.autograd."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import irgraph.frontend as fe
import irgraph
from irgraph.frontend import F, nn
from irgraph import Graph, IRError, TensorType, verify
from irgraph.interpreter import interpret
from irgraph.passes.autodiff import VJP_RULES, grad, value_and_grad, vjp

F32 = "float32"


def two_layer() -> Graph:
    """loss = sum(tanh(x W1) W2) + sum(exp(x)) (the exp branch does not touch W1, W2)."""
    g = Graph("two_layer")
    x = g.add_input("x", TensorType((4, 3)))
    w1 = g.add_param("w1", TensorType((3, 5)))
    w2 = g.add_param("w2", TensorType((5, 2)))
    g.add_param("unused", TensorType((7,)))
    h = g.op("tanh", g.op("matmul", x, w1))
    main = g.op("sum", g.op("matmul", h, w2))
    side = g.op("sum", g.op("exp", x))
    g.op("log", g.op("sum", w1))          # dead: computed, never returned
    g.set_outputs([g.op("add", main, side)])
    return verify(g)


def ops(g: Graph) -> list[str]:
    return [n.op for n in g.nodes]


ARGS = [np.random.default_rng(0).standard_normal(s).astype(np.float32)
        for s in ((4, 3), (3, 5), (5, 2), (7,))]


def test_gradient_only_for_the_requested_wrt():
    g2 = grad(two_layer(), wrt=["w2"])
    assert len(g2.outputs) == 1 and g2.outputs[0].shape == (5, 2)
    # h = tanh(x W1) and dW2 = h^T g: nothing flows back into W1, and the forward product
    # h W2 is pruned (its value is not needed by the gradient)
    assert ops(g2).count("matmul") == 2
    g1 = grad(two_layer(), wrt=["w1"])
    assert ops(g1).count("matmul") == 3      # x W1, g W2^T, x^T (..)


def test_inactive_branches_and_dead_forward_nodes_are_pruned():
    g = grad(two_layer(), wrt=["w1", "w2"])
    assert "exp" not in ops(g), "the exp(x) branch does not depend on the weights"
    assert "log" not in ops(g), "a dead forward node stayed"
    # value_and_grad keeps the forward value but still no cotangent for the exp branch
    vg = value_and_grad(two_layer(), wrt=["w1"])
    assert ops(vg).count("exp") == 1 and "log" not in ops(vg)


def test_unused_parameter_gets_zeros():
    (gu,) = interpret(grad(two_layer(), wrt=["unused"]), ARGS)
    assert gu.dtype == np.float32 and gu.shape == (7,)
    assert not gu.any()


def test_default_wrt_is_the_float_parameters():
    g = grad(two_layer())
    assert [v.shape for v in g.outputs] == [(3, 5), (5, 2), (7,)]


def test_gradient_values_match_torch_for_the_two_layer_graph():
    x, w1, w2, u = (torch.tensor(a, requires_grad=True) for a in ARGS)
    (torch.sum(torch.tanh(x @ w1) @ w2) + torch.exp(x).sum()).backward()
    got = interpret(grad(two_layer(), wrt=["x", "w1", "w2"]), ARGS)
    for a, t in zip(got, (x, w1, w2)):
        np.testing.assert_allclose(a, t.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_integer_inputs_are_refused_with_a_clear_error():
    g = Graph("ints")
    i = g.add_input("idx", TensorType((3,), "int64"))
    x = g.add_input("x", TensorType((3,)))
    g.set_outputs([g.op("sum", g.op("mul", x, g.op("cast", i, dtype=F32)))])
    with pytest.raises(IRError, match=r"%idx.*i64\[3\].*not a float tensor"):
        grad(g, wrt=["idx"])
    with pytest.raises(IRError, match=r"'nope'.*arguments"):
        grad(g, wrt=["nope"])
    # the float input is fine, and the integer path carries no gradient
    (gx,) = interpret(grad(g, wrt=["x"]), [np.array([1, 2, 3]), np.ones(3, np.float32)])
    np.testing.assert_array_equal(gx, [1, 2, 3])


def test_grad_of_a_non_scalar_output_is_refused():
    g = Graph("vec")
    x = g.add_input("x", TensorType((3,)))
    g.set_outputs([g.op("exp", x)])
    with pytest.raises(IRError, match=r"scalar.*f32\[3\].*vjp"):
        grad(g)


def test_missing_rule_names_the_op_and_the_user_line(monkeypatch):
    def f(x):
        return F.tanh(x).sum()          # the line the error must name
    line = f.__code__.co_firstlineno + 1
    g = fe.trace(f, fe.TensorSpec((3,)))
    monkeypatch.delitem(VJP_RULES, "tanh")
    with pytest.raises(IRError) as info:
        grad(g)
    msg = str(info.value)
    assert "no VJP rule for op 'tanh'" in msg
    assert f"test_autodiff_graph.py:{line}" in msg


def test_nondifferentiable_ops_pass_no_gradient():
    """argmax/sign/comparisons on the path contribute zero, as in torch."""
    g = Graph("nd")
    x = g.add_input("x", TensorType((2, 3), "float64"))
    s = g.op("sign", x)
    k = g.op("cast", g.op("argmax", x, axis=1), dtype="float64")
    g.set_outputs([g.op("add", g.op("sum", g.op("mul", s, x)), g.op("sum", k))])
    xv = np.array([[1.0, -2.0, 3.0], [-0.5, 0.2, 0.1]])
    (gx,) = interpret(grad(g), [xv])
    np.testing.assert_array_equal(gx, np.sign(xv))


def test_value_and_grad_and_output_index():
    g = Graph("two_out")
    x = g.add_input("x", TensorType((3,), "float64"))
    a = g.op("sum", g.op("square", x))
    b = g.op("sum", g.op("exp", x))
    g.set_outputs([a, b])
    xv = np.array([0.1, -1.0, 2.0])
    va, vb, gb = interpret(value_and_grad(g, of=1, wrt=["x"]), [xv])
    np.testing.assert_allclose([va, vb], [np.sum(xv ** 2), np.sum(np.exp(xv))])
    np.testing.assert_allclose(gb, np.exp(xv))
    # vjp: one cotangent input per output, summed contributions
    v = vjp(g, wrt=["x"])
    assert [a.name for a in v.inputs] == ["x", "ct_0", "ct_1"]
    *_, gx = interpret(v, [xv, np.array(2.0), np.array(-1.0)])
    np.testing.assert_allclose(gx, 4 * xv - np.exp(xv))


def test_gradient_graph_prints_parses_and_verifies():
    for gg in (grad(two_layer()), value_and_grad(two_layer(), wrt=["x"]), vjp(two_layer())):
        verify(gg)
        text = str(gg)
        assert irgraph.parse(text) == gg
        assert str(irgraph.parse(text)) == text


def test_gradient_graph_keeps_the_user_source_lines():
    def f(x):
        return F.sigmoid(x).sum()
    g = grad(fe.trace(f, fe.TensorSpec((3,))))
    line = f"test_autodiff_graph.py:{f.__code__.co_firstlineno + 1}"
    assert all(n.loc == line for n in g.nodes if n.op == "mul")


class WithLoss(nn.Module):
    """Model + cross-entropy as one module, so graph parameters carry the model's names."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x, y):
        return F.cross_entropy(self.model(x), y)


def test_mlp_cross_entropy_gradients_match_torch():
    """A 3-layer MLP with cross-entropy loss (eq. 10.11-10.14): every parameter's gradient."""
    fe.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5), nn.Tanh(),
                          nn.Linear(5, 4))
    rng = np.random.default_rng(4)
    x = rng.standard_normal((7, 6)).astype(np.float32)
    y = rng.integers(0, 4, 7)
    g = fe.trace(WithLoss(model), fe.TensorSpec((7, 6)), fe.TensorSpec((7,), "int64"))
    weights = dict(model.named_parameters())
    names = [p.name.removeprefix("model.") for p in g.params]
    assert sorted(names) == sorted(weights)
    outs = interpret(value_and_grad(g), [x, y] + [weights[n].data for n in names])

    tm = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 5),
                             torch.nn.Tanh(), torch.nn.Linear(5, 4))
    with torch.no_grad():
        for name, p in tm.named_parameters():
            p.copy_(torch.tensor(weights[name].data))
    tl = torch.nn.functional.cross_entropy(tm(torch.tensor(x)), torch.tensor(y))
    tl.backward()
    tgrads = dict(tm.named_parameters())
    np.testing.assert_allclose(outs[0], tl.item(), rtol=1e-6)
    for name, got in zip(names, outs[1:]):
        np.testing.assert_allclose(got, tgrads[name].grad.numpy(), rtol=1e-5, atol=1e-6,
                                   err_msg=name)
