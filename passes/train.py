"""The training step as ONE graph: forward + loss + gradients + optimizer update.

``training_step(loss_graph, trainable, spec)`` turns a loss graph (inputs: the batch;
parameters: the model's weights and buffers; output 0: the scalar loss; donated outputs: the
buffers' new values, e.g. batch norm's running statistics) into::

    graph step(%x: f32[8,3], %y: i64[8], %lr: f32[], %momentum: f32[], %weight_decay: f32[])
        params(%w: f32[3,2], %opt.momentum_buffer.w: f32[3,2]) {
      ...forward and loss...                    # at the interim point for Nesterov (alg. 8.3)
      ...gradients (reverse mode)...
      %g2 = add(%g, mul(%weight_decay, %w))     # PyTorch's L2 weight decay
      %w2, %v2 = momentum_update(%w, %g2, %opt.momentum_buffer.w, %lr, %momentum)
      donate(1->5, 2->6)
      return %loss, %w2, %v2
    }

Hyperparameters are rank-0 graph inputs (changing one never recompiles); parameters and
optimizer state are graph parameters, and every new value is an output donated to its
argument's buffer, so an executable updates them in place.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from irgraph import Graph, IRError, TensorType, Value

from .unroll import bptt as bptt_value_and_grad

# optimizer kind -> (update op, state slots in the op's input order, scalar inputs in order)
# State slots use torch.optim's names.
UPDATE_RULES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "sgd": ("sgd_update", (), ("lr",)),
    "momentum": ("momentum_update", ("momentum_buffer",), ("lr", "momentum")),
    "adagrad": ("adagrad_update", ("sum",), ("lr", "eps")),
    "rmsprop": ("rmsprop_update", ("square_avg",), ("lr", "alpha", "eps")),
    "rmsprop_momentum": ("rmsprop_momentum_update", ("square_avg", "momentum_buffer"),
                         ("lr", "alpha", "eps", "momentum")),
    "adam": ("adam_update", ("exp_avg", "exp_avg_sq"), ("lr", "beta1", "beta2", "eps", "t")),
    # torch's centered RMSprop (not in the text): composed of elementwise ops, no update op
    "rmsprop_centered": (None, ("square_avg", "grad_avg"), ("lr", "alpha", "eps")),
    "rmsprop_centered_momentum": (None, ("square_avg", "momentum_buffer", "grad_avg"),
                                  ("lr", "alpha", "eps", "momentum")),
    # torch's Adam(amsgrad=True) (not in the text): composed too
    "adam_amsgrad": (None, ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
                     ("lr", "beta1", "beta2", "eps", "t")),
    # torch's Adamax, Adadelta, NAdam and RAdam (not in the text): composed; what depends on
    # the step count alone (bias corrections, NAdam's momentum schedule, RAdam's rectifier)
    # is worked out on the host (frontend/optim.py) and enters as scalars
    "adamax": (None, ("exp_avg", "exp_inf"), ("step_size", "beta1", "beta2", "eps")),
    "adadelta": (None, ("square_avg", "acc_delta"), ("lr", "rho", "eps")),
    "nadam": (None, ("exp_avg", "exp_avg_sq"),
              ("lr", "beta1", "beta2", "eps", "grad_step", "avg_step", "bc2")),
    "radam": (None, ("exp_avg", "exp_avg_sq"),
              ("lr", "beta1", "beta2", "eps", "step_size", "rect", "plain")),
    "rprop": (None, ("prev", "step_size"),
              ("etaminus", "etaplus", "step_size_min", "step_size_max")),
}
# kinds whose update op has a `convention` attribute
_HAS_CONVENTION = {"momentum", "rmsprop", "rmsprop_momentum", "adam"}


@dataclass(frozen=True)
class OptimizerSpec:
    """What is compiled into a training step (the structure, never hyperparameter values).

    ``interim``: take the gradient at p + momentum * v (the text's Nesterov, alg. 8.3/8.6).
    ``decoupled_weight_decay``: AdamW's p <- p - lr wd p instead of the L2 term g + wd p.
    ``clip_norm`` / ``clip_value``: clip the gradients (section 8.2.4) before the update.
    ``polyak``: keep an exponential moving average of the parameters (eq. 8.39).
    ``grad_scale``: multiply the (weight-decayed) gradient by a runtime scalar before the
    update (torch's SGD dampening: 1 at the first step, 1 - dampening after).
    ``maximize``: ascend the loss: the gradient negated before the update (torch's).
    ``groups``: parameter groups (torch.optim's), each with its own values of the
    ``per_group`` hyperparameters (inputs ``group_name(h, i)`` for group i > 0); clipping
    and Polyak averaging are the step's, shared.
    """
    kind: str
    convention: str = "text"
    nesterov: bool = False
    weight_decay: bool = True
    decoupled_weight_decay: bool = False
    clip_norm: bool = False
    clip_norm_eps: float = 1e-6
    clip_value: bool = False
    polyak: bool = False
    grad_scale: bool = False
    maximize: bool = False
    groups: int = 1

    def __post_init__(self):
        if self.kind not in UPDATE_RULES:
            raise ValueError(f"unknown optimizer kind {self.kind!r}; one of {sorted(UPDATE_RULES)}")
        if self.convention not in ("text", "torch"):
            raise ValueError(f"convention must be 'text' or 'torch', got {self.convention!r}")
        if self.kind in _COMPOSED and self.convention != "torch":
            raise ValueError(f"{self.kind} is torch's (convention='torch'); the text has no "
                             f"such form")
        if self.nesterov and self.kind.startswith("rmsprop") and self.convention == "torch" \
                and self.kind.endswith("momentum"):
            raise ValueError("torch.optim.RMSprop has no Nesterov form; use convention='text' "
                             "(alg. 8.6)" + (", which has no centered form" if "centered" in
                                             self.kind else ""))
        if self.nesterov and self.kind not in ("momentum", "rmsprop_momentum"):
            raise ValueError(f"nesterov needs momentum; optimizer kind {self.kind!r} has none")
        if self.groups < 1:
            raise ValueError(f"an optimizer needs at least one parameter group, got {self.groups}")

    @property
    def interim(self) -> bool:
        return self.nesterov and self.convention == "text"

    @property
    def slots(self) -> tuple[str, ...]:
        return UPDATE_RULES[self.kind][1] + (("polyak_avg",) if self.polyak else ())

    @property
    def hyperparameters(self) -> tuple[str, ...]:
        """The step's rank-0 inputs: group 0's and the shared ones, then each further
        group's ``per_group`` ones."""
        names = self._first_group()
        for i in range(1, self.groups):
            names += [self.group_name(h, i) for h in self.per_group]
        return tuple(names)

    @property
    def per_group(self) -> tuple[str, ...]:
        return tuple(h for h in self._first_group() if h not in SHARED_HYPERPARAMETERS)

    @staticmethod
    def group_name(h: str, group: int) -> str:
        return h if group == 0 or h in SHARED_HYPERPARAMETERS else f"{h}_group{group}"

    def _first_group(self) -> list[str]:
        names = list(UPDATE_RULES[self.kind][2])
        if self.weight_decay:
            names.append("weight_decay")
        if self.clip_value:
            names.append("clip_value")
        if self.clip_norm:
            names.append("max_norm")
        if self.polyak:
            names.append("polyak_alpha")
        if self.grad_scale:
            names.append("grad_scale")
        return names


# hyperparameters of the whole step, not of a parameter group
SHARED_HYPERPARAMETERS = frozenset({"clip_value", "max_norm", "polyak_alpha"})


@dataclass
class TrainStep:
    """A training-step graph and where everything sits in its arguments and outputs."""
    graph: Graph
    batch: list[str]                       # graph inputs 0..len(batch)-1
    hyperparameters: list[str]             # the next graph inputs (rank-0)
    params: list[str]                      # every model parameter/buffer (graph params first)
    trainable: list[str]
    state: dict[str, dict[str, str]] = field(default_factory=dict)  # param -> slot -> arg name
    buffer_updates: list[str] = field(default_factory=list)         # buffers the step updates
    aux: int = 0                           # auxiliary outputs: the step's last outputs
    # dynamic loss scaling: the scale and good-step count (graph params after the optimizer
    # state, donated outputs after the updates), else empty
    loss_scale: list[str] = field(default_factory=list)


class _Builder:
    """Emits the step graph: one instance per call of ``training_step``."""

    def __init__(self, src: Graph, spec: OptimizerSpec, name: str):
        self.src, self.spec = src, spec
        self.g = Graph(name)
        self.env: dict[Value, Value] = {}
        self.hyper: dict[str, Value] = {}
        self._casts: dict[tuple[str, str], Value] = {}
        self.group = 0          # the parameter group whose update is being emitted

    def scalar(self, name: str, dtype: str) -> Value:
        """Hyperparameter ``name`` of the current group in ``dtype`` (cast once from the
        inputs' dtype if needed)."""
        name = self.spec.group_name(name, self.group)
        v = self.hyper[name]
        if v.dtype == dtype:
            return v
        key = (name, dtype)
        if key not in self._casts:
            self._casts[key] = self.g.op("cast", v, dtype=dtype)
        return self._casts[key]

    def inline(self, graph: Graph, args: Sequence[Value]) -> list[Value]:
        """Copy ``graph``'s nodes with its arguments bound to ``args``; give its outputs."""
        env = dict(zip(graph.arguments, args))
        for node in graph.nodes:
            outs = self.g.add_node(node.op, [env[v] for v in node.inputs], node.attrs, node.loc)
            env.update(zip(node.outputs, outs))
        return [env[v] for v in graph.outputs]


def training_step(loss_graph: Graph, trainable: Sequence[str], spec: OptimizerSpec,
                  name: str | None = None, aux: bool = False,
                  loss_scaling: "LossScaling | None" = None, bptt: str = "auto",
                  groups: Sequence[int] | None = None) -> TrainStep:
    """Build the training-step graph of ``loss_graph`` (see the module docstring).

    ``aux``: the loss graph's outputs after the loss that are not donated (JAX's
    ``has_aux``: logits, a last hidden state) are outputs of the step too, after the
    updates, computed by the same forward pass (at the gradient's point).

    ``trainable`` names the parameters the optimizer updates; the other parameters are fixed
    weights or buffers (a buffer whose new value the loss graph donates stays a donated
    output). Optimizer-state parameters are named ``opt.<slot>.<param>``. ``groups``: the
    parameter group of each trainable parameter (default: all in group 0).
    """
    _check_loss_graph(loss_graph, trainable)
    groups = [0] * len(trainable) if groups is None else list(groups)
    if len(groups) != len(trainable) or not all(0 <= i < spec.groups for i in groups):
        raise IRError(f"training_step: groups {groups} do not give one of the optimizer's "
                      f"{spec.groups} parameter group(s) to each of {len(trainable)} trainable "
                      f"parameters")
    group_of = dict(zip(trainable, groups))
    if loss_scaling is not None:        # the gradient of loss * scale
        loss_graph = scaled_loss(loss_graph)
    # BPTT (passes/unroll.py, ``bptt`` = its mode): "auto" unrolls short recurrences, long
    # ones keep their states; "rolled" / "unrolled" every one
    vg = bptt_value_and_grad(loss_graph, list(trainable), 0, mode=bptt)
    b = _Builder(loss_graph, spec, name or f"{loss_graph.name}_train_step")
    g = b.g
    batch = [g.add_input(v.name, v.type) for v in loss_graph.inputs]
    hdtype = _hyper_dtype(loss_graph, trainable)
    taken = {v.name for v in loss_graph.arguments}     # parameters are added after these
    for h in spec.hyperparameters:
        name = h if h not in taken else g.fresh_name(f"hp_{h}")
        while name in taken:
            name = g.fresh_name(name + "_")
        b.hyper[h] = g.add_input(name, TensorType((), hdtype))
    amp = [SCALE, GOOD_STEPS] if loss_scaling is not None else []
    params = {p.name: g.add_param(p.name, p.type) for p in loss_graph.params
              if p.name not in amp}
    state = {pn: {slot: g.add_param(g.fresh_name(f"opt.{slot}.{pn}"), params[pn].type)
                  for slot in spec.slots} for pn in trainable}
    params.update((n, g.add_param(n, TensorType((), "float32"))) for n in amp)
    # where the gradient is taken: theta, or the interim point theta + alpha v (alg. 8.3)
    at = dict(params)
    if spec.interim:
        for pn in trainable:
            p = params[pn]
            b.group = group_of[pn]
            mu = b.scalar("momentum", p.dtype)
            at[pn] = g.op("add", p, g.op("mul", mu, state[pn]["momentum_buffer"]))
    outs = b.inline(vg, batch + [at[p.name] for p in loss_graph.params])
    n_src = len(loss_graph.outputs)
    loss, src_outs, grads = outs[0], outs[:n_src], outs[n_src:]
    if loss_scaling is not None:
        loss, grads, finite = unscale(g, loss, grads, params[SCALE])
    grads = _clip(b, grads)
    if spec.maximize:
        grads = [g.op("neg", x) for x in grads]
    new_outputs: list[tuple[Value, Value]] = []     # (new value, argument it replaces)
    for pn, grad in zip(trainable, grads):
        b.group = group_of[pn]
        new_outputs += _update(b, params[pn], at[pn], grad, state[pn])
    b.group = 0
    if loss_scaling is not None:        # an overflow skips the step: old values kept
        new_outputs = [(g.op("where", finite, new, old), old) for new, old in new_outputs]
        new_outputs += loss_scaling.update(g, finite, params[SCALE], params[GOOD_STEPS])
    buffer_updates = []
    for o, a in sorted(loss_graph.donations.items()):
        arg = loss_graph.arguments[a]
        if arg in loss_graph.params:
            buffer_updates.append(arg.name)
            new_outputs.append((src_outs[o], params[arg.name]))
    donated = set(loss_graph.donations)
    aux_outs = [v for i, v in enumerate(src_outs) if aux and i > 0 and i not in donated]
    g.set_outputs([loss] + [v for v, _ in new_outputs] + aux_outs)
    args = g.arguments
    g.donations = {i + 1: args.index(dst) for i, (_, dst) in enumerate(new_outputs)}
    # verified once, by the PassManager of whoever compiles it (frontend/driver.py)
    return TrainStep(g, [v.name for v in batch], list(spec.hyperparameters),
                     [p for p in params if p not in amp], list(trainable),
                     {pn: {s: v.name for s, v in slots.items()} for pn, slots in state.items()},
                     buffer_updates, len(aux_outs), amp)


# ---------------------------------------------------------------- dynamic loss scaling
SCALE, GOOD_STEPS = "amp.scale", "amp.good_steps"


@dataclass(frozen=True)
class LossScaling:
    """Dynamic loss scaling (PyTorch's GradScaler): the loss is multiplied by ``scale``
    before the backward pass and the gradients divided by it; a step whose gradients hold an
    inf or NaN leaves parameters and optimizer state as they were and halves the scale
    (``backoff``); after ``interval`` good steps in a row the scale doubles (``growth``)."""
    init_scale: float = 2.0 ** 16
    growth: float = 2.0
    backoff: float = 0.5
    interval: int = 2000

    def update(self, g: Graph, finite: Value, scale: Value, good: Value):
        """(new value, old argument) pairs of the scale and the good-step count."""
        def c(v):
            return g.op("full", shape=(), value=float(v), dtype="float32")
        good1 = g.op("add", good, c(1))
        grow = g.op("logical_and", finite, g.op("ge", good1, c(self.interval)))
        new_scale = g.op("where", finite, g.op("where", grow, g.op("mul", scale, c(self.growth)),
                                                scale), g.op("mul", scale, c(self.backoff)))
        new_good = g.op("where", g.op("logical_and", finite, g.op("lt", good1, c(self.interval))),
                        good1, c(0))
        return [(new_scale, scale), (new_good, good)]


def scaled_loss(graph: Graph) -> Graph:
    """``graph`` with a float32 scalar parameter ``amp.scale`` and output 0 times it."""
    from irgraph.rewrite import GraphRewriter
    rw = GraphRewriter(graph)
    scale = rw.dst.add_param(SCALE, TensorType((), "float32"))
    rw.dst.add_param(GOOD_STEPS, TensorType((), "float32"))
    for node in graph.nodes:
        rw.copy_node(node)
    loss = rw[graph.outputs[0]]
    s = scale if loss.dtype == "float32" else rw.emit("cast", scale, dtype=loss.dtype)
    out = rw.finish([rw.emit("mul", loss, s)] + [rw[v] for v in graph.outputs[1:]])
    out.donations = dict(graph.donations)
    return out


def unscale(g: Graph, loss: Value, grads: list[Value], scale: Value):
    """The loss and gradients divided by the scale, and whether every gradient is finite
    (a bool scalar: the sum of grad * 0 over all gradients is 0, else NaN)."""
    def by(v):
        s = scale if v.dtype == "float32" else g.op("cast", scale, dtype=v.dtype)
        return g.op("div", v, s)
    grads = [by(x) for x in grads]
    zero = None
    for x in grads:
        x32 = x if x.dtype == "float32" else g.op("cast", x, dtype="float32")
        z = g.op("sum", g.op("mul", x32, g.op("full", shape=(), value=0.0, dtype="float32")))
        zero = z if zero is None else g.op("add", zero, z)
    finite = g.op("eq", zero, g.op("full", shape=(), value=0.0, dtype="float32"))
    return by(loss), grads, finite


def _check_loss_graph(graph: Graph, trainable: Sequence[str]) -> None:
    if not graph.outputs or graph.outputs[0].type.shape != () or not graph.outputs[0].type.is_float:
        got = graph.outputs[0].type if graph.outputs else "nothing"
        raise IRError(f"a training step needs a loss graph whose output 0 is a float scalar; "
                      f"graph {graph.name!r} returns {got}")
    names = {p.name for p in graph.params}
    for t in trainable:
        if t not in names:
            raise IRError(f"trainable parameter {t!r} is not a parameter of graph "
                          f"{graph.name!r} (it has {sorted(names)})")
    if len(set(trainable)) != len(trainable):
        raise IRError(f"trainable parameters named twice: {list(trainable)}")
    if not trainable:
        raise IRError(f"graph {graph.name!r}: no trainable parameters to optimize")


def _hyper_dtype(graph: Graph, trainable: Sequence[str]) -> str:
    """Hyperparameter inputs take the dtype of the first trainable parameter."""
    first = next(p for p in graph.params if p.name in trainable)
    if not first.type.is_float:
        raise IRError(f"trainable parameter %{first.name} is {first.type}, not a float tensor")
    return first.dtype


def _clip(b: _Builder, grads: list[Value]) -> list[Value]:
    """Gradient clipping (section 8.2.4): by value, then by the global norm of all gradients."""
    g, spec = b.g, b.spec
    if spec.clip_value:
        grads = [g.op("clip_by_value", x, b.scalar("clip_value", x.dtype)) for x in grads]
    if spec.clip_norm:
        dtypes = {x.dtype for x in grads}
        if len(dtypes) > 1:
            raise IRError(f"clipping by global norm needs one gradient dtype, got {dtypes}")
        norm = g.op("global_norm", *grads)
        max_norm = b.scalar("max_norm", norm.dtype)
        grads = [g.op("clip_by_norm", x, norm, max_norm, eps=spec.clip_norm_eps)
                 for x in grads]
    return grads


def _update(b: _Builder, p: Value, at: Value, grad: Value,
            state: dict[str, Value]) -> list[tuple[Value, Value]]:
    """Weight decay, the update op, Polyak averaging; (new value, old argument) pairs."""
    g, spec = b.g, b.spec
    op, slots, scalars = UPDATE_RULES[spec.kind]
    dt = p.dtype
    p_in = p
    if spec.weight_decay:
        wd = b.scalar("weight_decay", dt)
        if spec.decoupled_weight_decay:   # AdamW: p <- p - lr wd p
            lr = b.scalar("lr", dt)
            p_in = g.op("sub", p, g.op("mul", g.op("mul", lr, wd), p))
        else:                             # L2 penalty wd/2 |p|^2 at the point of the gradient
            grad = g.op("add", grad, g.op("mul", wd, at))
    if spec.grad_scale:
        grad = g.op("mul", grad, b.scalar("grad_scale", dt))
    attrs = {}
    if spec.kind in _HAS_CONVENTION:
        attrs["convention"] = spec.convention
    if spec.kind == "momentum":
        attrs["nesterov"] = spec.nesterov and spec.convention == "torch"
    ins = [p_in, grad] + [state[s] for s in slots] + [b.scalar(h, dt) for h in scalars]
    outs = g.add_node(op, ins, attrs) if op else _COMPOSED[spec.kind](g, *ins)
    outs = list(outs)
    if "momentum_buffer" in slots and spec.convention == "torch":
        # torch.optim leaves the buffer as it is while a group's momentum is 0 (the step is
        # then plain, as the update gives it); the next nonzero momentum continues from it
        i = 1 + slots.index("momentum_buffer")
        off = g.op("eq", b.scalar("momentum", dt), g.op("full", shape=(), value=0.0, dtype=dt))
        outs[i] = g.op("where", off, state["momentum_buffer"], outs[i])
    pairs = [(outs[0], p)] + [(outs[1 + i], state[s]) for i, s in enumerate(slots)]
    if spec.polyak:
        avg = g.op("polyak_update", state["polyak_avg"], outs[0], b.scalar("polyak_alpha", dt))
        pairs.append((avg, state["polyak_avg"]))
    return pairs


def _rmsprop_centered(g: Graph, p: Value, grad: Value, r: Value, *rest: Value) -> list[Value]:
    """torch.optim.RMSprop(centered=True): r' = a r + (1-a) g², m' = a m + (1-a) g,
    d = sqrt(r' - m'²) + eps; p' = p - lr g / d, or with momentum b' = mu b + g / d,
    p' = p - lr b'. Outputs in slot order: p', r', (b',) m'."""
    if len(rest) == 4:                  # grad_avg, lr, alpha, eps
        (m, lr, alpha, eps), buf, mu = rest, None, None
    else:                               # momentum_buffer, grad_avg, lr, alpha, eps, momentum
        buf, m, lr, alpha, eps, mu = rest
    one_minus = g.op("sub", g.op("full", shape=(), value=1.0, dtype=p.dtype), alpha)
    r2 = g.op("add", g.op("mul", alpha, r), g.op("mul", one_minus, g.op("mul", grad, grad)))
    m2 = g.op("add", g.op("mul", alpha, m), g.op("mul", one_minus, grad))
    denom = g.op("add", g.op("sqrt", g.op("sub", r2, g.op("mul", m2, m2))), eps)
    step = g.op("div", grad, denom)
    if buf is None:
        return [g.op("sub", p, g.op("mul", lr, step)), r2, m2]
    b2 = g.op("add", g.op("mul", mu, buf), step)
    return [g.op("sub", p, g.op("mul", lr, b2)), r2, b2, m2]


def _adam_amsgrad(g: Graph, p: Value, grad: Value, s: Value, r: Value, rmax: Value,
                  lr: Value, beta1: Value, beta2: Value, eps: Value, t: Value) -> list[Value]:
    """torch.optim.Adam(amsgrad=True): s', r' as alg. 8.7, r_max' = max(r_max, r'),
    p' = p - lr s' / (1 - b1^t) / (sqrt(r_max' / (1 - b2^t)) + eps)."""
    one = g.op("full", shape=(), value=1.0, dtype=p.dtype)
    s2, r2 = _moments(g, grad, s, r, beta1, beta2)
    rmax2 = g.op("maximum", rmax, r2)
    bc1 = g.op("sub", one, g.op("pow", beta1, t))
    bc2 = g.op("sub", one, g.op("pow", beta2, t))
    denom = g.op("add", g.op("sqrt", g.op("div", rmax2, bc2)), eps)
    step = g.op("div", g.op("div", s2, bc1), denom)
    return [g.op("sub", p, g.op("mul", lr, step)), s2, r2, rmax2]


def _moments(g: Graph, grad: Value, s: Value, r: Value, beta1: Value, beta2: Value):
    """Adam's moment estimates (alg. 8.7): s' = b1 s + (1-b1) g, r' = b2 r + (1-b2) g²."""
    one = g.op("full", shape=(), value=1.0, dtype=grad.dtype)
    s2 = g.op("add", g.op("mul", beta1, s), g.op("mul", g.op("sub", one, beta1), grad))
    r2 = g.op("add", g.op("mul", beta2, r),
              g.op("mul", g.op("sub", one, beta2), g.op("mul", grad, grad)))
    return s2, r2


def _adamax(g: Graph, p: Value, grad: Value, s: Value, u: Value, step_size: Value,
            beta1: Value, beta2: Value, eps: Value) -> list[Value]:
    """torch.optim.Adamax: s' = b1 s + (1-b1) g, u' = max(b2 u, |g| + eps),
    p' = p - lr / (1 - b1^t) s' / u' (``step_size`` = lr / (1 - b1^t))."""
    one = g.op("full", shape=(), value=1.0, dtype=p.dtype)
    s2 = g.op("add", g.op("mul", beta1, s), g.op("mul", g.op("sub", one, beta1), grad))
    u2 = g.op("maximum", g.op("mul", beta2, u), g.op("add", g.op("abs", grad), eps))
    return [g.op("sub", p, g.op("mul", step_size, g.op("div", s2, u2))), s2, u2]


def _adadelta(g: Graph, p: Value, grad: Value, r: Value, d: Value, lr: Value, rho: Value,
              eps: Value) -> list[Value]:
    """torch.optim.Adadelta: r' = rho r + (1-rho) g², delta = sqrt(d + eps) / sqrt(r' + eps)
    g, d' = rho d + (1-rho) delta², p' = p - lr delta."""
    one = g.op("full", shape=(), value=1.0, dtype=p.dtype)
    rest = g.op("sub", one, rho)
    r2 = g.op("add", g.op("mul", rho, r), g.op("mul", rest, g.op("mul", grad, grad)))
    delta = g.op("mul", g.op("div", g.op("sqrt", g.op("add", d, eps)),
                             g.op("sqrt", g.op("add", r2, eps))), grad)
    d2 = g.op("add", g.op("mul", rho, d), g.op("mul", rest, g.op("mul", delta, delta)))
    return [g.op("sub", p, g.op("mul", lr, delta)), r2, d2]


def _nadam(g: Graph, p: Value, grad: Value, s: Value, r: Value, lr: Value, beta1: Value,
           beta2: Value, eps: Value, grad_step: Value, avg_step: Value,
           bc2: Value) -> list[Value]:
    """torch.optim.NAdam: Adam's moments, d = sqrt(r' / (1 - b2^t)) + eps,
    p' = p - c_g g / d - c_s s' / d with c_g = lr (1 - mu_t) / (1 - prod mu) and
    c_s = lr mu_{t+1} / (1 - mu_{t+1} prod mu) (``grad_step``, ``avg_step``)."""
    s2, r2 = _moments(g, grad, s, r, beta1, beta2)
    denom = g.op("add", g.op("sqrt", g.op("div", r2, bc2)), eps)
    p2 = g.op("sub", p, g.op("mul", grad_step, g.op("div", grad, denom)))
    return [g.op("sub", p2, g.op("mul", avg_step, g.op("div", s2, denom))), s2, r2]


def _radam(g: Graph, p: Value, grad: Value, s: Value, r: Value, lr: Value, beta1: Value,
           beta2: Value, eps: Value, step_size: Value, rect: Value,
           plain: Value) -> list[Value]:
    """torch.optim.RAdam: Adam's moments, p' = p - lr / (1 - b1^t) s' (rect / (sqrt(r') +
    eps) + plain): the rectified step (rect = r_t sqrt(1 - b2^t), plain = 0) once the
    variance's length rho_t exceeds 5, else SGD with momentum (rect = 0, plain = 1)."""
    s2, r2 = _moments(g, grad, s, r, beta1, beta2)
    scale = g.op("add", g.op("div", rect, g.op("add", g.op("sqrt", r2), eps)), plain)
    return [g.op("sub", p, g.op("mul", step_size, g.op("mul", s2, scale))), s2, r2]


def _rprop(g: Graph, p: Value, grad: Value, prev: Value, step: Value, etaminus: Value,
           etaplus: Value, lo: Value, hi: Value) -> list[Value]:
    """torch.optim.Rprop: each weight's own step grows by etaplus while its gradient keeps
    its sign, shrinks by etaminus when it flips (that step's gradient then counts as 0),
    clamped to [lo, hi]; p' = p - sign(g) step'. Outputs p', prev' (the gradient as used),
    step'."""
    zero = g.op("full", shape=(), value=0.0, dtype=p.dtype)
    one = g.op("full", shape=(), value=1.0, dtype=p.dtype)
    s = g.op("sign", g.op("mul", grad, prev))
    factor = g.op("where", g.op("gt", s, zero), etaplus,
                  g.op("where", g.op("lt", s, zero), etaminus, one))
    step2 = g.op("minimum", g.op("maximum", g.op("mul", step, factor), lo), hi)
    used = g.op("where", g.op("eq", factor, etaminus), zero, grad)
    return [g.op("sub", p, g.op("mul", g.op("sign", used), step2)), used, step2]


_COMPOSED = {"rmsprop_centered": _rmsprop_centered,
             "rmsprop_centered_momentum": _rmsprop_centered,
             "adam_amsgrad": _adam_amsgrad, "adamax": _adamax, "adadelta": _adadelta,
             "nadam": _nadam, "radam": _radam, "rprop": _rprop}
