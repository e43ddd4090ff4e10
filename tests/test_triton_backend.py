"""The Triton backend's executable: memory (numpy in -> copied to the device, torch tensors
used without a copy, numpy or torch out), in-place donated updates, argument validation
before any launch, compile-time errors for ops without a kernel, the kernel table and the
generated-source listing. Kernels run in Triton's interpreter on the CPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import irgraph.backends as backends
from irgraph.backends.triton import KERNELS, UnsupportedOpError
from irgraph.backends.triton.executable import schedule
from irgraph import Graph, TensorType
from irgraph.errors import RuntimeDataError


def small_graph() -> Graph:
    g = Graph("small")
    x = g.add_input("x", TensorType((2, 3)))
    w = g.add_param("w", TensorType((3, 4)))
    y = g.op("tanh", g.op("matmul", x, w), loc="model.py:7")
    g.set_outputs([y, g.op("sum", y, axis=(1,))])
    return g


X = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
W = np.linspace(-2, 1, 12, dtype=np.float32).reshape(3, 4)


def expected():
    y = np.tanh(X @ W)
    return y, y.sum(axis=1)


def on(exe, a: np.ndarray) -> torch.Tensor:
    """``a`` as a tensor on the executable's device (CPU under the interpreter)."""
    return torch.from_numpy(np.array(a)).to(exe.device)


def test_numpy_in_numpy_out():
    y, s = backends.compile(small_graph(), "triton")(X, W)
    assert isinstance(y, np.ndarray) and isinstance(s, np.ndarray)
    np.testing.assert_allclose(y, expected()[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s, expected()[1], rtol=1e-5, atol=1e-6)


def test_torch_in_torch_out_and_output_option():
    exe = backends.compile(small_graph(), "triton")
    y, s = exe(on(exe, X), on(exe, W))
    assert isinstance(y, torch.Tensor) and y.device == exe.device
    np.testing.assert_allclose(y.cpu().numpy(), expected()[0], rtol=1e-5, atol=1e-6)
    as_np = backends.compile(small_graph(), "triton", output="numpy")
    assert isinstance(as_np(on(as_np, X), W)[0], np.ndarray)
    as_torch = backends.compile(small_graph(), "triton", output="torch")
    assert isinstance(as_torch(X, W)[1], torch.Tensor)
    with pytest.raises(ValueError, match="output="):
        backends.compile(small_graph(), "triton", output="cupy")


def test_donated_update_is_written_into_the_callers_tensor_without_a_copy():
    """sgd_update's output is donated to p: the kernel writes p' straight into p's buffer."""
    g = Graph("step")
    grad, lr = g.add_input("g", TensorType((5,))), g.add_input("lr", TensorType(()))
    p = g.add_param("p", TensorType((5,)))
    g.set_outputs([g.op("sgd_update", p, grad, lr)])
    g.donations = {0: 2}
    exe = backends.compile(g, "triton")
    pt = on(exe, np.arange(5, dtype=np.float32))
    ptr = pt.data_ptr()
    (out,) = exe(on(exe, np.ones(5, np.float32)), on(exe, np.array(0.5, np.float32)), pt)
    assert out is pt and pt.data_ptr() == ptr
    np.testing.assert_allclose(pt.cpu().numpy(), np.arange(5) - 0.5)
    pn = np.arange(5, dtype=np.float32)                    # numpy: updated in place too
    exe(np.ones(5, np.float32), np.float32(2.0), pn)
    np.testing.assert_allclose(pn, np.arange(5) - 2.0)


def test_update_not_in_place_when_the_old_value_is_still_read():
    """Polyak averaging reads the OLD parameter after the update: no in-place write then."""
    g = Graph("step")
    grad, lr = g.add_input("g", TensorType((3,))), g.add_input("lr", TensorType(()))
    p, avg = g.add_param("p", TensorType((3,))), g.add_param("avg", TensorType((3,)))
    p2 = g.op("sgd_update", p, grad, lr)
    a2 = g.op("polyak_update", avg, p, lr)
    g.set_outputs([p2, a2])
    g.donations = {0: 2, 1: 3}
    args = [np.ones(3, np.float32), np.array(0.25, np.float32), np.full(3, 2, np.float32),
            np.zeros(3, np.float32)]
    want = backends.compile(g, "reference")(*[a.copy() for a in args])
    exe = backends.compile(g, "triton")
    got = exe(*[on(exe, a) for a in args])
    for w_, o in zip(want, got):
        np.testing.assert_allclose(o.cpu().numpy(), w_)


@pytest.mark.parametrize("bad,err,msg", [
    ((X[:, :2], W), ValueError, r"%x has shape \(2, 2\)"),
    ((X.astype(np.float64), W), TypeError, "%x has dtype float64"),
    ((torch.zeros(2, 3, dtype=torch.int32), W), TypeError, "%x has dtype int32"),
    ((torch.zeros(3, 2), W), ValueError, r"%x has shape \(3, 2\)"),
    ((X,), TypeError, "takes 2 arguments"),
    ((X, "w"), TypeError, "%w must be a numpy array"),
])
def test_bad_arguments_are_refused_before_any_launch(bad, err, msg):
    with pytest.raises(err, match=msg):
        backends.compile(small_graph(), "triton")(*bad)


def test_tensor_on_another_device_is_refused():
    exe = backends.compile(small_graph(), "triton", device="meta")
    with pytest.raises(ValueError, match="torch tensor on cpu"):
        exe(torch.from_numpy(X), W)


def test_op_without_kernel_is_a_compile_time_error_naming_it(monkeypatch):
    monkeypatch.delitem(KERNELS, "tanh")
    with pytest.raises(UnsupportedOpError, match=r"no Triton kernel for op 'tanh'[\s\S]*"
                                                 r"tanh\(%[0-9]+\)[\s\S]*model.py:7"):
        backends.compile(small_graph(), "triton")


def test_update_groups_are_scheduled_as_one_unit():
    """Two parameters' updates become ONE step even with a reader of the first update's
    output between them (it moves after the group)."""
    g = Graph("two")
    lr = g.add_input("lr", TensorType(()))
    g1, g2 = g.add_input("g1", TensorType((3,))), g.add_input("g2", TensorType((4,)))
    p1, p2 = g.add_param("p1", TensorType((3,))), g.add_param("p2", TensorType((4,)))
    n1 = g.op("sgd_update", p1, g1, lr)
    s = g.op("sum", n1)
    n2 = g.op("sgd_update", p2, g2, lr)
    g.set_outputs([s, n2])
    steps = [[n.op for n in unit] for unit in schedule(g)]
    assert steps == [["sgd_update", "sgd_update"], ["sum"]]
    args = [np.float32(0.1), np.ones(3, np.float32), np.ones(4, np.float32),
            np.arange(3, dtype=np.float32), np.arange(4, dtype=np.float32)]
    for w_, o in zip(backends.compile(g, "reference")(*args),
                     backends.compile(g, "triton")(*args)):
        np.testing.assert_allclose(o, w_, rtol=1e-6)


def test_source_lists_the_graph_and_its_kernels():
    text = backends.compile(small_graph(), "triton").source()
    assert "matmul" in text and "# kernels:" in text and "tanh x1" in text


def test_broadcasting_slicing_and_layout_kernels():
    """Negative-step slices, broadcasting against a transposed view, concat and reflect pad,
    all through strided-view kernels, checked against numpy."""
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    g = Graph("views")
    x = g.add_input("x", TensorType.of(a))
    rev = g.op("slice", x, starts=(1, 2, 3), stops=(-3, -4, -5), steps=(-1, -2, -1))
    t = g.op("transpose", x, perm=(2, 0, 1))
    b = g.op("add", g.op("reshape", t, shape=(4, 6)), g.op("constant",
                                                            value=np.arange(6, dtype=np.float32)))
    c = g.op("concat", x, x, axis=1)
    p = g.op("pad", x, pads=(0, 0, 1, 2, 2, 1), mode="reflect")
    g.set_outputs([rev, b, c, p])
    got = backends.compile(g, "triton")(a)
    want = [a[::-1, ::-2, ::-1], a.transpose(2, 0, 1).reshape(4, 6) + np.arange(6),
            np.concatenate([a, a], 1), np.pad(a, [(0, 0), (1, 2), (2, 1)], mode="reflect")]
    for w_, o in zip(want, got):
        np.testing.assert_array_equal(o, w_)


def test_too_large_tensor_is_a_compile_time_error():
    g = Graph("big")
    x = g.add_input("x", TensorType((1 << 16, 1 << 16)))
    g.set_outputs([g.op("neg", x)])
    with pytest.raises(UnsupportedOpError, match="2\\*\\*31"):
        backends.compile(g, "triton")


def test_allow_tf32_option_reaches_matmul_and_conv():
    """TF32 rounds inputs to 10 mantissa bits (cuDNN's default); results stay within its
    error bound (the interpreter computes in full precision)."""
    g = Graph("tf32")
    x, w = g.add_input("x", TensorType((1, 2, 5, 5))), g.add_input("w", TensorType((3, 2, 3, 3)))
    y = g.op("conv", x, w, stride=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1), groups=1)
    g.set_outputs([g.op("matmul", g.op("reshape", y, shape=(3, 25)),
                        g.op("reshape", y, shape=(25, 3)))])
    exe = backends.compile(g, "triton", allow_tf32=True)
    assert exe.ctx.input_precision == "tf32"
    a = [np.linspace(-1, 1, 50, dtype=np.float32).reshape(1, 2, 5, 5),
         np.linspace(1, -1, 54, dtype=np.float32).reshape(3, 2, 3, 3)]
    np.testing.assert_allclose(exe(*a)[0], backends.compile(g, "reference")(*a)[0],
                               rtol=1e-2, atol=1e-2)


def test_unknown_option_is_refused():
    with pytest.raises(TypeError, match="options.*got \\['fast'\\]"):
        backends.compile(small_graph(), "triton", fast=True)


def test_nll_target_out_of_range_is_refused_before_launch():
    """As the reference's error: a class index outside [0, C) names the argument and node
    (checked on the host for numpy targets; ignore_index is allowed)."""
    g = Graph("nll")
    lp = g.add_input("logp", TensorType((3, 4)))
    t = g.add_input("t", TensorType((3,), "int64"))
    g.set_outputs([g.op("nll_loss", lp, t, ignore_index=-1)])
    exe = backends.compile(g, "triton")
    logp = np.log(np.full((3, 4), 0.25, np.float32))
    np.testing.assert_allclose(exe(logp, np.array([0, -1, 3]))[0], np.log(4), rtol=1e-6)
    with pytest.raises(RuntimeDataError, match=r"nll_loss\(%logp, %t\)[\s\S]*outside \[0, 4\)"):
        exe(logp, np.array([0, 4, 1]))


@pytest.mark.parametrize("op", ["sum", "mean", "max", "min"])
def test_long_rows_reduce_in_two_stages(op):
    """Few long rows are split over programs (partials, then a pass over them): same result
    as numpy, a NaN in one chunk still wins for max/min."""
    x = RNG_BIG.standard_normal((2, 40000)).astype(np.float32)
    if op in ("max", "min"):
        x[1, 23456] = np.nan
    g = Graph("long")
    v = g.add_input("x", TensorType.of(x))
    g.set_outputs([g.op(op, v, axis=(1,)), g.op(op, v)])
    want = backends.compile(g, "reference")(x)
    for w_, o in zip(want, backends.compile(g, "triton")(x)):
        np.testing.assert_allclose(o, w_, rtol=1e-5, atol=1e-5, equal_nan=True)


RNG_BIG = np.random.default_rng(3)
