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
        self.params, self._raw_groups = _split_groups(params)
        self._groups: list[dict] = []      # parameter groups after the first (``_finish_groups``)
        self._group_params: list[list[Parameter]] = []
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
        # each parameter's own steps, as torch counts them (Adam's t, ...): a parameter the
        # compiled step trains has its count at step_count + its offset (``plan_steps``);
        # the step's groups are (parameter group, offset) pairs, one set of inputs each
        self._own_steps: dict[str, int] = {}
        self._offsets: dict[str, int] = {}
        self._step_groups: list[tuple[int, int]] = []
        self._assignment: list[int] = []
        self._group_of: dict[str, int] = {}
        self._t_offset = 0           # the offset of the group whose values are evaluated
        self.layout_version = 0      # bumped when the step groups a compiled step has change
        self._bound: dict[str, Parameter] = {}

    # -- what is compiled
    def spec(self) -> OptimizerSpec:
        return OptimizerSpec(self.kind, self.convention, self._nesterov_flag(),
                             weight_decay=True, decoupled_weight_decay=self._decoupled(),
                             clip_norm=self._clip_norm_on, clip_value=self._clip_value_on,
                             clip_norm_eps=0.0 if self.convention == "text" else 1e-6,
                             polyak=self._polyak_on, maximize=self.maximize,
                             groups=len(self._step_groups) or 1 + len(self._groups))

    # -- parameter groups (torch.optim's ``[{"params": ..., "lr": ...}, ...]``)
    # the hyperparameters a group may set for its own parameters; the rest are the step's
    GROUP_KEYS: tuple[str, ...] = ("lr", "weight_decay")
    # options every group must share: they change what is compiled, not a runtime value
    SHARED_KEYS = ("nesterov", "amsgrad", "centered", "maximize", "clip_grad_norm",
                   "clip_grad_value", "polyak")

    def _finish_groups(self) -> None:
        """Each group takes the constructor's values for what it does not set (torch's
        defaults); the first group's values become the optimizer's attributes, the others'
        are kept in ``_groups``. Called at the end of each optimizer's constructor."""
        raw, self._raw_groups = self._raw_groups, None
        if not raw:
            return
        name = type(self).__name__
        for i, g in enumerate(raw):
            for k, v in g.items():
                if k == "params" or k in self.GROUP_KEYS:
                    continue
                if k in self.SHARED_KEYS and hasattr(self, k):
                    if v != getattr(self, k):
                        raise ValueError(
                            f"{name}: parameter group {i} sets {k}={v!r}, the optimizer has "
                            f"{getattr(self, k)!r}; a compiled step has one {k} for all its "
                            f"parameters (give it to the optimizer)")
                    continue
                raise ValueError(f"{name}: parameter group {i} has an unknown option {k!r}; "
                                 f"a group may set {', '.join(self.GROUP_KEYS)}")
        defaults = {k: getattr(self, k) for k in self.GROUP_KEYS}
        filled = [{**defaults, **{k: g[k] for k in self.GROUP_KEYS if k in g}} for g in raw]
        for k, v in filled[0].items():
            setattr(self, k, v)
        self._groups = filled[1:]
        self._group_params = [g["params"] for g in raw]

    def _group_values(self) -> list[dict]:
        """Every group's hyperparameters (the first: the optimizer's attributes)."""
        return [{k: getattr(self, k) for k in self.GROUP_KEYS}] + self._groups

    @contextlib.contextmanager
    def _as_group(self, values: dict) -> Iterator[None]:
        """The optimizer's attributes set to one group's values inside the block."""
        saved = {k: getattr(self, k) for k in values}
        try:
            for k, v in values.items():
                setattr(self, k, v)
            yield
        finally:
            for k, v in saved.items():
                setattr(self, k, v)

    def group_index(self, param: Parameter) -> int:
        """The parameter group ``param`` belongs to (0 without groups)."""
        for i, ps in enumerate(self._group_params):
            if any(p is param for p in ps):
                return i
        return 0

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
        """Values of the step graph's hyperparameter inputs for the next step (a group's
        after the first under ``OptimizerSpec.group_name``)."""
        spec = self.spec()
        groups = self._group_values()
        plan = self._step_groups or [(g, 0) for g in range(len(groups))]
        vals = {}
        for i, (g, offset) in enumerate(plan):
            self._t_offset = offset
            try:
                with self._as_group(groups[g]):
                    mine = self._one_group()
            finally:
                self._t_offset = 0
            if i == 0:
                vals.update(mine)
            vals.update((spec.group_name(h, i), mine[h]) for h in spec.per_group)
        return {h: vals[h] for h in spec.hyperparameters}

    @property
    def param_step(self) -> int:
        """The steps taken by the parameters whose values are being evaluated (torch counts
        each parameter's own: one frozen for a while has taken fewer)."""
        return self.step_count + self._t_offset

    def steps_of(self, name: str) -> int | None:
        """The steps parameter ``name`` has taken (None: never bound to a compiled step)."""
        if name in self._offsets:
            return self.step_count + self._offsets[name]
        return self._own_steps.get(name)

    def plan_steps(self, named: dict) -> list[int]:
        """The step group of each of ``named`` (name -> Parameter, the trainable parameters
        of the step about to be compiled, in order): parameters of one parameter group that
        have taken the same number of steps share one (a parameter never trained starts at
        0; one with state loaded, at step_count)."""
        for n, off in self._offsets.items():
            self._own_steps[n] = self.step_count + off
        return self._plan({n: self.group_index(p) for n, p in named.items()})

    def _plan(self, group_of: dict) -> list[int]:
        offsets, order, assignment = {}, {}, []
        for n, g in group_of.items():
            own = self._own_steps.get(n)
            if own is None:
                own = self.step_count if n in self.state else 0
            offsets[n] = own - self.step_count
            assignment.append(order.setdefault((g, offsets[n]), len(order)))
        self._offsets, self._group_of = offsets, dict(group_of)
        if (list(order), assignment) != (self._step_groups, self._assignment):
            self._step_groups, self._assignment = list(order), assignment
            self.layout_version += 1
        return assignment

    def restart_steps(self, own: dict | None = None) -> None:
        """After a loaded state: every parameter with state has taken step_count steps,
        unless ``own`` says otherwise; a compiled step whose grouping this changes compiles
        again at its next call."""
        self._own_steps = {n: int(k) for n, k in (own or {}).items()}
        self._offsets = {}
        if self._group_of:
            self._plan(self._group_of)

    def _one_group(self) -> dict[str, float]:
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
        return vals

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
        groups = self._group_values()
        for name, p in named.items():
            slots = self.state.setdefault(name, {})
            with self._as_group(groups[self.group_index(p)]):
                for slot in self.spec().slots:
                    if slot not in slots:
                        slots[slot] = self._initial_state(slot, p.data)
                    elif (slots[slot].dtype != p.data.dtype
                          and slots[slot].shape == p.data.shape):
                        # the model changed dtype (``model.double()``): the state follows
                        slots[slot] = slots[slot].astype(p.data.dtype)

    def _initial_state(self, slot: str, p: np.ndarray) -> np.ndarray:
        if slot == "polyak_avg":
            return p.copy()
        return np.zeros_like(p)

    def state_dict(self) -> dict:
        """The step count, the state arrays, and each parameter group's hyperparameters (as
        torch's ``param_groups``: a resumed run goes on with the rates a scheduler set)."""
        groups = []
        for g in self.param_groups:
            groups.append({k: g[k] for k in g.keys() if k != "params"})
        steps = {n: self.steps_of(n) for n in self.state if self.steps_of(n) is not None}
        return {"step_count": self.step_count,
                "state": {n: {s: a.copy() for s, a in d.items()} for n, d in self.state.items()},
                "param_groups": groups, "param_steps": steps}

    def load_state_dict(self, sd: dict) -> None:
        groups = sd.get("param_groups")
        if groups is not None:
            mine = self.param_groups
            if len(groups) != len(mine):
                raise ValueError(f"the state has {len(groups)} parameter group(s), this "
                                 f"{type(self).__name__} has {len(mine)}")
            for g, values in zip(mine, groups):
                for k, v in values.items():
                    if k in ParamGroup.EXTRA or (k in g.keys() and not (
                            g._values is not None and k not in self.GROUP_KEYS)):
                        g[k] = v
        self.step_count = int(sd["step_count"])
        self.restart_steps(sd.get("param_steps"))
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
        """torch-style access to the hyperparameters: ``opt.param_groups[i]["lr"] = 0.01``
        (group 0's values are the optimizer's attributes, ``opt.lr``)."""
        return [ParamGroup(self)] + [ParamGroup(self, g, i) for i, g in enumerate(self._groups, 1)]

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
    """A dict-like view of one parameter group's hyperparameters, as in ``torch.optim``: the
    first group's are the optimizer's attributes, another's its own dict."""
    KEYS = ("lr", "momentum", "nesterov", "dampening", "alpha", "rho", "betas", "eps", "etas",
            "step_sizes",
            "momentum_decay", "decoupled_weight_decay",
            "weight_decay", "lr_decay", "initial_accumulator_value", "amsgrad", "centered",
            "maximize", "clip_grad_norm", "clip_grad_value", "polyak")
    # set by learning-rate schedulers (torch's name), on any group
    EXTRA = ("initial_lr",)

    def __init__(self, opt: Optimizer, values: dict | None = None, index: int = 0):
        self._opt, self._values, self._index = opt, values, index

    def keys(self) -> list[str]:
        if self._values is None:
            own = [k for k in self.KEYS if hasattr(self._opt, k)]
        else:
            own = list(self._opt.GROUP_KEYS) + [k for k in self.KEYS if k in
                                                self._opt.SHARED_KEYS and hasattr(self._opt, k)]
        return own + [k for k in self.EXTRA if self.get(k) is not None] + ["params"]

    def _shared(self, key: str) -> bool:
        return self._values is None or key not in self._opt.GROUP_KEYS

    def __getitem__(self, key: str):
        if key == "params":
            opt = self._opt
            if opt._group_params:
                return list(opt._group_params[self._index])
            return list(opt._bound.values()) or list(opt.params or [])
        if key in self.EXTRA:
            v = (getattr(self._opt, key, None) if self._values is None
                 else self._values.get(key))
            if v is None:
                raise KeyError(key)
            return v
        if key not in self.keys():
            raise KeyError(f"{type(self._opt).__name__} has no hyperparameter {key!r}; it has "
                           f"{self.keys()}")
        return getattr(self._opt, key) if self._shared(key) else self._values[key]

    def get(self, key: str, default=None):
        try:
            return self[key]
        except KeyError:
            return default

    def __setitem__(self, key: str, value) -> None:
        if key in self.EXTRA:
            if self._values is None:
                setattr(self._opt, key, value)
            else:
                self._values[key] = value
            return
        if key == "params" or key not in self.keys():
            raise KeyError(f"cannot set {key!r} on {type(self._opt).__name__}'s parameter group")
        if self._shared(key):
            if self._values is not None:
                raise KeyError(f"{key!r} is shared by every parameter group of "
                               f"{type(self._opt).__name__}: set it on group 0 (the optimizer)")
            setattr(self._opt, key, value)
        else:
            self._values[key] = value

    def __contains__(self, key: str) -> bool:
        return key in self.keys()


def _split_groups(params) -> tuple[list[Parameter] | None, list[dict] | None]:
    """(every Parameter, the groups as given or None): ``params`` is Parameters or torch's
    list of dicts ``{"params": [...], "lr": ..., ...}``."""
    if params is None:
        return None, None
    items = list(params)
    if not any(isinstance(g, dict) for g in items):
        return _param_list(items), None
    if not all(isinstance(g, dict) for g in items):
        raise TypeError("optimizer params: give Parameters or parameter-group dicts, not both")
    groups, seen = [], set()
    for i, g in enumerate(items):
        if "params" not in g:
            raise ValueError(f"parameter group {i} has no 'params' entry")
        ps = g["params"]
        ps = _param_list([ps] if isinstance(ps, Parameter) else ps)
        for p in ps:
            if id(p) in seen:
                raise ValueError(f"a parameter of group {i} is also in an earlier group: "
                                 f"each parameter belongs to one group")
            seen.add(id(p))
        groups.append({**g, "params": ps})
    return [p for g in groups for p in g["params"]], groups


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

    GROUP_KEYS = ("lr", "momentum", "dampening", "weight_decay")

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
        self._finish_groups()
        groups = self._group_values()
        self._dampened = any(g["dampening"] != 0 for g in groups)
        self._has_momentum = any(g["momentum"] != 0 for g in groups)
        if nesterov and not all(g["momentum"] != 0 for g in groups):
            raise ValueError("Nesterov momentum requires a momentum > 0 in every group")
        if self._dampened and (convention != "torch" or nesterov or
                               not all(g["momentum"] != 0 for g in groups)):
            raise ValueError("dampening is torch's (convention='torch', with momentum and "
                             "without nesterov); the text has none")
        self.kind = "momentum" if self._has_momentum else "sgd"

    def _nesterov_flag(self) -> bool:
        return self.nesterov

    def spec(self) -> OptimizerSpec:
        return dataclasses.replace(super().spec(), grad_scale=self._dampened)

    def _extra_values(self) -> dict[str, float]:
        if self._dampened:       # torch: buf = g at the first step, mu buf + (1 - d) g after
            return {"grad_scale": 1.0 if self.param_step == 0 else 1.0 - float(self.dampening)}
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
    GROUP_KEYS = ("lr", "lr_decay", "weight_decay", "eps")
    # torch.optim.Adagrad starts every group's accumulator at the constructor's value
    SHARED_KEYS = Optimizer.SHARED_KEYS + ("initial_accumulator_value",)

    def __init__(self, params=None, lr=0.01, lr_decay: float = 0.0, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float | None = None, *,
                 convention: str = "text", **kw):
        super().__init__(params, lr=lr, convention=convention, weight_decay=weight_decay, **kw)
        self.lr_decay = lr_decay
        self.initial_accumulator_value = initial_accumulator_value
        self.eps = eps if eps is not None else (1e-7 if convention == "text" else 1e-10)
        self._finish_groups()

    def _rule_values(self):
        lr = self.current_lr() / (1 + self.param_step * self.lr_decay)
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

    GROUP_KEYS = ("lr", "alpha", "eps", "weight_decay", "momentum")

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
        self._finish_groups()
        groups = self._group_values()
        self._has_momentum = any(g["momentum"] != 0 for g in groups)
        if nesterov and not all(g["momentum"] != 0 for g in groups):
            raise ValueError("Nesterov momentum requires a momentum > 0 in every group")
        self.centered = centered

    @property
    def kind(self) -> str:
        """The rule compiled (``centered`` read at each step: setting it compiles again)."""
        return (("rmsprop_centered" if self.centered else "rmsprop") +
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
    GROUP_KEYS = ("lr", "betas", "eps", "weight_decay")

    def __init__(self, params=None, lr=0.001, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False, *,
                 convention: str = "text", **kw):
        if amsgrad and convention != "torch":
            raise ValueError("amsgrad is torch's (convention='torch'); the text has no such "
                             "form")
        super().__init__(params, lr=lr, convention=convention, weight_decay=weight_decay, **kw)
        self.betas, self.eps, self.amsgrad = tuple(betas), eps, amsgrad
        self._finish_groups()

    @property
    def kind(self) -> str:
        """The rule compiled (``amsgrad`` read at each step: setting it compiles again)."""
        return "adam_amsgrad" if self.amsgrad else "adam"

    def _rule_values(self):
        b1, b2 = self.betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"Adam betas must lie in [0, 1), got {self.betas}")
        return {"lr": self.current_lr(), "beta1": float(b1), "beta2": float(b2),
                "eps": float(self.eps), "t": float(self.param_step + 1)}


class AdamW(Adam):
    """Adam with decoupled weight decay (torch.optim.AdamW): p <- p - lr wd p, then Adam."""

    def __init__(self, params=None, lr=0.001, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01, amsgrad: bool = False, **kw):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, **kw)

    def _decoupled(self) -> bool:
        return True



# ---------------------------------------------------------------- torch's other adaptive rules
class _TorchOnly(Optimizer):
    """An update rule torch.optim has and the text does not: convention='torch' only."""

    def __init__(self, params, *, lr, convention: str = "torch", **kw):
        if convention != "torch":
            raise ValueError(f"{type(self).__name__} is torch's (convention='torch'); the text "
                             f"has no such form")
        super().__init__(params, lr=lr, convention=convention, **kw)

    def _betas(self) -> tuple[float, float]:
        b1, b2 = self.betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"{type(self).__name__} betas must lie in [0, 1), got "
                             f"{self.betas}")
        return float(b1), float(b2)


class Adamax(_TorchOnly):
    """torch.optim.Adamax: Adam with the infinity norm, u <- max(b2 u, |g| + eps),
    p <- p - lr / (1 - b1^t) s / u."""
    kind = "adamax"
    GROUP_KEYS = ("lr", "betas", "eps", "weight_decay")

    def __init__(self, params=None, lr=2e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, **kw):
        super().__init__(params, lr=lr, weight_decay=weight_decay, **kw)
        self.betas, self.eps = tuple(betas), eps
        self._finish_groups()

    def _rule_values(self):
        b1, b2 = self._betas()
        t = self.param_step + 1
        return {"step_size": self.current_lr() / (1 - b1 ** t), "beta1": b1, "beta2": b2,
                "eps": float(self.eps)}


class Adadelta(_TorchOnly):
    """torch.optim.Adadelta: r <- rho r + (1-rho) g², delta = sqrt(d + eps) / sqrt(r + eps) g,
    d <- rho d + (1-rho) delta², p <- p - lr delta."""
    kind = "adadelta"
    GROUP_KEYS = ("lr", "rho", "eps", "weight_decay")

    def __init__(self, params=None, lr=1.0, rho: float = 0.9, eps: float = 1e-6,
                 weight_decay: float = 0.0, **kw):
        super().__init__(params, lr=lr, weight_decay=weight_decay, **kw)
        self.rho, self.eps = rho, eps
        self._finish_groups()

    def _rule_values(self):
        if not 0 <= self.rho <= 1:
            raise ValueError(f"Adadelta rho must lie in [0, 1], got {self.rho}")
        return {"lr": self.current_lr(), "rho": float(self.rho), "eps": float(self.eps)}


class _AdamLike(_TorchOnly):
    """NAdam's and RAdam's common part: betas, eps, ``decoupled_weight_decay``."""
    GROUP_KEYS = ("lr", "betas", "eps", "weight_decay")

    def __init__(self, params, lr, betas, eps, weight_decay, decoupled_weight_decay, **kw):
        super().__init__(params, lr=lr, weight_decay=weight_decay, **kw)
        self.betas, self.eps = tuple(betas), eps
        self.decoupled_weight_decay = bool(decoupled_weight_decay)
        self._finish_groups()

    def _decoupled(self) -> bool:
        return self.decoupled_weight_decay

    def _step_values(self) -> tuple[float, float, int, float]:
        """(beta1, beta2, t: this step's number, lr)."""
        b1, b2 = self._betas()
        return b1, b2, self.param_step + 1, self.current_lr()


class NAdam(_AdamLike):
    """torch.optim.NAdam: Adam with Nesterov momentum (Dozat), the momentum schedule
    mu_t = b1 (1 - 0.96^(t psi) / 2) (psi = ``momentum_decay``) worked out on the host;
    ``decoupled_weight_decay`` is NAdamW's p <- p - lr wd p."""
    kind = "nadam"
    GROUP_KEYS = ("lr", "betas", "eps", "weight_decay", "momentum_decay")

    def __init__(self, params=None, lr=2e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum_decay: float = 4e-3,
                 decoupled_weight_decay: bool = False, **kw):
        self.momentum_decay = momentum_decay
        super().__init__(params, lr, betas, eps, weight_decay, decoupled_weight_decay, **kw)

    def _rule_values(self):
        b1, b2, t, lr = self._step_values()

        def mu(k):
            return b1 * (1.0 - 0.5 * 0.96 ** (k * self.momentum_decay))
        # torch keeps this product as a float32 state (its default scalar dtype), rounded
        # at each step: the same rounding here, so the steps agree to float64's precision
        product = np.float32(1.0)
        for k in range(1, t + 1):
            product = np.float32(product * np.float32(mu(k)))
        product = float(product)
        return {"lr": lr, "beta1": b1, "beta2": b2, "eps": float(self.eps),
                "grad_step": lr * (1.0 - mu(t)) / (1.0 - product),
                "avg_step": lr * mu(t + 1) / (1.0 - product * mu(t + 1)),
                "bc2": 1.0 - b2 ** t}


class RAdam(_AdamLike):
    """torch.optim.RAdam (Liu et al.): Adam whose adaptive step is rectified by
    r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t)) once
    rho_t = rho_inf - 2 t b2^t / (1 - b2^t) exceeds 5 (before: the bias-corrected momentum
    alone); ``decoupled_weight_decay`` is p <- p - lr wd p."""
    kind = "radam"

    def __init__(self, params=None, lr=1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decoupled_weight_decay: bool = False, **kw):
        super().__init__(params, lr, betas, eps, weight_decay, decoupled_weight_decay, **kw)

    def _rule_values(self):
        b1, b2, t, lr = self._step_values()
        bc1, bc2 = 1.0 - b1 ** t, 1.0 - b2 ** t
        rho_inf = 2.0 / (1.0 - b2) - 1.0
        rho_t = rho_inf - 2.0 * t * b2 ** t / bc2
        rect, plain = 0.0, 1.0
        if rho_t > 5.0:
            rect = ((rho_t - 4) * (rho_t - 2) * rho_inf /
                    ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5 * bc2 ** 0.5
            plain = 0.0
        return {"lr": lr, "beta1": b1, "beta2": b2, "eps": float(self.eps),
                "step_size": lr / bc1, "rect": rect, "plain": plain}


class Rprop(_TorchOnly):
    """torch.optim.Rprop (resilient backpropagation): the sign of each gradient and a step of
    each weight's own, grown by ``etas[1]`` while the sign holds and shrunk by ``etas[0]``
    when it flips, within ``step_sizes``; every step starts at ``lr``."""
    kind = "rprop"
    GROUP_KEYS = ("lr", "etas", "step_sizes")

    def __init__(self, params=None, lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50.0), **kw):
        super().__init__(params, lr=lr, **kw)
        self.etas, self.step_sizes = tuple(etas), tuple(step_sizes)
        self._finish_groups()

    def _rule_values(self):
        (minus, plus), (lo, hi) = self.etas, self.step_sizes
        if not 0.0 < minus < 1.0 < plus:
            raise ValueError(f"Rprop etas must satisfy 0 < etaminus < 1 < etaplus, got "
                             f"{self.etas}")
        return {"etaminus": float(minus), "etaplus": float(plus),
                "step_size_min": float(lo), "step_size_max": float(hi)}

    def _initial_state(self, slot, p):
        if slot == "step_size":
            return np.full_like(p, self.current_lr())
        return super()._initial_state(slot, p)


# section 8.6's methods: host-side loops over compiled graphs
from .second_order import (BFGS, LBFGS, BlockCoordinateDescent,  # noqa: E402,F401
                           ConjugateGradient, Newton)
from . import lr_scheduler  # noqa: E402,F401  (ig.optim.lr_scheduler, as torch.optim's)
