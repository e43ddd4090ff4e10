"""Fusion: elementwise chains, reductions with their prologues and epilogues, and matmul /
convolution epilogues become ``fused`` regions whose results equal the unfused graph's (and
PyTorch's); the regions stay a DAG; gradients flow through them."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import irgraph.frontend as fe
import irgraph
from irgraph.frontend import F, nn
from irgraph import Graph, TensorType
from irgraph.interpreter import interpret
from irgraph.passes.autodiff import grad
from irgraph.passes.fusion import fuse
from irgraph.passes.manager import PassManager

RNG = np.random.default_rng(0)


def fused_nodes(g: Graph):
    return [n for n in g.nodes if n.op == "fused"]


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def test_elementwise_chain_is_one_region_with_broadcast_operands():
    g = Graph("chain")
    x = g.add_input("x", TensorType((5, 7)))
    b = g.add_input("b", TensorType((7,)))
    two = g.op("full", shape=(), value=2.0)
    y = g.op("sigmoid", g.op("mul", g.op("tanh", g.op("add", x, b)), two))
    g.set_outputs([y])
    out = fuse(g)
    (node,) = fused_nodes(out)
    assert len(out.nodes) == 1 and node.attrs["kind"] == "elementwise"
    body = node.attrs["body"]
    assert [n.op for n in body.nodes] == ["add", "tanh", "full", "mul", "sigmoid"]
    assert [v.type for v in body.inputs] == [x.type, b.type]     # the 2.0 is inside
    xs, bs = rand(5, 7), rand(7)
    want = torch.sigmoid(2 * torch.tanh(torch.tensor(xs) + torch.tensor(bs))).numpy()
    np.testing.assert_allclose(interpret(out, [xs, bs])[0], want, rtol=1e-6, atol=1e-7)


def test_reduction_with_prologue_and_epilogue():
    """sqrt(sum(x*x, axis=1) + eps): one region, kind reduction."""
    g = Graph("norm")
    x = g.add_input("x", TensorType((3, 11)))
    s = g.op("sum", g.op("mul", x, x), axis=(1,), keepdims=True)
    g.set_outputs([g.op("sqrt", g.op("add", s, g.op("full", shape=(), value=1e-6)))])
    out = fuse(g)
    (node,) = fused_nodes(out)
    assert node.attrs["kind"] == "reduction" and len(out.nodes) == 1
    xs = rand(3, 11)
    want = np.sqrt((xs.astype(np.float64) ** 2).sum(1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(interpret(out, [xs])[0], want, rtol=1e-6)


def test_matmul_bias_activation_epilogue_matches_torch():
    fe.manual_seed(0)
    model = nn.Sequential(nn.Linear(13, 9), nn.ReLU(), nn.Linear(9, 4), nn.Tanh())
    g = fe.trace(model, fe.TensorSpec((6, 13)))
    out = PassManager("simplify, fuse").run(g)
    kinds = [n.attrs["kind"] for n in fused_nodes(out)]
    assert kinds == ["epilogue", "epilogue"]
    for n in fused_nodes(out):
        assert [m.op for m in n.attrs["body"].nodes][0] == "matmul"
    xs = rand(6, 13)
    tm = torch.nn.Sequential(torch.nn.Linear(13, 9), torch.nn.ReLU(), torch.nn.Linear(9, 4),
                             torch.nn.Tanh())
    with torch.no_grad():
        for i in (0, 2):
            tm[i].weight.copy_(torch.tensor(model[i].weight.data))
            tm[i].bias.copy_(torch.tensor(model[i].bias.data))
        want = tm(torch.tensor(xs)).numpy()
    w = {n: p.data for n, p in model.named_parameters()}
    got = interpret(out, [xs] + [w[p.name] for p in out.params])[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_conv_bias_relu_epilogue():
    fe.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU())
    g = fe.trace(model, fe.TensorSpec((2, 3, 6, 7)))
    out = PassManager("simplify, fuse").run(g)
    epi = [n for n in fused_nodes(out) if n.attrs["kind"] == "epilogue"]
    assert len(epi) == 1 and epi[0].attrs["body"].nodes[0].op == "conv"
    assert "relu" in [n.op for n in epi[0].attrs["body"].nodes]
    xs = rand(2, 3, 6, 7)
    w = {n: p.data for n, p in model.named_parameters()}
    args = [xs] + [w[p.name] for p in g.params]
    np.testing.assert_allclose(interpret(out, args)[0], interpret(g, args)[0], rtol=1e-6)


def test_region_results_are_the_values_read_outside():
    """A value used inside and outside the region becomes a second result."""
    g = Graph("multi")
    x = g.add_input("x", TensorType((4, 4)))
    a = g.op("exp", x)
    b = g.op("mul", a, a)
    c = g.op("matmul", a, x)                             # reads a outside the region
    g.set_outputs([b, c])
    out = fuse(g)
    (region,) = fused_nodes(out)
    assert region.attrs["kind"] == "elementwise" and len(region.outputs) == 2
    assert out.nodes[1].op == "matmul" and out.nodes[1].inputs[0] is region.outputs[0]
    xs = rand(4, 4)
    for got, want in zip(interpret(out, [xs]), interpret(g, [xs])):
        np.testing.assert_array_equal(got, want)


def test_no_region_closes_a_cycle():
    """a = exp(x) starts a region that also takes sum(a); the matmul reads a outside it.
    mul(sum(a), sum(matmul)) fits the region's reduced shape, but joining would need the
    matmul both after the region (it reads a) and before it: the mul stays outside."""
    g = Graph("cycle")
    x = g.add_input("x", TensorType((3, 4)))
    a = g.op("exp", x)
    b = g.op("matmul", g.op("transpose", a, perm=(1, 0)), a)     # an anchor reading a
    c = g.op("mul", g.op("sum", a, axis=(0,), keepdims=True), g.op("sum", b, axis=(0,)))
    d = g.op("add", a, c)
    g.set_outputs([d])
    out = PassManager("fuse").run(g)                    # verifies: topological order holds
    (region,) = fused_nodes(out)
    assert [n.op for n in region.attrs["body"].nodes] == ["exp", "sum"]
    assert "mul" in [n.op for n in out.nodes]
    xs = rand(3, 4)
    np.testing.assert_allclose(interpret(out, [xs])[0], interpret(g, [xs])[0], rtol=1e-6)


def test_fused_graph_prints_parses_and_differentiates():
    fe.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 6), nn.Sigmoid(), nn.Linear(6, 1))
    loss = lambda x: F.sum(F.square(model(x)))                   # noqa: E731
    g = fe.trace(loss, fe.TensorSpec((3, 4)))
    # trace a function: parameters become graph parameters too
    out = PassManager("simplify, fuse").run(g)
    assert fused_nodes(out)
    assert irgraph.parse(str(out)) == out
    xs = rand(3, 4)
    w = {p.name: a for p, a in zip(g.params, [p.data for p in model.parameters()])}
    args = [xs] + [w[p.name] for p in g.params]
    want = interpret(grad(g), args)
    got = interpret(grad(out), args)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_fused_cost_counts_only_region_traffic():
    g = Graph("c")
    x = g.add_input("x", TensorType((64, 64)))
    g.set_outputs([g.op("exp", g.op("tanh", g.op("neg", x)))])
    out = fuse(g)
    (node,) = fused_nodes(out)
    unfused = sum(n.opdef.cost([v.type for v in n.inputs], [v.type for v in n.outputs],
                               n.attrs).bytes for n in g.nodes)
    cost = node.opdef.cost([x.type], [node.outputs[0].type], node.attrs)
    assert cost.bytes == 2 * 64 * 64 * 4 < unfused
    assert cost.flops == sum(n.opdef.cost([v.type for v in n.inputs],
                                          [v.type for v in n.outputs], n.attrs).flops
                             for n in g.nodes)


@pytest.mark.parametrize("bad, msg", [
    (dict(extra_param=True), "takes no parameters"),
    (dict(wrong_type=True), "operand 0 is f32\\[3\\]; body input"),
])
def test_fused_type_rule_names_the_problem(bad, msg):
    body = Graph("b")
    v = body.add_input("v", TensorType((2,)))
    if bad.get("extra_param"):
        body.add_param("p", TensorType((2,)))
    body.set_outputs([body.op("neg", v)])
    g = Graph("g")
    x = g.add_input("x", TensorType((3,) if bad.get("wrong_type") else (2,)))
    with pytest.raises(irgraph.IRError, match=msg):
        g.op("fused", x, body=body, kind="elementwise")


@pytest.mark.parametrize("backend", ["reference", "llvm", "triton"])
def test_every_backend_runs_the_fused_regions_like_the_reference(backend):
    """An epilogue (conv + bias + relu), an elementwise region with a broadcast operand and
    a reduction with its epilogue, compiled by each backend, against the unfused graph."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 3, padding=1)

        def forward(self, x):
            y = F.relu(self.conv(x))
            z = F.tanh(y * 0.5 + 1.0)
            return z / F.sqrt(F.sum(z * z, 1, keepdim=True) + 1e-3)

    fe.manual_seed(4)
    net = Net()
    spec = fe.TensorSpec((2, 2, 5, 6))
    fused = fe.compile(net, spec, backend=backend, pipeline="default, fuse")
    kinds = sorted(n.attrs["kind"] for n in fused_nodes(fused.graph))
    assert "epilogue" in kinds and "reduction" in kinds
    xs = rand(2, 2, 5, 6)
    want = fe.compile(net, spec, pipeline=[])(xs)
    np.testing.assert_allclose(fused(xs), want, rtol=2e-5, atol=2e-6)
