"""VJP rules of the core ops (irgraph/ops/core.py), each registered under its definition.

Every rule is written with IR ops only, so a gradient graph can be differentiated again.
Non-smooth points follow PyTorch:

* ``relu``: the derivative at 0 is 0 (``x > 0`` selects the gradient).
* ``abs``: ``sign(x)``, so 0 at 0.
* ``maximum``/``minimum``: where ``a == b`` the gradient is split evenly, half to each side.
* ``max``/``min`` reductions: the gradient is split evenly among the tied extrema (as
  ``torch.amax``/``torch.amin``).
* ``pow``: ``d/da`` is 0 where the exponent is 0; ``d/db`` is 0 where ``a == 0`` and
  ``b >= 0`` (``log 0`` would give nan times 0).
"""
from __future__ import annotations

import math

import numpy as np

from irgraph import Value
from irgraph.ops.core import normalize_axes, reduced_shape, slice_shape

from .core import Emitter, vjp_rule

_BIG = 2 ** 62  # a slice bound past any dimension


# ---------------------------------------------------------------- helpers
def _zero(e: Emitter, like: Value) -> Value:
    return e.scalar(0.0, like)


def _scale(e: Emitter, v: Value, k: float) -> Value:
    return e("mul", v, e.scalar(k, v))


def _slice_axis(e: Emitter, v: Value, axis: int, start: int, stop: int, step: int = 1) -> Value:
    """``v[..., start:stop:step, ...]`` on one axis."""
    r = len(v.shape)
    starts, stops, steps = [0] * r, [_BIG] * r, [1] * r
    starts[axis], stops[axis], steps[axis] = start, stop, step
    return e("slice", v, starts=starts, stops=stops, steps=steps)


def _pad_axis(e: Emitter, v: Value, axis: int, before: int, after: int) -> Value:
    """Zero padding on one axis."""
    if not before and not after:
        return v
    pads = [0] * (2 * len(v.shape))
    pads[2 * axis], pads[2 * axis + 1] = before, after
    return e("pad", v, pads=pads)


def _reverse_axis(e: Emitter, v: Value, axis: int) -> Value:
    n = v.shape[axis]
    return _slice_axis(e, v, axis, n - 1, -n - 1, -1)


def _swap_last(e: Emitter, v: Value) -> Value:
    perm = list(range(len(v.shape)))
    perm[-2], perm[-1] = perm[-1], perm[-2]
    return e("transpose", v, perm=perm)


def _reshape(e: Emitter, v: Value, shape) -> Value:
    return v if v.shape == tuple(shape) else e("reshape", v, shape=tuple(shape))


# ---------------------------------------------------------------- elementwise unary
@vjp_rule("neg")
def _neg(e, node, xs, ys, gs):
    return [e("neg", gs[0])]


@vjp_rule("exp")
def _exp(e, node, xs, ys, gs):
    return [e("mul", gs[0], ys[0])]


@vjp_rule("log")
def _log(e, node, xs, ys, gs):
    return [e("div", gs[0], xs[0])]


@vjp_rule("sqrt")
def _sqrt(e, node, xs, ys, gs):
    # d sqrt(x) = 1 / (2 sqrt(x))
    return [e("div", gs[0], _scale(e, ys[0], 2.0))]


@vjp_rule("rsqrt")
def _rsqrt(e, node, xs, ys, gs):
    # d x^(-1/2) = -1/2 x^(-3/2) = -1/2 y^3
    y = ys[0]
    return [e("mul", gs[0], _scale(e, e("mul", y, e("mul", y, y)), -0.5))]


@vjp_rule("tanh")
def _tanh(e, node, xs, ys, gs):
    # 1 - tanh^2 (the diag(1 - h^2) factor of eq. 10.21)
    y = ys[0]
    return [e("mul", gs[0], e("sub", e.scalar(1.0, y), e("mul", y, y)))]


@vjp_rule("sigmoid")
def _sigmoid(e, node, xs, ys, gs):
    y = ys[0]
    return [e("mul", gs[0], e("mul", y, e("sub", e.scalar(1.0, y), y)))]


@vjp_rule("erf")
def _erf(e, node, xs, ys, gs):
    # d erf(x) = 2/sqrt(pi) exp(-x^2)
    x = xs[0]
    return [e("mul", gs[0], _scale(e, e("exp", e("neg", e("mul", x, x))), 2.0 / math.sqrt(math.pi)))]


@vjp_rule("sin")
def _sin(e, node, xs, ys, gs):
    return [e("mul", gs[0], e("cos", xs[0]))]


@vjp_rule("cos")
def _cos(e, node, xs, ys, gs):
    return [e("neg", e("mul", gs[0], e("sin", xs[0])))]


@vjp_rule("relu")
def _relu(e, node, xs, ys, gs):
    (x,), (g,) = xs, gs
    return [e("where", e("gt", x, _zero(e, x)), g, _zero(e, g))]


@vjp_rule("abs")
def _abs(e, node, xs, ys, gs):
    return [e("mul", gs[0], e("sign", xs[0]))]


@vjp_rule("square")
def _square(e, node, xs, ys, gs):
    return [e("mul", gs[0], _scale(e, xs[0], 2.0))]


@vjp_rule("cast")
def _cast(e, node, xs, ys, gs):
    (x,), (g,) = xs, gs
    return [g if g.dtype == x.dtype else e("cast", g, dtype=x.dtype)]


# ---------------------------------------------------------------- binary, broadcasting
@vjp_rule("add")
def _add(e, node, xs, ys, gs):
    (g,) = gs
    return [e.sum_to(g, xs[0].shape), e.sum_to(g, xs[1].shape)]


@vjp_rule("sub")
def _sub(e, node, xs, ys, gs):
    (g,) = gs
    return [e.sum_to(g, xs[0].shape), e.sum_to(e("neg", g), xs[1].shape)]


@vjp_rule("mul")
def _mul(e, node, xs, ys, gs):
    (g,) = gs
    a, b = xs
    return [e.sum_to(e("mul", g, b), a.shape), e.sum_to(e("mul", g, a), b.shape)]


@vjp_rule("div")
def _div(e, node, xs, ys, gs):
    (g,), (a, b), (y,) = gs, xs, ys
    ga = e("div", g, b)                     # g / b
    gb = e("neg", e("mul", ga, y))          # -g a / b^2 = -(g / b) y
    return [e.sum_to(ga, a.shape), e.sum_to(gb, b.shape)]


@vjp_rule("pow")
def _pow(e, node, xs, ys, gs):
    (g,), (a, b), (y,) = gs, xs, ys
    zero = _zero(e, g)
    # d/da = b a^(b-1), 0 where b == 0 (PyTorch's pow_backward_self); the power left aside
    # there is taken as a^0, not a^-1: differentiated again, an infinite a^-1 at a = 0 would
    # meet its zero cotangent as 0 * inf = NaN (x**2's third derivative at 0 was NaN)
    b0 = e("eq", b, _zero(e, b))
    b_safe = e("where", b0, e.scalar(1.0, b), b)
    da = e("mul", g, e("mul", b, e("pow", a, e("sub", b_safe, e.scalar(1.0, b)))))
    da = e("where", b0, zero, da)
    # d/db = y log a, 0 where a == 0 and b >= 0 (PyTorch's pow_backward_exponent); log reads
    # 1 there, so that differentiating this graph again does not meet 0 * (1 / 0)
    a0 = e("logical_and", e("eq", a, _zero(e, a)), e("ge", b, _zero(e, b)))
    safe = e("where", a0, e.scalar(1.0, a), a)
    db = e("where", a0, zero, e("mul", g, e("mul", y, e("log", safe))))
    return [e.sum_to(da, a.shape), e.sum_to(db, b.shape)]


@vjp_rule("fmod")
def _fmod(e, node, xs, ys, gs):
    """PyTorch's rule: ``d/da = g``, ``d/db = -g * trunc(a / b)``, the rounded quotient
    truncated (``a / b`` first, as torch's ``div(rounding_mode="trunc")``); ``trunc(q)`` is
    ``q - fmod(q, 1)``, exact, and ``q`` itself where that is NaN (``q`` infinite or NaN).
    The quotient is piecewise constant: no gradient flows through it."""
    (g,), (a, b) = gs, xs
    q = e("stop_gradient", e("div", a, b))
    frac = e("fmod", q, e.scalar(1.0, q))
    t = e("where", e("eq", frac, frac), e("sub", q, frac), q)
    return [e.sum_to(g, a.shape), e.sum_to(e("neg", e("mul", g, t)), b.shape)]


def _extremum(cmp: str):
    """maximum (cmp='gt') / minimum (cmp='lt'): ties split the gradient evenly, as PyTorch."""
    def rule(e, node, xs, ys, gs):
        (g,), (a, b) = gs, xs
        zero, half = _zero(e, g), _scale(e, g, 0.5)
        wins, tie = e(cmp, a, b), e("eq", a, b)
        ga = e("where", wins, g, e("where", tie, half, zero))
        gb = e("where", wins, zero, e("where", tie, half, g))
        return [e.sum_to(ga, a.shape), e.sum_to(gb, b.shape)]
    return rule


vjp_rule("maximum")(_extremum("gt"))
vjp_rule("minimum")(_extremum("lt"))


@vjp_rule("where")
def _where(e, node, xs, ys, gs):
    (g,), (cond, x, y) = gs, xs
    zero = _zero(e, g)
    return [None, e.sum_to(e("where", cond, g, zero), x.shape),
            e.sum_to(e("where", cond, zero, g), y.shape)]


# ---------------------------------------------------------------- reductions
def _keep_axes(e: Emitter, node, x: Value, g: Value) -> tuple[tuple[int, ...], Value]:
    """The reduced axes and ``g`` reshaped as if the reduction kept its dims."""
    axes = normalize_axes(node.attrs["axis"], len(x.shape))
    return axes, _reshape(e, g, reduced_shape(x.shape, axes, True))


@vjp_rule("sum")
def _sum(e, node, xs, ys, gs):
    (x,) = xs
    _, g = _keep_axes(e, node, x, gs[0])
    return [e.broadcast(g, x.shape)]


@vjp_rule("mean")
def _mean(e, node, xs, ys, gs):
    (x,) = xs
    axes, g = _keep_axes(e, node, x, gs[0])
    n = int(np.prod([x.shape[a] for a in axes], dtype=np.int64))
    return [e.broadcast(_scale(e, g, 1.0 / n) if n else g, x.shape)]


def _reduce_extremum(e, node, xs, ys, gs):
    """max/min reductions: the gradient is shared evenly by the tied extrema (torch.amax)."""
    (x,) = xs
    _, g = _keep_axes(e, node, x, gs[0])
    _, y = _keep_axes(e, node, x, ys[0])
    hit = e("cast", e("eq", x, y), dtype=x.dtype)
    count = e("sum", hit, axis=node.attrs["axis"], keepdims=True)
    return [e("mul", hit, e("div", g, count))]


vjp_rule("max", "min")(_reduce_extremum)


# ---------------------------------------------------------------- matmul
@vjp_rule("matmul")
def _matmul(e, node, xs, ys, gs):
    """Batched: operands promoted as numpy does (1-D a -> (1,k), 1-D b -> (k,1)), the
    gradients summed over broadcast batch dims."""
    (g,), (a, b) = gs, xs
    a2 = _reshape(e, a, (1,) + a.shape) if len(a.shape) == 1 else a
    b2 = _reshape(e, b, b.shape + (1,)) if len(b.shape) == 1 else b
    batch = tuple(np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2]))
    g2 = _reshape(e, g, batch + (a2.shape[-2], b2.shape[-1]))
    ga = e.sum_to(e("matmul", g2, _swap_last(e, b2)), a2.shape)
    gb = e.sum_to(e("matmul", _swap_last(e, a2), g2), b2.shape)
    return [_reshape(e, ga, a.shape), _reshape(e, gb, b.shape)]


@vjp_rule("matmul_f32")
def _matmul_f32(e, node, xs, ys, gs):
    """The float32 gradient through a float32 ``matmul`` of the widened operands, summed
    over broadcast batch dims, then rounded once to each operand's dtype."""
    wide = [x if x.dtype == "float32" else e("cast", x, dtype="float32") for x in xs]
    grads = _matmul(e, node, wide, ys, gs)
    return [gr if x.dtype == "float32" else e("cast", gr, dtype=x.dtype)
            for gr, x in zip(grads, xs)]


# ---------------------------------------------------------------- shape ops
@vjp_rule("reshape")
def _reshape_rule(e, node, xs, ys, gs):
    return [_reshape(e, gs[0], xs[0].shape)]


@vjp_rule("transpose")
def _transpose(e, node, xs, ys, gs):
    perm = node.attrs["perm"]
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return [e("transpose", gs[0], perm=inv)]


@vjp_rule("broadcast_to")
def _broadcast_to(e, node, xs, ys, gs):
    return [e.sum_to(gs[0], xs[0].shape)]


@vjp_rule("concat")
def _concat(e, node, xs, ys, gs):
    (g,) = gs
    (axis,) = normalize_axes((node.attrs["axis"],), len(g.shape))
    out, off = [], 0
    for x in xs:
        n = x.shape[axis]
        out.append(_slice_axis(e, g, axis, off, off + n))
        off += n
    return out


def _unslice_axis(e: Emitter, g: Value, axis: int, d: int, start: int, stop: int,
                  step: int) -> Value:
    """Adjoint of ``x[start:stop:step]`` on one axis of length ``d``: put each element of ``g``
    back at its index, zeros elsewhere (reverse, dilate by the step, pad)."""
    idx = range(*slice(start, stop, step).indices(d))
    n = len(idx)
    if step < 0:
        g, first, step = _reverse_axis(e, g, axis), idx[-1], -step
    else:
        first = idx[0]
    if step > 1:
        s = g.shape
        g = _reshape(e, g, s[:axis + 1] + (1,) + s[axis + 1:])
        g = _pad_axis(e, g, axis + 1, 0, step - 1)
        g = _reshape(e, g, s[:axis] + (n * step,) + s[axis + 1:])
        g = _slice_axis(e, g, axis, 0, (n - 1) * step + 1)
    return _pad_axis(e, g, axis, first, d - first - ((n - 1) * step + 1))


@vjp_rule("slice")
def _slice(e, node, xs, ys, gs):
    (x,), (g,) = xs, gs
    a = node.attrs
    if 0 in slice_shape(x.shape, a["starts"], a["stops"], a["steps"]):
        return [e.zeros_like(x)]
    for axis, d in enumerate(x.shape):
        b, s, t = a["starts"][axis], a["stops"][axis], a["steps"][axis]
        if g.shape[axis] != d or range(*slice(b, s, t).indices(d)) != range(d):
            g = _unslice_axis(e, g, axis, d, b, s, t)
    return [g]


def _unpad_axis(e: Emitter, g: Value, axis: int, d: int, before: int, after: int,
                mode: str) -> Value:
    """Adjoint of padding one axis of length ``d``: the border cotangents go back to the
    elements they were copied from."""
    core = _slice_axis(e, g, axis, before, before + d)
    parts = []
    if before:
        left = _slice_axis(e, g, axis, 0, before)
        if mode == "reflect":      # out position j < before holds x[before - j]
            parts.append(_pad_axis(e, _reverse_axis(e, left, axis), axis, 1, d - 1 - before))
        elif mode == "replicate":  # holds x[0]
            parts.append(_pad_axis(e, e("sum", left, axis=(axis,), keepdims=True), axis, 0,
                                   d - 1))
        else:                      # circular: holds x[d - before + j]
            parts.append(_pad_axis(e, left, axis, d - before, 0))
    if after:
        right = _slice_axis(e, g, axis, before + d, before + d + after)
        if mode == "reflect":      # out position before + d + k holds x[d - 2 - k]
            parts.append(_pad_axis(e, _reverse_axis(e, right, axis), axis, d - 1 - after, 1))
        elif mode == "replicate":  # holds x[d - 1]
            parts.append(_pad_axis(e, e("sum", right, axis=(axis,), keepdims=True), axis,
                                   d - 1, 0))
        else:                      # circular: holds x[k]
            parts.append(_pad_axis(e, right, axis, 0, d - after))
    for p in parts:
        core = e("add", core, p)
    return core


@vjp_rule("pad")
def _pad(e, node, xs, ys, gs):
    (x,), (g,) = xs, gs
    pads, mode = node.attrs["pads"], node.attrs["mode"]
    if mode == "constant":
        r = len(x.shape)
        starts = [pads[2 * i] for i in range(r)]
        stops = [pads[2 * i] + d for i, d in enumerate(x.shape)]
        return [e("slice", g, starts=starts, stops=stops, steps=[1] * r)]
    # per-axis pads commute (they act on different axes), so their adjoints can go in order
    for axis, d in enumerate(x.shape):
        if pads[2 * axis] or pads[2 * axis + 1]:
            g = _unpad_axis(e, g, axis, d, pads[2 * axis], pads[2 * axis + 1], mode)
    return [g]


# ---------------------------------------------------------------- softmax and losses
@vjp_rule("softmax")
def _softmax(e, node, xs, ys, gs):
    # dx = y * (g - sum(g y))
    (g,), (y,), axis = gs, ys, node.attrs["axis"]
    dot = e("sum", e("mul", g, y), axis=(axis,), keepdims=True)
    return [e("mul", y, e("sub", g, dot))]


@vjp_rule("log_softmax")
def _log_softmax(e, node, xs, ys, gs):
    # dx = g - softmax(x) * sum(g)
    (g,), (y,), axis = gs, ys, node.attrs["axis"]
    total = e("sum", g, axis=(axis,), keepdims=True)
    return [e("sub", g, e("mul", e("exp", y), total))]


@vjp_rule("nll_loss")
def _nll_loss(e, node, xs, ys, gs):
    """-g at each counted target class, scaled as the reduction scales (with log_softmax
    this gives eq. 10.18: softmax(o) - 1_{i=y})."""
    (g,), (logp, target) = gs, xs
    reduction, ignore = node.attrs["reduction"], node.attrs["ignore_index"]
    tshape = logp.shape[:1] + (1,) + logp.shape[2:]
    t = _reshape(e, target, tshape)
    classes = e("iota", shape=logp.shape, axis=1, dtype=target.dtype)
    keep = e("ne", t, e.full((), ignore, target.dtype))
    hit = e("logical_and", e("eq", classes, t), keep)
    if reduction == "none":
        g = _reshape(e, g, tshape)
    elif reduction == "mean":
        g = e("div", g, e("sum", e("cast", keep, dtype=logp.dtype)))
    return [e("where", hit, e("neg", g), _zero(e, logp)), None]


@vjp_rule("mse_loss")
def _mse_loss(e, node, xs, ys, gs):
    (g,), (x, y) = gs, xs
    n = int(np.prod(x.shape, dtype=np.int64))
    k = 2.0 / n if node.attrs["reduction"] == "mean" and n else 2.0
    gx = e("mul", _scale(e, g, k), e("sub", x, y))
    return [gx, e("neg", gx)]
