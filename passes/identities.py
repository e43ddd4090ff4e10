"""Algebraic identities as data: ``(op, rewrite)`` rules, one comment each.

A rewrite looks at a ``Site`` (the node's op, its operands in the graph being built, its
attributes and output type) and returns the value that replaces the node's output, or None
when it does not apply. A rewrite may emit new nodes with ``site.emit`` once it has matched.
Every rule here is exact in IEEE arithmetic; rules that are not (``x*0 -> 0`` is NaN for
x=inf, ``x-x -> 0`` likewise, ``log(exp(x)) -> x`` overflows) are deliberately absent.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from irgraph import TensorType, Value
from irgraph.ops.core import normalize_axes

from .analysis import is_splat_of, splat


@dataclass
class Site:
    op: str
    inputs: tuple[Value, ...]
    attrs: dict
    out: TensorType
    emit: Callable[..., Value]          # emit(op, *inputs, **attrs) at the node's source line


Rewrite = Callable[[Site], "Value | None"]


def _producer(v: Value, op: str):
    return v.node if v.node is not None and v.node.op == op else None


def _same(v: Value, s: Site) -> Value | None:
    """``v`` if it has the node's exact output type (so broadcasting is not lost)."""
    return v if v.type == s.out else None


def _is_float(s: Site) -> bool:
    return s.out.is_float


# ---------------------------------------------------------------- arithmetic
def add_zero(s: Site):
    x, y = s.inputs
    if is_splat_of(y, 0):
        return _same(x, s)
    if is_splat_of(x, 0):
        return _same(y, s)


def sub_zero(s: Site):
    x, y = s.inputs
    return _same(x, s) if is_splat_of(y, 0) else None


def mul_one(s: Site):
    x, y = s.inputs
    if is_splat_of(y, 1):
        return _same(x, s)
    if is_splat_of(x, 1):
        return _same(y, s)


def mul_minus_one(s: Site):
    x, y = s.inputs
    for a, b in ((x, y), (y, x)):
        if is_splat_of(b, -1) and a.type == s.out:
            return s.emit("neg", a)


def div_one(s: Site):
    x, y = s.inputs
    return _same(x, s) if is_splat_of(y, 1) else None


def pow_const(s: Site):
    x, y = s.inputs
    if x.type != s.out:
        return None
    if is_splat_of(y, 1):
        return x
    if _is_float(s) and is_splat_of(y, 2):
        return s.emit("square", x)
    if _is_float(s) and is_splat_of(y, 0.5):
        return s.emit("sqrt", x)


def double_neg(s: Site):
    inner = _producer(s.inputs[0], "neg")
    return inner.inputs[0] if inner is not None else None


def add_neg(s: Site):
    x, y = s.inputs
    if _producer(y, "neg"):
        return s.emit("sub", x, y.node.inputs[0])
    if _producer(x, "neg"):
        return s.emit("sub", y, x.node.inputs[0])


def sub_neg(s: Site):
    x, y = s.inputs
    return s.emit("add", x, y.node.inputs[0]) if _producer(y, "neg") else None


def idempotent(s: Site):
    (x,) = s.inputs
    return x if _producer(x, s.op) else None


def drop_inner_neg(s: Site):
    (x,) = s.inputs
    inner = _producer(x, "neg")
    return s.emit(s.op, inner.inputs[0]) if inner is not None else None


def same_operands(s: Site):
    x, y = s.inputs
    return _same(x, s) if x is y else None


def where_rules(s: Site):
    c, x, y = s.inputs
    if x is y:
        return _same(x, s)
    cond = splat(c)
    if cond is not None:
        return _same(x if cond else y, s)


# ---------------------------------------------------------------- shapes
def transpose_rules(s: Site):
    (x,) = s.inputs
    perm = tuple(s.attrs["perm"])
    if perm == tuple(range(len(perm))):
        return x
    inner = _producer(x, "transpose")
    if inner is None:
        return None
    p = inner.attrs["perm"]
    composed = tuple(p[q] for q in perm)
    src = inner.inputs[0]
    return src if composed == tuple(range(len(perm))) else s.emit("transpose", src, perm=composed)


def reshape_rules(s: Site):
    (x,) = s.inputs
    if x.type == s.out:
        return x
    inner = _producer(x, "reshape")
    if inner is None:
        return None
    src = inner.inputs[0]
    return src if src.type == s.out else s.emit("reshape", src, shape=s.out.shape)


def broadcast_rules(s: Site):
    (x,) = s.inputs
    if x.type == s.out:
        return x
    inner = _producer(x, "broadcast_to")
    return s.emit("broadcast_to", inner.inputs[0], shape=s.out.shape) if inner else None


def cast_same(s: Site):
    (x,) = s.inputs
    return _same(x, s)


def reduce_unit_axes(s: Site):
    (x,) = s.inputs
    axes = normalize_axes(s.attrs["axis"], x.type.rank)
    if any(x.shape[a] != 1 for a in axes):
        return None
    return x if x.type == s.out else s.emit("reshape", x, shape=s.out.shape)


def full_slice(s: Site):
    (x,) = s.inputs
    a = s.attrs
    whole = all(range(*slice(b, e, st).indices(d)) == range(d)
                for b, e, st, d in zip(a["starts"], a["stops"], a["steps"], x.shape))
    return _same(x, s) if whole else None


def single_concat(s: Site):
    return _same(s.inputs[0], s) if len(s.inputs) == 1 else None


# ---------------------------------------------------------------- the table
RULES: list[tuple[str, Rewrite]] = [
    ("add", add_zero),              # x + 0 -> x,  0 + x -> x
    ("add", add_neg),               # x + (-y) -> x - y,  (-x) + y -> y - x
    ("sub", sub_zero),              # x - 0 -> x
    ("sub", sub_neg),               # x - (-y) -> x + y
    ("mul", mul_one),               # x * 1 -> x,  1 * x -> x
    ("mul", mul_minus_one),         # x * -1 -> -x
    ("div", div_one),               # x / 1 -> x
    ("pow", pow_const),             # x ** 1 -> x,  x ** 2 -> square(x),  x ** 0.5 -> sqrt(x)
    ("neg", double_neg),            # -(-x) -> x
    ("relu", idempotent),           # relu(relu(x)) -> relu(x)
    ("abs", idempotent),            # |(|x|)| -> |x|
    ("stop_gradient", idempotent),  # stop_gradient(stop_gradient(x)) -> stop_gradient(x)
    ("abs", drop_inner_neg),        # |-x| -> |x|
    ("square", drop_inner_neg),     # (-x)^2 -> x^2
    ("maximum", same_operands),     # max(x, x) -> x
    ("minimum", same_operands),     # min(x, x) -> x
    ("where", where_rules),         # where(c, x, x) -> x;  where(true, x, y) -> x
    ("transpose", transpose_rules),  # identity perm -> x;  transpose(transpose(x)) -> one
    ("reshape", reshape_rules),     # reshape to the same shape -> x;  reshape chains -> one
    ("broadcast_to", broadcast_rules),  # to the same shape -> x;  chains -> one
    ("cast", cast_same),            # cast to the dtype it has -> x
    ("sum", reduce_unit_axes),      # reducing only size-1 axes -> x (or a reshape)
    ("mean", reduce_unit_axes),     # the mean of one element is that element
    ("max", reduce_unit_axes),      # so is its max
    ("min", reduce_unit_axes),      # and its min
    ("slice", full_slice),          # x[:, :] -> x
    ("concat", single_concat),      # concat([x]) -> x
]


def rules_for(op: str) -> list[Rewrite]:
    return [fn for name, fn in RULES if name == op]
