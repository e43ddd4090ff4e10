"""Convolution ops (chapter 9): the three operations of section 9.5 and their relatives.

* ``conv(x, w)``: N-d cross-correlation c(K, V, s) (eq. 9.6-9.8), x (N, C, *spatial),
  w (O, C/groups, *k), per-side zero padding, dilation, groups. Bias is a separate ``add``.
* ``conv_kernel_grad(x, gy)``: g(G, V, s) (eq. 9.11), the gradient with respect to the kernel.
* ``conv_input_grad(w, gy)``: h(K, G, s) (eq. 9.12-9.13), the gradient with respect to the
  input; ``input_size`` is explicit because several input sizes give the same output.
  Transposed convolution is this op (frontend ``F.conv_transpose*``).
* ``conv_fft``: the same function as ``conv`` computed with numpy.fft (section 9.8).
* ``unfold`` / ``fold``: the windows of an input (im2col) and their transpose (col2im).
* ``locally_connected(x, w)``: unshared convolution (eq. 9.9), w (O, *out, C, *k).
* ``tiled_conv(x, w)``: t kernels cycling in each direction (eq. 9.10), w (O, C, *k, *t).
"""
from __future__ import annotations

import numpy as np

from ..registry import Attr, Cost, a_int, a_ints, register_op
from ..types import TensorType
from .conv_geometry import (check_spatial, crop_spatial, out_shape, pad_spatial,
                            scatter_windows, windows)

_WINDOW = {"stride": Attr(a_ints), "padding": Attr(a_ints), "dilation": Attr(a_ints)}
_CONV = dict(_WINDOW, groups=Attr(a_int, 1))


def _prod(xs) -> int:
    return int(np.prod(xs, dtype=np.int64))


def _float_pair(a: TensorType, b: TensorType, what: str) -> None:
    if not a.is_float or a.dtype != b.dtype:
        raise ValueError(f"{what} needs float tensors of one dtype, got {a} and {b}")


def _check_groups(c: int, o: int, groups: int) -> None:
    if groups < 1 or c % groups or o % groups:
        raise ValueError(f"groups={groups} must divide both the input channels ({c}) and the "
                         f"output channels ({o})")


# ---------------------------------------------------------------- numpy kernels (shared)
def _cols(x, groups, kernel, stride, padding, dilation):
    """Windows of ``x`` as (N, G, P, Cg*K) rows (im2col), and the output spatial shape."""
    n, c = x.shape[:2]
    out = out_shape(x.shape[2:], kernel, stride, padding, dilation)
    win = windows(pad_spatial(x, padding), kernel, stride, dilation, out)
    d = len(kernel)
    win = win.reshape((n, groups, c // groups) + win.shape[2:])
    perm = (0, 1) + tuple(range(3, 3 + d)) + (2,) + tuple(range(3 + d, 3 + 2 * d))
    cols = win.transpose(perm).reshape(n, groups, _prod(out), (c // groups) * _prod(kernel))
    return cols, out


def _conv(x, w, *, stride, padding, dilation, groups):
    n, o, k = x.shape[0], w.shape[0], w.shape[2:]
    cols, out = _cols(x, groups, k, stride, padding, dilation)
    wm = w.reshape(groups, o // groups, _prod(w.shape[1:]))
    p, ck = cols.shape[2], cols.shape[3]
    # one 2-D matmul per group (BLAS): (N*P, Cg*K) @ (Cg*K, Og)
    y = np.stack([(cols[:, g].reshape(n * p, ck) @ wm[g].T).reshape(n, p, o // groups)
                  for g in range(groups)], axis=1)                 # (N, G, P, Og)
    return np.ascontiguousarray(y.transpose(0, 1, 3, 2)).reshape((n, o) + out)


def _conv_kernel_grad(x, gy, *, kernel_size, stride, padding, dilation, groups):
    o = gy.shape[1]
    cols, out = _cols(x, groups, kernel_size, stride, padding, dilation)
    # sizes spelled out (no -1): an empty batch gives zeros, a sum of nothing
    g = gy.reshape(gy.shape[0], groups, o // groups, _prod(gy.shape[2:]))  # (N, G, Og, P)
    dw = np.matmul(g, cols).sum(axis=0)                        # (G, Og, Cg*K)
    return dw.reshape((o, x.shape[1] // groups) + tuple(kernel_size))


def _conv_input_grad(w, gy, *, input_size, stride, padding, dilation, groups):
    n, o = gy.shape[:2]
    k, cg, d = w.shape[2:], w.shape[1], len(input_size)
    out = gy.shape[2:]
    g = gy.reshape(n, groups, o // groups, _prod(out)).transpose(0, 1, 3, 2)   # (N, G, P, Og)
    dcols = np.matmul(g, w.reshape(groups, o // groups, _prod(w.shape[1:]))[None])
    dcols = dcols.reshape((n, groups) + out + (cg,) + k)
    perm = (0, 1, 2 + d) + tuple(range(2, 2 + d)) + tuple(range(3 + d, 3 + 2 * d))
    dcols = dcols.transpose(perm).reshape((n, groups * cg) + out + k)
    padded = (n, groups * cg) + tuple(s + padding[2 * i] + padding[2 * i + 1]
                                      for i, s in enumerate(input_size))
    xp = scatter_windows(dcols, padded, k, stride, dilation)
    return np.ascontiguousarray(crop_spatial(xp, padding, input_size))


def _macs_cost(reduced_size):
    """Cost of an op whose every output sums ``reduced_size(ins, attrs)`` products: that many
    multiplications and one fewer additions (fig. 9.6: a 2-element kernel costs 3 flops)."""
    def cost(ins, outs, attrs) -> Cost:
        r = reduced_size(ins, attrs)
        return Cost(outs[0].size * (2 * r - 1), sum(t.nbytes for t in ins + outs))
    return cost


_conv_cost = _macs_cost(lambda i, a: _prod(i[1].shape[1:]))
_lc_cost = _macs_cost(lambda i, a: _prod(i[1].shape[i[0].rank - 1:]))
_tiled_cost = _macs_cost(lambda i, a: _prod(i[1].shape[1:i[0].rank]))


def _kernel_grad_cost(ins, outs, attrs) -> Cost:
    return Cost(2 * ins[1].size * _prod(outs[0].shape[1:]), sum(t.nbytes for t in ins + outs))


def _input_grad_cost(ins, outs, attrs) -> Cost:
    return Cost(2 * ins[1].size * _prod(ins[0].shape[1:]), sum(t.nbytes for t in ins + outs))


# ---------------------------------------------------------------- conv
@register_op("conv", traits={"autocast_low"}, attrs=_CONV, cost=_conv_cost)
def conv(x, w, *, stride, padding, dilation, groups):
    """Cross-correlation (eq. 9.6-9.7) with stride (eq. 9.8), padding, dilation, groups."""
    return _conv(x, w, stride=stride, padding=padding, dilation=dilation, groups=groups)


def conv_type(x: TensorType, w: TensorType, *, stride, padding, dilation, groups) -> TensorType:
    """The type rule of ``conv`` (also used by ``conv_fft``)."""
    _float_pair(x, w, "conv")
    if w.rank != x.rank:
        raise ValueError(f"weight {w} must be (O, C/groups, *kernel) for input {x}")
    check_spatial(x, "conv", kernel=w.shape[2:], stride=stride, padding=padding,
                  dilation=dilation)
    _check_groups(x.shape[1], w.shape[0], groups)
    if w.shape[1] * groups != x.shape[1]:
        raise ValueError(f"weight {w} has {w.shape[1]} input channels per group; input {x} "
                         f"with groups={groups} needs {x.shape[1] // groups}")
    out = out_shape(x.shape[2:], w.shape[2:], stride, padding, dilation)
    if any(s < 1 for s in out):
        raise ValueError(f"the (dilated) kernel {w} is larger than the padded input {x}")
    return TensorType((x.shape[0], w.shape[0]) + out, x.dtype)


conv.type_rule(conv_type)


@register_op("conv_kernel_grad", traits=(), attrs=dict(_CONV, kernel_size=Attr(a_ints)),
             cost=_kernel_grad_cost)
def conv_kernel_grad(x, gy, *, kernel_size, stride, padding, dilation, groups):
    """g(G, V, s) of eq. 9.11: dL/dw of ``conv`` given the input and the output gradient."""
    return _conv_kernel_grad(x, gy, kernel_size=kernel_size, stride=stride, padding=padding,
                             dilation=dilation, groups=groups)


@conv_kernel_grad.type_rule
def _(x, gy, *, kernel_size, stride, padding, dilation, groups):
    _float_pair(x, gy, "conv_kernel_grad")
    check_spatial(x, "conv_kernel_grad", kernel=kernel_size, stride=stride, padding=padding,
                  dilation=dilation)
    _check_groups(x.shape[1], gy.shape[1] if gy.rank > 1 else 0, groups)
    want = (x.shape[0], gy.shape[1]) + out_shape(x.shape[2:], kernel_size, stride, padding,
                                                 dilation)
    if gy.shape != want:
        raise ValueError(f"output gradient {gy} does not match the conv output {list(want)} "
                         f"of input {x} with kernel {list(kernel_size)}")
    return TensorType((gy.shape[1], x.shape[1] // groups) + tuple(kernel_size), x.dtype)


@register_op("conv_input_grad", traits=(), attrs=dict(_CONV, input_size=Attr(a_ints)),
             cost=_input_grad_cost)
def conv_input_grad(w, gy, *, input_size, stride, padding, dilation, groups):
    """h(K, G, s) of eq. 9.12-9.13: dL/dx of ``conv``; also transposed convolution."""
    return _conv_input_grad(w, gy, input_size=input_size, stride=stride, padding=padding,
                            dilation=dilation, groups=groups)


@conv_input_grad.type_rule
def _(w, gy, *, input_size, stride, padding, dilation, groups):
    _float_pair(w, gy, "conv_input_grad")
    if w.rank != gy.rank or w.rank != len(input_size) + 2:
        raise ValueError(f"weight {w}, output gradient {gy} and input_size {list(input_size)} "
                         f"disagree on the number of spatial axes")
    x = TensorType((gy.shape[0], w.shape[1] * groups) + tuple(input_size), w.dtype)
    check_spatial(x, "conv_input_grad", kernel=w.shape[2:], stride=stride, padding=padding,
                  dilation=dilation)
    _check_groups(x.shape[1], w.shape[0], groups)
    want = (x.shape[0], w.shape[0]) + out_shape(input_size, w.shape[2:], stride, padding,
                                                dilation)
    if gy.shape != want:
        raise ValueError(f"input_size {list(input_size)} gives a conv output {list(want)}, "
                         f"not the output gradient {gy}")
    return x


# ---------------------------------------------------------------- FFT path (section 9.8)
def _dilate(w: np.ndarray, dilation) -> np.ndarray:
    if all(d == 1 for d in dilation):
        return w
    k = w.shape[2:]
    out = np.zeros(w.shape[:2] + tuple(d * (s - 1) + 1 for s, d in zip(k, dilation)), w.dtype)
    out[(slice(None), slice(None)) + tuple(slice(None, None, d) for d in dilation)] = w
    return out


@register_op("conv_fft", traits={"autocast_low"}, attrs=_CONV, cost=_conv_cost)
def conv_fft(x, w, *, stride, padding, dilation, groups):
    """``conv`` computed by pointwise products in the frequency domain (numpy.fft)."""
    n, c = x.shape[:2]
    o, d = w.shape[0], x.ndim - 2
    xp = pad_spatial(x, padding).astype(np.float64)
    wd = _dilate(w, dilation).astype(np.float64)
    kd = wd.shape[2:]
    size = tuple(s + k - 1 for s, k in zip(xp.shape[2:], kd))
    axes = tuple(range(2, 2 + d))
    xf = np.fft.rfftn(xp, size, axes=axes)
    wf = np.fft.rfftn(np.flip(wd, axis=axes), size, axes=axes)
    xf = xf.reshape((n, groups, c // groups) + xf.shape[2:])
    wf = wf.reshape((groups, o // groups, c // groups) + wf.shape[2:])
    yf = np.einsum("ngc...,goc...->ngo...", xf, wf).reshape((n, o) + xf.shape[3:])
    full = np.fft.irfftn(yf, size, axes=axes)
    out = out_shape(x.shape[2:], w.shape[2:], stride, padding, dilation)
    sel = tuple(slice(k - 1, k - 1 + st * (m - 1) + 1, st) for k, st, m in zip(kd, stride, out))
    return np.ascontiguousarray(full[(slice(None), slice(None)) + sel]).astype(x.dtype)


conv_fft.type_rule(conv_type)


# ---------------------------------------------------------------- unfold / fold
def _window_args(kernel_size, stride, padding, dilation):
    return dict(kernel=kernel_size, stride=stride, padding=padding, dilation=dilation)


_UNFOLD = dict(_WINDOW, kernel_size=Attr(a_ints))
_MOVE = dict(cost=lambda i, o, a: Cost(0, i[0].nbytes + o[0].nbytes))


@register_op("unfold", traits=(), attrs=_UNFOLD, **_MOVE)
def unfold(x, *, kernel_size, stride, padding, dilation):
    """The windows of ``x`` (N, C, *S) as (N, C, *kernel, *out) (im2col)."""
    out = out_shape(x.shape[2:], kernel_size, stride, padding, dilation)
    win = windows(pad_spatial(x, padding), kernel_size, stride, dilation, out)
    d = len(kernel_size)
    perm = (0, 1) + tuple(range(2 + d, 2 + 2 * d)) + tuple(range(2, 2 + d))
    return np.ascontiguousarray(win.transpose(perm))


@unfold.type_rule
def _(x, *, kernel_size, stride, padding, dilation):
    check_spatial(x, "unfold", **_window_args(kernel_size, stride, padding, dilation))
    out = out_shape(x.shape[2:], kernel_size, stride, padding, dilation)
    if any(s < 1 for s in out):
        raise ValueError(f"kernel {list(kernel_size)} is larger than the padded input {x}")
    return x.with_shape(x.shape[:2] + tuple(kernel_size) + out)


@register_op("fold", traits=(), attrs=dict(_UNFOLD, output_size=Attr(a_ints)), **_MOVE)
def fold(cols, *, output_size, kernel_size, stride, padding, dilation):
    """Transpose of ``unfold``: sums window entries (N, C, *kernel, *out) into (N, C, *S)."""
    d = len(kernel_size)
    perm = (0, 1) + tuple(range(2 + d, 2 + 2 * d)) + tuple(range(2, 2 + d))
    padded = cols.shape[:2] + tuple(s + padding[2 * i] + padding[2 * i + 1]
                                    for i, s in enumerate(output_size))
    xp = scatter_windows(cols.transpose(perm), padded, kernel_size, stride, dilation)
    return np.ascontiguousarray(crop_spatial(xp, padding, output_size))


@fold.type_rule
def _(cols, *, output_size, kernel_size, stride, padding, dilation):
    d = len(output_size)
    x = cols.with_shape(cols.shape[:2] + tuple(output_size))
    check_spatial(x, "fold", **_window_args(kernel_size, stride, padding, dilation))
    want = cols.shape[:2] + tuple(kernel_size) + out_shape(output_size, kernel_size, stride,
                                                           padding, dilation)
    if cols.rank != 2 + 2 * d or cols.shape != want:
        raise ValueError(f"fold to {list(output_size)} needs windows {list(want)}, got {cols}")
    return x


# ---------------------------------------------------------------- unshared and tiled
def _locally_connected(x, w, stride, padding, dilation):
    d = x.ndim - 2
    n, c = x.shape[:2]
    o, out, k = w.shape[0], w.shape[1:1 + d], w.shape[2 + d:]
    win = windows(pad_spatial(x, padding), k, stride, dilation, out)   # (N, C, *out, *k)
    p, kk = _prod(out), _prod(k)
    u = win.reshape(n, c, p, kk).transpose(2, 0, 1, 3).reshape(p, n, c * kk)
    wm = w.reshape(o, p, c * kk).transpose(1, 2, 0)
    y = np.matmul(u, wm)                                                # (P, N, O)
    return np.ascontiguousarray(y.transpose(1, 2, 0)).reshape((n, o) + tuple(out))


@register_op("locally_connected", traits={"autocast_low"}, attrs=_WINDOW, cost=_lc_cost)
def locally_connected(x, w, *, stride, padding, dilation):
    """Unshared convolution (eq. 9.9): Z[i,j,k] = sum V[l, j+m-1, k+n-1] W[i,j,k,l,m,n];
    w is (O, *out, C, *kernel), one kernel per output location."""
    return _locally_connected(x, w, stride, padding, dilation)


@locally_connected.type_rule
def _(x, w, *, stride, padding, dilation):
    _float_pair(x, w, "locally_connected")
    d = x.rank - 2
    if w.rank != 2 * d + 2:
        raise ValueError(f"weight {w} must be (O, *out, C, *kernel) for input {x}")
    check_spatial(x, "locally_connected", kernel=w.shape[2 + d:], stride=stride,
                  padding=padding, dilation=dilation)
    out = out_shape(x.shape[2:], w.shape[2 + d:], stride, padding, dilation)
    if w.shape[1:2 + d] != out + (x.shape[1],):
        raise ValueError(f"weight {w} must be (O, *out={list(out)}, C={x.shape[1]}, *kernel)")
    return TensorType((x.shape[0], w.shape[0]) + out, x.dtype)


def tile_to_locations(w: np.ndarray, out) -> np.ndarray:
    """The unshared weight (O, *out, C, *k) of tiled kernels w (O, C, *k, *t): location j
    uses kernel j mod t in each direction (eq. 9.10)."""
    d = len(out)
    t = w.shape[2 + d:]
    idx = np.ix_(*[np.arange(m) % ti for m, ti in zip(out, t)])
    wt = w[(Ellipsis,) + idx]                                           # (O, C, *k, *out)
    perm = (0,) + tuple(range(2 + d, 2 + 2 * d)) + (1,) + tuple(range(2, 2 + d))
    return np.ascontiguousarray(wt.transpose(perm))


@register_op("tiled_conv", traits={"autocast_low"}, attrs=_WINDOW, cost=_tiled_cost)
def tiled_conv(x, w, *, stride, padding, dilation):
    """Tiled convolution (eq. 9.10): w (O, C, *kernel, *t) holds t kernels per direction,
    cycled through as one moves through the output."""
    d = x.ndim - 2
    out = out_shape(x.shape[2:], w.shape[2:2 + d], stride, padding, dilation)
    return _locally_connected(x, tile_to_locations(w, out), stride, padding, dilation)


@tiled_conv.type_rule
def _(x, w, *, stride, padding, dilation):
    _float_pair(x, w, "tiled_conv")
    d = x.rank - 2
    if w.rank != 2 * d + 2 or w.shape[1] != x.shape[1]:
        raise ValueError(f"weight {w} must be (O, C={x.shape[1]}, *kernel, *tiles) for {x}")
    check_spatial(x, "tiled_conv", kernel=w.shape[2:2 + d], stride=stride, padding=padding,
                  dilation=dilation)
    if any(t < 1 for t in w.shape[2 + d:]):
        raise ValueError(f"tiled_conv needs at least one kernel per direction, got {w}")
    out = out_shape(x.shape[2:], w.shape[2:2 + d], stride, padding, dilation)
    if any(s < 1 for s in out):
        raise ValueError(f"the kernel {w} is larger than the padded input {x}")
    return TensorType((x.shape[0], w.shape[0]) + out, x.dtype)
