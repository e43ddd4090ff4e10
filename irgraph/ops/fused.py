"""``fused``: a region of ops that a backend compiles as one loop nest or kernel.

``outs = fused(*ins) {body=<graph>, kind="elementwise"|"reduction"|"epilogue"|"generic"}``.
The body is a graph with inputs and no parameters; the node's operands bind to the body's
inputs in order and its results are the body's outputs. Its meaning is exactly the body's;
the reference kernel interprets it. ``passes/fusion.py`` builds these nodes
(``passes/layer_regions.py`` those of kinds ``attention`` and ``normalize``); the format and
the meaning of ``kind`` are documented in docs/architecture.md.
"""
from __future__ import annotations

from ..registry import Attr, Cost, a_choice, a_graph, register_op

FUSED_KINDS = ("elementwise", "reduction", "epilogue", "generic", "attention", "normalize",
               "rows", "conv_chain")


def _fused_cost(ins, outs, attrs) -> Cost:
    """The body's flops; only the region's operands and results touch memory."""
    body = attrs["body"]
    flops = sum(n.opdef.cost([v.type for v in n.inputs], [v.type for v in n.outputs],
                             n.attrs).flops for n in body.nodes)
    return Cost(flops, sum(t.nbytes for t in list(ins) + list(outs)))


@register_op("fused", traits=(), attrs={"body": Attr(a_graph), "kind": Attr(a_choice(*FUSED_KINDS),
                                                                   "generic")},
             num_inputs=None, has_subgraph=True, cost=_fused_cost)
def fused(*xs, body, kind):
    """Run the body on the operands (the region's meaning is its body's)."""
    from ..interpreter import interpret
    return interpret(body, list(xs))


@fused.type_rule
def _(*xs, body, kind):
    if body.params:
        raise ValueError(f"a fused body takes no parameters (pass them as operands); "
                         f"{body.name!r} has {[p.name for p in body.params]}")
    if len(xs) != len(body.inputs):
        raise ValueError(f"body {body.name!r} takes {len(body.inputs)} operands, got {len(xs)}")
    for i, (x, v) in enumerate(zip(xs, body.inputs)):
        if x != v.type:
            raise ValueError(f"operand {i} is {x}; body input %{v.name} is {v.type}")
    if not body.outputs:
        raise ValueError(f"body {body.name!r} has no outputs")
    return [v.type for v in body.outputs]
