"""Mixed precision (PyTorch's autocast) as a graph rewrite of a float32 loss graph.

``autocast(graph, "bfloat16")`` keeps every parameter, input and output in its own dtype
(master weights stay float32) and changes what each node computes in:

* matrix products and convolutions (``LOW_OPS``: the registry's ``autocast_low`` trait) run
  on 16-bit operands (float32 operands are cast down first) and give 16-bit results; their
  float32 accumulation is the backends';
* reductions, softmax, log_softmax, exp/log/pow, losses and norms (``FLOAT32_OPS``: the
  ``autocast_float32`` trait) run in float32 (16-bit operands are cast up);
* every other op runs in its operands' dtype; operands of mixed float dtypes are cast to
  float32 (PyTorch's promotion: float16/bfloat16 with float32 gives float32).

Gradients follow: the VJP of a cast is the cast back, so the backward matmuls and
convolutions run in 16 bits too and the parameters' gradients arrive in float32.
"""
from __future__ import annotations

from irgraph import Graph, IRError, get_op
from irgraph.registry import ops_with
from irgraph.rewrite import GraphRewriter
from irgraph.types import LOW_DTYPES, canonical_dtype

LOW_OPS = ops_with("autocast_low")
FLOAT32_OPS = ops_with("autocast_float32")


def autocast(graph: Graph, dtype: str) -> Graph:
    """``graph`` with matmuls and convolutions in ``dtype`` (float16 or bfloat16)."""
    dtype = canonical_dtype(dtype)
    if dtype not in LOW_DTYPES:
        raise ValueError(f"autocast takes float16 or bfloat16, got {dtype}")
    rw = GraphRewriter(graph)
    casts = {}

    def as_(v, dt):
        if v.dtype == dt or not v.type.is_float:
            return v
        if (v, dt) not in casts:
            casts[v, dt] = rw.emit("cast", v, dtype=dt)
        return casts[v, dt]

    for node in graph.nodes:
        ins = [rw[v] for v in node.inputs]
        floats = {v.dtype for v in ins if v.type.is_float}
        traced = {v.dtype for v in node.inputs if v.type.is_float}
        if node.opdef.has_subgraph or node.op == "cast":
            target = None
        elif node.op in LOW_OPS and floats == {"float32"}:
            target = dtype
        elif node.op in FLOAT32_OPS and (floats | traced) & set(LOW_DTYPES):
            target = "float32"
        elif len(floats) > 1:
            target = "float32"
        else:
            target = None
        if target is not None:
            try:
                new = [as_(v, target) for v in ins]
                get_op(node.op).infer([v.type for v in new], node.attrs)
                ins = new
            except IRError:
                target = None
        if target is None:      # the op as it was traced: its own operand dtypes
            ins = [as_(v, old.dtype) for v, old in zip(ins, node.inputs)]
        outs = rw.dst.add_node(node.op, ins, node.attrs, node.loc)
        for old, new in zip(node.outputs, outs):
            rw.replace(old, new)
    g = rw.finish([as_(rw[v], v.dtype) for v in graph.outputs])
    g.donations = dict(graph.donations)
    return g
