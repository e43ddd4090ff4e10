"""Let a backward scan read the forward scan's per-step outputs instead of recomputing them.

The VJP of ``scan`` (fig. 10.2, BPTT eq. 10.20-10.21) reruns the step body inside the
backward scan to get the step's values, from the carries the forward scan saved
(``save_every=1``). A value the forward scan already outputs per step (``y_t``, e.g.
h_t = tanh(h_{t-1} W + x_t) of eq. 10.8) is then computed twice. This pass finds backward
body values that are, node for node, a forward body output at the same time index t (the
backward slot reads the forward's saved carries, its sequences or its constants) and makes
them one more sequence input of the backward scan: the stacked forward output.
"""
from __future__ import annotations

from irgraph import Graph, Node, Value
from irgraph.ops.recurrence import num_steps
from irgraph.rewrite import GraphRewriter

from .manager import register_pass


@register_pass("scan_reuse")
def scan_reuse(graph: Graph) -> Graph:
    """A backward scan reads the per-step outputs its forward scan stacked instead of
    recomputing them from the saved carries (``reuse_forward_outputs``); a backend that
    lowers scans loop by loop declares it (backends/llvm)."""
    return reuse_forward_outputs(graph)


def reuse_forward_outputs(graph: Graph) -> Graph:
    """``graph`` with every recomputed forward output read from the forward scan."""
    while True:
        found = _find(graph)
        if found is None:
            return graph
        graph = _rewrite(graph, *found)


def _steps(node: Node) -> int:
    return num_steps([v.type for v in node.inputs], node.attrs)


def _keys(body: Graph, leaves: dict[Value, object], ids: dict) -> dict[Value, int]:
    """A structural id for each body value computable from ``leaves`` (hash-consed)."""
    key: dict[Value, int] = {}
    for v, leaf in leaves.items():
        key[v] = ids.setdefault(("leaf", leaf), len(ids))
    for n in body.nodes:
        if not all(v in key for v in n.inputs):
            continue
        attrs = tuple((k, str(a)) for k, a in sorted(n.attrs.items()))
        for v in n.outputs:
            k = (n.op, attrs, tuple(key[x] for x in n.inputs), v.index)
            key[v] = ids.setdefault(k, len(ids))
    return key


def _fwd_leaves(f: Node) -> dict[Value, object]:
    a = f.attrs
    body, nc, ns = a["body"], a["num_carry"], a["num_seq"]
    leaves: dict[Value, object] = {}
    for c in range(nc):
        leaves[body.inputs[c]] = ("carry", id(f), c)
    for j in range(ns):
        leaves[body.inputs[nc + j]] = ("outer", id(f.inputs[nc + j]))
    for v, outer in zip(body.inputs[nc + ns:] + body.params, f.inputs[nc + ns:]):
        leaves[v] = ("outer", id(outer))
    return leaves


def _bwd_leaves(bk: Node, saved_of: dict[Value, tuple]) -> dict[Value, object]:
    """Backward body inputs that are forward quantities at time t (others are left out)."""
    a = bk.attrs
    body, nc, ns = a["body"], a["num_carry"], a["num_seq"]
    leaves: dict[Value, object] = {}
    for j in range(ns):
        outer = bk.inputs[nc + j]
        leaves[body.inputs[nc + j]] = saved_of.get(outer, ("outer", id(outer)))
    for v, outer in zip(body.inputs[nc + ns:] + body.params, bk.inputs[nc + ns:]):
        leaves[v] = ("outer", id(outer))
    return leaves


def _find(graph: Graph):
    scans = [n for n in graph.nodes if n.op == "scan"]
    for f in scans:
        a = f.attrs
        if a["reverse"] or a["masked"] or a["save_every"] != 1:
            continue
        nc = a["num_carry"]
        ny = len(a["body"].outputs) - nc
        saved_of = {f.outputs[nc + ny + c]: ("carry", id(f), c) for c in range(nc)}
        ids: dict = {}
        fkey = _keys(a["body"], _fwd_leaves(f), ids)
        y_of = {}
        for j, v in enumerate(a["body"].outputs[nc:]):
            y_of.setdefault(fkey[v], j)
        for bk in scans:
            ba = bk.attrs
            if bk is f or ba["masked"] or _steps(bk) != _steps(f):
                continue
            if not any(v in saved_of for v in bk.inputs):
                continue
            bkey = _keys(ba["body"], _bwd_leaves(bk, saved_of), ids)
            for n in ba["body"].nodes:
                for v in n.outputs if len(n.outputs) == 1 else ():
                    j = y_of.get(bkey.get(v, -1))
                    if j is not None and n.op not in ("full", "constant"):
                        return bk, v, f.outputs[nc + j]
    return None


def _rewrite(graph: Graph, bk: Node, v: Value, stacked: Value) -> Graph:
    """``bk`` with body value ``v`` read from a new sequence input (``stacked``)."""
    a = bk.attrs
    body, nc, ns = a["body"], a["num_carry"], a["num_seq"]
    g = Graph(body.name)
    env: dict[Value, Value] = {}
    for x in body.inputs[:nc + ns]:
        env[x] = g.add_input(x.name, x.type)
    env[v] = g.add_input(g.fresh_name(f"{v.name}_fwd"), v.type)
    for x in body.inputs[nc + ns:]:
        env[x] = g.add_input(x.name, x.type)
    for x in body.params:
        env[x] = g.add_param(x.name, x.type)
    need = set(body.outputs)
    live = set()
    for n in reversed(body.nodes):
        if any(o in need for o in n.outputs) and v not in n.outputs:
            live.add(n)
            need.update(n.inputs)
    for n in body.nodes:
        if n in live:
            outs = g.add_node(n.op, [env[x] for x in n.inputs], n.attrs, n.loc,
                              [o.name for o in n.outputs])
            env.update(zip(n.outputs, outs))
    g.set_outputs([env[x] for x in body.outputs])
    rw = GraphRewriter(graph)
    for node in graph.nodes:
        if node is not bk:
            rw.copy_node(node)
            continue
        ins = [rw[x] for x in node.inputs]
        ins.insert(nc + ns, rw[stacked])
        outs = rw.dst.add_node("scan", ins, dict(a, body=g, num_seq=ns + 1), node.loc)
        for old, new in zip(node.outputs, outs):
            rw.replace(old, new)
    return rw.finish()
