"""What a compiled function reads from the modules and values around it, watched as
torch.compile's guards watch it: a model reached through a plain function (its train/eval
mode, a frozen layer), a layer's settings (LeakyReLU's slope, Dropout's p, LayerNorm's
eps), a closure's constant, and an optimizer's structural options (nesterov, maximize,
amsgrad, centered: a new slot starts at zero) set between compiled steps: the next call
compiles again and agrees with torch (whose own Adam and RMSprop cannot switch amsgrad or
centered on mid-run: their state lacks the slot)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import irgraph as ig

X = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
SPEC = ig.TensorSpec((4, 3))


def _twin(ours: ig.nn.Module, theirs: torch.nn.Module) -> torch.nn.Module:
    theirs.load_state_dict({k: torch.tensor(np.array(v)) for k, v in ours.state_dict().items()})
    return theirs


@pytest.mark.parametrize("backend", ["reference", "llvm"])
def test_a_model_called_from_a_function_follows_eval_and_freezing(backend):
    ig.manual_seed(0)
    model = ig.nn.Sequential(ig.nn.Linear(3, 3), ig.nn.BatchNorm1d(3))
    twin = _twin(model, torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3)))
    f = ig.compile(lambda x: model(x), SPEC, backend=backend)
    jf = ig.jit(lambda x: model(x), backend=backend)
    grad = ig.value_and_grad(lambda x: (model(x) ** 2).sum(), SPEC, model=model,
                             backend=backend)
    for fn in (f, jf, lambda x: grad(x)[0]):
        fn(X)
    model.eval()
    twin.eval()
    # the three train-mode calls moved the running statistics three times: torch's twin
    # takes them, then gives the eval-mode output
    _twin(model, twin)
    want = twin(torch.tensor(X)).detach().numpy()
    np.testing.assert_allclose(f(X), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jf(X), want, rtol=1e-5, atol=1e-6)
    value, grads = grad(X)
    np.testing.assert_allclose(value, (want.astype(np.float64) ** 2).sum(), rtol=1e-5)
    model[0].weight.requires_grad_(False)
    assert "0.weight" not in grad(X)[1] and "0.bias" in grad(X)[1]


@pytest.mark.parametrize("backend", ["reference", "llvm"])
def test_layer_settings_and_closure_constants_changed_between_calls(backend):
    ig.manual_seed(1)
    act, norm, drop = ig.nn.LeakyReLU(0.1), ig.nn.LayerNorm(3), ig.nn.Dropout(0.5)
    model = ig.nn.Sequential(norm, act, drop)
    f = ig.compile(model, SPEC, backend=backend)
    f(X)
    act.negative_slope, norm.eps, drop.p = 0.5, 10.0, 0.0
    want = torch.nn.functional.leaky_relu(torch.nn.functional.layer_norm(
        torch.tensor(X), (3,), eps=10.0), 0.5)
    np.testing.assert_allclose(f(X), want.numpy(), rtol=1e-5, atol=1e-6)
    scale = 2.0
    g = ig.jit(lambda x: x * scale, backend=backend)
    np.testing.assert_allclose(g(X), X * 2)
    scale = 3.0
    np.testing.assert_allclose(g(X), X * 3)


@pytest.mark.parametrize("name,kw,attr", [
    ("SGD", dict(lr=0.1, momentum=0.5), "nesterov"),
    ("SGD", dict(lr=0.1, momentum=0.5), "maximize"),
    ("Adam", dict(lr=0.05), "maximize"),
])
def test_structural_optimizer_options_set_between_steps_as_torch(name, kw, attr):
    r = np.random.default_rng(0)
    xs = [r.standard_normal((8, 5)).astype(np.float32) for _ in range(4)]
    ys = [r.integers(0, 3, 8) for _ in range(4)]
    ig.manual_seed(0)
    m = ig.nn.Linear(5, 3)
    tm = _twin(m, torch.nn.Linear(5, 3))
    opt = getattr(ig.optim, name)(convention="torch", **kw)
    topt = getattr(torch.optim, name)(tm.parameters(), **kw)
    step = ig.compile_train(m, ig.nn.CrossEntropyLoss(), opt, ig.TensorSpec((8, 5)),
                            ig.TensorSpec((8,), "int64"), backend="llvm")
    for k in range(4):
        if k == 2:
            setattr(opt, attr, True)
            topt.param_groups[0][attr] = True
        step(xs[k], ys[k])
        topt.zero_grad()
        torch.nn.functional.cross_entropy(tm(torch.tensor(xs[k])), torch.tensor(ys[k])).backward()
        topt.step()
    np.testing.assert_allclose(m.weight.data, tm.weight.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_the_gradient_of_a_function_of_no_arguments():
    ig.manual_seed(0)
    lin = ig.nn.Linear(3, 1)

    def loss():
        return lin(X).sum()
    g = ig.grad(loss, model=lin)()
    np.testing.assert_allclose(g["weight"], np.broadcast_to(X.sum(0), (1, 3)), rtol=1e-6)
    np.testing.assert_allclose(g["bias"], [4.0])
