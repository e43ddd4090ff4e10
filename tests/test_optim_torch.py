"""torch-convention optimizers against torch.optim: same MLP, same batches, same trajectory.

A Linear-tanh-Linear classifier is trained by the compiled step and by torch with the same
initial weights, in float64 for 20 steps (parameters and losses within 1e-6 relative at every
step) and in float32 for 5 steps (within 1e-5).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import irgraph.frontend as fe
from irgraph.frontend import nn, optim
from irgraph.frontend.train import compile_train

D, H, C, N, STEPS = 4, 6, 3, 8, 20


def make_models(dtype=np.float64, seed: int = 0):
    fe.manual_seed(seed)
    ours = nn.Sequential(nn.Linear(D, H), nn.Tanh(), nn.Linear(H, C))
    theirs = torch.nn.Sequential(torch.nn.Linear(D, H), torch.nn.Tanh(), torch.nn.Linear(H, C))
    if dtype == np.float64:
        theirs = theirs.double()
    with torch.no_grad():
        for i in (0, 2):
            for name in ("weight", "bias"):
                p = getattr(ours[i], name)
                p.data = p.data.astype(dtype)
                getattr(theirs[i], name).copy_(torch.from_numpy(p.data))
    return ours, theirs


def data(steps: int, dtype, seed: int = 1):
    r = np.random.default_rng(seed)
    return [(r.standard_normal((N, D)).astype(dtype), r.integers(0, C, N))
            for _ in range(steps)]


def compare(our_opt, make_torch_opt, steps=STEPS, clip=None, on_step=None, dtype=np.float64,
            backend="reference"):
    tol = 1e-6 if dtype == np.float64 else 1e-5
    ours, theirs = make_models(dtype)
    step = compile_train(ours, nn.CrossEntropyLoss(), our_opt,
                         fe.TensorSpec((N, D), np.dtype(dtype).name),
                         fe.TensorSpec((N,), "int64"), pipeline=[], backend=backend)
    topt = make_torch_opt(theirs.parameters())
    for k, (x, y) in enumerate(data(steps, dtype)):
        if on_step:
            on_step(k, our_opt, topt)
        loss = step(x, y)
        topt.zero_grad()
        tloss = torch.nn.functional.cross_entropy(theirs(torch.from_numpy(x)),
                                                  torch.from_numpy(y))
        tloss.backward()
        if clip:
            clip(theirs.parameters())
        topt.step()
        assert loss == pytest.approx(tloss.item(), rel=tol, abs=tol), f"loss at step {k}"
        for i in (0, 2):
            for name in ("weight", "bias"):
                np.testing.assert_allclose(getattr(ours[i], name).data,
                                           getattr(theirs[i], name).detach().numpy(),
                                           rtol=tol, atol=tol,
                                           err_msg=f"{i}.{name} after step {k + 1}")


T = dict(convention="torch")
CASES = {
    "sgd": (lambda: optim.SGD(lr=0.3, **T), lambda p: torch.optim.SGD(p, lr=0.3)),
    "sgd_wd": (lambda: optim.SGD(lr=0.3, weight_decay=0.1, **T),
               lambda p: torch.optim.SGD(p, lr=0.3, weight_decay=0.1)),
    "momentum": (lambda: optim.SGD(lr=0.2, momentum=0.9, **T),
                 lambda p: torch.optim.SGD(p, lr=0.2, momentum=0.9)),
    "momentum_dampening": (lambda: optim.SGD(lr=0.2, momentum=0.9, dampening=0.3, **T),
                           lambda p: torch.optim.SGD(p, lr=0.2, momentum=0.9, dampening=0.3)),
    "nesterov": (lambda: optim.SGD(lr=0.2, momentum=0.9, nesterov=True, weight_decay=0.01, **T),
                 lambda p: torch.optim.SGD(p, lr=0.2, momentum=0.9, nesterov=True,
                                           weight_decay=0.01)),
    "adagrad": (lambda: optim.Adagrad(lr=0.1, **T), lambda p: torch.optim.Adagrad(p, lr=0.1)),
    "adagrad_decay": (lambda: optim.Adagrad(lr=0.1, lr_decay=0.3, initial_accumulator_value=0.2,
                                            weight_decay=0.05, **T),
                      lambda p: torch.optim.Adagrad(p, lr=0.1, lr_decay=0.3,
                                                    initial_accumulator_value=0.2,
                                                    weight_decay=0.05)),
    "rmsprop": (lambda: optim.RMSprop(lr=0.01, **T), lambda p: torch.optim.RMSprop(p, lr=0.01)),
    "rmsprop_momentum": (lambda: optim.RMSprop(lr=0.01, alpha=0.9, momentum=0.8, eps=1e-4, **T),
                         lambda p: torch.optim.RMSprop(p, lr=0.01, alpha=0.9, momentum=0.8,
                                                       eps=1e-4)),
    "rmsprop_centered": (lambda: optim.RMSprop(lr=0.01, centered=True, weight_decay=0.1, **T),
                         lambda p: torch.optim.RMSprop(p, lr=0.01, centered=True,
                                                       weight_decay=0.1)),
    "rmsprop_centered_momentum": (lambda: optim.RMSprop(lr=0.01, alpha=0.9, momentum=0.7,
                                                        centered=True, **T),
                                  lambda p: torch.optim.RMSprop(p, lr=0.01, alpha=0.9,
                                                                momentum=0.7, centered=True)),
    "adam": (lambda: optim.Adam(lr=0.05, **T), lambda p: torch.optim.Adam(p, lr=0.05)),
    "adam_wd_eps": (lambda: optim.Adam(lr=0.05, betas=(0.8, 0.9), eps=1e-3, weight_decay=0.1,
                                       **T),
                    lambda p: torch.optim.Adam(p, lr=0.05, betas=(0.8, 0.9), eps=1e-3,
                                               weight_decay=0.1)),
    "adam_amsgrad": (lambda: optim.Adam(lr=0.05, betas=(0.8, 0.9), amsgrad=True, **T),
                     lambda p: torch.optim.Adam(p, lr=0.05, betas=(0.8, 0.9), amsgrad=True)),
    "adamw_amsgrad": (lambda: optim.AdamW(lr=0.05, weight_decay=0.1, amsgrad=True, **T),
                      lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.1, amsgrad=True)),
    "adamw": (lambda: optim.AdamW(lr=0.05, weight_decay=0.2, **T),
              lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.2)),
    # torch's other adaptive rules (not in the text: torch's convention is their default)
    "adamax": (lambda: optim.Adamax(lr=0.05), lambda p: torch.optim.Adamax(p, lr=0.05)),
    "adamax_wd": (lambda: optim.Adamax(lr=0.05, betas=(0.8, 0.95), eps=1e-3,
                                       weight_decay=0.1),
                  lambda p: torch.optim.Adamax(p, lr=0.05, betas=(0.8, 0.95), eps=1e-3,
                                               weight_decay=0.1)),
    "adadelta": (lambda: optim.Adadelta(), lambda p: torch.optim.Adadelta(p)),
    "adadelta_wd": (lambda: optim.Adadelta(lr=0.5, rho=0.8, eps=1e-4, weight_decay=0.1),
                    lambda p: torch.optim.Adadelta(p, lr=0.5, rho=0.8, eps=1e-4,
                                                   weight_decay=0.1)),
    "nadam": (lambda: optim.NAdam(lr=0.05), lambda p: torch.optim.NAdam(p, lr=0.05)),
    "nadam_wd": (lambda: optim.NAdam(lr=0.05, betas=(0.8, 0.9), weight_decay=0.1,
                                     momentum_decay=0.01),
                 lambda p: torch.optim.NAdam(p, lr=0.05, betas=(0.8, 0.9), weight_decay=0.1,
                                             momentum_decay=0.01)),
    "nadamw": (lambda: optim.NAdam(lr=0.05, weight_decay=0.1, decoupled_weight_decay=True),
               lambda p: torch.optim.NAdam(p, lr=0.05, weight_decay=0.1,
                                           decoupled_weight_decay=True)),
    # 20 steps: rho_t passes 5 at the sixth (the plain momentum step before, rectified after)
    "radam": (lambda: optim.RAdam(lr=0.05), lambda p: torch.optim.RAdam(p, lr=0.05)),
    "radam_wd": (lambda: optim.RAdam(lr=0.05, betas=(0.8, 0.99), weight_decay=0.1),
                 lambda p: torch.optim.RAdam(p, lr=0.05, betas=(0.8, 0.99), weight_decay=0.1)),
    "rprop": (lambda: optim.Rprop(lr=0.01), lambda p: torch.optim.Rprop(p, lr=0.01)),
    "rprop_etas": (lambda: optim.Rprop(lr=0.05, etas=(0.3, 1.5), step_sizes=(1e-3, 0.08)),
                   lambda p: torch.optim.Rprop(p, lr=0.05, etas=(0.3, 1.5),
                                               step_sizes=(1e-3, 0.08))),
    "radamw": (lambda: optim.RAdam(lr=0.05, weight_decay=0.1, decoupled_weight_decay=True),
               lambda p: torch.optim.RAdam(p, lr=0.05, weight_decay=0.1,
                                           decoupled_weight_decay=True)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_trajectory_matches_torch_optim_float64_20_steps(name):
    ours, theirs = CASES[name]
    compare(ours(), theirs)


def test_momentum_text_and_torch_forms_agree_at_constant_lr():
    """Alg. 8.2's v is -lr times torch's buffer: with a constant lr the trajectories agree."""
    compare(optim.SGD(lr=0.2, momentum=0.9), lambda p: torch.optim.SGD(p, lr=0.2, momentum=0.9))


def test_clip_grad_norm_matches_torch():
    compare(optim.SGD(lr=0.5, clip_grad_norm=0.1, **T), lambda p: torch.optim.SGD(p, lr=0.5),
            clip=lambda ps: torch.nn.utils.clip_grad_norm_(ps, 0.1))


def test_clip_grad_value_matches_torch():
    compare(optim.Adam(lr=0.05, clip_grad_value=0.05, **T),
            lambda p: torch.optim.Adam(p, lr=0.05),
            clip=lambda ps: torch.nn.utils.clip_grad_value_(ps, 0.05))


def test_changing_hyperparameters_between_steps_matches_torch():
    """lr, momentum and betas set between steps are runtime inputs: same as torch's groups."""
    def on_step(k, ours, theirs):
        lr, b1 = 0.05 / (k + 1), 0.9 - 0.02 * k
        for g in ours.param_groups + theirs.param_groups:
            g["lr"], g["betas"] = lr, (b1, 0.99)
        assert ours.lr == lr and ours.betas == (b1, 0.99)
    compare(optim.Adam(lr=0.05, **T), lambda p: torch.optim.Adam(p, lr=0.05), on_step=on_step)


@pytest.mark.parametrize("name,kw", [("SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
                                     ("Adam", dict(lr=0.05, weight_decay=0.01)),
                                     ("RMSprop", dict(lr=0.01)), ("Adagrad", dict(lr=0.1)),
                                     ("Adamax", dict(lr=0.05)), ("Adadelta", dict()),
                                     ("NAdam", dict(lr=0.05)), ("RAdam", dict(lr=0.05)),
                                     ("Rprop", dict(lr=0.01))])
def test_maximize_ascends_as_torch(name, kw):
    """torch's ``maximize=True``: the gradient negated before the update (weight decay
    added after), the reported loss unchanged."""
    fe.manual_seed(0)
    ours = fe.nn.Linear(3, 2).double()
    theirs = torch.nn.Linear(3, 2).double()
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    opt = getattr(fe.optim, name)(convention="torch", maximize=True, **kw)
    topt = getattr(torch.optim, name)(theirs.parameters(), maximize=True, **kw)
    step = fe.compile_train(ours, lambda y: (y * y).mean(), opt,
                            fe.TensorSpec((4, 3), "float64"), n_model_inputs=1)
    r = np.random.default_rng(0)
    for _ in range(3):
        x = r.standard_normal((4, 3))
        loss = step(x)
        topt.zero_grad()
        tl = (theirs(torch.from_numpy(x)) ** 2).mean()
        tl.backward()
        topt.step()
        opt.zero_grad()
        assert loss == pytest.approx(tl.item(), rel=1e-12)
    for n, p in theirs.named_parameters():
        np.testing.assert_allclose(ours.state_dict()[n], p.detach().numpy(), rtol=1e-10)


@pytest.mark.parametrize("backend", ["reference", "llvm"])
def test_momentum_set_to_zero_between_steps_keeps_the_buffer_as_torch(backend):
    """torch.optim skips the momentum buffer while momentum is 0 (a plain step); set back,
    momentum continues from the buffer it left (SGD with and without Nesterov, RMSprop)."""
    def on_step(k, ours, theirs):
        mu = 0.0 if k in (1, 2) else 0.8
        for g in ours.param_groups + theirs.param_groups:
            g["momentum"] = mu
    compare(optim.SGD(lr=0.2, momentum=0.9, **T),
            lambda p: torch.optim.SGD(p, lr=0.2, momentum=0.9), steps=6, on_step=on_step,
            backend=backend)
    compare(optim.RMSprop(lr=0.01, momentum=0.9, **T),
            lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.9), steps=6,
            on_step=on_step, backend=backend)


def test_resuming_from_state_dicts_goes_on_with_the_scheduled_rate():
    """The optimizer's state_dict holds each group's hyperparameters (torch's param_groups),
    so a run resumed from the optimizer's and the scheduler's state dicts continues with the
    rate the scheduler had set, as torch's."""
    def run(mod, make_params):
        opt = mod.SGD(make_params(), lr=0.1, **({} if mod is torch.optim else T))
        sched = mod.lr_scheduler.StepLR(opt, 2, 0.5)
        for _ in range(3):
            if mod is torch.optim:
                opt.step()
            sched.step()
        opt2 = mod.SGD(make_params(), lr=0.1, **({} if mod is torch.optim else T))
        sched2 = mod.lr_scheduler.StepLR(opt2, 2, 0.5)
        opt2.load_state_dict(opt.state_dict())
        sched2.load_state_dict(sched.state_dict())
        rates = []
        for _ in range(3):
            rates.append(opt2.param_groups[0]["lr"])
            if mod is torch.optim:
                opt2.step()
            sched2.step()
        return rates
    ours = run(optim, lambda: None)
    theirs = run(torch.optim, lambda: [torch.nn.Parameter(torch.zeros(1))])
    assert ours == pytest.approx(theirs, rel=1e-12) and ours[0] == 0.05


def test_model_double_mid_training_carries_the_state_over():
    """model.double() after some steps: the step compiles again and the optimizer state
    follows the parameters' dtype, so training goes on as torch's would."""
    fe.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    opt = optim.SGD(lr=0.1, momentum=0.9, **T)
    step = compile_train(model, nn.MSELoss(), opt, fe.TensorSpec((5, 4)), fe.TensorSpec((5, 3)))
    theirs = torch.nn.Linear(4, 3)
    with torch.no_grad():
        theirs.weight.copy_(torch.from_numpy(model[0].weight.data))
        theirs.bias.copy_(torch.from_numpy(model[0].bias.data))
    topt = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9)
    x, y = np.ones((5, 4), np.float32), np.zeros((5, 3), np.float32)
    for k in range(4):
        if k == 2:
            model.double()
            theirs.double()
        # the step's inputs stay as compiled (float32); torch's take the model's dtype
        xs, ys = (x, y) if k < 2 else (x.astype(np.float64), y.astype(np.float64))
        loss = step(x, y)
        topt.zero_grad()
        tl = torch.nn.functional.mse_loss(theirs(torch.from_numpy(xs)), torch.from_numpy(ys))
        tl.backward()
        topt.step()
        assert loss == pytest.approx(tl.item(), rel=1e-5)
    assert opt.state["0.weight"]["momentum_buffer"].dtype == np.float64
    np.testing.assert_allclose(model[0].weight.data, theirs.weight.detach().numpy(), rtol=1e-5)


def test_nested_compiled_gradients_and_rmsprop_nesterov_say_what_to_do():
    f = lambda x: (fe.F.tanh(x) ** 3).sum()      # noqa: E731
    with pytest.raises(NotImplementedError, match="hessian, hvp or jacobian"):
        fe.grad(lambda x: (fe.grad(f)(x) ** 2).sum())(np.ones((3, 2), np.float32))
    with pytest.raises(NotImplementedError, match="nesting ig.grad"):
        fe.grad(lambda x: (fe.grad(f, fe.TensorSpec((3, 2)))(x) ** 2).sum(),
                fe.TensorSpec((3, 2)))(np.ones((3, 2), np.float32))
    with pytest.raises(ValueError, match="no Nesterov form.*no centered form"):
        optim.RMSprop(lr=0.1, momentum=0.9, centered=True, nesterov=True, **T).spec()


THAW = {
    "adam": (lambda: optim.Adam(lr=0.1, **T), lambda p: torch.optim.Adam(p, lr=0.1)),
    "nadam": (lambda: optim.NAdam(lr=0.1), lambda p: torch.optim.NAdam(p, lr=0.1)),
    "sgd_dampening": (lambda: optim.SGD(lr=0.1, momentum=0.9, dampening=0.5, **T),
                      lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.5)),
    "adagrad_lr_decay": (lambda: optim.Adagrad(lr=0.1, lr_decay=0.5, **T),
                         lambda p: torch.optim.Adagrad(p, lr=0.1, lr_decay=0.5)),
}


@pytest.mark.parametrize("backend", ["reference", "llvm"])
@pytest.mark.parametrize("name", sorted(THAW))
def test_a_layer_thawed_later_counts_its_own_steps_as_torch(name, backend):
    """torch counts each parameter's steps (Adam's t, NAdam's schedule, Adagrad's lr_decay,
    SGD's first dampened step): a weight frozen for the first two steps is corrected as at
    its first step when thawed, while the bias, trained throughout, is at its third. The
    step compiles with one set of inputs per such count; an optimizer state_dict carries
    the counts."""
    ours_opt, make_theirs = THAW[name]
    fe.manual_seed(0)
    lin = nn.Linear(3, 2).double()
    twin = torch.nn.Linear(3, 2).double()
    with torch.no_grad():
        twin.weight.copy_(torch.from_numpy(lin.weight.data))
        twin.bias.copy_(torch.from_numpy(lin.bias.data))
    opt = ours_opt()
    step = compile_train(lin, lambda out, y: (out * out).sum(), opt,
                         fe.TensorSpec((4, 3), "float64"), fe.TensorSpec((1,), "float64"),
                         backend=backend)
    topt = make_theirs(twin.parameters())
    r = np.random.default_rng(0)
    for k in range(5):
        frozen = k < 2
        lin.weight.requires_grad = not frozen
        twin.weight.requires_grad = not frozen
        x = r.standard_normal((4, 3))
        step(x, np.zeros(1))
        topt.zero_grad(set_to_none=True)
        (twin(torch.from_numpy(x)) ** 2).sum().backward()
        topt.step()
        np.testing.assert_allclose(lin.weight.data, twin.weight.detach().numpy(), rtol=1e-9,
                                   atol=1e-12, err_msg=f"weight after step {k + 1}")
        np.testing.assert_allclose(lin.bias.data, twin.bias.detach().numpy(), rtol=1e-9,
                                   atol=1e-12, err_msg=f"bias after step {k + 1}")
    assert opt.state_dict()["param_steps"] == {"weight": 3, "bias": 5}
