"""Lowerings of the recurrence ops (irgraph/ops/recurrence.py): ``scan`` and
``stop_gradient``."""
from __future__ import annotations

import torch

from irgraph import Node
from irgraph.ops import recurrence as R

from .kernels import elementwise as ew
from .runtime import View, empty
from .table import LowerContext, Step, lowering


@lowering("stop_gradient")
def _stop_gradient(node: Node, ctx: LowerContext) -> Step:
    return lambda xs: [xs[0]]              # buffers are never written in place: share it


@lowering("scan")
def _scan(node: Node, ctx: LowerContext) -> Step:
    """The body is lowered once; the host loop launches its kernels step after step, slicing
    sequences and writing per-step outputs in place on the device (fig. 10.2)."""
    attrs = dict(node.attrs)
    body = R.step_body(attrs)
    plan = ctx.lower_graph(body)
    nc = attrs["num_carry"]
    steps = R.num_steps([v.type for v in node.inputs], attrs)
    save = attrs["save_every"]
    out_types = [v.type for v in node.outputs]
    y_types = out_types[nc:len(body.outputs)]
    saved_types = out_types[len(body.outputs):]
    copy_y = [_copier(t.shape[1:], t.dtype, ctx.device) for t in y_types]
    copy_saved = [_copier(t.shape[1:], t.dtype, ctx.device) for t in saved_types]

    def step(xs: list[torch.Tensor]) -> list[torch.Tensor]:
        carries, seqs, mask, consts = R.split_inputs(xs, attrs)
        ys = [empty(t.shape, t.dtype, ctx.device) for t in y_types]
        saved = [empty(t.shape, t.dtype, ctx.device) for t in saved_types]
        order = range(steps - 1, -1, -1) if attrs["reverse"] else range(steps)
        for p, t in enumerate(order):
            if save and p % save == 0:
                for c, buf, cp in zip(carries, saved, copy_saved):
                    cp(c, out=buf[p // save])
            per_step = [s[t] for s in seqs] + ([mask[t]] if mask is not None else [])
            res = plan(list(carries) + per_step + list(consts))
            carries = res[:nc]
            for y, buf, cp in zip(res[nc:], ys, copy_y):
                cp(y, out=buf[t])
        return list(carries) + ys + saved
    return step


def _copier(shape, dtype: str, device):
    return ew.elementwise("copy", shape, dtype, [View.of(shape)], [dtype], device)
