"""The text form of a graph: one node a line, with types. See ir.py for the grammar.

    graph mlp(%x: f32[8,16]) params(%fc.weight: f32[32,16]) {
      %0: f32[8,32] = matmul(%x, %1)
      %2: f32[8,32] = relu(%0)  # model.py:12
      return %2
    }
"""
from __future__ import annotations

import json
import math

import numpy as np

from .registry import GraphBase
from .types import TensorType


def format_scalar(v) -> str:
    if v is None:
        return "none"
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    raise TypeError(f"cannot print attribute value {v!r}")


def format_attr(v, indent: str) -> str:
    if isinstance(v, GraphBase):
        body = format_graph(v, indent + "  ")
        return body.lstrip()
    if isinstance(v, np.ndarray):
        t = TensorType(v.shape, v.dtype)
        flat = ", ".join(format_scalar(x) for x in v.reshape(-1).tolist())
        return f"array<{t}>[{flat}]"
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(format_attr(x, indent) for x in v) + "]"
    return format_scalar(v)


def format_node(node, indent: str = "") -> str:
    outs = ", ".join(f"%{v.name}: {v.type}" for v in node.outputs)
    args = ", ".join(f"%{v.name}" for v in node.inputs)
    line = f"{outs} = {node.op}({args})"
    if node.attrs:
        attrs = ", ".join(f"{k}={format_attr(v, indent)}" for k, v in sorted(node.attrs.items()))
        line += " {" + attrs + "}"
    loc = format_loc(node.loc)
    if loc:
        line += f"  # {loc}"
    return line


def format_loc(loc: str | None) -> str:
    """A location as its comment holds it: one line (a comment ends at a newline) without the
    surrounding whitespace the parser strips, so the text reads back to the same location."""
    return " ".join(str(loc).split("\n")).strip() if loc else ""


def format_graph(g, indent: str = "") -> str:
    inner = indent + "  "
    sig = ", ".join(f"%{v.name}: {v.type}" for v in g.inputs)
    head = f"{indent}graph {g.name}({sig})"
    if g.params:
        head += " params(" + ", ".join(f"%{v.name}: {v.type}" for v in g.params) + ")"
    lines = [head + " {"]
    for node in g.nodes:
        lines.append(inner + format_node(node, inner))
    if g.donations:
        pairs = ", ".join(f"{o}->{a}" for o, a in sorted(g.donations.items()))
        lines.append(f"{inner}donate({pairs})")
    lines.append(inner + "return " + ", ".join(f"%{v.name}" for v in g.outputs))
    lines.append(indent + "}")
    return "\n".join(lines)
