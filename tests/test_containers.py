"""Module containers (ModuleList, ModuleDict, ParameterList), the refusal of plain Python
containers of modules, Module.to/double/float/requires_grad_/apply, and repr strings
compared with torch's exactly."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import irgraph.backends as backends
import irgraph.frontend as fe
from irgraph.frontend import nn
from irgraph.passes.autodiff import value_and_grad


class Stack(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(3, 4), nn.Linear(4, 4)])
        self.layers.append(nn.Linear(4, 2))
        self.heads = nn.ModuleDict({"a": nn.Linear(2, 1), "b": nn.Linear(2, 1)})
        self.scales = nn.ParameterList([np.full(2, 2.0, np.float32), np.ones(1, np.float32)])

    def forward(self, x):
        for layer in self.layers:
            x = fe.F.tanh(layer(x))
        x = x * self.scales[0]
        return self.heads["a"](x) + self.heads["b"](x) * self.scales[1]


def test_containers_register_and_train_every_weight():
    """Every weight is in parameters()/state_dict() under torch's names and gets the
    gradient torch computes for the same model."""
    fe.manual_seed(0)
    m = Stack()
    names = [n for n, _ in m.named_parameters()]
    assert names == ["layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias",
                     "layers.2.weight", "layers.2.bias", "heads.a.weight", "heads.a.bias",
                     "heads.b.weight", "heads.b.bias", "scales.0", "scales.1"]
    assert set(m.state_dict()) == set(names)
    t = torch.nn.ModuleDict(dict(
        layers=torch.nn.ModuleList([torch.nn.Linear(3, 4), torch.nn.Linear(4, 4),
                                    torch.nn.Linear(4, 2)]),
        heads=torch.nn.ModuleDict({"a": torch.nn.Linear(2, 1), "b": torch.nn.Linear(2, 1)})))
    t.scales = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(2)),
                                       torch.nn.Parameter(torch.zeros(1))])
    assert [n for n, _ in t.named_parameters()] == names
    with torch.no_grad():
        for n, p in t.named_parameters():
            p.copy_(torch.from_numpy(m.state_dict()[n]))
    x = np.random.default_rng(1).standard_normal((5, 3)).astype(np.float32)
    g = fe.trace(m, fe.TensorSpec(x.shape))
    assert sorted(p.name for p in g.params) == sorted(names)         # graph names = torch's
    g.set_outputs([g.op("sum", g.outputs[0])])
    exe = backends.compile(value_and_grad(g, names), "reference")
    params = dict(m.named_parameters())
    res = exe(x, *[params[p.name].data for p in g.params])
    h = torch.from_numpy(x)
    for layer in t["layers"]:
        h = torch.tanh(layer(h))
    h = h * t.scales[0]
    loss = (t["heads"]["a"](h) + t["heads"]["b"](h) * t.scales[1]).sum()
    loss.backward()
    np.testing.assert_allclose(res[0], loss.item(), rtol=1e-5)
    tp = dict(t.named_parameters())
    for n, gr in zip(names, res[1:]):
        np.testing.assert_allclose(gr, tp[n].grad.numpy(), rtol=1e-4, atol=1e-6, err_msg=n)


def test_module_list_and_dict_behave_as_torch():
    a, b, c = nn.ReLU(), nn.Tanh(), nn.Sigmoid()
    ml = nn.ModuleList([a, b])
    ml.insert(0, c)
    assert list(ml) == [c, a, b] and ml[-1] is b and len(ml) == 3
    assert isinstance(ml[1:], nn.ModuleList) and list(ml[1:]) == [a, b]
    del ml[0]
    assert list(ml) == [a, b] and list(ml._modules) == ["0", "1"]
    with pytest.raises(IndexError, match="index 5 is out of range"):
        ml[5]
    with pytest.raises(TypeError, match="holds modules, got int"):
        ml.append(3)
    md = nn.ModuleDict({"x": a})
    md["y"] = b
    assert list(md.keys()) == ["x", "y"] and "y" in md and md.pop("x") is a and len(md) == 1


@pytest.mark.parametrize("value,hint", [
    ([nn.Linear(2, 2)], "nn.ModuleList"), ((nn.ReLU(), nn.Tanh()), "nn.ModuleList"),
    ({"a": nn.ReLU()}, "nn.ModuleDict"), ([nn.Parameter(np.zeros(2))], "nn.ParameterList")])
def test_plain_containers_of_modules_are_refused_at_assignment(value, hint):
    """Their weights would be traced but missing from parameters() and state_dict()."""
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = value
    with pytest.raises(TypeError, match=rf"Bad\.blocks: a plain .* use {hint}"):
        Bad()
    m = nn.Module()
    m.sizes = [1, 2, 3]                                      # plain data is fine
    assert m.sizes == [1, 2, 3]


def test_to_double_float_requires_grad_and_apply():
    fe.manual_seed(0)
    m = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    m.double()
    assert all(p.data.dtype == np.float64 for _, p in m.named_parameters(buffers=True)
               if p.data.dtype.kind == "f")
    assert m[1].num_batches_tracked.data.dtype == np.int64          # integers untouched
    m.to(torch.float32)
    assert m[0].weight.data.dtype == np.float32
    m.to("float64").float()
    assert m[0].weight.data.dtype == np.float32
    with pytest.raises(TypeError, match="expected float32 or float64"):
        m.to("int32")
    m.requires_grad_(False)
    assert not any(p.requires_grad for p in m.parameters())
    m.requires_grad_()
    assert all(p.requires_grad for p in m.parameters())
    assert not m[1].running_mean.requires_grad                      # buffers stay buffers
    seen = []
    m.apply(lambda mod: seen.append(type(mod).__name__))
    assert seen == ["Linear", "BatchNorm1d", "Sequential"]          # children first
    assert m.zero_grad() is None


def test_reprs_equal_torchs():
    pairs = [
        (nn.Linear(4, 3), torch.nn.Linear(4, 3)),
        (nn.Linear(4, 3, bias=False), torch.nn.Linear(4, 3, bias=False)),
        (nn.Conv2d(1, 6, 5), torch.nn.Conv2d(1, 6, 5)),
        (nn.Conv2d(2, 4, 3, stride=2, padding=1, dilation=2, groups=2, bias=False),
         torch.nn.Conv2d(2, 4, 3, stride=2, padding=1, dilation=2, groups=2, bias=False)),
        (nn.ConvTranspose2d(2, 3, 3, stride=2, output_padding=1),
         torch.nn.ConvTranspose2d(2, 3, 3, stride=2, output_padding=1)),
        (nn.MaxPool2d(2), torch.nn.MaxPool2d(2)), (nn.AvgPool2d(3, 2), torch.nn.AvgPool2d(3, 2)),
        (nn.BatchNorm2d(4), torch.nn.BatchNorm2d(4)), (nn.LayerNorm(8), torch.nn.LayerNorm(8)),
        (nn.GroupNorm(2, 4), torch.nn.GroupNorm(2, 4)), (nn.RMSNorm([2, 3]), torch.nn.RMSNorm([2, 3])),
        (nn.InstanceNorm1d(3, affine=True), torch.nn.InstanceNorm1d(3, affine=True)),
        (nn.ReLU(), torch.nn.ReLU()), (nn.GELU("tanh"), torch.nn.GELU("tanh")),
        (nn.LeakyReLU(0.2), torch.nn.LeakyReLU(0.2)), (nn.SiLU(), torch.nn.SiLU()),
        (nn.Dropout(0.1), torch.nn.Dropout(0.1)), (nn.Softmax(dim=1), torch.nn.Softmax(dim=1)),
        (nn.Flatten(), torch.nn.Flatten()), (nn.MSELoss(), torch.nn.MSELoss()),
        (nn.L1Loss(), torch.nn.L1Loss()),
        (nn.Sequential(nn.Linear(2, 3), nn.Sequential(nn.ReLU(), nn.Linear(3, 1))),
         torch.nn.Sequential(torch.nn.Linear(2, 3),
                             torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(3, 1)))),
        (nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2), nn.ReLU()]),
         torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), torch.nn.ReLU()])),
        (nn.ModuleDict({"a": nn.Tanh()}), torch.nn.ModuleDict({"a": torch.nn.Tanh()})),
        (nn.TransformerEncoderLayer(8, 2, 16), torch.nn.TransformerEncoderLayer(8, 2, 16)),
    ]
    for ours, theirs in pairs:
        assert repr(ours) == repr(theirs)


def test_sequential_indexing_slicing_and_editing_as_torch():
    """Slices are Sequentials keeping the layers' names, indices are range-checked, and
    del / [] = / append / iteration edit and walk the layers as torch's do."""
    fe.manual_seed(0)
    ours = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.Tanh())
    theirs = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2),
                                 torch.nn.Tanh())
    theirs.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in ours.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    for sl in (slice(0, 2), slice(1, None), slice(None, None, 2), slice(-2, None)):
        part, twin = ours[sl], theirs[sl]
        assert isinstance(part, nn.Sequential) and list(part._modules) == list(twin._modules)
    np.testing.assert_allclose(ours[:2](x), theirs[:2](torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-6)
    assert type(ours[-1]).__name__ == type(theirs[-1]).__name__ == "Tanh"
    with pytest.raises(IndexError):
        ours[4]
    for s in (ours, theirs):
        del s[1]
        s[0] = type(s[0])(3, 4)
        s.append(type(s[-1])())
    assert list(ours._modules) == list(theirs._modules)
    assert [type(m).__name__ for m in ours] == [type(m).__name__ for m in theirs]
    assert nn.Identity(3, foo=2)(x) is x


def test_linear_with_a_one_dimensional_weight_as_torch():
    x = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)
    w = np.arange(3, dtype=np.float32)
    got = fe.compile(lambda x, w: fe.F.linear(x, w), fe.TensorSpec(x.shape),
                     fe.TensorSpec(w.shape))(x, w)
    want = torch.nn.functional.linear(torch.from_numpy(x), torch.from_numpy(w))
    assert got.shape == tuple(want.shape) == (4,)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-6)


def test_unflatten_inverts_flatten_as_torch():
    x = np.random.default_rng(2).standard_normal((2, 12, 5)).astype(np.float32)
    for dim, sizes in ((1, (3, 4)), (-2, (2, -1)), (2, (5,)), (0, (1, 2))):
        got = fe.compile(nn.Unflatten(dim, sizes), fe.TensorSpec(x.shape))(x)
        want = torch.nn.Unflatten(dim, sizes)(torch.from_numpy(x))
        assert got.shape == tuple(want.shape)
        np.testing.assert_array_equal(got, want.numpy())
    assert repr(nn.Unflatten(1, (3, 4))) == repr(torch.nn.Unflatten(1, (3, 4)))
