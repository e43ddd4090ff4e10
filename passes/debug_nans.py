"""Debugging NaNs: check every node's float output for NaN/Inf (off by default).

``debug_nans`` inserts a ``check_finite`` node after each node (and for each float graph
input and parameter); consumers read the checked value, so every backend runs the checks in
order and the first failing one is the first node, in the graph's order, to make a NaN or an
infinity. The error (``irgraph.ops.debug.NonFiniteError``) names the op, the node's IR text,
the ranges of its operands and the user's source line. Turn it on with the pipeline
(``compile(..., pipeline="default,debug_nans")``) or ``IRGRAPH_DEBUG_NANS=1`` in the
environment, which appends it to the default pipelines.
"""
from __future__ import annotations

from irgraph import Graph, GraphRewriter, Value
from irgraph.printer import format_node

from .analysis import CONST_SOURCES, EFFECT_OPS
from .manager import register_pass


def _check(rw: GraphRewriter, v: Value, watched: list[Value], names: list[str], op: str,
           text: str, loc: str | None) -> Value:
    attrs = {"checked_op": op, "node": text, "source": loc or "", "names": tuple(names)}
    (out,) = rw.dst.add_node("check_finite", [v, *watched], attrs, loc)
    return out


@register_pass("debug_nans")
def debug_nans(g: Graph) -> Graph:
    """Insert ``check_finite`` after every node with a float output.

    Before::

        %0: f32[4] = log(%x)  # model.py:7
        %1: f32[4] = mul(%0, %0)
        return %1

    After::

        %2: f32[4] = check_finite(%x) {checked_op="input", names=[], node="input %x: f32[4]",
                                       source=""}
        %0: f32[4] = log(%2)  # model.py:7
        %3: f32[4] = check_finite(%0, %2) {checked_op="log", names=["x"],
                node="%0: f32[4] = log(%x)  # model.py:7", source="model.py:7"}
        %1: f32[4] = mul(%3, %3)
        %4: f32[4] = check_finite(%1, %3, %3) {...}
        return %4
    """
    rw = GraphRewriter(g)
    for kind, vals in (("input", g.inputs), ("parameter", g.params)):
        for v in vals:
            if v.type.is_float:
                rw.replace(v, _check(rw, rw[v], [], [], kind, f"{kind} %{v.name}: {v.type}", None))
    for node in g.nodes:
        outs = rw.copy_node(node)
        if node.op in EFFECT_OPS or node.op in CONST_SOURCES:
            continue
        watched = [rw[v] for v in node.inputs]
        names = [v.name for v in node.inputs]
        for old, new in zip(node.outputs, outs):
            if new.type.is_float:
                rw.replace(old, _check(rw, new, watched, names, node.op, format_node(node),
                                       node.loc))
    return rw.finish()
