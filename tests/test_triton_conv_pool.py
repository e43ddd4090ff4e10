"""Triton convolution, pooling and batch-norm kernels (run in Triton's interpreter on the CPU)
against torch.nn.functional and torch autograd: eq. 9.7-9.8 (forward), eq. 9.11 (kernel
gradient), eq. 9.12-9.13 (input gradient), section 9.3 (pooling), eq. 8.34-8.36 (batch norm).
Shapes are small and irregular so every mask and edge window is exercised."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import irgraph.backends as backends
from irgraph import Graph, TensorType

RNG = np.random.default_rng(0)


def run_op(op: str, inputs: list[np.ndarray], n_out: int = 1, **attrs) -> list[np.ndarray]:
    g = Graph(op)
    xs = [g.add_input(f"x{i}", TensorType.of(a)) for i, a in enumerate(inputs)]
    outs = g.add_node(op, xs, attrs)
    g.set_outputs(outs)
    return backends.compile(g, "triton")(*inputs)


def rand(*shape, dtype=np.float32) -> np.ndarray:
    return RNG.standard_normal(shape).astype(dtype)


def close(got, want, dtype=np.float32):
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got, np.asarray(want), **tol)


CONV_CASES = [  # (x shape, w shape, stride, padding per axis, dilation, groups)
    ((2, 3, 7, 6), (4, 3, 3, 3), (1, 1), (1, 1), (1, 1), 1),
    ((1, 4, 9, 8), (6, 2, 3, 2), (2, 3), (2, 0), (2, 1), 2),
    ((2, 6, 5, 5), (6, 1, 3, 3), (1, 2), (1, 1), (1, 1), 6),        # depthwise
    ((2, 3, 11), (5, 3, 4), (2,), (3,), (2,), 1),                    # 1-D
    ((1, 2, 5, 4, 6), (4, 2, 2, 3, 2), (1, 2, 1), (1, 0, 1), (2, 1, 1), 1),   # 3-D
]


def _torch_conv(d: int):
    return {1: TF.conv1d, 2: TF.conv2d, 3: TF.conv3d}[d]


CONV_PARAMS = [(c, np.float32) for c in CONV_CASES] + [(CONV_CASES[1], np.float64),
                                                       (CONV_CASES[4], np.float64)]


@pytest.mark.parametrize("case,dtype", CONV_PARAMS, ids=[
    f"conv{len(c[0]) - 2}d-{i}-{np.dtype(t).name}" for i, (c, t) in enumerate(CONV_PARAMS)])
def test_conv_forward_and_gradients_match_torch(case, dtype):
    """Eq. 9.8 forward, eq. 9.11 kernel gradient, eq. 9.13 input gradient vs torch autograd."""
    xs, ws, stride, pad, dil, groups = case
    x, w = rand(*xs, dtype=dtype), rand(*ws, dtype=dtype)
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)
    ty = _torch_conv(len(xs) - 2)(tx, tw, stride=stride, padding=pad, dilation=dil,
                                   groups=groups)
    gy = rand(*ty.shape, dtype=dtype)
    ty.backward(torch.tensor(gy))
    attrs = dict(stride=stride, padding=tuple(p for q in pad for p in (q, q)), dilation=dil,
                 groups=groups)
    (y,) = run_op("conv", [x, w], **attrs)
    close(y, ty.detach().numpy(), dtype)
    (dx,) = run_op("conv_input_grad", [w, gy], input_size=xs[2:], **attrs)
    close(dx, tx.grad.numpy(), dtype)
    (dw,) = run_op("conv_kernel_grad", [x, gy], kernel_size=ws[2:], **attrs)
    close(dw, tw.grad.numpy(), dtype)


def test_conv_asymmetric_padding_is_pad_then_conv():
    """Per-side padding ("same" with an even kernel) = torch's F.pad then a valid conv."""
    x, w = rand(1, 2, 6, 7), rand(3, 2, 2, 4)
    (y,) = run_op("conv", [x, w], stride=(1, 1), padding=(0, 1, 1, 2), dilation=(1, 1),
                  groups=1)
    want = TF.conv2d(TF.pad(torch.tensor(x), (1, 2, 0, 1)), torch.tensor(w))
    close(y, want.numpy())


MAX_CASES = [  # (x shape, kernel, stride, padding, dilation, ceil_mode)
    ((2, 3, 7, 9), (3, 3), (2, 2), (1, 1), (1, 1), False),
    ((1, 2, 8, 7), (2, 3), (3, 2), (1, 0), (2, 1), True),
    ((2, 2, 10), (3,), (2,), (1,), (1,), True),
    ((1, 2, 5, 6, 4), (2, 2, 2), (2, 1, 2), (0, 1, 1), (1, 1, 1), False),
]


@pytest.mark.parametrize("case", MAX_CASES, ids=[f"max{len(c[0]) - 2}d-{i}"
                                                  for i, c in enumerate(MAX_CASES)])
def test_max_pool_forward_and_backward_match_torch(case):
    shape, k, s, p, d, ceil = case
    x = rand(*shape)
    tx = torch.tensor(x, requires_grad=True)
    fn = {1: TF.max_pool1d, 2: TF.max_pool2d, 3: TF.max_pool3d}[len(shape) - 2]
    ty = fn(tx, k, s, p, d, ceil_mode=ceil)
    gy = rand(*ty.shape)
    ty.backward(torch.tensor(gy))
    attrs = dict(kernel_size=k, stride=s, padding=tuple(q for v in p for q in (v, v)),
                 dilation=d, ceil_mode=ceil)
    close(run_op("max_pool", [x], **attrs)[0], ty.detach().numpy())
    close(run_op("max_pool_grad", [x, gy], **attrs)[0], tx.grad.numpy())


def test_max_pool_ties_go_to_the_first_maximum():
    """Equal values in a window: torch sends the whole gradient to the first one."""
    x = np.ones((1, 1, 4, 4), np.float32)
    gy = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2) + 1
    attrs = dict(kernel_size=(2, 2), stride=(2, 2), padding=(0, 0, 0, 0), dilation=(1, 1))
    (dx,) = run_op("max_pool_grad", [x, gy], **attrs)
    tx = torch.tensor(x, requires_grad=True)
    TF.max_pool2d(tx, 2).backward(torch.tensor(gy))
    np.testing.assert_array_equal(dx, tx.grad.numpy())


AVG_CASES = [  # (x shape, kernel, stride, padding, ceil, count_include_pad, divisor_override)
    ((2, 3, 7, 6), (3, 3), (2, 2), (1, 1), False, True, None),
    ((1, 2, 7, 8), (3, 2), (2, 3), (1, 1), True, False, None),
    ((1, 2, 6, 5), (2, 2), (1, 2), (0, 1), True, True, 3),
    ((2, 2, 9), (4,), (3,), (2,), True, True, None),
]


@pytest.mark.parametrize("case", AVG_CASES, ids=[f"avg-{i}" for i in range(len(AVG_CASES))])
def test_avg_pool_forward_and_backward_match_torch(case):
    shape, k, s, p, ceil, cip, div = case
    x = rand(*shape)
    tx = torch.tensor(x, requires_grad=True)
    if len(shape) == 3:
        ty = TF.avg_pool1d(tx, k, s, p, ceil_mode=ceil, count_include_pad=cip)
    else:
        ty = TF.avg_pool2d(tx, k, s, p, ceil_mode=ceil, count_include_pad=cip,
                           divisor_override=div)
    gy = rand(*ty.shape)
    ty.backward(torch.tensor(gy))
    attrs = dict(kernel_size=k, stride=s, padding=tuple(q for v in p for q in (v, v)),
                 ceil_mode=ceil, count_include_pad=cip, divisor_override=div)
    close(run_op("avg_pool", [x], **attrs)[0], ty.detach().numpy())
    close(run_op("avg_pool_grad", [gy], input_size=shape[2:], **attrs)[0], tx.grad.numpy())


@pytest.mark.parametrize("shape,out", [((2, 3, 7, 10), (3, 4)), ((1, 2, 9), (4,)),
                                       ((1, 2, 5, 7, 3), (2, 3, 2))])
def test_adaptive_pools_match_torch(shape, out):
    """Fig. 9.11: a fixed number of regions whatever the input size."""
    d = len(shape) - 2
    x = rand(*shape)
    for kind in ("max", "avg"):
        tx = torch.tensor(x, requires_grad=True)
        fn = getattr(TF, f"adaptive_{kind}_pool{d}d")
        ty = fn(tx, out)
        ty = ty[0] if isinstance(ty, tuple) else ty
        gy = rand(*ty.shape)
        ty.backward(torch.tensor(gy))
        close(run_op(f"adaptive_{kind}_pool", [x], output_size=out)[0], ty.detach().numpy())
        if kind == "max":
            got = run_op("adaptive_max_pool_grad", [x, gy], output_size=out)[0]
        else:
            got = run_op("adaptive_avg_pool_grad", [gy], output_size=out, input_size=shape[2:])[0]
        close(got, tx.grad.numpy())


def test_lp_pool_composition_matches_torch():
    """Lp pooling (section 9.3) is (sum over the window of x^p)^(1/p): avg_pool of x^p times
    the window size, then the 1/p power; torch.nn.functional.lp_pool2d is the oracle."""
    x = np.abs(rand(1, 2, 6, 7)) + 0.1
    g = Graph("lp")
    v = g.add_input("x", TensorType.of(x))
    p = g.op("constant", value=np.float32(3.0))
    avg = g.op("avg_pool", g.op("pow", v, p), kernel_size=(2, 3), stride=(2, 2),
               padding=(0, 0, 0, 0))
    s = g.op("mul", avg, g.op("constant", value=np.float32(6.0)))
    g.set_outputs([g.op("pow", s, g.op("constant", value=np.float32(1 / 3)))])
    (got,) = backends.compile(g, "triton")(x)
    close(got, TF.lp_pool2d(torch.tensor(x), 3.0, (2, 3), (2, 2)).numpy())


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_matches_torch(training):
    """Eq. 8.34-8.36 with PyTorch's running averages (unbiased variance in the estimate)."""
    x = rand(4, 3, 5, 2) * 2 + 1
    gamma, beta = rand(3), rand(3)
    rm, rv = rand(3), np.abs(rand(3)) + 0.5
    y, nm, nv = run_op("batch_norm", [x, gamma, beta, rm, rv], training=training, eps=1e-3,
                       momentum=0.2)
    trm, trv = torch.tensor(rm), torch.tensor(rv)
    ty = TF.batch_norm(torch.tensor(x), trm, trv, torch.tensor(gamma), torch.tensor(beta),
                       training=training, momentum=0.2, eps=1e-3)
    close(y, ty.numpy())
    close(nm, trm.numpy())
    close(nv, trv.numpy())


def test_batch_norm_statistics_split_over_programs_match_torch(monkeypatch):
    """Many values per channel: partial sums over a (C, splits) grid, then one combine per
    channel (the running averages too), against F.batch_norm."""
    from irgraph.backends.triton.kernels import norm as nk
    monkeypatch.setattr(nk, "SPLIT_ABOVE", 16)
    monkeypatch.setattr(nk, "SPLIT_CHUNK", 16)
    x = rand(5, 3, 7) * 3 + 10            # an offset mean: the shifted sums keep precision
    gamma, beta, rm, rv = rand(3), rand(3), rand(3), np.abs(rand(3)) + 0.5
    y, nm, nv = run_op("batch_norm", [x, gamma, beta, rm, rv], training=True, eps=1e-5,
                       momentum=0.1)
    trm, trv = torch.tensor(rm), torch.tensor(rv)
    ty = TF.batch_norm(torch.tensor(x), trm, trv, torch.tensor(gamma), torch.tensor(beta),
                       training=True)
    close(y, ty.numpy())
    close(nm, trm.numpy())
    close(nv, trv.numpy())
