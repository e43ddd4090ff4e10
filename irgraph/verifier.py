"""The verifier: SSA, topological order, types recomputed from the registry, subgraphs."""
from __future__ import annotations

from .ir import Graph, Value
from .registry import IRError, get_op


class VerificationError(IRError):
    pass


def verify(g: Graph) -> Graph:
    """Check ``g``; raise VerificationError naming the node (and showing the graph) on failure."""
    defined: set[int] = set()
    names: set[str] = set()

    def fail(msg: str, node=None):
        where = f"\n  at node: {node!r}" if node is not None else ""
        raise VerificationError(f"graph {g.name!r}: {msg}{where}\n--- graph ---\n{g}")

    def define(v: Value, node=None):
        if id(v) in defined or v.name in names:
            fail(f"value %{v.name} is defined twice (SSA)", node)
        defined.add(id(v))
        names.add(v.name)

    for v in g.arguments:
        define(v)
    for node in g.nodes:
        try:
            opdef = get_op(node.op)
        except IRError as e:
            fail(str(e), node)
        for v in node.inputs:
            if id(v) not in defined:
                fail(f"input %{v.name} is used before it is defined", node)
        try:
            attrs = opdef.check_attrs(node.attrs)
            types = opdef.infer([v.type for v in node.inputs], attrs)
        except IRError as e:
            fail(str(e), node)
        if len(types) != len(node.outputs):
            fail(f"op {node.op} gives {len(types)} outputs, node has {len(node.outputs)}", node)
        for v, t in zip(node.outputs, types):
            if v.type != t:
                fail(f"%{v.name} has type {v.type}, the registry infers {t}", node)
            if v.node is not node:
                fail(f"%{v.name} does not point back to its node", node)
        for key, val in node.attrs.items():
            if isinstance(val, Graph):
                try:
                    verify(val)
                except VerificationError as e:
                    fail(f"subgraph attribute {key!r} is invalid: {e}", node)
        define_all = [define(v, node) for v in node.outputs]
        del define_all
    for v in g.outputs:
        if id(v) not in defined:
            fail(f"output %{v.name} is not defined in the graph")
    args = g.arguments
    for o, a in g.donations.items():
        if not (0 <= o < len(g.outputs)) or not (0 <= a < len(args)):
            fail(f"donation {o}->{a} is out of range")
        if g.outputs[o].type != args[a].type:
            fail(f"donation {o}->{a}: output type {g.outputs[o].type} differs from "
                 f"argument type {args[a].type}")
    if len(set(g.donations.values())) != len(g.donations):
        fail("two outputs are donated the same argument buffer")
    return g
