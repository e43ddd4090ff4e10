"""Cross-backend checking: where does a backend first disagree with the reference?

    report = compare_backends(graph, args)              # every backend's outputs vs reference
    div = find_divergence(graph, args, "llvm")          # the first node that differs
    print(div.format())

Intermediate values are made observable by ``observe(graph, values)``: a copy of the graph
cut after the last node it needs, whose outputs are the chosen values. The reference values
of every node come from ONE run of the reference interpreter; the backend is then compiled
on observation graphs only: ``find_divergence`` first compares the graph's own outputs (one
compile), and when they differ bisects over the topological order. Each probe observes the
nodes of the current window that precede its midpoint, so the culprit is found in
O(log n) compiles and the values observed over all probes add up to O(n).

A node *diverges* when one of its outputs is not within ``atol + rtol * |reference|`` of the
reference (NaN matches NaN). The first diverging node is the one to inspect: its inputs
agreed (every node before it agreed), its outputs do not.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

import irgraph.backends as backends
from irgraph import Graph, GraphRewriter, Node, Value
from irgraph.interpreter import interpret
from irgraph.printer import format_node

Backend = str | Callable[[Graph], object]


def observe(graph: Graph, values: Sequence[Value], name: str | None = None) -> Graph:
    """A copy of ``graph`` whose outputs are ``values`` (inputs, parameters or node outputs
    of ``graph``), without the nodes after the last one they need and without donations.
    The copy takes the same arguments as ``graph``."""
    index = {id(n): i for i, n in enumerate(graph.nodes)}
    last = -1
    for v in values:
        if v.node is not None:
            if id(v.node) not in index:
                raise ValueError(f"%{v.name} is not a value of graph {graph.name!r}")
            last = max(last, index[id(v.node)])
        elif v not in graph.arguments:
            raise ValueError(f"%{v.name} is not a value of graph {graph.name!r}")
    rw = GraphRewriter(graph, name or f"{graph.name}_observed")
    for node in graph.nodes[:last + 1]:
        rw.copy_node(node)
    return rw.finish([rw[v] for v in values])


def _compiler(backend: Backend, options: dict) -> Callable[[Graph], object]:
    if callable(backend):
        return backend
    if backend not in backends.available():
        raise ValueError(f"unknown backend {backend!r}; choose one of {backends.available()}")
    return lambda g: backends.compile(g, backend, **options)


def _run(exe, args) -> list[np.ndarray]:
    # copies: a donating executable may overwrite its arguments
    return [np.asarray(o) for o in exe(*[np.array(a, copy=True) for a in args])]


def max_abs_diff(a, b) -> float:
    """max |a - b| over the elements (0 for empty arrays; NaN where exactly one is NaN: inf)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    if a.size == 0:
        return 0.0
    both_nan = np.isnan(a) & np.isnan(b)
    d = np.where(both_nan, 0.0, np.abs(a - b))
    d = np.where(np.isnan(d), np.inf, d)
    return float(d.max())


def close(got, ref, rtol: float, atol: float) -> bool:
    got, ref = np.asarray(got), np.asarray(ref)
    if got.shape != ref.shape:
        return False
    if ref.dtype == bool or got.dtype == bool:
        return bool(np.array_equal(got, ref))
    return bool(np.allclose(np.asarray(got, np.float64), np.asarray(ref, np.float64),
                            rtol=rtol, atol=atol, equal_nan=True))


def _max_abs(a) -> float:
    a = np.asarray(a)
    if a.size == 0:
        return 0.0
    return float(np.nanmax(np.abs(a.astype(np.float64)))) if not np.all(np.isnan(
        a.astype(np.float64))) else float("nan")


def reference_values(graph: Graph, args: Sequence) -> dict[Value, np.ndarray]:
    """Every value of ``graph`` (arguments and node outputs) on the reference interpreter."""
    vals = list(graph.arguments) + [v for n in graph.nodes for v in n.outputs]
    outs = interpret(observe(graph, vals), [np.array(a, copy=True) for a in args])
    return dict(zip(vals, outs))


@dataclass
class NodeDiff:
    index: int                  # position in graph.nodes
    node: Node
    max_diff: float             # over the node's outputs
    diverges: bool

    @property
    def where(self) -> str:
        return self.node.loc or "?"


@dataclass
class Divergence:
    """What ``find_divergence`` found: agreement, or the first node that differs."""
    graph: Graph
    backend: str
    rtol: float
    atol: float
    output_diffs: list[float]           # per graph output, max |backend - reference|
    outputs_agree: bool
    culprit: NodeDiff | None = None
    compiles: int = 0
    observed: dict[int, NodeDiff] = field(default_factory=dict)   # node index -> diff
    ref: dict = field(default_factory=dict, repr=False)

    @property
    def agrees(self) -> bool:
        return self.outputs_agree and self.culprit is None

    def context(self, around: int = 2) -> str:
        """The IR lines around the culprit (marked ``>>``) and its inputs' max |value|."""
        if self.culprit is None:
            return ""
        k = self.culprit.index
        nodes = self.graph.nodes
        lines = []
        for i in range(max(0, k - around), min(len(nodes), k + around + 1)):
            mark = ">>" if i == k else "  "
            lines.append(f"{mark} {format_node(nodes[i])}")
        node = self.culprit.node
        for j, v in enumerate(node.inputs):
            if v in self.ref:
                lines.append(f"   input {j} %{v.name}: {v.type}  max|x| = "
                             f"{_max_abs(self.ref[v]):.6g}")
        for j, v in enumerate(node.outputs):
            if v in self.ref:
                lines.append(f"   output {j} %{v.name}: {v.type}  reference max|y| = "
                             f"{_max_abs(self.ref[v]):.6g}")
        return "\n".join(lines)

    def format(self) -> str:
        head = (f"{self.backend}: outputs "
                + ", ".join(f"#{i} max|diff| {d:.3g}" for i, d in enumerate(self.output_diffs)))
        if self.agrees:
            return (f"{head}\n{self.backend}: agrees with the reference "
                    f"(rtol={self.rtol:g}, atol={self.atol:g}); {self.compiles} compile(s)")
        if self.culprit is None:
            return f"{head}\n{self.backend}: the outputs differ but no node does (see above)"
        c = self.culprit
        return (f"{head}\n{self.backend}: first divergent node #{c.index} "
                f"'{c.node.op}' at {c.where}: max|diff| {c.max_diff:.3g} "
                f"(rtol={self.rtol:g}, atol={self.atol:g}; found in {self.compiles} "
                f"compiles)\n{self.context()}")


def _node_diff(i: int, node: Node, got: Sequence, ref: dict, rtol, atol) -> NodeDiff:
    diffs = [max_abs_diff(g, ref[v]) for g, v in zip(got, node.outputs)]
    bad = any(not close(g, ref[v], rtol, atol) for g, v in zip(got, node.outputs))
    return NodeDiff(i, node, max(diffs, default=0.0), bad)


def node_differences(graph: Graph, args: Sequence, backend: Backend = "llvm",
                     rtol: float = 1e-4, atol: float = 1e-5, ref=None,
                     **options) -> list[NodeDiff]:
    """Every node's largest difference from the reference, from ONE compile that observes
    every node output (the per-node table; ``find_divergence`` is the cheap search)."""
    ref = reference_values(graph, args) if ref is None else ref
    return _probe(graph, range(len(graph.nodes)), args, _compiler(backend, options), ref,
                  rtol, atol)


def _probe(graph, indices, args, compile_fn, ref, rtol, atol) -> list[NodeDiff]:
    indices = list(indices)
    vals = [v for i in indices for v in graph.nodes[i].outputs]
    if not vals:
        return []
    got = _run(compile_fn(observe(graph, vals)), args)
    out, pos = [], 0
    for i in indices:
        n = len(graph.nodes[i].outputs)
        out.append(_node_diff(i, graph.nodes[i], got[pos:pos + n], ref, rtol, atol))
        pos += n
    return out


def find_divergence(graph: Graph, args: Sequence, backend: Backend = "llvm",
                    rtol: float = 1e-4, atol: float = 1e-5, ref=None,
                    **options) -> Divergence:
    """Compare ``backend`` with the reference on ``graph`` called with ``args`` (inputs then
    parameters); when an output differs, bisect for the first node whose outputs differ.

    ``backend``: a backend name (``options`` go to its compile) or a function
    ``graph -> executable``. ``ref``: ``reference_values(graph, args)`` if already computed.
    """
    if len(args) != len(graph.arguments):
        raise ValueError(f"graph {graph.name!r} takes {len(graph.arguments)} arguments "
                         f"(inputs then parameters), got {len(args)}")
    compile_fn = _compiler(backend, options)
    name = backend if isinstance(backend, str) else getattr(backend, "__name__", "backend")
    ref = reference_values(graph, args) if ref is None else ref
    got = _run(compile_fn(graph), args)
    out_diffs = [max_abs_diff(g, ref[v]) for g, v in zip(got, graph.outputs)]
    agree = all(close(g, ref[v], rtol, atol) for g, v in zip(got, graph.outputs))
    result = Divergence(graph, name, rtol, atol, out_diffs, agree, compiles=1, ref=ref)
    if agree:
        return result
    # invariant: nodes[:lo] agree; some node in nodes[lo:hi + 1] diverges (an output does)
    producers = [i for i, n in enumerate(graph.nodes)
                 if any(v in graph.outputs for v in n.outputs)]
    lo, hi = 0, max(producers, default=-1)
    if hi < 0:
        return result           # the differing outputs are arguments: no node to blame
    while lo < hi:
        mid = (lo + hi) // 2
        diffs = _probe(graph, range(lo, mid + 1), args, compile_fn, ref, rtol, atol)
        result.compiles += 1
        for d in diffs:
            result.observed[d.index] = d
        bad = [d.index for d in diffs if d.diverges]
        if bad:         # the window's nodes before its first bad one agree
            lo = hi = min(bad)
        else:
            lo = mid + 1
    if lo not in result.observed:
        (d,) = _probe(graph, [lo], args, compile_fn, ref, rtol, atol)
        result.compiles += 1
        result.observed[lo] = d
    culprit = result.observed[lo]
    result.culprit = culprit if culprit.diverges else None
    return result
