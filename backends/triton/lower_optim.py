"""Lowerings of the optimizer-update ops (irgraph/ops/optim.py) to multi-tensor launches.

The plan (executable.py) gathers every update node of one kind (same op, attributes and
dtype) of a training step into one group, so all parameters update in ONE kernel launch.
"""
from __future__ import annotations

import torch

from irgraph import Node

from .kernels import optim as opt
from .table import LowerContext, Step, group_lowering, lowering

UPDATE_OPS = tuple(op for op in opt.RULES if op != "sum_squares")


@group_lowering(*UPDATE_OPS)
def _updates(nodes: list[Node], ctx: LowerContext) -> Step:
    op = nodes[0].op
    rule = opt.RULES[op]
    attrs = nodes[0].attrs
    plan = opt.MultiTensorUpdate(op, [n.inputs[0].type.size for n in nodes],
                                 nodes[0].inputs[0].type.dtype, ctx.device,
                                 convention=attrs.get("convention", "text"),
                                 nesterov=attrs.get("nesterov", False),
                                 eps=attrs.get("eps", 0.0))
    arity = rule.n_in + rule.n_scal

    def step(xs: list[torch.Tensor]) -> list[torch.Tensor]:
        per = [xs[i * arity:(i + 1) * arity] for i in range(len(nodes))]
        ins = [[p[j] for p in per] for j in range(rule.n_in)]
        scal = [[p[rule.n_in + j] for p in per] for j in range(rule.n_scal)]
        outs = [[torch.empty_like(t) for t in ins[0]] for _ in range(rule.n_out)]
        plan(ins, scal, outs)
        return [outs[j][i] for i in range(len(nodes)) for j in range(rule.n_out)]
    return step


@lowering("global_norm")
def _global_norm(node: Node, ctx: LowerContext) -> Step:
    run = opt.global_norm([v.type.size for v in node.inputs], node.inputs[0].type.dtype,
                          ctx.device)
    return lambda xs: [run(xs)]
