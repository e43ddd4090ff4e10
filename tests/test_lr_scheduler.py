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


def _both(ours, theirs, steps, ours_opt, torch_opt):
    for _ in range(steps):
        torch_opt.step()
        for s_ in ours:
            s_.step()
        for s_ in theirs:
            s_.step()
        assert ours_opt.lr == pytest.approx(torch_opt.param_groups[0]["lr"], rel=1e-12,
                                            abs=1e-15)


@pytest.mark.parametrize("pair", [
    (lambda o: S.LinearLR(o, 0.2, total_iters=5), lambda o: S.ExponentialLR(o, 0.9)),
    (lambda o: S.ConstantLR(o, 0.5, 3), lambda o: S.PolynomialLR(o, 8, 2.0)),
    (lambda o: S.CosineAnnealingLR(o, 3, 0.01), lambda o: S.CosineAnnealingLR(o, 5)),
    (lambda o: S.MultiStepLR(o, [2, 4], 0.5), lambda o: S.MultiplicativeLR(o, lambda e: 0.9)),
], ids=["linear+exp", "constant+poly", "cosine+cosine", "multistep+multiplicative"])
def test_warmup_and_decay_chained_on_one_optimizer_as_torch(pair):
    """Building the second scheduler keeps the rate the first set (torch's initial step
    leaves it), and each step multiplies in both factors; two cosines pass their troughs
    (torch's additive rise one past T_max)."""
    ours_opt, torch_opt = _pair(ig.optim.SGD, torch.optim.SGD, 0.1)
    ours = [make(ours_opt) for make in pair]
    names = [type(s_).__name__ for s_ in ours]
    theirs = []
    for s_ in ours:       # the same arguments, from the object ours kept
        kw = {k: v for k, v in vars(s_).items() if k in _CTOR_ARGS[type(s_).__name__]}
        if "lr_lambdas" in vars(s_):
            kw["lr_lambda"] = s_.lr_lambdas[0]
        theirs.append(getattr(TS, type(s_).__name__)(torch_opt, **kw))
    assert ours_opt.lr == pytest.approx(torch_opt.param_groups[0]["lr"], rel=1e-12), names
    _both(ours, theirs, 14, ours_opt, torch_opt)


_CTOR_ARGS = {"LinearLR": ("start_factor", "end_factor", "total_iters"),
              "ExponentialLR": ("gamma",), "ConstantLR": ("factor", "total_iters"),
              "PolynomialLR": ("total_iters", "power"), "CosineAnnealingLR": ("T_max", "eta_min"),
              "MultiStepLR": ("milestones", "gamma"), "MultiplicativeLR": ()}


@pytest.mark.parametrize("name,kw", [("StepLR", dict(step_size=3, gamma=0.5)),
                                     ("MultiStepLR", dict(milestones=[4, 9], gamma=0.3)),
                                     ("ExponentialLR", dict(gamma=0.8)),
                                     ("CosineAnnealingLR", dict(T_max=10, eta_min=0.001)),
                                     ("MultiplicativeLR", dict(lr_lambda=lambda e: 0.9))])
def test_a_run_resumed_from_state_dicts_goes_on_as_torch(name, kw):
    """Resume: a new optimizer loads the old one's state (rates and initial rates), a new
    scheduler is built on it, then loads the old scheduler's state; the rates go on from
    where they were, not from the initial rate."""
    runs = []
    for opt_mod, sched_mod, own in ((ig.optim, S, True), (torch.optim, TS, False)):
        make = (lambda: opt_mod.SGD(lr=0.1)) if own else (
            lambda: opt_mod.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1))
        opt = make()
        sched = getattr(sched_mod, name)(opt, **kw)
        for _ in range(7):
            if not own:
                opt.step()
            sched.step()
        opt_state, sched_state = opt.state_dict(), sched.state_dict()
        opt2 = make()
        opt2.load_state_dict(opt_state)
        sched2 = getattr(sched_mod, name)(opt2, **kw)
        sched2.load_state_dict(sched_state)
        rates = []
        for _ in range(8):
            if not own:
                opt2.step()
            sched2.step()
            rates.append(opt2.param_groups[0]["lr"])
        runs.append(rates)
    np.testing.assert_allclose(runs[0], runs[1], rtol=1e-12)


def test_sequential_hands_over_to_multiplicative_and_round_trips_its_state():
    """SequentialLR restarts the next scheduler at its milestone (step(0)): MultiplicativeLR
    has no closed form and goes on from the rate it takes over. Its state_dict holds the
    schedulers' own, loading into a scheduler of another optimizer drives that one."""
    rates = []
    for opt_mod, sched_mod, own in ((ig.optim, S, True), (torch.optim, TS, False)):
        def make():
            return opt_mod.SGD(lr=0.1) if own else opt_mod.SGD(
                [torch.nn.Parameter(torch.zeros(2))], lr=0.1)

        def sequential(opt):
            return sched_mod.SequentialLR(opt, [sched_mod.StepLR(opt, 2, 0.5),
                                                sched_mod.MultiplicativeLR(opt, lambda e: 0.95)],
                                          milestones=[4])
        opt = make()
        seq = sequential(opt)
        got = []
        for _ in range(8):
            if not own:
                opt.step()
            seq.step()
            got.append(opt.param_groups[0]["lr"])
        opt2 = make()
        opt2.load_state_dict(opt.state_dict())
        seq2 = sequential(opt2)
        seq2.load_state_dict(seq.state_dict())
        before = opt.param_groups[0]["lr"]
        for _ in range(3):
            if not own:
                opt2.step()
            seq2.step()
        assert opt.param_groups[0]["lr"] == before       # the old optimizer is left alone
        got.append(opt2.param_groups[0]["lr"])
        rates.append(got)
    np.testing.assert_allclose(rates[0], rates[1], rtol=1e-12)


def test_one_cycle_takes_total_steps_steps_as_torch():
    """The loop ``for batch in range(total_steps): ...; sched.step()`` runs; one more step
    is an error, as torch's."""
    ours_opt, torch_opt = _pair(ig.optim.SGD, torch.optim.SGD, 0.1, momentum=0.9)
    ours, theirs = S.OneCycleLR(ours_opt, 1.0, 10), TS.OneCycleLR(torch_opt, 1.0, 10)
    _both([ours], [theirs], 10, ours_opt, torch_opt)
    with pytest.raises(ValueError, match="past total_steps 10"):
        ours.step()
    with pytest.raises(ValueError):
        theirs.step()


@pytest.mark.parametrize("make", [
    lambda o: S.CosineAnnealingWarmRestarts(o, T_0=5, T_mult=1.5),
    lambda o: S.CosineAnnealingWarmRestarts(o, T_0=2.5),
    lambda o: S.OneCycleLR(o, 1.0, 10, pct_start=1.5),
    lambda o: S.OneCycleLR(o, 1.0, 10, pct_start=-0.1),
    lambda o: S.OneCycleLR(o, 1.0, 10.0)])
def test_scheduler_arguments_torch_refuses_are_refused(make):
    with pytest.raises(ValueError):
        make(ig.optim.SGD(lr=0.1, momentum=0.9))


def test_polynomial_over_no_iterations_keeps_the_rate_as_torch():
    ours_opt, torch_opt = _pair(ig.optim.SGD, torch.optim.SGD, 0.1)
    _both([S.PolynomialLR(ours_opt, total_iters=0)], [TS.PolynomialLR(torch_opt, total_iters=0)],
          4, ours_opt, torch_opt)


@pytest.mark.parametrize("kw", [
    dict(base_lr=0.01, max_lr=0.1, step_size_up=4),
    dict(base_lr=0.01, max_lr=0.1, step_size_up=3, step_size_down=5, mode="triangular2"),
    dict(base_lr=0.01, max_lr=0.1, step_size_up=2, mode="exp_range", gamma=0.9),
    dict(base_lr=0.01, max_lr=0.1, step_size_up=3, scale_fn=lambda x: 1 / x,
         scale_mode="cycle", base_momentum=0.7, max_momentum=0.95),
])
@pytest.mark.parametrize("adam", [False, True])
def test_cyclic_rates_and_momentum_match_torch(kw, adam):
    """CyclicLR (Smith's triangular policies): the rate and the momentum (SGD) or beta1
    (Adam), which moves against it, step by step."""
    if adam:
        ours_opt, torch_opt = _pair(ig.optim.Adam, torch.optim.Adam, 0.001)
    else:
        ours_opt, torch_opt = _pair(ig.optim.SGD, torch.optim.SGD, 0.1, momentum=0.9)
    ours, theirs = S.CyclicLR(ours_opt, **kw), TS.CyclicLR(torch_opt, **kw)
    key = "betas" if adam else "momentum"
    for _ in range(25):
        assert ours_opt.lr == pytest.approx(torch_opt.param_groups[0]["lr"], rel=1e-12)
        assert ours_opt.param_groups[0][key] == pytest.approx(torch_opt.param_groups[0][key],
                                                              rel=1e-12)
        torch_opt.step()
        ours.step()
        theirs.step()


def test_chained_scheduler_steps_its_schedulers_as_torch():
    ours_opt, torch_opt = _pair(ig.optim.SGD, torch.optim.SGD, 1.0)
    ours = S.ChainedScheduler([S.ConstantLR(ours_opt, 0.1, total_iters=2),
                               S.ExponentialLR(ours_opt, 0.9)])
    theirs = TS.ChainedScheduler([TS.ConstantLR(torch_opt, 0.1, total_iters=2),
                                  TS.ExponentialLR(torch_opt, 0.9)])
    assert ours.get_last_lr() == pytest.approx(theirs.get_last_lr(), rel=1e-12)
    _both([ours], [theirs], 6, ours_opt, torch_opt)
    assert ours.get_last_lr() == pytest.approx(theirs.get_last_lr(), rel=1e-12)
    state = ours.state_dict()
    assert [sorted(s_) for s_ in state["schedulers"]] == [
        sorted(s_.state_dict()) for s_ in ours.schedulers]
