"""Binding weights: evaluate what depends on parameters only, once, into new parameters.

``fold_params(graph, weights) -> (graph, weights)`` is the step after ``fold_bn`` (whose
folded weights are nodes over the original parameters) and the like: every value computed
from parameters and constants alone that the rest of the graph reads becomes a parameter
holding its value, and parameters nothing reads any more are dropped. A value larger than
the parameters it comes from (a broadcast) is not stored; its operands are, instead.
"""
from __future__ import annotations

import numpy as np

from irgraph import Graph, GraphRewriter, IRError, Value, verify
from irgraph.interpreter import run_node

from .analysis import CONST_SOURCES, static_values


def _leaf_size(g: Graph, static: set[Value]) -> dict[Value, int]:
    """For each static value, the size of the largest parameter it is computed from."""
    size: dict[Value, int] = {p: p.type.size for p in g.params}
    for node in g.nodes:
        if node.outputs[0] in static:
            s = max((size.get(v, 0) for v in node.inputs), default=0)
            for v in node.outputs:
                size[v] = s
    return size


def _materialized(g: Graph, static: set[Value]) -> set[Value]:
    """The static node outputs to store as parameters: those the dynamic part reads (or the
    outputs), taking operands instead of a value that is larger than its sources."""
    size = _leaf_size(g, static)
    frontier = [v for n in g.nodes if n.outputs[0] not in static for v in n.inputs]
    frontier += list(g.outputs)
    out: set[Value] = set()
    seen: set[Value] = set()
    while frontier:
        v = frontier.pop()
        if v in seen or v not in static or v.node is None:
            continue
        seen.add(v)
        if v.node.op in CONST_SOURCES:
            continue
        if v.type.size <= max(size[v], 1):
            out.add(v)
        else:
            frontier.extend(v.node.inputs)
    return out


def _evaluate(g: Graph, targets: set[Value], weights: dict[str, np.ndarray]) -> dict:
    env: dict[Value, np.ndarray] = {}
    for p in g.params:
        if p.name in weights:
            a = np.asarray(weights[p.name])
            if a.shape != p.type.shape:
                raise ValueError(f"weight {p.name!r} has shape {a.shape}, the graph declares "
                                 f"{p.type}")
            env[p] = a.astype(p.type.np_dtype, copy=False)
    needed = set(targets)
    for node in reversed(g.nodes):
        if any(v in needed for v in node.outputs):
            needed.update(node.inputs)
    for node in g.nodes:
        if not any(v in needed for v in node.outputs):
            continue
        missing = [v.name for v in node.inputs if v not in env]
        if missing:
            raise IRError(f"fold_params: no value for parameter(s) {missing}, needed by "
                          f"{node!r}")
        for v, a in zip(node.outputs, run_node(node, [env[v] for v in node.inputs])):
            env[v] = a
    return env


def fold_params(g: Graph, weights: dict[str, np.ndarray]) -> tuple[Graph, dict[str, np.ndarray]]:
    """Precompute the parameter-only part of ``g`` from ``weights`` (name -> array).

    Parameters missing from ``weights`` stay unbound parameters. Returns the new graph (same
    inputs and outputs; its parameters are the original ones it still reads, then the
    precomputed ones) and the weights of its bound parameters.
    """
    static = static_values(g, [p for p in g.params if p.name in weights])
    targets = _materialized(g, static)
    env = _evaluate(g, targets, weights)
    rw = GraphRewriter(g)
    new_weights: dict[str, np.ndarray] = {}
    order = {v: i for i, v in enumerate(g.values())}
    for v in sorted(targets, key=order.__getitem__):
        hint = _name_hint(v, static, g)
        p = rw.dst.add_param(rw.dst.fresh_name(hint), v.type)
        new_weights[p.name] = np.array(env[v], dtype=v.type.np_dtype)   # 0-d stays 0-d
        rw.replace(v, p)
    needed = set(g.outputs)
    keep = []
    for node in reversed(g.nodes):
        if node.outputs[0] not in targets and any(v in needed for v in node.outputs):
            keep.append(node)
            needed.update(node.inputs)
    for node in reversed(keep):
        rw.copy_node(node)
    out = rw.finish()
    return _drop_unused_params(out, g, weights, new_weights)


def _name_hint(v: Value, static: set[Value], g: Graph) -> str:
    """``<largest source parameter>.folded``: a readable name for a precomputed weight."""
    sources, stack = [], [v]
    seen: set[Value] = set()
    while stack:
        u = stack.pop()
        if u in seen:
            continue
        seen.add(u)
        if u in g.params:
            sources.append(u)
        elif u.node is not None:
            stack.extend(u.node.inputs)
    if not sources:
        return "folded"
    return max(sources, key=lambda p: p.type.size).name + ".folded"


def _drop_unused_params(out: Graph, src: Graph, weights, new_weights) -> tuple[Graph, dict]:
    read = {v for n in out.nodes for v in n.inputs} | set(out.outputs)
    args_before = out.arguments
    donated = {args_before[a] for a in out.donations.values()}
    out.params = [p for p in out.params if p in read or p in donated]
    index = {v: i for i, v in enumerate(out.arguments)}
    out.donations = {o: index[args_before[a]] for o, a in out.donations.items()}
    out._names = {v.name for v in out.values()}
    res = {}
    for p in out.params:
        if p.name in new_weights or p.name in weights:
            res[p.name] = new_weights[p.name] if p.name in new_weights else weights[p.name]
    return verify(out), res
