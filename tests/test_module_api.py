"""The module API a PyTorch user relies on, against torch: modes and freezing after compiling
(the compiled function follows them, compiling again), tied weights in state_dict, buffers,
assignment to registered names, shared submodules, and the inspection and registration
methods."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import irgraph as ig
from irgraph.frontend import guards, nn


def _twins():
    ig.manual_seed(0)
    ours = ig.nn.Sequential(ig.nn.Linear(4, 3), ig.nn.BatchNorm1d(3), ig.nn.Dropout(0.5))
    theirs = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3),
                                 torch.nn.Dropout(0.5))
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    return ours, theirs


@pytest.mark.parametrize("backend", ["reference", "llvm"])
def test_eval_after_compile_takes_effect_at_the_next_call(backend):
    """Compiled in training mode, called after ``.eval()``: running statistics and no
    dropout, as torch; back in training mode the batch statistics again."""
    ours, theirs = _twins()
    run = ig.compile(ours, ig.TensorSpec((6, 4)), backend=backend)
    x = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    run(x)                                              # one training-mode call
    theirs(torch.from_numpy(x))
    ours.eval()
    theirs.eval()
    np.testing.assert_allclose(run(x), theirs(torch.from_numpy(x)).detach().numpy(), rtol=1e-5,
                               atol=1e-6)
    before = ours[1].running_mean.data.copy()
    run(x)
    np.testing.assert_array_equal(ours[1].running_mean.data, before)   # eval: no update
    ours.train()
    ours[2].p = 0.0                 # (no dropout: comparable) -- an attribute, read at trace
    theirs.train()
    theirs[2].p = 0.0
    ours[1].training = True         # a direct assignment counts too
    got = run(x)
    np.testing.assert_allclose(got, theirs(torch.from_numpy(x)).detach().numpy(), rtol=1e-5,
                               atol=1e-6)


def test_nothing_changed_compiles_nothing():
    ours, _ = _twins()
    run = ig.compile(ours, ig.TensorSpec((6, 4)))
    exe = run.executable
    x = np.ones((6, 4), np.float32)
    run(x)
    ours.train()                                # the same mode again: the same build
    ig.nn.Linear(2, 2).eval()                   # another model's change
    run(x)
    assert run.executable is exe
    ours.eval()
    run(x)
    assert run.executable is not exe


@pytest.mark.parametrize("backend", ["reference", "llvm"])
def test_freezing_after_compile_train_stops_the_updates_as_torch(backend):
    ig.manual_seed(0)
    ours = ig.nn.Sequential(ig.nn.Linear(4, 3), ig.nn.Tanh(), ig.nn.Linear(3, 2)).double()
    theirs = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(),
                                 torch.nn.Linear(3, 2)).double()
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    opt = ig.optim.SGD(lr=0.5, momentum=0.9, convention="torch")
    topt = torch.optim.SGD(theirs.parameters(), lr=0.5, momentum=0.9)
    step = ig.compile_train(ours, ig.nn.CrossEntropyLoss(), opt,
                            ig.TensorSpec((5, 4), "float64"), ig.TensorSpec((5,), "int64"),
                            backend=backend)
    r = np.random.default_rng(0)
    for k in range(5):
        if k == 2:                                  # fine-tuning: freeze the first layer
            ours[0].requires_grad_(False)
            theirs[0].requires_grad_(False)
        if k == 4:                                  # and thaw it again
            ours[0].requires_grad_(True)
            theirs[0].requires_grad_(True)
        x, y = r.standard_normal((5, 4)), r.integers(0, 2, 5)
        before = ours[0].weight.data.copy()
        step(x, y)
        topt.zero_grad()
        torch.nn.functional.cross_entropy(theirs(torch.tensor(x)), torch.tensor(y)).backward()
        topt.step()
        assert np.array_equal(before, ours[0].weight.data) == (k in (2, 3))
        for name, p in theirs.named_parameters():
            np.testing.assert_allclose(ours.state_dict()[name], p.detach().numpy(), rtol=1e-10,
                                       atol=1e-12, err_msg=f"{name} after step {k}")


def _tied(nn):
    """A model whose output layer shares the embedding's weight, in ``nn`` (ours or
    torch's)."""
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(5, 3)
            self.out = nn.Linear(3, 5, bias=False)
            self.out.weight = self.emb.weight
    return Tied()


def test_tied_weights_appear_under_every_name_as_torch():
    ours, theirs = _tied(ig.nn), _tied(torch.nn)
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["emb.weight", "out.weight"]
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    np.testing.assert_array_equal(ours.out.weight.data, theirs.out.weight.detach().numpy())
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})


def test_load_state_dict_not_strict_reports_the_keys_as_torch():
    ours = ig.nn.Sequential(ig.nn.Linear(2, 3), ig.nn.BatchNorm1d(3))
    theirs = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    sd = {k: v.numpy() for k, v in theirs.state_dict().items() if k != "1.bias"}
    sd["extra"] = np.zeros(1)
    got = ours.load_state_dict(sd, strict=False)
    want = theirs.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=False)
    assert got.missing_keys == want.missing_keys and got.unexpected_keys == want.unexpected_keys
    with pytest.raises(RuntimeError, match="(?s)Unexpected.*extra.*Missing.*1.bias"):
        ours.load_state_dict(sd)


def test_buffers_are_the_registered_ones_not_frozen_parameters():
    ours = ig.nn.Sequential(ig.nn.Linear(2, 3), ig.nn.BatchNorm1d(3))
    theirs = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    ours[0].requires_grad_(False)
    theirs[0].requires_grad_(False)
    assert [n for n, _ in ours.named_buffers()] == [n for n, _ in theirs.named_buffers()]
    assert len(list(ours.buffers())) == len(list(theirs.buffers())) == 3


def test_assigning_to_registered_names_as_torch():
    bn = ig.nn.BatchNorm1d(3)
    bn.running_mean = np.ones(3, np.float32)              # a buffer stays a buffer
    assert "running_mean" in bn.state_dict()
    np.testing.assert_array_equal(bn.state_dict()["running_mean"], np.ones(3))
    lin = ig.nn.Linear(2, 2)
    with pytest.raises(TypeError, match="cannot assign 'ndarray' as parameter 'weight'"):
        lin.weight = np.zeros((2, 2), np.float32)
    seq = ig.nn.Sequential(ig.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="as child module '0'"):
        setattr(seq, "0", 3)


def test_a_shared_submodule_is_visited_once_as_torch():
    class Shared(ig.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = ig.nn.Linear(2, 2)
            self.b = self.a

    class SharedT(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(2, 2)
            self.b = self.a
    ours, theirs = Shared(), SharedT()
    assert [type(m).__name__.rstrip("T") for m in ours.modules()] == \
        [type(m).__name__.rstrip("T") for m in theirs.modules()]
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in theirs.named_modules()]
    calls, tcalls = [], []
    ours.apply(lambda m: calls.append(type(m).__name__.rstrip("T")))
    theirs.apply(lambda m: tcalls.append(type(m).__name__.rstrip("T")))
    assert calls == tcalls


def test_inspection_and_registration_methods_as_torch():
    def build(nn, P):
        m = nn.Sequential(nn.Linear(2, 3), nn.Sequential(nn.ReLU(), nn.Linear(3, 1)))
        m.insert(1, nn.Tanh())
        m.add_module("head", nn.Linear(1, 1))
        m.register_parameter("scale", P(np.ones(1, np.float32) if nn is ig.nn
                                         else torch.ones(1)))
        m.register_buffer("count", np.zeros(1, np.float32) if nn is ig.nn else torch.zeros(1))
        return m
    ours, theirs = build(ig.nn, ig.nn.Parameter), build(torch.nn, torch.nn.Parameter)
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in theirs.named_modules()]
    assert [n for n, _ in ours.named_children()] == [n for n, _ in theirs.named_children()]
    assert [n for n, _ in ours.named_parameters(recurse=False)] == \
        [n for n, _ in theirs.named_parameters(recurse=False)]
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert type(ours.get_submodule("2.1")).__name__ == type(theirs.get_submodule("2.1")).__name__
    assert ours.get_parameter("2.1.bias").shape == tuple(theirs.get_parameter("2.1.bias").shape)
    popped, tpopped = ours.pop(1), theirs.pop(1)
    assert type(popped).__name__ == type(tpopped).__name__ == "Tanh"


def test_the_guard_counter_moves_only_on_what_a_graph_depends_on():
    lin = ig.nn.Linear(2, 2)
    v = guards._VERSION[0]
    lin.weight.data = np.ones((2, 2), np.float32)       # same shape and dtype: no change
    lin.weight.data[...] = 3
    assert guards._VERSION[0] == v
    lin.weight.requires_grad = False
    assert guards._VERSION[0] > v


def test_reassigned_parameters_and_layers_keep_their_place_as_torch():
    """A new weight, head or Sequential layer under an existing name stays where the name
    was: state_dict order, and the order a Sequential runs its layers in."""
    ours, theirs = nn.Linear(2, 3), torch.nn.Linear(2, 3)
    ours.weight = nn.Parameter(np.zeros((3, 2), np.float32))
    theirs.weight = torch.nn.Parameter(torch.zeros(3, 2))
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["weight", "bias"]
    seq = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1))
    setattr(seq, "0", nn.Linear(4, 3))
    assert [type(m).__name__ for m in seq] == ["Linear", "ReLU", "Linear"]
    assert list(seq.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    d = nn.ModuleDict({"x": nn.Linear(1, 1), "a": nn.ReLU()})
    d["x"] = nn.Linear(1, 2)
    assert list(d.keys()) == ["x", "a"]


def test_non_persistent_and_none_buffers_stay_out_of_the_state_dict_as_torch():
    def net(mod, ones):
        class Net(mod.Module):
            def __init__(self):
                super().__init__()
                self.fc = mod.Linear(2, 2)
                self.register_buffer("mask", ones(2), persistent=False)
                self.register_buffer("cache", None)
        return Net()
    ours, theirs = net(nn, lambda n: np.ones(n, np.float32)), net(torch.nn, torch.ones)
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["fc.weight", "fc.bias"]
    assert [n for n, _ in ours.named_buffers()] == [n for n, _ in theirs.named_buffers()]
    assert ours.cache is None
    got = ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    assert got.missing_keys == [] and got.unexpected_keys == []
    bn = nn.BatchNorm1d(3, track_running_stats=False)
    assert bn.running_mean is None and list(bn.state_dict()) == ["weight", "bias"]
    with pytest.raises(KeyError, match="already exists"):
        ours.register_buffer("fc", np.zeros(1))


def test_named_parameters_prefix_and_load_state_dict_errors_as_torch():
    ours = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    theirs = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    assert [n for n, _ in ours.named_parameters(prefix="model")] == \
        [n for n, _ in theirs.named_parameters(prefix="model")]
    sd = {k: v.numpy() for k, v in theirs.state_dict().items()}
    del sd["1.num_batches_tracked"]           # older files: the count is filled in
    assert ours.load_state_dict(sd) == theirs.load_state_dict(
        {k: torch.from_numpy(v) for k, v in sd.items()})
    sd["0.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(RuntimeError, match="size mismatch for 0.weight"):
        ours.load_state_dict(sd, strict=False)
    with pytest.raises(RuntimeError, match="size mismatch for 0.weight"):
        theirs.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=False)
