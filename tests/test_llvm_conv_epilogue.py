"""Convolutions with their epilogue (bias, ReLU6/ReLU clip, residual add) applied in the
same pass on the LLVM backend (ops_conv's ``epilogue`` regions), as MobileNetV2's and
ResNet-18's layers arrive from ONNX, against torch and the reference backend:

* depthwise (conv_depthwise.py): strides 1 and 2 (and a different stride per axis),
  paddings, dilation, a channel multiplier, planes small enough for the straight-line path;
* the im2col/GEMM path, the epilogue after each chunk of GEMM columns: 1x1 expand and
  project convolutions, strided 3x3 and 1x1 downsampling, a 7x7 stride-2 stem, groups,
  outputs wider than one chunk; 1x1 convolutions of small grids with several images'
  positions as the columns of one GEMM (``images_per_gemm``, 3 x 3 grids);

batch 1 and 8, float64, threads 1 and 2; and the regions are shown to take this path."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from irgraph.backends.llvm import ops_conv
from irgraph.backends.llvm.ops_conv import epilogue_conv
from irgraph.frontend.onnx import import_onnx
from tests import onnx_models as om


class Layer(nn.Module):
    def __init__(self, c, mult, stride, padding, dilation, act, residual, k=3, groups=None):
        super().__init__()
        groups = c if groups is None else groups
        self.conv = nn.Conv2d(c, c * mult, k, stride, padding, dilation, groups=groups)
        self.act, self.residual = act, residual

    def forward(self, x):
        y = self.conv(x)
        if self.act == "relu6":
            y = torch.clamp(y, 0.0, 6.0)
        elif self.act == "relu":
            y = torch.relu(y)
        return y + x if self.residual else y


# (batch, channels, H, W, multiplier, stride, padding, dilation, act, residual, threads)
CASES = [
    (1, 8, 13, 11, 1, 1, 1, 1, "relu6", True, 2),      # MobileNetV2's stride-1 block
    (8, 6, 12, 12, 1, 2, 1, 1, "relu6", False, 1),     # stride 2, batch 8
    (1, 5, 15, 14, 1, 2, 1, 1, "relu6", False, 2),     # stride 2, odd rows
    (2, 4, 16, 15, 1, (1, 2), 2, 2, "relu", False, 2),  # dilation, stride 2 across only
    (2, 3, 9, 10, 2, 1, 0, 1, "none", False, 1),       # multiplier 2, valid, bias alone
    (3, 7, 4, 4, 1, 2, 1, 1, "relu6", False, 2),       # 2x2 planes: straight-line code
    (1, 9, 3, 3, 1, 1, 1, 1, "relu6", True, 1),        # 3x3 planes with the residual
]
# the GEMM path: (..., kernel, groups) added
GEMM_CASES = [
    (1, 4, 20, 20, 6, 1, 0, 1, "relu6", False, 2, 1, 1),    # 1x1 expand, columns split
    (8, 12, 7, 7, 1, 1, 0, 1, "none", True, 1, 1, 1),       # 1x1 project + residual
    (1, 6, 13, 12, 2, 2, 1, 1, "relu", False, 2, 3, 1),     # strided 3x3
    (8, 4, 11, 11, 2, 2, 0, 1, "none", False, 2, 1, 1),     # 1x1 stride-2 downsample
    (1, 3, 40, 38, 4, 2, 3, 1, "relu", False, 1, 7, 1),     # 7x7 stride-2 stem
    (2, 6, 9, 9, 2, 2, 1, 1, "relu6", False, 2, 3, 2),      # 2 groups, stride 2
    (5, 8, 3, 3, 4, 1, 0, 1, "relu6", False, 2, 1, 1),      # 1x1, 3 + 2 images a GEMM
]


def ops_conv_features() -> str:
    from irgraph.backends.llvm import jit
    return jit.host()[2]


def _run(case, dtype=np.float32):
    n, c, h, w, mult, stride, padding, dilation, act, residual, threads, *kg = case
    torch.manual_seed(sum(x for x in case if isinstance(x, int)))
    model = Layer(c, mult, stride, padding, dilation, act, residual, *kg).eval()
    x = np.random.default_rng(c * h).standard_normal((n, c, h, w)).astype(dtype) * 10
    if dtype == np.float64:
        model = model.double()
    data = om.to_onnx(model, torch.from_numpy(x))
    graph = import_onnx(data)
    exe = graph.compile("llvm", threads=threads, pipeline="default, fuse")
    fused = [nd for nd in exe.executable.graph.nodes
             if nd.op == "fused" and nd.attrs["kind"] == "epilogue"]
    assert fused and all(epilogue_conv(nd.attrs["body"], threads, ops_conv_features())
                         is not None for nd in fused)
    got = exe(x)[0]
    want = om.torch_out(model, x)
    ref = graph.compile("reference")(x)[0]
    _run.convs = [nd.attrs["body"].nodes[0] for nd in fused]
    _run.exe = exe
    return got, want, ref


@pytest.mark.parametrize("case", CASES)
def test_fused_depthwise_matches_torch_and_reference(case):
    got, want, ref = _run(case)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    if case[8] == "relu6" and not case[9]:      # the clip's both bounds are reached
        assert got.min() == 0.0 and got.max() == 6.0


@pytest.mark.parametrize("case", GEMM_CASES)
def test_fused_gemm_conv_matches_torch_and_reference(case, monkeypatch):
    # chunks of 32 columns: several per image (and per thread's share) with a last partial one
    monkeypatch.setattr(ops_conv, "EPILOGUE_CHUNK_BYTES", 32 * 4 * case[1] * case[4]
                        // case[12])
    got, want, ref = _run(case)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    if case[8] == "relu6":
        assert got.min() == 0.0 and got.max() == 6.0


@pytest.mark.parametrize("case", [
    (1, 40, 7, 7, 4, 1, 0, 1, "relu6", False, 2, 1, 1),       # 160 x 40 expand, 7 x 7
    (1, 300, 7, 7, 1, 1, 0, 1, "none", True, 1, 1, 1),        # 300 x 300 project + residual
    (1, 24, 6, 7, 8, 1, 0, 1, "relu", False, 1, 1, 1),        # 192 x 24 on 42 positions
])
def test_fused_gemm_conv_wide_strip(case):
    """1x1 convolutions over more rows than one MC block whose columns end in the GEMM's
    wide strip (gemm.wide_from: 49 positions as 48 and a dot product, 42 as one strip of
    48 on 512-bit vectors), the epilogue applied to its tiles, over two K blocks too."""
    got, want, ref = _run(case)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_fused_depthwise_float64():
    got, want, ref = _run((2, 4, 10, 9, 1, 2, 1, 1, "relu6", False, 2), np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)


# im2col by chunks of output rows (ops_conv.row_chunks): (..., kernel, groups, rows per chunk)
ROW_CASES = [
    (1, 3, 30, 28, 4, 2, 3, 1, "relu", False, 2, 7, 1, 4),     # 7x7/2 stem: 15 rows, 4 chunks
    (3, 4, 17, 16, 2, 2, 1, 1, "relu6", False, 2, 3, 1, 2),    # strided 3x3, odd rows, batch 3
    (2, 6, 12, 11, 2, 2, 1, 1, "none", False, 1, 3, 2, 3),     # 2 groups
    (1, 4, 13, 13, 1, 2, 2, 2, "relu", False, 2, 3, 1, 2),     # dilation 2
]


@pytest.mark.parametrize("case", ROW_CASES)
def test_row_chunked_conv_matches_torch_and_reference(case, monkeypatch):
    *layer, rows = case
    c, k, groups = layer[1], layer[11], layer[12]
    # columns per chunk: ``rows`` output rows of the case (its own width worked out here)
    w_out = (layer[3] + 2 * layer[6] - layer[7] * (k - 1) - 1) // (layer[5] if isinstance(
        layer[5], int) else layer[5][1]) + 1
    monkeypatch.setattr(ops_conv, "MIN_CHUNK_COLS", 1)
    monkeypatch.setattr(ops_conv, "ROW_CHUNK_BYTES", rows * w_out * 4 * c // groups * k * k)
    got, want, ref = _run(tuple(layer))
    assert [ops_conv.row_chunks(nd) for nd in _run.convs] == [rows]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_row_chunks_taken():
    """The chunking rule on ResNet-18's stem at 224x224: chunks of whole output rows with
    at least MIN_CHUNK_COLS columns, as even as can be; a small grid, a pointwise kernel:
    one chunk."""
    from irgraph import Graph, TensorType

    def conv(xs, ws, stride, pad):
        g = Graph("c")
        x = g.add_input("x", TensorType(xs, "float32"))
        w = g.add_input("w", TensorType(ws, "float32"))
        g.add_node("conv", [x, w], dict(stride=stride, padding=pad, dilation=(1, 1), groups=1))
        return g.nodes[-1]
    stem = conv((1, 3, 224, 224), (64, 3, 7, 7), (2, 2), (3, 3, 3, 3))
    rows = ops_conv.row_chunks(stem)
    assert rows is not None and rows * 112 >= ops_conv.MIN_CHUNK_COLS and 2 * rows <= 112
    # MobileNetV2's stem: R = 27 rows of columns, 384 KiB / (27 x 4 bytes) = 3640 columns
    # = 33 rows of 112, so 4 chunks: of 28 rows each, not 33, 33, 33 and 13 (two threads
    # would take 66 and 46 rows)
    assert ops_conv.row_chunks(conv((1, 3, 224, 224), (32, 3, 3, 3), (2, 2),
                                    (1, 1, 1, 1))) == 28
    assert ops_conv.row_chunks(conv((1, 256, 14, 14), (512, 256, 3, 3), (2, 2),
                                    (1, 1, 1, 1))) is None
    assert ops_conv.row_chunks(conv((1, 16, 112, 112), (96, 16, 1, 1), (1, 1),
                                    (0, 0, 0, 0))) is None


@pytest.mark.parametrize("n,threads", [(1, 2), (3, 2), (2, 1)])
def test_row_chunked_plain_conv_matches_reference(n, threads, monkeypatch):
    """The chunked im2col/GEMM without a region (no epilogue): 3 output rows a chunk."""
    monkeypatch.setattr(ops_conv, "MIN_CHUNK_COLS", 1)
    monkeypatch.setattr(ops_conv, "ROW_CHUNK_BYTES", 3 * 8 * 4 * 5 * 9)   # 3 rows x 8 cols
    g = _conv_node((n, 5, 16, 15), (6, 5, 3, 3), (2, 2), (1, 1, 1, 1))
    assert ops_conv.row_chunks(g.nodes[0]) == 3
    _llvm_matches_reference(g, n, threads)


def _llvm_matches_reference(g, seed: int, threads: int) -> None:
    """The one-convolution graph ``g`` on the LLVM backend against the reference, on
    random data."""
    import irgraph.backends as backends
    rng = np.random.default_rng(seed)
    xv, wv = (rng.standard_normal(v.type.shape).astype(np.float32) for v in g.inputs)
    want = backends.compile(g, "reference")(xv, wv)[0]
    got = backends.compile(g, "llvm", threads=threads, cache=False)(xv, wv)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _conv_node(xs, ws, stride=(1, 1), pad=(0, 0, 0, 0)):
    from irgraph import Graph, TensorType
    g = Graph("c")
    x = g.add_input("x", TensorType(xs, "float32"))
    w = g.add_input("w", TensorType(ws, "float32"))
    g.set_outputs(g.add_node("conv", [x, w], dict(stride=stride, padding=pad,
                                                  dilation=(1, 1), groups=1)))
    return g


def test_images_per_gemm_rule():
    """Worked by hand with 16-wide vectors and 32-column tiles. 3x3 grids, batch 8, 2
    threads: one image a GEMM pads 9 positions to a vector of 16, 4 GEMMs on the busiest
    thread = 64 columns; two images a GEMM: 18 = 16 + 2 dot products, 2 GEMMs = 36, over
    a quarter fewer: chosen (4 images: 36 -> 32 + 16 = 48). Batch 5: 3 images, 27 -> 32,
    one GEMM, beat 3 x 16 = 48 and 2 x 18. One thread, batch 8: 8 x 16 = 128 against 4 x
    18 = 72 (8 images: 72 -> 64 + 16 = 80). 7x7 grids: 49 = 48 + 1 dot product wastes
    nothing, so one image a GEMM (4 images: 196 -> 192 + 16 = 208); an 8x8 grid fills
    its tiles; a single image and a 3x3 kernel have nothing to batch."""
    from irgraph.backends.llvm import jit
    features = jit.host()[2]
    if ops_conv.tiling("float32", features).nr != 32:
        features = "+avx512f"           # the rule for 32-column tiles, whatever the host
    k = ops_conv.images_per_gemm
    assert k(_conv_node((8, 16, 3, 3), (32, 16, 1, 1)).nodes[0], 2, features) == 2
    assert k(_conv_node((5, 16, 3, 3), (32, 16, 1, 1)).nodes[0], 2, features) == 3
    assert k(_conv_node((8, 16, 3, 3), (32, 16, 1, 1)).nodes[0], 1, features) == 2
    assert k(_conv_node((8, 16, 7, 7), (32, 16, 1, 1)).nodes[0], 2, features) is None
    assert k(_conv_node((8, 16, 8, 8), (32, 16, 1, 1)).nodes[0], 2, features) is None
    assert k(_conv_node((1, 16, 3, 3), (32, 16, 1, 1)).nodes[0], 2, features) is None
    assert k(_conv_node((8, 16, 9, 9), (32, 16, 3, 3)).nodes[0], 2, features) is None


@pytest.mark.parametrize("n,threads", [(5, 2), (8, 1), (3, 2)])
def test_batched_pointwise_plain_conv_matches_reference(n, threads):
    """3x3 grids: 9 positions of a 16- or 32-column tile; groups of 2 or 3 images, the
    last group short."""
    g = _conv_node((n, 6, 3, 3), (10, 6, 1, 1))
    assert ops_conv.images_per_gemm(g.nodes[0], threads, ops_conv_features()) is not None
    _llvm_matches_reference(g, n, threads)


# batch 1, an image's GEMM shared by the threads: columns making fewer than
# ROW_SPLIT_STRIPS strips per thread split its rows (output channels) instead
# (..., threads, kernel, groups)
ROW_SPLIT_CASES = [
    (1, 16, 7, 7, 6, 1, 0, 1, "relu6", False, 2, 1, 1),    # 96 channels, 49 positions
    (1, 16, 7, 7, 6, 1, 0, 1, "relu6", False, 3, 1, 1),    # 3 threads: 8 + 8 + 8 runs
    (1, 40, 7, 7, 1, 1, 0, 1, "none", True, 2, 1, 1),      # 40 = 3 x 12 + 4: a short run
    (1, 8, 14, 14, 12, 1, 0, 1, "relu", False, 3, 1, 1),   # 96 channels, 196 positions
    (1, 8, 13, 13, 5, 2, 1, 1, "relu6", False, 2, 3, 1),   # strided 3x3: im2col, barrier
]


@pytest.mark.parametrize("case", ROW_SPLIT_CASES)
def test_fused_gemm_conv_rows_split_matches_torch_and_reference(case, monkeypatch):
    from irgraph.backends.llvm.gemm_tiling import splits_rows
    t = ops_conv.tiling("float32", ops_conv_features())
    n, c, h, w, mult, stride, pad, _, _, _, threads, k, _ = case
    side = (h + 2 * pad - k) // stride + 1
    # worked out here: fewer column strips than 4 per thread, more row runs than strips
    strips, runs = -(-side * side // t.nr), -(-c * mult // t.mr)
    assert strips < 4 * threads and runs > strips
    assert splits_rows(c * mult, side * side, t.mr, t.nr, threads)
    # chunks of 32 columns: two or more per row run, the last partial
    monkeypatch.setattr(ops_conv, "EPILOGUE_CHUNK_BYTES", 32 * 4 * c * mult)
    from irgraph.backends.llvm import workers      # small: split all the same
    monkeypatch.setattr(workers, "PARALLEL_FLOPS", 0)
    monkeypatch.setattr(workers, "PARALLEL_BYTES", 0)
    got, want, ref = _run(case)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    if case[8] == "relu6":
        assert got.min() == 0.0 and got.max() == 6.0
    # a pointwise image's shares meet nowhere: the region is claimed, one share per
    # thread (a GEMM's); a strided 3x3 builds its columns first: all threads meet
    ex = _run.exe.executable
    tasks = [t for t in ex.plan.tasks
             if any(ex.graph.nodes[i].op == "fused" for i in t.nodes)]
    want_task = ("shares", threads) if k == 1 else ("all", 1)
    assert [(t.kind, t.shares) for t in tasks] == [want_task]


# ---------------------------------------------------------------- the epilogue GEMM

def _tail(g, y, form, bias, res, dtype):
    """The tail ``form`` after conv output y (graph ops, as the importer and the DSL write
    them)."""
    def full(v):
        return g.op("full", shape=(), value=v, dtype=dtype)

    def where_clamp(v, cmp, c, swapped=False):
        k = full(c)
        return g.op("where", g.op(cmp, k, v) if swapped else g.op(cmp, v, k), k, v)
    steps = {
        "bias": lambda v: g.op("add", v, bias),
        "bias_r": lambda v: g.op("add", bias, v),
        "res": lambda v: g.op("add", v, res),
        "res_r": lambda v: g.op("add", res, v),
        "relu": lambda v: g.op("relu", v),
        "lo0": lambda v: where_clamp(v, "lt", 0.0),         # Clip(0, 6) from ONNX
        "hi6": lambda v: where_clamp(v, "gt", 6.0),
        "lo0_le": lambda v: where_clamp(v, "le", 0.0),      # F.relu6 / F.hardtanh(0, 6)
        "hi6_ge": lambda v: where_clamp(v, "ge", 6.0),
        "lo_le": lambda v: where_clamp(v, "le", -0.5),
        "hi_flip": lambda v: where_clamp(v, "lt", 2.0, swapped=True),   # where(lt(2, y), 2, y)
        "max0": lambda v: g.op("maximum", v, full(0.0)),
        "max0_r": lambda v: g.op("maximum", full(0.0), v),
        "min6": lambda v: g.op("minimum", v, full(6.0)),
        "min6_r": lambda v: g.op("minimum", full(6.0), v),
        "sigmoid": lambda v: g.op("sigmoid", v),
        "mul2": lambda v: g.op("mul", v, full(2.0)),
        "max_nan": lambda v: g.op("maximum", v, full(float("nan"))),
    }
    for step in form:
        y = steps[step](y)
    return y


def _ep_graph(n, c, h, w, o, k, stride, pad, groups, form, dtype, bias_shape="nchw"):
    from irgraph import Graph, TensorType
    g = Graph("ep")
    x = g.add_input("x", TensorType((n, c, h, w), dtype))
    wt = g.add_input("w", TensorType((o, c // groups, k, k), dtype))
    b = g.add_input("b", TensorType((1, o, 1, 1) if bias_shape == "nchw" else (o, 1, 1),
                                    dtype))
    y = g.op("conv", x, wt, stride=(stride, stride), padding=(pad,) * 4, dilation=(1, 1),
             groups=groups)
    res = g.add_input("r", TensorType(y.type.shape, dtype))
    g.set_outputs([_tail(g, y, form, b, res, dtype)])
    return g


def _ep_inputs(g, seed, specials=False):
    rng = np.random.default_rng(seed)
    vals = [rng.standard_normal(v.type.shape).astype(v.dtype) * 3 for v in g.inputs]
    if specials:        # NaN, +inf and -inf positions of the input: through the clamps
        x = vals[0]
        x[0, 0, 0, 0], x[-1, -1, -1, -1], x[0, -1, x.shape[2] // 2, 1] = np.nan, np.inf, -np.inf
        vals[3].flat[5] = np.nan
        vals[3].flat[7] = np.inf
    return vals


def _check_ep(g, threads, seed, monkeypatch, specials=False, taken=True, scaled=False):
    """The region compiled (the im2col/GEMM path: the direct and dot-product convolutions
    that small 3x3 layers would take set aside) against the reference backend; ``scaled``:
    the tolerance relative to the largest output (a long reduction summed in another
    order)."""
    from irgraph import backends
    from irgraph.frontend.driver import compile_graph
    monkeypatch.setattr(ops_conv, "_direct_forward", lambda *a: None)
    monkeypatch.setattr(ops_conv, "_dot_forward", lambda *a: None)
    exe = compile_graph(g, backend="llvm", pipeline="default, fuse",
                        options={"threads": threads, "cache": False}).executable
    fused = [nd for nd in exe.graph.nodes
             if nd.op == "fused" and nd.attrs["kind"] == "epilogue"]
    assert fused
    for nd in fused:
        conv = epilogue_conv(nd.attrs["body"], threads, ops_conv_features())
        assert ops_conv.epilogue_path(conv, threads, ops_conv_features()) == "gemm"
        assert (ops_conv.gemm_epilogue(nd.attrs["body"]) is not None) == taken
    vals = _ep_inputs(g, seed, specials)
    with np.errstate(invalid="ignore", over="ignore"):
        got = exe(*vals)[0]
        ref = backends.compile(g, "reference")(*vals)[0]
    tol = 1e-4 if g.inputs[0].dtype == "float32" else 1e-11
    if scaled:
        tol *= max(1.0, float(np.nanmax(np.abs(ref[np.isfinite(ref)]), initial=1.0)))
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)      # NaN where the reference's
    return got, ref


# (batch, C, H, W, O, kernel, stride, pad, groups, threads, tail, output rows a chunk)
EP_CASES = [
    (1, 5, 7, 9, 13, 1, 1, 0, 1, 1, ("bias", "lo0", "hi6"), 0),      # MobileNetV2's ReLU6
    (2, 5, 7, 9, 13, 1, 1, 0, 1, 2, ("bias", "lo0_le", "hi6_ge"), 0),  # the DSL's ReLU6
    (3, 6, 9, 7, 7, 1, 1, 0, 1, 2, ("bias",), 0),                     # a projection
    (1, 4, 11, 10, 14, 3, 1, 1, 1, 3, ("bias", "res", "relu"), 0),    # ResNet's block end
    (3, 8, 9, 9, 13, 3, 2, 1, 1, 2, ("bias", "relu"), 0),             # strided 3x3
    (1, 6, 8, 9, 20, 1, 1, 0, 1, 2, ("bias", "relu", "res_r"), 0),    # residual after
    (2, 6, 10, 10, 8, 3, 1, 1, 2, 3, ("bias_r", "max0", "min6"), 0),  # groups
    (1, 3, 9, 8, 11, 1, 1, 0, 1, 3, ("bias", "min6_r", "max0_r"), 0),  # upper clamp first
    (3, 4, 7, 8, 5, 3, 1, 1, 1, 1, ("res", "lo_le", "hi_flip"), 0),   # no bias
    (1, 300, 7, 5, 17, 1, 1, 0, 1, 2, ("bias", "lo0", "hi6"), 0),     # K past one block
    (3, 4, 13, 11, 13, 3, 1, 1, 1, 2, ("bias", "res", "relu"), 3),    # by chunks of rows
    (5, 8, 3, 3, 13, 1, 1, 0, 1, 2, ("bias", "res", "relu"), 0),      # images side by side
]


@pytest.mark.parametrize("case", EP_CASES)
def test_epilogue_gemm_forms(case, monkeypatch):
    """Each tail form the epilogue GEMM takes, against the reference: partial tiles (O
    not a multiple of 12 or the vector width, positions not a multiple of 32), batches 1
    and 3 (threads sharing an image's GEMM by rows or by columns), threads 1 to 3, the
    im2col by chunks of output rows, and several images' positions in one GEMM (which
    keeps the tail on its copy out)."""
    n, c, h, w, o, k, s, p, groups, threads, form, rows = case
    if rows:
        monkeypatch.setattr(ops_conv, "MIN_CHUNK_COLS", 1)
        monkeypatch.setattr(ops_conv, "ROW_CHUNK_BYTES", rows * w * 4 * c * k * k)
    g = _ep_graph(n, c, h, w, o, k, s, p, groups, form, "float32")
    assert (ops_conv.row_chunks(g.nodes[0]) or 0) == rows
    got, ref = _check_ep(g, threads, seed=o * h, monkeypatch=monkeypatch)
    if "hi6" in form:
        assert got.min() == 0.0 and got.max() == 6.0


@pytest.mark.parametrize("threads", [1, 2])
def test_epilogue_gemm_nan_and_infinities(threads, monkeypatch):
    """NaN and +-inf in the input (and in the residual) through the clamps and the
    residual, in both orders: the reference's values, NaN included."""
    for form in (("bias", "lo0", "hi6"), ("bias", "res", "relu"), ("bias", "max0", "min6"),
                 ("bias", "relu", "res"), ("bias", "lo0_le", "hi6_ge")):
        g = _ep_graph(1, 4, 6, 7, 13, 3, 1, 1, 1, form, "float32")
        got, ref = _check_ep(g, threads, seed=3, monkeypatch=monkeypatch, specials=True)
        assert np.isnan(got).any() and np.isnan(ref).sum() == np.isnan(got).sum()
        if "hi6" in form or "min6" in form:
            assert (np.isnan(got) | ((got >= 0) & (got <= 6))).all()


def test_relu6_forms_take_a_specialized_epilogue():
    """ReLU6 as ONNX's Clip (strict compares) and as the DSL's hardtanh (y <= 0, y >= 6:
    the upper bound's inclusive compare gives the same bits, so only the lower's is kept)
    are both epilogue forms emitted with their own operations alone."""
    from irgraph.backends.llvm import gemm as gm
    for form, flags in ((("bias", "lo0", "hi6"), gm.EP_BIAS | gm.EP_LO | gm.EP_HI),
                        (("bias", "lo0_le", "hi6_ge"),
                         gm.EP_BIAS | gm.EP_LO | gm.EP_LO_INCLUSIVE | gm.EP_HI)):
        g = _ep_graph(1, 4, 5, 5, 6, 1, 1, 0, 1, form, "float32")
        from irgraph.passes.fusion import fuse
        (region,) = [n for n in fuse(g).nodes if n.op == "fused"]
        assert ops_conv.gemm_epilogue(region.attrs["body"]).flags() == flags
        assert flags in gm.EP_FORMS


# batch 1 whose GEMM would split its rows: the threads split its reduction instead
# (``splits_k``): (C, H, W, O, kernel, stride, threads, tail, KSPLIT_FROM or None)
KSPLIT_CASES = [
    (128, 7, 7, 40, 3, 1, 2, ("bias", "res", "relu"), None),     # R = 1152, 49 columns
    (128, 7, 7, 40, 3, 1, 3, ("bias", "lo0", "hi6"), None),      # 3 partial sums
    (128, 13, 11, 29, 3, 2, 2, ("bias", "relu"), None),          # strided, 42 columns
    (7, 6, 5, 13, 3, 1, 3, ("res", "lo_le", "hi_flip"), 1),      # 7 channels on 3 threads
    (5, 4, 4, 30, 3, 1, 2, ("bias", "sigmoid"), 1),              # the general tail
]


@pytest.mark.parametrize("case", KSPLIT_CASES)
def test_k_split_partial_sums_and_tail(case, monkeypatch):
    """Each thread's input channels' im2col rows and its partial product, the partial sums
    added over each thread's run of output channels, then the region's tail: against the
    reference, and the rule takes this path (``KSPLIT_FROM`` lowered for the small ones)."""
    c, h, w, o, k, s, threads, form, lowered = case
    if lowered is not None:
        monkeypatch.setattr(ops_conv, "KSPLIT_FROM", lowered)
    g = _ep_graph(1, c, h, w, o, k, s, 1, 1, form, "float32")
    conv = next(nd for nd in g.nodes if nd.op == "conv")
    assert ops_conv.splits_k(conv, threads, ops_conv_features())
    assert not ops_conv.splits_k(conv, 1, ops_conv_features())
    _check_ep(g, threads, seed=c + o, monkeypatch=monkeypatch,
              taken="sigmoid" not in form, scaled=True)


def test_k_split_float64(monkeypatch):
    g = _ep_graph(1, 128, 7, 7, 60, 3, 1, 1, 1, ("bias", "res", "relu"), "float64")
    assert ops_conv.splits_k(next(nd for nd in g.nodes if nd.op == "conv"), 2,
                             ops_conv_features())
    _check_ep(g, 2, seed=11, monkeypatch=monkeypatch, scaled=True)


def test_k_split_rule():
    """Only where the rows would be split (few columns: 14 x 14 = 7 strips of 32 on 2
    threads, under ``ROW_SPLIT_STRIPS`` = 4 per thread, and more row tiles than strips),
    R at least ``KSPLIT_FROM``, a batch under the thread count, one group, not 1x1."""
    from irgraph.backends.llvm import jit
    features = jit.host()[2]
    if ops_conv.tiling("float32", features).nr != 32:
        features = "+avx512f"
    k = ops_conv.splits_k
    node = _conv_node((1, 512, 7, 7), (512, 512, 3, 3), pad=(1, 1, 1, 1)).nodes[0]
    assert k(node, 2, features) and not k(node, 1, features)
    assert not k(_conv_node((2, 512, 7, 7), (512, 512, 3, 3), pad=(1, 1, 1, 1)).nodes[0], 2,
                 features)                                   # a batch of 2 on 2 threads
    assert not k(_conv_node((1, 100, 7, 7), (512, 100, 3, 3), pad=(1, 1, 1, 1)).nodes[0], 2,
                 features)                                   # R = 900
    assert not k(_conv_node((1, 512, 7, 7), (512, 512, 1, 1)).nodes[0], 2, features)
    assert not k(_conv_node((1, 128, 28, 28), (512, 128, 3, 3), pad=(1, 1, 1, 1)).nodes[0],
                 2, features)                                # 784 columns: 25 strips
    assert not k(_conv_node((1, 512, 7, 7), (20, 512, 3, 3), pad=(1, 1, 1, 1)).nodes[0], 2,
                 features)                                   # 2 row tiles, 2 strips


def test_epilogue_gemm_float64_and_bias_of_three_axes(monkeypatch):
    _check_ep(_ep_graph(3, 5, 9, 7, 13, 3, 1, 1, 1, ("bias", "lo0", "hi6"), "float64",
                        bias_shape="chw"), 2, seed=4, monkeypatch=monkeypatch)
    _check_ep(_ep_graph(1, 7, 6, 11, 9, 1, 1, 0, 1, ("bias", "res", "relu"), "float64"), 3,
              seed=5, monkeypatch=monkeypatch)


@pytest.mark.parametrize("form", [("bias", "sigmoid"), ("res", "bias", "relu"),
                                  ("bias", "relu", "res", "min6"), ("bias", "mul2", "relu"),
                                  ("bias", "max_nan")])
def test_tails_the_epilogue_gemm_refuses_run_chunked(form, monkeypatch):
    """Tails outside the epilogue GEMM's forms (another op, the residual before the bias,
    a clamp after a residual that follows a clamp, a NaN bound): the chunked second pass,
    right."""
    _check_ep(_ep_graph(1, 4, 8, 9, 13, 3, 1, 1, 1, form, "float32"), 2, seed=6,
              monkeypatch=monkeypatch, taken=False)


def test_the_importers_regions_take_the_epilogue_gemm():
    """The regions of ResNet's and MobileNetV2's layers as they arrive from ONNX."""
    for act, residual in (("relu6", False), ("relu", True), ("none", True), ("relu", False)):
        model = Layer(4, 2, 1, 0, 1, act, residual, 1, 1).eval() if not residual else \
            Layer(4, 1, 1, 0, 1, act, residual, 1, 1).eval()
        x = np.random.default_rng(1).standard_normal((1, 4, 5, 5)).astype(np.float32)
        graph = import_onnx(om.to_onnx(model, torch.from_numpy(x)))
        exe = graph.compile("llvm", threads=1, pipeline="default, fuse")
        bodies = [nd.attrs["body"] for nd in exe.executable.graph.nodes
                  if nd.op == "fused" and nd.attrs["kind"] == "epilogue"]
        assert bodies and all(ops_conv.gemm_epilogue(b) is not None for b in bodies), act
