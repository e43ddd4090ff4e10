"""VJP rules of the core ops (irgraph/ops/core.py), each registered under its definition."""
from __future__ import annotations

from .core import vjp_rule


@vjp_rule("add")
def _add(e, node, xs, ys, gs):
    (g,) = gs
    return [e.sum_to(g, xs[0].shape), e.sum_to(g, xs[1].shape)]


@vjp_rule("mul")
def _mul(e, node, xs, ys, gs):
    (g,) = gs
    a, b = xs
    return [e.sum_to(e("mul", g, b), a.shape), e.sum_to(e("mul", g, a), b.shape)]


@vjp_rule("sum")
def _sum(e, node, xs, ys, gs):
    from irgraph.ops.core import normalize_axes, reduced_shape
    (g,), (x,) = gs, xs
    axes = normalize_axes(node.attrs["axis"], x.type.rank)
    g = e("reshape", g, shape=reduced_shape(x.shape, axes, True))
    return [e.broadcast(g, x.shape)]
