"""Reverse-mode autodiff as a graph transform.

The transform copies the forward graph, then walks its nodes in reverse, calling each op's
VJP rule (``backprop``), then drops the nodes no output needs (``prune``). Rules are written
with IR ops, so the gradient graph is ordinary IR and can be differentiated again (second
order comes free).

Before (``f(x) = sum(x * x)``)::

    graph f(%x: f32[3]) {
      %0: f32[3] = mul(%x, %x)
      %1: f32[] = sum(%0) {axis=none, keepdims=false}
      return %1
    }

After ``grad(f, wrt=["x"])`` (the forward values are not needed, so they are pruned)::

    graph f_grad(%x: f32[3]) {
      %2: f32[] = full() {dtype="float32", shape=[], value=1.0}   # seed d%1/d%1
      %3: f32[1] = reshape(%2) {shape=[1]}                          # vjp of sum
      %4: f32[3] = broadcast_to(%3) {shape=[3]}
      %5: f32[3] = mul(%4, %x)                                      # vjp of mul, both operands
      %6: f32[3] = mul(%4, %x)
      %7: f32[3] = add(%5, %6)                                      # cotangents summed
      return %7
    }
"""
from __future__ import annotations

from typing import Callable, Sequence

from irgraph import Graph, GraphRewriter, IRError, Node, Value, get_op, verify

# op name -> rule(e, node, xs, ys, gs) -> cotangent (or None) for each input.
#   e: the Emitter adding nodes to the gradient graph
#   node: the forward node (attributes: node.attrs)
#   xs, ys: the node's inputs and outputs as values of the new graph
#   gs: the cotangent of each output (zeros where an output has none)
VJP_RULES: dict[str, Callable] = {}


def vjp_rule(*ops: str):
    """Register the decorated function as the VJP rule of ``ops``."""
    def deco(fn):
        for op in ops:
            if op in VJP_RULES:
                raise ValueError(f"VJP rule for {op!r} registered twice")
            VJP_RULES[op] = fn
        return fn
    return deco


class Emitter:
    """Adds nodes to the gradient graph; ``loc`` points at the forward node's source line."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.loc: str | None = None

    def __call__(self, op: str, *inputs: Value, **attrs):
        return self.graph.op(op, *inputs, loc=self.loc, **attrs)

    # small helpers shared by the rules
    def full(self, shape, value: float, dtype: str = "float32") -> Value:
        return self("full", shape=tuple(shape), value=float(value), dtype=dtype)

    def zeros_like(self, v: Value) -> Value:
        return self.full(v.shape, 0.0, v.dtype)

    def scalar(self, value: float, like: Value) -> Value:
        return self.full((), value, like.dtype)

    def sum_to(self, v: Value, shape: Sequence[int]) -> Value:
        """Undo numpy broadcasting: sum ``v`` down to ``shape``."""
        shape = tuple(shape)
        if v.shape == shape:
            return v
        lead = len(v.shape) - len(shape)
        axes = tuple(range(lead)) + tuple(
            lead + i for i, d in enumerate(shape) if d == 1 and v.shape[lead + i] != 1)
        if axes:
            v = self("sum", v, axis=axes, keepdims=True)
        if v.shape != shape:
            v = self("reshape", v, shape=shape)
        return v

    def broadcast(self, v: Value, shape: Sequence[int]) -> Value:
        return v if v.shape == tuple(shape) else self("broadcast_to", v, shape=tuple(shape))


def _is_float(v: Value) -> bool:
    return v.type.is_float


def _active(nodes: Sequence[Node], wrt: set[Value], outs: Sequence[Value]) -> set[Value]:
    """Values that depend on ``wrt`` and that an output in ``outs`` depends on."""
    fwd = set(wrt)
    for node in nodes:
        if any(v in fwd for v in node.inputs):
            fwd.update(v for v in node.outputs if _is_float(v))
    bwd = set(outs)
    for node in reversed(nodes):
        if any(v in bwd for v in node.outputs):
            bwd.update(node.inputs)
    return fwd & bwd


def resolve(graph: Graph, names: Sequence[str | Value] | None) -> list[Value]:
    """Values to differentiate with respect to: names of inputs/params (default: float params,
    or the float inputs when there are none)."""
    if names is None:
        vals = [p for p in graph.params if _is_float(p)] or [v for v in graph.inputs
                                                              if _is_float(v)]
        return vals
    by_name = {v.name: v for v in graph.arguments}
    out = []
    for n in names:
        v = n if isinstance(n, Value) else by_name.get(n)
        if v is None or v not in graph.arguments:
            raise IRError(f"cannot differentiate with respect to {n!r}: graph {graph.name!r} "
                          f"has arguments {sorted(by_name)}")
        if not _is_float(v):
            raise IRError(f"cannot differentiate with respect to %{v.name}: {v.type} "
                          f"is not a float tensor")
        out.append(v)
    return out


def backprop(graph: Graph, wrt: Sequence[Value], seeds: dict[Value, Value],
             upto: int | None = None) -> list[Value]:
    """Append to ``graph`` the reverse pass from ``seeds`` (value -> its cotangent, both values
    of ``graph``); return the cotangent of each of ``wrt`` (zeros where it has none).

    The walk covers the first ``upto`` nodes (default: all present when called), so it can run
    again on a graph that already holds reverse passes (higher derivatives, Hessian rows)."""
    nodes = list(graph.nodes[:upto])
    e = Emitter(graph)
    active = _active(nodes, set(wrt), list(seeds))
    ct: dict[Value, Value] = {}

    def accumulate(v: Value, c: Value) -> None:
        if c.type != v.type:
            raise IRError(f"VJP rule gave a cotangent {c.type} for %{v.name}: {v.type}")
        ct[v] = c if v not in ct else e("add", ct[v], c)

    for v, c in seeds.items():
        if v in active:
            accumulate(v, c)
    for node in reversed(nodes):
        if not any(o in ct for o in node.outputs) or not any(x in active for x in node.inputs):
            continue
        rule = VJP_RULES.get(node.op)
        if rule is None:
            if not get_op(node.op).differentiable:
                continue
            raise IRError(f"no VJP rule for op {node.op!r}, needed to differentiate "
                          f"{node!r}" + (f" (from {node.loc})" if node.loc else ""))
        e.loc = node.loc
        gs = [ct[o] if o in ct else e.zeros_like(o) for o in node.outputs]
        cts = rule(e, node, list(node.inputs), list(node.outputs), gs)
        if len(cts) != len(node.inputs):
            raise IRError(f"VJP rule of {node.op!r} gave {len(cts)} cotangents for "
                          f"{len(node.inputs)} inputs")
        for x, c in zip(node.inputs, cts):
            if c is not None and x in active:
                accumulate(x, c)
    e.loc = None
    return [ct[w] if w in ct else e.zeros_like(w) for w in wrt]


def build_vjp(graph: Graph, wrt: Sequence[Value],
              seeds: dict[int, Callable[[GraphRewriter, Emitter], Value]],
              name: str) -> tuple[GraphRewriter, list[Value]]:
    """Copy ``graph`` and add its reverse pass. ``seeds`` maps an output index to a function
    that emits that output's cotangent from (rewriter, emitter). Returns the rewriter and the
    gradient of each ``wrt`` (values of the new graph)."""
    rw = GraphRewriter(graph, name)
    for node in graph.nodes:
        rw.copy_node(node)
    e = Emitter(rw.dst)
    new_seeds: dict[Value, Value] = {}
    for i, seed in seeds.items():
        v, c = rw[graph.outputs[i]], seed(rw, e)
        new_seeds[v] = e("add", new_seeds[v], c) if v in new_seeds else c
    return rw, backprop(rw.dst, [rw[w] for w in wrt], new_seeds)


def prune(graph: Graph) -> Graph:
    """A copy of ``graph`` without the nodes no output depends on (forward values the gradient
    does not need, cotangents of inactive branches)."""
    live = set(graph.outputs)
    keep = []
    for node in reversed(graph.nodes):
        if any(o in live for o in node.outputs):
            keep.append(node)
            live.update(node.inputs)
    if len(keep) == len(graph.nodes):
        return graph
    rw = GraphRewriter(graph)
    for node in reversed(keep):
        rw.copy_node(node)
    return rw.finish()


def _scalar_seed(graph: Graph, of: int):
    v = graph.outputs[of]
    if v.type.shape != () or not _is_float(v):
        raise IRError(f"grad needs a float scalar output; output {of} of graph {graph.name!r} "
                      f"is {v.type} (use vjp for tensors)")
    return lambda rw, e: e.full((), 1.0, v.dtype)


def value_and_grad(graph: Graph, wrt: Sequence[str | Value] | None = None, of: int = 0) -> Graph:
    """A graph with the same arguments whose outputs are all of ``graph``'s outputs followed by
    the gradient of output ``of`` (a scalar) with respect to each of ``wrt``."""
    wrt_vals = resolve(graph, wrt)
    rw, grads = build_vjp(graph, wrt_vals, {of: _scalar_seed(graph, of)}, graph.name + "_vg")
    return verify(prune(rw.finish([rw[v] for v in graph.outputs] + grads)))


def grad(graph: Graph, wrt: Sequence[str | Value] | None = None, of: int = 0) -> Graph:
    """A graph with the same arguments whose outputs are the gradients of output ``of``."""
    wrt_vals = resolve(graph, wrt)
    rw, grads = build_vjp(graph, wrt_vals, {of: _scalar_seed(graph, of)}, graph.name + "_grad")
    return verify(prune(rw.finish(grads)))


def vjp(graph: Graph, wrt: Sequence[str | Value] | None = None,
        of: Sequence[int] | None = None) -> Graph:
    """Vector-Jacobian product: new inputs ``ct_<i>`` (one per output in ``of``, default all)
    carry the output cotangents; outputs are the original outputs then the gradients."""
    of = list(range(len(graph.outputs))) if of is None else list(of)
    src = graph.copy()
    n_inputs = len(src.inputs)
    for i in of:
        src.add_input(src.fresh_name(f"ct_{i}"), src.outputs[i].type)
    # the cotangent inputs go after the original inputs (parameters still come last)
    seeds = {i: (lambda ctv: lambda rw, e: rw[ctv])(ctv)
             for i, ctv in zip(of, src.inputs[n_inputs:])}
    wrt_vals = resolve(src, [w.name for w in resolve(graph, wrt)])
    rw, grads = build_vjp(src, wrt_vals, seeds, graph.name + "_vjp")
    return verify(prune(rw.finish([rw[v] for v in src.outputs] + grads)))
