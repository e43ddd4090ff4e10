"""Hoist matmul accumulators out of scans: one big GEMM instead of a rank-b update per step.

Backpropagation through time sums the weight gradient over steps inside the backward scan
(fig. 10.2; the sums over t that follow eq. 10.21): a carry ``G' = G + S_t^T Q_t`` where ``S_t`` is a sequence
slice and ``Q_t`` a value of the step. Per step that is a thin (b-row) product and a full
read-modify-write of ``G``. Because the sum is linear,

    G_T = G_0 + sum_t S_t^T Q_t = G_0 + (S as [T*b, m])^T (Q as [T*b, n]),

so the carry leaves the scan, ``Q_t`` becomes one more per-step output (if it is not a
sequence already) and one matmul after the scan does the sum. Only unmasked scans that save
no states qualify (a mask or saved carries would need the per-step value of ``G``).

``fold_batched_matmul_sums`` applies the same identity outside scans: a sum over the batch
axis of a batched ``transpose(S) @ Q`` (the gradient of a weight shared by every step of an
unrolled or hoisted projection) becomes that one matmul.
"""
from __future__ import annotations

from irgraph import Graph, Node, Value
from irgraph.ops.recurrence import num_steps
from irgraph.rewrite import GraphRewriter

from .manager import register_pass


@register_pass("scan_accumulate")
def scan_accumulate(graph: Graph) -> Graph:
    """Weight-gradient sums over steps as one GEMM each: accumulator carries hoisted out of
    scans (``hoist_scan_accumulators``), then sums of batched products over the step axis
    (``fold_batched_matmul_sums``); a backend that lowers scans loop by loop declares it."""
    return fold_batched_matmul_sums(hoist_scan_accumulators(graph))


def hoist_scan_accumulators(graph: Graph) -> Graph:
    """``graph`` with every qualifying accumulator carry of its scans hoisted (repeatedly,
    so a scan with several accumulators loses them all); unchanged when none qualifies."""
    while True:
        found = next(((n, m) for n in graph.nodes if n.op == "scan"
                      for m in [_match(n)] if m is not None), None)
        if found is None:
            return graph
        graph = _rewrite(graph, *found)


class _Acc:
    """Carry ``i`` of a scan body is ``i + transpose(s) @ q`` (or ``(...) + i``)."""

    def __init__(self, i: int, add: Node, mm: Node, s: Value, q: Value, carry_first: bool):
        self.i, self.add, self.mm, self.s, self.q = i, add, mm, s, q
        self.carry_first = carry_first


def _match(scan: Node) -> _Acc | None:
    a = scan.attrs
    if a["masked"] or a["save_every"]:
        return None
    steps = num_steps([v.type for v in scan.inputs], a)
    body: Graph = a["body"]
    nc, ns = a["num_carry"], a["num_seq"]
    seqs = body.inputs[nc:nc + ns]
    users = body.users()
    per_step = set(seqs) | {v for n in body.nodes for v in n.outputs}
    for i in range(nc):
        carry, out = body.inputs[i], body.outputs[i]
        add = out.node
        if (add is None or add.op != "add" or body.outputs.count(out) != 1
                or carry not in add.inputs or len(users[carry]) != 1
                or out.dtype not in ("float32", "float64") or out.type.rank != 2):
            continue
        first = add.inputs[0] is carry
        prod = add.inputs[1] if first else add.inputs[0]
        mm = prod.node
        if (mm is None or mm.op != "matmul" or len(users[prod]) != 1 or prod in body.outputs
                or prod.type != out.type):
            continue
        t, q = mm.inputs
        if (t.node is None or t.node.op != "transpose" or tuple(t.node.attrs["perm"]) != (1, 0)
                or q.type.rank != 2 or q not in per_step or q in body.inputs[:nc]):
            continue
        s = t.node.inputs[0]
        outer = scan.inputs[nc + seqs.index(s)] if s in seqs else None
        if outer is not None and s.type.rank == 2 and outer.shape[0] == steps and (
                q not in seqs or scan.inputs[nc + seqs.index(q)].shape[0] == steps):
            return _Acc(i, add, mm, s, q, first)
    return None


def _new_body(body: Graph, acc: _Acc, nc: int) -> tuple[Graph, int | None]:
    """The body without carry ``acc.i``; returns it and the index of ``q`` among the new
    per-step outputs (None when ``q`` is a sequence slice, read from outside instead)."""
    g = Graph(body.name)
    env: dict[Value, Value] = {}
    for k, v in enumerate(body.inputs):
        if k != acc.i:
            env[v] = g.add_input(v.name, v.type)
    for v in body.params:
        env[v] = g.add_param(v.name, v.type)
    outs = [v for k, v in enumerate(body.outputs) if k != acc.i]
    q_index = None
    if acc.q not in body.inputs:
        ys = body.outputs[nc:]
        q_index = ys.index(acc.q) if acc.q in ys else len(ys)
        if acc.q not in ys:
            outs.append(acc.q)
    live = _live(body, outs)
    for n in body.nodes:
        if n in live:
            new = g.add_node(n.op, [env[v] for v in n.inputs], n.attrs, n.loc,
                             [v.name for v in n.outputs])
            env.update(zip(n.outputs, new))
    g.set_outputs([env[v] for v in outs])
    return g, q_index


def _live(body: Graph, outs) -> set[Node]:
    need = {v for v in outs}
    live: set[Node] = set()
    for n in reversed(body.nodes):
        if any(v in need for v in n.outputs):
            live.add(n)
            need.update(n.inputs)
    return live


def _flat(rw: GraphRewriter, v: Value, loc) -> Value:
    t, r, c = v.shape
    return rw.emit("reshape", v, shape=(t * r, c), loc=loc)


def _rewrite(graph: Graph, scan: Node, acc: _Acc) -> Graph:
    a = scan.attrs
    nc, ns = a["num_carry"], a["num_seq"]
    body: Graph = a["body"]
    new_body, q_index = _new_body(body, acc, nc)
    rw = GraphRewriter(graph)
    for node in graph.nodes:
        if node is not scan:
            rw.copy_node(node)
            continue
        ins = [rw[v] for k, v in enumerate(node.inputs) if k != acc.i]
        outs = rw.dst.add_node("scan", ins, dict(a, body=new_body, num_carry=nc - 1),
                               node.loc)
        old_carries, old_ys = node.outputs[:nc], node.outputs[nc:]
        new_carries, new_ys = outs[:nc - 1], outs[nc - 1:]
        for old, new in zip([v for k, v in enumerate(old_carries) if k != acc.i],
                            new_carries):
            rw.replace(old, new)
        for old, new in zip(old_ys, new_ys):
            rw.replace(old, new)
        seq_outer = dict(zip(body.inputs[nc:nc + ns], node.inputs[nc:nc + ns]))
        s_all = rw[seq_outer[acc.s]]
        q_all = rw[seq_outer[acc.q]] if q_index is None else new_ys[q_index]
        total = rw.emit("matmul", rw.emit("transpose", _flat(rw, s_all, node.loc), perm=(1, 0),
                                          loc=node.loc), _flat(rw, q_all, node.loc),
                        loc=node.loc)
        init = rw[node.inputs[acc.i]]
        pair = (init, total) if acc.carry_first else (total, init)
        rw.replace(old_carries[acc.i], rw.emit("add", *pair, loc=node.loc))
    return rw.finish()


def fold_batched_matmul_sums(graph: Graph) -> Graph:
    """``sum(transpose(S, (0, 2, 1)) @ Q, axis=0)`` with S: [T, b, m], Q: [T, b, n] and the
    product read by nothing else -> ``(S as [T*b, m])^T @ (Q as [T*b, n])`` (reshaped to the
    sum's shape); ``graph`` itself when nothing matches."""
    from irgraph.ops.core import normalize_axes
    users: dict[Value, int] = {}
    for n in graph.nodes:
        for v in n.inputs:
            users[v] = users.get(v, 0) + 1
    found: dict[Node, tuple[Value, Value]] = {}
    for n in graph.nodes:
        if n.op != "sum" or normalize_axes(n.attrs["axis"], n.inputs[0].type.rank) != (0,):
            continue
        m = n.inputs[0].node
        if (m is None or m.op != "matmul" or users.get(m.outputs[0]) != 1
                or m.outputs[0] in graph.outputs or not m.outputs[0].type.is_float):
            continue
        a, q = m.inputs
        t = a.node
        if (t is None or t.op != "transpose" or tuple(t.attrs["perm"]) != (0, 2, 1)
                or a.type.rank != 3 or q.type.rank != 3 or a.shape[0] != q.shape[0]):
            continue
        found[n] = (t.inputs[0], q)
    if not found:
        return graph
    rw = GraphRewriter(graph)
    for node in graph.nodes:
        if node not in found:
            rw.copy_node(node)
            continue
        s_all, q_all = found[node]
        total = rw.emit("matmul", rw.emit("transpose", _flat(rw, rw[s_all], node.loc),
                                          perm=(1, 0), loc=node.loc),
                        _flat(rw, rw[q_all], node.loc), loc=node.loc)
        rw.replace(node.outputs[0], rw.emit("reshape", total, shape=node.outputs[0].shape,
                                            loc=node.loc))
    from .simplify import dce                    # the batched products are dead now
    return dce(rw.finish())
