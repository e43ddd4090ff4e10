"""Depthwise 2-D convolutions (one input channel per group) on the LLVM backend,
plane by plane on a zero-padded copy (backends/llvm/conv_depthwise.py), against the reference
backend: MobileNet's 3x3 at strides 1 and 2, a channel multiplier of 2, asymmetric padding,
dilation, rectangular kernels, inputs too narrow for any window to lie inside along the last
axis, float64, one and two threads; other group shapes keep the GEMM path."""
from __future__ import annotations

import numpy as np
import pytest

import irgraph.backends as backends
from irgraph import Graph, TensorType
from irgraph.backends.llvm import conv_depthwise
from tests.helpers import assert_conv_like_reference


def _graph(xs, ws, stride, padding, dilation, groups, dtype):
    g = Graph("dw")
    x = g.add_input("x", TensorType(xs, dtype))
    w = g.add_input("w", TensorType(ws, dtype))
    g.set_outputs(g.add_node("conv", [x, w], dict(stride=stride, padding=padding,
                                                  dilation=dilation, groups=groups)))
    return g


# (x shape, w shape, stride, padding, dilation)
CASES = [
    ((2, 8, 9, 9), (8, 1, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    ((1, 6, 16, 15), (6, 1, 3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),     # MobileNet's stride 2
    ((3, 4, 7, 10), (8, 1, 3, 2), (2, 1), (0, 2, 1, 0), (1, 1)),      # multiplier 2
    ((1, 5, 11, 12), (5, 1, 3, 3), (1, 2), (2, 2, 2, 1), (2, 2)),     # dilation
    ((2, 3, 4, 2), (3, 1, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),       # no interior column
    ((1, 2, 5, 6), (2, 1, 5, 5), (1, 1), (0, 0, 0, 0), (1, 1)),       # valid, 5x5
    # narrow rows whose vectors run on past the last padded row into the next phase plane
    # (no padding rows below or above) and past several rows (2 columns a phase)
    ((2, 3, 6, 9), (3, 1, 3, 3), (1, 2), (0, 0, 1, 1), (1, 1)),
    ((1, 2, 30, 3), (2, 1, 3, 1), (1, 2), (0, 0, 0, 0), (1, 1)),
    # stride-1 planes of at most FLAT positions: one flat run of vectors
    ((2, 5, 7, 7), (5, 1, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    ((1, 3, 6, 5), (3, 1, 3, 2), (1, 1), (2, 0, 1, 2), (2, 1)),
    # rows wider than NARROW: the row loops
    ((1, 3, 6, 70), (3, 1, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    ((2, 2, 7, 81), (2, 1, 3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),
]


@pytest.mark.parametrize("dtype,threads", [("float32", 2), ("float64", 1)])
@pytest.mark.parametrize("xs,ws,stride,padding,dilation", CASES)
def test_depthwise_matches_reference(xs, ws, stride, padding, dilation, dtype, threads):
    groups = xs[1]
    assert conv_depthwise.applies(xs, ws, groups, dtype)
    g = _graph(xs, ws, stride, padding, dilation, groups, dtype)
    assert_conv_like_reference(g, xs, ws, dtype, threads)


def test_narrow_rows_take_the_vector_path():
    """Both row paths are in CASES: rows of at most NARROW columns a phase, and wider."""
    narrow = [conv_depthwise.narrow(xs, p, s) for xs, _, s, p, _ in CASES]
    assert any(narrow) and not all(narrow)
    assert conv_depthwise.narrow((1, 576, 14, 14), (1, 1, 1, 1), (2, 2))      # MobileNetV2
    assert not conv_depthwise.narrow((1, 32, 112, 112), (1, 1, 1, 1), (1, 1))


def test_reach():
    assert conv_depthwise.applies((1, 8, 5, 5), (8, 1, 3, 3), 8, "float32")
    assert conv_depthwise.applies((1, 8, 5, 5), (16, 1, 3, 3), 8, "float64")
    assert not conv_depthwise.applies((1, 8, 5, 5), (8, 2, 3, 3), 4, "float32")   # 2 in
    assert not conv_depthwise.applies((1, 8, 5), (8, 1, 3), 8, "float32")         # 1-D
    assert not conv_depthwise.applies((1, 1, 5, 5), (1, 1, 3, 3), 1, "float32")   # 1 group
    assert not conv_depthwise.applies((1, 8, 5, 5), (8, 1, 3, 3), 8, "int32")


@pytest.mark.parametrize("xs,ws,stride,padding", [
    ((3, 7, 2, 2), (7, 1, 3, 3), (1, 1), (1, 1, 1, 1)),     # 2x2 planes
    ((2, 5, 4, 4), (5, 1, 3, 3), (2, 2), (1, 1, 1, 1)),     # stride 2 -> 2x2
    ((1, 9, 4, 3), (9, 1, 3, 3), (1, 1), (1, 0, 2, 1)),     # asymmetric, 4x4 out
    ((2, 3, 1, 1), (3, 1, 3, 3), (1, 1), (1, 1, 1, 1)),     # one pixel: the centre tap
])
def test_tiny_planes_match_reference(xs, ws, stride, padding):
    """Planes of at most TINY outputs x taps: straight-line code per plane."""
    g = _graph(xs, ws, stride, padding, (1, 1), xs[1], "float32")
    out = g.outputs[0].type.shape
    assert out[2] * out[3] * ws[2] * ws[3] <= conv_depthwise.TINY
    rng = np.random.default_rng(sum(xs))
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    want = backends.compile(g, "reference")(x, w)[0]
    got = backends.compile(g, "llvm", threads=2, cache=False)(x, w)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
