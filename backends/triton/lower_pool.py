"""Lowerings of the pooling ops (irgraph/ops/pool.py). The window geometry comes from the op
module's own helpers, so the kernel reads exactly the windows the reference does."""
from __future__ import annotations

from irgraph import Node
from irgraph.ops import pool as P

from .kernels.pool import Pool
from .table import LowerContext, Step, lowering


def _regular(node: Node, spatial, dilation=None):
    a = node.attrs
    dil = dilation or a.get("dilation") or (1,) * len(spatial)
    return P.regular_axes(spatial, a["kernel_size"], a["stride"], a["padding"], dil,
                           a["ceil_mode"])


@lowering("max_pool", "max_pool_grad", "max_pool_select")
def _max_pool(node: Node, ctx: LowerContext) -> Step:
    x = node.inputs[0].type
    mode = {"max_pool": "max", "max_pool_grad": "max_grad",
            "max_pool_select": "max_select"}[node.op]
    run = Pool(mode, x.shape, _regular(node, x.shape[2:]), None, x.dtype, ctx.device)
    return lambda xs: [run(*xs)]


@lowering("adaptive_max_pool", "adaptive_max_pool_grad", "adaptive_max_pool_select")
def _adaptive_max_pool(node: Node, ctx: LowerContext) -> Step:
    x = node.inputs[0].type
    mode = {"adaptive_max_pool": "max", "adaptive_max_pool_grad": "max_grad",
            "adaptive_max_pool_select": "max_select"}[node.op]
    axes = P.adaptive_axes(x.shape[2:], node.attrs["output_size"])
    run = Pool(mode, x.shape, axes, None, x.dtype, ctx.device)
    return lambda xs: [run(*xs)]


@lowering("avg_pool", "avg_pool_grad")
def _avg_pool(node: Node, ctx: LowerContext) -> Step:
    grad = node.op == "avg_pool_grad"
    x = node.outputs[0].type if grad else node.inputs[0].type
    axes, div = P.avg_geometry(x.shape[2:], node.attrs)
    run = Pool("avg_grad" if grad else "avg", x.shape, axes, div, x.dtype, ctx.device)
    return lambda xs: [run(xs[0], xs[0])]


@lowering("adaptive_avg_pool", "adaptive_avg_pool_grad")
def _adaptive_avg_pool(node: Node, ctx: LowerContext) -> Step:
    grad = node.op == "adaptive_avg_pool_grad"
    x = node.outputs[0].type if grad else node.inputs[0].type
    axes, div = P.adaptive_avg_geometry(x.shape[2:], node.attrs["output_size"])
    run = Pool("avg_grad" if grad else "avg", x.shape, axes, div, x.dtype, ctx.device)
    return lambda xs: [run(xs[0], xs[0])]
