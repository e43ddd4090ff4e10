"""Parameter groups (torch.optim's ``[{"params": ..., "lr": ...}, ...]``): each group's
hyperparameters are runtime inputs of the one compiled step, checked against torch.optim step
by step (SGD with momentum is alg. 8.2 in torch's convention, Adam alg. 8.7, RMSProp alg. 8.5,
AdaGrad alg. 8.4), and learning-rate schedulers driving every group as torch's do."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import irgraph as ig

BACKENDS = ["reference", "llvm", "triton"]


def _twins(seed=0):
    ig.manual_seed(seed)
    ours = ig.nn.Sequential(ig.nn.Linear(4, 6), ig.nn.Tanh(), ig.nn.Linear(6, 3)).double()
    theirs = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(),
                                 torch.nn.Linear(6, 3)).double()
    with torch.no_grad():
        for (_, p), q in zip(ours.named_parameters(), theirs.parameters()):
            q.copy_(torch.from_numpy(np.array(p.data)))
    return ours, theirs


def _groups(model, second: dict, by_kind=False):
    """Two groups: the first layer and the second (``by_kind``: weights and biases)."""
    if by_kind:
        w = [p for n, p in model.named_parameters() if n.endswith("weight")]
        b = [p for n, p in model.named_parameters() if n.endswith("bias")]
        return [{"params": w}, {"params": b, **second}]
    return [{"params": model[0].parameters()}, {"params": model[2].parameters(), **second}]


def _run(make_ours, make_theirs, backend, steps=5, change=None, by_kind=False, n=6):
    """Train both ``steps`` times; parameters must agree after every step. ``change(k,
    ours_opt, theirs_opt)`` may edit the groups between steps."""
    ours, theirs = _twins()
    opt = make_ours(lambda second: _groups(ours, second, by_kind))
    topt = make_theirs(lambda second: _groups(theirs, second, by_kind))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, 4))
    y = rng.integers(0, 3, n)
    step = ig.compile_train(ours, ig.nn.CrossEntropyLoss(), opt,
                            ig.TensorSpec((n, 4), "float64"), ig.TensorSpec((n,), "int64"),
                            backend=backend)
    for k in range(steps):
        loss = step(x, y)
        topt.zero_grad()
        tl = torch.nn.functional.cross_entropy(theirs(torch.from_numpy(x)), torch.from_numpy(y))
        tl.backward()
        topt.step()
        assert loss == pytest.approx(tl.item(), rel=1e-10)
        for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
            np.testing.assert_allclose(p.data, q.detach().numpy(), rtol=1e-9, atol=1e-12,
                                       err_msg=f"{name} after step {k + 1}")
        if change is not None:
            change(k, opt, topt)
    return opt, topt


@pytest.mark.parametrize("backend", BACKENDS)
def test_sgd_momentum_groups_follow_torch(backend):
    """Alg. 8.2 (torch's form): each group its own lr, momentum and weight decay; a group's
    lr changed between steps takes effect at the next, without recompiling."""
    def change(k, opt, topt):
        if k == 1:
            opt.param_groups[1]["lr"] = topt.param_groups[1]["lr"] = 0.05
            opt.param_groups[0]["momentum"] = topt.param_groups[0]["momentum"] = 0.5
    _run(lambda g: ig.optim.SGD(g({"lr": 0.3, "momentum": 0.5, "weight_decay": 0.1}), lr=0.1,
                                momentum=0.9, convention="torch"),
         lambda g: torch.optim.SGD(g({"lr": 0.3, "momentum": 0.5, "weight_decay": 0.1}),
                                   lr=0.1, momentum=0.9),
         backend, change=change)


@pytest.mark.parametrize("backend", ["reference", "llvm"])
def test_sgd_group_without_momentum_and_nesterov(backend):
    """One group with momentum, one plain (torch keeps no buffer for it: the same update);
    and Nesterov's torch form with a momentum per group."""
    _run(lambda g: ig.optim.SGD(g({"momentum": 0.0}), lr=0.1, momentum=0.9,
                                convention="torch"),
         lambda g: torch.optim.SGD(g({"momentum": 0.0}), lr=0.1, momentum=0.9), backend)
    _run(lambda g: ig.optim.SGD(g({"momentum": 0.6, "lr": 0.02}), lr=0.1, momentum=0.9,
                                nesterov=True, convention="torch"),
         lambda g: torch.optim.SGD(g({"momentum": 0.6, "lr": 0.02}), lr=0.1, momentum=0.9,
                                   nesterov=True), backend)


@pytest.mark.parametrize("backend", ["reference", "llvm"])
def test_adamw_without_decay_on_biases(backend):
    """The usual fine-tuning split: weights decayed, biases not (AdamW), its own betas."""
    _run(lambda g: ig.optim.AdamW(g({"weight_decay": 0.0, "betas": (0.8, 0.99)}), lr=0.01,
                                  weight_decay=0.1, convention="torch"),
         lambda g: torch.optim.AdamW(g({"weight_decay": 0.0, "betas": (0.8, 0.99)}), lr=0.01,
                                     weight_decay=0.1),
         backend, by_kind=True)


@pytest.mark.parametrize("backend", ["reference", "llvm"])
def test_adam_amsgrad_groups(backend):
    _run(lambda g: ig.optim.Adam(g({"lr": 0.05, "eps": 1e-6}), lr=0.01, amsgrad=True,
                                 convention="torch"),
         lambda g: torch.optim.Adam(g({"lr": 0.05, "eps": 1e-6}), lr=0.01, amsgrad=True),
         backend)


@pytest.mark.parametrize("backend", ["reference", "llvm"])
def test_rmsprop_and_adagrad_groups(backend):
    """RMSProp (alg. 8.5) with each group's alpha and momentum; AdaGrad (alg. 8.4) with each
    group's lr_decay (the accumulator starts at the constructor's value in every group, as
    torch's: a group giving another is refused)."""
    _run(lambda g: ig.optim.RMSprop(g({"alpha": 0.9, "momentum": 0.3}), lr=0.01, momentum=0.5,
                                    convention="torch"),
         lambda g: torch.optim.RMSprop(g({"alpha": 0.9, "momentum": 0.3}), lr=0.01,
                                       momentum=0.5), backend)
    opt, _ = _run(lambda g: ig.optim.Adagrad(g({"lr_decay": 0.1, "eps": 1e-3}), lr=0.1,
                                             initial_accumulator_value=0.5,
                                             convention="torch"),
                  lambda g: torch.optim.Adagrad(g({"lr_decay": 0.1, "eps": 1e-3}), lr=0.1,
                                                initial_accumulator_value=0.5),
                  backend)
    assert opt.param_groups[1]["initial_accumulator_value"] == 0.5
    model, _ = _twins()
    with pytest.raises(ValueError, match="initial_accumulator_value"):
        ig.optim.Adagrad(_groups(model, {"initial_accumulator_value": 0.1}), lr=0.1)


def test_schedulers_drive_every_group_as_torch():
    """StepLR, a LambdaLR with one lambda per group, OneCycleLR with a max_lr per group
    (cycling each group's momentum) and ReduceLROnPlateau with a floor per group: every
    group's rate as torch's, epoch by epoch."""
    ours_s = ig.optim.lr_scheduler
    sched = torch.optim.lr_scheduler

    def pair(make_ours, make_theirs, opt_kind="sgd", steps=12, metric=None):
        ours, theirs = _twins()
        if opt_kind == "sgd":
            opt = ig.optim.SGD(_groups(ours, {"lr": 0.5, "momentum": 0.8}), lr=0.1,
                               momentum=0.9, convention="torch")
            topt = torch.optim.SGD(_groups(theirs, {"lr": 0.5, "momentum": 0.8}), lr=0.1,
                                   momentum=0.9)
        else:
            opt = ig.optim.Adam(_groups(ours, {"lr": 0.5}), lr=0.1, convention="torch")
            topt = torch.optim.Adam(_groups(theirs, {"lr": 0.5}), lr=0.1)
        s, ts = make_ours(opt), make_theirs(topt)
        for k in range(steps):
            for a, b in zip(opt.param_groups, topt.param_groups):
                assert a["lr"] == pytest.approx(b["lr"], rel=1e-12), k
                for key in ("momentum", "betas"):
                    if key in b:
                        assert a[key] == pytest.approx(b[key], rel=1e-12), (k, key)
            assert s.get_last_lr() == pytest.approx(ts.get_last_lr(), rel=1e-12)
            topt.step()
            if metric is None:
                s.step()
                ts.step()
            else:
                s.step(metric(k))
                ts.step(metric(k))

    pair(lambda o: ours_s.StepLR(o, 3, gamma=0.5), lambda o: sched.StepLR(o, 3, gamma=0.5))
    lams = [lambda e: 0.9 ** e, lambda e: 1.0 / (1 + e)]
    pair(lambda o: ours_s.LambdaLR(o, lams), lambda o: sched.LambdaLR(o, lams))
    pair(lambda o: ours_s.OneCycleLR(o, max_lr=[0.2, 1.0], total_steps=20),
         lambda o: sched.OneCycleLR(o, max_lr=[0.2, 1.0], total_steps=20))
    pair(lambda o: ours_s.OneCycleLR(o, max_lr=[0.2, 1.0], total_steps=20),
         lambda o: sched.OneCycleLR(o, max_lr=[0.2, 1.0], total_steps=20), opt_kind="adam")
    pair(lambda o: ours_s.ReduceLROnPlateau(o, patience=1, min_lr=[0.01, 0.2]),
         lambda o: sched.ReduceLROnPlateau(o, patience=1, min_lr=[0.01, 0.2]),
         metric=lambda k: 1.0)


def test_a_scheduled_group_rate_reaches_the_compiled_step():
    """StepLR halving both groups' rates: the parameters still follow torch's."""
    ours_s = ig.optim.lr_scheduler
    holder = {}

    def make_ours(g):
        holder["o"] = ig.optim.SGD(g({"lr": 0.4}), lr=0.1, convention="torch")
        holder["s"] = ours_s.StepLR(holder["o"], 2, gamma=0.5)
        return holder["o"]

    def make_theirs(g):
        holder["t"] = torch.optim.SGD(g({"lr": 0.4}), lr=0.1)
        holder["ts"] = torch.optim.lr_scheduler.StepLR(holder["t"], 2, gamma=0.5)
        return holder["t"]

    def change(k, opt, topt):
        holder["s"].step()
        holder["ts"].step()
    _run(make_ours, make_theirs, "llvm", steps=6, change=change)


def test_param_groups_view_and_errors():
    model, _ = _twins()
    opt = ig.optim.Adam(_groups(model, {"lr": 0.5}), lr=0.1)
    groups = opt.param_groups
    assert len(groups) == 2 and [g["lr"] for g in groups] == [0.1, 0.5]
    assert [id(p) for p in groups[1]["params"]] == [id(p) for p in model[2].parameters()]
    assert groups[1]["betas"] == (0.9, 0.999) and "eps" in groups[1].keys()
    groups[1]["lr"] = 0.25
    assert opt.param_groups[1]["lr"] == 0.25 and opt.lr == 0.1
    with pytest.raises(KeyError, match="shared by every parameter group"):
        groups[1]["amsgrad"] = True
    with pytest.raises(ValueError, match="unknown option 'gamma'"):
        ig.optim.SGD(_groups(model, {"gamma": 0.5}), lr=0.1)
    with pytest.raises(ValueError, match="amsgrad"):
        ig.optim.Adam(_groups(model, {"amsgrad": True}), lr=0.1, convention="torch")
    with pytest.raises(ValueError, match="also in an earlier group"):
        ig.optim.SGD([{"params": model[0].parameters()},
                      {"params": list(model.parameters())}], lr=0.1)
    with pytest.raises(ValueError, match="no 'params'"):
        ig.optim.SGD([{"lr": 0.1}], lr=0.1)
    with pytest.raises(TypeError, match="not both"):
        ig.optim.SGD([{"params": model[0].parameters()}, model[2].weight], lr=0.1)
    with pytest.raises(ValueError, match="momentum > 0 in every group"):
        ig.optim.SGD(_groups(model, {"momentum": 0.0}), lr=0.1, momentum=0.9, nesterov=True,
                     convention="torch")


def test_parameters_outside_every_group_stay_fixed():
    """As torch: the optimizer updates only the parameters its groups hold."""
    ours, theirs = _twins()
    opt = ig.optim.SGD([{"params": [ours[0].weight]}, {"params": [ours[2].bias], "lr": 1.0}],
                       lr=0.1, convention="torch")
    x = np.random.default_rng(0).standard_normal((6, 4))
    y = np.arange(6) % 3
    before = {n: np.array(p.data) for n, p in ours.named_parameters()}
    step = ig.compile_train(ours, ig.nn.CrossEntropyLoss(), opt,
                            ig.TensorSpec((6, 4), "float64"), ig.TensorSpec((6,), "int64"),
                            backend="llvm")
    step(x, y)
    after = dict(ours.named_parameters())
    for n in ("0.bias", "2.weight"):
        np.testing.assert_array_equal(after[n].data, before[n])
    for n in ("0.weight", "2.bias"):
        assert not np.array_equal(after[n].data, before[n])


@pytest.mark.parametrize("backend", ["reference", "llvm"])
def test_torch_only_rules_take_groups(backend):
    """NAdam (its momentum schedule per group's betas and momentum_decay) and Adadelta
    (each group's rho)."""
    _run(lambda g: ig.optim.NAdam(g({"betas": (0.7, 0.9), "momentum_decay": 0.01}), lr=0.05),
         lambda g: torch.optim.NAdam(g({"betas": (0.7, 0.9), "momentum_decay": 0.01}),
                                     lr=0.05), backend)
    _run(lambda g: ig.optim.Adadelta(g({"rho": 0.5, "lr": 0.3})),
         lambda g: torch.optim.Adadelta(g({"rho": 0.5, "lr": 0.3})), backend)
