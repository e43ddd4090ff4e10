"""Lowerings of the core ops (irgraph/ops/core.py) to the elementwise, reduction and matmul
kernels. Each lowering plans its launches once and returns the step run per call."""
from __future__ import annotations

import torch

from irgraph import Node
from irgraph.ops.core import lane_view, normalize_axes

from .kernels import elementwise as ew
from .kernels import loss as loss_k
from .kernels import matmul as mm
from .kernels import reduce as red
from .runtime import View, to_device
from .table import LowerContext, Step, lowering, unsupported


def _in(node: Node, i: int = 0):
    return node.inputs[i].type


def _out(node: Node, i: int = 0):
    return node.outputs[i].type


@lowering("constant")
def _constant(node: Node, ctx: LowerContext) -> Step:
    t = _out(node)
    buf = to_device(node.attrs["value"], t.dtype, ctx.device)
    return lambda xs: [buf]


@lowering("full")
def _full(node: Node, ctx: LowerContext) -> Step:
    t = _out(node)
    run = ew.fill(t.shape, node.attrs["value"], t.dtype, ctx.device)
    return lambda xs: [run()]


@lowering("iota")
def _iota(node: Node, ctx: LowerContext) -> Step:
    t = _out(node)
    run = ew.iota(t.shape, node.attrs["axis"], t.dtype, ctx.device)
    return lambda xs: [run()]


def _elementwise(node: Node, ctx: LowerContext, op: str) -> Step:
    out = _out(node)
    views = [View.of(v.shape).broadcast_to(out.shape) for v in node.inputs]
    dtypes = [v.dtype for v in node.inputs]
    if op in ew.FLOAT_ONLY and dtypes[-1] not in ("float32", "float64"):
        raise unsupported(node, f"{op} of {dtypes[-1]} has no Triton kernel")
    run = ew.elementwise(op, out.shape, out.dtype, views, dtypes, ctx.device)
    return lambda xs: [run(*xs)]


for _op in ew.UNARY + ew.BINARY + ew.TERNARY:
    if _op != "copy":
        lowering(_op)(lambda node, ctx, _op=_op: _elementwise(node, ctx, _op))


@lowering("sum", "mean", "max", "min")
def _reduce(node: Node, ctx: LowerContext) -> Step:
    x = _in(node)
    axes = normalize_axes(node.attrs["axis"], x.rank)
    run = red.reduce(node.op, x.shape, axes, _out(node).shape, x.dtype, _out(node).dtype,
                     ctx.device)
    return lambda xs: [run(xs[0])]


@lowering("argmax")
def _argmax(node: Node, ctx: LowerContext) -> Step:
    x = _in(node)
    axes = normalize_axes((node.attrs["axis"],), x.rank)
    run = red.reduce("argmax", x.shape, axes, _out(node).shape, x.dtype, "int64", ctx.device)
    return lambda xs: [run(xs[0])]


@lowering("softmax", "log_softmax")
def _softmax(node: Node, ctx: LowerContext) -> Step:
    x = _in(node)
    shape, axis = lane_view(x.shape, node.attrs["axis"])     # a 0-d tensor: one element
    run = red.softmax(shape, axis, x.dtype, node.op == "log_softmax", ctx.device)
    return lambda xs: [run(xs[0].reshape(shape)).reshape(x.shape)]


@lowering("matmul", "matmul_f32")
def _matmul(node: Node, ctx: LowerContext) -> Step:
    """``matmul_f32``: the float32 accumulator of the 16-bit product stored as it is."""
    a, b = _in(node, 0), _in(node, 1)
    run = mm.matmul(a.shape, b.shape, _out(node).shape, a.dtype, ctx.device,
                    ctx.input_precision, out_dtype=_out(node).dtype)
    return lambda xs: [run(*xs)]


# ---------------------------------------------------------------- shape ops
@lowering("reshape")
def _reshape(node: Node, ctx: LowerContext) -> Step:
    shape = _out(node).shape
    return lambda xs: [xs[0].view(shape)]        # buffers are contiguous: a free view


def _copy_step(view: View, node: Node, ctx: LowerContext) -> Step:
    run = ew.copy_view(view, _out(node).dtype, ctx.device)
    return lambda xs: [run(xs[0])]


@lowering("transpose")
def _transpose(node: Node, ctx: LowerContext) -> Step:
    return _copy_step(View.of(_in(node).shape).permute(node.attrs["perm"]), node, ctx)


@lowering("broadcast_to")
def _broadcast_to(node: Node, ctx: LowerContext) -> Step:
    return _copy_step(View.of(_in(node).shape).broadcast_to(node.attrs["shape"]), node, ctx)


@lowering("slice")
def _slice(node: Node, ctx: LowerContext) -> Step:
    base = View.of(_in(node).shape)
    offset, shape, strides = 0, [], []
    for d, st, b, e, s in zip(base.shape, base.strides, node.attrs["starts"],
                              node.attrs["stops"], node.attrs["steps"]):
        r = range(*slice(b, e, s).indices(d))
        shape.append(len(r))
        strides.append(st * s)
        offset += st * r.start if len(r) else 0
    return _copy_step(View(tuple(shape), tuple(strides), offset), node, ctx)


@lowering("concat")
def _concat(node: Node, ctx: LowerContext) -> Step:
    out = _out(node)
    (axis,) = normalize_axes((node.attrs["axis"],), out.rank)
    full = View.of(out.shape)
    copies, start = [], 0
    for v in node.inputs:
        shape = v.shape
        dst = View(shape, full.strides, start * full.strides[axis])
        copies.append(ew.elementwise("copy", shape, out.dtype, [View.of(shape)], [v.dtype],
                                     ctx.device, out_view=dst))
        start += shape[axis]

    def step(xs: list[torch.Tensor]) -> list[torch.Tensor]:
        res = torch.empty(out.shape, dtype=xs[0].dtype, device=ctx.device)
        for run, x in zip(copies, xs):
            run(x, out=res)
        return [res]
    return step


@lowering("pad")
def _pad(node: Node, ctx: LowerContext) -> Step:
    x = _in(node)
    a = node.attrs
    run = ew.pad(x.shape, a["pads"], a["value"], a["mode"], x.dtype, ctx.device)
    return lambda xs: [run(xs[0])]


# ---------------------------------------------------------------- losses
@lowering("nll_loss")
def _nll_loss(node: Node, ctx: LowerContext) -> Step:
    logp, target = _in(node, 0), _in(node, 1)
    run = loss_k.nll_loss(logp.shape, logp.dtype, target.dtype, node.attrs["reduction"],
                          node.attrs["ignore_index"], ctx.device)
    return lambda xs: [run(*xs)]


@lowering("mse_loss")
def _mse_loss(node: Node, ctx: LowerContext) -> Step:
    x = _in(node)
    run = loss_k.mse_loss(x.shape, x.dtype, node.attrs["reduction"], ctx.device)
    return lambda xs: [run(*xs)]
