"""``frontend.F`` convolution, pooling and batch-norm functions, with ``torch.nn.functional``'s
names, argument order and semantics (re-exported by functional.py).

Beyond PyTorch: ``padding`` of a convolution also takes the text's ``"full"`` (section 9.5)
and explicit per-side pads ``(before_0, after_0, before_1, after_1, ...)``; biases may be
per channel (O,), per output location (O, *out) or, for tiled convolution, per tile (O, *t);
``locally_connected`` (eq. 9.9), ``tiled_conv`` (eq. 9.10), ``conv_fft`` and
``conv_separable`` (section 9.8), ``global_avg_pool`` and ``maxout`` (fig. 9.9).
Inputs may be unbatched (C, *spatial) as in PyTorch.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from irgraph.ops.conv_geometry import out_size, repeat_tiles

from . import functional_core as F
from .functional_core import emit_op as _emit
from .tracing import Tensor

__all__ = ["conv", "conv1d", "conv2d", "conv3d", "conv_transpose", "conv_transpose1d",
           "conv_transpose2d", "conv_transpose3d", "conv_fft", "conv_separable", "unfold", "fold",
           "locally_connected", "tiled_conv"]


# ---------------------------------------------------------------- argument normalization
def int_tuple(v, d: int, name: str) -> tuple[int, ...]:
    """An int, or a sequence of d ints (torch's ``_single/_pair/_triple``)."""
    if isinstance(v, (int, np.integer)):
        return (int(v),) * d
    v = tuple(int(a) for a in v)
    if len(v) == 1:
        return v * d
    if len(v) != d:
        raise ValueError(f"{name} must be an int or {d} ints, got {list(v)}")
    return v


def conv_padding(padding, d: int, kernel, dilation, stride) -> tuple[int, ...]:
    """Per-side pads from an int, d ints (symmetric), 2d ints (per side) or a string:
    ``"valid"`` (m-k+1), ``"same"`` (m; the extra pad of an even kernel on the right, as
    PyTorch and TF) or ``"full"`` (m+k-1) of section 9.5."""
    if isinstance(padding, str):
        span = [dl * (k - 1) for k, dl in zip(kernel, dilation)]
        if padding == "valid":
            return (0,) * 2 * d
        if padding == "same":
            if any(s != 1 for s in stride):
                raise ValueError("padding='same' is not supported for strided convolutions "
                                 "(as in PyTorch); give the pads explicitly")
            return tuple(p for s in span for p in (s // 2, s - s // 2))
        if padding == "full":
            return tuple(p for s in span for p in (s, s))
        raise ValueError(f"padding must be 'valid', 'same', 'full', an int or ints, "
                         f"got {padding!r}")
    if not isinstance(padding, (int, np.integer)) and len(tuple(padding)) == 2 * d:
        return tuple(int(p) for p in padding)
    return tuple(p for p in int_tuple(padding, d, "padding") for _ in (0, 1))


def batched_input(x, d: int, name: str) -> tuple[Tensor, bool]:
    """(N, C, *spatial) input; an unbatched (C, *spatial) one gets a batch axis of 1."""
    x = F.as_tensor(x)
    if x.ndim == d + 1:
        return F.unsqueeze(x, 0), True
    if x.ndim != d + 2:
        raise ValueError(f"{name} expects a ({d + 1}-D unbatched or {d + 2}-D batched) input "
                         f"(N, C, {d} spatial), got shape {x.shape}")
    return x, False


def unbatch(y: Tensor, squeeze: bool) -> Tensor:
    """The result of a ``batched_input``: its batch axis of 1 dropped again if it was added."""
    return F.squeeze(y, 0) if squeeze else y


def add_bias(y: Tensor, bias, tiles: Sequence[int] | None = None) -> Tensor:
    """Add a bias per channel (O,), per output location (O, *out) or, with ``tiles``, per
    tile (O, *t): location j uses bias j mod t (end of section 9.5)."""
    if bias is None:
        return y
    b = F.as_tensor(bias, y)
    o, out = y.shape[1], y.shape[2:]
    if b.shape == (o,):
        return F.add(y, F.reshape(b, (1, o) + (1,) * len(out)))
    if tiles is not None and b.shape == (o,) + tuple(tiles):
        b = repeat_tiles(b.tracer.emit, b, 1, out)
    if b.shape == (o,) + tuple(out):
        return F.add(y, F.reshape(b, (1,) + b.shape))
    raise ValueError(f"bias of shape {b.shape} fits neither a channel bias ({o},) nor a "
                     f"location bias {(o,) + tuple(out)}"
                     + (f" nor a tile bias {(o,) + tuple(tiles)}" if tiles else ""))


def _rank(v) -> int:
    """Rank of a tensor, parameter or array, without adding a node to the trace."""
    return len(v.shape) if hasattr(v, "shape") else np.ndim(v)


def _weight(w, x: Tensor, name: str, rank: int) -> Tensor:
    w = F.as_tensor(w, x)
    if w.ndim != rank:
        raise ValueError(f"{name}: weight must have {rank} dimensions, got shape {w.shape}")
    return w


# ---------------------------------------------------------------- convolution
def conv(input, weight, bias=None, stride=1, padding=0, dilation=1, groups: int = 1, *,
         dim: int | None = None, op: str = "conv") -> Tensor:
    """N-d convolution (cross-correlation, eq. 9.6-9.8); ``dim`` spatial axes (default from
    the weight). ``op="conv_fft"`` computes it by FFT."""
    d = dim if dim is not None else _rank(weight) - 2
    x, squeeze = batched_input(input, d, f"conv{d}d")
    w = _weight(weight, x, f"conv{d}d", d + 2)
    k = w.shape[2:]
    st, dl = int_tuple(stride, d, "stride"), int_tuple(dilation, d, "dilation")
    pads = conv_padding(padding, d, k, dl, st)
    y = _emit(op, x, w, stride=st, padding=pads, dilation=dl, groups=groups)
    return unbatch(add_bias(y, bias), squeeze)


def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> Tensor:
    return conv(input, weight, bias, stride, padding, dilation, groups, dim=1)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> Tensor:
    return conv(input, weight, bias, stride, padding, dilation, groups, dim=2)


def conv3d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> Tensor:
    return conv(input, weight, bias, stride, padding, dilation, groups, dim=3)


def conv_fft(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> Tensor:
    """The same function as ``conv`` computed with FFTs (section 9.8)."""
    return conv(input, weight, bias, stride, padding, dilation, groups, op="conv_fft")


def conv_separable(input, vectors: Sequence, bias=None, stride=1, padding=0,
                   dilation=1) -> Tensor:
    """Convolution with the separable kernel K[o, c, i, j, ...] = v0[o, c, i] v1[o, j] ...
    (section 9.8), run as d one-dimensional convolutions: v0 (O, C, k0) mixes channels along
    axis 0, each further v_i (O, k_i) is a per-channel (depthwise) pass along axis i."""
    d = len(vectors)
    x, squeeze = batched_input(input, d, "conv_separable")
    vs = [F.as_tensor(v, x) for v in vectors]
    if vs[0].ndim != 3 or any(v.ndim != 2 or v.shape[0] != vs[0].shape[0] for v in vs[1:]):
        raise ValueError(f"conv_separable needs v0 (O, C, k0) and v_i (O, k_i), got "
                         f"{[v.shape for v in vs]}")
    o = vs[0].shape[0]
    k = tuple(v.shape[-1] for v in vs)
    st, dl = int_tuple(stride, d, "stride"), int_tuple(dilation, d, "dilation")
    pads = conv_padding(padding, d, k, dl, st)
    y = x
    for i, v in enumerate(vs):
        shape = [1] * d
        shape[i] = k[i]
        w = F.reshape(v, v.shape[:-1] + (1,) * (i > 0) + tuple(shape))
        one = [1] * d
        s_i, d_i, p_i = list(one), list(one), [0] * 2 * d
        s_i[i], d_i[i], p_i[2 * i:2 * i + 2] = st[i], dl[i], pads[2 * i:2 * i + 2]
        y = _emit("conv", y, w, stride=tuple(s_i), padding=tuple(p_i), dilation=tuple(d_i),
                  groups=1 if i == 0 else o)
    return unbatch(add_bias(y, bias), squeeze)


def transposed_output_size(in_size, kernel, stride, pads, dilation, output_padding):
    """PyTorch's ConvTranspose size: (in-1) s - pad_before - pad_after + d (k-1) + op + 1."""
    return tuple((n - 1) * s - pads[2 * i] - pads[2 * i + 1] + dl * (k - 1) + op + 1
                 for i, (n, k, s, dl, op) in enumerate(zip(in_size, kernel, stride, dilation,
                                                           output_padding)))


def conv_transpose(input, weight, bias=None, stride=1, padding=0, output_padding=0,
                   groups: int = 1, dilation=1, *, output_size=None,
                   dim: int | None = None) -> Tensor:
    """Transposed convolution: h of eq. 9.13 (``conv_input_grad``) with weight
    (C_in, C_out/groups, *k). Several output sizes map to the same input under the strided
    convolution; ``output_padding`` or ``output_size`` picks one (as PyTorch)."""
    d = dim if dim is not None else _rank(weight) - 2
    x, squeeze = batched_input(input, d, f"conv_transpose{d}d")
    w = _weight(weight, x, f"conv_transpose{d}d", d + 2)
    if w.shape[0] != x.shape[1]:
        raise ValueError(f"conv_transpose{d}d: weight {w.shape} needs {w.shape[0]} input "
                         f"channels, input has {x.shape[1]}")
    k = w.shape[2:]
    st, dl = int_tuple(stride, d, "stride"), int_tuple(dilation, d, "dilation")
    pads = conv_padding(padding, d, k, dl, st)
    if output_size is not None:
        output_padding = _output_padding(x.shape[2:], output_size, k, st, pads, dl)
    op = int_tuple(output_padding, d, "output_padding")
    if any(p >= max(s, q) or p < 0 for p, s, q in zip(op, st, dl)):
        raise ValueError(f"output_padding {list(op)} must be >= 0 and smaller than either "
                         f"stride {list(st)} or dilation {list(dl)}")
    size = transposed_output_size(x.shape[2:], k, st, pads, dl, op)
    if any(n < 1 for n in size):
        raise ValueError(f"conv_transpose{d}d: input {x.shape} with kernel {list(k)}, stride "
                         f"{list(st)} and padding {list(pads)} gives output size {list(size)}: "
                         f"too small")
    # a convolution over `size` may see more positions than x has (output_padding >= stride
    # with a larger dilation): those positions carry zero gradient
    need = tuple(out_size(n, kk, s, pads[2 * i], pads[2 * i + 1], q)
                 for i, (n, kk, s, q) in enumerate(zip(size, k, st, dl)))
    extra = [m - n for m, n in zip(need, x.shape[2:])]
    if any(extra):
        x = _emit("pad", x, pads=(0, 0, 0, 0) + tuple(p for e in extra for p in (0, e)))
    y = _emit("conv_input_grad", w, x, input_size=size, stride=st, padding=pads,
              dilation=dl, groups=groups)
    return unbatch(add_bias(y, bias), squeeze)


def _output_padding(in_size, output_size, kernel, stride, pads, dilation) -> tuple[int, ...]:
    d = len(in_size)
    want = tuple(output_size)[-d:]
    if len(want) != d:
        raise ValueError(f"output_size {list(output_size)} needs {d} spatial sizes")
    least = transposed_output_size(in_size, kernel, stride, pads, dilation, (0,) * d)
    for w, lo, s in zip(want, least, stride):
        if not lo <= w <= lo + s - 1:
            raise ValueError(f"requested output size {list(want)} is not in the range "
                             f"{list(least)} to {[m + s - 1 for m, s in zip(least, stride)]} "
                             f"that input {list(in_size)} can give")
    return tuple(w - lo for w, lo in zip(want, least))


def conv_transpose1d(input, weight, bias=None, stride=1, padding=0, output_padding=0,
                     groups=1, dilation=1, output_size=None) -> Tensor:
    return conv_transpose(input, weight, bias, stride, padding, output_padding, groups,
                          dilation, output_size=output_size, dim=1)


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0,
                     groups=1, dilation=1, output_size=None) -> Tensor:
    return conv_transpose(input, weight, bias, stride, padding, output_padding, groups,
                          dilation, output_size=output_size, dim=2)


def conv_transpose3d(input, weight, bias=None, stride=1, padding=0, output_padding=0,
                     groups=1, dilation=1, output_size=None) -> Tensor:
    return conv_transpose(input, weight, bias, stride, padding, output_padding, groups,
                          dilation, output_size=output_size, dim=3)


def unfold(input, kernel_size, dilation=1, padding=0, stride=1) -> Tensor:
    """``torch.nn.functional.unfold`` (any number of spatial axes): (N, C*prod(k), L). As
    torch, a 3-D input with a 2-D (or int) kernel is one unbatched image (C, H, W) and gives
    (C*prod(k), L); a 1-tuple kernel takes it as (N, C, L)."""
    x = F.as_tensor(input)
    if x.ndim == 3 and (isinstance(kernel_size, (int, np.integer)) or len(kernel_size) == 2):
        return unfold(F.unsqueeze(x, 0), kernel_size, dilation, padding, stride)[0]
    d = x.ndim - 2
    k = int_tuple(kernel_size, d, "kernel_size")
    cols = _emit("unfold", x, kernel_size=k, stride=int_tuple(stride, d, "stride"),
                 padding=conv_padding(padding, d, k, int_tuple(dilation, d, "dilation"),
                                      (1,) * d),
                 dilation=int_tuple(dilation, d, "dilation"))
    # the block count L spelled out: a -1 would be ambiguous for an empty batch
    return F.reshape(cols, (x.shape[0], x.shape[1] * math.prod(k),
                               math.prod(cols.shape[2 + d:])))


def fold(input, output_size, kernel_size, dilation=1, padding=0, stride=1) -> Tensor:
    """``torch.nn.functional.fold``: sums (N, C*prod(k), L) windows into (N, C, *output_size)."""
    x = F.as_tensor(input)
    size = tuple(output_size) if not isinstance(output_size, (int, np.integer)) \
        else (int(output_size),) * 2
    d = len(size)
    k, st, dl = (int_tuple(kernel_size, d, "kernel_size"), int_tuple(stride, d, "stride"),
                 int_tuple(dilation, d, "dilation"))
    pads = conv_padding(padding, d, k, dl, (1,) * d)
    out = tuple(out_size(n, kk, s, pads[2 * i], pads[2 * i + 1], q)
                for i, (n, kk, s, q) in enumerate(zip(size, k, st, dl)))
    kk = math.prod(k)
    if x.ndim == 2:                     # unbatched (C*prod(k), L), as torch
        return fold(F.unsqueeze(x, 0), output_size, kernel_size, dilation, padding, stride)[0]
    if x.ndim != 3 or x.shape[1] % kk or x.shape[2] != math.prod(out):
        raise ValueError(f"fold: input {x.shape} must be (N, C*{kk}, {math.prod(out)}) for "
                         f"output {list(size)} and kernel {list(k)}")
    cols = F.reshape(x, (x.shape[0], x.shape[1] // kk) + k + out)
    return _emit("fold", cols, output_size=size, kernel_size=k, stride=st, padding=pads,
                 dilation=dl)


def locally_connected(input, weight, bias=None, stride=1, padding=0, dilation=1) -> Tensor:
    """Unshared convolution (eq. 9.9): weight (O, *out, C, *k), one kernel per location."""
    d = (_rank(weight) - 2) // 2
    x, squeeze = batched_input(input, d, "locally_connected")
    w = _weight(weight, x, "locally_connected", 2 * d + 2)
    k = w.shape[2 + d:]
    st, dl = int_tuple(stride, d, "stride"), int_tuple(dilation, d, "dilation")
    y = _emit("locally_connected", x, w, stride=st, padding=conv_padding(padding, d, k, dl, st),
              dilation=dl)
    return unbatch(add_bias(y, bias), squeeze)


def tiled_conv(input, weight, bias=None, stride=1, padding=0, dilation=1) -> Tensor:
    """Tiled convolution (eq. 9.10): weight (O, C, *k, *t); bias per channel, location or
    tile."""
    d = (_rank(weight) - 2) // 2
    x, squeeze = batched_input(input, d, "tiled_conv")
    w = _weight(weight, x, "tiled_conv", 2 * d + 2)
    k, t = w.shape[2:2 + d], w.shape[2 + d:]
    st, dl = int_tuple(stride, d, "stride"), int_tuple(dilation, d, "dilation")
    y = _emit("tiled_conv", x, w, stride=st, padding=conv_padding(padding, d, k, dl, st),
              dilation=dl)
    return unbatch(add_bias(y, bias, tiles=t), squeeze)
