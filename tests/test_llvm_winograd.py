"""Winograd F(4x4, 3x3) and F(2x2, 3x3) convolution on the LLVM backend
(backends/llvm/conv_winograd.py), each case in both forms, against the float64 reference
backend and torch.nn.functional.conv2d: paddings 0, 1 and asymmetric, odd and even planes
(partial last tiles), batch 1 and several (more than one chunk of images), channel counts
that are not multiples of the vector width, float64, threads 1 and 2, a conv + bias + ReLU
region; the path is shown to be taken (the plan the lowering uses), and the cost model to
leave the layers it does not pay on to the others.

Small layers are below the cost model's threshold, so those cases force the plan
(``pays`` patched), as is the form; the ResNet block's layer takes it unforced, and
ResNet-18's 256-channel layers at batch 1 take F(2x2) unforced. Float32 is held to
1e-4 * sqrt(9 C) max|x| max|w| (F(4x4)'s error measures about 2e-6 of that), float64 to
1e-10 of it."""
from __future__ import annotations

import irgraph.frontend as fe
import numpy as np
import pytest
import torch
from irgraph.backends.llvm import conv_winograd
from irgraph.backends.llvm.jit import host
from irgraph.backends.llvm.ops_conv import epilogue_conv, epilogue_path
from irgraph.frontend import F

from irgraph import Graph, TensorType, backends


def _graph(xs, ws, padding, dtype):
    g = Graph("conv")
    x = g.add_input("x", TensorType(xs, dtype))
    w = g.add_input("w", TensorType(ws, dtype))
    g.set_outputs(g.add_node("conv", [x, w], dict(stride=(1, 1), padding=padding,
                                                  dilation=(1, 1), groups=1)))
    return g


def _attrs(padding):
    return dict(stride=(1, 1), padding=padding, dilation=(1, 1), groups=1)


def _data(xs, ws, dtype, seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype))


def _torch_conv(x, w, padding):
    """torch's conv2d in float64 of x padded by (top, bottom, left, right)."""
    t, b, l, r = padding
    tx = torch.nn.functional.pad(torch.from_numpy(x.astype(np.float64)), (l, r, t, b))
    return torch.nn.functional.conv2d(tx, torch.from_numpy(w.astype(np.float64))).numpy()


def _bound(x, w, dtype):
    scale = np.sqrt(9 * x.shape[1]) * np.abs(x).max() * np.abs(w).max()
    return (1e-4 if dtype == "float32" else 1e-10) * scale


@pytest.fixture
def forced(monkeypatch):
    monkeypatch.setattr(conv_winograd.Winograd, "pays", lambda self: True)


@pytest.fixture(params=[4, 2], ids=["F4x4", "F2x2"])
def form(request, monkeypatch):
    """The case in F(4x4, 3x3) and in F(2x2, 3x3), each forced by ``plan``'s rule."""
    if request.param == 2:
        monkeypatch.setattr(conv_winograd, "SMALL_CHUNK_TILES", 1 << 30)
        monkeypatch.setattr(conv_winograd, "STREAMED_U_BYTES", -1)
    else:
        monkeypatch.setattr(conv_winograd, "SMALL_CHUNK_TILES", 0)
    return request.param


# (x shape, w shape, padding, dtype, threads)
CASES = [
    ((2, 16, 8, 8), (16, 16, 3, 3), (1, 1, 1, 1), "float32", 2),       # whole tiles
    ((1, 19, 5, 7), (21, 19, 3, 3), (1, 1, 1, 1), "float32", 1),       # partial tiles
    ((3, 17, 13, 13), (18, 17, 3, 3), (0, 1, 1, 0), "float32", 2),     # asymmetric
    ((2, 20, 8, 8), (33, 20, 3, 3), (0, 0, 0, 0), "float32", 1),       # valid: 6x6
    ((1, 16, 5, 7), (17, 16, 3, 3), (0, 1, 1, 0), "float64", 2),       # float64
    ((4, 24, 13, 13), (16, 24, 3, 3), (1, 1, 1, 1), "float64", 1),
]


@pytest.mark.parametrize("xs,ws,padding,dtype,threads", CASES)
def test_winograd_matches_reference_and_torch(forced, form, xs, ws, padding, dtype, threads):
    wg = conv_winograd.plan(xs, ws, _attrs(padding), dtype, host()[2], threads)
    assert wg is not None and not wg.own        # one chunk: the threads split its phases
    assert wg.m == form
    x, w = _data(xs, ws, dtype, sum(xs) + sum(ws))
    g = _graph(xs, ws, padding, dtype)
    got = backends.compile(g, "llvm", threads=threads, cache=False)(x, w)[0]
    want = backends.compile(_graph(xs, ws, padding, "float64"), "reference")(
        x.astype(np.float64), w.astype(np.float64))[0]
    assert got.dtype == np.dtype(dtype) and got.shape == want.shape
    bound = _bound(x, w, dtype)
    assert np.abs(got - want).max() <= bound, (np.abs(got - want).max(), bound)
    assert np.abs(got - _torch_conv(x, w, padding)).max() <= bound


def test_several_chunks_of_images(forced, form, monkeypatch):
    """A batch in more than one chunk (the last one partial), 32x32 planes, two threads."""
    monkeypatch.setattr(conv_winograd, "MAX_CHUNK_TILES", 64)
    xs, ws, padding = (5, 16, 32, 32), (16, 16, 3, 3), (1, 1, 1, 1)
    wg = conv_winograd.plan(xs, ws, _attrs(padding), "float32", host()[2], threads=2)
    assert wg is not None and wg.nb == 1 and wg.chunks == 5 and wg.m == form
    assert wg.own       # each thread runs whole chunks in its own scratch
    x, w = _data(xs, ws, "float32", 1)
    got = backends.compile(_graph(xs, ws, padding, "float32"), "llvm", threads=2,
                           cache=False)(x, w)[0]
    assert np.abs(got - _torch_conv(x, w, padding)).max() <= _bound(x, w, "float32")


def test_resnet_block_layer_takes_winograd_unforced():
    """64 -> 64 channels on 16x16 planes, batch 32 (bench/peers.py's ResNet block): the cost
    model picks Winograd by itself, and the result matches torch."""
    xs, ws, padding = (32, 64, 16, 16), (64, 64, 3, 3), (1, 1, 1, 1)
    assert conv_winograd.plan(xs, ws, _attrs(padding), "float32", host()[2]) is not None
    x, w = _data(xs, ws, "float32", 2)
    got = backends.compile(_graph(xs, ws, padding, "float32"), "llvm", threads=2,
                           cache=False)(x, w)[0]
    assert np.abs(got - _torch_conv(x, w, padding)).max() <= _bound(x, w, "float32")


@pytest.mark.parametrize("residual,threads,chunk_tiles", [
    (False, 2, 256),        # one chunk: the threads split each phase and the epilogue
    (True, 2, 9),           # a chunk per image: each thread its own chunks
    (True, 1, 256)])
def test_fused_bias_relu_region(forced, form, monkeypatch, residual, threads, chunk_tiles):
    """conv + bias (+ residual) + ReLU traced by the frontend: one fused region whose
    convolution takes the Winograd path, the epilogue applied to each chunk's images
    after their output transform; against torch."""
    monkeypatch.setattr(conv_winograd, "MAX_CHUNK_TILES", chunk_tiles)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 16, 9, 11)).astype(np.float32)
    w = rng.standard_normal((20, 16, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(20).astype(np.float32)
    res = rng.standard_normal((3, 20, 9, 11)).astype(np.float32)

    def fn(x, w, bias, res):
        y = F.conv2d(x, w, bias, stride=1, padding=1)
        return F.relu(y + res if residual else y)
    f = fe.compile(fn, *(fe.TensorSpec(a.shape) for a in (x, w, bias, res)),
                   backend="llvm", threads=threads, cache=False, pipeline="default, fuse")
    regions = [n for n in f.executable.graph.nodes if n.op == "fused"
               and n.attrs["kind"] == "epilogue"]
    assert len(regions) == 1
    conv = epilogue_conv(regions[0].attrs["body"], threads, host()[2])
    assert conv is not None and conv.op == "conv"
    assert epilogue_path(conv, threads, host()[2]) == "winograd"
    wg = conv_winograd.plan(x.shape, w.shape, _attrs((1, 1, 1, 1)), "float32", host()[2],
                            threads)
    assert wg.own == (chunk_tiles == 9 and threads == 2) and wg.m == form
    got = f(x, w, bias, res)
    want = _torch_conv(x, w, (1, 1, 1, 1)) + bias[None, :, None, None]
    want = np.maximum(want + res if residual else want, 0)
    assert np.abs(got - want).max() <= _bound(x, w, "float32")


# (gy shape, w shape, padding, input size, dtype, threads)
INPUT_GRAD_CASES = [
    ((2, 18, 8, 8), (18, 16, 3, 3), (1, 1, 1, 1), (8, 8), "float32", 2),
    ((1, 20, 5, 6), (20, 17, 3, 3), (0, 1, 1, 0), (6, 7), "float32", 1),   # asymmetric
    ((3, 16, 11, 11), (16, 19, 3, 3), (0, 0, 0, 0), (13, 13), "float64", 2),  # valid
]


@pytest.mark.parametrize("gs,ws,padding,size,dtype,threads", INPUT_GRAD_CASES)
def test_input_gradient_matches_reference(forced, form, gs, ws, padding, size, dtype,
                                          threads):
    """conv_input_grad of a 3x3 stride-1 layer: the Winograd convolution of gy (padded by
    2 - padding, the kernel flipped, its channel axes swapped)."""
    attrs = dict(_attrs(padding), input_size=size)
    wg = conv_winograd.plan_input_grad(ws, gs, attrs, dtype, host()[2], threads)
    assert wg is not None and wg.m == form

    def graph(dt):
        g = Graph("dx")
        w = g.add_input("w", TensorType(ws, dt))
        gy = g.add_input("gy", TensorType(gs, dt))
        g.set_outputs(g.add_node("conv_input_grad", [w, gy], attrs))
        return g
    rng = np.random.default_rng(sum(gs))
    wv, gv = rng.standard_normal(ws).astype(dtype), rng.standard_normal(gs).astype(dtype)
    got = backends.compile(graph(dtype), "llvm", threads=threads, cache=False)(wv, gv)[0]
    want = backends.compile(graph("float64"), "reference")(wv.astype(np.float64),
                                                          gv.astype(np.float64))[0]
    # torch: the gradient of <gy, conv2d(x, w)> with respect to x
    t, b, l, r = padding
    tx = torch.zeros((gs[0], ws[1]) + size, dtype=torch.float64, requires_grad=True)
    y = torch.nn.functional.conv2d(torch.nn.functional.pad(tx, (l, r, t, b)),
                                   torch.from_numpy(wv.astype(np.float64)))
    y.backward(torch.from_numpy(gv.astype(np.float64)))
    bound = (1e-4 if dtype == "float32" else 1e-10) * np.sqrt(9 * gs[1]) * \
        np.abs(wv).max() * np.abs(gv).max()
    assert np.abs(got - want).max() <= bound, (np.abs(got - want).max(), bound)
    assert np.abs(got - tx.grad.numpy()).max() <= bound


def test_input_gradient_plan_needs_padding_at_most_2():
    feats = host()[2]
    attrs = dict(_attrs((3, 3, 3, 3)), input_size=(16, 16))
    assert conv_winograd.plan_input_grad((64, 64, 3, 3), (16, 64, 20, 20), attrs,
                                         "float32", feats) is None
    attrs = dict(_attrs((1, 1, 1, 1)), input_size=(16, 16))
    assert conv_winograd.plan_input_grad((64, 64, 3, 3), (16, 64, 16, 16), attrs,
                                         "float32", feats) is not None


@pytest.mark.parametrize("feats", ["+avx2,+fma,+avx512f", "+avx2,+fma", "+sse2"])
def test_cost_model_and_applicability(feats):
    resnet = _attrs((1, 1, 1, 1))
    assert conv_winograd.plan((8, 128, 28, 28), (128, 128, 3, 3), resnet, "float32",
                              feats) is not None
    # one image of 7x7 planes at 512 channels: U (36 x 512 x 512) costs more than it saves
    assert conv_winograd.plan((1, 512, 7, 7), (512, 512, 3, 3), resnet, "float32",
                              feats) is None
    big = (16, 64, 32, 32), (64, 64, 3, 3)
    assert conv_winograd.plan(*big, resnet, "float32", feats) is not None
    for attrs in (dict(resnet, stride=(2, 2)), dict(resnet, dilation=(2, 2)),
                  dict(resnet, groups=2)):
        assert conv_winograd.plan(*big, attrs, "float32", feats) is None
    assert conv_winograd.plan(big[0], (64, 64, 5, 5), resnet, "float32", feats) is None
    assert conv_winograd.plan((16, 8, 32, 32), (64, 8, 3, 3), resnet, "float32",
                              feats) is None                       # C < 16
    assert conv_winograd.plan(*big, resnet, "int32", feats) is None
    assert conv_winograd.plan((16, 64, 3, 3), (64, 64, 3, 3), _attrs((0, 0, 0, 0)),
                              "float32", feats) is None            # 1x1 output


class _Floats:
    """A stand-in for the IR builder on Python floats (the transforms' arithmetic)."""
    fadd = staticmethod(lambda x, y: x + y)
    fsub = staticmethod(lambda x, y: x - y)


@pytest.mark.parametrize("m", [4, 2])
def test_factored_transforms_are_the_matrices(m):
    """The factored B^T d and A^T m of the generated code equal the form's matrices BT and
    AT (BT2, AT2 for F(2x2)), and F(m x m, 3x3) as a whole is the 3x3 correlation of an
    (m + 2) x (m + 2) tile, worked in float64."""
    fma = lambda b, a, x, y: a * x + y
    rng = np.random.default_rng(4)
    form = conv_winograd.FORMS[m]
    assert (form.bt, form.g, form.at) == ((conv_winograd.BT, conv_winograd.G, conv_winograd.AT)
                                          if m == 4 else
                                          (conv_winograd.BT2, conv_winograd.G2, conv_winograd.AT2))
    bt, at = np.array(form.bt, float), np.array(form.at, float)
    g_mat = np.array([[float(c) for c in row] for row in form.g])
    win = m + 2
    for _ in range(3):
        d, v = rng.standard_normal(win), rng.standard_normal(win)
        np.testing.assert_allclose(form.input_rows(fma)(_Floats, list(d)), bt @ d,
                                   rtol=1e-14, atol=1e-14)
        np.testing.assert_allclose(form.output_rows(fma)(_Floats, list(v)), at @ v,
                                   rtol=1e-14, atol=1e-14)
    tile, k = rng.standard_normal((win, win)), rng.standard_normal((3, 3))
    y = at @ ((g_mat @ k @ g_mat.T) * (bt @ tile @ bt.T)) @ at.T
    want = [[np.sum(tile[i:i + 3, j:j + 3] * k) for j in range(m)] for i in range(m)]
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("feats", ["+avx2,+fma,+avx512f", "+avx2,+fma"])
def test_f2x2_where_f4x4s_u_would_stream(feats):
    """F(2x2, 3x3) where F(4x4)'s chunk has fewer than SMALL_CHUNK_TILES tiles and its U
    more than STREAMED_U_BYTES: ResNet-18's 256-channel layers on 14 x 14 at batch 1 (16
    tiles, U 9.4 MB; F(2x2): 49 tiles, U 4.2 MB); the same layers at batch 8 (128 tiles),
    its 128-channel layers on 28 x 28 at batch 1 (49 tiles) and small layers keep F(4x4).
    The chunk counted is the one before it is evened out over the threads."""
    resnet = _attrs((1, 1, 1, 1))

    def form(xs, ws):
        """The form, the same on 1, 2 and 3 threads (so are the values)."""
        (m,) = {conv_winograd.plan(xs, ws, resnet, "float32", feats, t).m for t in (1, 2, 3)}
        return m
    assert form((1, 256, 14, 14), (256, 256, 3, 3)) == 2
    assert form((8, 256, 14, 14), (256, 256, 3, 3)) == 4
    assert form((1, 128, 28, 28), (128, 128, 3, 3)) == 4
    assert form((16, 64, 32, 32), (64, 64, 3, 3)) == 4


def _bias_relu_graph(xs, ws, residual):
    """relu(conv(x, w) + bias (+ r)) with w and bias parameters (an inference model)."""
    g = Graph("block")
    x = g.add_input("x", TensorType(xs, "float32"))
    r = g.add_input("r", TensorType((xs[0], ws[0]) + xs[2:], "float32")) if residual else None
    w = g.add_param("w", TensorType(ws, "float32"))
    bias = g.add_param("bias", TensorType((1, ws[0], 1, 1), "float32"))
    (c,) = g.add_node("conv", [x, w], _attrs((1, 1, 1, 1)))
    (y,) = g.add_node("add", [c, bias])
    if residual:
        (y,) = g.add_node("add", [y, r])
    g.set_outputs(g.add_node("relu", [y]))
    return g


@pytest.mark.parametrize("residual,threads", [(False, 1), (True, 2)])
def test_prepared_weights_kept_between_calls(forced, form, residual, threads):
    """``constant_params``: the first call transforms the constant weights (U) into the
    executable's prepared block, the next calls reuse it (shown by changing w in place,
    which the contract forbids: the result stays the old weights'); other arrays passed as
    weights are transformed again. A fused conv + bias (+ residual) + ReLU region, against
    torch, threads 1 and 2."""
    from irgraph.frontend.driver import compile_graph
    xs, ws = (2, 16, 9, 11), (20, 16, 3, 3)
    rng = np.random.default_rng(5)
    x = rng.standard_normal(xs).astype(np.float32)
    r = rng.standard_normal((2, 20, 9, 11)).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    w2 = rng.standard_normal(ws).astype(np.float32)
    bias = rng.standard_normal((1, 20, 1, 1)).astype(np.float32)
    exe = compile_graph(_bias_relu_graph(xs, ws, residual), backend="llvm",
                        pipeline="default, fuse", options=dict(
                            threads=threads, cache=False, constant_params=True)).executable
    assert len(exe.plan.prep) == 1 and exe.plan.prep_args == (len(exe.graph.inputs),)
    extra = (r,) if residual else ()

    def want(x, w):
        y = _torch_conv(x, w, (1, 1, 1, 1)) + bias
        return np.maximum(y + r if residual else y, 0)

    def check(x, w, ref_w=None):
        got = exe(x, *extra, w, bias)[0]
        err = np.abs(got - want(x, w if ref_w is None else ref_w)).max()
        assert err <= _bound(x, w, "float32"), err
    check(x, w)
    check(x[::-1].copy(), w)                # U reused: other inputs, same weights
    w_old = w.copy()
    w *= -1.5                               # in place: not seen (the prepared U is kept)
    check(x, w, ref_w=w_old)
    check(x, w2)                            # another array: transformed again
    check(x, w.copy())                      # and again (-1.5 w now)


def test_prepared_weights_only_where_constant(forced):
    """Without ``constant_params``, or where the weights are a graph input, nothing is
    prepared (every call transforms them)."""
    from irgraph.frontend.driver import compile_graph
    xs, ws = (1, 16, 8, 8), (16, 16, 3, 3)
    exe = compile_graph(_bias_relu_graph(xs, ws, False), backend="llvm",
                        options=dict(threads=1, cache=False)).executable
    assert not exe.plan.prep
    exe = backends.compile(_graph(xs, ws, (1, 1, 1, 1), "float32"), "llvm", threads=1,
                           cache=False, constant_params=True)
    assert not exe.plan.prep
