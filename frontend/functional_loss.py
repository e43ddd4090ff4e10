"""The losses of ``torch.nn.functional`` (``frontend.F``, re-exported by functional.py): the
negative log-likelihood and cross entropy of eq. 10.11-10.14 (class weights, ``ignore_index``,
label smoothing, probability targets), mean squared and absolute errors, Huber, binary cross
entropy. Each is written in a form that is numerically stable in both tails."""
from __future__ import annotations

import builtins

import numpy as np

from .functional_core import (abs, as_tensor, cast, emit_op, eq, exp, ge, gt, log, log_softmax,
                              lt, maximum, mean, minimum, mul, ne, neg, promote, reshape, sqrt,
                              square, sub, sum, unsqueeze, where)
from .compositions import log1p_exp, log1p
from .functional_distance import pairwise_distance
from .tracing import Tensor

__all__ = ["nll_loss", "cross_entropy", "mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss",
           "binary_cross_entropy", "binary_cross_entropy_with_logits", "kl_div",
           "poisson_nll_loss", "gaussian_nll_loss", "margin_ranking_loss", "hinge_embedding_loss",
           "soft_margin_loss", "cosine_embedding_loss", "triplet_margin_loss",
           "multilabel_soft_margin_loss", "multi_margin_loss"]


def loss_args(weight, size_average, reduce, reduction):
    """``(weight, reduction)`` of a loss's arguments (the functions here and nn's loss modules):
    torch's deprecated ``size_average``/``reduce`` are refused; a string where ``weight``
    goes is the reduction (the older positional form of these functions)."""
    if size_average is not None or reduce is not None:
        raise ValueError("size_average and reduce are deprecated in PyTorch: use reduction=")
    if isinstance(weight, str):
        return None, weight
    return weight, reduction


def nll_loss(input, target, weight=None, size_average=None, ignore_index: int = -100,
             reduce=None, reduction: str = "mean") -> Tensor:
    """``-log p(target)`` of log-probabilities (N, C, *d) (eq. 10.12-10.14), as torch's: class
    ``weight``s scale each term and ``mean`` divides by the weight of the targets that count."""
    weight, reduction = loss_args(weight, size_average, reduce, reduction)
    input, target = as_tensor(input), as_tensor(target)
    if input.ndim == 1:
        return _unbatched(nll_loss, input, target, weight, ignore_index=ignore_index,
                          reduction=reduction)
    if weight is not None:
        input = as_tensor(input)         # (a numpy weight takes the input's float dtype)
        return _weighted_nll(input, as_tensor(target), as_tensor(weight, input),
                             reduction, ignore_index)
    return emit_op("nll_loss", as_tensor(input), as_tensor(target), reduction=reduction,
                 ignore_index=ignore_index)


def _unbatched(loss, input: Tensor, target, weight, **kw) -> Tensor:
    """torch's unbatched form: an input (C,) with a 0-d class index (or (C,) probabilities)
    is a batch of one; ``reduction="none"`` gives a 0-d loss."""
    target = as_tensor(target, input)
    if target.ndim != (1 if target.type.is_float else 0):
        raise ValueError(f"an unbatched input of shape {input.shape} needs a 0-d class index "
                         f"or (C,) probabilities as target, got shape {target.shape}")
    out = loss(unsqueeze(input, 0), unsqueeze(target, 0), weight, **kw)
    return reshape(out, ()) if kw["reduction"] == "none" else out


def cross_entropy(input, target, weight=None, size_average=None, ignore_index: int = -100,
                  reduce=None, reduction: str = "mean", label_smoothing: float = 0.0) -> Tensor:
    """Negative log-likelihood of a softmax over dim 1 (eq. 10.11-10.14), as PyTorch's, with
    class ``weight``s, ``ignore_index`` and ``label_smoothing``."""
    weight, reduction = loss_args(weight, size_average, reduce, reduction)
    input = as_tensor(input)
    if input.ndim == 1:
        return _unbatched(cross_entropy, input, target, weight, ignore_index=ignore_index,
                          reduction=reduction, label_smoothing=label_smoothing)
    logp = log_softmax(input, 1)
    if as_tensor(target, logp).type.is_float:
        return _soft_cross_entropy(logp, as_tensor(target, logp), weight, reduction,
                                   label_smoothing)
    loss = nll_loss(logp, target, weight, ignore_index=ignore_index, reduction=reduction)
    if not label_smoothing:
        return loss
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    smooth = _smoothing_term(logp, as_tensor(target), weight, reduction, ignore_index)
    return loss * (1 - label_smoothing) + smooth * (label_smoothing / logp.shape[1])


def mse_loss(input, target, reduction: str = "mean") -> Tensor:
    a, b = promote(input, target)
    return emit_op("mse_loss", a, b, reduction=reduction)


# compositions of the ops above (leaky_relu, softplus, l1_loss, BCE, ...): compositions.py


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
    a, b = promote(input, target)
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
    torch, so p = 0 or 1 gives a finite loss, and a finite gradient: the derivative of the
    clamped loss (a log of 0 is taken of 1 and not selected, so no 0 * inf = NaN comes
    back; torch's own clamps its denominator p (1 - p) at 1e-12 instead)."""
    weight, reduction = loss_args(weight, size_average, reduce, reduction)
    p, t = _pair(input, target)
    log_p, log_q = (where(gt(v, 0.0), maximum(log(where(gt(v, 0.0), v, 1.0)), -100.0), -100.0)
                    for v in (p, 1 - p))
    return _reduce(_weighted(neg(mul(t, log_p) + mul(1 - t, log_q)), weight), reduction)


def binary_cross_entropy_with_logits(input, target, weight=None, size_average=None,
                                     reduce=None, reduction: str = "mean",
                                     pos_weight=None) -> Tensor:
    """BCE of ``sigmoid(x)`` without forming it: ``(1 - t) x + w log(1 + exp(-x))`` with
    ``w = 1 + (pos_weight - 1) t`` (``pos_weight`` broadcast along the last, class, axis);
    ``weight`` scales each element. Written per sign of x so that no term's gradient
    cancels against another's: ``(1 - t) x + w L`` for x >= 0 and ``-pos_weight t x + w L``
    below (the same function), ``L = log1p(exp(-|x|))`` with |x| taken as x or -x on each
    side (its slope at 0 is the right-hand one, so the gradient at 0 is torch's
    ``sigmoid(0) w - ...``). The gradient at x = -20, t = 0 is sigmoid(-20) = 2.06e-9, not
    1 - (1 - 2.06e-9) = 0 in float32."""
    weight, reduction = loss_args(weight, size_average, reduce, reduction)
    x, t = _pair(input, target)
    right = ge(x, 0.0)
    soft = log1p(exp(neg(where(right, x, neg(x)))))
    pw_t = t if pos_weight is None else mul(as_tensor(pos_weight, x), t)
    w = None if pos_weight is None else (as_tensor(pos_weight, x) - 1) * t + 1
    terms = where(right, (1 - t) * x, neg(pw_t) * x) + (soft if w is None else mul(w, soft))
    return _reduce(_weighted(terms, weight), reduction)


# ---------------------------------------------------------------- weighted / smoothed NLL
def _class_one_hot(logp: Tensor, target: Tensor, dtype: str | None = None) -> Tensor:
    """The target as one-hot vectors on the class axis 1, in logp's dtype or ``dtype`` (all
    zero for a target outside [0, C), such as an ignore_index)."""
    classes = logp.tracer.emit("iota", shape=logp.shape, axis=1, dtype="int64")
    return cast(eq(classes, unsqueeze(cast(target, "int64"), 1)), dtype or logp.dtype)


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
    hot = _class_one_hot(logp, target, "bool")
    w_t = sum(where(hot, _class_weights(weight, logp), 0.0), 1) * counts
    # picked, not multiplied by the one-hot: a masked logit (-inf) of another class, or of
    # an ignored row, times 0 would be NaN
    per = neg(sum(where(hot, logp, 0.0), 1)) * w_t
    return mean_over(sum(per), sum(w_t)) if reduction == "mean" else _reduce(per, reduction)


def mean_over(total: Tensor, weight: Tensor) -> Tensor:
    """``total / weight``, the mean of a loss over the targets that count; where none does
    (every target ``ignore_index``) NaN with no gradient, as torch (a plain ``0 / 0`` would
    send ``inf * 0 = NaN`` back to every input)."""
    some = ne(weight, 0)
    return where(some, total / where(some, weight, 1.0), float("nan"))


def _smoothing_term(logp: Tensor, target: Tensor, weight, reduction: str,
                    ignore_index: int) -> Tensor:
    """The uniform part of label smoothing, as torch: ``-sum_c w_c logp_c`` per target (0 for
    ignored ones), the mean normalized like the weighted NLL."""
    counts = cast(ne(target, ignore_index), logp.dtype)
    wc = None if weight is None else _class_weights(as_tensor(weight, logp), logp)
    per = neg(sum(logp if wc is None else logp * wc, 1)) * counts
    if reduction != "mean":
        return _reduce(per, reduction)
    if wc is None:
        return mean_over(sum(per), sum(counts))
    return mean_over(sum(per), sum(sum(wc * _class_one_hot(logp, target), 1) * counts))


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
        terms = terms * _class_weights(as_tensor(weight, logp), logp)
    return _reduce(neg(sum(terms, 1)), reduction)


# ---------------------------------------------------------------- more of torch's losses
def _check_reduction(reduction: str, allowed=("mean", "sum", "none")) -> None:
    if reduction not in allowed:
        raise ValueError(f"reduction must be one of {', '.join(map(repr, allowed))}, got "
                         f"{reduction!r}")


def kl_div(input, target, size_average=None, reduce=None, reduction: str = "mean",
           log_target: bool = False) -> Tensor:
    """Pointwise ``t (log t - x)`` of log-probabilities ``x`` (0 where t = 0), or with
    ``log_target`` ``exp(t) (t - x)``; ``batchmean`` divides the sum by the batch size (the
    first dimension), ``mean`` by the element count, as torch."""
    _, reduction = loss_args(None, size_average, reduce, reduction)
    _check_reduction(reduction, ("mean", "batchmean", "sum", "none"))
    x, t = promote(input, target)
    if log_target:
        per = exp(t) * (t - x)
    else:
        pos = gt(t, 0.0)
        per = where(pos, t * log(where(pos, t, 1.0)), where(eq(t, 0.0), 0.0, float("nan"))) \
            - t * x
    if reduction == "batchmean":
        total = sum(per)
        return total / per.shape[0] if per.ndim else total
    return _reduce(per, reduction)


def poisson_nll_loss(input, target, log_input: bool = True, full: bool = False,
                     size_average=None, eps: float = 1e-8, reduce=None,
                     reduction: str = "mean") -> Tensor:
    """Negative log-likelihood of a Poisson target: ``exp(x) - t x`` of a log-rate ``x``, or
    ``x - t log(x + eps)`` of a rate; ``full`` adds Stirling's ``t log t - t + log(2 pi t)
    / 2`` where t > 1."""
    _, reduction = loss_args(None, size_average, reduce, reduction)
    _check_reduction(reduction)
    x, t = promote(input, target)
    per = exp(x) - t * x if log_input else x - t * log(x + eps)
    if full:
        big = gt(t, 1.0)
        ts = where(big, t, 1.0)
        per = per + where(big, ts * log(ts) - ts + log(ts * (2 * np.pi)) * 0.5, 0.0)
    return _reduce(per, reduction)


def gaussian_nll_loss(input, target, var, full: bool = False, eps: float = 1e-6,
                      reduction: str = "mean") -> Tensor:
    """``(log(var) + (x - t)^2 / var) / 2`` (``+ log(2 pi) / 2`` with ``full``); ``var``
    has the input's shape, or lacks its last dimension, or has 1 there (one variance per
    sample); it is clamped at ``eps`` without a gradient through the clamp, as torch."""
    _check_reduction(reduction)
    x, t = promote(input, target)
    if isinstance(var, (int, float, np.number)):         # one variance for all (torch)
        var = np.full(x.shape, float(var), x.type.np_dtype)
    v = as_tensor(var, x)
    if v.dtype != x.dtype:
        v = cast(v, x.dtype)
    if v.shape != x.shape:
        # torch's rule: var lacks the input's last dimension, or differs from its shape in
        # exactly one dimension, where it has 1
        if x.ndim and tuple(x.shape[:-1]) == tuple(v.shape):
            v = unsqueeze(v, -1)
        elif not (v.ndim == x.ndim and builtins.sum(
                b for a, b in zip(x.shape, v.shape) if a != b) == 1):
            raise ValueError(f"gaussian_nll_loss: var of shape {list(v.shape)} fits neither the "
                             f"input's shape {list(x.shape)} without its last dimension nor it "
                             f"with one dimension of 1")
    v = v + emit_op("stop_gradient", where(gt(v, eps), v, eps) - v)
    per = (log(v) + square(x - t) / v) * 0.5
    if full:
        per = per + 0.5 * float(np.log(2 * np.pi))
    return _reduce(per, reduction)


def _clamp_at_zero(z: Tensor) -> Tensor:
    """``max(z, 0)`` passing the gradient at 0, as torch's ``clamp_min``."""
    return where(lt(z, 0.0), 0.0, z)


def margin_ranking_loss(input1, input2, target, margin: float = 0.0, size_average=None,
                        reduce=None, reduction: str = "mean") -> Tensor:
    """``max(0, -y (x1 - x2) + margin)``."""
    _, reduction = loss_args(None, size_average, reduce, reduction)
    _check_reduction(reduction)
    a, b = promote(input1, input2)
    y = as_tensor(target, a)
    return _reduce(_clamp_at_zero(neg(y) * (a - b) + margin), reduction)


def hinge_embedding_loss(input, target, margin: float = 1.0, size_average=None, reduce=None,
                         reduction: str = "mean") -> Tensor:
    """``x`` where y = 1, ``max(0, margin - x)`` where y = -1 (torch's: both terms where y
    is neither)."""
    _, reduction = loss_args(None, size_average, reduce, reduction)
    _check_reduction(reduction)
    x, y = promote(input, target)
    per = where(ne(y, 1.0), _clamp_at_zero(margin - x), 0.0) + where(ne(y, -1.0), x, 0.0)
    return _reduce(per, reduction)


def soft_margin_loss(input, target, size_average=None, reduce=None,
                     reduction: str = "mean") -> Tensor:
    """``log(1 + exp(-y x))``, in the form stable for large ``-y x``."""
    _, reduction = loss_args(None, size_average, reduce, reduction)
    _check_reduction(reduction)
    x, y = _pair(input, target)
    return _reduce(log1p_exp(neg(y) * x), reduction)


def cosine_embedding_loss(input1, input2, target, margin: float = 0.0, size_average=None,
                          reduce=None, reduction: str = "mean") -> Tensor:
    """``1 - cos(x1, x2)`` where y = 1, ``max(0, cos(x1, x2) - margin)`` where y = -1;
    the cosine over the last dimension of 1-D or 2-D inputs, each squared magnitude plus
    1e-12 as torch's."""
    _, reduction = loss_args(None, size_average, reduce, reduction)
    _check_reduction(reduction)
    a, b = promote(input1, input2)
    if a.ndim not in (1, 2) or a.shape != b.shape:
        raise ValueError(f"cosine_embedding_loss: inputs must be 1-D or 2-D of one shape, "
                         f"got {list(a.shape)} and {list(b.shape)}")
    d = a.ndim - 1
    y = as_tensor(target, a)
    cos = sum(a * b, d) / sqrt((sum(a * a, d) + 1e-12) * (sum(b * b, d) + 1e-12))
    per = where(eq(y, 1.0), 1 - cos, 0.0) + where(eq(y, -1.0), _clamp_at_zero(cos - margin),
                                                  0.0)
    return _reduce(per, reduction)


def triplet_margin_loss(anchor, positive, negative, margin: float = 1.0, p: float = 2,
                        eps: float = 1e-6, swap: bool = False, size_average=None, reduce=None,
                        reduction: str = "mean") -> Tensor:
    """``max(0, margin + d(a, p) - d(a, n))`` with ``pairwise_distance`` d; ``swap`` takes
    the smaller of d(a, n) and d(p, n)."""
    _, reduction = loss_args(None, size_average, reduce, reduction)
    _check_reduction(reduction)
    d_pos = pairwise_distance(anchor, positive, p, eps)
    d_neg = pairwise_distance(anchor, negative, p, eps)
    if swap:
        d_neg = minimum(d_neg, pairwise_distance(positive, negative, p, eps))
    return _reduce(_clamp_at_zero(d_pos - d_neg + margin), reduction)


def multilabel_soft_margin_loss(input, target, weight=None, size_average=None, reduce=None,
                                reduction: str = "mean") -> Tensor:
    """``-(y logsigmoid(x) + (1 - y) logsigmoid(-x))`` (times ``weight``) averaged over the
    classes (the last dimension)."""
    weight, reduction = loss_args(weight, size_average, reduce, reduction)
    _check_reduction(reduction)
    x, y = _pair(input, target)
    per = log1p_exp(neg(x)) * y + log1p_exp(x) * (1 - y)
    per = _weighted(per, weight)
    return _reduce(sum(per, -1) / x.shape[-1], reduction)


def multi_margin_loss(input, target, p: int = 1, margin: float = 1.0, weight=None,
                      size_average=None, reduce=None, reduction: str = "mean") -> Tensor:
    """Per sample ``sum_{j != y} max(0, margin - x_y + x_j)^p / C`` (p 1 or 2), each term
    times ``weight[y]``; a term at exactly 0 adds nothing, with no gradient, as torch."""
    weight, reduction = loss_args(weight, size_average, reduce, reduction)
    _check_reduction(reduction)
    if p not in (1, 2):
        raise ValueError(f"multi_margin_loss: only p 1 and 2 are supported, got {p!r}")
    x = as_tensor(input)
    x = x if x.type.is_float else cast(x, "float32")
    flat = x.ndim <= 1
    if flat:
        x = reshape(x, (1, -1))
    y = reshape(as_tensor(target), (-1,))
    if x.ndim != 2 or y.shape[0] != x.shape[0]:
        raise ValueError(f"multi_margin_loss: input (N, C) or (C,) with one target per row, "
                         f"got input {list(as_tensor(input).shape)} and target "
                         f"{list(as_tensor(target).shape)}")
    hit = _class_one_hot(x, y, "bool")
    x_y = sum(where(hit, x, 0.0), 1, keepdim=True)
    z = x - x_y + margin
    terms = where(hit, 0.0, where(gt(z, 0.0), z if p == 1 else square(z), 0.0))
    if weight is not None:
        terms = terms * sum(where(hit, _class_weights(as_tensor(weight, x), x), 0.0), 1,
                            keepdim=True)
    per = sum(terms, 1) / x.shape[1]
    return _reduce(reshape(per, ()) if flat else per, reduction)
