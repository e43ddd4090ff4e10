"""Convolutions with fewer output positions than the GEMM tile is wide (late layers of an
image network) run as register-tiled dot products along R on the LLVM backend
(backends/llvm/conv_dot.py). Every case here takes that path on this host (checked), and its
output is held to the reference backend's: R with and without a tail past whole vectors,
output channels and columns that leave partial tiles, columns in more than one cache block,
strides, asymmetric padding, dilation, 1-D, both float types, one and two threads; and
batches of such images whose columns side by side fill GEMM tiles (one GEMM for the
batch)."""
from __future__ import annotations

import numpy as np
import pytest

import irgraph.backends as backends
from irgraph import Graph, TensorType
from irgraph.backends.llvm import conv_dot
from irgraph.backends.llvm.jit import host
from irgraph.ops.conv_geometry import out_shape
from tests.helpers import assert_conv_like_reference


def _conv_graph(xs, ws, stride, padding, dilation, dtype):
    g = Graph("conv")
    x = g.add_input("x", TensorType(xs, dtype))
    w = g.add_input("w", TensorType(ws, dtype))
    g.set_outputs(g.add_node("conv", [x, w], dict(stride=stride, padding=padding,
                                                  dilation=dilation, groups=1)))
    return g


# (x shape, w shape, stride, padding, dilation)
CASES = [
    ((1, 37, 3, 3), (13, 37, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),   # R = 333: a tail
    ((3, 20, 5, 4), (10, 20, 3, 3), (2, 2), (1, 0, 0, 1), (1, 1)),   # J = 12, asymmetric
    ((2, 64, 4, 4), (24, 64, 1, 1), (2, 2), (0, 0, 0, 0), (1, 1)),   # 1x1 downsample
    ((5, 16, 3, 3), (7, 16, 2, 2), (1, 1), (1, 1, 1, 1), (2, 2)),    # dilated
    ((2, 17, 1, 1), (6, 17, 1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),    # P = 1, R = 17
    ((3, 512, 2, 2), (9, 512, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),  # two column blocks
    ((2, 24, 5), (5, 24, 3), (2,), (1, 0), (1,)),                    # 1-D
    # a batch with at least a tile's width of columns: one GEMM over all of them
    ((9, 24, 3, 3), (13, 24, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),   # J = 81
    ((8, 64, 2, 2), (20, 64, 3, 3), (1, 1), (1, 0, 1, 1), (1, 1)),   # J = 16
    ((4, 16, 6, 6), (33, 16, 3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),   # J = 36, stride 2
]


@pytest.mark.parametrize("dtype,threads", [("float32", 2), ("float64", 1)])
@pytest.mark.parametrize("xs,ws,stride,padding,dilation", CASES)
def test_small_grid_conv_matches_reference(xs, ws, stride, padding, dilation, dtype, threads):
    out = out_shape(xs[2:], ws[2:], stride, padding, dilation)
    R = ws[1] * int(np.prod(ws[2:]))
    assert conv_dot.plan(xs[0], xs[1], ws[0], int(np.prod(out)), R, 1, dtype,
                         host()[2]) is not None, "the case should take the dot-product path"
    g = _conv_graph(xs, ws, stride, padding, dilation, dtype)
    assert_conv_like_reference(g, xs, ws, dtype, threads)


def test_plan_takes_narrow_grids_only():
    """Fewer positions than the GEMM tile's width (32 float32 columns with AVX-512, 16 with
    AVX2), one group, rows of at least one vector."""
    avx512, avx2 = "+avx2,+fma,+avx512f", "+avx2,+fma"
    assert conv_dot.plan(1, 512, 512, 4, 4608, 1, "float32", avx512) is not None
    assert conv_dot.plan(1, 64, 64, 31, 576, 1, "float32", avx512) is not None
    assert conv_dot.plan(1, 64, 64, 32, 576, 1, "float32", avx512) is None
    assert conv_dot.plan(1, 64, 64, 16, 576, 1, "float32", avx2) is None
    assert conv_dot.plan(1, 64, 64, 15, 576, 1, "float32", avx2) is not None
    assert conv_dot.plan(1, 64, 64, 4, 576, 2, "float32", avx512) is None     # groups
    assert conv_dot.plan(1, 8, 8, 4, 8, 1, "float32", avx512) is None         # R < 16
    assert conv_dot.plan(1, 64, 64, 4, 576, 1, "int32", avx512) is None
    # dot products while the batch's columns are fewer than the tile's width, then a GEMM
    assert conv_dot.plan(7, 512, 512, 4, 4608, 1, "float32", avx512).dots
    assert not conv_dot.plan(8, 512, 512, 4, 4608, 1, "float32", avx512).dots
    assert not conv_dot.plan(4, 512, 512, 4, 4608, 1, "float32", avx2).dots
    # 256 images: (4608 + 512) x 4096 floats of scratch, past MAX_SCRATCH_BYTES
    assert conv_dot.plan(256, 512, 512, 16, 4608, 1, "float32", avx512) is None



def test_forward_direct_grid_only_where_its_waste_is_below_im2cols_copy():
    """Worked by hand (AVX-512, float32: 16 lanes, 32-column tiles), 3x3 'same' kernels,
    8 images on 2 threads. 8x8 with 128 channels: grid 1 + 7 * 10 + 7 = 78 -> 96 columns
    for 64 outputs, waste 0.5 + 16 / (4 * 64) against im2col's 16 / 128: im2col. 16x16
    with 64 channels: 1 + 15 * 18 + 15 = 286 -> 288 for 256, 0.125 + 16 / 1024 against
    16 / 64: the grid."""
    from irgraph.backends.llvm.conv_direct import Direct
    f = "+avx2,+fma,+avx512f"
    small = Direct(128, 128, (8, 8), (1, 1, 1, 1), (3, 3), (1, 1), "float32", f)
    assert (small.Q, small.Qpad) == (78, 96)
    assert not small.beats_im2col(8, 2)
    big = Direct(64, 64, (16, 16), (1, 1, 1, 1), (3, 3), (1, 1), "float32", f)
    assert (big.Q, big.Qpad) == (286, 288)
    assert big.beats_im2col(8, 2)


@pytest.mark.parametrize("xs,ws,stride,padding,groups", [
    ((1, 3, 64, 63), (16, 3, 7, 7), (2, 2), (3, 3, 3, 3), 1),    # a stem: 3 channels
    ((1, 34, 16, 17), (64, 17, 3, 3), (1, 1), (1, 0, 1, 2), 2),  # groups, stride 1
    ((1, 67, 32, 32), (64, 67, 1, 1), (2, 2), (0, 0, 0, 0), 1),  # 1x1 downsample
])
def test_one_image_on_two_threads_matches_reference(xs, ws, stride, padding, groups):
    """One image, two threads, at least a GEMM tile of output positions and work enough for
    a parallel node (> 1 MFLOP): the threads build the im2col rows of their share of the
    channels (odd counts), then split the GEMM."""
    g = Graph("conv")
    x = g.add_input("x", TensorType(xs))
    w = g.add_input("w", TensorType(ws))
    g.set_outputs(g.add_node("conv", [x, w], dict(stride=stride, padding=padding,
                                                  dilation=(1, 1), groups=groups)))
    out = g.outputs[0].type.shape
    assert out[2] * out[3] >= 32
    rng = np.random.default_rng(sum(xs))
    xa = rng.standard_normal(xs).astype(np.float32)
    wa = rng.standard_normal(ws).astype(np.float32)
    want = backends.compile(g, "reference")(xa, wa)[0]
    got = backends.compile(g, "llvm", threads=2, cache=False)(xa, wa)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("tiny", [0, None])
@pytest.mark.parametrize("xs,ws,stride,padding,dilation", [
    ((5, 3, 4, 4), (4, 3, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),          # the table's case
    ((4, 2, 5, 6), (3, 2, 3, 2), (2, 1), (0, 2, 1, 0), (1, 2)),          # asymmetric, dilated
    ((3, 2, 7), (4, 2, 3), (2,), (2, 1), (2,)),                          # 1-D
    ((2, 2, 3, 3, 3), (3, 2, 2, 2, 2), (1, 1, 1), (1, 0, 0, 1, 1, 0), (1, 1, 1)),   # 3-D
])
def test_im2col_of_tiny_planes_by_table_and_by_loops(monkeypatch, tiny, xs, ws, stride,
                                                     padding, dilation):
    """im2col through the compile-time offset table (planes of at most TINY_IM2COL offsets x
    positions) and through the loop nest (TINY_IM2COL = 0) both give the reference's
    convolution (float64: the same products, summed in the same order)."""
    from irgraph.backends.llvm import ops_conv
    if tiny is not None:
        monkeypatch.setattr(ops_conv, "TINY_IM2COL", tiny)
    geo = ops_conv.conv_geo(xs, ws[2:], dict(stride=stride, padding=padding,
                                               dilation=dilation))
    assert np.prod(ws[2:]) * np.prod(geo["out"]) <= ops_conv.TINY_IM2COL or tiny == 0
    g = _conv_graph(xs, ws, stride, padding, dilation, "float64")
    assert_conv_like_reference(g, xs, ws, "float64", 2)
