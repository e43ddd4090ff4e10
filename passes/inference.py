"""Dropping training-only work from inference graphs.

* ``strip_dead_state``: a donated output that gives its argument back unchanged (a state update
  that updates nothing) is dropped with its donation.
* ``strip_training``: training-only ops rewritten for inference (see ``INFERENCE_RULES``);
  batch norm in inference mode becomes a per-channel scale and shift, and its running-stat
  outputs become the running statistics themselves.
"""
from __future__ import annotations

from typing import Callable

from irgraph import Graph, GraphRewriter, Node, Value, all_ops

from .manager import register_pass


@register_pass("strip_dead_state")
def strip_dead_state(g: Graph) -> Graph:
    """Drop donated outputs that are their own argument (identity state updates).

    Before (batch norm in eval mode hands its running mean back)::

        graph net(%x: f32[2,3]) params(%bn.running_mean: f32[3]) {
          %0: f32[2,3] = relu(%x)
          donate(1->1)
          return %0, %bn.running_mean
        }

    After::

        graph net(%x: f32[2,3]) params(%bn.running_mean: f32[3]) {
          %0: f32[2,3] = relu(%x)
          return %0
        }
    """
    args = g.arguments
    dead = {o for o, a in g.donations.items() if g.outputs[o] is args[a]}
    if not dead:
        return g
    rw = GraphRewriter(g)
    for node in g.nodes:
        rw.copy_node(node)
    keep = [i for i in range(len(g.outputs)) if i not in dead]
    new_index = {old: new for new, old in enumerate(keep)}
    out = rw.finish([rw[g.outputs[i]] for i in keep])
    out.donations = {new_index[o]: a for o, a in g.donations.items() if o not in dead}
    return out


# op -> rule(rw, node) returning the new values of the node's outputs, or None to keep it
InferenceRule = Callable[[GraphRewriter, Node], "list[Value] | None"]
INFERENCE_RULES: dict[str, InferenceRule] = {}


def inference_rule(op: str):
    def deco(fn: InferenceRule) -> InferenceRule:
        INFERENCE_RULES[op] = fn
        return fn
    return deco


@register_pass("strip_training")
def strip_training(g: Graph) -> Graph:
    """Rewrite training-only work for inference with the rules of ``INFERENCE_RULES``.

    Before::

        %y: f32[2,3], %m: f32[3], %v: f32[3] = batch_norm(%x, %w, %b, %rm, %rv)
            {axis=1, eps=1e-05, momentum=0.1, training=false}
        return %y, %m

    After (``rs = rsqrt(rv + eps)``; the running mean output is ``%rm`` itself)::

        %0: f32[3] = add(%rv, %eps)
        %1: f32[3] = rsqrt(%0)
        %2: f32[3] = mul(%w, %1)                         # scale
        %3: f32[3] = sub(%b, mul(%rm, %2))               # shift
        %4: f32[2,3] = add(mul(%x, reshape(%2)), reshape(%3))
        return %4, %rm
    """
    ops = all_ops()
    if not any(n.op in INFERENCE_RULES for n in g.nodes):
        return g
    rw = GraphRewriter(g)
    for node in g.nodes:
        rule = INFERENCE_RULES.get(node.op) if node.op in ops else None
        news = rule(rw, node) if rule is not None else None
        if news is None:
            rw.copy_node(node)
        else:
            for old, new in zip(node.outputs, news):
                rw.replace(old, new)
    return rw.finish()


def _channel_view(x: Value, axis: int) -> tuple[int, ...]:
    view = [1] * x.type.rank
    view[axis % x.type.rank] = x.shape[axis % x.type.rank]
    return tuple(view)


@inference_rule("batch_norm")
def _batch_norm(rw: GraphRewriter, node: Node) -> list[Value] | None:
    """Inference mode: ``(x - rm) * s + beta`` with ``s = gamma / sqrt(rv + eps)`` computed
    from the parameters in float64 (as the reference kernel), and the running statistics as
    the stat outputs. Training mode with stat outputs nothing reads: batch statistics only
    (eq. 8.35-8.37), without the running-average update."""
    x, gamma, beta, rm, rv = (rw[v] for v in node.inputs)
    a = node.attrs
    view = _channel_view(x, a["axis"])

    def emit(op, *ins, **attrs):
        return rw.emit(op, *ins, loc=node.loc, **attrs)

    def per_channel(v):
        return emit("reshape", v, shape=view)

    if a["training"]:
        users = rw.src.users()
        if users[node.outputs[1]] or users[node.outputs[2]] or \
                node.outputs[1] in rw.src.outputs or node.outputs[2] in rw.src.outputs:
            return None
        red = tuple(i for i in range(x.type.rank) if view[i] == 1)
        mu = emit("mean", x, axis=red, keepdims=True)                      # eq. 8.36
        d = emit("sub", x, mu)
        var = emit("mean", emit("square", d), axis=red, keepdims=True)
        eps = emit("full", shape=(), value=a["eps"], dtype=x.dtype)
        xhat = emit("div", d, emit("sqrt", emit("add", var, eps)))           # eq. 8.35, 8.37
        y = emit("add", emit("mul", xhat, per_channel(gamma)), per_channel(beta))
        return [y, rm, rv]
    wide = "float64"
    eps = emit("full", shape=(), value=a["eps"], dtype=wide)
    s = emit("div", emit("cast", gamma, dtype=wide),
             emit("sqrt", emit("add", emit("cast", rv, dtype=wide), eps)))
    s = emit("cast", s, dtype=x.dtype)
    y = emit("add", emit("mul", emit("sub", x, per_channel(rm)), per_channel(s)),
             per_channel(beta))
    return [y, rm, rv]
