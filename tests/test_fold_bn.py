"""Batch-norm folding (eq. 8.35 with running statistics folded into the layer before it):
outputs against PyTorch's unfolded modules, node counts, refusals, and a CNN trained with
batch norm in training mode that predicts the same after folding."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import irgraph.frontend as fe
from irgraph.frontend import nn, optim
from irgraph import Graph, TensorType
from irgraph.interpreter import interpret
from irgraph.passes.fold_bn import fold_bn
from irgraph.passes.fold_params import fold_params
from irgraph.passes.manager import PassManager

RNG = np.random.default_rng(0)


def randomize_bn(tm: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in tm.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g))
            m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g))


def copy_from_torch(ours: nn.Module, theirs: torch.nn.Module) -> None:
    mine = dict(ours.named_parameters(buffers=True))
    for name, t in list(theirs.named_parameters()) + list(theirs.named_buffers()):
        if name in mine:
            np.copyto(mine[name].data, t.detach().numpy())


def run_folded(model: nn.Module, x: np.ndarray):
    """(unfolded graph, folded graph after fold_params, folded output)."""
    g = fe.trace(model, fe.TensorSpec(x.shape))
    weights = {n: p.data for n, p in model.named_parameters(buffers=True)}
    folded = PassManager("fold_bn, simplify").run(g)
    bound, new_w = fold_params(folded, weights)
    out = interpret(bound, [x] + [new_w[p.name] for p in bound.params])[0]
    return g, bound, out


def pair(kind: str):
    """(our model, the same model in PyTorch, input shape)."""
    T = torch.nn
    if kind == "conv1d":
        return (nn.Sequential(nn.Conv1d(3, 5, 3, padding=1), nn.BatchNorm1d(5)),
                T.Sequential(T.Conv1d(3, 5, 3, padding=1), T.BatchNorm1d(5)), (2, 3, 9))
    if kind == "conv2d_grouped":
        return (nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, groups=2), nn.BatchNorm2d(6),
                              nn.ReLU()),
                T.Sequential(T.Conv2d(4, 6, 3, stride=2, groups=2), T.BatchNorm2d(6),
                             T.ReLU()), (2, 4, 7, 5))
    if kind == "conv2d_no_bias":
        return (nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4)),
                T.Sequential(T.Conv2d(3, 4, 3, bias=False), T.BatchNorm2d(4)), (3, 3, 6, 6))
    if kind == "conv3d":
        return (nn.Sequential(nn.Conv3d(2, 3, 2, dilation=1), nn.BatchNorm3d(3)),
                T.Sequential(T.Conv3d(2, 3, 2), T.BatchNorm3d(3)), (2, 2, 4, 5, 3))
    if kind == "conv_transpose2d":
        return (nn.Sequential(nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2), nn.BatchNorm2d(6)),
                T.Sequential(T.ConvTranspose2d(4, 6, 3, stride=2, groups=2), T.BatchNorm2d(6)),
                (2, 4, 3, 4))
    if kind == "linear":
        return (nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Tanh()),
                T.Sequential(T.Linear(5, 7), T.BatchNorm1d(7), T.Tanh()), (6, 5))
    if kind == "conv_flatten_1x1":
        return (nn.Sequential(nn.Conv2d(3, 4, 4), nn.Flatten(), nn.BatchNorm1d(4)),
                T.Sequential(T.Conv2d(3, 4, 4), T.Flatten(), T.BatchNorm1d(4)), (5, 3, 4, 4))
    raise KeyError(kind)


KINDS = ["conv1d", "conv2d_grouped", "conv2d_no_bias", "conv3d", "conv_transpose2d", "linear",
         "conv_flatten_1x1"]


@pytest.mark.parametrize("kind", KINDS)
def test_folded_layer_matches_torch_and_has_fewer_nodes(kind):
    ours, theirs, shape = pair(kind)
    randomize_bn(theirs, seed=len(kind))
    copy_from_torch(ours, theirs)
    ours.eval()
    theirs.eval()
    x = RNG.standard_normal(shape).astype(np.float32)
    g, bound, out = run_folded(ours, x)
    with torch.no_grad():
        want = theirs(torch.tensor(x)).numpy()
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=2e-5)
    assert "batch_norm" in [n.op for n in g.nodes]
    assert "batch_norm" not in [n.op for n in bound.nodes]
    # the batch norm is gone; without a bias before it, a bias add takes its place
    assert len(bound.nodes) < len(g.nodes) or (kind == "conv2d_no_bias"
                                               and len(bound.nodes) == len(g.nodes))
    assert not any(p.name.endswith(("running_mean", "running_var")) for p in bound.params)


def test_fold_keeps_weights_outside_the_graph_and_the_signature():
    """Before binding weights the fold is arithmetic over the original parameters."""
    ours, theirs, shape = pair("conv2d_grouped")
    ours.eval()
    g = fe.trace(ours, fe.TensorSpec(shape))
    folded = fold_bn(g)
    assert [p.name for p in folded.params] == [p.name for p in g.params]
    assert all(n.op != "constant" or n.outputs[0].type.size == 1 for n in folded.nodes)
    x = RNG.standard_normal(shape).astype(np.float32)
    by_name = {n: p.data for n, p in ours.named_parameters(buffers=True)}
    args = [x] + [by_name[p.name] for p in g.params]
    np.testing.assert_allclose(interpret(folded, args)[0], interpret(g, args)[0], rtol=1e-5,
                               atol=1e-5)


def test_dense_then_reshape_then_bn2d_folds_each_channel_into_its_features():
    """Linear(5, 12) -> view (N, 3, 2, 2) -> BatchNorm2d(3): output features 4c..4c+3 take
    channel c's scale (a reshape that keeps every channel whole)."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.bn = nn.Linear(5, 12), nn.BatchNorm2d(3)

        def forward(self, x):
            return self.bn(self.fc(x).reshape(x.shape[0], 3, 2, 2))

    fe.manual_seed(1)
    net = Net().eval()
    net.bn.running_mean.data[:] = [0.5, -1.0, 2.0]
    net.bn.running_var.data[:] = [0.25, 4.0, 1.0]
    net.bn.weight.data[:] = [2.0, 0.5, -1.0]
    x = RNG.standard_normal((4, 5)).astype(np.float32)
    g, bound, out = run_folded(net, x)
    assert "batch_norm" not in [n.op for n in bound.nodes]
    z = (x @ net.fc.weight.data.T + net.fc.bias.data).reshape(4, 3, 2, 2)
    c = np.array([0.5, -1.0, 2.0])[:, None, None]
    sd = np.sqrt(np.array([0.25, 4.0, 1.0]) + 1e-5)[:, None, None]
    want = np.array([2.0, 0.5, -1.0])[:, None, None] * (z - c) / sd
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


def _conv_bn_graph(training=False, reuse=False, dynamic_w=False, flatten=False) -> Graph:
    g = Graph("net")
    x = g.add_input("x", TensorType((2, 3, 4, 4)))
    w = (g.add_input("w", TensorType((4, 3, 3, 3))) if dynamic_w
         else g.add_param("w", TensorType((4, 3, 3, 3))))
    c = 16 if flatten else 4
    ps = [g.add_param(n, TensorType((c,))) for n in ("gamma", "beta", "rm", "rv")]
    z = g.op("conv", x, w, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1))
    zin = g.op("reshape", z, shape=(2, 16)) if flatten else z
    y, _, _ = g.op("batch_norm", zin, *ps, training=training)
    g.set_outputs([g.op("add", y, z) if reuse else y])
    return g


@pytest.mark.parametrize("why, kwargs", [
    ("batch norm in training mode", dict(training=True)),
    ("the convolution's output is also read elsewhere", dict(reuse=True)),
    ("the weights are a graph input", dict(dynamic_w=True)),
    ("the flatten mixes channels and positions", dict(flatten=True)),
])
def test_fold_is_refused_where_it_would_change_results(why, kwargs):
    g = _conv_bn_graph(**kwargs)
    assert fold_bn(g) == g, why


def test_cnn_trained_with_batch_norm_predicts_the_same_after_folding():
    """Train a CNN (batch norm in training mode updates the running statistics in the step),
    switch it to inference, fold: the same predictions, outputs within float32 tolerance."""
    fe.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, bias=False), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(),
        nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))
    rng = np.random.default_rng(5)
    xs = rng.standard_normal((8, 1, 6, 6)).astype(np.float32)
    ys = (xs.mean(axis=(1, 2, 3)) > 0).astype(np.int64) + (xs[:, 0, 0, 0] > 1)
    step = fe.compile_train(model, nn.CrossEntropyLoss(), optim.SGD(lr=0.1, momentum=0.9),
                            fe.TensorSpec(xs.shape), fe.TensorSpec(ys.shape, "int64"))
    stats_before = model[1].running_mean.data.copy()
    losses = [step(xs, ys) for _ in range(15)]
    assert losses[-1] < losses[0]
    assert not np.allclose(model[1].running_mean.data, stats_before)   # trained statistics
    model.eval()
    plain = fe.compile(model, fe.TensorSpec(xs.shape), pipeline=[])
    expect = plain(xs)
    g, bound, folded = run_folded(model, xs)
    assert sum(n.op == "batch_norm" for n in g.nodes) == 3
    assert sum(n.op == "batch_norm" for n in bound.nodes) == 0
    np.testing.assert_array_equal(folded.argmax(axis=1), expect.argmax(axis=1))
    np.testing.assert_allclose(folded, expect, rtol=1e-4, atol=1e-5)
    # the default inference pipeline folds too (weights bound at each call)
    np.testing.assert_allclose(fe.compile(model, fe.TensorSpec(xs.shape))(xs), expect,
                               rtol=1e-4, atol=1e-5)


def test_fold_bn_weights_returns_the_new_weights():
    """The weights-dict form: conv (O=4) + BN folded by hand, w' = w s, b' = (b - m) s + beta
    with s = gamma / sqrt(var + eps) (eq. 8.35 with running statistics)."""
    from irgraph.passes.fold_bn import fold_bn_weights
    fe.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4)).eval()
    bn = model[1]
    bn.running_mean.data[:] = [1.0, -1.0, 0.5, 0.0]
    bn.running_var.data[:] = [4.0, 0.25, 1.0, 9.0]
    bn.weight.data[:] = [1.0, 2.0, -1.0, 0.5]
    bn.bias.data[:] = [0.0, 1.0, 2.0, -3.0]
    g = fe.trace(model, fe.TensorSpec((1, 2, 5, 5)))
    weights = {n: p.data for n, p in model.named_parameters(buffers=True)}
    folded, new = fold_bn_weights(g, weights)
    assert [n.op for n in folded.nodes] == ["conv", "add"]
    s = bn.weight.data.astype(np.float64) / np.sqrt(bn.running_var.data + 1e-5)
    w_want = model[0].weight.data * s[:, None, None, None]
    b_want = (model[0].bias.data - bn.running_mean.data) * s + bn.bias.data
    w_name = next(p.name for p in folded.params if p.shape == (4, 2, 3, 3))
    b_name = next(p.name for p in folded.params if p.shape == (1, 4, 1, 1))
    np.testing.assert_allclose(new[w_name], w_want, rtol=1e-6)
    np.testing.assert_allclose(new[b_name].ravel(), b_want, rtol=1e-6, atol=1e-7)
    assert set(new) == {p.name for p in folded.params}
