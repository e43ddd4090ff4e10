"""Optimizers of chapter 8 with torch.optim's names, compiled into one training-step graph.

Each optimizer says WHAT is compiled (``spec()``: the update rule, its convention, clipping,
Polyak averaging) and, before each step, the VALUES of its hyperparameters
(``hyperparameters()``: learning rate from a schedule, momentum, betas, step count t, ...),
which are runtime inputs of the step: changing ``opt.lr`` never recompiles.

``convention="text"`` (the default) is the algorithm exactly as the textbook writes it;
``convention="torch"`` is torch.optim's form where the two differ (momentum's sign and scale,
where eps sits in RMSProp and Adam, PyTorch's Nesterov form). State tensors are numpy arrays
in ``opt.state[param_name][slot]`` under torch.optim's slot names (``momentum_buffer``,
``sum``, ``square_avg``, ``exp_avg``, ``exp_avg_sq``), readable and writable between steps.

Second-order and batch methods (Newton, conjugate gradients, BFGS, L-BFGS) are host-side
loops over compiled graphs: see ``frontend.second_order`` (re-exported here).
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, Iterable, Iterator

import numpy as np

from irgraph.passes.train import OptimizerSpec

from .nn import Module, Parameter

Schedule = Callable[[int], float]


# ---------------------------------------------------------------- learning-rate schedules
class LinearDecay:
    """Eq. 8.14: eps_k = (1 - a) eps_0 + a eps_tau with a = k / tau, constant after k = tau."""

    def __init__(self, eps_0: float, eps_tau: float, tau: int):
        if tau <= 0:
            raise ValueError(f"LinearDecay needs tau > 0, got {tau}")
        self.eps_0, self.eps_tau, self.tau = float(eps_0), float(eps_tau), int(tau)

    def __call__(self, k: int) -> float:
        a = min(k / self.tau, 1.0)
        return (1 - a) * self.eps_0 + a * self.eps_tau

    def __repr__(self) -> str:
        return f"LinearDecay(eps_0={self.eps_0}, eps_tau={self.eps_tau}, tau={self.tau})"


class Constant:
    """A constant learning rate (alg. 8.1 with eps_k = eps)."""

    def __init__(self, lr: float):
        self.lr = float(lr)

    def __call__(self, k: int) -> float:
        return self.lr


def _check_nonneg(name: str, v) -> None:
    if not callable(v) and (not np.isfinite(v) or v < 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")


# ---------------------------------------------------------------- the base class
class Optimizer:
    """A first-order optimizer compiled into the training step.

    ``params``: the Parameters it updates (default: every trainable parameter of the model
    given to ``compile_train``). ``weight_decay``: PyTorch's L2 term g + wd p.
    ``clip_grad_norm`` / ``clip_grad_value``: gradient clipping (section 8.2.4) applied to the
    gradients before the update, as torch.nn.utils.clip_grad_norm_ / clip_grad_value_ would
    (by norm: g max_norm / ||g|| when ||g|| > max_norm; torch's convention adds 1e-6 to
    ||g||).
    ``polyak``: the decay alpha of Polyak averaging (eq. 8.39); the averaged parameters are
    ``opt.averaged()`` and ``with opt.swap_averaged(model):`` swaps them in for evaluation.
    """
    kind = ""
    host_side = False

    def __init__(self, params: Iterable[Parameter] | None = None, *, lr, convention="text",
                 weight_decay: float = 0.0, clip_grad_norm: float | None = None,
                 clip_grad_value: float | None = None, polyak: float | None = None,
                 maximize: bool = False):
        if convention not in ("text", "torch"):
            raise ValueError(f"convention must be 'text' or 'torch', got {convention!r}")
        self.params = _param_list(params)
        self.lr = lr
        self.convention = convention
        self.weight_decay = weight_decay
        self.clip_grad_norm = clip_grad_norm
        self.clip_grad_value = clip_grad_value
        self.polyak = polyak
        self.maximize = bool(maximize)       # torch's: ascend the loss (the gradient negated)
        self._clip_norm_on = clip_grad_norm is not None
        self._clip_value_on = clip_grad_value is not None
        self._polyak_on = polyak is not None
        self.state = OptimizerState(self)
        self.step_count = 0          # k: the number of steps taken
        self._bound: dict[str, Parameter] = {}

    # -- what is compiled
    def spec(self) -> OptimizerSpec:
        return OptimizerSpec(self.kind, self.convention, self._nesterov_flag(),
                             weight_decay=True, decoupled_weight_decay=self._decoupled(),
                             clip_norm=self._clip_norm_on, clip_value=self._clip_value_on,
                             clip_norm_eps=0.0 if self.convention == "text" else 1e-6,
                             polyak=self._polyak_on, maximize=self.maximize)

    def _nesterov_flag(self) -> bool:
        return False

    def _decoupled(self) -> bool:
        return False

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Nothing to do, accepted for PyTorch code: a compiled step computes its gradients
        afresh each call; none accumulate between steps."""

    # -- runtime values, evaluated before each step
    def current_lr(self) -> float:
        """The learning rate of the next step (a schedule is evaluated at k = step_count)."""
        return float(self.lr(self.step_count)) if callable(self.lr) else float(self.lr)

    def hyperparameters(self) -> dict[str, float]:
        """Values of the step graph's hyperparameter inputs for the next step."""
        self._check_structure()
        vals = self._rule_values()
        vals["weight_decay"] = float(self.weight_decay)
        if self._clip_value_on:
            vals["clip_value"] = float(self.clip_grad_value)
        if self._clip_norm_on:
            vals["max_norm"] = float(self.clip_grad_norm)
        if self._polyak_on:
            vals["polyak_alpha"] = float(self.polyak)
        vals.update(self._extra_values())
        for name, v in vals.items():
            _check_nonneg(name, v)
        return {h: vals[h] for h in self.spec().hyperparameters}

    def _rule_values(self) -> dict[str, float]:
        return {"lr": self.current_lr()}

    def _extra_values(self) -> dict[str, float]:
        return {}

    def _check_structure(self) -> None:
        """Switching a compiled feature on or off would need a new graph: say so."""
        for name, on in (("clip_grad_norm", self._clip_norm_on),
                         ("clip_grad_value", self._clip_value_on), ("polyak", self._polyak_on)):
            if (getattr(self, name) is not None) != on:
                raise ValueError(f"{type(self).__name__}.{name} was "
                                 f"{'set' if on else 'None'} when the step was compiled; "
                                 f"switching it {'off' if on else 'on'} needs a new "
                                 f"compile_train (its value may change freely)")

    # -- state
    def bind(self, named: dict[str, Parameter]) -> None:
        """Attach to the parameters a compiled step updates; create missing state (zeros)."""
        self._bound = dict(named)
        for name, p in named.items():
            slots = self.state.setdefault(name, {})
            for slot in self.spec().slots:
                if slot not in slots:
                    slots[slot] = self._initial_state(slot, p.data)

    def _initial_state(self, slot: str, p: np.ndarray) -> np.ndarray:
        if slot == "polyak_avg":
            return p.copy()
        return np.zeros_like(p)

    def state_dict(self) -> dict:
        return {"step_count": self.step_count,
                "state": {n: {s: a.copy() for s, a in d.items()} for n, d in self.state.items()}}

    def load_state_dict(self, sd: dict) -> None:
        self.step_count = int(sd["step_count"])
        for n, slots in sd["state"].items():
            for s, a in slots.items():
                dst = self.state.get(n, {}).get(s)
                if dst is not None and dst.shape == np.shape(a):
                    np.copyto(dst, a)
                else:
                    self.state.setdefault(n, {})[s] = np.array(a)

    # -- Polyak averaging (eq. 8.39)
    def averaged(self) -> dict[str, np.ndarray]:
        """The Polyak-averaged parameters (an exponential moving average, eq. 8.39)."""
        if not self._polyak_on:
            raise ValueError("this optimizer keeps no average: construct it with polyak=alpha")
        return {n: d["polyak_avg"] for n, d in self.state.items()}

    @contextlib.contextmanager
    def swap_averaged(self, model: Module | None = None) -> Iterator[None]:
        """Evaluate with the averaged parameters inside the block; restore them after."""
        avg = self.averaged()
        saved = {n: p.data.copy() for n, p in self._bound.items()}
        try:
            for n, p in self._bound.items():
                np.copyto(p.data, avg[n])
            yield
        finally:
            for n, p in self._bound.items():
                np.copyto(p.data, saved[n])

    @property
    def param_groups(self) -> list["ParamGroup"]:
        """torch-style access to the hyperparameters: ``opt.param_groups[0]["lr"] = 0.01``
        (one group: per-group hyperparameters are not supported)."""
        return [ParamGroup(self)]

    def __repr__(self) -> str:
        keys = [k for k in ("lr", "momentum", "alpha", "betas", "eps", "weight_decay")
                if hasattr(self, k)]
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in keys)
        return f"{type(self).__name__}({args}, convention={self.convention!r})"


class OptimizerState(dict):
    """``param name -> {slot: array}``; a Parameter works as a key too (``opt.state[p]``, as
    in torch.optim) once a compiled step has bound the optimizer to its model."""

    def __init__(self, opt: "Optimizer"):
        super().__init__()
        self._opt = opt

    def _key(self, key):
        if isinstance(key, Parameter):
            for name, p in self._opt._bound.items():
                if p is key:
                    return name
            raise KeyError("this Parameter is not updated by the optimizer's compiled step")
        return key

    def __getitem__(self, key):
        return super().__getitem__(self._key(key))

    def __setitem__(self, key, value) -> None:
        super().__setitem__(self._key(key), value)

    def __contains__(self, key) -> bool:
        try:
            return super().__contains__(self._key(key))
        except KeyError:
            return False

    def get(self, key, default=None):
        return self[key] if key in self else default


class ParamGroup:
    """A dict-like view of an optimizer's hyperparameters, as in ``torch.optim``."""
    KEYS = ("lr", "momentum", "nesterov", "alpha", "betas", "eps", "weight_decay", "lr_decay",
            "clip_grad_norm", "clip_grad_value", "polyak")

    def __init__(self, opt: Optimizer):
        self._opt = opt

    def keys(self) -> list[str]:
        return [k for k in self.KEYS if hasattr(self._opt, k)] + ["params"]

    def __getitem__(self, key: str):
        if key == "params":
            return list(self._opt._bound.values()) or list(self._opt.params or [])
        if key not in self.keys():
            raise KeyError(f"{type(self._opt).__name__} has no hyperparameter {key!r}; it has "
                           f"{self.keys()}")
        return getattr(self._opt, key)

    def __setitem__(self, key: str, value) -> None:
        if key == "params" or key not in self.keys():
            raise KeyError(f"cannot set {key!r} on {type(self._opt).__name__}'s parameter group")
        setattr(self._opt, key, value)

    def __contains__(self, key: str) -> bool:
        return key in self.keys()


def _param_list(params) -> list[Parameter] | None:
    if params is None:
        return None
    out = list(params)
    for p in out:
        if not isinstance(p, Parameter):
            raise TypeError(f"optimizer params must be frontend.nn.Parameter objects, got "
                            f"{type(p).__name__}")
    return out


# ---------------------------------------------------------------- the optimizers
class SGD(Optimizer):
    """SGD (alg. 8.1), with momentum (alg. 8.2) or Nesterov momentum (alg. 8.3).

    text:  v <- momentum v - lr g;  p <- p + v; Nesterov takes g at the interim point
           p + momentum v (the step graph evaluates the loss and gradient there, so the
           loss a step returns is the loss at the interim point).
    torch: v <- momentum v + g;  p <- p - lr v  (nesterov: p <- p - lr (g + momentum v)).
    Constructed with momentum 0, the step has no velocity; otherwise momentum may take any
    value (0 included) between steps. ``dampening`` (torch convention only) scales g by
    1 - dampening in the velocity update after the first step, as torch.optim.SGD does.
    """

    def __init__(self, params=None, lr=0.01, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, *,
                 convention: str = "text", **kw):
        if nesterov and momentum == 0:
            raise ValueError("Nesterov momentum requires a momentum > 0")
        if dampening != 0 and (convention != "torch" or nesterov or momentum == 0):
            raise ValueError("dampening is torch's (convention='torch', with momentum and "
                             "without nesterov); the text has none")
        super().__init__(params, lr=lr, convention=convention, weight_decay=weight_decay, **kw)
        self.momentum, self.nesterov, self.dampening = momentum, nesterov, dampening
        self._dampened = dampening != 0
        self._has_momentum = momentum != 0
        self.kind = "momentum" if self._has_momentum else "sgd"

    def _nesterov_flag(self) -> bool:
        return self.nesterov

    def spec(self) -> OptimizerSpec:
        return dataclasses.replace(super().spec(), grad_scale=self._dampened)

    def _extra_values(self) -> dict[str, float]:
        if self._dampened:       # torch: buf = g at the first step, mu buf + (1 - d) g after
            return {"grad_scale": 1.0 if self.step_count == 0 else 1.0 - float(self.dampening)}
        if self.dampening != 0:
            raise ValueError("SGD.dampening was 0 when the step was compiled; a dampening "
                             "needs a new compile_train")
        return {}

    def _rule_values(self):
        if self.momentum != 0 and not self._has_momentum:
            raise ValueError("SGD.momentum was compiled as zero (no velocity state); a "
                             "momentum needs a new optimizer and compile_train")
        vals = {"lr": self.current_lr()}
        if self._has_momentum:
            vals["momentum"] = float(self.momentum)
        return vals


class AdaGrad(Optimizer):
    """AdaGrad (alg. 8.4): r <- r + g*g;  p <- p - lr g / (eps + sqrt(r)).

    torch.optim.Adagrad has the same form; its ``lr_decay`` (lr / (1 + k lr_decay)) and
    ``initial_accumulator_value`` are supported. eps defaults to the text's 1e-7, or torch's
    1e-10 with convention='torch'.
    """
    kind = "adagrad"

    def __init__(self, params=None, lr=0.01, lr_decay: float = 0.0, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float | None = None, *,
                 convention: str = "text", **kw):
        super().__init__(params, lr=lr, convention=convention, weight_decay=weight_decay, **kw)
        self.lr_decay = lr_decay
        self.initial_accumulator_value = initial_accumulator_value
        self.eps = eps if eps is not None else (1e-7 if convention == "text" else 1e-10)

    def _rule_values(self):
        lr = self.current_lr() / (1 + self.step_count * self.lr_decay)
        return {"lr": lr, "eps": float(self.eps)}

    def _initial_state(self, slot, p):
        if slot == "sum":
            return np.full_like(p, self.initial_accumulator_value)
        return super()._initial_state(slot, p)


Adagrad = AdaGrad


class RMSprop(Optimizer):
    """RMSProp (alg. 8.5; ``alpha`` is the text's decay rate rho), with momentum.

    text:  r <- alpha r + (1 - alpha) g*g;  p <- p - lr g / sqrt(eps + r); with momentum
           and nesterov=True it is alg. 8.6 (g at the interim point p + momentum v,
           v <- momentum v - lr g / sqrt(eps + r), p <- p + v).
    torch: p <- p - lr g / (sqrt(r) + eps); with momentum v <- momentum v + g / (sqrt(r) + eps),
           p <- p - lr v; ``centered`` (torch only) subtracts the squared mean gradient
           from r inside the root.
    eps defaults to the text's 1e-6, or torch's 1e-8 with convention='torch'.
    """

    def __init__(self, params=None, lr=0.01, alpha: float = 0.99, eps: float | None = None,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False,
                 nesterov: bool = False, *, convention: str = "text", **kw):
        if centered and convention != "torch":
            raise ValueError("centered RMSprop is torch's (convention='torch'); the text has "
                             "no centered form")
        if nesterov and momentum == 0:
            raise ValueError("Nesterov momentum requires a momentum > 0")
        super().__init__(params, lr=lr, convention=convention, weight_decay=weight_decay, **kw)
        self.alpha, self.momentum, self.nesterov = alpha, momentum, nesterov
        self.eps = eps if eps is not None else (1e-6 if convention == "text" else 1e-8)
        self._has_momentum = momentum != 0
        self.centered = centered
        self.kind = (("rmsprop_centered" if centered else "rmsprop") +
                     ("_momentum" if self._has_momentum else ""))

    def _nesterov_flag(self) -> bool:
        return self.nesterov

    def _rule_values(self):
        if self.momentum != 0 and not self._has_momentum:
            raise ValueError("RMSprop.momentum was compiled as zero (no velocity state); a "
                             "momentum needs a new optimizer and compile_train")
        vals = {"lr": self.current_lr(), "alpha": float(self.alpha), "eps": float(self.eps)}
        if self._has_momentum:
            vals["momentum"] = float(self.momentum)
        return vals


RMSProp = RMSprop


class Adam(Optimizer):
    """Adam (alg. 8.7) with bias corrections; ``betas`` = (rho_1, rho_2), t = step_count + 1.

    text:  p <- p - lr s^ / sqrt(r^ + eps)  (delta inside the root, as the text places it);
    torch: p <- p - lr s^ / (sqrt(r^) + eps); ``amsgrad`` (torch only) uses the running
           maximum of r in place of r.
    """
    kind = "adam"

    def __init__(self, params=None, lr=0.001, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False, *,
                 convention: str = "text", **kw):
        if amsgrad and convention != "torch":
            raise ValueError("amsgrad is torch's (convention='torch'); the text has no such "
                             "form")
        super().__init__(params, lr=lr, convention=convention, weight_decay=weight_decay, **kw)
        self.betas, self.eps, self.amsgrad = tuple(betas), eps, amsgrad
        self.kind = "adam_amsgrad" if amsgrad else "adam"

    def _rule_values(self):
        b1, b2 = self.betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"Adam betas must lie in [0, 1), got {self.betas}")
        return {"lr": self.current_lr(), "beta1": float(b1), "beta2": float(b2),
                "eps": float(self.eps), "t": float(self.step_count + 1)}


class AdamW(Adam):
    """Adam with decoupled weight decay (torch.optim.AdamW): p <- p - lr wd p, then Adam."""

    def __init__(self, params=None, lr=0.001, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01, amsgrad: bool = False, **kw):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, **kw)

    def _decoupled(self) -> bool:
        return True



# section 8.6's methods: host-side loops over compiled graphs
from .second_order import (BFGS, LBFGS, BlockCoordinateDescent,  # noqa: E402,F401
                           ConjugateGradient, Newton)
from . import lr_scheduler  # noqa: E402,F401  (ig.optim.lr_scheduler, as torch.optim's)
