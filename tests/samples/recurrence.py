"""Sample inputs of the recurrence ops (irgraph/ops/recurrence.py): ``scan`` in each of its
modes (forward, reverse, masked, no sequences, integer carries, saved states, nested, zero
steps) and ``stop_gradient``.

Scan samples are float64 so that the registry-wide finite-difference checks of the rolled
BPTT rule (passes/autodiff/rules_recurrence.py) are tight; the body graphs are built here.
"""
from __future__ import annotations

import numpy as np

from irgraph import Graph, TensorType

from . import Case, rand

F64 = "float64"


def elman(b: int = 2, h: int = 3, d: int = 2, dtype: str = F64) -> Graph:
    """h_t = tanh(h_{t-1} W + x_t U) (eq. 10.8-10.9 with row vectors); y_t = h_t."""
    g = Graph("elman")
    hp = g.add_input("h", TensorType((b, h), dtype))
    x = g.add_input("x", TensorType((b, d), dtype))
    w = g.add_param("W", TensorType((h, h), dtype))
    u = g.add_param("U", TensorType((d, h), dtype))
    new = g.op("tanh", g.op("add", g.op("matmul", hp, w), g.op("matmul", x, u)))
    g.set_outputs([new, new])
    return g


def two_carries(b: int = 2, h: int = 3) -> Graph:
    """(h, s) -> (tanh(h W + x), s + h * x): two carries, two per-step outputs."""
    g = Graph("pair")
    hp = g.add_input("h", TensorType((b, h), F64))
    s = g.add_input("s", TensorType((b, h), F64))
    x = g.add_input("x", TensorType((b, h), F64))
    w = g.add_param("W", TensorType((h, h), F64))
    new = g.op("tanh", g.op("add", g.op("matmul", hp, w), x))
    acc = g.op("add", s, g.op("mul", hp, x))
    g.set_outputs([new, acc, g.op("sigmoid", new), g.op("sum", acc, axis=(1,))])
    return g


def counter(h: int = 3) -> Graph:
    """An integer carry (the step count) beside a float one: h' = tanh(h W) * (1 + i/10)."""
    g = Graph("counted")
    hp = g.add_input("h", TensorType((h,), F64))
    i = g.add_input("i", TensorType((), "int64"))
    w = g.add_param("W", TensorType((h, h), F64))
    i1 = g.op("add", i, g.op("full", shape=(), value=1.0, dtype="int64"))
    scale = g.op("add", g.op("full", shape=(), value=1.0, dtype=F64),
                 g.op("div", g.op("cast", i1, dtype=F64),
                      g.op("full", shape=(), value=10.0, dtype=F64)))
    new = g.op("mul", g.op("tanh", g.op("matmul", hp, w)), scale)
    g.set_outputs([new, i1, i1])
    return g


def nested(b: int = 2, h: int = 3, d: int = 2, inner: int = 2) -> Graph:
    """A body that itself runs an Elman scan over ``inner`` sub-steps of each x_t."""
    g = Graph("outer")
    hp = g.add_input("h", TensorType((b, h), F64))
    x = g.add_input("x", TensorType((inner, b, d), F64))
    w = g.add_param("W", TensorType((h, h), F64))
    u = g.add_param("U", TensorType((d, h), F64))
    hT, hs = g.op("scan", hp, x, w, u, body=elman(b, h, d), num_carry=1, num_seq=1)
    g.set_outputs([hT, g.op("sum", hs, axis=(0,))])
    return g


def _elman_inputs(steps: int, seed: int, b: int = 2, h: int = 3, d: int = 2):
    return [rand(b, h, seed=seed, dtype=np.float64), rand(steps, b, d, seed=seed + 1,
                                                             dtype=np.float64),
            rand(h, h, seed=seed + 2, dtype=np.float64),
            rand(d, h, seed=seed + 3, dtype=np.float64)]


_MASK = np.array([[True, True], [True, True], [True, False], [False, False]])

SAMPLES = {
    "scan": [
        Case(_elman_inputs(3, 0), dict(body=elman(), num_carry=1, num_seq=1),
             note="fig. 10.2 / eq. 10.8-10.9: the Elman recurrence over 3 steps"),
        Case([rand(2, 3, seed=4, dtype=np.float64), rand(2, 3, seed=5, dtype=np.float64),
              rand(4, 2, 3, seed=6, dtype=np.float64), rand(3, 3, seed=7, dtype=np.float64)],
             dict(body=two_carries(), num_carry=2, num_seq=1, reverse=True, save_every=2),
             note="reverse direction (bidirectional RNNs), two carries, saved states"),
        Case(_elman_inputs(4, 8)[:2] + [_MASK] + _elman_inputs(4, 8)[2:],
             dict(body=elman(), num_carry=1, num_seq=1, masked=True), nondiff=(2,),
             note="padding: row b holds its state where mask[t, b] is false"),
        Case([rand(3, seed=12, dtype=np.float64), np.array(0, np.int64),
              rand(3, 3, seed=13, dtype=np.float64)],
             dict(body=counter(), num_carry=2, num_seq=0, length=4, save_every=1),
             nondiff=(1,), note="no sequences (length attribute), an integer carry"),
        Case([rand(2, 3, seed=14, dtype=np.float64), rand(3, 2, 2, 2, seed=15,
                                                          dtype=np.float64),
              rand(3, 3, seed=16, dtype=np.float64), rand(2, 3, seed=17, dtype=np.float64)],
             dict(body=nested(), num_carry=1, num_seq=1, reverse=True),
             note="a scan in the body of a scan"),
        Case(_elman_inputs(0, 18), dict(body=elman(), num_carry=1, num_seq=1),
             note="zero steps: the carry passes through, the stacked outputs are empty"),
        Case([rand(2, 3, seed=20), rand(3, 2, 2, seed=21), rand(3, 3, seed=22),
              rand(2, 3, seed=23)], dict(body=elman(dtype="float32"), num_carry=1, num_seq=1),
             nondiff=(0, 1, 2, 3), note="float32 (the gradient is checked on the f64 cases)"),
    ],
    "stop_gradient": [
        Case([rand(2, 3, seed=30)], note="identity forward; truncated BPTT cuts here"),
    ],
}
