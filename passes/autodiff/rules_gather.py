"""VJP rules of the gather/scatter ops (irgraph/ops/gather.py): each is the other's
transpose, so every rule is again a gather or a scatter and second order works.

* ``take`` -> ``index_add`` of the cotangent into zeros (repeated indices accumulate);
* ``take_along_axis`` -> ``scatter_add`` into zeros;
* ``index_add`` -> the cotangent itself for ``x``, ``take`` of it for ``src``;
* ``scatter_add`` -> the cotangent for ``x``, ``take_along_axis`` of it for ``src``.

Indices get no cotangent (integers).
"""
from __future__ import annotations

from .core import vjp_rule


@vjp_rule("take")
def _take(e, node, xs, ys, gs):
    x, idx = xs
    return [e("index_add", e.zeros_like(x), idx, gs[0], axis=node.attrs["axis"]), None]


@vjp_rule("take_along_axis")
def _take_along_axis(e, node, xs, ys, gs):
    x, idx = xs
    return [e("scatter_add", e.zeros_like(x), idx, gs[0], axis=node.attrs["axis"]), None]


@vjp_rule("index_add")
def _index_add(e, node, xs, ys, gs):
    return [gs[0], None, e("take", gs[0], xs[1], axis=node.attrs["axis"])]


@vjp_rule("scatter_add")
def _scatter_add(e, node, xs, ys, gs):
    return [gs[0], None, e("take_along_axis", gs[0], xs[1], axis=node.attrs["axis"])]
