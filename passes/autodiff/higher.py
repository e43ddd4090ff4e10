"""Second and higher derivatives by differentiating gradient graphs.

* ``hvp(graph, wrt, of)``: Hessian-vector product. The graph gets one new input ``v_<name>``
  per ``wrt`` value; its outputs are ``H v`` for each (reverse over reverse: the cotangent of
  the gradient is ``v``, and H is symmetric). Cost: about two gradients.
* ``hessian(graph, wrt, of)``: the full (n, n) Hessian over the flattened ``wrt`` values,
  concatenated in order (``n`` = their total size). One reverse pass through the gradient
  graph per row, all in one graph, so the graph grows as n times the gradient graph:
  n is limited (``max_size``, default 256); use ``hvp`` beyond.
* ``jacobian(graph, wrt, of)``: for output ``of`` of shape S, one Jacobian of shape
  S + w.shape per ``wrt`` value w (``torch.autograd.functional.jacobian``'s layout); one
  reverse pass per output element, limited the same way.

Before (``f(x) = sum(x^3)``) and after ``hvp(f, ["x"])`` (pruned)::

    graph f(%x: f32[2]) {                graph f_hvp(%x: f32[2], %v_x: f32[2]) {
      %0: f32[2] = mul(%x, %x)             ... the gradient 3 x^2, then its VJP with v:
      %1: f32[2] = mul(%0, %x)             return %9          # 6 x v
      %2: f32[] = sum(%1)                }
      return %2
    }
"""
from __future__ import annotations

from typing import Sequence

from irgraph import Graph, GraphRewriter, IRError, Value, verify

from .core import Emitter, backprop, prune, resolve

MAX_SIZE = 256


def _scalar_output(graph: Graph, of: int, what: str) -> Value:
    if not -len(graph.outputs) <= of < len(graph.outputs):
        raise IRError(f"{what}: graph {graph.name!r} has {len(graph.outputs)} outputs, "
                      f"no output {of}")
    v = graph.outputs[of]
    if v.type.shape != () or not v.type.is_float:
        raise IRError(f"{what} needs a float scalar output; output {of} of graph "
                      f"{graph.name!r} is {v.type}")
    return v


def _copy(graph: Graph, name: str) -> GraphRewriter:
    rw = GraphRewriter(graph, name)
    for node in graph.nodes:
        rw.copy_node(node)
    return rw


def _gradient(rw: GraphRewriter, wrt: Sequence[Value], out: Value) -> list[Value]:
    """First reverse pass, in the rewriter's new graph."""
    e = Emitter(rw.dst)
    return backprop(rw.dst, [rw[w] for w in wrt], {rw[out]: e.full((), 1.0, out.dtype)})


def hvp(graph: Graph, wrt: Sequence[str | Value] | None = None, of: int = 0) -> Graph:
    """Hessian-vector product of scalar output ``of``: new inputs ``v_<name>`` (after the
    original inputs; parameters stay last), outputs ``H v`` for each of ``wrt``."""
    _scalar_output(graph, of, "hvp")
    src = graph.copy()
    wrt_vals = resolve(src, [w.name for w in resolve(graph, wrt)])
    vs = [src.add_input(src.fresh_name(f"v_{w.name}"), w.type) for w in wrt_vals]
    rw = _copy(src, graph.name + "_hvp")
    grads = _gradient(rw, wrt_vals, src.outputs[of])
    e = Emitter(rw.dst)
    seeds: dict[Value, Value] = {}
    for gv, v in zip(grads, vs):   # a value listed twice in wrt gets both vectors
        seeds[gv] = e("add", seeds[gv], rw[v]) if gv in seeds else rw[v]
    hv = backprop(rw.dst, [rw[w] for w in wrt_vals], seeds)
    return verify(prune(rw.finish(hv)))


def _flatten(e: Emitter, vals: Sequence[Value]) -> Value:
    flat = [v if len(v.shape) == 1 else e("reshape", v, shape=(v.type.size,)) for v in vals]
    return flat[0] if len(flat) == 1 else e("concat", *flat, axis=0)


def _rows(graph: Graph, y: Value, wrt: Sequence[Value], upto: int) -> list[Value]:
    """For each w of ``wrt``: d y / d w with shape y.shape + w.shape, one reverse pass per
    element of ``y`` seeded with a one-hot cotangent."""
    e = Emitter(graph)
    m = y.type.size
    index = e("iota", shape=(m,), axis=0, dtype="int64")
    rows: list[list[Value]] = [[] for _ in wrt]
    for k in range(m):
        hot = e("eq", index, e.full((), float(k), "int64"))
        hot = e("reshape", e("cast", hot, dtype=y.dtype), shape=y.shape)
        for r, w, gk in zip(rows, wrt, backprop(graph, wrt, {y: hot}, upto=upto)):
            r.append(e("reshape", gk, shape=(1,) + w.shape))
    out = []
    for r, w in zip(rows, wrt):
        stacked = r[0] if len(r) == 1 else e("concat", *r, axis=0)
        out.append(e("reshape", stacked, shape=y.shape + w.shape))
    return out


def _check_size(n: int, max_size: int, what: str) -> None:
    if n == 0:
        raise IRError(f"{what} of an empty tensor")
    if n > max_size:
        raise IRError(f"{what} would need {n} reverse passes (limit max_size={max_size}); "
                      f"use hvp for products with a vector, or raise max_size")


def hessian(graph: Graph, wrt: Sequence[str | Value] | None = None, of: int = 0,
            max_size: int = MAX_SIZE) -> Graph:
    """A graph with the same arguments whose one output is the (n, n) Hessian of scalar output
    ``of`` over the flattened ``wrt`` values (concatenated in order)."""
    out = _scalar_output(graph, of, "hessian")
    wrt_vals = resolve(graph, wrt)
    n = sum(w.type.size for w in wrt_vals)
    _check_size(n, max_size, "hessian")
    rw = _copy(graph, graph.name + "_hessian")
    e = Emitter(rw.dst)
    gvec = _flatten(e, _gradient(rw, wrt_vals, out))
    upto = len(rw.dst.nodes)
    blocks = _rows(rw.dst, gvec, [rw[w] for w in wrt_vals], upto)
    h = _flatten_cols(e, blocks, n)
    return verify(prune(rw.finish([h])))


def _flatten_cols(e: Emitter, blocks: Sequence[Value], n: int) -> Value:
    """Blocks of shape (n,) + w.shape -> one (n, sum of sizes) matrix."""
    mats = [e("reshape", b, shape=(n, int(b.type.size // n))) for b in blocks]
    return mats[0] if len(mats) == 1 else e("concat", *mats, axis=1)


def jacobian(graph: Graph, wrt: Sequence[str | Value] | None = None, of: int = 0,
             max_size: int = MAX_SIZE) -> Graph:
    """A graph with the same arguments whose outputs are the Jacobians of output ``of`` (shape
    S) with respect to each of ``wrt``: shape S + w.shape each."""
    if not -len(graph.outputs) <= of < len(graph.outputs):
        raise IRError(f"jacobian: graph {graph.name!r} has no output {of}")
    y = graph.outputs[of]
    if not y.type.is_float:
        raise IRError(f"jacobian needs a float output; output {of} is {y.type}")
    wrt_vals = resolve(graph, wrt)
    _check_size(y.type.size, max_size, "jacobian")
    rw = _copy(graph, graph.name + "_jacobian")
    jac = _rows(rw.dst, rw[y], [rw[w] for w in wrt_vals], len(rw.dst.nodes))
    return verify(prune(rw.finish(jac)))
