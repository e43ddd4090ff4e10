"""Small queries on graphs that several passes share: constants, users, attribute keys."""
from __future__ import annotations

import heapq
from typing import Any, Sequence

import numpy as np

from irgraph import Graph, Node, Value
from irgraph.registry import ops_with

# ops without inputs whose value is fixed by their attributes (constant folding evaluates them)
CONST_SOURCES = ops_with("constant")

# ops with an effect beyond their outputs: never folded, merged or removed
EFFECT_OPS = ops_with("effect")

# ops whose two operands may be swapped
COMMUTATIVE = ops_with("commutative")


def splat(v: Value) -> float | None:
    """The one value every element of ``v`` has, if ``v`` is a constant splat; else None."""
    node = v.node
    if node is None:
        return None
    if node.op == "full":
        return node.attrs["value"]
    if node.op == "constant":
        arr = node.attrs["value"]
        if arr.size and np.all(arr == arr.flat[0]):
            return arr.flat[0].item()
    return None


def is_splat_of(v: Value, c: float) -> bool:
    s = splat(v)
    return s is not None and s == c


def const_array(v: Value) -> np.ndarray | None:
    """The value of ``v`` if a constant source produced it (None otherwise)."""
    node = v.node
    if node is None or node.op not in CONST_SOURCES:
        return None
    return np.asarray(node.opdef.run([], node.attrs)[0], dtype=v.type.np_dtype)


def freeze(x: Any) -> Any:
    """A hashable key for an attribute value (arrays by bytes, graphs by text, floats exact)."""
    if isinstance(x, np.ndarray):
        return ("array", x.dtype.str, x.shape, x.tobytes())
    if isinstance(x, Graph):
        return ("graph", str(x))
    if isinstance(x, (tuple, list)):
        return ("seq",) + tuple(freeze(i) for i in x)
    if isinstance(x, float):
        return ("float", x.hex())   # keeps -0.0 apart from 0.0, and nan equal to nan
    return (type(x).__name__, x)


def attrs_key(attrs: dict) -> tuple:
    return tuple((k, freeze(v)) for k, v in sorted(attrs.items()))


def use_counts(g: Graph) -> dict[Value, int]:
    """How many times each value is read (by nodes, and once per appearance as an output)."""
    counts: dict[Value, int] = {v: 0 for v in g.values()}
    for node in g.nodes:
        for v in node.inputs:
            counts[v] += 1
    for v in g.outputs:
        counts[v] += 1
    return counts


def producers(g: Graph) -> dict[Value, Node]:
    return {v: n for n in g.nodes for v in n.outputs}


def static_values(g: Graph, params=None) -> set[Value]:
    """Values computed from parameters (``params``, default all) and constants only (no graph
    input, no effect): the weights a pass may precompute once their values are bound."""
    static: set[Value] = set(g.params if params is None else params)
    for node in g.nodes:
        if node.op in EFFECT_OPS or (not node.inputs and node.op not in CONST_SOURCES):
            continue
        if all(v in static for v in node.inputs):
            static.update(node.outputs)
    return static


def priority_order(keys: Sequence, deps: Sequence[set[int]], what: str = "units") -> list[int]:
    """Indices ``0..n-1`` in a topological order of ``deps`` (``deps[u]``: the indices ``u``
    waits for), the ready index with the smallest ``keys[u]`` first (Kahn's algorithm on a
    heap): the order of the original graph kept wherever the dependences allow it."""
    users: list[list[int]] = [[] for _ in keys]
    for u, ds in enumerate(deps):
        for d in ds:
            users[d].append(u)
    waiting = [len(ds) for ds in deps]
    ready = [(keys[u], u) for u in range(len(keys)) if waiting[u] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, u = heapq.heappop(ready)
        order.append(u)
        for w in users[u]:
            waiting[w] -= 1
            if waiting[w] == 0:
                heapq.heappush(ready, (keys[w], w))
    assert len(order) == len(keys), f"{what} form a cycle"
    return order
