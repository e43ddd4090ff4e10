"""Rearranging and resampling of ``torch.nn.functional`` (``frontend.F``, re-exported by
functional.py): ``interpolate`` (nearest, nearest-exact, linear, bilinear, trilinear,
bicubic, area), ``pixel_shuffle`` / ``pixel_unshuffle``, ``channel_shuffle``, ``one_hot`` and
the channel dropouts.

``interpolate`` is separable: along each spatial axis the output is a sum of a few takes of
input rows (``take``, whose gradient is ``index_add``) times per-row weights. The source
indices and weights depend on the shapes alone, so they are worked out here, once, with
torch's formulas in torch's arithmetic (float32 for a float32 input, as its kernels compute
them) and enter the graph as constants.
"""
from __future__ import annotations

import math

import numpy as np

from .functional_core import (as_tensor, cast, eq, mul, permute, reshape, unsqueeze, where)
from .functional_index import in_range, index_select
from .functional_pool import adaptive_avg_pool1d, adaptive_avg_pool2d, adaptive_avg_pool3d
from .functional_random import rand
from .tracing import Tensor

__all__ = ["interpolate", "upsample", "upsample_nearest", "upsample_bilinear",
           "pixel_shuffle", "pixel_unshuffle", "channel_shuffle", "one_hot", "dropout1d",
           "dropout2d", "dropout3d"]

_MODE_DIMS = {"linear": 1, "bilinear": 2, "bicubic": 2, "trilinear": 3}
_INTERPOLATING = ("linear", "bilinear", "bicubic", "trilinear")
CUBIC_A = -0.75     # the cubic convolution's parameter (torch's, Keys' with a = -0.75)


def _per_axis(value, d: int, what: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != d:
            raise ValueError(f"interpolate: {what} {tuple(value)} must have one entry per "
                             f"spatial dimension ({d})")
        return list(value)
    return [value] * d


def _output_size(shape, size, scale_factor, recompute: bool | None):
    """(output sizes, the scales the kernels are given: None each where the size decides)."""
    d = len(shape)
    if (size is None) == (scale_factor is None):
        raise ValueError("interpolate: give exactly one of size and scale_factor")
    if size is not None:
        out = [int(s) for s in _per_axis(size, d, "size")]
        scales = [None] * d
    else:
        sf = [float(s) for s in _per_axis(scale_factor, d, "scale_factor")]
        out = [int(math.floor(float(n) * s)) for n, s in zip(shape, sf)]
        scales = [None] * d if recompute else sf
    if any(o <= 0 for o in out):
        raise ValueError(f"interpolate: output size {out} of input spatial size {list(shape)} "
                         f"must be positive")
    return out, scales


def _scale(ft, n_in: int, n_out: int, scale, align_corners: bool):
    """torch's ``area_pixel_compute_scale`` in the kernels' type ``ft``."""
    if align_corners:
        return ft(n_in - 1) / ft(n_out - 1) if n_out > 1 else ft(0)
    return ft(1.0 / scale) if scale is not None and scale > 0 else ft(n_in) / ft(n_out)


def _source(ft, scale, n_out: int, align_corners: bool, cubic: bool) -> np.ndarray:
    """torch's ``area_pixel_compute_source_index`` of every output index."""
    dst = np.arange(n_out).astype(ft)
    if align_corners:
        return (scale * dst).astype(ft)
    src = (scale * (dst + ft(0.5)) - ft(0.5)).astype(ft)
    return src if cubic else np.where(src < 0, ft(0), src).astype(ft)


def _guard(ft, src: np.ndarray, n_in: int):
    """torch's ``guard_index_and_lambda``: (floor index at most n_in - 1, its fraction in
    [0, 1])."""
    idx = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    lam = np.clip((src - idx.astype(ft)).astype(ft), ft(0), ft(1))
    return idx, lam


def _nearest_taps(ft, n_in: int, n_out: int, scale, exact: bool, shortcut: bool):
    """torch's ``nearest_idx`` / ``nearest_exact_idx`` in ``ft`` arithmetic. ``shortcut``
    (torch's 2-D nearest kernel, which also computes in float32 for any input): an axis that
    keeps its size is copied and one that doubles takes ``o // 2`` whatever the scale; the
    1-D and 3-D kernels apply the scale, in the input's float type."""
    if shortcut:
        ft = np.float32
    if shortcut and not exact and n_out == n_in:
        return [np.arange(n_out)], None
    if shortcut and not exact and n_out == 2 * n_in:
        return [np.arange(n_out) >> 1], None
    s = ft(1.0 / scale) if scale is not None and scale > 0 else ft(n_in) / ft(n_out)
    dst = np.arange(n_out).astype(ft)
    if exact:
        dst = dst + ft(0.5)
    idx = np.minimum(np.floor((dst * s).astype(ft)).astype(np.int64), n_in - 1)
    return [idx], None


def _linear_taps(ft, n_in, n_out, scale, align_corners):
    s = _scale(ft, n_in, n_out, scale, align_corners)
    i0, lam = _guard(ft, _source(ft, s, n_out, align_corners, False), n_in)
    i1 = i0 + (i0 < n_in - 1)
    return [i0, i1], [(ft(1) - lam).astype(ft), lam]


def _cubic_taps(ft, n_in, n_out, scale, align_corners):
    s = _scale(ft, n_in, n_out, scale, align_corners)
    i, t = _guard(ft, _source(ft, s, n_out, align_corners, True), n_in)
    a = ft(CUBIC_A)

    def near(x):        # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):         # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    one = ft(1)
    weights = [far(t + one), near(t), near(one - t), far(one - t + one)]
    taps = [np.clip(i - 1 + k, 0, n_in - 1) for k in range(4)]
    return taps, [w.astype(ft) for w in weights]


def _along(x: Tensor, axis: int, taps, weights) -> Tensor:
    """``sum_k weights[k][o] * x.take(taps[k][o], axis)`` (one take without weights)."""
    lift = [1] * x.ndim
    lift[axis] = -1
    total = None
    for k, idx in enumerate(taps):
        term = index_select(x, axis, as_tensor(np.asarray(idx, np.int64), x))
        if weights is not None:
            term = mul(term, reshape(as_tensor(np.asarray(weights[k]), x), tuple(lift)))
        total = term if total is None else total + term
    return total


def interpolate(input, size=None, scale_factor=None, mode: str = "nearest",
                align_corners: bool | None = None, recompute_scale_factor: bool | None = None,
                antialias: bool = False) -> Tensor:
    """``torch.nn.functional.interpolate`` of an (N, C, *spatial) input with 1 to 3 spatial
    dimensions: the output's spatial size is ``size``, or ``floor(in * scale_factor)``; a
    given ``scale_factor`` also sets the source coordinates (``1 / scale_factor`` per output
    step) unless ``recompute_scale_factor``. Values and gradients follow torch's CPU kernels
    (source index ``scale * (o + 1/2) - 1/2``, or ``scale * o`` with ``align_corners``;
    bicubic with a = -0.75 and the taps clamped to the edge)."""
    x = as_tensor(input)
    if not x.type.is_float:
        raise TypeError(f"interpolate needs a float tensor, got {x.type}")
    d = x.ndim - 2
    if d not in (1, 2, 3):
        raise ValueError(f"interpolate: input must be (N, C, *spatial) with 1 to 3 spatial "
                         f"dimensions, got shape {list(x.shape)}")
    modes = ("nearest", "nearest-exact", "area") + _INTERPOLATING
    if mode not in modes:
        raise ValueError(f"interpolate: mode must be one of {', '.join(modes)}, got {mode!r}")
    if mode in _INTERPOLATING:
        if _MODE_DIMS[mode] != d:
            raise ValueError(f"interpolate: mode {mode!r} needs a {_MODE_DIMS[mode] + 2}-D "
                             f"input, got {x.ndim}-D")
        align_corners = bool(align_corners)
    elif align_corners is not None:
        raise ValueError("interpolate: align_corners can only be set with the interpolating "
                         "modes: linear | bilinear | bicubic | trilinear")
    if antialias:
        raise NotImplementedError("interpolate: antialias=True is not supported")
    if recompute_scale_factor and size is not None:
        raise ValueError("interpolate: recompute_scale_factor is only meaningful with "
                         "scale_factor")
    out, scales = _output_size(x.shape[2:], size, scale_factor, recompute_scale_factor)
    if mode == "area":
        pool = (adaptive_avg_pool1d, adaptive_avg_pool2d, adaptive_avg_pool3d)[d - 1]
        return pool(x, tuple(out))
    ft = np.float64 if x.dtype == "float64" else np.float32
    y = x
    for a in range(d):
        n_in, n_out, scale = x.shape[2 + a], out[a], scales[a]
        if mode in ("nearest", "nearest-exact"):
            taps, weights = _nearest_taps(ft, n_in, n_out, scale, mode == "nearest-exact",
                                          d == 2)
        elif mode == "bicubic":
            taps, weights = _cubic_taps(ft, n_in, n_out, scale, align_corners)
        elif n_out == n_in:         # torch's linear kernels copy an axis that keeps its size
            continue
        else:
            taps, weights = _linear_taps(ft, n_in, n_out, scale, align_corners)
        y = _along(y, 2 + a, taps, weights)
    return y


def upsample(input, size=None, scale_factor=None, mode: str = "nearest",
             align_corners: bool | None = None) -> Tensor:
    """Deprecated in torch: ``interpolate``."""
    return interpolate(input, size, scale_factor, mode, align_corners)


def upsample_nearest(input, size=None, scale_factor=None) -> Tensor:
    return interpolate(input, size, scale_factor, "nearest")


def upsample_bilinear(input, size=None, scale_factor=None) -> Tensor:
    """Deprecated in torch: bilinear ``interpolate`` with ``align_corners=True``."""
    return interpolate(input, size, scale_factor, "bilinear", align_corners=True)


def pixel_shuffle(input, upscale_factor: int) -> Tensor:
    """(*, C r^2, H, W) -> (*, C, H r, W r): channel ``c r^2 + i r + j`` goes to position
    (h r + i, w r + j) of channel c."""
    x = as_tensor(input)
    r = int(upscale_factor)
    if x.ndim < 3 or r <= 0 or x.shape[-3] % (r * r):
        raise ValueError(f"pixel_shuffle: input (*, C r^2, H, W) with r = {upscale_factor} > "
                         f"0 and C r^2 divisible by r^2, got shape {list(x.shape)}")
    *lead, c, h, w = x.shape
    b = len(lead)
    y = reshape(x, (*lead, c // (r * r), r, r, h, w))
    y = permute(y, (*range(b), b, b + 3, b + 1, b + 4, b + 2))
    return reshape(y, (*lead, c // (r * r), h * r, w * r))


def pixel_unshuffle(input, downscale_factor: int) -> Tensor:
    """The inverse of ``pixel_shuffle``: (*, C, H r, W r) -> (*, C r^2, H, W)."""
    x = as_tensor(input)
    r = int(downscale_factor)
    if x.ndim < 3 or r <= 0 or x.shape[-1] % r or x.shape[-2] % r:
        raise ValueError(f"pixel_unshuffle: input (*, C, H r, W r) with r = "
                         f"{downscale_factor} > 0 dividing H and W, got shape "
                         f"{list(x.shape)}")
    *lead, c, h, w = x.shape
    b = len(lead)
    y = reshape(x, (*lead, c, h // r, r, w // r, r))
    y = permute(y, (*range(b), b, b + 2, b + 4, b + 1, b + 3))
    return reshape(y, (*lead, c * r * r, h // r, w // r))


def channel_shuffle(input, groups: int) -> Tensor:
    """(N, g k, *) -> the channels as a (g, k) grid read by columns: channel ``i k + j``
    goes to ``j g + i``."""
    x = as_tensor(input)
    g = int(groups)
    if x.ndim < 3 or g <= 0 or x.shape[1] % g:
        raise ValueError(f"channel_shuffle: input (N, C, *) with C divisible by groups = "
                         f"{groups}, got shape {list(x.shape)}")
    n, c, *rest = x.shape
    y = reshape(x, (n, g, c // g, *rest))
    y = permute(y, (0, 2, 1, *range(3, y.ndim)))
    return reshape(y, (n, c, *rest))


def one_hot(tensor, num_classes: int = -1) -> Tensor:
    """int64 one-hot vectors of an integer tensor along a new last axis of ``num_classes``
    (-1: one more than the largest value, which needs the values: eager only). An index
    outside [0, num_classes) is an error at run time, as torch's."""
    x = as_tensor(tensor)
    if x.type.is_float or x.dtype == "bool":
        raise TypeError(f"one_hot is only applicable to index tensors, got {x.type}")
    if num_classes < 0:
        if not x.tracer.eager:
            raise ValueError("one_hot: give num_classes when tracing (-1 takes the largest "
                             "value of the data, known only eagerly)")
        value = x.numpy()
        num_classes = int(np.max(value)) + 1 if np.size(value) else 0
    classes = x.tracer.emit("iota", shape=tuple(x.shape) + (int(num_classes),),
                            axis=x.ndim, dtype="int64")
    x = in_range(cast(x, "int64"), int(num_classes))
    return cast(eq(classes, unsqueeze(x, -1)), "int64")


def _channel_dropout(name: str, input, p: float, training: bool, spatial: int) -> Tensor:
    """Whole channels zeroed with probability ``p`` (one draw per (sample, channel)), the
    others scaled by ``1 / (1 - p)``; also unbatched (C, *spatial)."""
    if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)) \
            or not 0 <= p <= 1:
        raise ValueError(f"{name}: dropout probability has to be between 0 and 1, got {p!r}")
    x = as_tensor(input)
    if x.ndim not in (spatial + 1, spatial + 2):
        raise ValueError(f"{name}: expected a {spatial + 1}-D (unbatched) or {spatial + 2}-D "
                         f"input, got shape {list(x.shape)}")
    if not training or p == 0 or x.numel() == 0:
        return x
    if p == 1:
        return mul(x, 0.0)
    lead = x.ndim - spatial
    keep = rand(tuple(x.shape[:lead]) + (1,) * spatial, dtype=x.dtype) >= float(p)
    scale = float(np.dtype(x.dtype).type(1) / np.dtype(x.dtype).type(1 - p))
    return mul(x, where(keep, as_tensor(scale, x), as_tensor(0.0, x)))


def dropout1d(input, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    return _channel_dropout("dropout1d", input, p, training, 1)


def dropout2d(input, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    return _channel_dropout("dropout2d", input, p, training, 2)


def dropout3d(input, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    return _channel_dropout("dropout3d", input, p, training, 3)
