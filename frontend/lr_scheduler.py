"""Learning-rate schedulers with ``torch.optim.lr_scheduler``'s names, arguments and
sequence of rates: each sets its optimizer's ``lr`` (read by the compiled step before every
call) from the epoch count, ``scheduler.step()`` after each epoch (or batch). Each is written
as a closed form of the epoch; torch's recursive ("chainable") ones step the optimizer's
current rate by the ratio of consecutive closed-form rates, so two on one optimizer combine,
and a scheduler built on a resumed optimizer (or at a given ``last_epoch``) goes on from its
rate, as torch's do.

``ig.optim.lr_scheduler.StepLR(opt, step_size=30, gamma=0.1)``, ``MultiStepLR``,
``ExponentialLR``, ``ConstantLR``, ``LinearLR``, ``PolynomialLR``, ``CosineAnnealingLR``,
``CosineAnnealingWarmRestarts``, ``LambdaLR``, ``MultiplicativeLR``, ``OneCycleLR`` (with
momentum / beta1 cycled), ``CyclicLR``, ``SequentialLR``, ``ChainedScheduler`` and
``ReduceLROnPlateau``. The optimizer's own
callable schedules (``LinearDecay``, eq. 8.14) are the other way to vary the rate.
"""
from __future__ import annotations

import bisect
import math
import numbers
from typing import Callable, Sequence

__all__ = ["LRScheduler", "LambdaLR", "MultiplicativeLR", "StepLR", "MultiStepLR",
           "ConstantLR", "LinearLR", "ExponentialLR", "PolynomialLR", "CosineAnnealingLR",
           "CosineAnnealingWarmRestarts", "OneCycleLR", "CyclicLR", "SequentialLR",
           "ChainedScheduler", "ReduceLROnPlateau"]


def _lr(group) -> float:
    """A parameter group's learning rate (``optimizer.param_groups[i]``)."""
    lr = group["lr"]
    if callable(lr):
        raise TypeError(f"a scheduler sets the optimizer's learning rate, but this one has a "
                        f"schedule of its own ({lr!r}): give the optimizer a number")
    return float(lr)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _check_momentum(optimizer, name: str) -> None:
    if not (hasattr(optimizer, "momentum") or hasattr(optimizer, "betas")):
        raise ValueError(f"{name}: cycle_momentum needs an optimizer with momentum or betas")


def _set_momentum(group, m: float) -> None:
    """A cycled momentum into a parameter group: Adam's beta1, or SGD's momentum."""
    if "betas" in group:
        group["betas"] = (m, group["betas"][1])
    else:
        group["momentum"] = m


def _per_group(value, groups, what: str) -> list:
    """``value`` for each of ``groups``: a list or tuple gives one per group (torch's)."""
    if isinstance(value, (list, tuple)):
        if len(value) != len(groups):
            raise ValueError(f"expected {len(groups)} {what} (one per parameter group), got "
                             f"{len(value)}")
        return list(value)
    return [value] * len(groups)


class LRScheduler:
    """The base: ``lr_at(epoch)`` is the rate at an epoch; construction takes epoch 0.

    ``chainable`` schedulers (torch's recursive ones) step by the ratio of consecutive
    rates, measured from ``floor`` (CosineAnnealingLR's eta_min, else 0), applied to the
    optimizer's current rate: alone they follow their closed form, and two on one optimizer
    combine their factors as torch's do. ``step(epoch)`` with an explicit epoch (a float
    too: ``CosineAnnealingWarmRestarts`` takes fractions of an epoch) sets the closed form.
    Each parameter group follows the schedule from its own initial rate (``base_lrs``);
    ``lr_at`` is evaluated for one group at a time (``base_lr``: that group's).
    """
    chainable = False
    floor = 0.0
    # torch's ``_is_initial``: the step a constructor takes keeps the rate past epoch 0
    initial_holds = False

    def __init__(self, optimizer, last_epoch: int = -1):
        self.optimizer = optimizer
        groups = optimizer.param_groups
        for i, group in enumerate(groups):
            if last_epoch == -1:
                if group.get("initial_lr") is None:     # torch's setdefault: a second
                    group["initial_lr"] = _lr(group)     # scheduler keeps it
            elif group.get("initial_lr") is None:
                raise KeyError(f"last_epoch given, but parameter group {i} has no initial_lr "
                               f"(it was not scheduled before)")
        self.base_lrs = [float(g["initial_lr"]) for g in groups]
        self._group = 0
        self.last_epoch = last_epoch
        self._last_lr = [_lr(g) for g in groups]
        self._initial_step()

    def _initial_step(self) -> None:
        """The step a constructor (or SequentialLR, restarting its first) takes."""
        self._initial = True
        try:
            self.step()
        finally:
            self._initial = False

    def _chained(self, current: float, epoch: int) -> float:
        """The rate at ``epoch`` stepped from the ``current`` one (torch's recursive
        ``get_lr``): times the ratio of the closed forms at ``epoch`` and the epoch before
        (the initial rate before epoch 0), measured from ``floor``; unchanged where the
        earlier closed form is at the floor."""
        if self._initial and self.initial_holds and epoch > 0:
            return current
        prev = (self.lr_at(epoch - 1) if epoch > 0 else self.base_lr) - self.floor
        if prev == 0:
            return current
        return self.floor + (current - self.floor) * ((self.lr_at(epoch) - self.floor) / prev)

    def _at_epoch(self, current: float, epoch) -> float:
        """The rate of ``step(epoch)`` given an epoch (torch's ``_get_closed_form_lr``)."""
        return float(self.lr_at(epoch))

    def lr_at(self, epoch: int) -> float:
        raise NotImplementedError

    @property
    def base_lr(self) -> float:
        """The initial rate of the group ``lr_at`` is evaluated for."""
        return self.base_lrs[self._group]

    def step(self, epoch: float | None = None) -> None:
        self.last_epoch = self.last_epoch + 1 if epoch is None else epoch
        groups = self.optimizer.param_groups
        lrs = []
        for i, group in enumerate(groups):
            self._group = i
            if epoch is None and self.chainable:
                lr = self._chained(_lr(group), self.last_epoch)
            elif epoch is None:
                lr = float(self.lr_at(self.last_epoch))
            else:
                lr = self._at_epoch(_lr(group), self.last_epoch)
            lrs.append(float(lr))
        self._group = 0
        for group, lr in zip(groups, lrs):
            group["lr"] = lr
        self._last_lr = lrs

    def get_last_lr(self) -> list[float]:
        return list(self._last_lr)

    def state_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()
                if k not in ("optimizer", "lr_lambdas", "_initial") and not callable(v)}

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)


class LambdaLR(LRScheduler):
    """``base_lr * lr_lambda(epoch)``."""

    def __init__(self, optimizer, lr_lambda: Callable[[int], float], last_epoch: int = -1):
        self.lr_lambdas = _per_group(lr_lambda, optimizer.param_groups, "lr_lambdas")
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch):
        return self.base_lr * self.lr_lambdas[self._group](epoch)


class MultiplicativeLR(LRScheduler):
    """The rate times ``lr_lambda(epoch)`` at each epoch after the first (at any epoch
    given to ``step``, as torch: it has no closed form there)."""
    chainable = True

    def __init__(self, optimizer, lr_lambda: Callable[[int], float], last_epoch: int = -1):
        self.lr_lambdas = _per_group(lr_lambda, optimizer.param_groups, "lr_lambdas")
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch):
        lr = self.base_lr
        for e in range(1, epoch + 1):
            lr *= self.lr_lambdas[self._group](e)
        return lr

    def _chained(self, current, epoch):
        return current if self._initial else current * self.lr_lambdas[self._group](epoch)

    def _at_epoch(self, current, epoch):
        return self._chained(current, epoch)


class StepLR(LRScheduler):
    """``base_lr * gamma ** (epoch // step_size)``."""
    chainable = True

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1):
        self.step_size, self.gamma = int(step_size), float(gamma)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch):
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class MultiStepLR(LRScheduler):
    """``base_lr * gamma ** (milestones passed)`` (a repeated milestone counts each time)."""
    chainable = True

    def __init__(self, optimizer, milestones: Sequence[int], gamma: float = 0.1,
                 last_epoch: int = -1):
        self.milestones, self.gamma = sorted(int(m) for m in milestones), float(gamma)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch):
        return self.base_lr * self.gamma ** bisect.bisect_right(self.milestones, epoch)


class ConstantLR(LRScheduler):
    """``base_lr * factor`` until ``total_iters``, then ``base_lr``."""
    chainable = True

    def __init__(self, optimizer, factor: float = 1 / 3, total_iters: int = 5,
                 last_epoch: int = -1):
        if not 0 <= factor <= 1:
            raise ValueError(f"ConstantLR: factor must be in [0, 1], got {factor}")
        self.factor, self.total_iters = float(factor), int(total_iters)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch):
        # total_iters 0: torch applies the factor at epoch 0 and never lifts it
        late = epoch >= self.total_iters and self.total_iters > 0
        return self.base_lr * (1.0 if late else self.factor)


class LinearLR(LRScheduler):
    """The factor moves linearly from ``start_factor`` to ``end_factor`` over
    ``total_iters`` epochs, then stays."""
    chainable = True
    initial_holds = True

    def __init__(self, optimizer, start_factor: float = 1 / 3, end_factor: float = 1.0,
                 total_iters: int = 5, last_epoch: int = -1):
        if not 0 < start_factor <= 1 or not 0 <= end_factor <= 1:
            raise ValueError("LinearLR: start_factor must be in (0, 1] and end_factor in [0, 1]")
        self.start_factor, self.end_factor = float(start_factor), float(end_factor)
        self.total_iters = int(total_iters)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch):
        if self.total_iters == 0:       # torch: the start factor, for ever
            return self.base_lr * self.start_factor
        t = min(epoch, self.total_iters)
        return self.base_lr * (self.start_factor + (self.end_factor - self.start_factor) * t
                               / self.total_iters)


class ExponentialLR(LRScheduler):
    """``base_lr * gamma ** epoch``."""
    chainable = True
    initial_holds = True

    def __init__(self, optimizer, gamma: float, last_epoch: int = -1):
        self.gamma = float(gamma)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch):
        return self.base_lr * self.gamma ** epoch


class PolynomialLR(LRScheduler):
    """``base_lr * (1 - min(epoch, total_iters) / total_iters) ** power``."""
    chainable = True
    initial_holds = True

    def __init__(self, optimizer, total_iters: int = 5, power: float = 1.0,
                 last_epoch: int = -1):
        self.total_iters, self.power = int(total_iters), float(power)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch):
        if self.total_iters <= 0:           # torch: the rate never moves
            return self.base_lr
        return self.base_lr * (1.0 - min(epoch, self.total_iters) / self.total_iters) ** \
            self.power


class CosineAnnealingLR(LRScheduler):
    """``eta_min + (base_lr - eta_min) (1 + cos(pi epoch / T_max)) / 2`` (SGDR without
    restarts: past ``T_max`` the cosine goes on)."""
    chainable = True
    initial_holds = True

    def __init__(self, optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1):
        self.T_max, self.eta_min = int(T_max), float(eta_min)
        self.floor = self.eta_min
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch):
        return self.eta_min + (self.base_lr - self.eta_min) * \
            (1 + math.cos(math.pi * epoch / self.T_max)) / 2

    def _chained(self, current, epoch):
        # one past each trough, where the ratio's denominator is at the floor, torch adds
        # the first step of the rise
        if not self._initial and (epoch - 1 - self.T_max) % (2 * self.T_max) == 0:
            return current + (self.base_lr - self.eta_min) * \
                (1 - math.cos(math.pi / self.T_max)) / 2
        return super()._chained(current, epoch)


class CosineAnnealingWarmRestarts(LRScheduler):
    """SGDR: cosine annealing restarted after ``T_0`` epochs, each period ``T_mult`` times
    the last."""

    def __init__(self, optimizer, T_0: int, T_mult: int = 1, eta_min: float = 0.0,
                 last_epoch: int = -1):
        if not _is_int(T_0) or T_0 <= 0 or not _is_int(T_mult) or T_mult < 1:
            raise ValueError(f"CosineAnnealingWarmRestarts: T_0 must be a positive integer and "
                             f"T_mult an integer at least 1, got {T_0!r} and {T_mult!r}")
        self.T_0, self.T_mult, self.eta_min = int(T_0), int(T_mult), float(eta_min)
        super().__init__(optimizer, last_epoch)

    def _position(self, epoch: float) -> tuple[float, float]:
        """(epochs into the current period, its length), the periods counted exactly (a
        logarithm would round 243 = 3^5 periods down to 4.999...)."""
        if self.T_mult == 1:
            return epoch % self.T_0, self.T_0
        start, period = 0, self.T_0
        while epoch >= start + period:
            start, period = start + period, period * self.T_mult
        return epoch - start, period

    def lr_at(self, epoch):
        t, period = self._position(epoch)
        return self.eta_min + (self.base_lr - self.eta_min) * \
            (1 + math.cos(math.pi * t / period)) / 2


class OneCycleLR(LRScheduler):
    """The one-cycle policy: from ``max_lr / div_factor`` up to ``max_lr`` over
    ``pct_start`` of ``total_steps`` steps, then down to ``initial / final_div_factor``
    (``three_phase``: back to the initial rate first), by cosine or linear annealing; with
    ``cycle_momentum`` the momentum (or Adam's beta1) moves the opposite way between
    ``max_momentum`` and ``base_momentum``. Step it after every batch."""

    def __init__(self, optimizer, max_lr: float, total_steps: int | None = None,
                 epochs: int | None = None, steps_per_epoch: int | None = None,
                 pct_start: float = 0.3, anneal_strategy: str = "cos",
                 cycle_momentum: bool = True, base_momentum: float = 0.85,
                 max_momentum: float = 0.95, div_factor: float = 25.0,
                 final_div_factor: float = 1e4, three_phase: bool = False,
                 last_epoch: int = -1):
        if total_steps is None:
            if epochs is None or steps_per_epoch is None:
                raise ValueError("OneCycleLR: give total_steps, or epochs and steps_per_epoch")
            total_steps = int(epochs) * int(steps_per_epoch)
        if not _is_int(total_steps) or total_steps <= 0:
            raise ValueError(f"OneCycleLR: total_steps must be a positive integer, got "
                             f"{total_steps!r}")
        if not 0 <= pct_start <= 1:
            raise ValueError(f"OneCycleLR: pct_start must be a float between 0 and 1, got "
                             f"{pct_start!r}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"OneCycleLR: anneal_strategy must be 'cos' or 'linear', got "
                             f"{anneal_strategy!r}")
        self.total_steps = int(total_steps)
        groups = optimizer.param_groups
        self.anneal = anneal_strategy
        ends = ([float(pct_start) * self.total_steps - 1, 2 * float(pct_start) *
                 self.total_steps - 2, self.total_steps - 1] if three_phase else
                [float(pct_start) * self.total_steps - 1, self.total_steps - 1])
        # per parameter group (torch's lists of max_lr, base_momentum, max_momentum)
        self.group_phases, initials = [], []
        for top, lo_m, hi_m in zip(_per_group(max_lr, groups, "max_lr"),
                                   _per_group(base_momentum, groups, "base_momentum"),
                                   _per_group(max_momentum, groups, "max_momentum")):
            initial = float(top) / div_factor
            low = initial / final_div_factor
            lrs = ([(initial, top), (top, initial), (initial, low)] if three_phase else
                   [(initial, top), (top, low)])
            moms = ([(hi_m, lo_m), (lo_m, hi_m), (hi_m, hi_m)] if three_phase else
                    [(hi_m, lo_m), (lo_m, hi_m)])
            self.group_phases.append(list(zip(ends, lrs, moms)))
            initials.append(initial)
        self.cycle_momentum = cycle_momentum
        if cycle_momentum:
            _check_momentum(optimizer, "OneCycleLR")
        if last_epoch == -1:
            for group, initial in zip(groups, initials):
                group["lr"] = group["initial_lr"] = initial
        self._group = 0
        super().__init__(optimizer, last_epoch)

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self.anneal == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def _at(self, step: int, which: int) -> float:
        if step > self.total_steps:
            raise ValueError(f"OneCycleLR: stepped {step} times, past total_steps "
                             f"{self.total_steps}")
        start_step = 0.0
        phases = self.group_phases[self._group]
        for i, (end, lrs, moms) in enumerate(phases):
            if step <= end or i == len(phases) - 1:
                pct = (step - start_step) / (end - start_step)
                pair = (lrs, moms)[which]
                return self._anneal(pair[0], pair[1], pct)
            start_step = end
        raise AssertionError("unreachable")

    def lr_at(self, epoch):
        return self._at(epoch, 0)

    def step(self, epoch: int | None = None) -> None:
        super().step(epoch)
        if self.cycle_momentum:
            for i, group in enumerate(self.optimizer.param_groups):
                self._group = i
                _set_momentum(group, self._at(self.last_epoch, 1))
            self._group = 0


class CyclicLR(LRScheduler):
    """The cyclical rate (Smith): up from ``base_lr`` to ``max_lr`` over ``step_size_up``
    steps, down over ``step_size_down`` (default the same), the cycle's height scaled by
    ``mode`` "triangular" (1), "triangular2" (halved each cycle), "exp_range" (``gamma`` to
    the step) or ``scale_fn`` (of the cycle or the step, ``scale_mode``); with
    ``cycle_momentum`` the momentum (or beta1) moves the opposite way between
    ``max_momentum`` and ``base_momentum``. Step it after every batch."""

    def __init__(self, optimizer, base_lr, max_lr, step_size_up: float = 2000,
                 step_size_down: float | None = None, mode: str = "triangular",
                 gamma: float = 1.0, scale_fn: Callable[[float], float] | None = None,
                 scale_mode: str = "cycle", cycle_momentum: bool = True,
                 base_momentum=0.8, max_momentum=0.9, last_epoch: int = -1):
        groups = optimizer.param_groups
        bases = [float(v) for v in _per_group(base_lr, groups, "base_lr")]
        if last_epoch == -1:
            for group, lr in zip(groups, bases):
                group["lr"] = lr
        self.max_lrs = [float(v) for v in _per_group(max_lr, groups, "max_lr")]
        up = float(step_size_up)
        down = float(step_size_down) if step_size_down is not None else up
        self.total_size, self.step_ratio = up + down, up / (up + down)
        if mode not in ("triangular", "triangular2", "exp_range") and scale_fn is None:
            raise ValueError(f"CyclicLR: mode {mode!r} is invalid and scale_fn is None")
        self.mode, self.gamma, self.custom_scale = mode, float(gamma), scale_fn
        self.scale_mode = scale_mode if scale_fn is not None else (
            "iterations" if mode == "exp_range" else "cycle")
        self.cycle_momentum = cycle_momentum
        if cycle_momentum:
            _check_momentum(optimizer, "CyclicLR")
            self.base_momentums = [float(v) for v in
                                   _per_group(base_momentum, groups, "base_momentum")]
            self.max_momentums = [float(v) for v in
                                  _per_group(max_momentum, groups, "max_momentum")]
            if last_epoch == -1:
                for group, m in zip(groups, self.max_momentums):
                    _set_momentum(group, m)
        super().__init__(optimizer, last_epoch)
        self.base_lrs = bases

    def scale_fn(self, x: float) -> float:
        if self.custom_scale is not None:
            return self.custom_scale(x)
        if self.mode == "triangular":
            return 1.0
        if self.mode == "triangular2":
            return 1 / (2.0 ** (x - 1))
        return self.gamma ** x

    def _phase(self, epoch) -> tuple[float, float]:
        """(the scale of the cycle's height at ``epoch``, the height's position in it)."""
        cycle = math.floor(1 + epoch / self.total_size)
        x = 1.0 + epoch / self.total_size - cycle
        pos = x / self.step_ratio if x <= self.step_ratio else (x - 1) / (self.step_ratio - 1)
        return self.scale_fn(cycle if self.scale_mode == "cycle" else epoch), pos

    def lr_at(self, epoch):
        scale, pos = self._phase(epoch)
        lo, hi = self.base_lrs[self._group], self.max_lrs[self._group]
        return lo + (hi - lo) * pos * scale

    def step(self, epoch: int | None = None) -> None:
        super().step(epoch)
        if self.cycle_momentum:
            scale, pos = self._phase(self.last_epoch)
            for group, lo, hi in zip(self.optimizer.param_groups, self.base_momentums,
                                     self.max_momentums):
                _set_momentum(group, hi - (hi - lo) * pos * scale)


class _Composite(LRScheduler):
    """A scheduler of ``schedulers``: its state dict holds each one's (torch's), never the
    objects, which drive their own optimizer."""
    schedulers: list

    def state_dict(self) -> dict:
        state = {k: v for k, v in self.__dict__.items()
                 if k not in ("optimizer", "schedulers", "_initial")}
        state["schedulers"] = [s.state_dict() for s in self.schedulers]
        return state

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        subs = state.pop("schedulers")
        self.__dict__.update(state)
        for s, sub in zip(self.schedulers, subs):
            s.load_state_dict(sub)


class SequentialLR(_Composite):
    """``schedulers[i]`` from ``milestones[i - 1]`` on, each restarted at its milestone
    (``step(0)``: its closed form at epoch 0, or, without one, its rule applied to the rate
    it takes over). Construction puts every group back at its initial rate and takes the first
    scheduler's initial step again; ``state_dict`` holds each scheduler's own."""

    def __init__(self, optimizer, schedulers: Sequence[LRScheduler],
                 milestones: Sequence[int], last_epoch: int = -1):
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(f"SequentialLR: {len(schedulers)} schedulers need "
                             f"{len(schedulers) - 1} milestones, got {len(milestones)}")
        self.schedulers, self.milestones = list(schedulers), [int(m) for m in milestones]
        for s in self.schedulers:
            if s.optimizer is not optimizer:
                raise ValueError("SequentialLR: every scheduler must drive its optimizer")
        self.optimizer = optimizer
        self._group = 0
        self.base_lrs = list(self.schedulers[0].base_lrs)
        self.last_epoch = last_epoch + 1
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"]
        for s in self.schedulers:           # undo the step each took when it was built
            s.last_epoch -= 1
        self.schedulers[0]._initial_step()
        self._last_lr = self.schedulers[0].get_last_lr()

    def lr_at(self, epoch):
        i = bisect.bisect_right(self.milestones, epoch)
        start = self.milestones[i - 1] if i else 0
        self.schedulers[i]._group = self._group
        return self.schedulers[i].lr_at(epoch - start)

    def step(self, epoch: int | None = None) -> None:
        self.last_epoch = self.last_epoch + 1 if epoch is None else int(epoch)
        i = bisect.bisect_right(self.milestones, self.last_epoch)
        if i and self.milestones[i - 1] == self.last_epoch:
            self.schedulers[i].step(0)
        else:
            self.schedulers[i].step()
        self._last_lr = self.schedulers[i].get_last_lr()


class ChainedScheduler(_Composite):
    """Several schedulers stepped together (``schedulers[i].step()`` in order, each applying
    its factor to the rate the one before left): torch's ``ChainedScheduler``."""

    def __init__(self, schedulers: Sequence[LRScheduler], optimizer=None):
        if len(schedulers) < 1:
            raise ValueError("ChainedScheduler: expects at least one scheduler")
        self.schedulers = list(schedulers)
        self.optimizer = optimizer if optimizer is not None else self.schedulers[0].optimizer
        for i, s in enumerate(self.schedulers):
            if s.optimizer is not self.optimizer:
                raise ValueError(f"ChainedScheduler: scheduler {i} drives another optimizer")
        self._last_lr = [_lr(g) for g in self.optimizer.param_groups]

    def step(self, epoch=None) -> None:
        for s in self.schedulers:
            s.step()
        self._last_lr = [_lr(g) for g in self.optimizer.param_groups]


class ReduceLROnPlateau:
    """The rate times ``factor`` once a metric (``step(metric)``) has not improved for
    ``patience`` epochs: improvement beyond ``threshold`` (relative or absolute), ``cooldown``
    epochs of rest after a reduction, never below ``min_lr``, nor by less than ``eps``."""

    def __init__(self, optimizer, mode: str = "min", factor: float = 0.1, patience: int = 10,
                 threshold: float = 1e-4, threshold_mode: str = "rel", cooldown: int = 0,
                 min_lr: float = 0.0, eps: float = 1e-8):
        if factor >= 1.0:
            raise ValueError("ReduceLROnPlateau: factor must be < 1")
        if mode not in ("min", "max") or threshold_mode not in ("rel", "abs"):
            raise ValueError("ReduceLROnPlateau: mode 'min'/'max' and threshold_mode "
                             "'rel'/'abs'")
        self.optimizer = optimizer
        self.mode, self.factor, self.patience = mode, float(factor), int(patience)
        self.threshold, self.threshold_mode = float(threshold), threshold_mode
        self.cooldown, self.eps = int(cooldown), float(eps)
        self.min_lrs = [float(v) for v in _per_group(min_lr, optimizer.param_groups, "min_lr")]
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self.last_epoch = 0
        self._last_lr = [_lr(g) for g in optimizer.param_groups]

    def _better(self, a: float, best: float) -> bool:
        if self.mode == "min":
            return a < (best * (1 - self.threshold) if self.threshold_mode == "rel"
                        else best - self.threshold)
        return a > (best * (1 + self.threshold) if self.threshold_mode == "rel"
                    else best + self.threshold)

    def step(self, metrics: float, epoch: int | None = None) -> None:
        current = float(metrics)
        self.last_epoch = self.last_epoch + 1 if epoch is None else int(epoch)
        if self._better(current, self.best):
            self.best, self.num_bad_epochs = current, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        groups = self.optimizer.param_groups
        if self.num_bad_epochs > self.patience:
            for group, floor in zip(groups, self.min_lrs):
                old = _lr(group)
                new = max(old * self.factor, floor)
                if old - new > self.eps:
                    group["lr"] = new
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = [_lr(g) for g in groups]

    def get_last_lr(self) -> list[float]:
        return list(self._last_lr)

    def state_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)
