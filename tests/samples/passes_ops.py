"""Samples of the ops the optimizing passes insert: ``fused`` regions (each kind, several
results, broadcast operands, an inlined constant) and ``check_finite`` (finite values pass).

The fused bodies are float64 (a body's types are fixed, so the gradient check cannot promote
them from float32)."""
from __future__ import annotations

import numpy as np

from irgraph import Graph, TensorType

from . import Case, positive, rand


def _elementwise_body() -> Graph:
    """tanh(x * y + 2) and its square: two results, y broadcast along the rows."""
    b = Graph("fused_ew")
    x = b.add_input("x", TensorType((3, 4), "float64"))
    y = b.add_input("y", TensorType((4,), "float64"))
    two = b.op("full", shape=(), value=2.0, dtype="float64")
    t = b.op("tanh", b.op("add", b.op("mul", x, y), two))
    b.set_outputs([t, b.op("square", t)])
    return b


def _reduction_body() -> Graph:
    """sqrt(sum(x * x, axis=1)) + 1: an elementwise prologue, a reduction, an epilogue."""
    b = Graph("fused_red")
    x = b.add_input("x", TensorType((2, 5), "float64"))
    s = b.op("sum", b.op("mul", x, x), axis=(1,), keepdims=False)
    one = b.op("full", shape=(), value=1.0, dtype="float64")
    b.set_outputs([b.op("add", b.op("sqrt", s), one)])
    return b


def _epilogue_body() -> Graph:
    """relu(x @ w + bias): a dense layer's epilogue."""
    b = Graph("fused_mm")
    x = b.add_input("x", TensorType((3, 4), "float64"))
    w = b.add_input("w", TensorType((4, 2), "float64"))
    bias = b.op("constant", value=np.array([0.05, -0.05]))
    b.set_outputs([b.op("relu", b.op("add", b.op("matmul", x, w), bias))])
    return b


def _away_from_zero(*shape, seed, dtype=np.float32):
    x = rand(*shape, seed=seed, dtype=dtype)
    return (np.sign(x) * (np.abs(x) + 0.2)).astype(dtype)


SAMPLES = {
    "fused": [
        Case([rand(3, 4, seed=1, dtype=np.float64), rand(4, seed=2, dtype=np.float64)],
             {"body": _elementwise_body(), "kind": "elementwise"}),
        Case([positive(2, 5, seed=3, dtype=np.float64)],
             {"body": _reduction_body(), "kind": "reduction"}),
        Case([_away_from_zero(3, 4, seed=4, dtype=np.float64),
              rand(4, 2, seed=5, dtype=np.float64)],
             {"body": _epilogue_body(), "kind": "epilogue"}, note="float64, relu kept off 0"),
    ],
    "check_finite": [
        Case([rand(3, 4, seed=6)], {"checked_op": "input", "node": "input %x: f32[3,4]"}),
        Case([rand(2, 3, seed=7), rand(2, 3, seed=8), rand(3, seed=9)],
             {"checked_op": "add", "node": "%0: f32[2,3] = add(%a, %b)", "source": "model.py:3",
              "names": ("a", "b")}, nondiff=(1, 2), note="operands watched for the report"),
        Case([np.arange(4, dtype=np.int64)], {"checked_op": "iota", "node": "%0: i64[4] = iota()"},
             nondiff=(0,), note="integers are always finite"),
    ],
}
