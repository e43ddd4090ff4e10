"""Batch-norm folding: an inference-mode batch norm after a layer with per-output-channel
weights becomes part of that layer's weights and bias.

In inference the batch norm is the affine map y = s * (z - mean) + beta per channel, with
s = gamma / sqrt(var + eps) (eq. 8.35, with the running statistics for mu and sigma^2). If
z = W * x + b is linear in per-output-channel weights, then y = (s W) * x + ((b - mean) s +
beta): the layer with weights s W and bias (b - mean) s + beta (a bias is added where there
was none). The folded weights are emitted as graph nodes over the original parameters, so
weights stay outside the graph and the pass keeps the graph's signature; ``fold_params``
(passes/fold_params.py) evaluates them once the weight values are bound. The arithmetic runs
in float64 for float32 weights, as the reference batch norm does.

Refused (the graph is left as it was) where folding would change results: batch norm in
training mode, a layer output (or its bias sum, or the reshape between) that something else
also reads, weights computed from graph inputs, or a reshape that mixes channels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from irgraph import Graph, GraphRewriter, Node, Value

from .analysis import static_values, use_counts
from .manager import register_pass

Emit = Callable[..., Value]


# ---------------------------------------------------------------- layers that can absorb a BN
@dataclass(frozen=True)
class Anchor:
    """How to scale one layer op's weights per output channel.

    ``weight``: operand index of the weights; ``channel_axis(rank)``: the channel axis of the
    output; ``scale(emit, node, w, s)``: the weights with output channel c multiplied by s[c].
    """
    weight: int
    channel_axis: Callable[[int], int]
    scale: Callable[[Emit, Node, Value, Value], Value]


def _scale_axis0(emit: Emit, node: Node, w: Value, s: Value) -> Value:
    """Weights (O, ...): output channel o is row o (conv, conv_fft, locally_connected, ...)."""
    return emit("mul", w, emit("reshape", s, shape=(s.shape[0],) + (1,) * (w.type.rank - 1)))


def _scale_transposed(emit: Emit, node: Node, w: Value, s: Value) -> Value:
    """Transposed convolution (``conv_input_grad``): weights (I, O/groups, *k); output channel
    g * O/groups + j is column j of the rows of group g."""
    groups = node.attrs["groups"]
    i, og, k = w.shape[0], w.shape[1], w.shape[2:]
    wg = emit("reshape", w, shape=(groups, i // groups, og) + k)
    sg = emit("reshape", s, shape=(groups, 1, og) + (1,) * len(k))
    return emit("reshape", emit("mul", wg, sg), shape=w.shape)


def _scale_last(emit: Emit, node: Node, w: Value, s: Value) -> Value:
    """Dense ``x @ B``: output feature f is column f of B (last axis)."""
    return emit("mul", w, s)


ANCHORS: dict[str, Anchor] = {
    "conv": Anchor(1, lambda r: 1, _scale_axis0),
    "conv_fft": Anchor(1, lambda r: 1, _scale_axis0),
    "locally_connected": Anchor(1, lambda r: 1, _scale_axis0),
    "tiled_conv": Anchor(1, lambda r: 1, _scale_axis0),
    "conv_input_grad": Anchor(0, lambda r: 1, _scale_transposed),
    "matmul": Anchor(1, lambda r: r - 1, _scale_last),
}


# ---------------------------------------------------------------- matching
@dataclass
class _Plan:
    bn: Node
    anchor: Node
    bias: Value | None              # the bias operand of the add, if any
    chain: list[Node]               # anchor, [add], [reshapes...], in order
    channel_map: np.ndarray         # BN channel of each anchor output channel


def _channel_map(a_shape, ca: int, r_shape, ba: int) -> np.ndarray | None:
    """BN channel of each anchor channel through a reshape, or None if a channel splits."""
    if tuple(a_shape) == tuple(r_shape) and ca == ba:
        return np.arange(a_shape[ca])
    size = int(np.prod(a_shape))
    if size > 1 << 22 or size == 0:
        return None
    view = [1] * len(r_shape)
    view[ba] = r_shape[ba]
    chan = np.broadcast_to(np.arange(r_shape[ba], dtype=np.int64).reshape(view), r_shape)
    rows = np.moveaxis(chan.reshape(a_shape), ca, 0).reshape(a_shape[ca], -1)
    if not np.all(rows == rows[:, :1]):
        return None
    return rows[:, 0].copy()


def _bias_operand(add: Node, z: Value, static: set[Value]) -> Value | None:
    """The other operand of ``add`` if it is a static bias that does not change z's shape
    (per channel, per location or scalar: the fold maps any of them)."""
    others = [v for v in add.inputs if v is not z]
    if len(others) != 1 or others[0] not in static or add.outputs[0].type != z.type:
        return None
    return others[0]


def _match(bn: Node, g: Graph, uses: dict[Value, int], static: set[Value]) -> _Plan | None:
    if bn.attrs["training"] or not bn.outputs[0].type.is_float:
        return None
    z = bn.inputs[0]
    chain: list[Node] = []
    while z.node is not None and z.node.op == "reshape" and uses[z] == 1:
        chain.insert(0, z.node)
        z = z.node.inputs[0]
    bias = None
    node = z.node
    if node is not None and node.op == "add" and uses[z] == 1:
        inner = [v for v in node.inputs if v.node is not None and v.node.op in ANCHORS]
        for cand in inner:
            b = _bias_operand(node, cand, static)
            if b is not None and uses[cand] == 1:
                chain.insert(0, node)
                bias, z = b, cand
                break
    anchor = z.node
    if anchor is None or anchor.op not in ANCHORS or uses[z] != 1 or z in g.outputs:
        return None
    spec = ANCHORS[anchor.op]
    if anchor.op == "matmul" and anchor.inputs[1].type.rank < 2:
        return None
    if anchor.inputs[spec.weight] not in static:
        return None
    if any(v in g.outputs for n in chain for v in n.outputs):
        return None
    x = bn.inputs[0]
    ca = spec.channel_axis(z.type.rank)
    cmap = _channel_map(z.shape, ca, x.shape, bn.attrs["axis"] % x.type.rank)
    if cmap is None or _classify(cmap, x.shape[bn.attrs["axis"] % x.type.rank]) is None:
        return None
    return _Plan(bn, anchor, bias, [anchor] + chain, cmap)


# ---------------------------------------------------------------- rewriting
def _classify(cmap: np.ndarray, c_b: int) -> str | None:
    """How anchor channels take BN channels: the same, each repeated k times, or tiled."""
    c_a = len(cmap)
    if np.array_equal(cmap, np.arange(c_a)):
        return "same"
    if c_a % c_b:
        return None
    if np.array_equal(cmap, np.arange(c_a) // (c_a // c_b)):
        return "repeat"
    if np.array_equal(cmap, np.arange(c_a) % c_b):
        return "tile"
    return None


def _gather(emit: Emit, s: Value, cmap: np.ndarray) -> Value:
    """``s[cmap]`` written with shape ops (``_classify`` accepted ``cmap``)."""
    c_b, c_a = s.shape[0], len(cmap)
    how = _classify(cmap, c_b)
    if how == "same":
        return s
    k = c_a // c_b
    if how == "repeat":
        rep = emit("broadcast_to", emit("reshape", s, shape=(c_b, 1)), shape=(c_b, k))
    else:
        rep = emit("broadcast_to", emit("reshape", s, shape=(1, c_b)), shape=(k, c_b))
    return emit("reshape", rep, shape=(c_a,))


def _fold(rw: GraphRewriter, plan: _Plan) -> None:
    bn, anchor = plan.bn, plan.anchor
    loc = bn.loc

    def emit(op, *ins, **attrs):
        return rw.emit(op, *ins, loc=loc, **attrs)

    gamma, beta, mean, var = (rw[v] for v in bn.inputs[1:])   # bn's input is the chain's
    dtype = bn.inputs[0].dtype
    wide = "float64"

    def up(v):
        return v if v.dtype == wide else emit("cast", v, dtype=wide)

    def down(v):
        return v if dtype == wide else emit("cast", v, dtype=dtype)

    eps = emit("full", shape=(), value=bn.attrs["eps"], dtype=wide)
    s = emit("div", up(gamma), emit("sqrt", emit("add", up(var), eps)))     # gamma / sigma
    spec = ANCHORS[anchor.op]
    z = anchor.outputs[0]
    ca = spec.channel_axis(z.type.rank)
    c_a = z.shape[ca]
    s_a = _gather(emit, s, plan.channel_map)
    mean_a = _gather(emit, up(mean), plan.channel_map)
    beta_a = _gather(emit, up(beta), plan.channel_map)
    view = [1] * z.type.rank
    view[ca] = c_a

    def channels(v):
        return emit("reshape", v, shape=tuple(view))

    # bias' = (b - mean) s + beta, at the bias's own shape (channel, location or scalar)
    shifted = (emit("sub", up(rw[plan.bias]), channels(mean_a)) if plan.bias is not None
               else emit("neg", channels(mean_a)))
    new_b = down(emit("add", emit("mul", shifted, channels(s_a)), channels(beta_a)))
    ins = [rw[v] for v in anchor.inputs]
    ins[spec.weight] = down(spec.scale(emit, anchor, up(ins[spec.weight]), s_a))
    out = rw.dst.op(anchor.op, *ins, loc=anchor.loc, **anchor.attrs)
    out = rw.emit("add", out, new_b, loc=anchor.loc)
    y = bn.outputs[0]
    if out.shape != y.shape:
        out = emit("reshape", out, shape=y.shape)
    rw.replace(y, out)
    rw.replace(bn.outputs[1], rw[bn.inputs[3]])     # inference: running stats unchanged
    rw.replace(bn.outputs[2], rw[bn.inputs[4]])


@register_pass("fold_bn")
def fold_bn(g: Graph) -> Graph:
    """Fold inference-mode batch norms into the convolution or dense layer before them.

    Before::

        %0: f32[2,4,6,6] = conv(%x, %w) {dilation=[1, 1], groups=1, ...}
        %y: f32[2,4,6,6], %m: f32[4], %v: f32[4] = batch_norm(%0, %gamma, %beta, %rm, %rv)
            {axis=1, eps=1e-05, momentum=0.1, training=false}
        return %y

    After (s = gamma / sqrt(rv + eps), in float64; these nodes read only parameters)::

        %s: f64[4] = div(cast(%gamma), sqrt(add(cast(%rv), 1e-05)))
        %w2: f32[4,3,3,3] = cast(mul(cast(%w), reshape(%s) {shape=[4, 1, 1, 1]}))
        %b2: f32[4] = cast(add(mul(sub(0.0, cast(%rm)), %s), cast(%beta)))
        %1: f32[2,4,6,6] = conv(%x, %w2) {...}
        %y2: f32[2,4,6,6] = add(%1, reshape(%b2) {shape=[1, 4, 1, 1]})
        return %y2
    """
    bns = [n for n in g.nodes if n.op == "batch_norm"]
    if not bns:
        return g
    uses = use_counts(g)
    static = static_values(g)
    plans = {id(bn): p for bn in bns if (p := _match(bn, g, uses, static)) is not None}
    if not plans:
        return g
    skip = {id(n) for p in plans.values() for n in p.chain}
    rw = GraphRewriter(g)
    for node in g.nodes:
        if id(node) in skip:
            continue            # the fold emits the layer again, at the batch norm
        plan = plans.get(id(node))
        if plan is not None:
            _fold(rw, plan)
        else:
            rw.copy_node(node)
    return rw.finish()


def fold_bn_weights(g: Graph, weights: dict[str, np.ndarray]
                    ) -> tuple[Graph, dict[str, np.ndarray]]:
    """``fold_bn`` with the weights bound: returns the folded graph, whose new parameters
    hold the folded weights and biases (``<weight>.folded``), and its weights. The batch
    norms' parameters and running statistics are gone from both."""
    from .fold_params import fold_params
    from .simplify import simplify
    return fold_params(simplify(fold_bn(g)), weights)
