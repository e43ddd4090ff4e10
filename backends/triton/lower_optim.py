"""Lowerings of the optimizer-update ops (irgraph/ops/optim.py) to multi-tensor launches.

The plan (executable.py) gathers every update node of one kind (same op, attributes and
dtype) of a training step into one group, so all parameters update in ONE kernel launch.
"""
from __future__ import annotations

import torch

from irgraph import Graph, Node, Value

from .kernels import optim as opt
from .table import LowerContext, Step, group_lowering, lowering

UPDATE_OPS = tuple(op for op in opt.RULES if op != "sum_squares")


def updated_input(out_index: int) -> int:
    """The tensor input an update output replaces: p' <- p, then the state after g."""
    return 0 if out_index == 0 else out_index + 1


def inplace_updates(graph: Graph, order: list[list[Node]]) -> dict[Node, set[int]]:
    """Update outputs donated to the argument they replace, when no later step of ``order``
    reads that argument: the kernel then writes the new value into the argument's buffer."""
    args = graph.arguments
    out_index = {v: i for i, v in enumerate(graph.outputs)}
    readers: dict[Value, list[tuple[int, Node]]] = {}
    at: dict[Node, int] = {}
    for k, nodes in enumerate(order):
        for node in nodes:
            at[node] = k
            for v in node.inputs:
                readers.setdefault(v, []).append((k, node))
    res: dict[Node, set[int]] = {}
    for node, k in at.items():
        if node.op not in UPDATE_OPS:
            continue
        for j, v in enumerate(node.outputs):
            src = node.inputs[updated_input(j)]
            o = out_index.get(v)
            if (o is not None and graph.donations.get(o) is not None
                    and args[graph.donations[o]] is src and src not in out_index
                    and all(kr < k for kr, r in readers[src] if r is not node)
                    and list(node.inputs).count(src) == 1):
                res.setdefault(node, set()).add(j)
    return res


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
    in_place = [ctx.inplace.get(n, set()) for n in nodes]

    def step(xs: list[torch.Tensor]) -> list[torch.Tensor]:
        per = [xs[i * arity:(i + 1) * arity] for i in range(len(nodes))]
        ins = [[p[j] for p in per] for j in range(rule.n_in)]
        scal = [[p[rule.n_in + j] for p in per] for j in range(rule.n_scal)]
        outs = [[ins[updated_input(j)][i] if j in in_place[i] else torch.empty_like(ins[0][i])
                 for i in range(len(nodes))] for j in range(rule.n_out)]
        plan(ins, scal, outs)
        return [outs[j][i] for i in range(len(nodes)) for j in range(rule.n_out)]
    return step


@lowering("global_norm")
def _global_norm(node: Node, ctx: LowerContext) -> Step:
    run = opt.global_norm([v.type.size for v in node.inputs], node.inputs[0].type.dtype,
                          ctx.device)
    return lambda xs: [run(xs)]
