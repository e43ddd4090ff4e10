"""Convolution gradients of few channels on the LLVM backend: the kernel gradient vectorized
over the output channels (conv_direct.py) and the input gradient, against the reference
backend and torch, on one and two threads inside guarded buffers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import irgraph.backends as backends
from irgraph import Graph, TensorType
from irgraph.backends.llvm import jit
from irgraph.backends.llvm.conv_direct import Direct
from irgraph.passes.autodiff import vjp
from tests.helpers import run_guarded


def _conv_vjp(xs, ws, dtype, padding, dilation, groups):
    g = Graph("conv")
    x = g.add_input("x", TensorType(xs, dtype))
    w = g.add_input("w", TensorType(ws, dtype))
    d = len(xs) - 2
    g.set_outputs([g.op("conv", x, w, stride=(1,) * d, padding=padding, dilation=dilation,
                        groups=groups)])
    return vjp(g)


# (x shape, w shape, dtype, padding, dilation, groups): output channels per group a multiple
# of 8 (the vector width of float32 on AVX2, float64 on AVX-512) or of 16, but one (LeNet's
# first layer: 6, the grid's dot products)
CASES = [
    ((8, 6, 14, 14), (16, 6, 5, 5), "float32", (0, 0, 0, 0), (1, 1), 1),     # LeNet's second
    ((3, 6, 9, 11), (16, 6, 3, 3), "float32", (1, 2, 0, 1), (1, 1), 1),      # padded, odd
    ((5, 4, 10, 9), (32, 2, 3, 2), "float32", (1, 1, 1, 1), (2, 1), 2),      # groups, dilated
    ((4, 3, 13), (16, 3, 4), "float64", (2, 1), (1,), 1),                    # 1-D, float64
    ((2, 2, 5, 6, 7), (8, 2, 2, 3, 2), "float64", (0, 1, 1, 0, 0, 0), (1, 1, 1), 1),  # 3-D
    ((3, 1, 12, 12), (48, 1, 5, 5), "float32", (2, 2, 2, 2), (1, 1), 1),     # 3 vectors
    ((4, 1, 12, 11), (6, 1, 5, 5), "float32", (2, 2, 2, 2), (1, 1), 1),      # dot products
    ((3, 2, 10, 9), (5, 2, 3, 3), "float32", (1, 1, 1, 1), (1, 1), 1),       # ... thin block
    ((3, 4, 9, 9), (16, 4, 3, 3), "float32", (0, 0, 0, 0), (1, 1), 1),       # grid tails:
    ((2, 3, 12, 12), (16, 3, 3, 3), "float64", (0, 0, 0, 0), (1, 1), 1),     # whole, half
]


@pytest.mark.parametrize("xs,ws,dtype,padding,dilation,groups", CASES)
@pytest.mark.parametrize("threads", [1, 2])
def test_few_channel_gradients_match_the_reference(xs, ws, dtype, padding, dilation, groups,
                                                   threads):
    vg = _conv_vjp(xs, ws, dtype, padding, dilation, groups)
    rng = np.random.default_rng(sum(xs) + threads)
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal(ws).astype(dtype)
    ct = rng.standard_normal(vg.inputs[2].type.shape).astype(dtype)
    want = backends.compile(vg, "reference")(x, w, ct)
    got = run_guarded(backends.compile(vg, "llvm", threads=threads), [x, w, ct])
    tol = 2e-4 if dtype == "float32" else 1e-10
    for name, a, e in zip(("y", "dx", "dw"), got, want):
        np.testing.assert_allclose(a, e, rtol=tol, atol=tol, err_msg=name)


def test_lenet_kernel_gradient_takes_the_channel_vectors_and_matches_torch():
    """The 6 -> 16 5x5 layer's kernel gradient runs vectorized over its 16 output channels
    (every CPU with AVX2 or AVX-512: 16 is a multiple of the vector width) and equals
    torch's weight gradient."""
    vg = _conv_vjp((8, 6, 14, 14), (16, 6, 5, 5), "float32", (0, 0, 0, 0), (1, 1), 1)
    features = jit.host()[2]
    if "+avx2" in features or "+avx512f" in features:
        dc = Direct(6, 16, (14, 14), (0, 0, 0, 0), (5, 5), (1, 1), "float32", features)
        assert dc.channel_lanes() is not None
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, 6, 14, 14)).astype(np.float32)
    w = rng.standard_normal((16, 6, 5, 5)).astype(np.float32)
    ct = rng.standard_normal((8, 16, 10, 10)).astype(np.float32)
    _, dx, dw = backends.compile(vg, "llvm", threads=1)(x, w, ct)
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    torch.nn.functional.conv2d(tx, tw).backward(torch.tensor(ct))
    np.testing.assert_allclose(dw, tw.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-4, atol=1e-4)
