"""Shared helpers of the convolution, pooling and batch-norm tests: run a traced function and
its gradients through our autodiff, and the same function through torch.autograd."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

import irgraph.frontend as fe
from irgraph.frontend import F
from irgraph.interpreter import interpret
from irgraph.passes.autodiff import grad


def ours(fn: Callable, arrays: Sequence[np.ndarray], ct: np.ndarray | None = None,
         seed: int = 0):
    """(fn(*arrays), gradients of <ct, fn(*arrays)> with respect to every array), traced
    and differentiated by irgraph, run on the reference interpreter."""
    specs = [fe.TensorSpec(a.shape, a.dtype.name) for a in arrays]
    g = fe.trace(lambda *ts: fn(*ts), *specs)
    y = interpret(g, list(arrays))[0]
    if ct is None:
        ct = np.random.default_rng(seed).standard_normal(y.shape).astype(y.dtype)
    loss = fe.trace(lambda *ts: F.sum(F.mul(fn(*ts[:-1]), ts[-1])), *specs,
                    fe.TensorSpec(ct.shape, ct.dtype.name))
    dg = grad(loss, wrt=[f"arg{i}" for i in range(len(arrays))])
    return y, interpret(dg, list(arrays) + [ct]), ct


def torchs(fn: Callable, arrays: Sequence[np.ndarray], ct: np.ndarray):
    """(fn(*tensors), gradients of <ct, fn> with respect to every array) by torch.autograd."""
    ts = [torch.tensor(a, requires_grad=True) for a in arrays]
    y = fn(*ts)
    y.backward(torch.tensor(ct))
    return y.detach().numpy(), [t.grad.numpy() if t.grad is not None else np.zeros_like(a)
                                for t, a in zip(ts, arrays)]


def compare(fn, tfn, arrays, rtol=1e-9, atol=1e-10, seed=0) -> None:
    """Forward and every gradient of ``fn`` (ours) against ``tfn`` (torch)."""
    y, gs, ct = ours(fn, arrays, seed=seed)
    ty, tgs = torchs(tfn, arrays, ct)
    assert y.shape == ty.shape, f"shape {y.shape} vs torch {ty.shape}"
    np.testing.assert_allclose(y, ty, rtol=rtol, atol=atol, err_msg="forward")
    for i, (a, b) in enumerate(zip(gs, tgs)):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=f"gradient of input {i}")


def rand(*shape, seed=0, dtype=np.float64) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def forward(fn: Callable, *arrays: np.ndarray) -> np.ndarray:
    """fn(*arrays) traced and run on the reference interpreter (no gradients)."""
    g = fe.trace(lambda *ts: fn(*ts), *[fe.TensorSpec(a.shape, a.dtype.name) for a in arrays])
    return interpret(g, list(arrays))[0]
