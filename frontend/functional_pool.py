"""``frontend.F`` pooling (section 9.3), maxout and batch normalization (section 8.7.1), with
``torch.nn.functional``'s names and arguments (re-exported by functional.py).

``return_indices=True`` of the max pools returns, as PyTorch, the flat index of each
window's maximum within its input plane (int64): ``max_pool_select`` reads a tensor of
plane positions at the positions ``max_pool`` picks (same ties and NaN rule).
"""
from __future__ import annotations

import math

import numpy as np

from irgraph.types import LOW_DTYPES

from . import functional_core as F
from .functional_conv import batched_input, int_tuple, unbatch
from .functional_core import emit_op as _emit
from .tracing import Tensor

__all__ = ["max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
           "lp_pool1d", "lp_pool2d", "lp_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
           "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
           "adaptive_max_pool3d", "global_avg_pool", "maxout", "batch_norm"]


def _pool_args(kernel_size, stride, padding, d: int, name: str):
    k = int_tuple(kernel_size, d, "kernel_size")
    st = k if stride is None or (not isinstance(stride, (int, np.integer)) and len(stride) == 0) else \
        int_tuple(stride, d, "stride")
    if not isinstance(padding, (int, np.integer)) and len(tuple(padding)) == 2 * d:
        pads = tuple(int(p) for p in padding)
    else:
        pads = tuple(p for p in int_tuple(padding, d, "padding") for _ in (0, 1))
    return k, st, pads


def _max_indices(x: Tensor, name: str, select: str = "max_pool_select", **attrs) -> Tensor:
    """torch's ``return_indices``: the flat position within the (spatial) plane of each
    window's maximum, as int64 (``select``: the op reading values where the pool picks)."""
    spatial = x.shape[2:]
    plane = int(np.prod(spatial))
    if x.dtype in LOW_DTYPES:       # positions past 2048 (256) have no float16 (bfloat16):
        x = F.cast(x, "float32")    # select in float32, which holds 16-bit values exactly
    dt = x.dtype
    if plane > (1 << 24 if dt == "float32" else 1 << 53):
        raise ValueError(f"{name}(return_indices=True): a plane of {plane} positions is too "
                         f"large to index exactly in {dt}")
    pos = None
    for ax, st in enumerate(np.cumprod((1,) + spatial[::-1])[-2::-1]):
        term = x.tracer.emit("iota", shape=x.shape, axis=2 + ax, dtype=dt)
        term = term * float(st) if st != 1 else term
        pos = term if pos is None else pos + term
    return F.cast(_emit(select, x, pos, **attrs), "int64")


# ---------------------------------------------------------------- max, average, Lp
def max_pool(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
             return_indices=False, *, dim: int) -> Tensor:
    """Max pooling; the gradient goes to the first maximum of each window (PyTorch's rule)."""
    name = f"max_pool{dim}d"
    x, squeeze = batched_input(input, dim, name)
    k, st, pads = _pool_args(kernel_size, stride, padding, dim, name)
    # torch's rule, on the kernel as given (not dilated): the IR's, for ONNX too, allows
    # half the dilated window
    if any(max(pads[2 * i], pads[2 * i + 1]) > k[i] // 2 for i in range(dim)):
        raise ValueError(f"{name}: padding {list(pads)} must be at most half of the kernel "
                         f"size {list(k)} on each side (PyTorch's rule, dilation or not)")
    attrs = dict(kernel_size=k, stride=st, padding=pads,
                 dilation=int_tuple(dilation, dim, "dilation"), ceil_mode=bool(ceil_mode))
    y = unbatch(_emit("max_pool", x, **attrs), squeeze)
    if return_indices:
        return y, unbatch(_max_indices(x, name, **attrs), squeeze)
    return y


def max_pool1d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False) -> Tensor:
    return max_pool(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices,
                    dim=1)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False) -> Tensor:
    return max_pool(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices,
                    dim=2)


def max_pool3d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False) -> Tensor:
    return max_pool(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices,
                    dim=3)


def avg_pool(input, kernel_size, stride=None, padding=0, ceil_mode=False,
             count_include_pad=True, divisor_override=None, *, dim: int) -> Tensor:
    """Average pooling with PyTorch's divisor rules (count_include_pad, divisor_override)."""
    name = f"avg_pool{dim}d"
    x, squeeze = batched_input(input, dim, name)
    k, st, pads = _pool_args(kernel_size, stride, padding, dim, name)
    y = _emit("avg_pool", x, kernel_size=k, stride=st, padding=pads, ceil_mode=bool(ceil_mode),
              count_include_pad=bool(count_include_pad), divisor_override=divisor_override)
    return unbatch(y, squeeze)


def avg_pool1d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True) -> Tensor:
    return avg_pool(input, kernel_size, stride, padding, ceil_mode, count_include_pad, dim=1)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None) -> Tensor:
    return avg_pool(input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                    divisor_override, dim=2)


def avg_pool3d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None) -> Tensor:
    return avg_pool(input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                    divisor_override, dim=3)


def lp_pool(input, norm_type: float, kernel_size, stride=None, ceil_mode=False, *,
            dim: int) -> Tensor:
    """PyTorch's LPPool: (avg_pool(x^p) * prod(kernel))^(1/p), so a full window gives
    (sum x^p)^(1/p) (p = 2: L2 pooling of section 9.3). A window of zeros passes no
    gradient back, as torch's (whose relu there stops the infinite slope of z^(1/p) at 0):
    without that, any all-zero window would put NaN into the input's gradient. p = +inf
    is the max of |x| over the window, p = -inf its min (torch's special cases)."""
    k = int_tuple(kernel_size, dim, "kernel_size")
    x = F.as_tensor(input)
    p = float(norm_type)
    if math.isinf(p):
        sign = 1.0 if p > 0 else -1.0
        m = max_pool(F.mul(F.abs(x), sign), k, stride, 0, 1, ceil_mode, dim=dim)
        return m if p > 0 else F.neg(m)
    s = avg_pool(F.pow(x, p), k, stride, 0, ceil_mode, dim=dim)
    s = F.where(F.ne(s, 0), s, 0.0)
    return F.pow(F.mul(s, float(math.prod(k))), 1.0 / p)


def lp_pool1d(input, norm_type, kernel_size, stride=None, ceil_mode=False) -> Tensor:
    return lp_pool(input, norm_type, kernel_size, stride, ceil_mode, dim=1)


def lp_pool2d(input, norm_type, kernel_size, stride=None, ceil_mode=False) -> Tensor:
    return lp_pool(input, norm_type, kernel_size, stride, ceil_mode, dim=2)


def lp_pool3d(input, norm_type, kernel_size, stride=None, ceil_mode=False) -> Tensor:
    return lp_pool(input, norm_type, kernel_size, stride, ceil_mode, dim=3)


# ---------------------------------------------------------------- adaptive and global
def _adaptive(op: str, input, output_size, dim: int, return_indices: bool = False):
    x, squeeze = batched_input(input, dim, f"{op}{dim}d")
    if isinstance(output_size, (int, np.integer)) or output_size is None:
        output_size = (output_size,) * dim
    size = tuple(x.shape[2 + i] if s is None else int(s)
                 for i, s in enumerate(_fill(output_size, dim)))
    y = unbatch(_emit(op, x, output_size=size), squeeze)
    if return_indices:
        return y, unbatch(_max_indices(x, f"{op}{dim}d", "adaptive_max_pool_select",
                                        output_size=size), squeeze)
    return y


def _fill(sizes, d: int):
    sizes = tuple(sizes)
    if len(sizes) != d:
        raise ValueError(f"output_size must be an int or {d} sizes, got {list(sizes)}")
    return sizes


def adaptive_avg_pool1d(input, output_size) -> Tensor:
    return _adaptive("adaptive_avg_pool", input, output_size, 1)


def adaptive_avg_pool2d(input, output_size) -> Tensor:
    return _adaptive("adaptive_avg_pool", input, output_size, 2)


def adaptive_avg_pool3d(input, output_size) -> Tensor:
    return _adaptive("adaptive_avg_pool", input, output_size, 3)


def adaptive_max_pool1d(input, output_size, return_indices=False) -> Tensor:
    return _adaptive("adaptive_max_pool", input, output_size, 1, return_indices)


def adaptive_max_pool2d(input, output_size, return_indices=False) -> Tensor:
    return _adaptive("adaptive_max_pool", input, output_size, 2, return_indices)


def adaptive_max_pool3d(input, output_size, return_indices=False) -> Tensor:
    return _adaptive("adaptive_max_pool", input, output_size, 3, return_indices)


def global_avg_pool(input, keepdim: bool = False) -> Tensor:
    """Average over every spatial position (fig. 9.11 right): (N, C, *S) -> (N, C)."""
    x = F.as_tensor(input)
    if x.ndim < 3:
        raise ValueError(f"global_avg_pool expects (N, C, *spatial), got shape {x.shape}")
    return F.mean(x, tuple(range(2, x.ndim)), keepdim)


def maxout(input, pool_size: int, dim: int = 1) -> Tensor:
    """Maximum over groups of ``pool_size`` consecutive channels (fig. 9.9): output channel
    j = max of input channels j*k .. j*k+k-1."""
    x = F.as_tensor(input)
    ax = dim % x.ndim
    c = x.shape[ax]
    if pool_size < 1 or c % pool_size:
        raise ValueError(f"maxout: pool_size {pool_size} must divide the {c} channels of "
                         f"axis {dim}")
    grouped = F.reshape(x, x.shape[:ax] + (c // pool_size, pool_size) + x.shape[ax + 1:])
    return F.amax(grouped, ax + 1)


# ---------------------------------------------------------------- batch normalization
def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5) -> Tensor:
    """Batch normalization over axis 1 (eq. 8.35-8.37). In training mode with running
    statistics that are module buffers, their updated values are recorded as state updates
    (``tracer.update_state``), as PyTorch updates them in place."""
    if momentum is None:
        raise NotImplementedError("batch_norm(momentum=None) (a cumulative average) is not "
                                  "supported; give a number")
    if (running_mean is None or running_var is None) and not training:
        raise ValueError("batch_norm in inference mode needs running_mean and running_var")
    y, new_mean, new_var = _batch_norm_op(input, running_mean, running_var, weight, bias,
                                          training, momentum, eps)
    if training:
        for buf, new in ((running_mean, new_mean), (running_var, new_var)):
            if is_buffer(buf):
                y.tracer.update_state(buf, new)
    return y


def batch_norm_stats(input, running_mean, running_var, weight, bias, eps):
    """Training-mode batch normalization that returns (y, batch mean, unbiased batch
    variance) and records no state update (the caller averages them: momentum=None).
    With momentum 1 the op's "running averages" are the batch statistics themselves."""
    return _batch_norm_op(input, running_mean, running_var, weight, bias, True, 1.0, eps)


def _batch_norm_op(input, running_mean, running_var, weight, bias, training, momentum, eps):
    """The ``batch_norm`` node: (y, new running mean, new running variance); missing
    statistics or affine parameters are the neutral ones."""
    x = F.as_tensor(input)
    if x.ndim < 2:
        raise ValueError(f"batch_norm expects (N, C, ...) input, got shape {x.shape}")
    c = x.shape[1]

    given = [v for v in (weight, bias, running_mean, running_var) if v is not None]
    if x.dtype in LOW_DTYPES and given and all(F.as_tensor(v).dtype == "float32"
                                               for v in given):
        # torch's mixed form (autocast's): a 16-bit input with float32 parameters and
        # statistics normalizes in float32, keeps the statistics in float32 and rounds y once
        y, mean, var = _batch_norm_op(F.cast(x, "float32"), running_mean, running_var, weight,
                                      bias, training, momentum, eps)
        return F.cast(y, x.dtype), mean, var

    def given_or(v, fill: float) -> Tensor:
        return F.as_tensor(_np_full(c, fill, x) if v is None else v, x)
    rm, rv = given_or(running_mean, 0.0), given_or(running_var, 1.0)
    g, b = given_or(weight, 1.0), given_or(bias, 0.0)
    return _emit("batch_norm", x, g, b, rm, rv, training=bool(training), eps=float(eps),
                 momentum=float(momentum), axis=1)


def is_buffer(v) -> bool:
    """A module's Parameter/buffer (not a traced tensor, not a plain array)."""
    return (v is not None and not isinstance(v, Tensor) and hasattr(v, "requires_grad")
            and isinstance(getattr(v, "data", None), np.ndarray))


def _np_full(c: int, value: float, like: Tensor):
    return np.full((c,), value, like.type.np_dtype)
