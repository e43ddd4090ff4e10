"""Hoist loop-invariant work out of scan bodies: computed once per call, not once per step.

A body node whose inputs are all loop invariants (the scan's theta, body arguments after
the carries and slices), values of other such nodes or constants computes the same value at
every step. Back-propagation through time makes such nodes: the backward step of
``h W^T`` multiplies by ``(W^T)^T``, a transpose of an invariant that a backend would
otherwise redo (or fold into a GEMM that repacks the weight) at each of the T steps. The
pass moves these nodes in front of the scan and passes their values in as new invariants.

Nodes with a random, effect or fallible trait stay (their count or their errors would
change), as do nodes holding a graph (nested scans, fused regions) and constants that no
hoisted node reads. Nested scans are handled inside out. A backend that lowers scans loop by
loop declares the pass (backends/llvm).
"""
from __future__ import annotations

from irgraph import Graph, Node, Value
from irgraph.registry import ops_with
from irgraph.rewrite import GraphRewriter

from .manager import register_pass


@register_pass("scan_invariants")
def scan_invariants(graph: Graph) -> Graph:
    """``graph`` with the invariant nodes of every scan body (nested ones too) computed
    once in front of their scan; unchanged when no body has one."""
    if not any(n.op == "scan" for n in graph.nodes):
        return graph
    rw = GraphRewriter(graph)
    changed = False
    for node in graph.nodes:
        if node.op != "scan":
            rw.copy_node(node)
            continue
        a = node.attrs
        inner = scan_invariants(a["body"])      # nested scans first
        body, hoisted, k = _split(inner, a["num_carry"] + a["num_seq"])
        if inner is a["body"] and not hoisted:
            rw.copy_node(node)
            continue
        changed = True
        # the hoisted nodes, bound to the scan's invariant inputs, in front of the scan
        n_fixed = len(node.inputs) - len(inner.arguments[k:])
        env = dict(zip(inner.arguments[k:], (rw[v] for v in node.inputs[n_fixed:])))
        for n in hoisted:
            outs = rw.dst.add_node(n.op, [env[v] for v in n.inputs], n.attrs, n.loc or node.loc)
            env.update(zip(n.outputs, outs))
        extra = [env[v] for v in _new_invariants(inner, hoisted)]
        outs = rw.dst.add_node("scan", [rw[v] for v in node.inputs] + extra,
                               dict(a, body=body), node.loc)
        for old, new in zip(node.outputs, outs):
            rw.replace(old, new)
    return rw.finish() if changed else graph


_KEEP = ("random", "effect", "fallible")


def _hoistable(body: Graph, k: int) -> list[Node]:
    """Body nodes (in order) that depend on invariants only and read at least one, with
    the constants they read."""
    kept = set().union(*(ops_with(t) for t in _KEEP))
    inv: set[Value] = set(body.arguments[k:])
    consts: set[Value] = set()
    nodes: list[Node] = []
    for n in body.nodes:
        if n.op in kept or any(isinstance(v, Graph) for v in n.attrs.values()):
            continue
        if not n.inputs:
            consts.update(n.outputs)
        elif all(v in inv or v in consts for v in n.inputs) and any(v in inv for v in n.inputs):
            nodes.append(n)
            inv.update(n.outputs)
    needed = {v for n in nodes for v in n.inputs}
    return [n for n in body.nodes if n in nodes or (not n.inputs and
                                                    any(v in needed for v in n.outputs))]


def _new_invariants(body: Graph, hoisted: list[Node]) -> list[Value]:
    """The values of hoisted nodes (not constants: the body keeps its own copy of those)
    that the remaining body or its outputs read, in node order."""
    read = _read_after(body, hoisted)
    return [v for n in hoisted if n.inputs for v in n.outputs if v in read]


def _read_after(body: Graph, hoisted: list[Node]) -> set[Value]:
    """What the nodes left in the body and its outputs read."""
    moved = {n for n in hoisted if n.inputs}
    return {v for n in body.nodes if n not in moved for v in n.inputs} | set(body.outputs)


def _split(body: Graph, k: int) -> tuple[Graph, list[Node], int]:
    """(the body reading the hoisted values as new trailing params, the hoisted nodes, k)."""
    hoisted = _hoistable(body, k)
    if not hoisted:
        return body, [], k
    moved = set(hoisted)
    g = Graph(body.name)
    env: dict[Value, Value] = {}
    for v in body.inputs:
        env[v] = g.add_input(v.name, v.type)
    for v in body.params:
        env[v] = g.add_param(v.name, v.type)
    for v in _new_invariants(body, hoisted):
        env[v] = g.add_param(v.name, v.type)
    read = _read_after(body, hoisted)
    for n in body.nodes:
        # a hoisted constant stays only where the body still reads it
        if n not in moved or (not n.inputs and any(v in read for v in n.outputs)):
            outs = g.add_node(n.op, [env[v] for v in n.inputs], n.attrs, n.loc,
                              [v.name for v in n.outputs])
            env.update(zip(n.outputs, outs))
    g.set_outputs([env[v] for v in body.outputs])
    return g, hoisted, k
