"""The core ops' VJP rules against torch.autograd, including the non-smooth points where the
registry-wide finite-difference test cannot decide (ties, relu/abs at 0, pow at 0), and
against numpy scatters (slices with negative steps)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

from irgraph import Graph, TensorType
from irgraph.interpreter import interpret
from irgraph.passes.autodiff import vjp


def our_vjp(op: str, inputs: list[np.ndarray], ct: np.ndarray, wrt=None, **attrs):
    """Input cotangents of one ``op`` node for output cotangent ``ct``."""
    g = Graph(op)
    args = [g.add_input(f"x{i}", TensorType.of(a)) for i, a in enumerate(inputs)]
    g.set_outputs([g.op(op, *args, **attrs)])
    wrt = [i for i, a in enumerate(inputs) if a.dtype.kind == "f"] if wrt is None else wrt
    vg = vjp(g, wrt=[f"x{i}" for i in wrt])
    return interpret(vg, list(inputs) + [ct])[1:]


def torch_vjp(fn, inputs: list[np.ndarray], ct: np.ndarray, wrt=None) -> list[np.ndarray]:
    wrt = [i for i, a in enumerate(inputs) if a.dtype.kind == "f"] if wrt is None else wrt
    ts = [torch.tensor(a, requires_grad=i in wrt) for i, a in enumerate(inputs)]
    out = fn(*ts)
    grads = torch.autograd.grad(out, [ts[i] for i in wrt], torch.tensor(ct))
    return [g.numpy() for g in grads]


def check(op, fn, inputs, ct=None, wrt=None, rtol=1e-10, atol=1e-12, **attrs):
    if ct is None:
        shape = fn(*[torch.tensor(a) for a in inputs]).shape
        ct = np.random.default_rng(7).standard_normal(tuple(shape))
    ours = our_vjp(op, inputs, ct, wrt, **attrs)
    ref = torch_vjp(fn, inputs, ct, wrt)
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=op)


def f64(*xs):
    return np.array(xs, np.float64)


# ---------------------------------------------------------------- ties and kinks
def test_relu_gradient_at_zero_is_zero_as_torch():
    check("relu", torch.relu, [f64(-1.0, 0.0, 0.0, 2.0)], ct=f64(1, 1, 1, 1))


def test_abs_gradient_at_zero_is_zero_as_torch():
    check("abs", torch.abs, [f64(-1.5, 0.0, 2.0)], ct=f64(1, 1, 1))


@pytest.mark.parametrize("op", ["maximum", "minimum"])
def test_maximum_minimum_ties_split_evenly_as_torch(op):
    a = f64(1.0, 2.0, 3.0, 2.0)
    b = f64(1.0, 0.0, 3.0, 5.0)
    check(op, getattr(torch, op), [a, b])
    # broadcast with ties: the (1,) operand collects half of each tied position
    check(op, getattr(torch, op), [np.array([[2.0, 1.0], [2.0, 3.0]]), f64(2.0)])


@pytest.mark.parametrize("op,tfn", [("max", torch.amax), ("min", torch.amin)])
def test_max_min_reduction_ties_share_gradient_as_torch_amax(op, tfn):
    x = np.array([[3.0, 1.0, 3.0, 3.0], [0.0, 2.0, -1.0, 2.0]])
    check(op, lambda t: tfn(t, dim=1), [x], axis=(1,))
    check(op, lambda t: tfn(t, dim=1, keepdim=True), [x], axis=(-1,), keepdims=True)
    check(op, lambda t: tfn(t), [x], ct=np.array(2.0))      # whole tensor: 3 tied maxima
    check(op, lambda t: tfn(t, dim=0), [x], axis=(0,))


def test_pow_at_zero_base_and_zero_exponent_as_torch():
    a = f64(0.0, 0.0, 2.0, 1.5, -2.0)
    b = f64(2.0, 0.0, 0.0, 0.5, 3.0)
    ct = f64(1, 1, 1, 1, 1)
    ours = our_vjp("pow", [a, b], ct, wrt=[0])
    np.testing.assert_allclose(ours[0], torch_vjp(torch.pow, [a, b], ct, wrt=[0])[0])
    # d/db with a > 0 or a == 0 (negative bases have no real log)
    ours = our_vjp("pow", [a[:4], b[:4]], ct[:4])
    for x, y in zip(ours, torch_vjp(torch.pow, [a[:4], b[:4]], ct[:4])):
        np.testing.assert_allclose(x, y)


# ---------------------------------------------------------------- smooth ops vs torch
@pytest.mark.parametrize("op,tfn", [
    ("exp", torch.exp), ("tanh", torch.tanh), ("sigmoid", torch.sigmoid), ("neg", torch.neg),
    ("square", torch.square), ("log", torch.log), ("sqrt", torch.sqrt), ("rsqrt", torch.rsqrt)])
def test_unary_as_torch(op, tfn):
    x = np.random.default_rng(1).uniform(0.3, 2.0, (3, 4))
    check(op, tfn, [x])


@pytest.mark.parametrize("op,tfn", [("add", torch.add), ("sub", torch.sub), ("mul", torch.mul),
                                    ("div", torch.div), ("pow", torch.pow)])
def test_binary_broadcasting_as_torch(op, tfn):
    rng = np.random.default_rng(2)
    a, b = rng.uniform(0.5, 2.0, (2, 1, 4)), rng.uniform(0.5, 2.0, (3, 1))
    check(op, tfn, [a, b])


def test_where_broadcasting_as_torch():
    rng = np.random.default_rng(3)
    cond = rng.random((3, 4)) < 0.5
    x, y = rng.standard_normal((1, 4)), rng.standard_normal((3, 1))
    check("where", torch.where, [cond, x, y], wrt=[1, 2])


def test_cast_gradient_returns_to_the_input_dtype():
    x = np.random.default_rng(4).standard_normal((2, 3)).astype(np.float32)
    (gx,) = our_vjp("cast", [x], np.ones((2, 3)), dtype="float64")
    assert gx.dtype == np.float32
    np.testing.assert_array_equal(gx, np.ones((2, 3), np.float32))


@pytest.mark.parametrize("op,tfn,attrs", [
    ("sum", lambda t: t.sum(dim=(0, 2)), {"axis": (0, -1)}),
    ("sum", lambda t: t.sum(dim=1, keepdim=True), {"axis": (1,), "keepdims": True}),
    ("mean", lambda t: t.mean(), {}),
    ("mean", lambda t: t.mean(dim=(1,)), {"axis": (-2,)}),
])
def test_sum_mean_as_torch(op, tfn, attrs):
    check(op, tfn, [np.random.default_rng(5).standard_normal((2, 3, 4))], **attrs)


@pytest.mark.parametrize("sa,sb", [((3, 4), (4, 5)), ((2, 3, 4), (4, 2)), ((2, 1, 3, 4), (3, 4, 2)),
                                   ((4,), (4, 3)), ((2, 3, 4), (4,)), ((5,), (5,)),
                                   ((4,), (2, 4, 3)), ((3, 4), (2, 4, 5))])
def test_matmul_batched_broadcast_and_1d_as_torch(sa, sb):
    rng = np.random.default_rng(6)
    check("matmul", torch.matmul, [rng.standard_normal(sa), rng.standard_normal(sb)])


def test_shape_ops_as_torch():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 4))
    check("reshape", lambda t: t.reshape(4, 6), [x], shape=(4, 6))
    check("transpose", lambda t: t.permute(2, 0, 1), [x], perm=(2, 0, 1))
    check("broadcast_to", lambda t: t.expand(5, 2, 3, 4), [x[:, :1]], shape=(5, 2, 3, 4))
    y, z = rng.standard_normal((2, 1, 4)), rng.standard_normal((2, 5, 4))
    check("concat", lambda *ts: torch.cat(ts, dim=-2), [x, y, z], axis=-2)


@pytest.mark.parametrize("starts,stops,steps", [
    ((1, 0), (4, 6), (1, 2)), ((4, -1), (-100, 0), (-1, -2)), ((-3, 5), (100, -7), (2, -3)),
    ((0, 0), (5, 6), (1, 1)), ((3, 1), (0, 2), (-2, 1))])
def test_slice_vjp_scatters_back_as_numpy(starts, stops, steps):
    """Including negative steps (which torch cannot slice): the VJP of x[s] is a scatter."""
    x = np.random.default_rng(9).standard_normal((5, 6))
    index = tuple(slice(b, e, s) for b, e, s in zip(starts, stops, steps))
    ct = np.random.default_rng(10).standard_normal(x[index].shape)
    expect = np.zeros_like(x)
    expect[index] += ct
    (got,) = our_vjp("slice", [x], ct, starts=starts, stops=stops, steps=steps)
    np.testing.assert_array_equal(got, expect)


@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate", "circular"])
def test_pad_all_modes_as_torch(mode):
    x = np.random.default_rng(11).standard_normal((2, 3, 4, 5))
    tpad = (2, 1, 3, 2)      # torch: last dim (2, 1), then dim -2 (3, 2)
    ours = (0, 0, 0, 0, 3, 2, 2, 1)
    kw = {"value": 0.5} if mode == "constant" else {}
    check("pad", lambda t: TF.pad(t, tpad, mode=mode, **kw), [x], pads=ours, mode=mode, **kw)


def test_pad_reflect_and_circular_edge_widths_as_torch():
    x = np.random.default_rng(12).standard_normal((1, 2, 4))
    check("pad", lambda t: TF.pad(t, (3, 3), mode="reflect"), [x], pads=(0, 0, 0, 0, 3, 3),
          mode="reflect")
    check("pad", lambda t: TF.pad(t, (4, 2), mode="circular"), [x], pads=(0, 0, 0, 0, 4, 2),
          mode="circular")


@pytest.mark.parametrize("op,tfn", [("softmax", torch.softmax), ("log_softmax", torch.log_softmax)])
@pytest.mark.parametrize("axis", [0, -1])
def test_softmax_as_torch(op, tfn, axis):
    x = np.random.default_rng(13).standard_normal((3, 5))
    check(op, lambda t: tfn(t, dim=axis), [x], axis=axis)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ignore_index", [-100, 1])
def test_nll_loss_as_torch(reduction, ignore_index):
    rng = np.random.default_rng(14)
    logp = torch.log_softmax(torch.tensor(rng.standard_normal((4, 3, 2))), 1).numpy()
    target = np.array([[0, 1], [2, ignore_index], [1, 1], [0, 2]])
    check("nll_loss", lambda lp, t: TF.nll_loss(lp, t, reduction=reduction,
                                                ignore_index=ignore_index),
          [logp, target], wrt=[0], reduction=reduction, ignore_index=ignore_index)


def test_cross_entropy_gradient_is_softmax_minus_one_hot_eq_10_18():
    """Eq. 10.18: d L / d o_i = softmax(o)_i - 1_{i=y} for L = -log softmax(o)_y."""
    o = np.random.default_rng(15).standard_normal((3, 4))
    y = np.array([2, 0, 3])
    g = Graph("ce")
    ov, yv = g.add_input("o", TensorType.of(o)), g.add_input("y", TensorType.of(y))
    g.set_outputs([g.op("nll_loss", g.op("log_softmax", ov, axis=1), yv, reduction="sum")])
    from irgraph.passes.autodiff import grad
    (got,) = interpret(grad(g, wrt=["o"]), [o, y])
    p = np.exp(o) / np.exp(o).sum(1, keepdims=True)
    np.testing.assert_allclose(got, p - np.eye(4)[y], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_loss_as_torch(reduction):
    rng = np.random.default_rng(16)
    x, y = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    check("mse_loss", lambda a, b: TF.mse_loss(a, b, reduction=reduction), [x, y],
          reduction=reduction)
