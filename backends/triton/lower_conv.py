"""Lowerings of the convolution ops (irgraph/ops/conv.py) to the implicit-GEMM kernels."""
from __future__ import annotations

import numpy as np

from irgraph import Node, get_op
from irgraph.ops.conv import tile_to_locations

from .kernels import conv as ck
from .kernels import elementwise as ew
from .kernels.matmul import matmul
from .runtime import View
from .table import LowerContext, Step, lowering


def _geometry(node: Node, x_shape, w_shape, out_spatial) -> ck.ConvGeometry:
    a = node.attrs
    return ck.ConvGeometry.make(x_shape, w_shape, out_spatial, a["stride"], a["padding"],
                                a["dilation"], a["groups"])


@lowering("conv", "conv_fft")
def _conv(node: Node, ctx: LowerContext) -> Step:
    """``conv_fft`` is the same function (section 9.8); the GPU computes it directly."""
    x, w = node.inputs[0].type, node.inputs[1].type
    y = node.outputs[0].type
    geo = _geometry(node, x.shape, w.shape, y.shape[2:])
    run = ck.conv_forward(geo, y.shape, y.dtype, ctx.device, ctx.allow_tf32)
    return lambda xs: [run(*xs)]


@lowering("conv_input_grad")
def _conv_input_grad(node: Node, ctx: LowerContext) -> Step:
    w, gy = node.inputs[0].type, node.inputs[1].type
    dx = node.outputs[0].type
    geo = _geometry(node, dx.shape, w.shape, gy.shape[2:])
    run = ck.conv_input_grad(geo, dx.shape, dx.dtype, ctx.device, ctx.allow_tf32)
    return lambda xs: [run(*xs)]


@lowering("conv_kernel_grad")
def _conv_kernel_grad(node: Node, ctx: LowerContext) -> Step:
    x, gy = node.inputs[0].type, node.inputs[1].type
    dw = node.outputs[0].type
    geo = _geometry(node, x.shape, dw.shape, gy.shape[2:])
    run = ck.conv_kernel_grad(geo, dw.shape, dw.dtype, ctx.device, ctx.allow_tf32)
    return lambda xs: [run(*xs)]


# ---------------------------------------------------------------- windows by index tables
def _window_index(x_shape, a) -> np.ndarray:
    """For each element of ``unfold(x)``, the flat index of the x element it reads (-1 for
    padding), computed once by the op's own kernel over x's flat indices (+1, so the zero
    padding becomes -1)."""
    ids = np.arange(1, 1 + int(np.prod(x_shape)), dtype=np.float64).reshape(x_shape)
    cols = get_op("unfold").run([ids], dict(kernel_size=a["kernel_size"], stride=a["stride"],
                                            padding=a["padding"], dilation=a["dilation"]))[0]
    return cols.astype(np.int64) - 1


@lowering("unfold")
def _unfold(node: Node, ctx: LowerContext) -> Step:
    x = node.inputs[0].type
    run = ew.gather(_window_index(x.shape, node.attrs), x.shape, x.dtype, ctx.device)
    return lambda xs: [run(xs[0])]


@lowering("fold")
def _fold(node: Node, ctx: LowerContext) -> Step:
    """The transpose of ``unfold``: scatter-add of each window element into its position."""
    y = node.outputs[0].type
    run = ew.gather(_window_index(y.shape, node.attrs), y.shape, y.dtype, ctx.device,
                    scatter=True)
    return lambda xs: [run(xs[0])]


def _unshared(node: Node, ctx: LowerContext, w_index: np.ndarray | None) -> Step:
    """Eq. 9.9: y[n, o, p] = sum_{c,k} win(x)[n, c, k, p] w[o, p, c, k], as unfold, then one
    batched matmul over the output locations p. ``w_index`` first gathers tiled kernels
    (eq. 9.10) into one kernel per location."""
    x, w, y = node.inputs[0].type, node.inputs[1].type, node.outputs[0].type
    d = x.rank - 2
    out = y.shape[2:]
    k = w.shape[2 + d:] if w_index is None else w.shape[2:2 + d]
    n, c, o = x.shape[0], x.shape[1], y.shape[1]
    p, ck = int(np.prod(out)), c * int(np.prod(k))
    a = dict(node.attrs, kernel_size=k)
    cols = ew.gather(_window_index(x.shape, a), x.shape, x.dtype, ctx.device)
    tile = (ew.gather(w_index, w.shape, w.dtype, ctx.device) if w_index is not None
            else (lambda t: t))
    cols_view = View((p, n, ck), (1, ck * p, p))           # (N, C*K, P) read as (P, N, CK)
    w_view = View((p, ck, o), (ck, 1, p * ck))             # (O, P, CK) read as (P, CK, O)
    mm = matmul(cols_view.shape, w_view.shape, (p, n, o), x.dtype, ctx.device,
                ctx.input_precision, a_view=cols_view, b_view=w_view)
    back = ew.copy_view(View.of((p, n, o)).permute((1, 2, 0)), y.dtype, ctx.device)
    return lambda xs: [back(mm(cols(xs[0]), tile(xs[1]))).view(y.shape)]


@lowering("locally_connected")
def _locally_connected(node: Node, ctx: LowerContext) -> Step:
    return _unshared(node, ctx, None)


@lowering("tiled_conv")
def _tiled_conv(node: Node, ctx: LowerContext) -> Step:
    w, y = node.inputs[1].type, node.outputs[0].type
    ids = np.arange(w.size, dtype=np.int64).reshape(w.shape)
    return _unshared(node, ctx, tile_to_locations(ids, y.shape[2:]))
