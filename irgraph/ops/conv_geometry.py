"""Shared geometry of sliding windows (convolution, unfold, pooling): output sizes, attribute
checks and strided window views. Written once here; the op modules and the frontend use it.

Padding in every op is per side: ``(before_0, after_0, before_1, after_1, ...)``, one pair per
spatial axis, so asymmetric "same" padding needs no extra pad node.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..types import TensorType


def out_size(size: int, k: int, stride: int, before: int, after: int, dilation: int = 1,
             ceil_mode: bool = False) -> int:
    """Number of window positions along one axis (eq. 9.8 with padding and dilation).

    With ``ceil_mode`` the smaller window at the edge is kept (fig. 9.10) under PyTorch's
    rule: the last window must start inside the input or the left padding.
    """
    span = size + before + after - dilation * (k - 1) - 1
    if span < 0:
        return 0
    n = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (n - 1) * stride >= size + before:
        n -= 1
    return n


def check_spatial(x: TensorType, name: str, *, kernel: Sequence[int], stride: Sequence[int],
                  padding: Sequence[int], dilation: Sequence[int]) -> int:
    """Check that the window attributes fit ``x`` (N, C, *spatial); returns the spatial rank."""
    d = x.rank - 2
    if d < 1:
        raise ValueError(f"{name} needs (N, C, *spatial) input with >= 1 spatial axis, got {x}")
    for label, vals, n in (("kernel", kernel, d), ("stride", stride, d),
                           ("dilation", dilation, d), ("padding", padding, 2 * d)):
        if len(vals) != n:
            raise ValueError(f"{name} on {x} needs {n} {label} value(s), got {list(vals)}")
    if any(v < 1 for v in tuple(kernel) + tuple(stride) + tuple(dilation)):
        raise ValueError(f"kernel, stride and dilation must be >= 1, got kernel={list(kernel)}, "
                         f"stride={list(stride)}, dilation={list(dilation)}")
    if any(p < 0 for p in padding):
        raise ValueError(f"padding must be >= 0, got {list(padding)}")
    return d


def out_shape(spatial: Sequence[int], kernel, stride, padding, dilation,
              ceil_mode: bool = False) -> tuple[int, ...]:
    return tuple(out_size(s, k, st, padding[2 * i], padding[2 * i + 1], dl, ceil_mode)
                 for i, (s, k, st, dl) in enumerate(zip(spatial, kernel, stride, dilation)))


def pad_spatial(x: np.ndarray, padding: Sequence[int], value: float = 0.0) -> np.ndarray:
    if not any(padding):
        return x
    widths = [(0, 0), (0, 0)] + [(padding[2 * i], padding[2 * i + 1])
                                 for i in range(x.ndim - 2)]
    return np.pad(x, widths, constant_values=x.dtype.type(value))


def windows(xp: np.ndarray, kernel, stride, dilation, out) -> np.ndarray:
    """Read-only view (N, C, *out, *kernel) of the windows of the padded input ``xp``."""
    st = xp.strides
    d = len(kernel)
    strides = st[:2] + tuple(st[2 + i] * stride[i] for i in range(d)) + tuple(
        st[2 + i] * dilation[i] for i in range(d))
    return as_strided(xp, xp.shape[:2] + tuple(out) + tuple(kernel), strides, writeable=False)


def scatter_windows(cols: np.ndarray, padded_shape, kernel, stride, dilation) -> np.ndarray:
    """Transpose of ``windows``: add each window entry of ``cols`` (N, C, *out, *kernel) back
    into a zero array of ``padded_shape``; one strided add per kernel offset."""
    d = len(kernel)
    out = cols.shape[2:2 + d]
    acc = np.zeros(padded_shape, cols.dtype)
    for offs in np.ndindex(*kernel):
        dst = tuple(slice(o * dl, o * dl + st * (n - 1) + 1, st)
                    for o, dl, st, n in zip(offs, dilation, stride, out))
        acc[(slice(None), slice(None)) + dst] += cols[(Ellipsis,) + offs]
    return acc


def crop_spatial(xp: np.ndarray, padding: Sequence[int], spatial: Sequence[int]) -> np.ndarray:
    idx = tuple(slice(padding[2 * i], padding[2 * i] + s) for i, s in enumerate(spatial))
    return xp[(slice(None), slice(None)) + idx]


def repeat_tiles(emit, v, first_axis: int, out):
    """Along axes ``first_axis, ...`` of ``v`` (one per spatial axis), repeat the t entries
    ceil(out/t) times and cut at ``out``: entry j of the result is entry j mod t (eq. 9.10).
    ``emit(op, value, **attrs)`` adds one node (an autodiff Emitter, a tracer's ``emit``): the
    tiled convolution's bias and weight expansion in the frontend and in its gradient rules."""
    for i, m in enumerate(out):
        ax = first_axis + i
        s, t = tuple(v.shape), v.shape[ax]
        r = -(-m // t)
        v = emit("reshape", v, shape=s[:ax] + (1, t) + s[ax + 1:])
        v = emit("broadcast_to", v, shape=s[:ax] + (r, t) + s[ax + 1:])
        v = emit("reshape", v, shape=s[:ax] + (r * t,) + s[ax + 1:])
        if r * t != m:
            stops = list(v.shape)
            stops[ax] = m
            v = emit("slice", v, starts=(0,) * len(stops), stops=tuple(stops),
                     steps=(1,) * len(stops))
    return v
