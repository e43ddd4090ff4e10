"""Convolution against the text's own equations (chapter 9), written as explicit loops:
c (eq. 9.8), g (eq. 9.11), h (eq. 9.12-9.13) for every stride and padding, the autoencoder
identities around eq. 9.14, locally connected (eq. 9.9) and tiled (eq. 9.10) layers, biases
(end of section 9.5), separable and FFT convolution (section 9.8), the cost of fig. 9.6."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import irgraph.frontend as fe
import irgraph
from irgraph.frontend import F
from irgraph import TensorType
from irgraph.interpreter import interpret
from irgraph.passes.autodiff import grad, vjp
from tests._conv_testing import forward as F_run, ours, rand


def run(op, *xs, **attrs):
    opdef = irgraph.get_op(op)
    return opdef.run(list(xs), opdef.check_attrs(attrs))[0]


def c_text(K, V, s):
    """eq. 9.8, 0-based: Z[i,j,k] = sum_{l,m,n} V[l, j*s+m, k*s+n] K[i,l,m,n]."""
    O, C, kh, kw = K.shape
    H, W = (V.shape[1] - kh) // s + 1, (V.shape[2] - kw) // s + 1
    Z = np.zeros((O, H, W))
    for i, j, k in itertools.product(range(O), range(H), range(W)):
        for l, m, n in itertools.product(range(C), range(kh), range(kw)):
            Z[i, j, k] += V[l, j * s + m, k * s + n] * K[i, l, m, n]
    return Z


def g_text(G, V, s, kh, kw):
    """eq. 9.11: g[i,j,k,l] = sum_{m,n} G[i,m,n] V[j, m*s+k, n*s+l]."""
    O, M, N = G.shape
    out = np.zeros((O, V.shape[0], kh, kw))
    for i, j, k, l in itertools.product(*map(range, out.shape)):
        out[i, j, k, l] = sum(G[i, m, n] * V[j, m * s + k, n * s + l]
                              for m in range(M) for n in range(N))
    return out


def h_text(K, G, s, H, W):
    """eq. 9.13: h[i,j,k] = sum over l*s+m = j, n*s+p = k, and q of K[q,i,m,p] G[q,l,n]."""
    O, C, kh, kw = K.shape
    out = np.zeros((C, H, W))
    for i, j, k in itertools.product(range(C), range(H), range(W)):
        for l, m in itertools.product(range(G.shape[1]), range(kh)):
            if l * s + m != j:
                continue
            for n, p in itertools.product(range(G.shape[2]), range(kw)):
                if n * s + p == k:
                    out[i, j, k] += sum(K[q, i, m, p] * G[q, l, n] for q in range(O))
    return out


@pytest.mark.parametrize("s,pad", [(1, 0), (2, 0), (3, 1), (2, 2)])
def test_c_g_h_equal_eq_9_8_9_11_9_13_for_stride_and_padding(s, pad):
    V, K = rand(2, 7, 8, seed=1), rand(3, 2, 3, 2, seed=2)
    Vp = np.pad(V, ((0, 0), (pad, pad), (pad, pad)))
    attrs = dict(stride=(s, s), padding=(pad,) * 4, dilation=(1, 1), groups=1)
    Z = run("conv", V[None], K, **attrs)[0]
    np.testing.assert_allclose(Z, c_text(K, Vp, s), rtol=1e-12, atol=1e-12)
    G = rand(*Z.shape, seed=3)
    np.testing.assert_allclose(run("conv_kernel_grad", V[None], G[None], kernel_size=(3, 2),
                                   **attrs), g_text(G, Vp, s, 3, 2), rtol=1e-12, atol=1e-12)
    hp = h_text(K, G, s, *Vp.shape[1:])
    h = run("conv_input_grad", K, G[None], input_size=(7, 8), **attrs)[0]
    np.testing.assert_allclose(h, hp[:, pad:pad + 7, pad:pad + 8], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("stride,padding,dilation,groups", [
    ((1, 1), (0, 0, 0, 0), (1, 1), 1), ((2, 3), (1, 0, 2, 1), (1, 2), 2),
    ((3, 2), (2, 2, 0, 1), (2, 1), 1), ((4, 4), (1, 1, 1, 1), (1, 1), 2)])
def test_g_and_h_are_the_transposes_of_c(stride, padding, dilation, groups):
    """<c(K,V), G> = <V, h(K,G)> = <K, g(G,V)>: h multiplies by the transpose of the matrix
    defined by convolution (section 9.5), g is the gradient with respect to the kernel."""
    V, K = rand(2, 4, 9, 10, seed=4), rand(6, 4 // groups, 3, 2, seed=5)
    a = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    Z = run("conv", V, K, **a)
    G = rand(*Z.shape, seed=6)
    lhs = np.sum(Z * G)
    assert np.isclose(lhs, np.sum(V * run("conv_input_grad", K, G, input_size=(9, 10), **a)))
    assert np.isclose(lhs, np.sum(K * run("conv_kernel_grad", V, G, kernel_size=(3, 2), **a)))


def test_several_input_sizes_give_one_output_size_so_h_takes_it_explicitly():
    K, G = rand(1, 1, 3, 3, seed=7), rand(1, 1, 3, 3, seed=8)
    a = dict(stride=(2, 2), padding=(0,) * 4, dilation=(1, 1), groups=1)
    for n in (7, 8):
        assert run("conv_input_grad", K, G, input_size=(n, n), **a).shape == (1, 1, n, n)
    with pytest.raises(irgraph.IRError, match="input_size"):
        g = irgraph.Graph()
        g.op("conv_input_grad", g.add_input("k", TensorType.of(K)),
             g.add_input("g", TensorType.of(G)), input_size=(9, 9), **a)


def test_autoencoder_gradients_are_g_of_H_E_and_c_of_K_E_eq_9_14():
    """R = h(K, H, s); with E = dL/dR, dL/dK = g(H, E, s) and dL/dH = c(K, E, s)."""
    K, H = rand(3, 2, 3, 3, seed=1), rand(1, 3, 4, 4, seed=2)
    s, size = 2, (9, 10)
    R, (dK, dH), E = ours(lambda k, h: F.conv_transpose2d(h, k, stride=s, output_size=size),
                          [K, H])
    a = dict(stride=(s, s), padding=(0,) * 4, dilation=(1, 1), groups=1)
    np.testing.assert_allclose(R, run("conv_input_grad", K, H, input_size=size, **a))
    np.testing.assert_allclose(dK, run("conv_kernel_grad", E, H, kernel_size=(3, 3), **a))
    np.testing.assert_allclose(dH, run("conv", E, K, **a))
    np.testing.assert_allclose(dH[0], c_text(K, E[0], s), rtol=1e-12)
    np.testing.assert_allclose(dK, g_text(H[0], E[0], s, 3, 3), rtol=1e-12)


def test_second_order_through_g_and_h_matches_torch_double_backward():
    x, w, v = rand(1, 2, 7, 6, seed=1), rand(3, 2, 3, 2, seed=2), rand(1, 2, 7, 6, seed=3)
    specs = [fe.TensorSpec(x.shape, "float64"), fe.TensorSpec(w.shape, "float64")]
    g1 = grad(fe.trace(lambda x, w: F.sum(F.square(F.conv2d(x, w, stride=2, padding=1))),
                       *specs), wrt=["x"])
    outs = interpret(vjp(g1, wrt=["w"]), [x, w, v])
    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    (gx,) = torch.autograd.grad((TF.conv2d(xt, wt, stride=2, padding=1) ** 2).sum(), xt,
                                create_graph=True)
    (gw,) = torch.autograd.grad((gx * torch.tensor(v)).sum(), wt)
    np.testing.assert_allclose(outs[0], gx.detach().numpy(), rtol=1e-10)
    np.testing.assert_allclose(outs[1], gw.numpy(), rtol=1e-10)


# ---------------------------------------------------------------- unshared and tiled
def lc_text(V, W):
    """eq. 9.9, 0-based: Z[i,j,k] = sum_{l,m,n} V[l, j+m, k+n] W[i,j,k,l,m,n]."""
    O, H, Wd, C, kh, kw = W.shape
    Z = np.zeros((O, H, Wd))
    for i, j, k, l, m, n in itertools.product(*map(range, W.shape)):
        Z[i, j, k] += V[l, j + m, k + n] * W[i, j, k, l, m, n]
    return Z


def tiled_text(V, K):
    """eq. 9.10, 0-based: Z[i,j,k] = sum_{l,m,n} V[l, j+m, k+n] K[i,l,m,n, j%t, k%t]."""
    O, C, kh, kw, th, tw = K.shape
    H, W = V.shape[1] - kh + 1, V.shape[2] - kw + 1
    Z = np.zeros((O, H, W))
    for i, j, k, l, m, n in itertools.product(range(O), range(H), range(W), range(C),
                                              range(kh), range(kw)):
        Z[i, j, k] += V[l, j + m, k + n] * K[i, l, m, n, j % th, k % tw]
    return Z


def test_locally_connected_is_eq_9_9():
    V, W = rand(2, 5, 6, seed=1), rand(3, 4, 4, 2, 2, 3, seed=2)
    np.testing.assert_allclose(F_run(lambda v, w: F.locally_connected(v, w), V[None], W)[0],
                               lc_text(V, W), rtol=1e-12)


def test_tiled_convolution_is_eq_9_10():
    V, K = rand(2, 6, 7, seed=3), rand(3, 2, 2, 3, 2, 3, seed=4)
    np.testing.assert_allclose(F_run(lambda v, k: F.tiled_conv(v, k), V[None], K)[0],
                               tiled_text(V, K), rtol=1e-12)


def test_tiled_with_t_1_is_convolution():
    V, K = rand(2, 2, 6, 7, seed=5), rand(3, 2, 2, 3, seed=6)
    kw = dict(stride=(2, 1), padding=(1, 0))
    np.testing.assert_allclose(F_run(lambda v, k: F.tiled_conv(v, k, **kw), V,
                                     K[..., None, None]),
                               F_run(lambda v, k: F.conv2d(v, k, **kw), V, K), rtol=1e-12)


def test_tiled_with_t_equal_to_the_output_size_is_locally_connected():
    V, K = rand(2, 2, 5, 6, seed=7), rand(3, 2, 2, 3, 4, 4, seed=8)   # output 4 x 4
    W = np.ascontiguousarray(K.transpose(0, 4, 5, 1, 2, 3))           # (O, j, k, C, m, n)
    np.testing.assert_allclose(F_run(lambda v, k: F.tiled_conv(v, k), V, K),
                               F_run(lambda v, w: F.locally_connected(v, w), V, W), rtol=1e-12)


def test_biases_per_channel_location_and_tile_end_of_section_9_5():
    V, K = rand(1, 2, 6, 7, seed=9), rand(3, 2, 2, 2, 2, 3, seed=10)   # out 5 x 6, t = 2 x 3
    z = F_run(lambda v, k: F.tiled_conv(v, k), V, K)
    b_tile, b_loc, b_chan = rand(3, 2, 3, seed=11), rand(3, 5, 6, seed=12), rand(3, seed=13)
    j, k = np.meshgrid(np.arange(5), np.arange(6), indexing="ij")
    for b, want in ((b_tile, z + b_tile[:, j % 2, k % 3]), (b_loc, z + b_loc),
                    (b_chan, z + b_chan[:, None, None])):
        np.testing.assert_allclose(F_run(lambda v, k, b: F.tiled_conv(v, k, b), V, K, b), want,
                                   rtol=1e-12)
    with pytest.raises(ValueError, match="bias"):
        F_run(lambda v, k, b: F.tiled_conv(v, k, b), V, K, rand(3, 4, seed=0))


def test_locally_connected_and_tiled_gradients_match_torch_built_from_unfold():
    V, W = rand(2, 2, 5, 6, seed=1), rand(3, 2, 2, 2, 2, 3, seed=2)     # stride 2: out 2 x 2
    y, (dv, dw), ct = ours(lambda v, w: F.locally_connected(v, w, stride=2), [V, W])
    vt, wt = torch.tensor(V, requires_grad=True), torch.tensor(W, requires_grad=True)
    cols = TF.unfold(vt, (2, 3), stride=2)                               # (N, C*k, L)
    yt = torch.einsum("nkl,olk->nol", cols, wt.reshape(3, 4, 12)).reshape(2, 3, 2, 2)
    yt.backward(torch.tensor(ct))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(dv, vt.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(dw, wt.grad.numpy(), rtol=1e-12)


# ---------------------------------------------------------------- section 9.8
@pytest.mark.parametrize("stride,padding,dilation", [(1, 0, 1), ((2, 1), "same", 1),
                                                     ((1, 3), (2, 1), (2, 1)), (2, "full", 2)])
def test_separable_kernel_as_d_one_dimensional_convolutions(stride, padding, dilation):
    if padding == "same" and stride != 1:
        stride = 1
    x = rand(2, 3, 9, 10, seed=1)
    v0, v1 = rand(4, 3, 3, seed=2), rand(4, 4, seed=3)
    K = v0[:, :, :, None] * v1[:, None, None, :]
    kw = dict(stride=stride, padding=padding, dilation=dilation)
    sep = fe.trace(lambda x: F.conv_separable(x, [v0, v1], **kw),
                   fe.TensorSpec(x.shape, "float64"))
    convs = [n for n in sep.nodes if n.op == "conv"]
    assert [n.inputs[1].shape for n in convs] == [(4, 3, 3, 1), (4, 1, 1, 4)]
    np.testing.assert_allclose(interpret(sep, [x])[0],
                               F_run(lambda x: F.conv2d(x, K, **kw), x), rtol=1e-10,
                               atol=1e-12)


def test_separable_3d():
    x = rand(1, 2, 5, 6, 4, seed=4)
    v = [rand(3, 2, 2, seed=5), rand(3, 3, seed=6), rand(3, 2, seed=7)]
    K = v[0][:, :, :, None, None] * v[1][:, None, None, :, None] * v[2][:, None, None, None, :]
    np.testing.assert_allclose(F_run(lambda x: F.conv_separable(x, v, padding=1), x),
                               F_run(lambda x: F.conv3d(x, K, padding=1), x), rtol=1e-10)


@pytest.mark.parametrize("xs,ws,kw", [
    ((2, 3, 11), (4, 3, 5), dict(stride=2, padding=(1, 3))),
    ((1, 4, 9, 8), (6, 2, 3, 4), dict(stride=(1, 2), padding="same", dilation=(2, 1),
                                      groups=2)),
    ((1, 2, 4, 5, 6), (2, 2, 2, 3, 3), dict(padding="full")),
])
def test_fft_path_equals_direct_convolution_with_gradients(xs, ws, kw):
    if "same" in kw.values():
        kw = dict(kw, stride=1)
    x, w = rand(*xs, seed=1), rand(*ws, seed=2)
    y1, g1, ct = ours(lambda x, w: F.conv(x, w, **kw), [x, w])
    y2, g2, _ = ours(lambda x, w: F.conv_fft(x, w, **kw), [x, w])
    np.testing.assert_allclose(y2, y1, rtol=1e-9, atol=1e-10)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10)


# ---------------------------------------------------------------- fig. 9.6
def test_edge_detection_cost_of_fig_9_6():
    """A 320-wide, 280-tall image and the kernel [-1, 1]: a 319-wide output, two
    multiplications and one addition per output pixel: 319 * 280 * 3 = 267,960 flops."""
    g = fe.trace(lambda img: F.conv2d(img, np.array([[[[-1.0, 1.0]]]], np.float32)),
                 fe.TensorSpec((1, 1, 280, 320)))
    node = next(n for n in g.nodes if n.op == "conv")
    assert node.outputs[0].shape == (1, 1, 280, 319)
    cost = node.opdef.cost([v.type for v in node.inputs], [v.type for v in node.outputs],
                           node.attrs)
    assert cost.flops == 319 * 280 * 3 == 267_960
    img = rand(1, 1, 280, 320, seed=1, dtype=np.float32)
    np.testing.assert_allclose(interpret(g, [img])[0], img[..., 1:] - img[..., :-1],
                               atol=1e-6)
