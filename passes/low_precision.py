"""Widen 16-bit floats around every op: how a backend runs float16 and bfloat16.

An op on float16/bfloat16 computes in float32 and rounds each result once, to nearest even
(the registry's reference kernels and PyTorch do the same). ``widen_low_precision`` makes
that explicit in the graph: each node with a 16-bit input or result becomes

    cast(inputs -> float32) -> the op in float32 -> cast(results -> float16/bfloat16)

so a backend needs only the two casts (float32 <-> 16 bits, rounding to nearest even) to run
every op in both dtypes, with float32 accumulation in reductions, matmul and convolution.
Values, names, outputs and donations keep their 16-bit types. A node with a subgraph
(recurrence, fused region) keeps its boundary types and has its body widened alike. ``keep``
names nodes a backend runs natively on 16-bit operands (the LLVM backend's bf16 GEMM; a
region kept keeps its body as it is).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from irgraph import Graph
from irgraph.ir import Node
from irgraph.rewrite import GraphRewriter
from irgraph.types import LOW_DTYPES


def is_low(v) -> bool:
    return v.dtype in LOW_DTYPES


def _wide_attr(v):
    """An attribute of a 16-bit dtype (a ``dtype`` name, a constant array) in float32."""
    if isinstance(v, str) and v in LOW_DTYPES:
        return "float32"
    if isinstance(v, np.ndarray) and v.dtype.name in LOW_DTYPES:
        out = v.astype(np.float32)
        out.setflags(write=False)
        return out
    return v


def _touches_low(node: Node) -> bool:
    return (any(is_low(v) for v in node.inputs) or any(is_low(v) for v in node.outputs)
            or any(_wide_attr(a) is not a for a in node.attrs.values()))


def widen_low_precision(graph: Graph,
                        keep: Callable[[Node], bool] = lambda node: False) -> Graph:
    """``graph`` with every op on float16/bfloat16 computed in float32 between casts; the
    same object when no value is 16-bit."""
    if not any(_touches_low(n) or n.opdef.has_subgraph for n in graph.nodes):
        return graph
    rw = GraphRewriter(graph)
    wide = {}                       # new 16-bit value -> its float32 cast (one per value)

    def widened(v):
        if not is_low(v):
            return v
        if v not in wide:
            wide[v] = rw.emit("cast", v, dtype="float32")
        return wide[v]

    changed = False
    for node in graph.nodes:
        if keep(node):
            rw.copy_node(node)
            continue
        if node.opdef.has_subgraph:
            attrs = {k: widen_low_precision(a, keep) if isinstance(a, Graph) else a
                     for k, a in node.attrs.items()}
            changed |= any(attrs[k] is not node.attrs[k] for k in attrs)
            rw.copy_node(node, attrs)
            continue
        if node.op == "cast" or not _touches_low(node):
            rw.copy_node(node)
            continue
        changed = True
        attrs = {k: _wide_attr(a) for k, a in node.attrs.items()}
        res = rw.emit(node.op, *[widened(rw[v]) for v in node.inputs], loc=node.loc, **attrs)
        res = res if isinstance(res, tuple) else (res,)
        for old, new in zip(node.outputs, res):
            rw.replace(old, rw.emit("cast", new, loc=node.loc, dtype=old.dtype)
                       if is_low(old) else new)
    return rw.finish() if changed else graph
