"""Batch normalization (section 8.7.1).

``batch_norm(x, gamma, beta, running_mean, running_var) {training, eps, momentum, axis}``
returns ``(y, new_running_mean, new_running_var)``. Statistics are per index of ``axis``
(the feature of (N, C) input, the channel of (N, C, *spatial) input, shared over all
positions), taken over every other axis.

* training: mu = mean(x) (eq. 8.36), sigma = sqrt(delta + mean((x - mu)^2)) (eq. 8.37, the
  biased variance, delta = ``eps`` inside the root), H' = (x - mu) / sigma (eq. 8.35),
  y = gamma H' + beta; running averages updated as PyTorch:
  r' = (1 - momentum) r + momentum * stat, with the UNBIASED variance for the estimate.
* inference: the running averages replace mu and sigma^2 and are returned unchanged.
"""
from __future__ import annotations

import numpy as np

from ..registry import Attr, Cost, a_bool, a_float, a_int, register_op
from ..types import TensorType

_BN = {"training": Attr(a_bool), "eps": Attr(a_float, 1e-5), "momentum": Attr(a_float, 0.1),
       "axis": Attr(a_int, 1)}


def bn_axes(rank: int, axis: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(the reduced axes, the shape that broadcasts a per-channel vector against x)."""
    a = axis % rank
    return tuple(i for i in range(rank) if i != a), tuple(-1 if i == a else 1
                                                          for i in range(rank))


@register_op("batch_norm", traits={"autocast_float32"}, attrs=_BN,
             cost=lambda i, o, a: Cost(8 * i[0].size, sum(t.nbytes for t in i + o)))
def batch_norm(x, gamma, beta, running_mean, running_var, *, training, eps, momentum, axis):
    red, view = bn_axes(x.ndim, axis)
    x64 = x.astype(np.float64)
    if training:
        mean = x64.mean(axis=red)
        var = np.square(x64 - mean.reshape(view)).mean(axis=red)
        m = x.size // x.shape[axis % x.ndim]
        unbiased = var * m / (m - 1)
        new_mean = (1 - momentum) * running_mean + momentum * mean
        new_var = (1 - momentum) * running_var + momentum * unbiased
    else:
        mean, var = running_mean.astype(np.float64), running_var.astype(np.float64)
        new_mean, new_var = running_mean, running_var
    xhat = (x64 - mean.reshape(view)) / np.sqrt(var.reshape(view) + eps)
    y = gamma.reshape(view) * xhat + beta.reshape(view)
    dt = x.dtype
    return y.astype(dt), np.asarray(new_mean).astype(dt), np.asarray(new_var).astype(dt)


@batch_norm.type_rule
def _(x, gamma, beta, running_mean, running_var, *, training, eps, momentum, axis):
    if not x.is_float or x.rank < 2:
        raise ValueError(f"batch_norm needs a float (N, C, ...) input, got {x}")
    if not -x.rank <= axis < x.rank:
        raise ValueError(f"axis {axis} out of range for {x}")
    c = x.shape[axis % x.rank]
    vec = TensorType((c,), x.dtype)
    for name, t in (("gamma", gamma), ("beta", beta), ("running_mean", running_mean),
                    ("running_var", running_var)):
        if t != vec:
            raise ValueError(f"batch_norm {name} must be {vec} for input {x}, got {t}")
    if training and x.size // max(c, 1) < 2:
        raise ValueError(f"batch_norm in training mode needs more than one value per channel, "
                         f"got {x}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    return x, vec, vec
