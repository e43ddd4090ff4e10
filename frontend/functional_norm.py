"""Layer, group, instance and RMS normalization and scaled dot-product attention, as
``torch.nn.functional`` names them (docs/layers.md). All are compositions of core ops:
``mean``, elementwise arithmetic, ``rsqrt``, ``matmul``, ``softmax``; the fusion pass turns
each normalization into reduction regions (statistics) and one elementwise region (output),
so they need no op, VJP rule or kernel of their own.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .functional_core import (add, amax, as_tensor, broadcast_to, cast, eq, in_float32, le,
                              logical_or, matmul, mean, mul, promote, reshape, rsqrt, softmax,
                              sub, transpose, unsqueeze, where)
from .functional_pool import is_buffer
from .functional_random import dropout
from .tracing import Tensor

__all__ = ["layer_norm", "group_norm", "instance_norm", "rms_norm",
           "scaled_dot_product_attention"]


def _float(x) -> Tensor:
    x = as_tensor(x)
    if not x.type.is_float:
        raise TypeError(f"normalization needs a float tensor, got {x.type}")
    return x


def normalize_over(x: Tensor, axes: Sequence[int], eps: float) -> Tensor:
    """``(x - mean) / sqrt(var + eps)`` over ``axes`` (biased variance, as torch's layer,
    group and instance norms): the one place these layers compute their statistics."""
    axes = tuple(axes)
    m = mean(x, axes, keepdim=True)
    d = sub(x, m)
    v = mean(mul(d, d), axes, keepdim=True)
    return mul(d, rsqrt(add(v, float(eps))))


def _shape_tuple(normalized_shape) -> tuple[int, ...]:
    if isinstance(normalized_shape, (int, np.integer)):
        return (int(normalized_shape),)
    return tuple(int(d) for d in normalized_shape)


def _check_trailing(name: str, x: Tensor, shape: tuple[int, ...]) -> tuple[int, ...]:
    k = len(shape)
    if k == 0 or x.ndim < k or tuple(x.shape[x.ndim - k:]) != shape:
        raise ValueError(f"{name}: normalized_shape {list(shape)} must be the trailing dims of "
                         f"the input, got input of shape {list(x.shape)}")
    return tuple(range(x.ndim - k, x.ndim))


def _affine(name: str, y: Tensor, weight, bias, shape: tuple[int, ...]) -> Tensor:
    for what, p in (("weight", weight), ("bias", bias)):
        if p is not None and tuple(as_tensor(p, y).shape) != shape:
            raise ValueError(f"{name}: {what} must have shape {list(shape)}, got "
                             f"{list(as_tensor(p, y).shape)}")
    if weight is not None:
        y = mul(y, weight)
    if bias is not None:
        y = add(y, bias)
    return y


@in_float32
def layer_norm(input, normalized_shape, weight=None, bias=None, eps: float = 1e-5) -> Tensor:
    """``torch.nn.functional.layer_norm``: normalize over the trailing ``normalized_shape``
    dims (biased variance), then ``* weight + bias`` (each of that shape)."""
    x = _float(input)
    shape = _shape_tuple(normalized_shape)
    axes = _check_trailing("layer_norm", x, shape)
    return _affine("layer_norm", normalize_over(x, axes, eps), weight, bias, shape)


def rms_norm(input, normalized_shape, weight=None, eps: float | None = None) -> Tensor:
    """``torch.nn.functional.rms_norm``: ``x / sqrt(mean(x^2) + eps) * weight`` over the
    trailing dims; ``eps=None`` is the input dtype's machine epsilon (torch)."""
    x = _float(input)
    if eps is None:
        eps = float(np.finfo(x.dtype).eps)
    return _rms_norm(x, _shape_tuple(normalized_shape), weight, eps)


@in_float32
def _rms_norm(x: Tensor, shape: tuple[int, ...], weight, eps: float) -> Tensor:
    axes = _check_trailing("rms_norm", x, shape)
    y = mul(x, rsqrt(add(mean(mul(x, x), axes, keepdim=True), float(eps))))
    return _affine("rms_norm", y, weight, None, shape)


def _channels(name: str, y: Tensor, weight, bias, c: int) -> Tensor:
    """Per-channel (axis 1) affine of an (N, C, *) tensor."""
    lift = (1, c) + (1,) * (y.ndim - 2)
    for what, p in (("weight", weight), ("bias", bias)):
        if p is not None and tuple(as_tensor(p, y).shape) != (c,):
            raise ValueError(f"{name}: {what} must have shape [{c}] (one per channel), got "
                             f"{list(as_tensor(p, y).shape)}")
    if weight is not None:
        y = mul(y, reshape(as_tensor(weight, y), lift))
    if bias is not None:
        y = add(y, reshape(as_tensor(bias, y), lift))
    return y


@in_float32
def group_norm(input, num_groups: int, weight=None, bias=None, eps: float = 1e-5) -> Tensor:
    """``torch.nn.functional.group_norm``: x (N, C, *) in ``num_groups`` groups of C / G
    channels, each group of each sample normalized over its channels and positions."""
    x = _float(input)
    if x.ndim < 2:
        raise ValueError(f"group_norm expects (N, C, *) input, got shape {list(x.shape)}")
    n, c = x.shape[0], x.shape[1]
    if num_groups <= 0 or c % num_groups:
        raise ValueError(f"group_norm: num_groups ({num_groups}) must divide the number of "
                         f"channels ({c})")
    g = reshape(x, (n, num_groups, int(np.prod(x.shape[1:])) // num_groups))
    y = reshape(normalize_over(g, (2,), eps), x.shape)
    return _channels("group_norm", y, weight, bias, c)


@in_float32
def instance_norm(input, running_mean=None, running_var=None, weight=None, bias=None,
                  use_input_stats: bool = True, momentum: float = 0.1,
                  eps: float = 1e-5) -> Tensor:
    """``torch.nn.functional.instance_norm``: each channel of each sample normalized over its
    positions. With ``use_input_stats`` and running statistics that are module buffers,
    those take the batch's averages of the per-instance mean and unbiased variance (with
    ``momentum``, as torch); without ``use_input_stats`` the running statistics normalize."""
    x = _float(input)
    if x.ndim < 3:
        raise ValueError(f"instance_norm expects (N, C, *) input with positions, got shape "
                         f"{list(x.shape)}")
    c = x.shape[1]
    axes = tuple(range(2, x.ndim))
    if not use_input_stats:
        if running_mean is None or running_var is None:
            raise ValueError("instance_norm without use_input_stats needs running_mean and "
                             "running_var")
        lift = (1, c) + (1,) * (x.ndim - 2)
        rm = reshape(as_tensor(running_mean, x), lift)
        rv = reshape(as_tensor(running_var, x), lift)
        y = mul(sub(x, rm), rsqrt(add(rv, float(eps))))
        return _channels("instance_norm", y, weight, bias, c)
    y = normalize_over(x, axes, eps)
    if running_mean is not None or running_var is not None:
        count = int(np.prod([x.shape[a] for a in axes]))
        m = mean(x, axes)                                        # (N, C)
        d = sub(x, reshape(m, m.shape + (1,) * len(axes)))
        var = mul(mean(mul(d, d), axes), count / max(count - 1, 1))
        for buf, stat in ((running_mean, m), (running_var, var)):
            if buf is not None and is_buffer(buf):
                old = as_tensor(buf, x)
                new = add(mul(old, 1 - momentum), mul(mean(stat, 0), momentum))
                x.tracer.update_state(buf, cast(new, old.dtype))
    return _channels("instance_norm", y, weight, bias, c)


# ---------------------------------------------------------------- attention
def _iota(like: Tensor, shape, axis: int) -> Tensor:
    return like.tracer.emit("iota", shape=tuple(shape), axis=axis, dtype="int64")


def causal_mask(like: Tensor, l: int, s: int) -> Tensor:
    """bool (L, S): query i attends to keys j <= i (torch's ``tril``, top-left aligned)."""
    return _iota(like, (l, s), 0) >= _iota(like, (l, s), 1)


def _query_groups(q: Tensor, kv: Tensor) -> Tensor:
    """Grouped-query attention's keys or values: each of kv's heads (dim -3) repeated for
    the consecutive query heads of its group (torch's ``repeat_interleave`` over -3), as a
    broadcast (its gradient sums over the group)."""
    if q.ndim < 3 or kv.ndim < 3:
        raise ValueError("scaled_dot_product_attention: enable_gqa needs heads at dim -3, got "
                         f"query {list(q.shape)} and key/value {list(kv.shape)}")
    hq, hkv = q.shape[-3], kv.shape[-3]
    if hkv == 0 or hq % hkv:
        raise ValueError(f"scaled_dot_product_attention: enable_gqa needs the query's heads "
                         f"({hq}) to be a multiple of the key's and value's ({hkv})")
    if hq == hkv:
        return kv
    lead, (s, e) = kv.shape[:-3], kv.shape[-2:]
    wide = broadcast_to(unsqueeze(kv, -3), (*lead, hkv, hq // hkv, s, e))
    return reshape(wide, (*lead, hq, s, e))


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: float | None = None,
                                 enable_gqa: bool = False, *, generator=None) -> Tensor:
    """``torch.nn.functional.scaled_dot_product_attention``: ``softmax(q k^T * scale + mask)
    v`` over (..., L, E), (..., S, E), (..., S, Ev). ``attn_mask``: bool (True = attend) or
    float (added to the scores), broadcast to (..., L, S); ``is_causal``: the lower triangle;
    ``scale`` defaults to 1/sqrt(E); ``dropout_p`` drops attention weights (``F.dropout``,
    always, as torch's function does); ``enable_gqa``: grouped-query attention, key and value
    with fewer heads (dim -3) than the query, each repeated over a group of query heads."""
    q, k = promote(query, key)
    q, v = promote(q, value)
    k = cast(k, q.dtype)
    if not q.type.is_float:
        raise TypeError(f"scaled_dot_product_attention needs float tensors, got {q.type}")
    if q.ndim < 2 or k.ndim < 2 or v.ndim < 2:
        raise ValueError("scaled_dot_product_attention: query, key and value need at least 2 "
                         f"dims, got {list(q.shape)}, {list(k.shape)}, {list(v.shape)}")
    l, e, s = q.shape[-2], q.shape[-1], k.shape[-2]
    if k.shape[-1] != e or v.shape[-2] != s:
        raise ValueError(f"scaled_dot_product_attention: query {list(q.shape)}, key "
                         f"{list(k.shape)} and value {list(v.shape)} do not fit: need "
                         f"(..., L, E), (..., S, E), (..., S, Ev)")
    if enable_gqa:
        k, v = _query_groups(q, k), _query_groups(q, v)
    if is_causal and attn_mask is not None:
        raise ValueError("scaled_dot_product_attention: give attn_mask or is_causal, not both")
    keep, additive, blind = None, None, None
    if is_causal:
        keep = causal_mask(q, l, s)
    elif attn_mask is not None:
        m = as_tensor(attn_mask, q)
        if m.dtype == "bool":
            blind = le(amax(cast(m, q.dtype), -1, keepdim=True), 0.0)
            keep = logical_or(m, blind)
        else:
            additive = cast(m, q.dtype)
            blind = eq(amax(additive, -1, keepdim=True), float("-inf"))
            additive = where(blind, 0.0, additive)
    out = attend(q, k, v, scale, keep, additive, dropout_p, generator)[0]
    # a query row whose mask hides every key gives 0, as torch's (its safe softmax), and
    # passes no gradient: it is attended over every key (finite weights, not 0/0 = NaN)
    # and its output zeroed, leaving the attention itself one region for the backends
    return out if blind is None else where(blind, 0.0, out)


def attend(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None, keep=None,
           additive=None, dropout_p: float = 0.0, generator=None) -> tuple[Tensor, Tensor]:
    """(softmax(q k^T * scale + mask) v, the attention weights): the one definition that
    ``scaled_dot_product_attention`` and ``nn.MultiheadAttention`` share. ``keep`` (bool,
    True = attend) and ``additive`` (float) broadcast to the scores (..., L, S); the scale
    (default 1/sqrt(E)) multiplies q before the product, as torch's math path."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    # the scale as a constant of q's dtype: a 16-bit q times a Python float would round the
    # scaled q once more (torch's opmath), which the attention kernels fold away
    scores = matmul(mul(q, as_tensor(scale, q)), transpose(k, -2, -1))
    for name, m in (("mask", keep), ("mask", additive)):
        if m is None:
            continue
        try:
            np.broadcast_shapes(m.shape, scores.shape)
        except ValueError:
            raise ValueError(f"attention: a {name} of shape {list(m.shape)} does not "
                             f"broadcast to the scores' shape {list(scores.shape)}") from None
    if additive is not None:
        scores = add(scores, additive)
    if keep is not None:
        scores = where(keep, scores, float("-inf"))
    attn = softmax(scores, -1)
    if dropout_p > 0:
        attn = dropout(attn, dropout_p, True, generator=generator)
    return matmul(attn, v), attn
