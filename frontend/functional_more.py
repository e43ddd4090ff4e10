"""``frontend.F`` functions composed of the others, with ``torch.nn.functional``'s names and
arguments: local response normalization, max unpooling (the inverse of the max pools'
``return_indices``), the bilinear form, pairwise distances within a set, embedding bags
(re-exported by functional.py)."""
from __future__ import annotations

import numpy as np

from . import functional_core as F
from .functional_conv import int_tuple
from .functional_distance import vector_norm
from .functional_index import embedding, padding_index, scatter_add
from .functional_pool import max_pool
from .functional_tensor import detach, einsum
from .tracing import Tensor

__all__ = ["local_response_norm", "max_unpool1d", "max_unpool2d", "max_unpool3d",
           "max_pool1d_with_indices", "max_pool2d_with_indices", "max_pool3d_with_indices",
           "bilinear", "pdist", "embedding_bag"]


def local_response_norm(input, size: int, alpha: float = 1e-4, beta: float = 0.75,
                        k: float = 1.0) -> Tensor:
    """x_c / (k + alpha / size * sum_{c'} x_{c'}^2)^beta over the ``size`` channels
    c - size // 2 .. c + (size - 1) // 2 (zeros past the edges), as torch's."""
    x = F.as_tensor(input)
    if x.ndim < 3:
        raise ValueError(f"local_response_norm: expected an input of 3 or more dimensions "
                         f"(N, C, ...), got {tuple(x.shape)}")
    if int(size) < 1:
        raise ValueError(f"local_response_norm: size must be at least 1, got {size}")
    size, C = int(size), x.shape[1]
    sq = x * x
    pads = [0, 0] * x.ndim
    pads[2], pads[3] = size // 2, (size - 1) // 2
    padded = F.emit_op("pad", sq, pads=tuple(pads), value=0.0, mode="constant")
    total = None
    for j in range(size):
        part = padded[:, j:j + C]
        total = part if total is None else total + part
    return x / F.pow(total * (float(alpha) / size) + float(k), float(beta))


def _max_unpool(input, indices, kernel_size, stride, padding, output_size, dim: int) -> Tensor:
    name = f"max_unpool{dim}d"
    x, idx = F.as_tensor(input), F.as_tensor(indices)
    if x.ndim not in (dim + 1, dim + 2):
        raise ValueError(f"{name}: expected a {dim + 1}-D or {dim + 2}-D input, got "
                         f"{tuple(x.shape)}")
    if tuple(idx.shape) != tuple(x.shape):
        raise ValueError(f"{name}: indices {tuple(idx.shape)} must have the input's shape "
                         f"{tuple(x.shape)}")
    if idx.dtype not in ("int32", "int64"):
        raise TypeError(f"{name}: indices must be an integer tensor, got {idx.dtype}")
    k = int_tuple(kernel_size, dim, "kernel_size")
    st = k if stride is None else int_tuple(stride, dim, "stride")
    pad = int_tuple(padding, dim, "padding")
    spatial = tuple(x.shape[-dim:])
    default = tuple((i - 1) * s - 2 * p + kk for i, s, p, kk in zip(spatial, st, pad, k))
    if output_size is None:
        out = default
    else:
        out = tuple(int(v) for v in output_size)
        if len(out) == dim + (x.ndim - dim):
            out = out[-dim:]
        if len(out) != dim:
            raise ValueError(f"{name}: output_size must have {dim} (or {x.ndim}) elements, "
                             f"got {tuple(output_size)}")
        for o, d, s in zip(out, default, st):
            if not d - s < o < d + s:
                raise ValueError(f"{name}: output_size {out} must lie between "
                                 f"{tuple(a - b for a, b in zip(default, st))} and "
                                 f"{tuple(a + b for a, b in zip(default, st))} (exclusive)")
    lead = tuple(x.shape[:-dim])
    plane = int(np.prod(out))
    flat_x = F.reshape(x, lead + (int(np.prod(spatial)),))
    flat_i = F.cast(F.reshape(idx, lead + (int(np.prod(spatial)),)), "int64")
    zeros = x.tracer.emit("full", shape=lead + (plane,), value=0.0, dtype=x.dtype)
    axis = x.ndim - dim
    # overlapping windows can pick one input twice (the same value at the same index): torch
    # writes it once. The sum of the values written at a position over their count is that
    # value; its gradient is the sum's (each index reads the output's gradient, as torch's)
    total = scatter_add(zeros, axis, flat_i, flat_x)
    ones = x.tracer.emit("full", shape=tuple(flat_x.shape), value=1.0, dtype=x.dtype)
    count = scatter_add(zeros, axis, flat_i, ones)
    mean = total / F.maximum(count, 1.0)
    y = detach(mean - total) + total
    return F.reshape(y, lead + out)


def max_unpool1d(input, indices, kernel_size, stride=None, padding=0,
                 output_size=None) -> Tensor:
    """The max pool's inverse: each value written at its index in a zero plane of
    ``output_size`` (default (in - 1) stride - 2 padding + kernel); an index that several
    windows chose is written once, as torch's."""
    return _max_unpool(input, indices, kernel_size, stride, padding, output_size, 1)


def max_unpool2d(input, indices, kernel_size, stride=None, padding=0,
                 output_size=None) -> Tensor:
    return _max_unpool(input, indices, kernel_size, stride, padding, output_size, 2)


def max_unpool3d(input, indices, kernel_size, stride=None, padding=0,
                 output_size=None) -> Tensor:
    return _max_unpool(input, indices, kernel_size, stride, padding, output_size, 3)


def max_pool1d_with_indices(input, kernel_size, stride=None, padding=0, dilation=1,
                            ceil_mode=False, return_indices=True):
    return max_pool(input, kernel_size, stride, padding, dilation, ceil_mode, True, dim=1)


def max_pool2d_with_indices(input, kernel_size, stride=None, padding=0, dilation=1,
                            ceil_mode=False, return_indices=True):
    return max_pool(input, kernel_size, stride, padding, dilation, ceil_mode, True, dim=2)


def max_pool3d_with_indices(input, kernel_size, stride=None, padding=0, dilation=1,
                            ceil_mode=False, return_indices=True):
    return max_pool(input, kernel_size, stride, padding, dilation, ceil_mode, True, dim=3)


def bilinear(input1, input2, weight, bias=None) -> Tensor:
    """y[..., o] = sum_ij x1[..., i] W[o, i, j] x2[..., j] + b[o]."""
    x1, x2, w = F.as_tensor(input1), F.as_tensor(input2), F.as_tensor(weight)
    if w.ndim != 3 or x1.shape[-1] != w.shape[1] or x2.shape[-1] != w.shape[2]:
        raise ValueError(f"bilinear: weight {tuple(w.shape)} must be (out, {x1.shape[-1]}, "
                         f"{x2.shape[-1]}) for inputs {tuple(x1.shape)} and {tuple(x2.shape)}")
    if tuple(x1.shape[:-1]) != tuple(x2.shape[:-1]):
        raise ValueError(f"bilinear: inputs {tuple(x1.shape)} and {tuple(x2.shape)} must agree "
                         f"but in their last dimension")
    y = einsum("...i,oij,...j->...o", x1, w, x2)
    return y if bias is None else y + bias


def pdist(input, p: float = 2.0) -> Tensor:
    """The p-norm distances between the rows of an (N, M) input, pairs i < j in row-major
    order: N (N - 1) / 2 values."""
    x = F.as_tensor(input)
    if x.ndim != 2:
        raise ValueError(f"pdist: expected a 2-D input, got {tuple(x.shape)}")
    n = x.shape[0]
    i, j = np.triu_indices(n, 1)
    if len(i) == 0:
        return x.tracer.emit("full", shape=(0,), value=0.0, dtype=x.dtype)
    return vector_norm(x[i] - x[j], p, dim=1)


def embedding_bag(input, weight, offsets=None, max_norm=None, norm_type: float = 2.0,
                  scale_grad_by_freq: bool = False, mode: str = "mean", sparse: bool = False,
                  per_sample_weights=None, include_last_offset: bool = False,
                  padding_idx: int | None = None) -> Tensor:
    """``torch.nn.functional.embedding_bag``: the sum, mean or max of each bag of rows of
    ``weight`` (num, dim). Bags: the rows of a 2-D ``input``, or the runs of a 1-D one that
    start at ``offsets`` (``include_last_offset``: the last offset ends the last bag, else it
    runs to the end). ``per_sample_weights`` scale each row (mode "sum"); entries equal to
    ``padding_idx`` are left out of their bag (and of its mean's count); an empty bag gives
    zeros. A 1-D input's bags are a (bags x entries) membership mask built from the offsets
    at run time, so the sums are one matrix product."""
    if max_norm is not None or scale_grad_by_freq or sparse:
        raise NotImplementedError("embedding_bag: max_norm, scale_grad_by_freq and sparse "
                                  "gradients are not supported")
    if mode not in ("sum", "mean", "max"):
        raise ValueError(f"embedding_bag: mode must be 'sum', 'mean' or 'max', got {mode!r}")
    if per_sample_weights is not None and mode != "sum":
        raise ValueError(f"embedding_bag: per_sample_weights is only supported for "
                         f"mode='sum' (got mode={mode!r})")
    w = F.as_tensor(weight)
    idx = F.as_tensor(input)
    if idx.ndim == 2:
        if offsets is not None:
            raise ValueError("embedding_bag: if input is 2-D, offsets has to be None")
        rows = embedding(idx, w)                                  # (B, N, D)
        member = None
    elif idx.ndim == 1:
        if offsets is None:
            raise ValueError("embedding_bag: a 1-D input needs offsets (a 1-D tensor)")
        off = F.as_tensor(offsets)
        if off.ndim != 1 or off.type.is_float:
            raise ValueError(f"embedding_bag: offsets must be a 1-D integer tensor, got "
                             f"{off.type}")
        n = idx.shape[0]
        bags = off.shape[0] - (1 if include_last_offset else 0)
        if bags < 0:
            raise ValueError("embedding_bag: include_last_offset needs at least one offset")
        starts = F.slice_axes(off, [0], [bags], [1])
        if include_last_offset:
            ends = F.slice_axes(off, [1], [bags + 1], [1])
        else:
            ends = F.cat([F.slice_axes(off, [1], [bags], [1]),
                          F.as_tensor(np.array([n], off.type.np_dtype))], 0)
        pos = F.as_tensor(np.arange(n, dtype=off.type.np_dtype)[None, :])
        member = F.logical_and(F.le(F.unsqueeze(starts, 1), pos),
                               F.lt(pos, F.unsqueeze(ends, 1)))   # (B, N)
        rows = embedding(idx, w)                                  # (N, D)
    else:
        raise ValueError(f"embedding_bag: input must be 1-D (with offsets) or 2-D, got "
                         f"{idx.type}")
    keep = None
    if padding_idx is not None:
        keep = F.ne(idx, padding_index(padding_idx, w.shape[0]))
    if member is None:
        member = keep
    elif keep is not None:
        member = F.logical_and(member, F.unsqueeze(keep, 0))
    if per_sample_weights is not None:
        psw = F.as_tensor(per_sample_weights, w)
        if tuple(psw.shape) != tuple(idx.shape):
            raise ValueError(f"embedding_bag: per_sample_weights {list(psw.shape)} must have "
                             f"the input's shape {list(idx.shape)}")
        rows = F.mul(rows, F.unsqueeze(F.cast(psw, w.dtype), -1))
    two_d = idx.ndim == 2
    if member is None:                                  # 2-D, every entry counted
        count = F.as_tensor(np.array(float(idx.shape[1]), w.type.np_dtype))
        mask = None
    else:
        mask = F.cast(member, w.dtype)
        count = F.sum(mask, -1, keepdim=True)
    if mode == "max":
        wide = rows if two_d else F.unsqueeze(rows, 0)
        if member is not None:
            m = F.unsqueeze(member, -1)
            wide = F.where(m, wide, F.as_tensor(np.array(-np.inf, w.type.np_dtype)))
        out = F.amax(wide, 1)
        return out if member is None else F.where(F.gt(count, 0.0), out, 0.0)
    if two_d:
        total = F.sum(rows if mask is None else F.mul(rows, F.unsqueeze(mask, -1)), 1)
    else:
        total = F.matmul(mask, rows)
    if mode == "sum":
        return total
    return F.div(total, F.maximum(count, F.as_tensor(np.array(1.0, w.type.np_dtype))))
