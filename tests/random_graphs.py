"""A hypothesis generator of random graphs over the core ops, for property tests of passes.

``random_graph(draw)`` builds a verified graph whose values are small float32 tensors of a few
broadcast-compatible shapes. It mixes in what the passes look for: scalar constants 0, 1, -1,
2 and 0.5 (identities), duplicated nodes (CSE), dead nodes (DCE), transpose/reshape/broadcast
chains, reductions, matmuls, comparisons with ``where``, and parameters (weights).
``random_args(g, seed)`` gives arguments that keep most values finite.
"""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from irgraph import Graph, TensorType, Value, verify
from irgraph.ops.core import broadcast_shapes
from irgraph.registry import all_ops, ops_with


def _differentiable_elementwise(arity: int) -> list[str]:
    """The registry's differentiable elementwise ops of ``arity`` operands and no attributes
    (sorted: the draws do not depend on registration order)."""
    ops = all_ops()
    return sorted(n for n in ops_with("elementwise") if ops[n].num_inputs == arity
                  and not ops[n].attrs and ops[n].differentiable)


UNARY = _differentiable_elementwise(1)
BINARY = _differentiable_elementwise(2)
REDUCE = sorted(ops_with("reduction"))
CONSTANTS = [0.0, 1.0, -1.0, 2.0, 0.5, 3.0]


def _broadcastable(a: Value, b: Value) -> bool:
    try:
        broadcast_shapes(a.shape, b.shape)
        return True
    except ValueError:
        return False


class _Builder:
    def __init__(self, draw, rows: int, cols: int):
        self.draw, self.rows, self.cols = draw, rows, cols
        self.g = Graph("random")
        self.pool: list[Value] = []

    def pick(self, pred=lambda v: True) -> Value | None:
        cands = [v for v in self.pool if pred(v) and v.type.dtype == "float32"]
        if not cands:
            return None
        # prefer recent values so graphs grow deep, not only wide
        i = self.draw(st.integers(0, len(cands) - 1))
        j = self.draw(st.integers(0, len(cands) - 1))
        return cands[max(i, j)]

    def add(self, op: str, *ins: Value, **attrs) -> None:
        out = self.g.op(op, *ins, **attrs)
        self.pool.extend(out if isinstance(out, tuple) else (out,))

    # one random step; returns quietly when its operands are not there
    def step(self) -> None:
        kind = self.draw(st.sampled_from(
            ["unary", "binary", "binary", "const", "shape", "reduce", "matmul", "where",
             "dup", "cast", "layer"]))
        getattr(self, "_" + kind)()

    def _param(self, hint: str, shape) -> Value:
        return self.g.add_param(self.g.fresh_name(hint), TensorType(tuple(shape)))

    def _layer(self):
        """A dense layer or a convolution, maybe a bias, then batch norm (fold_bn's and
        strip_training's patterns), sometimes read twice or in training mode."""
        img = next((v for v in self.g.inputs if v.name == "img"), None)
        if img is not None and self.draw(st.booleans()):
            w = self._param("cw", (3, 2, 2, 2))
            z = self.g.op("conv", img, w, stride=(1, 1), padding=(0, 1, 1, 0), dilation=(1, 1))
            bias_shape, c = (1, 3, 1, 1), 3
        else:
            x = self.pick(lambda v: v.type.rank == 2 and v.shape[0] >= 2)
            if x is None:
                return
            c = self.draw(st.integers(1, 3))
            z = self.g.op("matmul", x, self._param("dw", (x.shape[1], c)))
            bias_shape = (c,)
        if self.draw(st.booleans()):
            z = self.g.op("add", z, self._param("bias", bias_shape))
        stats = [self._param(n, (c,)) for n in ("gamma", "beta", "mean", "var")]
        training = self.draw(st.booleans()) and self.draw(st.booleans())
        y, m, v = self.g.op("batch_norm", z, *stats, training=training, eps=1e-3)
        self.pool.extend([y, m, v] if self.draw(st.booleans()) else [y])
        if self.draw(st.integers(0, 3)) == 0:
            self.pool.append(z)                      # the layer's output read elsewhere

    def _unary(self):
        self.add(self.draw(st.sampled_from(UNARY)), self.pick())

    def _binary(self):
        a = self.pick()
        b = self.pick(lambda v: _broadcastable(a, v))
        self.add(self.draw(st.sampled_from(BINARY)), *self.draw(st.permutations([a, b])))

    def _const(self):
        shape = self.draw(st.sampled_from([(), (self.cols,), (self.rows, 1)]))
        value = self.draw(st.sampled_from(CONSTANTS))
        if self.draw(st.booleans()):
            self.add("full", shape=shape, value=value)
        else:
            arr = np.full(shape, value, np.float32)
            if arr.size > 1 and self.draw(st.booleans()):
                arr = np.linspace(-1, 1, arr.size, dtype=np.float32).reshape(shape)
            self.add("constant", value=arr)

    def _shape(self):
        x = self.pick()
        how = self.draw(st.sampled_from(["transpose", "reshape", "broadcast_to", "twice"]))
        if how in ("transpose", "twice") and x.type.rank == 2:
            self.add("transpose", x, perm=(1, 0))
            if how == "twice":
                self.add("transpose", self.pool[-1], perm=(1, 0))
        elif how == "reshape":
            target = self.draw(st.sampled_from([(x.type.size,), (1,) + x.shape, x.shape]))
            self.add("reshape", x, shape=target)
            self.add("reshape", self.pool[-1], shape=x.shape)
        else:
            full = (self.rows, self.cols)
            if _broadcastable(x, self.g.inputs[0]) and broadcast_shapes(x.shape, full) == full:
                self.add("broadcast_to", x, shape=full)

    def _reduce(self):
        x = self.pick(lambda v: v.type.rank >= 1)
        if x is None:
            return
        axis = self.draw(st.sampled_from([None, (0,), (-1,)]))
        self.add(self.draw(st.sampled_from(REDUCE)), x, axis=axis,
                 keepdims=self.draw(st.booleans()))

    def _matmul(self):
        a = self.pick(lambda v: v.type.rank == 2)
        if a is None:
            return
        b = self.pick(lambda v: v.type.rank == 2 and v.shape[0] == a.shape[1])
        if b is not None:
            self.add("matmul", a, b)

    def _where(self):
        a = self.pick()
        b = self.pick(lambda v: _broadcastable(a, v))
        c = self.g.op(self.draw(st.sampled_from(["gt", "lt", "ge"])), a, b)
        x = self.pick(lambda v: _broadcastable(v, c))
        y = self.pick(lambda v: _broadcastable(v, c) and _broadcastable(v, x))
        self.add("where", c, x, y)

    def _dup(self):
        nodes = [n for n in self.g.nodes if len(n.outputs) == 1]
        if nodes:
            n = self.draw(st.sampled_from(nodes))
            self.add(n.op, *n.inputs, **n.attrs)

    def _cast(self):
        x = self.pick()
        self.add("cast", self.g.op("cast", x, dtype="float64"), dtype="float32")


@st.composite
def random_graph(draw, max_nodes: int = 12) -> Graph:
    """A random verified graph (see module doc)."""
    rows, cols = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    b = _Builder(draw, rows, cols)
    b.pool.append(b.g.add_input("x", TensorType((rows, cols))))
    if draw(st.booleans()):
        b.pool.append(b.g.add_input("v", TensorType((cols,))))
    if draw(st.booleans()):
        b.pool.append(b.g.add_param("w", TensorType((cols, rows))))
    if draw(st.booleans()):
        b.pool.append(b.g.add_param("s", TensorType(())))
    if draw(st.integers(0, 3)) == 0:
        b.g.add_input("img", TensorType((2, 2, 3, 3)))
    for _ in range(draw(st.integers(1, max_nodes))):
        b.step()
    values = [v for v in b.pool if v.node is not None] or b.pool
    k = draw(st.integers(1, min(3, len(values))))
    outs = draw(st.lists(st.sampled_from(values), min_size=k, max_size=k))
    if draw(st.booleans()):
        outs[-1] = values[-1]
    # state updates: a value of a parameter's type returned and donated to it (sometimes the
    # parameter itself: an update that changes nothing)
    n_args = len(b.g.inputs)
    for k, p in enumerate(b.g.params):
        same = [v for v in b.pool if v.type == p.type and v not in outs]
        if same and draw(st.integers(0, 2)) == 0:
            b.g.donations[len(outs)] = n_args + k
            outs.append(draw(st.sampled_from(same)))
    b.g.set_outputs(outs)
    return verify(b.g)


def random_args(g: Graph, seed: int = 0) -> list[np.ndarray]:
    """Arguments in [0.5, 1.5] with random signs: away from 0 so that logs and divisions
    mostly stay finite (the property tests compare NaNs as equal anyway); variances > 0."""
    rng = np.random.default_rng(seed)
    out = []
    for v in g.arguments:
        a = rng.uniform(0.5, 1.5, v.shape)
        if not v.name.startswith("var"):
            a = a * rng.choice([-1.0, 1.0], v.shape)
        out.append(a.astype(v.type.np_dtype))
    return out
