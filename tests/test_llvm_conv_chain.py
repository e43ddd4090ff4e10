"""Chains of convolution regions (``[pointwise] depthwise [pointwise]``, MobileNetV2's
inverted-residual block) fused by ``fuse_conv_chains`` into one ``conv_chain`` region and
run band by band on the LLVM backend (backends/llvm/conv_chain.py), against torch
(conv2d + clamp), the reference backend and Triton (which run the region's links one by
one): chains of 2 and 3 links, depthwise strides 1 and 2, paddings 1 and 0, odd and tiny
grids, one band and several (a short last band), with and without the residual, batch 1
and 3, threads 1, 2 and 3 (the same bits), float64; the pass forms exactly the chains its
rule allows; MobileNetV2 end to end."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from irgraph import Graph, backends
from irgraph.types import TensorType
from irgraph.backends.llvm import conv_chain, jit
from irgraph.backends.llvm.gemm_tiling import tiling
from irgraph.frontend.onnx import import_onnx
from irgraph.passes.conv_chains import body_links, fuse_conv_chains
from tests import onnx_models as om


@pytest.fixture(autouse=True)
def banded(monkeypatch):
    """Chains of these small images run band by band too (their intermediates would fit
    the cache: ``BANDED_FROM``, ``BATCH_BANDED_FROM``)."""
    monkeypatch.setattr(conv_chain, "BANDED_FROM", 0)
    monkeypatch.setattr(conv_chain, "BATCH_BANDED_FROM", 0)


class Chain(nn.Module):
    """expand 1x1 (optional) -> depthwise k x k -> project 1x1 (optional), each with its
    bias; ReLU6 after the expand and the depthwise; the block's input added at the end."""

    def __init__(self, cin, hidden, cout, stride, padding, expand=True, project=True,
                 residual=False, k=3):
        super().__init__()
        c = hidden if expand else cin
        self.expand = nn.Conv2d(cin, hidden, 1) if expand else None
        self.dw = nn.Conv2d(c, c, k, stride, padding, groups=c)
        self.project = nn.Conv2d(c, cout, 1) if project else None
        self.residual = residual

    def forward(self, x):
        y = x
        if self.expand is not None:
            y = torch.clamp(self.expand(y), 0.0, 6.0)
        y = torch.clamp(self.dw(y), 0.0, 6.0)
        if self.project is not None:
            y = self.project(y)
        return y + x if self.residual else y


def _imported(model, x):
    return import_onnx(om.to_onnx(model, torch.from_numpy(x)))


def _chains(graph):
    return [n for n in graph.nodes if n.op == "fused" and n.attrs["kind"] == "conv_chain"]


def _case(n, cin, hidden, cout, h, w, stride, padding, expand=True, project=True,
          residual=False, dtype=np.float32, seed=0):
    torch.manual_seed(seed)
    model = Chain(cin, hidden, cout, stride, padding, expand, project, residual).eval()
    if dtype == np.float64:
        model = model.double()
    x = np.random.default_rng(seed + h * w).standard_normal((n, cin, h, w)).astype(dtype) * 3
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    return model, x, want


def _chain(node):
    """The band plan the lowering uses for ``node`` on this CPU."""
    return conv_chain.chain_of(node, jit.host()[2])


def _compile(imported, threads, links):
    exe = imported.compile("llvm", threads=threads, pipeline="default, fuse", cache=False)
    (node,) = _chains(exe.graph)
    assert len(body_links(node.attrs["body"])) == links
    assert _chain(node) is not None        # the banded lowering takes it
    return exe, node


def _close(got, want, dtype=np.float32):
    tol = 2e-5 if dtype == np.float32 else 1e-12
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale)


# (batch, cin, hidden, cout, H, W, stride, padding, expand, project, residual, threads)
CASES = [
    (1, 8, 24, 8, 13, 11, 1, 1, True, True, True, 2),      # stride-1 block, residual
    (3, 6, 18, 10, 13, 11, 2, 1, True, True, False, 3),    # stride 2, odd sizes
    (1, 12, 12, 7, 7, 7, 1, 1, False, True, False, 1),     # depthwise -> project
    (3, 5, 15, 15, 13, 11, 2, 0, True, False, False, 2),   # expand -> depthwise, padding 0
    (3, 4, 12, 4, 1, 1, 1, 1, True, True, True, 2),        # 1x1 grid
    (1, 6, 16, 6, 7, 7, 2, 0, True, True, False, 3),       # stride 2, padding 0
]


@pytest.mark.parametrize("case", CASES)
def test_chain_against_torch(case):
    n, cin, hid, cout, h, w, s, p, expand, project, residual, threads = case
    model, x, want = _case(n, cin, hid, cout, h, w, s, p, expand, project, residual)
    exe, _ = _compile(_imported(model, x), threads, 1 + expand + project)
    _close(exe(x)[0], want)


def test_small_images_keep_their_links_apart(monkeypatch):
    """One image's expanded tensor within ``BANDED_FROM``, or the batch's within
    ``BATCH_BANDED_FROM``: the LLVM backend's pass forms no chain (the links stay separate
    regions); just above both it does."""
    model, x, want = _case(2, 8, 24, 8, 13, 11, 1, 1, residual=True)
    # 2 images of 24 x 13 x 11 float32: 13728 bytes each
    for per_image, batch, formed in ((13728, 0, False), (0, 2 * 13728, False),
                                     (13727, 2 * 13728 - 1, True)):
        monkeypatch.setattr(conv_chain, "BANDED_FROM", per_image)
        monkeypatch.setattr(conv_chain, "BATCH_BANDED_FROM", batch)
        exe = _imported(model, x).compile("llvm", threads=2, pipeline="default, fuse",
                                          cache=False)
        assert len(_chains(exe.graph)) == formed
        _close(exe(x)[0], want)


def test_a_strided_chain_forms_from_twice_the_bytes(monkeypatch):
    """A stride-2 depthwise link's chain forms only where one image's expanded tensor is
    over ``STRIDED_BANDED`` (2) times ``BANDED_FROM``; a stride-1 chain of the same
    tensor from ``BANDED_FROM``."""
    monkeypatch.setattr(conv_chain, "STRIDED_BANDED", 2)
    for stride, per_image, formed in ((1, 13727, True), (2, 13727, False),
                                      (2, 13728 // 2, False), (2, 13728 // 2 - 1, True)):
        # 2 images of 24 x 13 x 11 float32 expanded: 13728 bytes each
        model, x, want = _case(2, 8, 24, 8, 13, 11, stride, 1)
        monkeypatch.setattr(conv_chain, "BANDED_FROM", per_image)
        exe = _imported(model, x).compile("llvm", threads=2, pipeline="default, fuse",
                                          cache=False)
        assert len(_chains(exe.graph)) == formed, (stride, per_image)
        _close(exe(x)[0], want)


def test_float64():
    model, x, want = _case(3, 6, 20, 6, 9, 10, 1, 1, residual=True, dtype=np.float64)
    exe, _ = _compile(_imported(model, x), 2, 3)
    _close(exe(x)[0], want, np.float64)


@pytest.mark.parametrize("stride,padding,residual,h", [(1, 1, True, 23), (2, 1, False, 27),
                                                       (2, 0, False, 27)])
def test_several_bands_same_bits_on_1_2_and_3_threads(monkeypatch, stride, padding,
                                                      residual, h):
    """Bands of 4 rows: several per image, the last one shorter; every thread count gives
    the same bits, and they match torch."""
    monkeypatch.setattr(conv_chain, "band_rows", lambda *args, **kw: 4)
    model, x, want = _case(2, 6, 16, 6, h, 9, stride, padding, residual=residual, seed=1)
    imported = _imported(model, x)
    got = []
    for threads in (1, 2, 3):
        exe, node = _compile(imported, threads, 3)
        ch = _chain(node)
        OH = ch.out_shape[2]
        assert ch.bands >= 3 and OH % ch.rows != 0          # a short last band
        got.append(exe(x)[0])
    _close(got[0], want)
    assert np.array_equal(got[0], got[1]) and np.array_equal(got[0], got[2])


def test_band_rows_rule_by_hand(monkeypatch):
    """16 -> 96 channels at 112 x 112, depthwise stride 2 (MobileNetV2's second block),
    float32: r output rows read 2r + 1 padded input rows, each of T (96 x 112) and D (96
    channels x 2 phases x 57 columns), and make r rows of T2 (96 x 56). All three in half
    a MiB (2**17 elements): 96 * ((2r + 1) * 226 + 56 r) = 96 * (508 r + 226) <= 131072,
    so r <= 2; then raised until at most 10% of the expand's rows are made twice."""
    monkeypatch.setattr(conv_chain, "BAND_BYTES", 1 << 19)
    monkeypatch.setattr(conv_chain, "MAX_HALO", 0.1)
    model, x, _ = _case(1, 16, 96, 24, 112, 112, 2, 1, seed=2)
    exe = _imported(model, x).compile("llvm", threads=1, pipeline="default, fuse",
                                      cache=False)
    (node,) = _chains(exe.graph)
    ch = _chain(node)
    nr = tiling("float32", jit.host()[2]).nr
    assert ch.nr == nr
    # T's rows: a band's input rows, in whole tiles of nr columns
    assert ch.parts() == [96 * -(-112 * (2 * ch.rows + 1) // nr) * nr,
                          96 * 2 * 57 * (2 * ch.rows + 1), 96 * 56 * ch.rows]
    # bands of r rows read input rows [2rk - 1, 2rk + 2r) (2r + 1 of them), the first
    # band [0, 2r), the last clipped at 112: r = 2, 28 bands: 4 + 27 * 5 = 139 rows made;
    # r = 4, 14 bands: 8 + 13 * 9 = 125; r = 5, 12 bands (the last of 1 row, input rows
    # [109, 112)): 10 + 10 * 11 + 3 = 123; r = 6, 10 bands (the last of 2, [107, 112)):
    # 12 + 8 * 13 + 5 = 121; r = 8, 7 bands: 16 + 6 * 17 = 118
    for r, made in ((2, 139), (4, 125), (5, 123), (6, 121), (8, 118)):
        assert abs(conv_chain.halo(ch.dw, r) - (made - 112) / 112) < 1e-12
    pre, dw, post = ch.pre, ch.dw, ch.post
    assert conv_chain.band_rows(pre, dw, post, nr=1) == 5       # the first within 10%
    # then the closest height to 5 (from 2 to 10, the halo within 10%: from 5) whose
    # project columns 56 r are a multiple of the tile width: 16 or 12 wide, r = 6 (336
    # columns, 10 bands); 32 wide, r = 8 (448), but its 7 bands are an odd count of shares
    # at batch 1, so one row less: r = 7, 8 bands (its halo 8 + 7 * 15 = 119 rows made, 6%)
    assert conv_chain.band_rows(pre, dw, post, nr=16) == 6
    assert conv_chain.band_rows(pre, dw, post, nr=12) == 6
    assert conv_chain.band_rows(pre, dw, post, nr=32) == 7
    monkeypatch.setattr(conv_chain, "EVEN_SHARES", False)
    assert conv_chain.band_rows(pre, dw, post, nr=32) == 8
    monkeypatch.setattr(conv_chain, "EVEN_SHARES", True)
    assert ch.rows == conv_chain.band_rows(pre, dw, post, nr=nr)
    assert ch.bands == -(-56 // ch.rows)
    # at batch 2, 7 bands make 14 shares: r = 8 stays
    model2, x2, _ = _case(2, 16, 96, 24, 112, 112, 2, 1, seed=2)
    exe2 = _imported(model2, x2).compile("llvm", threads=1, pipeline="default, fuse",
                                         cache=False)
    (node2,) = _chains(exe2.graph)
    ch2 = _chain(node2)
    assert conv_chain.band_rows(ch2.pre, ch2.dw, ch2.post, nr=32) == 8


def test_reference_and_triton_run_the_chain_region():
    """The fused graph (a conv_chain node) on the reference and Triton backends, which run
    the links one by one, against torch."""
    model, x, want = _case(1, 4, 8, 4, 6, 5, 1, 1, residual=True, seed=3)
    exe, _ = _compile(_imported(model, x), 1, 3)
    for backend in ("reference", "triton"):
        weights = [exe.weights[p.name] for p in exe.graph.params]
        _close(backends.compile(exe.graph, backend)(x, *weights)[0], want)


def _fused_graph(model, x):
    """The graph after import, the default pipeline and ``fuse`` (no chains yet)."""
    from irgraph.passes.manager import PassManager
    return PassManager("default, fuse").run(_imported(model, x).graph)


class Shared(Chain):
    """The expanded (or the depthwise) value read a second time: the chain stops there."""

    def __init__(self, second):
        super().__init__(4, 8, 4, 1, 1)
        self.second = second

    def forward(self, x):
        e = torch.clamp(self.expand(x), 0.0, 6.0)
        d = torch.clamp(self.dw(e), 0.0, 6.0)
        y = self.project(d)
        extra = e if self.second == "expand" else d
        return y, extra.mean(dim=1, keepdim=True)


def test_pass_forms_the_chain_and_stops_at_a_second_reader():
    model, x, _ = _case(1, 4, 8, 4, 6, 6, 1, 1, seed=4)
    g = fuse_conv_chains(_fused_graph(model, x))
    (node,) = _chains(g)
    assert [k.kind for k in body_links(node.attrs["body"])] == ["pointwise", "depthwise",
                                                                "pointwise"]
    for second, kinds in (("expand", ["depthwise", "pointwise"]),
                          ("depthwise", ["pointwise", "depthwise"])):
        torch.manual_seed(5)
        m = Shared(second).eval()
        g = fuse_conv_chains(_fused_graph(m, x))
        (node,) = _chains(g)
        assert [k.kind for k in body_links(node.attrs["body"])] == kinds
        with torch.no_grad():
            want = [t.numpy() for t in m(torch.from_numpy(x))]
        exe = _imported(m, x).compile("llvm", threads=2, pipeline="default, fuse",
                                      cache=False)
        for got, w in zip(exe(x), want):
            _close(got, w)


def _bare(dtype):
    """expand 1x1 -> depthwise 3x3 -> a second reader of the depthwise output: bare convs."""
    g = Graph("g")
    x = g.add_input("x", TensorType((1, 4, 6, 5), dtype))
    w1 = g.add_input("w1", TensorType((8, 4, 1, 1), dtype))
    w2 = g.add_input("w2", TensorType((8, 1, 3, 3), dtype))
    e = g.op("conv", x, w1, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups=1)
    d = g.op("conv", e, w2, stride=(1, 2), padding=(1, 1, 2, 0), dilation=(1, 2), groups=8)
    g.set_outputs([d])
    return g


def test_bare_convolutions_as_links_float32_not_float16():
    """Bare convs (no epilogue region) chain too, a stride and padding per side and
    dilation included, against torch; a float16 chain is not formed."""
    chained = fuse_conv_chains(_bare("float32"))
    (node,) = _chains(chained)
    assert [k.kind for k in body_links(node.attrs["body"])] == ["pointwise", "depthwise"]
    rng = np.random.default_rng(7)
    x, w1, w2 = (rng.standard_normal(s).astype(np.float32)
                 for s in ((1, 4, 6, 5), (8, 4, 1, 1), (8, 1, 3, 3)))
    e = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w1))
    e = torch.nn.functional.pad(e, (2, 0, 1, 1))
    want = torch.nn.functional.conv2d(e, torch.from_numpy(w2), stride=(1, 2), dilation=(1, 2),
                                      groups=8).numpy()
    exe = backends.compile(chained, "llvm", threads=2, cache=False)
    (node,) = _chains(exe.graph)
    assert _chain(node) is not None
    _close(exe(x, w1, w2)[0], want)
    assert not _chains(fuse_conv_chains(_bare("float16")))


def test_pass_leaves_other_convolutions_alone():
    """A full 3x3 convolution between two 1x1 ones: no chain."""
    class Dense(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(4, 8, 1), nn.Conv2d(8, 8, 3, padding=1), \
                nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.c(torch.relu(self.b(torch.relu(self.a(x)))))
    x = np.zeros((1, 4, 5, 5), np.float32)
    assert not _chains(fuse_conv_chains(_fused_graph(Dense().eval(), x)))


def test_mobilenet_v2_end_to_end():
    """Every inverted-residual block a chain (17), batch 1 at 224 x 224, against torch."""
    model = om.build("mobilenet_v2")
    x = np.random.default_rng(6).standard_normal((1, 3, 224, 224)).astype(np.float32)
    want = om.torch_out(model, x)
    exe = _imported(model, x).compile("llvm", threads=2, pipeline="default, fuse",
                                      cache=False)
    assert len(_chains(exe.graph)) == 17
    got = exe(x)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


def test_a_chain_reserves_its_bands_not_its_expanded_tensor():
    """The arena of a graph whose chain region the banded lowering takes holds that
    region's band scratch, not the expanded and depthwise tensors its body would make run
    node by node (MobileNetV2 at batch 8: 247 MB -> 20 MB); the result still torch's."""
    model, x, want = _case(2, 8, 48, 8, 80, 80, 1, 1, residual=True)
    exe, node = _compile(_imported(model, x), 2, 3)
    expanded = node.attrs["body"].nodes[0].outputs[0].type.nbytes
    band = conv_chain._scratch(node, 2, jit.host()[2])
    arena = exe.executable.plan.arena_bytes
    assert band < expanded
    assert arena <= band + 4096, (arena, band, expanded)
    _close(exe(x)[0], want)
