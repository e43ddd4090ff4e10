"""Gather and scatter by integer index tensors (embeddings, ``x[idx]``, ``torch.gather``).

    y = take(x, idx) {axis}                y[p, k..., q] = x[p, idx[k...], q]
    y = take_along_axis(x, idx) {axis}     y[i] = x[i with i[axis] replaced by idx[i]]
    y = index_add(x, idx, src) {axis}      y = x; y[p, idx[k...], q] += src[p, k..., q]
    y = scatter_add(x, idx, src) {axis}    y = x; y[i with i[axis] = idx[i]] += src[i]

``p`` runs over x's axes before ``axis`` and ``q`` over those after it. ``take`` is numpy's
``take`` (torch's ``index_select`` for a 1-D ``idx``, an embedding lookup for axis 0);
``take_along_axis`` is ``torch.gather`` (idx has x's rank and, off ``axis``, at most x's
extent); ``index_add`` and ``scatter_add`` are their transposes (the VJP rules use them), as
``np.add.at``: repeated indices accumulate, in index order.

Indices are int32 or int64; a negative index counts from the end once, as in torch (``-1``
is the last); an index outside ``[-n, n)`` is an error naming the op, the index and the
extent, raised at call time by every backend (never an out-of-bounds read).
"""
from __future__ import annotations

import numpy as np

from ..registry import Attr, Cost, a_bool, a_int, register_op
from ..types import INT_DTYPES, TensorType
from .core import wrap_dim


def wrap_indices(op: str, idx: np.ndarray, n: int, negative: bool = True) -> np.ndarray:
    """``idx`` as int64 in [0, n) (negatives count from the end once); ValueError naming the
    first index outside [-n, n) (without ``negative``: outside [0, n), torch's embedding)."""
    idx = np.asarray(idx).astype(np.int64)
    lo = -n if negative else 0
    bad = (idx < lo) | (idx >= n)
    if np.any(bad):
        first = int(idx[bad].ravel()[0])
        raise ValueError(f"{op}: index {first} is out of range for an axis of size {n} "
                         f"(valid: [{lo}, {n}))")
    return np.where(idx < 0, idx + n, idx)


def _check_index(idx: TensorType) -> None:
    if idx.dtype not in INT_DTYPES:
        raise ValueError(f"indices must be int32 or int64, got {idx}")


def take_shape(x: TensorType, idx: TensorType, axis: int) -> tuple[int, ...]:
    a = wrap_dim(axis, x.rank)
    return x.shape[:a] + idx.shape + x.shape[a + 1:]


def _gather_cost(i, o, a):
    return Cost(0, i[1].nbytes + 2 * o[0].nbytes)


def _scatter_cost(i, o, a):
    return Cost(i[2].size, i[0].nbytes + i[1].nbytes + i[2].nbytes + o[0].nbytes)


_AXIS = {"axis": Attr(a_int, 0)}
_IDX_NONDIFF = (1,)          # the index input (samples: not perturbed by finite differences)


# ---------------------------------------------------------------- take
@register_op("take", traits={"fallible"},
             attrs={**_AXIS, "negative": Attr(a_bool, True)}, cost=_gather_cost)
def take(x, idx, *, axis, negative=True):
    """numpy's take: ``x`` indexed along ``axis`` by ``idx`` (any shape); without
    ``negative`` an index below 0 is out of range too (torch's embedding)."""
    a = wrap_dim(axis, x.ndim)
    return np.take(x, wrap_indices("take", idx, x.shape[a], negative), axis=a)


@take.type_rule
def _(x, idx, *, axis, negative=True):
    _check_index(idx)
    if x.rank == 0:
        raise ValueError("cannot index a 0-d tensor")
    return TensorType(take_shape(x, idx, axis), x.dtype)


# ---------------------------------------------------------------- take_along_axis
def along_view(x: np.ndarray, idx_shape, a: int) -> np.ndarray:
    """``x`` cut to ``idx_shape`` on every axis but ``a`` (torch.gather reads that corner)."""
    return x[tuple(slice(None) if d == a else slice(0, s) for d, s in enumerate(idx_shape))]


@register_op("take_along_axis", traits={"fallible"}, attrs=_AXIS, cost=_gather_cost)
def take_along_axis(x, idx, *, axis):
    """torch.gather: ``y[i] = x[i with i[axis] = idx[i]]``; y has idx's shape."""
    a = wrap_dim(axis, x.ndim)
    w = wrap_indices("take_along_axis", idx, x.shape[a])
    return np.take_along_axis(along_view(x, idx.shape, a), w, axis=a)


def _along_rule(x: TensorType, idx: TensorType, axis: int, op: str) -> int:
    _check_index(idx)
    if x.rank == 0 or idx.rank != x.rank:
        raise ValueError(f"{op} needs indices of the tensor's rank {x.rank} (>= 1), got {idx}")
    a = wrap_dim(axis, x.rank)
    if any(i > s for d, (i, s) in enumerate(zip(idx.shape, x.shape)) if d != a):
        raise ValueError(f"index shape {list(idx.shape)} is larger than {list(x.shape)} off "
                         f"axis {a}")
    return a


@take_along_axis.type_rule
def _(x, idx, *, axis):
    _along_rule(x, idx, axis, "take_along_axis")
    return TensorType(idx.shape, x.dtype)


# ---------------------------------------------------------------- index_add
@register_op("index_add", traits={"fallible"}, attrs=_AXIS, cost=_scatter_cost)
def index_add(x, idx, src, *, axis):
    """``x`` plus ``src`` scattered along ``axis`` at ``idx`` (take's transpose; repeated
    indices accumulate in index order, as np.add.at)."""
    a = wrap_dim(axis, x.ndim)
    n = x.shape[a]
    w = wrap_indices("index_add", idx, n).reshape(-1)
    pre, post = int(np.prod(x.shape[:a])), int(np.prod(x.shape[a + 1:]))
    out = np.array(x, copy=True).reshape(pre, n, post)
    np.add.at(out, (slice(None), w), np.asarray(src).reshape(pre, w.size, post))
    return out.reshape(x.shape)


@index_add.type_rule
def _(x, idx, src, *, axis):
    _check_index(idx)
    if x.rank == 0:
        raise ValueError("cannot index a 0-d tensor")
    want = TensorType(take_shape(x, idx, axis), x.dtype)
    if src != want:
        raise ValueError(f"the source must be {want} (x's shape with axis {axis} replaced by "
                         f"the index shape), got {src}")
    if x.dtype == "bool":
        raise ValueError("cannot add booleans")
    return x


# ---------------------------------------------------------------- scatter_add
@register_op("scatter_add", traits={"fallible"}, attrs=_AXIS, cost=_scatter_cost)
def scatter_add(x, idx, src, *, axis):
    """torch.scatter_add with ``src`` of idx's shape: take_along_axis's transpose."""
    a = wrap_dim(axis, x.ndim)
    w = wrap_indices("scatter_add", idx, x.shape[a])
    pos = list(np.indices(idx.shape, sparse=True))
    pos[a] = w
    out = np.array(x, copy=True)
    np.add.at(out, tuple(pos), src)
    return out


@scatter_add.type_rule
def _(x, idx, src, *, axis):
    _along_rule(x, idx, axis, "scatter_add")
    if src != TensorType(idx.shape, x.dtype):
        raise ValueError(f"the source must have the indices' shape and x's dtype "
                         f"({TensorType(idx.shape, x.dtype)}), got {src}")
    if x.dtype == "bool":
        raise ValueError("cannot add booleans")
    return x
