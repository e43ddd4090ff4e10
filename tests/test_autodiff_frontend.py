"""frontend.grad / frontend.value_and_grad: JAX's calling conventions, PyTorch's parameters,
checked against torch.autograd."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import irgraph.frontend as fe
from irgraph.frontend import F, nn
from irgraph.frontend.nn import Parameter

S3 = fe.TensorSpec((3,), "float64")
RNG = np.random.default_rng(0)


def f(x, y):
    return (F.tanh(x) * y).sum() + (x * x).sum()


def torch_grads(fn, *arrays):
    ts = [torch.tensor(a, requires_grad=True) for a in arrays]
    out = fn(*ts)
    out.backward()
    return out.item(), [t.grad.numpy() for t in ts]


X, Y = RNG.standard_normal(3), RNG.standard_normal(3)
T_VAL, (T_GX, T_GY) = torch_grads(lambda x, y: (torch.tanh(x) * y).sum() + (x * x).sum(), X, Y)


def test_grad_defaults_to_the_first_input_like_jax():
    g = fe.grad(f, S3, S3)
    np.testing.assert_allclose(g(X, Y), T_GX, rtol=1e-12)


def test_grad_wrt_positions_and_names():
    gx, gy = fe.grad(f, S3, S3, wrt=(0, 1))(X, Y)
    np.testing.assert_allclose(gx, T_GX, rtol=1e-12)
    np.testing.assert_allclose(gy, T_GY, rtol=1e-12)
    np.testing.assert_allclose(fe.grad(f, S3, S3, wrt=1)(X, Y), T_GY, rtol=1e-12)
    d = fe.grad(f, S3, S3, wrt=["y", "x"])(X, Y)
    assert list(d) == ["y", "x"]
    np.testing.assert_allclose(d["x"], T_GX, rtol=1e-12)


def test_value_and_grad_returns_the_value_first():
    val, (gx, gy) = fe.value_and_grad(f, S3, S3, wrt=(0, 1))(X, Y)
    np.testing.assert_allclose(val, T_VAL, rtol=1e-12)
    np.testing.assert_allclose(gy, T_GY, rtol=1e-12)


def test_has_aux_returns_the_auxiliary_outputs_like_jax():
    def with_aux(x, y):
        t = F.tanh(x)
        return (t * y).sum() + (x * x).sum(), {"t": t}
    grads, aux = fe.grad(with_aux, S3, S3, has_aux=True)(X, Y)
    np.testing.assert_allclose(grads, T_GX, rtol=1e-12)
    np.testing.assert_allclose(aux["t"], np.tanh(X), rtol=1e-12)
    (val, aux), grads = fe.value_and_grad(with_aux, S3, S3, has_aux=True)(X, Y)
    np.testing.assert_allclose(val, T_VAL, rtol=1e-12)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
        self.scale = Parameter(np.float32(1.5), requires_grad=False)

    def forward(self, x, y):
        return F.cross_entropy(self.body(x) * self.scale, y)


def torch_net(net: Net):
    tm = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))
    with torch.no_grad():
        for name, p in tm.named_parameters():
            p.copy_(torch.tensor(dict(net.body.named_parameters())[name].data))
    return tm


XB = RNG.standard_normal((5, 4)).astype(np.float32)
YB = np.array([0, 2, 1, 1, 0])
SPECS = (fe.TensorSpec((5, 4)), fe.TensorSpec((5,), "int64"))


def test_module_gradients_are_a_dict_of_trainable_parameters_matching_torch():
    fe.manual_seed(1)
    net = Net()
    val, grads = fe.value_and_grad(net, *SPECS)(XB, YB)
    assert sorted(grads) == ["body.0.bias", "body.0.weight", "body.2.bias", "body.2.weight"]
    tm = torch_net(net)
    loss = torch.nn.functional.cross_entropy(tm(torch.tensor(XB)) * 1.5, torch.tensor(YB))
    loss.backward()
    np.testing.assert_allclose(val, loss.item(), rtol=1e-6)
    for name, p in tm.named_parameters():
        np.testing.assert_allclose(grads["body." + name], p.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_function_calling_a_model_names_parameters_with_model_and_reads_them_live():
    fe.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 3))

    def loss(x, y):
        return F.cross_entropy(model(x), y)
    g = fe.grad(loss, *SPECS, model=model)
    first = g(XB, YB)
    assert sorted(first) == ["0.bias", "0.weight"]
    model[0].weight.data[...] *= 2          # parameters are read at each call
    second = g(XB, YB)
    tm = torch.nn.Linear(4, 3)
    with torch.no_grad():
        tm.weight.copy_(torch.tensor(model[0].weight.data))
        tm.bias.copy_(torch.tensor(model[0].bias.data))
    torch.nn.functional.cross_entropy(tm(torch.tensor(XB)), torch.tensor(YB)).backward()
    np.testing.assert_allclose(second["0.weight"], tm.weight.grad.numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(first["0.weight"], second["0.weight"])


def test_wrt_parameter_objects():
    fe.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 3))
    w = model[0].weight
    gw = fe.grad(lambda x, y: F.cross_entropy(model(x), y), *SPECS, wrt=w)(XB, YB)
    assert gw.shape == (3, 4)
    (gw2, gb) = fe.grad(lambda x, y: F.cross_entropy(model(x), y), *SPECS,
                        wrt=[w, model[0].bias])(XB, YB)
    np.testing.assert_allclose(gw, gw2)
    assert gb.shape == (3,)


def test_errors_name_what_is_wrong():
    with pytest.raises(TypeError, match="one scalar tensor"):
        fe.grad(lambda x: (x, x), S3)
    with pytest.raises(Exception, match=r"scalar.*f64\[3\]"):
        fe.grad(lambda x: F.tanh(x), S3)
    with pytest.raises(ValueError, match="out of range"):
        fe.grad(f, S3, S3, wrt=2)
    with pytest.raises(Exception, match="not a float tensor"):
        fe.grad(lambda x, i: (x * F.cast(i, "float64")).sum(), S3,
                fe.TensorSpec((3,), "int64"), wrt=1)
    with pytest.raises(TypeError, match="takes 2 inputs"):
        fe.grad(f, S3, S3)(X)
    with pytest.raises(ValueError, match="shape"):
        fe.grad(f, S3, S3)(X, np.zeros(4))


@pytest.mark.parametrize("backend", ["reference", "llvm", "triton"])
def test_mlp_gradient_on_every_backend_matches_torch(backend):
    """The compiled gradient graph runs on each backend (Triton in its CPU interpreter)."""
    fe.manual_seed(4)
    net = Net()
    grads = fe.grad(net, *SPECS, backend=backend)(XB, YB)
    tm = torch_net(net)
    torch.nn.functional.cross_entropy(tm(torch.tensor(XB)) * 1.5, torch.tensor(YB)).backward()
    for name, p in tm.named_parameters():
        np.testing.assert_allclose(grads["body." + name], p.grad.numpy(), rtol=1e-5, atol=1e-6,
                                   err_msg=f"{backend}: {name}")


def test_batch_norm_in_training_mode_gradients_and_running_stats_as_torch():
    """Batch statistics in the gradient (as torch in train mode); the running statistics are
    updated in place by the call, as one forward pass of torch would update them."""
    fe.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3))
    model.train()

    def loss(x, y):
        return F.cross_entropy(model(x), y)
    val, grads = fe.value_and_grad(loss, *SPECS, model=model)(XB, YB)
    assert "1.running_mean" not in grads and "1.weight" in grads
    tm = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6), torch.nn.Tanh(),
                             torch.nn.Linear(6, 3))
    ours = dict(model.named_parameters(buffers=True))
    with torch.no_grad():
        for name, p in tm.named_parameters():
            p.copy_(torch.tensor(ours[name].data))
    tl = torch.nn.functional.cross_entropy(tm(torch.tensor(XB)), torch.tensor(YB))
    tl.backward()
    np.testing.assert_allclose(val, tl.item(), rtol=1e-5)
    for name, p in tm.named_parameters():
        np.testing.assert_allclose(grads[name], p.grad.numpy(), rtol=1e-4, atol=1e-5,
                                   err_msg=name)
    np.testing.assert_allclose(ours["1.running_mean"].data, tm[1].running_mean.numpy(),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours["1.running_var"].data, tm[1].running_var.numpy(),
                               rtol=1e-5, atol=1e-6)
