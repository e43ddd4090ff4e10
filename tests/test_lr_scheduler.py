"""The learning-rate schedulers against torch.optim.lr_scheduler: the same rates epoch by
epoch (and the momentum / beta1 OneCycleLR cycles), and a compiled training step that reads
them."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import irgraph as ig
from irgraph.frontend.optim import lr_scheduler as S

TS = torch.optim.lr_scheduler

CASES = [
    ("StepLR", dict(step_size=3, gamma=0.5)),
    ("MultiStepLR", dict(milestones=[2, 5, 5, 9], gamma=0.3)),
    ("ConstantLR", dict(factor=0.25, total_iters=4)),
    ("LinearLR", dict(start_factor=0.2, end_factor=0.9, total_iters=6)),
    ("ExponentialLR", dict(gamma=0.9)),
    ("PolynomialLR", dict(total_iters=7, power=2.0)),
    ("CosineAnnealingLR", dict(T_max=6, eta_min=0.01)),
    ("CosineAnnealingWarmRestarts", dict(T_0=3, T_mult=2, eta_min=0.001)),
    ("CosineAnnealingWarmRestarts", dict(T_0=4)),
    ("CosineAnnealingWarmRestarts", dict(T_0=1, T_mult=3)),       # 121 = 1 + 3 + 9 + 27 + 81
    ("ConstantLR", dict(factor=0.5, total_iters=0)),
    ("LinearLR", dict(start_factor=0.5, total_iters=0)),
    ("LambdaLR", dict(lr_lambda=lambda e: 1 / (1 + e))),
    ("MultiplicativeLR", dict(lr_lambda=lambda e: 0.9 if e % 2 else 0.95)),
    ("OneCycleLR", dict(max_lr=0.5, total_steps=20)),
    ("OneCycleLR", dict(max_lr=0.5, total_steps=15, three_phase=True, anneal_strategy="linear",
                        pct_start=0.25)),
]


def _pair(opt_cls, tcls, lr, **kw):
    p = torch.nn.Parameter(torch.zeros(2))
    return opt_cls(lr=lr, **kw), tcls([p], lr=lr, **kw)


@pytest.mark.parametrize("name,kw", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_rates_match_torch_epoch_by_epoch(name, kw):
    ours_opt, torch_opt = _pair(ig.optim.SGD, torch.optim.SGD, 0.2, momentum=0.9)
    ours, theirs = getattr(S, name)(ours_opt, **kw), getattr(TS, name)(torch_opt, **kw)
    steps = kw.get("total_steps", 130 if kw.get("T_mult") == 3 else 25) - 1
    for _ in range(steps):
        assert ours.get_last_lr() == pytest.approx(theirs.get_last_lr(), rel=1e-12, abs=1e-15)
        assert ours_opt.lr == pytest.approx(torch_opt.param_groups[0]["lr"], rel=1e-12,
                                            abs=1e-15)
        if name == "OneCycleLR":
            assert ours_opt.momentum == pytest.approx(torch_opt.param_groups[0]["momentum"],
                                                      rel=1e-12)
        torch_opt.step()
        ours.step()
        theirs.step()


def test_one_cycle_cycles_adams_beta1_as_torch():
    ours_opt, torch_opt = _pair(ig.optim.Adam, torch.optim.Adam, 0.01)
    ours, theirs = S.OneCycleLR(ours_opt, 0.1, 10), TS.OneCycleLR(torch_opt, 0.1, 10)
    for _ in range(9):
        assert ours_opt.betas[0] == pytest.approx(torch_opt.param_groups[0]["betas"][0])
        assert ours_opt.lr == pytest.approx(torch_opt.param_groups[0]["lr"])
        torch_opt.step()
        ours.step()
        theirs.step()


def test_sequential_warmup_then_cosine_as_torch():
    ours_opt, torch_opt = _pair(ig.optim.SGD, torch.optim.SGD, 0.1)
    ours = S.SequentialLR(ours_opt, [S.LinearLR(ours_opt, 0.1, total_iters=3),
                                     S.CosineAnnealingLR(ours_opt, T_max=5)], milestones=[3])
    theirs = TS.SequentialLR(torch_opt, [TS.LinearLR(torch_opt, 0.1, total_iters=3),
                                         TS.CosineAnnealingLR(torch_opt, T_max=5)],
                             milestones=[3])
    for _ in range(12):
        assert ours.get_last_lr() == pytest.approx(theirs.get_last_lr(), rel=1e-12)
        torch_opt.step()
        ours.step()
        theirs.step()


@pytest.mark.parametrize("kw", [dict(), dict(mode="max", threshold_mode="abs", threshold=0.05,
                                             patience=1, cooldown=2, factor=0.5, min_lr=0.02)])
def test_reduce_on_plateau_as_torch(kw):
    ours_opt, torch_opt = _pair(ig.optim.SGD, torch.optim.SGD, 0.1)
    ours, theirs = S.ReduceLROnPlateau(ours_opt, **kw), TS.ReduceLROnPlateau(torch_opt, **kw)
    metrics = np.random.default_rng(0).uniform(0, 1, 60).cumsum() % 1.3
    for m in metrics:
        ours.step(m)
        theirs.step(m)
        assert ours_opt.lr == pytest.approx(torch_opt.param_groups[0]["lr"], rel=1e-12)


def test_a_compiled_step_reads_the_scheduled_rate():
    """SGD without momentum over a quadratic: each step moves w by -lr_e * grad, with lr_e the
    scheduler's rate at that epoch (alg. 8.1 with eps_k from the scheduler)."""
    model = ig.nn.Linear(1, 1, bias=False)
    model.weight.data[...] = 1.0
    opt = ig.optim.SGD(lr=0.1, convention="torch")
    sched = S.StepLR(opt, step_size=2, gamma=0.5)
    step = ig.compile_train(model, lambda y: (y * y).sum() * 0.5, opt, ig.TensorSpec((1, 1)),
                            n_model_inputs=1)
    w = 1.0
    for e in range(5):
        lr = 0.1 * 0.5 ** (e // 2)
        step(np.ones((1, 1), np.float32))
        w -= lr * w                     # d/dw (w x)^2 / 2 = w at x = 1
        assert float(model.weight.data[0, 0]) == pytest.approx(w, rel=1e-6)
        sched.step()


def test_a_scheduled_optimizer_needs_a_number():
    opt = ig.optim.SGD(lr=ig.optim.LinearDecay(0.1, 0.01, 10))
    with pytest.raises(TypeError, match="schedule of its own"):
        S.StepLR(opt, 2)


def test_warm_restarts_take_fractional_epochs_as_torch():
    ours_opt, torch_opt = _pair(ig.optim.SGD, torch.optim.SGD, 1.0)
    ours = S.CosineAnnealingWarmRestarts(ours_opt, T_0=2, T_mult=2)
    theirs = TS.CosineAnnealingWarmRestarts(torch_opt, T_0=2, T_mult=2)
    for e in np.arange(0, 9, 0.25):
        torch_opt.step()
        ours.step(float(e))
        theirs.step(float(e))
        assert ours_opt.lr == pytest.approx(torch_opt.param_groups[0]["lr"], rel=1e-12)


def test_two_schedulers_on_one_optimizer_combine_as_torch():
    """torch's chainable schedulers multiply: StepLR and ExponentialLR together."""
    ours_opt, torch_opt = _pair(ig.optim.SGD, torch.optim.SGD, 1.0)
    ours = [S.StepLR(ours_opt, 3, 0.5), S.ExponentialLR(ours_opt, 0.9)]
    theirs = [TS.StepLR(torch_opt, 3, 0.5), TS.ExponentialLR(torch_opt, 0.9)]
    for _ in range(10):
        torch_opt.step()
        for s_ in ours + theirs:
            s_.step()
        assert ours_opt.lr == pytest.approx(torch_opt.param_groups[0]["lr"], rel=1e-12)
