"""Lowerings of the normalization ops (irgraph/ops/norm.py): ``batch_norm``."""
from __future__ import annotations

from irgraph import Node

from .kernels import norm as nk
from .table import LowerContext, Step, lowering


@lowering("batch_norm")
def _batch_norm(node: Node, ctx: LowerContext) -> Step:
    x = node.inputs[0].type
    a = node.attrs
    run = nk.batch_norm(x.shape, a["axis"], a["training"], a["eps"], a["momentum"], x.dtype,
                        ctx.device)
    return lambda xs: run(*xs)
