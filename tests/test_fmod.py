"""fmod, remainder and floor division against PyTorch, bit for bit, on every backend.

Float floor division is torch's ``div_floor_floating`` over the exact ``fmod`` op, in the
operands' own dtype: ``1.0 // 0.1`` is 9 (``fmod(1.0, 0.1)`` is 0.0999...), as in torch,
Python and numpy. The values are the ones that break approximations: quotients one ulp either
side of an integer, signed zeros, infinities and NaN in either operand, a zero divisor,
magnitudes from subnormal to the largest finite, mixed signs.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import irgraph.backends as backends
import irgraph.frontend as fe
from irgraph.frontend import F
from irgraph import Graph, TensorType

BACKENDS = ("reference", "llvm", "triton")
FLOATS = ("float32", "float64")


def _specials(dt: str) -> list[float]:
    fi = np.finfo(dt)
    return [0.0, -0.0, 1.0, -1.0, 0.1, -0.1, 3.0, 5.5, -7.25, 1e10, np.inf, -np.inf, np.nan,
            float(fi.max), -float(fi.max), float(fi.tiny), -float(fi.smallest_subnormal)]


def _near_integers(dt: str) -> tuple[np.ndarray, np.ndarray]:
    """``a = k * b`` rounded, and its neighbours one ulp down and up: the quotient lands on,
    just below or just above an integer (or rounds onto one)."""
    t = np.dtype(dt).type
    bs = [t(0.1), t(0.3), t(-0.7), t(1e-3), t(3.0), t(1.0) / t(3.0), t(-2.5e-5), t(1e5)]
    ks = [1, 2, 3, 7, 10, -5, 100, 2 ** 20, 2 ** 30]
    a, b = [], []
    for bb, k in itertools.product(bs, ks):
        a0 = t(k) * bb
        for x in (np.nextafter(a0, t(-np.inf)), a0, np.nextafter(a0, t(np.inf))):
            a.append(x)
            b.append(bb)
    return np.array(a, dt), np.array(b, dt)


def adversarial(dt: str) -> tuple[np.ndarray, np.ndarray]:
    s = _specials(dt)
    pa, pb = zip(*itertools.product(s, s))
    na, nb = _near_integers(dt)
    rng = np.random.default_rng(7)
    span = 30 if dt == "float32" else 250
    ra = rng.choice([-1, 1], 200) * 10.0 ** rng.uniform(-span, span, 200)
    rb = rng.choice([-1, 1], 200) * 10.0 ** rng.uniform(-span, span, 200)
    a = np.concatenate([np.array(pa, dt), na, ra.astype(dt), [1.0, -1.0, 1.0, 5.0]]).astype(dt)
    b = np.concatenate([np.array(pb, dt), nb, rb.astype(dt), [0.1, 0.1, -0.1, 0.5]]).astype(dt)
    return a, b


def assert_same(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Bit-exact up to the NaN payload: same dtype and shape, NaN at the same places,
    equal values elsewhere with the same sign (so -0.0 differs from 0.0)."""
    assert got.dtype == want.dtype and got.shape == want.shape, what
    nan = np.isnan(want) if want.dtype.kind == "f" else np.zeros(want.shape, bool)
    got_nan = np.isnan(got) if got.dtype.kind == "f" else nan
    bad = (nan != got_nan) | (~nan & ((got != want) | (np.signbit(got) != np.signbit(want))))
    if bad.any():
        i = np.flatnonzero(bad)[:5]
        raise AssertionError(f"{what}: {bad.sum()} of {bad.size} differ; at {i.tolist()}: "
                             f"got {got[i].tolist()}, torch {want[i].tolist()}")


def _ops(a, b):
    return (a // b, F.div(a, b, rounding_mode="floor"), F.floor_divide(a, b), F.fmod(a, b),
            F.remainder(a, b), a % b, a.fmod(b), a.remainder(b))


def _torch_ops(a, b):
    fd = torch.div(a, b, rounding_mode="floor")
    return (fd, fd, fd, torch.fmod(a, b), torch.remainder(a, b), torch.remainder(a, b),
            torch.fmod(a, b), torch.remainder(a, b))


def torch_elementwise(a: np.ndarray, b: np.ndarray) -> list[np.ndarray]:
    """``_torch_ops`` one element at a time: torch's scalar kernels, which are C's ``fmod``.
    Its vector kernel (Sleef) differs there: ``fmod`` by a divisor near the smallest normal
    or subnormal is NaN (``fmod(1, -1e-45)`` is NaN in a long float32 tensor, 0.0 alone)."""
    outs = [_torch_ops(torch.from_numpy(a[k:k + 1]), torch.from_numpy(b[k:k + 1]))
            for k in range(a.size)]
    return [np.concatenate([o[j].numpy() for o in outs]) for j in range(len(outs[0]))]


NAMES = ("a // b", "div floor", "floor_divide", "fmod", "remainder", "a % b", "Tensor.fmod",
         "Tensor.remainder")


@pytest.mark.parametrize("dt", FLOATS)
def test_float_floor_division_fmod_remainder_match_torch_bit_for_bit(dt):
    a, b = adversarial(dt)
    want = torch_elementwise(a, b)
    # torch itself agrees with Python where Python defines the result (the hand-checkable
    # anchor: 1.0 // 0.1 == 9.0, 1.0 % 0.1 == 0.09999999999999995)
    assert 1.0 // 0.1 == 9.0 and want[0][-4] == 9 and want[0][-3] == -10 and want[0][-2] == -10
    for backend in BACKENDS:
        fn = fe.compile(_ops, (a.shape, dt), (b.shape, dt), backend=backend)
        for name, got, w in zip(NAMES, fn(a, b), want):
            assert_same(got, w, f"{backend} {dt} {name}")


def test_python_float_semantics_by_hand():
    """Numbers worked out by hand (and by Python's float // and %), float64."""
    a = np.array([1.0, -1.0, 7.5, -7.5, 7.5, -0.0, 0.0, 5.0, -5.0], np.float64)
    b = np.array([0.1, 0.1, 2.0, 2.0, -2.0, 3.0, -3.0, np.inf, np.inf], np.float64)
    fd, md = fe.compile(lambda x, y: (x // y, x % y), (a.shape, "float64"),
                        (b.shape, "float64"), backend="reference")(a, b)
    assert fd.tolist() == [9.0, -10.0, 3.0, -4.0, -4.0, -0.0, -0.0, 0.0, -1.0]
    assert md[2:5].tolist() == [1.5, 0.5, -0.5] and md[0] == 1.0 % 0.1
    assert np.signbit(fd[5]) and np.signbit(fd[6]) and md[7] == 5.0 and md[8] == np.inf


@pytest.mark.parametrize("dt", ("int32", "int64"))
def test_integer_fmod_remainder_floor_division_match_torch(dt):
    info = np.iinfo(dt)
    vals = list(range(-7, 8)) + [int(info.min), int(info.max), int(info.min) + 1]
    divs = [d for d in range(-4, 5) if d] + [int(info.max), int(info.min), 7]
    pairs = [(x, d) for x, d in itertools.product(vals, divs)
             if not (x == info.min and d == -1)]          # C's INT_MIN % -1 traps in torch
    a, b = (np.array(c, dt) for c in zip(*pairs))
    want = [t.numpy() for t in _torch_ops(torch.from_numpy(a), torch.from_numpy(b))]
    for backend in BACKENDS:
        fn = fe.compile(_ops, (a.shape, dt), (b.shape, dt), backend=backend)
        for name, got, w in zip(NAMES, fn(a, b), want):
            np.testing.assert_array_equal(got, w, err_msg=f"{backend} {dt} {name}")
            assert got.dtype == w.dtype


def test_integer_remainder_by_zero_and_min_by_minus_one_follow_numpy():
    """Where torch raises (a zero divisor) or traps (INT_MIN % -1), integers follow numpy,
    the reference's convention for the integer ``div``: ``x % 0`` and ``fmod(x, 0)`` are 0."""
    lo = np.iinfo(np.int64).min
    a = np.array([5, -5, 0, lo, lo], np.int64)
    b = np.array([0, 0, 0, -1, 0], np.int64)
    for backend in BACKENDS:
        r, m = fe.compile(lambda x, y: (x % y, F.fmod(x, y)), (a.shape, "int64"),
                          (b.shape, "int64"), backend=backend)(a, b)
        with np.errstate(divide="ignore"):
            np.testing.assert_array_equal(r, np.remainder(a, b), err_msg=backend)
            np.testing.assert_array_equal(m, np.fmod(a, b), err_msg=backend)


def test_mixed_operands_promote_as_torch():
    """An int tensor with a float number, and a Python number on the left (``__rmod__``)."""
    a = np.array([5, -5, 7, -8], np.int64)
    x = np.array([3.0, -3.0, 0.7, -0.7], np.float32)
    got = fe.compile(lambda i, f: (F.fmod(i, 2.5), F.remainder(i, -2.5), 5 % f, 5.0 // f,
                                   i.remainder(3)),
                     ((4,), "int64"), ((4,), "float32"), backend="reference")(a, x)
    ti, tf = torch.from_numpy(a), torch.from_numpy(x)
    want = (torch.fmod(ti, 2.5), torch.remainder(ti, -2.5), 5 % tf, 5.0 // tf,
            torch.remainder(ti, 3))
    for k, (g, w) in enumerate(zip(got, want)):
        assert_same(g, w.numpy(), f"output {k}")


def _grad_values(dt: str):
    """Quotients away from integers (fmod and remainder are smooth there), and 1.0 / 0.1,
    whose rounded quotient 10.0 gives fmod's d/db (torch's trunc(a / b) = 10)."""
    rng = np.random.default_rng(3)
    b = (rng.choice([-1, 1], (3, 4)) * rng.uniform(0.3, 3.0, (3, 4))).astype(dt)
    q = rng.choice([-1, 1], (3, 4)) * (rng.integers(0, 6, (3, 4)) + rng.uniform(0.1, 0.9, (3, 4)))
    return (q * b).astype(dt), b


@pytest.mark.parametrize("dt", FLOATS)
def test_gradients_match_torch(dt):
    a, b = _grad_values(dt)
    w = np.linspace(-1.0, 2.0, 12).reshape(3, 4).astype(dt)
    a[0, 0], b[0, 0] = 1.0, 0.1          # fmod only: its d/db is -trunc(1.0 / 0.1) = -10

    def loss(x, y):
        return (F.fmod(x, y) * w).sum() + (F.remainder(x[1:], y[1:]) * w[1:]).sum() \
            + (x // y).sum()

    ta, tb = (torch.tensor(v, requires_grad=True) for v in (a, b))
    tw = torch.from_numpy(w)
    (torch.fmod(ta, tb) * tw).sum().add((torch.remainder(ta[1:], tb[1:]) * tw[1:]).sum()) \
        .add(torch.div(ta, tb, rounding_mode="floor").sum()).backward()
    for backend in BACKENDS:
        ga, gb = fe.grad(loss, (a.shape, dt), (b.shape, dt), wrt=[0, 1], backend=backend)(a, b)
        assert_same(ga, ta.grad.numpy(), f"{backend} {dt} d/da")
        assert_same(gb, tb.grad.numpy(), f"{backend} {dt} d/db")


def test_fmod_gradient_broadcasts_to_each_operand():
    a, b = _grad_values("float64")
    b = b[0]                                                     # (4,) against (3, 4)
    ga, gb = fe.grad(lambda x, y: F.fmod(x, y).sum(), (a.shape, "float64"), ((4,), "float64"),
                     wrt=[0, 1])(a, b)
    np.testing.assert_array_equal(ga, np.ones_like(a))
    np.testing.assert_array_equal(gb, -np.trunc(a / b).sum(axis=0))


def test_bad_operands_are_rejected_with_the_reason():
    with pytest.raises(TypeError, match="fmod: not defined for bool"):
        fe.compile(lambda x: F.fmod(x, x), ((3,), "bool"))
    with pytest.raises(TypeError, match="remainder: not defined for bool"):
        fe.compile(lambda x: x % x, ((3,), "bool"))
    g = Graph("g")
    x = g.add_input("x", TensorType((3,), "int64"))
    with pytest.raises(Exception, match=r"fmod.*needs a float tensor"):
        g.op("fmod", x, x)
    y = g.add_input("y", TensorType((3,), "float32"))
    with pytest.raises(Exception, match=r"fmod.*dtypes differ"):
        g.op("fmod", y, g.add_input("z", TensorType((3,), "float64")))


def test_llvm_fmod_matches_numpy_on_long_vectorized_loops():
    """Long arrays take the vector loop (a libm ``fmod`` per lane) and its scalar tail."""
    rng = np.random.default_rng(11)
    for dt in FLOATS:
        a = (rng.standard_normal(1003) * 10.0 ** rng.uniform(-5, 5, 1003)).astype(dt)
        b = (rng.standard_normal(1003) * 10.0 ** rng.uniform(-5, 5, 1003)).astype(dt)
        g = Graph("fm")
        x, y = g.add_input("x", TensorType(a.shape, dt)), g.add_input("y", TensorType(b.shape, dt))
        g.set_outputs([g.op("fmod", x, y)])
        (got,) = backends.compile(g, "llvm")(a, b)
        assert_same(got, np.fmod(a, b), dt)
