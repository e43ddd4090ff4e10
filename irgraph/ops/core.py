"""The first op set: elementwise, broadcasting binary, reductions, matmul, shape ops,
softmax and the losses (eq. 10.11-10.14: negative log-likelihood of a softmax output)."""
from __future__ import annotations

import math

import numpy as np

from ..registry import (Attr, Cost, IRError, a_any, a_array, a_bool, a_choice, a_dtype, a_float,
                        a_int, a_ints, a_optional, elementwise_cost, register_op)
from ..types import FLOAT_DTYPES, TensorType

# ---------------------------------------------------------------- sources


@register_op("constant", attrs={"value": Attr(a_array)}, cost=lambda i, o, a: Cost(0, o[0].nbytes),
             differentiable=False, nondiff_reason="has no inputs", traits={"constant"})
def constant(*, value):
    return np.array(value)


@constant.type_rule
def _(*, value):
    return TensorType(value.shape, value.dtype)


@register_op("full", attrs={"shape": Attr(a_ints), "value": Attr(a_float),
                            "dtype": Attr(a_dtype, "float32")},
             differentiable=False, nondiff_reason="has no inputs", traits={"constant"})
def full(*, shape, value, dtype):
    return np.full(shape, value, dtype=dtype)


@full.type_rule
def _(*, shape, value, dtype):
    if dtype not in FLOAT_DTYPES and not np.isfinite(value):
        raise ValueError(f"{value} cannot be stored as {dtype}")
    return TensorType(shape, dtype)


@register_op("iota", attrs={"shape": Attr(a_ints), "axis": Attr(a_int),
                            "dtype": Attr(a_dtype, "int64")},
             differentiable=False, nondiff_reason="has no inputs", traits={"constant"})
def iota(*, shape, axis, dtype):
    """The index along ``axis`` at each position of ``shape``."""
    idx = np.arange(shape[axis], dtype=dtype)
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return np.broadcast_to(idx.reshape(view), shape).copy()


@iota.type_rule
def _(*, shape, axis, dtype):
    if not 0 <= axis < len(shape):
        raise ValueError(f"axis {axis} out of range for shape {shape}")
    return TensorType(shape, dtype)


# ---------------------------------------------------------------- elementwise unary
def _same(x):
    return x


def _float_only(x):
    if not x.is_float:
        raise ValueError(f"needs a float tensor, got {x}")
    return x


def _numeric(x):
    if x.dtype == "bool":
        raise ValueError(f"needs a numeric tensor, got {x} (cast it first)")
    return x


_ELEMENTWISE = frozenset({"elementwise", "inplace"})


def _unary(name, fn, flops=1, float_only=True, traits=(), **kw):
    traits = _ELEMENTWISE | ({"float_only"} if float_only else set()) | set(traits)
    op = register_op(name, cost=elementwise_cost(flops), num_inputs=1, traits=traits,
                     **kw)(fn)
    op.type_rule(_float_only if float_only else _numeric)
    return op


def _sigmoid(x):
    """Stable in both tails: only exp(-|x|) <= 1 is ever computed."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype)


def _rsqrt(x):
    with np.errstate(divide="ignore", invalid="ignore"):
        return (1 / np.sqrt(x)).astype(x.dtype)


def _quiet(fn, name: str):
    """numpy's ``fn`` without its floating-point warnings (inf and NaN are results here)."""
    def kernel(x):
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return fn(x)
    kernel.__name__ = name
    return kernel


_log, _sqrt, _exp = _quiet(np.log, "log"), _quiet(np.sqrt, "sqrt"), _quiet(np.exp, "exp")


_ERF64 = np.frompyfunc(math.erf, 1, 1)


def _erf(x):
    """The error function, from the C library's float64 ``erf`` (correctly rounded to about
    1 ulp), rounded once to ``x``'s dtype; erf(+-inf) = +-1, NaN stays NaN."""
    with np.errstate(invalid="ignore"):
        return np.asarray(_ERF64(x.astype(np.float64)), np.float64).astype(x.dtype)


_unary("neg", np.negative, float_only=False)
_unary("exp", _exp, 4, traits={"autocast_float32"})
_unary("log", _log, 4, traits={"autocast_float32"})
_unary("sqrt", _sqrt, 2)
_unary("rsqrt", _rsqrt, 3)
_unary("tanh", np.tanh, 6)
_unary("sigmoid", _sigmoid, 5)
_unary("erf", _erf, 12)


_unary("sin", _quiet(np.sin, "sin"), 10)
_unary("cos", _quiet(np.cos, "cos"), 10)
_unary("relu", lambda x: np.maximum(x, np.zeros((), x.dtype)), float_only=False)
_unary("abs", np.abs, float_only=False)
_unary("sign", np.sign, float_only=False, differentiable=False,
       nondiff_reason="piecewise constant: its derivative is zero almost everywhere")
_unary("square", np.square, float_only=False)


@register_op("cast", attrs={"dtype": Attr(a_dtype)}, traits=_ELEMENTWISE)
def cast(x, *, dtype):
    return x.astype(dtype)


@cast.type_rule
def _(x, *, dtype):
    return x.with_dtype(dtype)


# ---------------------------------------------------------------- binary, numpy broadcasting
def broadcast_shapes(*shapes) -> tuple[int, ...]:
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        raise ValueError(f"shapes {' and '.join(map(str, shapes))} do not broadcast") from None


def _binary_rule(x, y):
    if x.dtype != y.dtype:
        raise ValueError(f"dtypes differ: {x.dtype} and {y.dtype} (insert a cast)")
    return TensorType(broadcast_shapes(x.shape, y.shape), x.dtype)


def _compare_rule(x, y):
    return _binary_rule(x, y).with_dtype("bool")


def _arith_rule(x, y):
    return _numeric(_binary_rule(x, y))


def _binary(name, fn, rule=_arith_rule, traits=(), **kw):
    op = register_op(name, cost=elementwise_cost(1), num_inputs=2,
                     traits=_ELEMENTWISE | set(traits), **kw)(fn)
    op.type_rule(rule)
    return op


def _div(x, y):
    if np.issubdtype(x.dtype, np.integer):
        with np.errstate(divide="ignore"):
            return np.floor_divide(x, y)   # integer division rounds towards -inf, as numpy's //
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.divide(x, y)


def _pow(x, y):
    """``x ** y``; on integers (wrapping as numpy) a negative exponent gives torch's integer
    result: 1 for a base of 1, +-1 for -1 (by the exponent's parity), else 0."""
    if np.issubdtype(np.result_type(x, y), np.integer):
        x, y = np.asarray(x), np.asarray(y)
        with np.errstate(over="ignore"):
            p = np.power(x, np.maximum(y, 0).astype(y.dtype))
        neg = np.where(x == 1, 1, np.where(x == -1, np.where(y % 2 == 0, 1, -1), 0))
        return np.where(y < 0, neg, p).astype(p.dtype)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.power(x, y)


def _fmod(x, y):
    """C's ``fmod``: ``x - trunc(x / y) * y`` computed exactly (the result is representable),
    with the sign of ``x``; ``fmod(x, 0)``, ``fmod(inf, y)`` and NaN operands give NaN,
    ``fmod(x, inf)`` is ``x``. Floats only: integer remainders are compositions of the integer
    ``div`` (frontend ``F.fmod``/``F.remainder``), so no kernel ever divides an integer by 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.fmod(x, y)


def _float_rule(x, y):
    return _float_only(_binary_rule(x, y))


_COMM = {"commutative"}
_binary("add", np.add, traits=_COMM)
_binary("sub", np.subtract)
_binary("mul", np.multiply, traits=_COMM)
_binary("div", _div)
_binary("pow", _pow, traits={"autocast_float32"})
_binary("fmod", _fmod, _float_rule, traits={"float_only"})
_binary("maximum", np.maximum, _binary_rule, traits=_COMM)
_binary("minimum", np.minimum, _binary_rule, traits=_COMM)
_NONDIFF = dict(differentiable=False, nondiff_reason="boolean result")
_binary("eq", np.equal, _compare_rule, traits=_COMM, **_NONDIFF)
_binary("ne", np.not_equal, _compare_rule, traits=_COMM, **_NONDIFF)
_binary("lt", np.less, _compare_rule, **_NONDIFF)
_binary("le", np.less_equal, _compare_rule, **_NONDIFF)
_binary("gt", np.greater, _compare_rule, **_NONDIFF)
_binary("ge", np.greater_equal, _compare_rule, **_NONDIFF)
_binary("logical_and", np.logical_and, _compare_rule, traits=_COMM, **_NONDIFF)
_binary("logical_or", np.logical_or, _compare_rule, traits=_COMM, **_NONDIFF)


@register_op("where", cost=elementwise_cost(1), traits=_ELEMENTWISE)
def where(cond, x, y):
    return np.where(cond, x, y)


@where.type_rule
def _(cond, x, y):
    if cond.dtype != "bool":
        raise ValueError(f"condition must be bool, got {cond}")
    t = _binary_rule(x, y)
    return t.with_shape(broadcast_shapes(cond.shape, t.shape))


# ---------------------------------------------------------------- reductions
class DimError(IndexError, ValueError):
    """A dimension outside a tensor's range (an IndexError, as torch's; a ValueError, as every
    other type-rule failure)."""


def wrap_dim(dim, rank: int) -> int:
    """THE rule for one dimension index (torch's ``maybe_wrap_dim``): for rank r >= 1, dims in
    [-r, r-1], negatives counting from the end; a 0-d tensor takes -1 and 0 (both name the
    scalar itself, returned as 0). Anything else is a ``DimError`` naming the dim and rank."""
    n = max(rank, 1)
    if isinstance(dim, (bool, np.bool_)) or not isinstance(dim, (int, np.integer)):
        raise DimError(f"dimension {dim!r} is not an integer")
    if not -n <= dim < n:
        raise DimError(f"dimension out of range (expected to be in range of [{-n}, {n - 1}], "
                       f"but got {dim}) for a tensor of rank {rank}")
    return int(dim) % n


def normalize_axes(axis, rank: int) -> tuple[int, ...]:
    """The axes a reduction over ``axis`` reduces: None means every axis; each one is checked
    and made >= 0 by ``wrap_dim``; sorted and unique. A 0-d tensor has no axis to reduce: its
    dims -1 and 0 reduce nothing (the result is the scalar), so this gives ()."""
    if axis is None:
        return tuple(range(rank))
    if isinstance(axis, (int, np.integer)):
        axis = (axis,)
    out = {wrap_dim(a, rank) for a in axis}
    return tuple(sorted(out)) if rank else ()


def lane_view(shape, axis: int) -> tuple[tuple[int, ...], int]:
    """``(shape, axis)`` for an op that runs along one axis (softmax, argmax): ``axis`` checked
    by ``wrap_dim``; a 0-d tensor is seen as a one-element vector along its axis 0."""
    a = wrap_dim(axis, len(shape))
    return (tuple(shape) if len(shape) else (1,)), a


def axis_split(shape, axis: int) -> tuple[int, int, int]:
    """(outer, n, inner): a tensor seen as outer x n x inner around one ``axis`` (``lane_view``
    applies, so a 0-d tensor is 1 x 1 x 1)."""
    shape, a = lane_view(shape, axis)
    return (int(np.prod(shape[:a], dtype=np.int64)), shape[a],
            int(np.prod(shape[a + 1:], dtype=np.int64)))


def reduced_shape(shape, axes, keepdims) -> tuple[int, ...]:
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


_REDUCE_ATTRS = {"axis": Attr(a_optional(a_ints), None), "keepdims": Attr(a_bool, False)}


def _reduce(name, fn, traits=(), **kw):
    def kernel(x, *, axis, keepdims):
        axes = normalize_axes(axis, x.ndim)
        return np.asarray(fn(x, axis=axes, keepdims=keepdims))

    def rule(x, *, axis, keepdims):
        axes = normalize_axes(axis, x.rank)
        if name == "sum":
            _numeric(x)
        if name == "mean":
            _float_only(x)
        if name in ("max", "min"):
            for a in axes:
                if x.shape[a] == 0:
                    raise ValueError(f"{name} over an empty axis {a}")
        return x.with_shape(reduced_shape(x.shape, axes, keepdims))

    kernel.__name__ = name
    op = register_op(name, attrs=_REDUCE_ATTRS, cost=lambda i, o, a: Cost(
        i[0].size, i[0].nbytes + o[0].nbytes), traits={"reduction", *traits}, **kw)(kernel)
    op.type_rule(rule)
    return op


def _mean(x, axis, keepdims):
    n = int(np.prod([x.shape[a] for a in axis])) if axis else 1
    return (np.sum(x, axis=axis, keepdims=keepdims) / x.dtype.type(n) if n else
            np.full(reduced_shape(x.shape, axis, keepdims), np.nan, x.dtype))


def _sum(x, axis, keepdims):
    return np.sum(x, axis=axis, keepdims=keepdims, dtype=x.dtype)  # ints keep their dtype


_reduce("sum", _sum, traits={"autocast_float32"})
_reduce("mean", _mean, traits={"float_only", "autocast_float32"})
_reduce("max", np.max)
_reduce("min", np.min)


@register_op("argmax", attrs={"axis": Attr(a_int), "keepdims": Attr(a_bool, False)}, traits=(),
             differentiable=False, nondiff_reason="integer result")
def argmax(x, *, axis, keepdims):
    """Index of the first maximum along ``axis`` (numpy's and PyTorch's tie rule); a 0-d
    tensor is its own maximum, at index 0."""
    if x.ndim == 0:
        wrap_dim(axis, 0)
        return np.zeros((), np.int64)
    return np.argmax(x, axis=wrap_dim(axis, x.ndim), keepdims=keepdims).astype(np.int64)


@argmax.type_rule
def _(x, *, axis, keepdims):
    axes = normalize_axes((axis,), x.rank)
    if any(x.shape[a] == 0 for a in axes):
        raise ValueError(f"argmax over an empty axis {axes[0]}")
    return TensorType(reduced_shape(x.shape, axes, keepdims), "int64")


# ---------------------------------------------------------------- matmul
def _matmul_cost(ins, outs, attrs):
    k = ins[0].shape[-1] if ins[0].rank else 1
    return Cost(2 * outs[0].size * k, sum(t.nbytes for t in ins + outs))


@register_op("matmul", cost=_matmul_cost, traits={"autocast_low"})
def matmul(a, b):
    """Batched matrix product with numpy's rules (1-D operands promoted, batch dims broadcast)."""
    return np.matmul(a, b)


@matmul.type_rule
def _matmul_type(a, b):
    if a.dtype != b.dtype:
        raise ValueError(f"dtypes differ: {a.dtype} and {b.dtype}")
    if a.rank == 0 or b.rank == 0:
        raise ValueError("matmul needs operands of rank >= 1")
    sa = a.shape if a.rank > 1 else (1,) + a.shape
    sb = b.shape if b.rank > 1 else b.shape + (1,)
    if sa[-1] != sb[-2]:
        raise ValueError(f"contracted dimensions differ: {a} @ {b}")
    batch = broadcast_shapes(sa[:-2], sb[:-2])
    shape = batch + (sa[-2], sb[-1])
    if a.rank == 1:
        shape = shape[:-2] + shape[-1:]
    if b.rank == 1:
        shape = shape[:-1]
    return TensorType(shape, a.dtype)


MATMUL_F32_OPERANDS = ("float16", "bfloat16", "float32")


@register_op("matmul_f32", cost=_matmul_cost, traits=())
def matmul_f32(a, b):
    """``matmul`` of float16/bfloat16 (or float32) operands whose result is the float32 sums
    themselves, never rounded to the operands' type (``preferred_element_type`` of XLA's
    dot, ``out_dtype`` of ``torch.mm``)."""
    return np.matmul(a.astype(np.float32), b.astype(np.float32))


@matmul_f32.type_rule
def _(a, b):
    if a.dtype not in MATMUL_F32_OPERANDS:
        raise ValueError(f"operands must be one of {', '.join(MATMUL_F32_OPERANDS)}, "
                         f"got {a.dtype}")
    return _matmul_type(a, b).with_dtype("float32")


# ---------------------------------------------------------------- shape ops
_MOVE = dict(cost=lambda i, o, a: Cost(0, i[0].nbytes + o[0].nbytes))


@register_op("reshape", attrs={"shape": Attr(a_ints)}, traits={"view"}, **_MOVE)
def reshape(x, *, shape):
    return x.reshape(shape)


@reshape.type_rule
def _(x, *, shape):
    if int(np.prod(shape, dtype=np.int64)) != x.size or any(d < 0 for d in shape):
        raise ValueError(f"cannot reshape {x} to {list(shape)}")
    return x.with_shape(shape)


@register_op("transpose", attrs={"perm": Attr(a_ints)}, traits=(), **_MOVE)
def transpose(x, *, perm):
    return np.ascontiguousarray(np.transpose(x, perm))


@transpose.type_rule
def _(x, *, perm):
    if sorted(perm) != list(range(x.rank)):
        raise ValueError(f"perm {list(perm)} is not a permutation of {x.rank} axes")
    return x.with_shape(tuple(x.shape[p] for p in perm))


@register_op("broadcast_to", attrs={"shape": Attr(a_ints)}, traits={"elementwise"}, **_MOVE)
def broadcast_to(x, *, shape):
    return np.broadcast_to(x, shape).copy()


@broadcast_to.type_rule
def _(x, *, shape):
    if broadcast_shapes(x.shape, shape) != tuple(shape):
        raise ValueError(f"cannot broadcast {x} to {list(shape)}")
    return x.with_shape(shape)


@register_op("concat", attrs={"axis": Attr(a_int)}, traits=(), **_MOVE)
def concat(*xs, axis):
    return np.concatenate(xs, axis=axis)


@concat.type_rule
def _(*xs, axis):
    if not xs:
        raise ValueError("concat of nothing")
    if not xs[0].rank:
        raise ValueError("0-d tensors cannot be concatenated")
    a = wrap_dim(axis, xs[0].rank)
    for x in xs:
        if x.dtype != xs[0].dtype or x.rank != xs[0].rank or any(
                x.shape[i] != xs[0].shape[i] for i in range(x.rank) if i != a):
            raise ValueError(f"cannot concatenate {', '.join(map(str, xs))} on axis {axis}")
    shape = list(xs[0].shape)
    shape[a] = sum(x.shape[a] for x in xs)
    return xs[0].with_shape(shape)


def slice_shape(shape, starts, stops, steps) -> tuple[int, ...]:
    return tuple(len(range(*slice(b, e, s).indices(d)))
                 for d, b, e, s in zip(shape, starts, stops, steps))


@register_op("slice", attrs={"starts": Attr(a_ints), "stops": Attr(a_ints), "steps": Attr(a_ints)},
             traits=(), **_MOVE)
def slice_(x, *, starts, stops, steps):
    """Python slicing ``x[b0:e0:s0, b1:e1:s1, ...]`` on every axis (one triple per axis)."""
    return x[tuple(slice(b, e, s) for b, e, s in zip(starts, stops, steps))].copy()


@slice_.type_rule
def _(x, *, starts, stops, steps):
    if not len(starts) == len(stops) == len(steps) == x.rank:
        raise ValueError(f"slice of {x} needs {x.rank} starts, stops and steps")
    if any(s == 0 for s in steps):
        raise ValueError("slice step cannot be zero")
    return x.with_shape(slice_shape(x.shape, starts, stops, steps))


_PAD_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


@register_op("pad", attrs={"pads": Attr(a_ints), "value": Attr(a_float, 0.0),
                           "mode": Attr(a_choice("constant", *_PAD_MODES), "constant")},
             traits=(), **_MOVE)
def pad(x, *, pads, value, mode):
    """``pads`` = (before_0, after_0, before_1, after_1, ...), one pair per axis, >= 0.

    Modes as PyTorch's F.pad: ``reflect`` mirrors without repeating the edge, ``replicate``
    repeats the edge, ``circular`` wraps around.
    """
    widths = [(pads[2 * i], pads[2 * i + 1]) for i in range(x.ndim)]
    if mode == "constant":
        return np.pad(x, widths, constant_values=x.dtype.type(value))
    return np.pad(x, widths, mode=_PAD_MODES[mode])


@pad.type_rule
def _(x, *, pads, value, mode):
    if len(pads) != 2 * x.rank or any(p < 0 for p in pads):
        raise ValueError(f"pad of {x} needs {2 * x.rank} non-negative widths, got {list(pads)}")
    for i, d in enumerate(x.shape):
        widest = max(pads[2 * i], pads[2 * i + 1])
        if mode == "reflect" and widest and widest >= d:
            raise ValueError(f"reflect padding {widest} of axis {i} must be < its size {d}")
        if mode in ("replicate", "circular") and widest and (d == 0 or (
                mode == "circular" and widest > d)):
            raise ValueError(f"{mode} padding {widest} of axis {i} does not fit its size {d}")
    return x.with_shape(tuple(d + pads[2 * i] + pads[2 * i + 1] for i, d in enumerate(x.shape)))


# ---------------------------------------------------------------- softmax and losses
def _along(fn):
    """A kernel along one axis, on ``lane_view``'s shape (a 0-d tensor is a one-element
    vector); an empty tensor gives an empty result (torch's softmax over an empty axis)."""
    def kernel(x, *, axis):
        shape, a = lane_view(x.shape, axis)
        if x.size == 0:
            return np.empty(x.shape, x.dtype)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return fn(x.reshape(shape), a).reshape(x.shape).astype(x.dtype, copy=False)
    kernel.__name__ = fn.__name__.lstrip("_")
    return kernel


@_along
def _softmax(x, axis):
    z = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=axis, keepdims=True)


@_along
def _log_softmax(x, axis):
    z = x - np.max(x, axis=axis, keepdims=True)
    return z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))


def _axis_rule(x, *, axis):
    wrap_dim(axis, x.rank)
    return _float_only(x)


register_op("softmax", attrs={"axis": Attr(a_int, -1)}, cost=elementwise_cost(7),
            traits={"float_only", "autocast_float32"})(
    _softmax).type_rule(_axis_rule)
register_op("log_softmax", attrs={"axis": Attr(a_int, -1)}, cost=elementwise_cost(7),
            traits={"float_only", "autocast_float32"})(
    _log_softmax).type_rule(_axis_rule)

_REDUCTION = Attr(a_choice("mean", "sum", "none"), "mean")


def _reduce_loss(per, reduction, weight_sum=None):
    if reduction == "none":
        return per
    total = np.sum(per)
    if reduction == "sum":
        return np.asarray(total, per.dtype)
    return np.asarray(total / (weight_sum if weight_sum is not None else per.size), per.dtype)


@register_op("nll_loss", attrs={"reduction": _REDUCTION, "ignore_index": Attr(a_int, -100)},
             traits={"fallible", "autocast_float32"})     # a class index out of range
def nll_loss(logp, target, *, reduction, ignore_index):
    """-log p(target) from log-probabilities (N, C, *d) and class indices (N, *d) (eq. 10.12-10.14).

    As PyTorch: targets equal to ``ignore_index`` add nothing, and ``mean`` divides by the
    number of targets that count.
    """
    keep = target != ignore_index
    safe = np.where(keep, target, 0)
    if np.any((safe < 0) | (safe >= logp.shape[1])):
        raise ValueError(f"nll_loss: a target is outside [0, {logp.shape[1]})")
    picked = np.take_along_axis(logp, np.expand_dims(safe, 1), axis=1)[:, 0]
    per = np.where(keep, -picked, 0).astype(logp.dtype)
    return _reduce_loss(per, reduction, logp.dtype.type(np.sum(keep)))


@nll_loss.type_rule
def _(logp, target, *, reduction, ignore_index):
    if not logp.is_float or target.dtype not in ("int32", "int64"):
        raise ValueError(f"needs float log-probabilities and integer targets, got {logp}, {target}")
    if logp.rank < 2 or target.shape != logp.shape[:1] + logp.shape[2:]:
        raise ValueError(f"log-probabilities {logp} (N, C, ...) and targets {target} (N, ...) "
                         f"do not match")
    return TensorType(target.shape if reduction == "none" else (), logp.dtype)


@register_op("mse_loss", attrs={"reduction": _REDUCTION}, traits={"autocast_float32"})
def mse_loss(x, y, *, reduction):
    return _reduce_loss(np.square(x - y), reduction)


@mse_loss.type_rule
def _(x, y, *, reduction):
    if x.shape != y.shape or x.dtype != y.dtype:
        raise ValueError(f"mse_loss needs equal types, got {x} and {y}")
    return _float_only(x) if reduction == "none" else TensorType((), x.dtype)


del a_any, IRError
