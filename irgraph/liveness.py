"""Liveness: when each value of a graph is made and last read.

The one analysis the interpreter, the memory planner and the backends free or reuse buffers
by. Positions are step indices: by default one step per node, in order; a backend that runs
several nodes as one step (a Triton kernel over a group) passes its ``steps`` instead, each
a list of nodes in run order. A node reads its inputs at its step. Graph outputs are read
"at the end" (position ``len(steps)``), so they never die inside the graph.

Subgraphs: a node whose attribute is a graph (a ``scan`` or ``fused`` body) reads exactly
its operands; the body is a closed graph that reads only its own arguments (the verifier
holds it so), so its values live and die inside it. Its liveness is that of the body graph
itself: call these functions on the body (``subgraphs(node)`` lists them).
"""
from __future__ import annotations

from typing import Iterator, Sequence

from .ir import Graph, Node, Value


def _steps(g: Graph, steps: Sequence[Sequence[Node]] | None) -> Sequence[Sequence[Node]]:
    return [[n] for n in g.nodes] if steps is None else steps


def last_reads(g: Graph, steps: Sequence[Sequence[Node]] | None = None) -> dict[Value, int]:
    """The step that last reads each value read by a node of ``g`` (graph outputs excluded:
    see ``live_intervals``)."""
    last: dict[Value, int] = {}
    for i, nodes in enumerate(_steps(g, steps)):
        for node in nodes:
            for v in node.inputs:
                last[v] = i
    return last


def last_uses(g: Graph, steps: Sequence[Sequence[Node]] | None = None
              ) -> dict[int, list[Value]]:
    """For each step, the values whose last read is that step and which are not graph
    outputs: they may be freed once the step has run. Arguments are included."""
    keep = set(g.outputs)
    out: dict[int, list[Value]] = {}
    for v, i in last_reads(g, steps).items():
        if v not in keep:
            out.setdefault(i, []).append(v)
    return out


def live_intervals(g: Graph) -> dict[Value, tuple[int, int]]:
    """``(defining node, last reading node)`` of each node output; a value nothing reads
    lives at its node only; graph outputs live to the end (``len(g.nodes)``)."""
    last = last_reads(g)
    end = len(g.nodes)
    outs = set(g.outputs)
    live: dict[Value, tuple[int, int]] = {}
    for i, node in enumerate(g.nodes):
        for v in node.outputs:
            live[v] = (i, end if v in outs else max(i, last.get(v, i)))
    return live


def subgraphs(node: Node) -> Iterator[Graph]:
    """The graphs among ``node``'s attributes (a body has its own liveness)."""
    for a in node.attrs.values():
        if isinstance(a, Graph):
            yield a
