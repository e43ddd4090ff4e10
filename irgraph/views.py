"""Graph views for analysis and drawing: networkx and Graphviz DOT."""
from __future__ import annotations

import json

import networkx as nx


def to_networkx(g) -> "nx.MultiDiGraph":
    """Nodes are IR values' producers: ``("input", name)``, ``("param", name)`` or node index."""
    G = nx.MultiDiGraph(name=g.name)
    producer = {}
    for v in g.inputs:
        G.add_node(("input", v.name), kind="input", type=str(v.type))
        producer[v] = ("input", v.name)
    for v in g.params:
        G.add_node(("param", v.name), kind="param", type=str(v.type))
        producer[v] = ("param", v.name)
    for i, node in enumerate(g.nodes):
        G.add_node(i, kind="op", op=node.op, attrs=dict(node.attrs), loc=node.loc,
                   types=[str(v.type) for v in node.outputs])
        for j, v in enumerate(node.inputs):
            G.add_edge(producer[v], i, value=v.name, type=str(v.type), operand=j)
        for v in node.outputs:
            producer[v] = i
    for k, v in enumerate(g.outputs):
        G.add_node(("output", k), kind="output")
        G.add_edge(producer[v], ("output", k), value=v.name, type=str(v.type), operand=0)
    return G


def _q(s: str) -> str:
    return json.dumps(s)


def to_dot(g) -> str:
    """Graphviz DOT text; each edge is labelled with its value's name and type."""
    lines = [f"digraph {_q(g.name)} {{", "  rankdir=TB;", "  node [fontname=monospace];"]
    ids = {}
    for v in g.inputs + g.params:
        kind = "input" if v in g.inputs else "param"
        ids[v] = f"{kind}_{len(ids)}"
        lines.append(f"  {ids[v]} [shape=box, label={_q(f'{kind} %{v.name}')}];")
    for i, node in enumerate(g.nodes):
        lines.append(f"  n{i} [shape=ellipse, label={_q(node.op)}];")
        for v in node.inputs:
            lines.append(f"  {ids[v]} -> n{i} [label={_q(f'%{v.name}: {v.type}')}];")
        for v in node.outputs:
            ids[v] = f"n{i}"
    for k, v in enumerate(g.outputs):
        lines.append(f"  out{k} [shape=box, label={_q(f'output {k}')}];")
        lines.append(f"  {ids[v]} -> out{k} [label={_q(f'%{v.name}: {v.type}')}];")
    lines.append("}")
    return "\n".join(lines)
