"""Whole training steps (forward, backward and optimizer update as ONE graph) on the Triton
backend, kernels in Triton's interpreter, against the reference backend; every optimizer of
chapter 8 (alg. 8.1-8.7, the schedule of eq. 8.14, clipping of section 8.2.4, Polyak
averaging of eq. 8.39) updates all parameters in ONE multi-tensor launch, and the fused Adam
kernel matches torch.optim.Adam."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import irgraph.frontend as fe
from irgraph.backends.triton.kernels import optim as opt_kernels
from irgraph.backends.triton.runtime import default_device
from irgraph.frontend import nn, optim

RNG = np.random.default_rng(0)
X = RNG.standard_normal((6, 5)).astype(np.float32)
Y = RNG.integers(0, 3, 6).astype(np.int64)


def mlp() -> nn.Module:
    fe.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))


def cnn() -> nn.Module:
    """(A conv bias before batch norm has a zero gradient up to rounding, which Adam would
    amplify: the model has none, as usual.)"""
    fe.manual_seed(1)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 3 * 3, 3))


OPTIMIZERS = {
    "sgd-schedule": lambda: optim.SGD(lr=optim.LinearDecay(0.1, 0.01, 2)),
    "momentum-torch": lambda: optim.SGD(lr=0.05, momentum=0.9, convention="torch"),
    "nesterov-text": lambda: optim.SGD(lr=0.05, momentum=0.9, nesterov=True),
    "nesterov-torch": lambda: optim.SGD(lr=0.05, momentum=0.9, nesterov=True,
                                        convention="torch", weight_decay=0.01),
    "adagrad": lambda: optim.AdaGrad(lr=0.1),
    "rmsprop": lambda: optim.RMSprop(lr=0.01),
    "rmsprop-nesterov": lambda: optim.RMSprop(lr=0.01, momentum=0.5, nesterov=True),
    "adam-text-clip-norm": lambda: optim.Adam(lr=0.01, clip_grad_norm=0.5),
    "adam-torch-clip-value-polyak": lambda: optim.Adam(lr=0.01, convention="torch",
                                                       clip_grad_value=0.1, polyak=0.9),
}


def count_multi_tensor_launches(monkeypatch) -> list[int]:
    launches = []
    real = opt_kernels.multi_tensor_kernel

    class Counting:
        def __getitem__(self, grid):
            launches.append(grid[0])
            return real[grid]
    monkeypatch.setattr(opt_kernels, "multi_tensor_kernel", Counting())
    return launches


def train(model_fn, opt_fn, backend: str, steps: int = 3, **options):
    model, opt = model_fn(), opt_fn()
    step = fe.compile_train(model, nn.CrossEntropyLoss(), opt, fe.TensorSpec(X.shape),
                            fe.TensorSpec(Y.shape, "int64"), backend=backend, **options)
    losses = [step(X, Y) for _ in range(steps)]
    return losses, {k: np.array(v) for k, v in model.state_dict().items()}, opt


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_training_step_matches_reference_in_one_update_launch(name, monkeypatch):
    want_losses, want_params, want_opt = train(mlp, OPTIMIZERS[name], "reference")
    launches = count_multi_tensor_launches(monkeypatch)
    losses, params, opt = train(mlp, OPTIMIZERS[name], "triton")
    np.testing.assert_allclose(losses, want_losses, rtol=1e-5, atol=1e-6)
    for k in want_params:
        np.testing.assert_allclose(params[k], want_params[k], rtol=1e-5, atol=1e-6, err_msg=k)
    for pn, slots in want_opt.state.items():
        for slot, v in slots.items():
            np.testing.assert_allclose(opt.state[pn][slot], v, rtol=1e-5, atol=1e-6)
    # per step: one launch for the update of all 4 tensors, plus one each for clipping,
    # the global norm's partial sums and Polyak averaging when they are on
    o = opt
    per_step = 1 + bool(o.clip_grad_value) + 2 * bool(o.clip_grad_norm) + bool(o.polyak)
    assert len(launches) == 3 * per_step


@pytest.mark.parametrize("pipeline", [None, "default, fuse"])
def test_cnn_with_batch_norm_trains_like_reference(pipeline):
    """Conv, batch norm (its running statistics are donated outputs), max pooling, linear:
    forward, backward and Adam on the device, two steps; with the fusion pass, fused regions
    run as generated kernels (elementwise, reduction, conv epilogue)."""
    x = RNG.standard_normal((4, 2, 6, 6)).astype(np.float32)
    y = RNG.integers(0, 3, 4).astype(np.int64)
    results = []
    for backend, pipe in (("reference", None), ("triton", pipeline)):
        model, opt = cnn(), optim.Adam(lr=0.01)
        step = fe.compile_train(model, nn.CrossEntropyLoss(), opt, fe.TensorSpec(x.shape),
                                fe.TensorSpec(y.shape, "int64"), backend=backend,
                                pipeline=pipe)
        results.append(([step(x, y) for _ in range(2)], model.state_dict()))
    if pipeline:
        assert len(step.executable.ctx.notes) > 3          # generated kernels ran
    (l0, s0), (l1, s1) = results
    np.testing.assert_allclose(l1, l0, rtol=1e-4, atol=1e-5)
    for k in s0:
        np.testing.assert_allclose(np.asarray(s1[k]), np.asarray(s0[k]), rtol=1e-4, atol=1e-5,
                                   err_msg=k)


def test_fused_adam_kernel_matches_torch_adam_over_many_tensors():
    """One launch updates tensors of irregular sizes in place; torch.optim.Adam (PyTorch's
    convention of alg. 8.7) is the oracle, with a learning rate changed between steps."""
    sizes = [(3, 5), (1029,), (7,), (2, 2, 3)]
    gen = torch.Generator().manual_seed(0)
    dev = default_device()
    ps = [torch.randn(s, generator=gen).to(dev) for s in sizes]
    ref = [p.cpu().clone().requires_grad_(True) for p in ps]
    topt = torch.optim.Adam(ref, lr=0.01, betas=(0.8, 0.95), eps=1e-6)
    s = [torch.zeros_like(p) for p in ps]
    r = [torch.zeros_like(p) for p in ps]
    plan = opt_kernels.MultiTensorUpdate("adam_update", [p.numel() for p in ps], "float32",
                                         dev, convention="torch")
    for t, lr in enumerate([0.01, 0.03, 0.002], start=1):
        grads = [torch.randn(sz, generator=gen) for sz in sizes]
        for p, g in zip(ref, grads):
            p.grad = g.clone()
        grads = [g.to(dev) for g in grads]
        for group in topt.param_groups:
            group["lr"] = lr
        topt.step()
        scal = [torch.tensor(v, dtype=torch.float32, device=dev)
                for v in (lr, 0.8, 0.95, 1e-6, t)]
        plan([ps, grads, s, r], [[v] * len(ps) for v in scal], [ps, s, r])
        for p, q in zip(ps, ref):
            np.testing.assert_allclose(p.cpu().numpy(), q.detach().numpy(), rtol=1e-5,
                                       atol=1e-6)
