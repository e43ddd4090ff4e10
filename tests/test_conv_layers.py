"""The nn layers of chapter 9 that PyTorch lacks (LocallyConnected, TiledConv2d, Maxout,
GlobalAvgPool) and a small CNN end to end: shapes, parameters, biases, and gradients of a
compiled model against torch's with the same weights."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as TF

import irgraph.frontend as fe
from irgraph.frontend import F, nn
from irgraph.interpreter import interpret
from irgraph.passes.autodiff import grad
from tests._conv_testing import forward, rand


def test_locally_connected_layer_has_a_kernel_and_bias_per_location_eq_9_9():
    fe.manual_seed(0)
    layer = nn.LocallyConnected2d(2, 3, input_size=(6, 5), kernel_size=(3, 2), stride=(1, 2))
    assert layer.output_size == (4, 2)
    assert layer.weight.shape == (3, 4, 2, 2, 3, 2) and layer.bias.shape == (3, 4, 2)
    x = rand(2, 2, 6, 5, seed=1, dtype=np.float32)
    got = fe.compile(layer, fe.TensorSpec(x.shape))(x)
    cols = TF.unfold(torch.tensor(x), (3, 2), stride=(1, 2))             # (N, C*k, L)
    w = torch.tensor(layer.weight.data).reshape(3, 8, 12)
    want = torch.einsum("nkl,olk->nol", cols, w).reshape(2, 3, 4, 2) + torch.tensor(
        layer.bias.data)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)
    layer1 = nn.LocallyConnected1d(2, 4, input_size=9, kernel_size=3, padding="same")
    assert fe.compile(layer1, fe.TensorSpec((1, 2, 9)))(rand(1, 2, 9, dtype=np.float32)
                                                         ).shape == (1, 4, 9)


def test_tiled_conv_layer_cycles_kernels_and_biases_eq_9_10():
    fe.manual_seed(1)
    layer = nn.TiledConv2d(2, 3, kernel_size=2, tiles=(2, 3))
    assert layer.weight.shape == (3, 2, 2, 2, 2, 3) and layer.bias.shape == (3, 2, 3)
    x = rand(1, 2, 5, 7, seed=2, dtype=np.float32)
    got = fe.compile(layer, fe.TensorSpec(x.shape))(x)
    w, b = layer.weight.data, layer.bias.data
    for j in range(4):
        for k in range(6):
            kern = torch.tensor(w[..., j % 2, k % 3])
            patch = torch.tensor(x[:, :, j:j + 2, k:k + 2])
            want = TF.conv2d(patch, kern)[0, :, 0, 0].numpy() + b[:, j % 2, k % 3]
            np.testing.assert_allclose(got[0, :, j, k], want, rtol=1e-5, atol=1e-6)


def test_maxout_and_global_average_pool_layers():
    x = rand(2, 6, 3, 4, seed=3, dtype=np.float32)
    y = fe.compile(nn.Sequential(nn.Maxout(2), nn.GlobalAvgPool()), fe.TensorSpec(x.shape))(x)
    np.testing.assert_allclose(y, x.reshape(2, 3, 2, 3, 4).max(axis=2).mean(axis=(2, 3)),
                               rtol=1e-6)


def _torch_cnn(ours):
    t = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2, ceil_mode=True), torch.nn.Conv2d(4, 6, 2, groups=2),
        torch.nn.AdaptiveAvgPool2d((2, 2)), torch.nn.Flatten(), torch.nn.Linear(24, 5))
    with torch.no_grad():
        for (_, p), (_, q) in zip(ours.named_parameters(), t.named_parameters()):
            q.copy_(torch.tensor(p.data))
    return t


class _Loss(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.m = model

    def forward(self, x, t):
        return F.cross_entropy(self.m(x), t)


def test_small_cnn_gradients_match_torch():
    fe.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.MaxPool2d(2, ceil_mode=True), nn.Conv2d(4, 6, 2, groups=2),
                          nn.AdaptiveAvgPool2d((2, 2)), nn.Flatten(), nn.Linear(24, 5))
    theirs = _torch_cnn(model)
    x = rand(3, 3, 7, 9, seed=4, dtype=np.float32)
    target = np.array([0, 3, 4])
    g = fe.trace(_Loss(model), fe.TensorSpec(x.shape), fe.TensorSpec((3,), "int64"))
    params = {"m." + n: p for n, p in model.named_parameters(buffers=True)}
    names = [p.name for p in g.params if params[p.name].requires_grad]
    outs = interpret(grad(g, wrt=names), [x, target] + [params[p.name].data for p in g.params])
    loss = TF.cross_entropy(theirs(torch.tensor(x)), torch.tensor(target))
    loss.backward()
    tgrads = dict(theirs.named_parameters())
    for name, got in zip(names, outs):
        np.testing.assert_allclose(got, tgrads[name[2:]].grad.numpy(), rtol=2e-4, atol=2e-5,
                                   err_msg=name)


def test_conv_bias_per_location_end_of_section_9_5():
    x, w, b = rand(1, 2, 5, 6, seed=5), rand(3, 2, 2, 2, seed=6), rand(3, 4, 5, seed=7)
    np.testing.assert_allclose(forward(lambda x, w, b: F.conv2d(x, w, b), x, w, b),
                               forward(lambda x, w: F.conv2d(x, w), x, w) + b, rtol=1e-12)
