"""Lowering of the NaN checker's ``check_finite`` (irgraph/ops/debug.py)."""
from __future__ import annotations

import torch

from irgraph import Node
from irgraph.ops.debug import NonFiniteError, non_finite_message

from .kernels import elementwise as ew
from .kernels import reduce as red
from .runtime import View
from .table import LowerContext, Step, lowering


@lowering("check_finite")
def _check_finite(node: Node, ctx: LowerContext) -> Step:
    """A device reduction counts non-finite values; only that count comes to the host (the
    checker is a debugging mode: it must stop at the first bad node)."""
    x = node.inputs[0].type
    if x.dtype not in ("float32", "float64"):
        return lambda xs: [xs[0]]
    shape = x.shape
    views = [View.of(shape)] * 2
    bad = ew.elementwise("sub", shape, x.dtype, views, [x.dtype] * 2, ctx.device)
    count = red.reduce("sum", shape, tuple(range(len(shape))), (), x.dtype, x.dtype,
                       ctx.device)
    a = node.attrs

    def step(xs: list[torch.Tensor]) -> list[torch.Tensor]:
        # x - x is 0 where x is finite and NaN where it is NaN or +-inf
        total = float(count(bad(xs[0], xs[0])).cpu())
        if total != total:
            arrays = [t.cpu().numpy() for t in xs]
            raise NonFiniteError(non_finite_message(arrays[0], arrays[1:],
                                                    checked_op=a["checked_op"],
                                                    node=a["node"], source=a["source"],
                                                    names=a["names"]))
        return [xs[0]]
    return step
