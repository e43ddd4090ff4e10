"""The verifier: SSA, topological order, types recomputed from the registry, subgraphs."""
from __future__ import annotations

from .ir import Graph, Value
from .registry import IRError, get_op
from .types import TensorType, check_shape


class VerificationError(IRError):
    """``node`` and ``graph`` say where the innermost failure is (``node`` is None for a rule
    about the whole graph: outputs, donations)."""
    node = None
    graph = None


def verify(g: Graph) -> Graph:
    """Check ``g``; raise VerificationError naming the node (and showing the graph) on failure."""
    defined: set[int] = set()
    names: set[str] = set()

    def fail(msg: str, node=None, inner: VerificationError | None = None):
        where = f"\n  at node: {node!r}" if node is not None else ""
        err = VerificationError(f"graph {g.name!r}: {msg}{where}\n--- graph ---\n{g}")
        err.node, err.graph = (inner.node, inner.graph) if inner is not None else (node, g)
        raise err

    def define(v: Value, node=None):
        if id(v) in defined or v.name in names:
            fail(f"value %{v.name} is defined twice (SSA)", node)
        if not isinstance(v.type, TensorType):
            fail(f"value %{v.name} has type {v.type!r}, not a TensorType", node)
        try:  # a type changed in place (object.__setattr__) escapes TensorType's own check
            check_shape(v.type.shape, v.type.dtype)
        except (TypeError, ValueError) as e:
            fail(f"value %{v.name} has a bad type: {e}", node)
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
        except Exception as e:  # noqa: BLE001  (a type rule failing on odd attributes)
            fail(f"op {node.op!r}: its type rule failed: {type(e).__name__}: {e}", node)
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
                    fail(f"subgraph attribute {key!r} is invalid: {e}", node, e)
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
