"""Norms and distances of ``torch.nn.functional``: ``normalize``, ``cosine_similarity``,
``pairwise_distance`` (``frontend.F``, re-exported by functional.py), and the vector norm
they share. A norm of a zero vector has torch's zero gradient (a plain ``sqrt`` of a sum of
squares would send ``0 / 0 = NaN`` back)."""
from __future__ import annotations

import math

import numpy as np

from .functional_core import (abs, amax, amin, as_tensor, broadcast_to, cast, clamp_min,
                              emit_op, gt, in_float32, mul, ne, promote, sqrt, sum, where)
from .tracing import Tensor

__all__ = ["normalize", "cosine_similarity", "pairwise_distance", "vector_norm"]


def _float(x) -> Tensor:
    x = as_tensor(x)
    return x if x.type.is_float else cast(x, "float32")


@in_float32     # float16 / bfloat16: squares past 65504 would overflow, as torch widens
def vector_norm(input, ord: float = 2, dim=None, keepdim: bool = False) -> Tensor:
    """``torch.linalg.vector_norm``: ``(sum |x|^ord)^(1/ord)`` over ``dim`` (all axes when
    None); ord inf / -inf the largest / smallest |x|, ord 0 the count of nonzeros. Where the
    sum is 0 the gradient is 0, as torch's."""
    x = _float(input)
    ord = float(ord)
    if ord == math.inf:
        return amax(abs(x), dim, keepdim)
    if ord == -math.inf:
        return amin(abs(x), dim, keepdim)
    if ord == 0:
        return sum(cast(ne(x, 0.0), x.dtype), dim, keepdim)
    if ord == 1:
        return sum(abs(x), dim, keepdim)
    if ord == 2:
        s = sum(mul(x, x), dim, keepdim)
    else:       # |x|^ord taken of 1 at the zeros: below ord 1 its slope there is infinite
        ax = abs(x)
        nz = ne(ax, 0.0)            # (a NaN is not zero: it reaches the sum)
        s = sum(where(nz, where(nz, ax, 1.0) ** ord, 0.0), dim, keepdim)
    some = ne(s, 0.0)               # (a NaN sum gives a NaN norm, as torch's)
    safe = where(some, s, 1.0)
    return where(some, sqrt(safe) if ord == 2 else safe ** (1 / ord), 0.0)


@in_float32
def normalize(input, p: float = 2.0, dim: int = 1, eps: float = 1e-12, out=None) -> Tensor:
    """``x / max(||x||_p, eps)`` along ``dim``."""
    if out is not None:
        raise TypeError("normalize: out= is not supported (traced code is functional)")
    x = _float(input)
    return x / clamp_min(vector_norm(x, p, dim, keepdim=True), eps)


def _stopped_clamp_min(n: Tensor, eps: float) -> Tensor:
    """``max(n, eps)`` in value with the gradient of ``n`` itself: torch clamps these norms
    in place under ``no_grad``."""
    return n + emit_op("stop_gradient", where(gt(n, eps), n, eps) - n)


def cosine_similarity(x1, x2, dim: int = 1, eps: float = 1e-8) -> Tensor:
    """``sum((x1 / max(||x1||, eps)) * (x2 / max(||x2||, eps)))`` along ``dim``, the inputs
    broadcast together; each norm is clamped as torch does, without a gradient through the
    clamp."""
    a, b = promote(_float(x1), _float(x2))
    shape = tuple(np.broadcast_shapes(a.shape, b.shape))   # torch broadcasts before the norms
    a, b = broadcast_to(a, shape), broadcast_to(b, shape)
    n1 = _stopped_clamp_min(vector_norm(a, 2, dim, keepdim=True), eps)
    n2 = _stopped_clamp_min(vector_norm(b, 2, dim, keepdim=True), eps)
    return sum(mul(a / n1, b / n2), dim)


def pairwise_distance(x1, x2, p: float = 2.0, eps: float = 1e-6,
                      keepdim: bool = False) -> Tensor:
    """``||x1 - x2 + eps||_p`` along the last dimension (the inputs broadcast together)."""
    a, b = promote(_float(x1), _float(x2))
    d = a - b + eps
    return vector_norm(d, p, -1 if d.ndim else None, keepdim)
