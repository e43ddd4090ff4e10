"""The reference semantics: evaluate a graph node by node with the registry's numpy kernels.

Values are freed after their last use. An error in a kernel is re-raised naming the node
and the user's source line. Subgraph ops (recurrence) call ``interpret`` on their body.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .ir import Graph, Node, Value
from .liveness import last_uses
from .registry import IRError


class ExecutionError(RuntimeError):
    pass


def run_node(node: Node, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    try:
        with np.errstate(all="ignore"):
            outs = node.opdef.run(list(arrays), node.attrs)
    except (IRError, ValueError, TypeError, IndexError, KeyError, ArithmeticError,
            RuntimeError) as e:
        loc = f" (from {node.loc})" if node.loc else ""
        raise ExecutionError(f"while running {node!r}{loc}: {type(e).__name__}: {e}") from e
    res = []
    for v, a in zip(node.outputs, outs):
        a = np.asarray(a)
        if a.shape != v.type.shape:
            raise ExecutionError(f"kernel of {node.op} gave shape {a.shape} for %{v.name}: "
                                 f"{v.type}\n  at node: {node!r}")
        res.append(a if a.dtype == v.type.np_dtype else a.astype(v.type.np_dtype))
    return res


def interpret(g: Graph, args: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Run ``g`` on ``args`` (inputs then parameters); return the outputs."""
    if len(args) != len(g.arguments):
        raise ExecutionError(f"graph {g.name!r} takes {len(g.arguments)} arguments, "
                             f"got {len(args)}")
    env: dict[Value, np.ndarray] = {}

    def write(v: Value, a: np.ndarray) -> None:
        assert v not in env, f"%{v.name} assigned twice"
        env[v] = a

    for v, a in zip(g.arguments, args):
        write(v, a)
    dying = last_uses(g)
    for i, node in enumerate(g.nodes):
        outs = run_node(node, [env[v] for v in node.inputs])
        for v, a in zip(node.outputs, outs):
            write(v, a)
        for v in dying.get(i, ()):
            del env[v]
    return [env[v] for v in g.outputs]
