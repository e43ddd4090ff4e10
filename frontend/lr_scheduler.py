"""Learning-rate schedulers with ``torch.optim.lr_scheduler``'s names, arguments and
sequence of rates: each sets its optimizer's ``lr`` (read by the compiled step before every
call) from the epoch count, ``scheduler.step()`` after each epoch (or batch). Written as closed
forms of the epoch: the rate at epoch e does not depend on the path to it.

``ig.optim.lr_scheduler.StepLR(opt, step_size=30, gamma=0.1)``, ``MultiStepLR``,
``ExponentialLR``, ``ConstantLR``, ``LinearLR``, ``PolynomialLR``, ``CosineAnnealingLR``,
``CosineAnnealingWarmRestarts``, ``LambdaLR``, ``MultiplicativeLR``, ``OneCycleLR`` (with
momentum / beta1 cycled), ``SequentialLR`` and ``ReduceLROnPlateau``. The optimizer's own
callable schedules (``LinearDecay``, eq. 8.14) are the other way to vary the rate.
"""
from __future__ import annotations

import bisect
import math
from typing import Callable, Sequence

__all__ = ["LRScheduler", "LambdaLR", "MultiplicativeLR", "StepLR", "MultiStepLR",
           "ConstantLR", "LinearLR", "ExponentialLR", "PolynomialLR", "CosineAnnealingLR",
           "CosineAnnealingWarmRestarts", "OneCycleLR", "SequentialLR", "ReduceLROnPlateau"]


def _base_lr(optimizer) -> float:
    lr = optimizer.lr
    if callable(lr):
        raise TypeError(f"a scheduler sets the optimizer's learning rate, but this one has a "
                        f"schedule of its own ({lr!r}): give the optimizer a number")
    return float(lr)


class LRScheduler:
    """The base: ``lr_at(epoch)`` is the rate at an epoch; construction takes epoch 0.

    ``chainable`` schedulers (torch's recursive ones) step by the ratio of consecutive
    rates, measured from ``floor`` (CosineAnnealingLR's eta_min, else 0), applied to the
    optimizer's current rate: alone they follow their closed form, and two on one optimizer
    combine their factors as torch's do. ``step(epoch)`` with an explicit epoch (a float
    too: ``CosineAnnealingWarmRestarts`` takes fractions of an epoch) sets the closed form.
    """
    chainable = False
    floor = 0.0

    def __init__(self, optimizer, last_epoch: int = -1):
        self.optimizer = optimizer
        if last_epoch == -1:
            if getattr(optimizer, "initial_lr", None) is None:     # torch's setdefault: a
                optimizer.initial_lr = _base_lr(optimizer)         # second scheduler keeps it
        elif getattr(optimizer, "initial_lr", None) is None:
            raise KeyError("last_epoch given, but the optimizer has no initial_lr (it was not "
                           "scheduled before)")
        self.base_lrs = [float(optimizer.initial_lr)]
        self.last_epoch = last_epoch
        self._last_lr = [_base_lr(optimizer)]
        self.step()

    def lr_at(self, epoch: int) -> float:
        raise NotImplementedError

    @property
    def base_lr(self) -> float:
        return self.base_lrs[0]

    def step(self, epoch: float | None = None) -> None:
        self.last_epoch = self.last_epoch + 1 if epoch is None else epoch
        lr = float(self.lr_at(self.last_epoch))
        if epoch is None and self.chainable and self.last_epoch > 0:
            prev = float(self.lr_at(self.last_epoch - 1)) - self.floor
            if prev != 0:
                lr = self.floor + (_base_lr(self.optimizer) - self.floor) * \
                    ((lr - self.floor) / prev)
        self.optimizer.lr = lr
        self._last_lr = [lr]

    def get_last_lr(self) -> list[float]:
        return list(self._last_lr)

    def state_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()
                if k != "optimizer" and not callable(v)}

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)


class LambdaLR(LRScheduler):
    """``base_lr * lr_lambda(epoch)``."""

    def __init__(self, optimizer, lr_lambda: Callable[[int], float], last_epoch: int = -1):
        self.lr_lambda = lr_lambda
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch):
        return self.base_lr * self.lr_lambda(epoch)


class MultiplicativeLR(LRScheduler):
    """The rate times ``lr_lambda(epoch)`` at each epoch after the first."""
    chainable = True

    def __init__(self, optimizer, lr_lambda: Callable[[int], float], last_epoch: int = -1):
        self.lr_lambda = lr_lambda
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch):
        lr = self.base_lr
        for e in range(1, epoch + 1):
            lr *= self.lr_lambda(e)
        return lr


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

    def __init__(self, optimizer, gamma: float, last_epoch: int = -1):
        self.gamma = float(gamma)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch):
        return self.base_lr * self.gamma ** epoch


class PolynomialLR(LRScheduler):
    """``base_lr * (1 - min(epoch, total_iters) / total_iters) ** power``."""
    chainable = True

    def __init__(self, optimizer, total_iters: int = 5, power: float = 1.0,
                 last_epoch: int = -1):
        self.total_iters, self.power = int(total_iters), float(power)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch):
        return self.base_lr * (1.0 - min(epoch, self.total_iters) / self.total_iters) ** \
            self.power


class CosineAnnealingLR(LRScheduler):
    """``eta_min + (base_lr - eta_min) (1 + cos(pi epoch / T_max)) / 2`` (SGDR without
    restarts: past ``T_max`` the cosine goes on)."""
    chainable = True

    def __init__(self, optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1):
        self.T_max, self.eta_min = int(T_max), float(eta_min)
        self.floor = self.eta_min
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch):
        return self.eta_min + (self.base_lr - self.eta_min) * \
            (1 + math.cos(math.pi * epoch / self.T_max)) / 2


class CosineAnnealingWarmRestarts(LRScheduler):
    """SGDR: cosine annealing restarted after ``T_0`` epochs, each period ``T_mult`` times
    the last."""

    def __init__(self, optimizer, T_0: int, T_mult: int = 1, eta_min: float = 0.0,
                 last_epoch: int = -1):
        if T_0 <= 0 or T_mult < 1:
            raise ValueError("CosineAnnealingWarmRestarts: T_0 must be positive and T_mult at "
                             "least 1")
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
        if total_steps <= 0:
            raise ValueError(f"OneCycleLR: total_steps must be positive, got {total_steps}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"OneCycleLR: anneal_strategy must be 'cos' or 'linear', got "
                             f"{anneal_strategy!r}")
        self.total_steps = int(total_steps)
        initial = float(max_lr) / div_factor
        low = initial / final_div_factor
        self.anneal = anneal_strategy
        ends = ([float(pct_start) * self.total_steps - 1, 2 * float(pct_start) *
                 self.total_steps - 2, self.total_steps - 1] if three_phase else
                [float(pct_start) * self.total_steps - 1, self.total_steps - 1])
        lrs = ([(initial, max_lr), (max_lr, initial), (initial, low)] if three_phase else
               [(initial, max_lr), (max_lr, low)])
        moms = ([(max_momentum, base_momentum), (base_momentum, max_momentum),
                 (max_momentum, max_momentum)] if three_phase else
                [(max_momentum, base_momentum), (base_momentum, max_momentum)])
        self.phases = list(zip(ends, lrs, moms))
        self.cycle_momentum = cycle_momentum
        if cycle_momentum:
            if not (hasattr(optimizer, "momentum") or hasattr(optimizer, "betas")):
                raise ValueError("OneCycleLR: cycle_momentum needs an optimizer with momentum "
                                 "or betas")
        if last_epoch == -1:
            optimizer.lr = optimizer.initial_lr = initial
        super().__init__(optimizer, last_epoch)

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self.anneal == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def _at(self, step: int, which: int) -> float:
        if step >= self.total_steps:
            raise ValueError(f"OneCycleLR: stepped {step + 1} times, past total_steps "
                             f"{self.total_steps}")
        start_step = 0.0
        for i, (end, lrs, moms) in enumerate(self.phases):
            if step <= end or i == len(self.phases) - 1:
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
            m = self._at(self.last_epoch, 1)
            if hasattr(self.optimizer, "betas"):
                self.optimizer.betas = (m, self.optimizer.betas[1])
            else:
                self.optimizer.momentum = m


class SequentialLR(LRScheduler):
    """``schedulers[i]`` from ``milestones[i - 1]`` on, each restarted (its epoch 0) at its
    milestone."""

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
        self.base_lrs = list(self.schedulers[0].base_lrs)
        self.last_epoch = last_epoch + 1
        self.schedulers[0].step(0)
        self._last_lr = self.schedulers[0].get_last_lr()

    def lr_at(self, epoch):
        i = bisect.bisect_right(self.milestones, epoch)
        start = self.milestones[i - 1] if i else 0
        return self.schedulers[i].lr_at(epoch - start)

    def step(self, epoch: int | None = None) -> None:
        self.last_epoch = self.last_epoch + 1 if epoch is None else int(epoch)
        i = bisect.bisect_right(self.milestones, self.last_epoch)
        start = self.milestones[i - 1] if i else 0
        self.schedulers[i].step(self.last_epoch - start)
        self._last_lr = self.schedulers[i].get_last_lr()


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
        self.cooldown, self.min_lr, self.eps = int(cooldown), float(min_lr), float(eps)
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self.last_epoch = 0
        self._last_lr = [_base_lr(optimizer)]

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
        if self.num_bad_epochs > self.patience:
            old = _base_lr(self.optimizer)
            new = max(old * self.factor, self.min_lr)
            if old - new > self.eps:
                self.optimizer.lr = new
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = [_base_lr(self.optimizer)]

    def get_last_lr(self) -> list[float]:
        return list(self._last_lr)

    def state_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)
