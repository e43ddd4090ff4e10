"""Grouped convolutions on the LLVM backend: the groups are a loop of the generated code, so
many groups compile to one body (the IR does not grow with their number) and every group
still computes its own slice (forward and both gradients against torch)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import irgraph.backends as backends
from irgraph import Graph, TensorType
from irgraph.passes.autodiff import vjp


def _conv_vjp(xs, ws, stride, padding, groups, dtype):
    g = Graph("conv")
    x = g.add_input("x", TensorType(xs, dtype))
    w = g.add_input("w", TensorType(ws, dtype))
    g.set_outputs(g.add_node("conv", [x, w], dict(stride=stride, padding=padding,
                                                  dilation=(1, 1), groups=groups)))
    return g, vjp(g)


# (x shape, w shape, stride, padding, threads, dtype): stride 1 takes the direct grid path
# (threads split the images), stride 2 im2col + GEMM (one image: threads split each GEMM;
# two images: threads split the images), a multiplier of 2 gives two channels per group.
CASES = [
    ((2, 64, 9, 8), (64, 1, 3, 3), (1, 1), (1, 1, 1, 1), 2, "float64"),
    ((1, 64, 9, 8), (64, 1, 3, 3), (2, 2), (1, 1, 1, 1), 2, "float32"),
    ((2, 64, 7, 6), (128, 1, 3, 3), (2, 1), (0, 1, 1, 0), 2, "float64"),
    ((3, 64, 6, 7), (128, 2, 3, 2), (1, 1), (0, 0, 0, 0), 1, "float64"),
]


@pytest.mark.parametrize("xs,ws,stride,padding,threads,dtype", CASES)
def test_many_groups_match_torch_forward_and_gradients(xs, ws, stride, padding, threads, dtype):
    groups = xs[1] // ws[1]
    rng = np.random.default_rng(sum(xs) + sum(ws))
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal(ws).astype(dtype)
    g, vg = _conv_vjp(xs, ws, stride, padding, groups, dtype)
    ct = rng.standard_normal(g.outputs[0].shape).astype(dtype)
    y, dx, dw = backends.compile(vg, "llvm", threads=threads, cache=False)(x, w, ct)
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)
    xp = torch.nn.functional.pad(tx, (padding[2], padding[3], padding[0], padding[1]))
    ty = torch.nn.functional.conv2d(xp, tw, stride=stride, groups=groups)
    ty.backward(torch.tensor(ct))
    tol = 1e-4 if dtype == "float32" else 1e-10
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=tol, atol=tol, err_msg="forward")
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=tol, atol=tol, err_msg="dx")
    np.testing.assert_allclose(dw, tw.grad.numpy(), rtol=tol, atol=tol, err_msg="dw")


@pytest.mark.parametrize("stride,padding", [((1, 1), (1, 1, 1, 1)), ((1, 1), (0, 0, 0, 0)),
                                            ((2, 2), (1, 1, 1, 1))])
def test_llvm_ir_size_does_not_grow_with_the_group_count(stride, padding):
    """Same per-group shape (2 channels in, 2 out, 3x3), 8 and 64 groups: forward and both
    gradients emit about the same IR (per-group code would make it ~8x longer)."""
    sizes = []
    for groups in (8, 64):
        _, vg = _conv_vjp((2, 2 * groups, 10, 9), (2 * groups, 2, 3, 3), stride, padding,
                          groups, "float32")
        sizes.append(len(backends.compile(vg, "llvm", threads=2, cache=False).llvm_ir()))
    assert sizes[1] < 1.05 * sizes[0], f"IR of 8 groups: {sizes[0]} chars, of 64: {sizes[1]}"
