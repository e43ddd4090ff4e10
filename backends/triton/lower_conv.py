"""Lowerings of the convolution ops (irgraph/ops/conv.py) to the implicit-GEMM kernels."""
from __future__ import annotations

from irgraph import Node

from .kernels import conv as ck
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
