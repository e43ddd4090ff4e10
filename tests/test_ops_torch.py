"""Each core op (irgraph/ops/core.py), run by the reference backend, against PyTorch.

Every sample of tests/samples/core.py is compared with the torch function a PyTorch user
would call; extra cases pin the rules users rely on (argmax ties, negative-step slicing,
ignore_index, eq. 10.11-10.14 for the cross-entropy of a softmax output).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import irgraph.backends as backends
import irgraph.frontend as fe
from irgraph.frontend import F
from irgraph import Graph, TensorType
from tests.samples.core import SAMPLES


def run_op(op: str, inputs, **attrs) -> np.ndarray:
    g = Graph(op)
    xs = [g.add_input(f"x{i}", TensorType.of(a)) for i, a in enumerate(inputs)]
    g.set_outputs(g.add_node(op, xs, attrs))
    (out,) = backends.compile(g, "reference")(*[np.asarray(a) for a in inputs])
    return out


def T(a) -> torch.Tensor:
    return torch.from_numpy(np.array(a))


def _dims(x: torch.Tensor, axis):
    return tuple(range(x.ndim)) if axis is None else tuple(axis)


def _reduce(fn):
    def f(x, axis=None, keepdims=False):
        if x.ndim == 0:
            return fn(x, ())
        return fn(x, _dims(x, axis), keepdims)
    return f


def _torch_sum(x, dims, keepdim=False):
    return torch.sum(x, dim=dims, keepdim=keepdim, dtype=x.dtype) if dims else x


def _torch_mean(x, dims, keepdim=False):
    return torch.mean(x, dim=dims, keepdim=keepdim) if dims else x


def _torch_div(x, y):
    if x.dtype.is_floating_point:
        return torch.div(x, y)
    return torch.div(x, y, rounding_mode="floor")


def _torch_slice(x, starts, stops, steps):
    """Python slicing with torch.index_select (torch has no negative steps)."""
    for ax, (b, e, s) in enumerate(zip(starts, stops, steps)):
        idx = torch.tensor(list(range(*slice(b, e, s).indices(x.shape[ax]))), dtype=torch.long)
        x = torch.index_select(x, ax, idx)
    return x


def _torch_pad(x, pads, value=0.0, mode="constant"):
    """Our (before_0, after_0, ...) per axis -> torch's pairs from the last axis."""
    flat = []
    for ax in reversed(range(x.ndim)):
        flat += [pads[2 * ax], pads[2 * ax + 1]]
    if mode == "constant":
        return TF.pad(x, flat, mode="constant", value=value)
    # torch's reflect/replicate/circular take a leading batch/channel dimension
    return TF.pad(x[None], flat, mode=mode)[0]


_DT = {"float32": torch.float32, "float64": torch.float64, "int32": torch.int32,
       "int64": torch.int64, "bool": torch.bool}

TORCH = {
    "constant": lambda value: T(value),
    "full": lambda shape, value, dtype="float32": torch.full(shape, value, dtype=_DT[dtype]),
    "iota": lambda shape, axis, dtype="int64": torch.arange(shape[axis], dtype=_DT[dtype]).reshape(
        [shape[axis] if i == axis else 1 for i in range(len(shape))]).expand(shape),
    "neg": torch.neg, "exp": torch.exp, "log": torch.log, "sqrt": torch.sqrt,
    "rsqrt": torch.rsqrt, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu,
    "abs": torch.abs, "sign": torch.sign, "square": torch.square, "erf": torch.erf,
    "sin": torch.sin, "cos": torch.cos,
    "cast": lambda x, dtype: x.to(_DT[dtype]),
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": _torch_div, "pow": torch.pow,
    "fmod": torch.fmod,
    "maximum": torch.maximum, "minimum": torch.minimum,
    "eq": torch.eq, "ne": torch.ne, "lt": torch.lt, "le": torch.le, "gt": torch.gt,
    "ge": torch.ge, "logical_and": torch.logical_and, "logical_or": torch.logical_or,
    "where": torch.where,
    "sum": _reduce(_torch_sum), "mean": _reduce(_torch_mean),
    "max": _reduce(lambda x, d, k=False: torch.amax(x, dim=d, keepdim=k)),
    "min": _reduce(lambda x, d, k=False: torch.amin(x, dim=d, keepdim=k)),
    "argmax": lambda x, axis, keepdims=False: torch.argmax(x, dim=axis, keepdim=keepdims),
    "matmul": torch.matmul,
    "matmul_f32": lambda a, b: torch.matmul(a.float(), b.float()),
    "reshape": lambda x, shape: torch.reshape(x, shape),
    "transpose": lambda x, perm: torch.permute(x, perm),
    "broadcast_to": lambda x, shape: x.expand(shape),
    "concat": lambda *xs, axis: torch.cat(xs, dim=axis),
    "slice": _torch_slice, "pad": _torch_pad,
    "softmax": lambda x, axis=-1: torch.softmax(x, dim=axis),
    "log_softmax": lambda x, axis=-1: torch.log_softmax(x, dim=axis),
    "nll_loss": lambda lp, t, reduction="mean", ignore_index=-100: TF.nll_loss(
        lp, t.long(), reduction=reduction, ignore_index=ignore_index),
    "mse_loss": lambda x, y, reduction="mean": TF.mse_loss(x, y, reduction=reduction),
}

CASES = [(op, i, c) for op, cases in sorted(SAMPLES.items()) for i, c in enumerate(cases)]


def test_every_core_op_has_a_torch_counterpart():
    assert sorted(TORCH) == sorted(SAMPLES)


@pytest.mark.parametrize("op,i,case", CASES, ids=[f"{op}-{i}" for op, i, _ in CASES])
def test_core_op_matches_torch(op, i, case):
    got = run_op(op, case.inputs, **case.attrs)
    want = TORCH[op](*[T(a) for a in case.inputs], **case.attrs).numpy()
    assert got.shape == want.shape, f"{op}: shape {got.shape} vs torch {want.shape}"
    assert got.dtype == want.dtype, f"{op}: dtype {got.dtype} vs torch {want.dtype}"
    tol = 1e-5 if got.dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


# ------------------------------------------------------------------ rules users rely on
def test_argmax_ties_pick_the_first_index_as_torch():
    x = np.array([[0, 5, 5, 1], [7, 7, 7, 7], [-1, -3, -1, -2]], np.float32)
    got = run_op("argmax", [x], axis=1)
    np.testing.assert_array_equal(got, [1, 0, 0])
    np.testing.assert_array_equal(got, torch.argmax(T(x), dim=1).numpy())


@pytest.mark.parametrize("index", [
    (slice(None, None, -1),), (slice(None, None, -2), slice(1, None)),
    (slice(-2, 0, -1), slice(None, None, -3)), (slice(3, None, -1), slice(-1, -5, -2)),
])
def test_negative_step_slicing_via_getitem_matches_torch_flip(index):
    x = np.arange(30, dtype=np.float32).reshape(5, 6)
    out = fe.compile(lambda t: t[index], fe.TensorSpec((5, 6)))(x)
    want = T(x)
    for ax, sl in enumerate(index):
        rows = torch.tensor(list(range(*sl.indices(x.shape[ax]))), dtype=torch.long)
        want = torch.index_select(want, ax, rows)
    np.testing.assert_array_equal(out, want.numpy())
    np.testing.assert_array_equal(out, x[index])
    if index == (slice(None, None, -1),):
        np.testing.assert_array_equal(out, torch.flip(T(x), [0]).numpy())


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ignore_index", [-100, 1])
def test_cross_entropy_matches_torch_eq_10_12(reduction, ignore_index):
    """Eq. 10.11-10.14: cross-entropy = -log softmax(x)[target]; ignored targets drop out."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 4, 3)).astype(np.float32)
    t = rng.integers(0, 4, (6, 3))
    t[0, 0] = t[2, 1] = -100
    fn = fe.compile(lambda a, b: F.cross_entropy(a, b, reduction=reduction,
                                                 ignore_index=ignore_index),
                    fe.TensorSpec(x.shape), fe.TensorSpec(t.shape, "int64"))
    t_ok = np.where(t == -100, ignore_index, t) if ignore_index != -100 else t
    want = TF.cross_entropy(T(x), T(t_ok), reduction=reduction, ignore_index=ignore_index)
    np.testing.assert_allclose(fn(x, t_ok), want.numpy(), rtol=1e-5, atol=1e-6)


def test_nll_loss_by_hand_eq_10_13():
    """-mean of the picked log-probabilities over the targets that count."""
    logp = np.log(np.array([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]], np.float64))
    t = np.array([0, 1, -100])
    want = -(np.log(0.5) + np.log(0.8)) / 2
    np.testing.assert_allclose(run_op("nll_loss", [logp, t]), want, rtol=1e-12)
    np.testing.assert_allclose(TF.nll_loss(T(logp), T(t)).item(), want, rtol=1e-12)


def test_nll_loss_all_ignored_mean_is_nan_as_torch():
    logp = np.zeros((2, 3), np.float32)
    t = np.array([-100, -100])
    with np.errstate(all="ignore"):
        got = run_op("nll_loss", [logp, t])
    assert np.isnan(got) and torch.isnan(TF.nll_loss(T(logp), T(t)))


def test_nll_loss_target_out_of_range_is_an_error_naming_the_op():
    g = Graph("bad")
    lp = g.add_input("lp", TensorType((2, 3)))
    t = g.add_input("t", TensorType((2,), "int64"))
    g.set_outputs([g.op("nll_loss", lp, t, loc="user.py:7")])
    with pytest.raises(Exception, match=r"nll_loss.*user\.py:7|user\.py:7.*nll_loss"):
        backends.compile(g)(np.zeros((2, 3), np.float32), np.array([0, 3]))


def test_softmax_of_huge_logits_is_finite_and_matches_torch():
    x = np.array([[1e4, 1e4 - 1, -1e4], [-1e30, 0.0, 1e30]], np.float32)
    np.testing.assert_allclose(run_op("softmax", [x]), torch.softmax(T(x), 1).numpy(), atol=1e-6)
    np.testing.assert_allclose(run_op("log_softmax", [x]), torch.log_softmax(T(x), 1).numpy(),
                               rtol=1e-6)


@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate", "circular"])
def test_frontend_pad_uses_torch_conventions(mode):
    """F.pad lists (left, right) pairs from the LAST axis, as torch.nn.functional.pad."""
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    pad = (1, 2, 2, 1)
    fn = fe.compile(lambda t: F.pad(t, pad, mode=mode, value=-3.0), fe.TensorSpec(x.shape))
    kw = {"value": -3.0} if mode == "constant" else {}
    np.testing.assert_array_equal(fn(x), TF.pad(T(x), pad, mode=mode, **kw).numpy())


def test_matmul_1d_operands_and_batch_broadcast_match_torch():
    rng = np.random.default_rng(0)
    for sa, sb in [((3,), (3,)), ((3,), (2, 3, 4)), ((2, 1, 5, 3), (3,)),
                   ((4, 1, 2, 3), (5, 3, 2)), ((1, 3), (3, 1))]:
        a = rng.standard_normal(sa).astype(np.float32)
        b = rng.standard_normal(sb).astype(np.float32)
        want = torch.matmul(T(a), T(b)).numpy()
        got = run_op("matmul", [a, b])
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_mse_loss_module_matches_torch():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 3, 4)).astype(np.float32), rng.standard_normal(
        (2, 3, 4)).astype(np.float32)
    for reduction in ("mean", "sum", "none"):
        fn = fe.compile(fe.nn.MSELoss(reduction), fe.TensorSpec(a.shape), fe.TensorSpec(b.shape))
        want = torch.nn.MSELoss(reduction=reduction)(T(a), T(b)).numpy()
        np.testing.assert_allclose(fn(a, b), want, rtol=1e-5, atol=1e-6)


def test_sequence_loss_is_eq_10_11_to_10_14_by_hand():
    """y_hat(t) = softmax(o(t)) (10.11); L = sum_t L(t) (10.13) = -sum_t log y_hat(t)[y(t)]
    (10.14): the summed cross-entropy over the time steps of one sequence."""
    o = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0], [2.0, 2.0, 2.0], [-1.0, 0.0, 1.0]])
    y = np.array([1, 2, 0, 0])
    y_hat = np.exp(o) / np.exp(o).sum(1, keepdims=True)
    want = -np.sum(np.log(y_hat[np.arange(4), y]))
    loss = fe.compile(lambda a, b: F.cross_entropy(a, b, reduction="sum"),
                      fe.TensorSpec((4, 3), "float64"), fe.TensorSpec((4,), "int64"))
    np.testing.assert_allclose(loss(o, y), want, rtol=1e-12)
    probs = fe.compile(lambda a: F.softmax(a, 1), fe.TensorSpec((4, 3), "float64"))(o)
    np.testing.assert_allclose(probs, y_hat, rtol=1e-12)
    np.testing.assert_allclose(probs[2], [1 / 3] * 3, rtol=1e-12)


def test_core_costs_by_hand():
    """matmul: 2*M*N*K flops; elementwise: one flop per output; bytes: inputs + outputs."""
    def cost(op, *types, **attrs):
        g = Graph("c")
        xs = [g.add_input(f"x{i}", TensorType(s, d)) for i, (s, d) in enumerate(types)]
        (out,) = g.add_node(op, xs, attrs)
        node = g.nodes[0]
        return node.opdef.cost([v.type for v in xs], [out.type], node.attrs)
    c = cost("matmul", ((2, 3), "float32"), ((3, 4), "float32"))
    assert (c.flops, c.bytes) == (2 * 2 * 4 * 3, (6 + 12 + 8) * 4)
    c = cost("add", ((5, 1), "float64"), ((1, 4), "float64"))
    assert (c.flops, c.bytes) == (20, (5 + 4 + 20) * 8)
    c = cost("sum", ((6, 7), "float32"), axis=(1,))
    assert (c.flops, c.bytes) == (42, (42 + 6) * 4)
    c = cost("reshape", ((6, 7), "int32"), shape=(42,))
    assert (c.flops, c.bytes) == (0, 2 * 42 * 4)
