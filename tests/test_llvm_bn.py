"""Batch norm training on the LLVM backend: its backward (and the ReLU gradient feeding it)
as one per-channel ``rows`` region (passes/layer_regions.py ``fuse_norm_grad``), against
the reference backend and torch.nn.functional.batch_norm's values and gradients."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import irgraph.backends as backends
import irgraph.frontend as fe
from irgraph.frontend import F
from irgraph.passes.autodiff import grad
from irgraph.passes.layer_regions import row_levels
from tests.helpers import run_guarded


def _step(shape, dtype, relu):
    c = shape[1]

    def fn(x, gamma, beta, ct):
        y = F.batch_norm(x, None, None, gamma, beta, training=True)
        return F.sum(F.mul(F.relu(y) if relu else y, ct))
    specs = [fe.TensorSpec(shape, dtype), fe.TensorSpec((c,), dtype),
             fe.TensorSpec((c,), dtype), fe.TensorSpec(shape, dtype)]
    g = fe.trace(fn, *specs)
    return grad(g, wrt=["x", "gamma", "beta"])


def _args(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = (rng.standard_normal(shape) * 3 + 1.5).astype(dtype)
    return {"x": x, "gamma": rng.standard_normal(c).astype(dtype),
            "beta": rng.standard_normal(c).astype(dtype),
            "ct": rng.standard_normal(shape).astype(dtype)}


def _torch(a, relu):
    x, gm, bt = (torch.tensor(a[k], requires_grad=True) for k in ("x", "gamma", "beta"))
    c = x.shape[1]
    y = torch.nn.functional.batch_norm(x, torch.zeros(c, dtype=x.dtype),
                                       torch.ones(c, dtype=x.dtype), gm, bt, training=True)
    y = torch.relu(y) if relu else y
    (y * torch.tensor(a["ct"])).sum().backward()
    return [x.grad.numpy(), gm.grad.numpy(), bt.grad.numpy()]


SHAPES = [(5, 1, 7, 9), (3, 6, 5, 11), (4, 16, 3, 3), (6, 6, 13), (2, 3, 3, 4, 5)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batch_norm_gradients_match_the_reference_and_torch(shape, dtype):
    relu = shape[1] != 16
    dg = _step(shape, dtype, relu)
    a = _args(shape, dtype, sum(shape))
    args = [a[v.name] for v in dg.arguments]
    want = backends.compile(dg, "reference")(*args)
    tol = dict(rtol=2e-4, atol=2e-4) if dtype == "float32" else dict(rtol=1e-9, atol=1e-9)
    for threads in (1, 2):
        exe = backends.compile(dg, "llvm", threads=threads)
        got = run_guarded(exe, args)
        for name, x, e in zip(("dx", "dgamma", "dbeta"), got, want):
            np.testing.assert_allclose(x, e, err_msg=f"{name}, {threads} threads", **tol)
    t = _torch(a, relu)
    for name, x, e in zip(("dx", "dgamma", "dbeta"), got, t):
        np.testing.assert_allclose(x, e, err_msg=f"{name} vs torch", **tol)


@pytest.mark.parametrize("shape", [(3, 6, 5, 11), (4, 16, 3, 3), (6, 6, 13)])
def test_batch_norm_backward_is_one_region(shape):
    """Every full-size step of the backward (the statistics recomputed, the ReLU mask, dx)
    is inside one per-channel region of two levels of sums (the mean, dgamma's and dbeta's
    sums flattened beside it; the variance), then the sweep storing dx (the LLVM lowering
    sums the variance in the mean's sweep: two sweeps in all)."""
    dg = _step(shape, "float32", True)
    exe = backends.compile(dg, "llvm", threads=1)
    rows = [n for n in exe.graph.nodes if n.op == "fused" and n.attrs["kind"] == "rows"]
    assert len(rows) == 1
    body = rows[0].attrs["body"]
    assert max(row_levels(body).values()) == 2
    outside = [n.op for n in exe.graph.nodes if n.op not in ("fused", "batch_norm")
               and any(v.type.shape == shape for v in n.outputs)]
    # the loss's cotangent broadcast to x's shape (a scalar, not one value per channel)
    # feeds the region; no other full-size step runs outside it
    assert outside == ["broadcast_to"], outside


def test_short_channel_stretches_stay_node_by_node():
    """A batch norm of (N, C) features (a stretch of one element per channel) keeps its
    backward node by node, and still matches the reference."""
    shape = (9, 6)
    dg = _step(shape, "float32", True)
    exe = backends.compile(dg, "llvm", threads=1)
    assert not any(n.op == "fused" and n.attrs["kind"] == "rows" for n in exe.graph.nodes)
    a = _args(shape, "float32", 5)
    args = [a[v.name] for v in dg.arguments]
    want = backends.compile(dg, "reference")(*args)
    for x, e in zip(exe(*args), want):
        np.testing.assert_allclose(x, e, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("shape", [(5, 1, 7, 9), (3, 6, 5, 11), (4, 16, 3, 3)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batch_norm_forward_statistics_survive_a_large_offset(shape, dtype):
    """The training forward's one-pass moments (shifted by each channel's first element)
    on data of mean 1000 and deviation 0.01 per channel: y and the running statistics equal
    the reference's (float64 statistics, two passes) and, in float64, torch's (whose
    float32 statistics are themselves off by float32's spacing at 1000)."""
    from irgraph import Graph, TensorType
    c = shape[1]
    rng = np.random.default_rng(c)
    x = (1000 + np.arange(c).reshape(1, c, *[1] * (len(shape) - 2))
         + 0.01 * rng.standard_normal(shape)).astype(dtype)
    params = [rng.standard_normal(c).astype(dtype) for _ in range(3)] + [
        (1 + rng.random(c)).astype(dtype)]
    g = Graph("bn")
    xv = g.add_input("x", TensorType(shape, dtype))
    ps = [g.add_input(n, TensorType((c,), dtype)) for n in ("g", "b", "rm", "rv")]
    g.set_outputs(list(g.op("batch_norm", xv, *ps, training=True, eps=1e-5, momentum=0.1)))
    got = backends.compile(g, "llvm", threads=2)(x, *params)
    ref = backends.compile(g, "reference")(x, *params)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == "float32" else dict(rtol=1e-9, atol=1e-9)
    for name, a, e in zip(("y", "running mean", "running var"), got, ref):
        np.testing.assert_allclose(a, e, err_msg=name, **tol)
    if dtype == "float64":
        trm, trv = torch.tensor(params[2]), torch.tensor(params[3])
        want = torch.nn.functional.batch_norm(torch.tensor(x), trm, trv,
                                              torch.tensor(params[0]),
                                              torch.tensor(params[1]), training=True)
        for a, e in zip(got, (want, trm, trv)):
            np.testing.assert_allclose(a, e.numpy(), **tol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batch_norm_backward_variance_survives_a_large_offset(dtype):
    """The backward region sums the variance in the mean's sweep (shifted by each channel's
    first element): on data of mean 1000 and deviation 0.01 its gradients stay as close to
    torch's in float64 (on the same inputs) as float32 rounding of x - mean allows (a
    float32 x near 1000 carries the deviation in about 8 bits), and in float64 within
    1e-8 of the largest."""
    shape = (4, 6, 7, 9)
    dg = _step(shape, dtype, True)
    a = _args(shape, dtype, 11)
    a["x"] = (1000 + 0.01 * a["x"]).astype(dtype)
    args = [a[v.name] for v in dg.arguments]
    got = backends.compile(dg, "llvm", threads=1)(*args)
    exact = _torch({k: v.astype(np.float64) for k, v in a.items()}, True)
    bound = 5e-3 if dtype == "float32" else 1e-8
    for name, x, e in zip(("dx", "dgamma", "dbeta"), got, exact):
        err = np.abs(x - e).max() / np.abs(e).max()
        assert err < bound, (name, err)
