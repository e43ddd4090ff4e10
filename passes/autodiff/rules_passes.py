"""VJP rules of the ops the optimizing passes insert: ``fused`` regions and ``check_finite``."""
from __future__ import annotations

from irgraph import Graph, GraphRewriter

from .core import prune, vjp, vjp_rule


def fused_backward_body(body: Graph) -> tuple[Graph, list[int]]:
    """The body of the gradient region of a ``fused`` node.

    It takes the forward operands then one cotangent per forward result, recomputes what it
    needs of the forward body, and returns the gradient of each float operand (listed by
    position in the second item)."""
    wrt = [i for i, v in enumerate(body.inputs) if v.type.is_float]
    full = vjp(body, [body.inputs[i].name for i in wrt])
    rw = GraphRewriter(full, body.name + "_bwd")
    for node in full.nodes:
        rw.copy_node(node)
    grads = full.outputs[len(body.outputs):]
    return prune(rw.finish([rw[v] for v in grads])), wrt


@vjp_rule("fused")
def _fused(e, node, xs, ys, gs):
    back, wrt = fused_backward_body(node.attrs["body"])
    if not wrt:
        return [None] * len(xs)
    outs = e("fused", *xs, *gs, body=back, kind="generic")
    outs = outs if isinstance(outs, tuple) else (outs,)
    res = [None] * len(xs)
    for i, g in zip(wrt, outs):
        res[i] = g
    return res


@vjp_rule("check_finite")
def _check_finite(e, node, xs, ys, gs):
    # the check is the identity on its first operand; the others are only watched
    return [gs[0]] + [None] * (len(xs) - 1)
