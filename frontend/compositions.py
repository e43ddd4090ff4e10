"""Activations and losses of ``torch.nn.functional`` that are compositions of core ops.

They live in ``frontend.F`` (functional.py re-exports them). Each is written in a form that
is numerically stable in both tails and has finite gradients: a branch ``where`` does not
select is still computed, so it must not overflow.
"""
from __future__ import annotations

import numpy as np

from .functional import (_loss_args, _promote, abs, as_tensor, cast, clamp, eq, erf, exp, log,
                         maximum, mean, minimum, mul, ne, neg, reshape, sigmoid, square, sub, sum,
                         tanh, unsqueeze, where)
from .tracing import Tensor

__all__ = ["leaky_relu", "relu6", "hardtanh", "elu", "softplus", "silu", "logsigmoid",
           "gelu", "mish", "hardswish",
           "l1_loss", "smooth_l1_loss", "huber_loss", "binary_cross_entropy",
           "binary_cross_entropy_with_logits"]


# ---------------------------------------------------------------- activations
def leaky_relu(input, negative_slope: float = 0.01) -> Tensor:
    x = as_tensor(input)
    return where(x > 0, x, x * negative_slope)


def hardtanh(input, min_val: float = -1.0, max_val: float = 1.0) -> Tensor:
    return clamp(input, min_val, max_val)


def relu6(input) -> Tensor:
    return hardtanh(input, 0.0, 6.0)


def elu(input, alpha: float = 1.0) -> Tensor:
    """``x`` for x > 0, else ``alpha (exp(x) - 1)``; exp only sees x <= 0."""
    x = as_tensor(input)
    return where(x > 0, x, (exp(minimum(x, 0.0)) - 1) * alpha)


def softplus(input, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    """``log(1 + exp(beta x)) / beta`` as ``max(bx, 0) + log(1 + exp(-|bx|))``, then ``x``
    above ``threshold`` (torch's linear regime)."""
    x = as_tensor(input)
    bx = x * beta
    smooth = (maximum(bx, 0.0) + log(exp(neg(abs(bx))) + 1)) / beta
    return where(bx > threshold, x, smooth)


def silu(input) -> Tensor:
    x = as_tensor(input)
    return x * sigmoid(x)


def logsigmoid(input) -> Tensor:
    """``log(sigmoid(x)) = -softplus(-x)``, stable for large |x|."""
    x = as_tensor(input)
    return neg(maximum(neg(x), 0.0) + log(exp(neg(abs(x))) + 1))


def gelu(input, approximate: str = "none") -> Tensor:
    """``x Phi(x)``: exactly ``x (1 + erf(x / sqrt 2)) / 2``, or with ``approximate="tanh"``
    ``x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2`` (torch's two forms)."""
    x = as_tensor(input)
    if not x.type.is_float:
        x = cast(x, "float32")
    if approximate == "none":
        return x * (erf(x * float(np.sqrt(0.5))) + 1) * 0.5
    if approximate == "tanh":
        inner = (x + x * x * x * 0.044715) * float(np.sqrt(2 / np.pi))
        return x * (tanh(inner) + 1) * 0.5
    raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")


def mish(input) -> Tensor:
    """``x tanh(softplus(x))``."""
    x = as_tensor(input)
    return x * tanh(softplus(x))


def hardswish(input) -> Tensor:
    """``x relu6(x + 3) / 6``: 0 below -3, ``x`` above 3."""
    x = as_tensor(input)
    return x * clamp(x + 3, 0.0, 6.0) * (1 / 6)


# ---------------------------------------------------------------- losses
def _reduce(per: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return mean(per)
    if reduction == "sum":
        return sum(per)
    if reduction == "none":
        return per
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _pair(input, target) -> tuple[Tensor, Tensor]:
    a, b = _promote(input, target)
    if a.shape != b.shape:
        raise ValueError(f"input {a.shape} and target {b.shape} must have the same shape")
    return a, b


def l1_loss(input, target, reduction: str = "mean") -> Tensor:
    a, b = _pair(input, target)
    return _reduce(abs(sub(a, b)), reduction)


def smooth_l1_loss(input, target, reduction: str = "mean", beta: float = 1.0) -> Tensor:
    """``0.5 d^2 / beta`` where ``|d| < beta``, else ``|d| - beta / 2`` (beta 0: L1)."""
    a, b = _pair(input, target)
    d = abs(sub(a, b))
    if beta == 0:
        return _reduce(d, reduction)
    return _reduce(where(d < beta, square(d) * (0.5 / beta), d - 0.5 * beta), reduction)


def huber_loss(input, target, reduction: str = "mean", delta: float = 1.0) -> Tensor:
    """``0.5 d^2`` where ``|d| < delta``, else ``delta (|d| - delta / 2)``."""
    a, b = _pair(input, target)
    d = abs(sub(a, b))
    return _reduce(where(d < delta, square(d) * 0.5, (d - 0.5 * delta) * delta), reduction)


def _weighted(per: Tensor, weight) -> Tensor:
    """torch's BCE ``weight``: broadcast to the elements' shape, it scales each one."""
    if weight is None:
        return per
    w = cast(as_tensor(weight, per), per.dtype)
    try:
        fits = tuple(np.broadcast_shapes(w.shape, per.shape)) == per.shape
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"weight of shape {w.shape} does not broadcast to the input's "
                         f"shape {per.shape}")
    return mul(per, w)


def binary_cross_entropy(input, target, weight=None, size_average=None, reduce=None,
                         reduction: str = "mean") -> Tensor:
    """``-w (t log p + (1 - t) log(1 - p))`` of probabilities; each log clamped at -100, as
    torch, so p = 0 or 1 gives a finite loss."""
    weight, reduction = _loss_args(weight, size_average, reduce, reduction)
    p, t = _pair(input, target)
    log_p = maximum(log(p), -100.0)
    log_q = maximum(log(1 - p), -100.0)
    return _reduce(_weighted(neg(mul(t, log_p) + mul(1 - t, log_q)), weight), reduction)


def binary_cross_entropy_with_logits(input, target, weight=None, size_average=None,
                                     reduce=None, reduction: str = "mean",
                                     pos_weight=None) -> Tensor:
    """BCE of ``sigmoid(x)`` without forming it: ``(1 - t) x + w log(1 + exp(-x))`` with
    ``w = 1 + (pos_weight - 1) t`` (``pos_weight`` broadcast along the last, class, axis),
    the softplus written stably; ``weight`` scales each element."""
    weight, reduction = _loss_args(weight, size_average, reduce, reduction)
    x, t = _pair(input, target)
    softplus_neg = maximum(neg(x), 0.0) + log(exp(neg(abs(x))) + 1)
    if pos_weight is not None:
        softplus_neg = mul((as_tensor(pos_weight, x) - 1) * t + 1, softplus_neg)
    return _reduce(_weighted((1 - t) * x + softplus_neg, weight), reduction)


# ---------------------------------------------------------------- weighted / smoothed NLL
def _class_one_hot(logp: Tensor, target: Tensor) -> Tensor:
    """The target as one-hot vectors on the class axis 1, in logp's dtype (all zero for a
    target outside [0, C), such as an ignore_index)."""
    classes = logp.tracer.emit("iota", shape=logp.shape, axis=1, dtype="int64")
    return cast(eq(classes, unsqueeze(cast(target, "int64"), 1)), logp.dtype)


def _class_weights(weight: Tensor, logp: Tensor) -> Tensor:
    if weight.shape != (logp.shape[1],):
        raise ValueError(f"weight must have one entry per class ({logp.shape[1]}), "
                         f"got shape {weight.shape}")
    return reshape(cast(weight, logp.dtype), (1, logp.shape[1]) + (1,) * (logp.ndim - 2))


def _weighted_nll(logp: Tensor, target: Tensor, weight: Tensor, reduction: str,
                  ignore_index: int) -> Tensor:
    """torch's weighted NLL: ``-w[t] logp[t]``; ``mean`` divides by the sum of ``w[t]`` over
    the targets that are not ``ignore_index``."""
    counts = cast(ne(target, ignore_index), logp.dtype)
    hot = _class_one_hot(logp, target)
    w_t = sum(_class_weights(weight, logp) * hot, 1) * counts
    per = neg(sum(logp * hot, 1)) * w_t
    return sum(per) / sum(w_t) if reduction == "mean" else _reduce(per, reduction)


def _smoothing_term(logp: Tensor, target: Tensor, weight, reduction: str,
                    ignore_index: int) -> Tensor:
    """The uniform part of label smoothing, as torch: ``-sum_c w_c logp_c`` per target (0 for
    ignored ones), the mean normalized like the weighted NLL."""
    counts = cast(ne(target, ignore_index), logp.dtype)
    wc = None if weight is None else _class_weights(as_tensor(weight), logp)
    per = neg(sum(logp if wc is None else logp * wc, 1)) * counts
    if reduction != "mean":
        return _reduce(per, reduction)
    if wc is None:
        return sum(per) / sum(counts)
    return sum(per) / sum(sum(wc * _class_one_hot(logp, target), 1) * counts)


def _soft_cross_entropy(logp: Tensor, target: Tensor, weight, reduction: str,
                        label_smoothing: float) -> Tensor:
    """Class-probability targets (same shape as the input), as torch: ``-sum_c w_c t_c logp_c``
    per position, smoothed targets ``(1 - e) t + e / C``; ``mean`` over the positions."""
    if target.shape != logp.shape:
        raise ValueError(f"probability targets must have the input's shape {logp.shape}, "
                         f"got {target.shape}")
    if label_smoothing:
        target = target * (1 - label_smoothing) + label_smoothing / logp.shape[1]
    terms = logp * target
    if weight is not None:
        terms = terms * _class_weights(as_tensor(weight), logp)
    return _reduce(neg(sum(terms, 1)), reduction)
