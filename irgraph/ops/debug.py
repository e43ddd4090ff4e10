"""``check_finite``: the NaN/Inf check that ``passes/debug_nans.py`` inserts after each node.

``y = check_finite(x, *watched) {checked_op, node, source, names}`` returns ``x`` unchanged
when every element is finite and raises ``NonFiniteError`` otherwise. ``watched`` are the
checked node's operands, there only so that the error can report their ranges;
``checked_op``, ``node`` (the node's IR text), ``source`` (the user's source line) and
``names`` (the operands' value names) say which node made the value. Backends lower it as a
finiteness test whose failure raises the same error; ``non_finite_message`` builds its text
from the arrays.
"""
from __future__ import annotations

import numpy as np

from ..errors import DataError
from ..registry import Attr, Cost, a_str, register_op
from ..types import TensorType


class NonFiniteError(DataError):
    """A value watched by the NaN checker holds NaN or +-inf (a ``irgraph.errors.DataError``).

    Deliberately not an ArithmeticError or RuntimeError: interpreters that wrap kernel errors
    with the failing node let it through, so every backend raises this same type."""


def _a_strs(v) -> tuple[str, ...]:
    if isinstance(v, str) or not all(isinstance(s, str) for s in v):
        raise TypeError("expected a list of strings")
    return tuple(v)


def describe_array(a: np.ndarray) -> str:
    """``range [lo, hi] (k NaN, j inf)`` over the finite elements of ``a``."""
    a = np.asarray(a)
    if a.size == 0:
        return "empty"
    if a.dtype.kind != "f":
        return f"range [{a.min()}, {a.max()}]"
    finite = a[np.isfinite(a)]
    rng = f"range [{finite.min():.6g}, {finite.max():.6g}]" if finite.size else "no finite values"
    return f"{rng} ({int(np.isnan(a).sum())} NaN, {int(np.isinf(a).sum())} inf)"


def non_finite_message(x: np.ndarray, watched, *, checked_op: str, node: str, source: str,
                       names) -> str:
    """The text of the error for the value ``x`` made by ``node`` from ``watched``."""
    nan, inf = int(np.isnan(x).sum()), int(np.isinf(x).sum())
    where = f" at {source}" if source else ""
    lines = [f"first non-finite value: op {checked_op!r}{where} produced {nan} NaN and {inf} inf "
             f"out of {x.size} values",
             f"  node: {node}"]
    for name, a in zip(names, watched):
        a = np.asarray(a)
        lines.append(f"  input %{name}: {TensorType.of(a)} {describe_array(a)}")
    if source:
        lines.append(f"  source: {source}")
    return "\n".join(lines)


@register_op("check_finite", traits={"effect", "fallible"},
             attrs={"checked_op": Attr(a_str), "node": Attr(a_str),
                    "source": Attr(a_str, ""), "names": Attr(_a_strs, ())},
             num_inputs=None, cost=lambda i, o, a: Cost(i[0].size, i[0].nbytes))
def check_finite(x, *watched, checked_op, node, source, names):
    """``x`` itself; raises NonFiniteError if ``x`` holds a NaN or an infinity."""
    if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
        raise NonFiniteError(non_finite_message(x, watched, checked_op=checked_op, node=node,
                                                source=source, names=names))
    return x


@check_finite.type_rule
def _(x, *watched, checked_op, node, source, names):
    if len(names) != len(watched):
        raise ValueError(f"{len(watched)} watched operands but {len(names)} names")
    return x
