"""Pooling ops (section 9.3), on (N, C, *spatial) inputs of 1, 2 or 3 spatial axes.

* ``max_pool`` / ``avg_pool``: windows of ``kernel_size`` every ``stride``, per-side padding,
  ``ceil_mode`` keeping the smaller edge window (fig. 9.10) as PyTorch does. ``avg_pool``
  divides as PyTorch: ``count_include_pad`` counts the padding (never the part of an edge
  window past it), ``divisor_override`` replaces the count.
* ``adaptive_max_pool`` / ``adaptive_avg_pool``: a fixed number of regions whatever the input
  size (fig. 9.11 centre); region i of n over size S is [floor(i S / n), ceil((i+1) S / n)).
* Gradients: ``*_grad`` ops. Max pooling sends the gradient to the position of the maximum;
  ties go to the FIRST maximum in window order (row-major over the window, as PyTorch), and a
  NaN counts as the maximum. ``max_pool_select(x, v)`` reads ``v`` at the positions
  ``max_pool(x)`` picks: the transpose of ``max_pool_grad``, so second order closes.

Lp pooling, global average pooling and maxout are built from these and core ops in the
frontend (``F.lp_pool2d`` follows PyTorch's definition on top of ``avg_pool``).
"""
from __future__ import annotations

import numpy as np

from ..registry import Attr, Cost, a_bool, a_int, a_ints, a_optional, register_op
from ..types import TensorType
from .conv_geometry import check_spatial, out_shape

_REGULAR = {"kernel_size": Attr(a_ints), "stride": Attr(a_ints), "padding": Attr(a_ints),
            "ceil_mode": Attr(a_bool, False)}
_MAX = dict(_REGULAR, dilation=Attr(a_ints))
_AVG = dict(_REGULAR, count_include_pad=Attr(a_bool, True),
            divisor_override=Attr(a_optional(a_int), None))
_ADAPTIVE = {"output_size": Attr(a_ints)}


# ---------------------------------------------------------------- window geometry
def regular_axes(spatial, kernel_size, stride, padding, dilation, ceil_mode):
    """Per axis: (positions (out, k), valid (out, k), start (out,)) of every window."""
    axes = []
    out = out_shape(spatial, kernel_size, stride, padding, dilation, ceil_mode)
    for i, (s, m) in enumerate(zip(spatial, out)):
        start = np.arange(m) * stride[i] - padding[2 * i]
        pos = start[:, None] + np.arange(kernel_size[i])[None, :] * dilation[i]
        axes.append((pos, (pos >= 0) & (pos < s), start))
    return axes


def adaptive_bounds(size: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's adaptive regions: [floor(i*size/n), ceil((i+1)*size/n))."""
    i = np.arange(n)
    return (i * size) // n, -(-((i + 1) * size) // n)


def adaptive_axes(spatial, output_size):
    axes = []
    for s, m in zip(spatial, output_size):
        start, end = adaptive_bounds(s, m)
        width = int(np.max(end - start))
        pos = start[:, None] + np.arange(width)[None, :]
        axes.append((pos, pos < end[:, None], start))
    return axes


def _gather_index(axes, spatial):
    """Flat spatial index and validity, both (*out, *k), of every window element."""
    d = len(axes)
    flat = np.zeros((1,) * 2 * d, np.int64)
    valid = np.ones((1,) * 2 * d, bool)
    for i, (pos, ok, _) in enumerate(axes):
        shape = [1] * 2 * d
        shape[i], shape[d + i] = pos.shape
        stride = int(np.prod(spatial[i + 1:], dtype=np.int64))
        flat = flat + np.clip(pos, 0, spatial[i] - 1).reshape(shape) * stride
        valid = valid & ok.reshape(shape)
    return flat, valid


def _windows(x: np.ndarray, axes):
    """(values (N, C, *out, K), valid (*out, K), flat index (*out, K)) of every window."""
    d = len(axes)
    flat, valid = _gather_index(axes, x.shape[2:])
    out = flat.shape[:d]
    flat, valid = flat.reshape(out + (-1,)), valid.reshape(out + (-1,))
    vals = x.reshape(x.shape[:2] + (-1,))[:, :, flat]
    return vals, valid, flat


def _argmax_flat(x: np.ndarray, axes) -> tuple[np.ndarray, np.ndarray]:
    """Flat index into ``x`` of each window's first maximum, and whether the window has any
    input element (an all-padding window gives -inf and no gradient)."""
    vals, valid, flat = _windows(x, axes)
    vals = np.where(valid, vals, -np.inf)
    arg = np.argmax(vals, axis=-1)                                      # first max; NaN wins
    # the first position of the input, not of the padding, that holds it (a window whose
    # input values are all -inf ties with its padding)
    best = np.take_along_axis(vals, arg[..., None], -1)
    with np.errstate(invalid="ignore"):
        hit = valid & ((vals == best) | (np.isnan(vals) & np.isnan(best)))
    arg = np.where(hit.any(axis=-1), np.argmax(hit, axis=-1), arg)
    spatial_idx = np.take_along_axis(np.broadcast_to(flat, vals.shape), arg[..., None],
                                     -1)[..., 0]
    n, c = x.shape[:2]
    base = (np.arange(n * c) * int(np.prod(x.shape[2:], dtype=np.int64))).reshape(
        (n, c) + (1,) * (x.ndim - 2))
    return base + spatial_idx, np.any(valid, axis=-1)


def _max_forward(x, axes):
    idx, any_valid = _argmax_flat(x, axes)
    return np.where(any_valid, x.reshape(-1)[idx], x.dtype.type(-np.inf))


def _max_backward(x, gy, axes):
    idx, any_valid = _argmax_flat(x, axes)
    w = np.where(any_valid, gy, 0).astype(np.float64)
    return np.bincount(idx.reshape(-1), w.reshape(-1), minlength=x.size).reshape(
        x.shape).astype(x.dtype)


def _max_select(x, v, axes):
    idx, any_valid = _argmax_flat(x, axes)
    return np.where(any_valid, v.reshape(-1)[idx], 0).astype(v.dtype)


def _avg_divisor(spatial, axes, kernel_size, padding, count_include_pad, divisor_override):
    """The divisor (*out) of each window, exactly as PyTorch's avg_pool kernels compute it."""
    if divisor_override:
        return np.full([len(a[2]) for a in axes], float(divisor_override))
    div = np.ones(())
    for i, (pos, ok, start) in enumerate(axes):
        if count_include_pad:
            n = np.minimum(start + kernel_size[i], spatial[i] + padding[2 * i + 1]) - start
        else:
            n = ok.sum(axis=1)
        div = np.multiply.outer(div, n.astype(np.float64))
    return div


def _avg_forward(x, axes, div):
    vals, valid, _ = _windows(x, axes)
    s = np.sum(np.where(valid, vals, 0), axis=-1, dtype=np.float64)
    return (s / div).astype(x.dtype)


def _avg_backward(gy, input_size, axes, div):
    n, c = gy.shape[:2]
    flat, valid = _gather_index(axes, input_size)
    d = len(input_size)
    out = flat.shape[:d]
    flat, valid = flat.reshape(out + (-1,)), valid.reshape(out + (-1,))
    size = int(np.prod(input_size, dtype=np.int64))
    base = (np.arange(n * c) * size).reshape((n, c) + (1,) * (d + 1))
    w = np.where(valid, (gy / div)[..., None], 0.0)
    idx = np.broadcast_to(base + flat, w.shape)
    return np.bincount(idx.reshape(-1), w.reshape(-1), minlength=n * c * size).reshape(
        (n, c) + tuple(input_size)).astype(gy.dtype)


# ---------------------------------------------------------------- type rules
def _float(x: TensorType, name: str) -> None:
    if not x.is_float:
        raise ValueError(f"{name} needs a float tensor, got {x}")


def _regular_type(name, x, kernel_size, stride, padding, dilation, ceil_mode):
    _float(x, name)
    check_spatial(x, name, kernel=kernel_size, stride=stride, padding=padding,
                  dilation=dilation)
    for i, k in enumerate(kernel_size):
        half = (dilation[i] * (k - 1) + 1) // 2
        if max(padding[2 * i], padding[2 * i + 1]) > half:
            raise ValueError(f"{name}: padding {list(padding)} must be at most half of the "
                             f"(dilated) window on each side (PyTorch's rule)")
    out = out_shape(x.shape[2:], kernel_size, stride, padding, dilation, ceil_mode)
    if any(s < 1 for s in out):
        raise ValueError(f"{name}: window {list(kernel_size)} is larger than the padded "
                         f"input {x}")
    return x.with_shape(x.shape[:2] + out)


def _adaptive_type(name, x, output_size):
    _float(x, name)
    if x.rank < 3 or len(output_size) != x.rank - 2:
        raise ValueError(f"{name} on (N, C, *spatial) {x} needs {x.rank - 2} output sizes, "
                         f"got {list(output_size)}")
    if any(s < 1 for s in output_size) or any(s < 1 for s in x.shape[2:]):
        raise ValueError(f"{name}: output size {list(output_size)} and input {x} must be "
                         f"positive")
    return x.with_shape(x.shape[:2] + tuple(output_size))


def _same_as(a: TensorType, b: TensorType, what: str) -> None:
    if a != b:
        raise ValueError(f"{what}: expected {a}, got {b}")


def _window_cost(ins, outs, attrs) -> Cost:
    k = int(np.prod(attrs.get("kernel_size") or (1,)))
    return Cost(max(o.size for o in outs) * k, sum(t.nbytes for t in ins + outs))


# ---------------------------------------------------------------- max pooling
def max_axes(x_shape, a):
    return regular_axes(x_shape[2:], a["kernel_size"], a["stride"], a["padding"],
                         a["dilation"], a["ceil_mode"])


@register_op("max_pool", traits=(), attrs=_MAX, cost=_window_cost)
def max_pool(x, **a):
    """Maximum over each window (padding never wins)."""
    return _max_forward(x, max_axes(x.shape, a))


@max_pool.type_rule
def _(x, **a):
    return _regular_type("max_pool", x, **a)


@register_op("max_pool_grad", traits=(), attrs=_MAX, cost=_window_cost)
def max_pool_grad(x, gy, **a):
    """Gradient of ``max_pool`` at ``x``: each gy goes to its window's first maximum."""
    return _max_backward(x, gy, max_axes(x.shape, a))


@max_pool_grad.type_rule
def _(x, gy, **a):
    _same_as(_regular_type("max_pool_grad", x, **a), gy, "max_pool_grad output gradient")
    return x


@register_op("max_pool_select", traits=(), attrs=_MAX, cost=_window_cost)
def max_pool_select(x, v, **a):
    """``v`` read at the positions ``max_pool(x)`` picks (transpose of ``max_pool_grad``)."""
    return _max_select(x, v, max_axes(x.shape, a))


@max_pool_select.type_rule
def _(x, v, **a):
    _same_as(x, v, "max_pool_select values")
    return _regular_type("max_pool_select", x, **a)


# ---------------------------------------------------------------- average pooling
def avg_geometry(spatial, a):
    one = (1,) * len(spatial)
    axes = regular_axes(spatial, a["kernel_size"], a["stride"], a["padding"], one,
                         a["ceil_mode"])
    div = _avg_divisor(spatial, axes, a["kernel_size"], a["padding"], a["count_include_pad"],
                       a["divisor_override"])
    return axes, div


def _avg_type(name, x, a):
    if a["divisor_override"] is not None and a["divisor_override"] == 0:
        raise ValueError(f"{name}: divisor_override must not be zero")
    return _regular_type(name, x, a["kernel_size"], a["stride"], a["padding"],
                         (1,) * len(a["kernel_size"]), a["ceil_mode"])


@register_op("avg_pool", traits=(), attrs=_AVG, cost=_window_cost)
def avg_pool(x, **a):
    """Mean over each window, divided as PyTorch's avg_pool (see the module docstring)."""
    axes, div = avg_geometry(x.shape[2:], a)
    return _avg_forward(x, axes, div)


@avg_pool.type_rule
def _(x, **a):
    return _avg_type("avg_pool", x, a)


@register_op("avg_pool_grad", traits=(),
             attrs=dict(_AVG, input_size=Attr(a_ints)), cost=_window_cost)
def avg_pool_grad(gy, *, input_size, **a):
    """Transpose of ``avg_pool``: each gy / divisor spread over its window."""
    axes, div = avg_geometry(tuple(input_size), a)
    return _avg_backward(gy, input_size, axes, div)


@avg_pool_grad.type_rule
def _(gy, *, input_size, **a):
    x = gy.with_shape(gy.shape[:2] + tuple(input_size))
    _same_as(_avg_type("avg_pool_grad", x, a), gy, "avg_pool_grad output gradient")
    return x


# ---------------------------------------------------------------- adaptive pooling
@register_op("adaptive_max_pool", traits=(), attrs=_ADAPTIVE, cost=_window_cost)
def adaptive_max_pool(x, *, output_size):
    return _max_forward(x, adaptive_axes(x.shape[2:], output_size))


@adaptive_max_pool.type_rule
def _(x, *, output_size):
    return _adaptive_type("adaptive_max_pool", x, output_size)


@register_op("adaptive_max_pool_grad", traits=(), attrs=_ADAPTIVE, cost=_window_cost)
def adaptive_max_pool_grad(x, gy, *, output_size):
    return _max_backward(x, gy, adaptive_axes(x.shape[2:], output_size))


@adaptive_max_pool_grad.type_rule
def _(x, gy, *, output_size):
    _same_as(_adaptive_type("adaptive_max_pool_grad", x, output_size), gy,
             "adaptive_max_pool_grad output gradient")
    return x


@register_op("adaptive_max_pool_select", traits=(), attrs=_ADAPTIVE, cost=_window_cost)
def adaptive_max_pool_select(x, v, *, output_size):
    return _max_select(x, v, adaptive_axes(x.shape[2:], output_size))


@adaptive_max_pool_select.type_rule
def _(x, v, *, output_size):
    _same_as(x, v, "adaptive_max_pool_select values")
    return _adaptive_type("adaptive_max_pool_select", x, output_size)


def adaptive_avg_geometry(spatial, output_size):
    axes = adaptive_axes(spatial, output_size)
    div = np.ones(())
    for pos, ok, _ in axes:
        div = np.multiply.outer(div, ok.sum(axis=1).astype(np.float64))
    return axes, div


@register_op("adaptive_avg_pool", traits=(), attrs=_ADAPTIVE, cost=_window_cost)
def adaptive_avg_pool(x, *, output_size):
    axes, div = adaptive_avg_geometry(x.shape[2:], output_size)
    return _avg_forward(x, axes, div)


@adaptive_avg_pool.type_rule
def _(x, *, output_size):
    return _adaptive_type("adaptive_avg_pool", x, output_size)


@register_op("adaptive_avg_pool_grad", traits=(), attrs=dict(_ADAPTIVE, input_size=Attr(a_ints)),
             cost=_window_cost)
def adaptive_avg_pool_grad(gy, *, output_size, input_size):
    axes, div = adaptive_avg_geometry(tuple(input_size), output_size)
    return _avg_backward(gy, input_size, axes, div)


@adaptive_avg_pool_grad.type_rule
def _(gy, *, output_size, input_size):
    x = gy.with_shape(gy.shape[:2] + tuple(input_size))
    _same_as(_adaptive_type("adaptive_avg_pool_grad", x, output_size), gy,
             "adaptive_avg_pool_grad output gradient")
    return x
