"""torch's tensor functions composed of the core ops (frontend/functional_math.py) against
torch 2.13 on every backend: values, and the gradients of ``sum(f(x) * c)`` by every float
input, float64. Edge values (0 for xlogy and sinc, ties and NaN for cummax and median,
infinities for logaddexp) are planted among random ones."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import irgraph as ig
from irgraph.frontend import F
from _torch_twins import check_function

BACKENDS = ["reference", "llvm", "triton"]


def _r(seed, *shape, lo=-2.0, hi=2.0):
    return np.random.default_rng(seed).uniform(lo, hi, shape)


def _pos(seed, *shape):
    return _r(seed, *shape, lo=0.1, hi=3.0)


def _with(x, values):
    x = x.copy().ravel()
    x[:len(values)] = values
    return x


def _ties(seed, *shape):
    return np.random.default_rng(seed).integers(0, 4, shape).astype(np.float64)


CASES = [  # (id, ours, torch's, inputs, differentiated positions)
    ("mm", F.mm, torch.mm, [_r(1, 3, 4), _r(2, 4, 5)], [0, 1]),
    ("mv", F.mv, torch.mv, [_r(3, 3, 4), _r(4, 4)], [0, 1]),
    ("dot", F.dot, torch.dot, [_r(5, 6), _r(6, 6)], [0, 1]),
    ("bmm", F.bmm, torch.bmm, [_r(7, 2, 3, 4), _r(8, 2, 4, 2)], [0, 1]),
    ("addmm", lambda i, a, b: F.addmm(i, a, b, beta=0.5, alpha=2.0),
     lambda i, a, b: torch.addmm(i, a, b, beta=0.5, alpha=2.0),
     [_r(9, 3, 5), _r(10, 3, 4), _r(11, 4, 5)], [0, 1, 2]),
    ("addmm_beta0_nan", lambda i, a, b: F.addmm(i, a, b, beta=0),
     lambda i, a, b: torch.addmm(i, a, b, beta=0),
     [np.full((2, 2), np.nan), _r(12, 2, 3), _r(13, 3, 2)], [1, 2]),
    ("addmv", F.addmv, torch.addmv, [_r(14, 3), _r(15, 3, 4), _r(16, 4)], [0, 1, 2]),
    ("baddbmm", lambda i, a, b: F.baddbmm(i, a, b, alpha=0.5),
     lambda i, a, b: torch.baddbmm(i, a, b, alpha=0.5),
     [_r(17, 2, 3, 2), _r(18, 2, 3, 4), _r(19, 2, 4, 2)], [0, 1, 2]),
    ("outer", F.outer, torch.outer, [_r(20, 3), _r(21, 4)], [0, 1]),
    ("inner", F.inner, torch.inner, [_r(22, 2, 3), _r(23, 4, 3)], [0, 1]),
    ("tensordot", lambda a, b: F.tensordot(a, b, ([1, 0], [0, 2])),
     lambda a, b: torch.tensordot(a, b, ([1, 0], [0, 2])), [_r(24, 2, 3, 4), _r(25, 3, 5, 2)],
     [0, 1]),
    ("tensordot_int", lambda a, b: F.tensordot(a, b, 1), lambda a, b: torch.tensordot(a, b, 1),
     [_r(26, 2, 3), _r(27, 3, 4)], [0, 1]),
    ("cross", lambda a, b: F.cross(a, b, dim=1), lambda a, b: torch.cross(a, b, dim=1),
     [_r(28, 2, 3, 2), _r(29, 2, 3, 2)], [0, 1]),
    ("reciprocal", F.reciprocal, torch.reciprocal, [_pos(30, 3, 4)], [0]),
    ("lerp", F.lerp, torch.lerp, [_r(31, 3, 4), _r(32, 3, 4), _with(_r(33, 12), [0, 0.5, 1])
                                  .reshape(3, 4)], [0, 1, 2]),
    ("lerp_scalar", lambda a, b: F.lerp(a, b, 0.75), lambda a, b: torch.lerp(a, b, 0.75),
     [_r(34, 5), _r(35, 5)], [0, 1]),
    ("hypot", F.hypot, torch.hypot, [_r(36, 3, 4), _r(37, 3, 4)], [0, 1]),
    ("logaddexp", F.logaddexp, torch.logaddexp,
     [_r(38, 4, 3, lo=-30, hi=30), _r(39, 4, 3, lo=-30, hi=30)], [0, 1]),
    ("logaddexp_inf", F.logaddexp, torch.logaddexp,
     [np.array([-np.inf, np.inf, 1.0, -np.inf]), np.array([-np.inf, np.inf, -np.inf, 2.0])],
     []),
    ("logaddexp2", F.logaddexp2, torch.logaddexp2, [_r(40, 3, 4), _r(41, 3, 4)], [0, 1]),
    # x = 0: the value 0 and torch's gradient log(y) by x (0 where y <= 0); at x = y = 0
    # torch's gradient by y is 0/0 = NaN, ours 0: values only there
    ("xlogy", F.xlogy, torch.xlogy, [_with(_r(42, 8), [0.0, 0.0]).reshape(2, 4),
                                     _with(_pos(43, 8), [0.5, 2.0]).reshape(2, 4)], [0, 1]),
    ("xlogy_zeros", F.xlogy, torch.xlogy, [np.array([0.0, 0.0, 1.0, 0.0]),
                                           np.array([0.0, -1.0, 0.0, np.nan])], [0]),
    ("logit", F.logit, torch.logit, [_r(44, 3, 4, lo=0.05, hi=0.95)], [0]),
    ("logit_eps", lambda x: F.logit(x, 0.1), lambda x: torch.logit(x, 0.1),
     [_r(45, 3, 4, lo=0.01, hi=0.99)], [0]),
    ("log2", F.log2, torch.log2, [_pos(46, 3, 4)], [0]),
    ("log10", F.log10, torch.log10, [_pos(47, 3, 4)], [0]),
    ("exp2", F.exp2, torch.exp2, [_r(48, 3, 4)], [0]),
    ("sinh", F.sinh, torch.sinh, [_with(_r(49, 12), [1e-12, -1e-9]).reshape(3, 4)], [0]),
    ("cosh", F.cosh, torch.cosh, [_r(50, 3, 4)], [0]),
    ("tan", F.tan, torch.tan, [_r(51, 3, 4, lo=-1.3, hi=1.3)], [0]),
    ("sinc", F.sinc, torch.sinc, [_with(_r(52, 12), [0.0, 1.0]).reshape(3, 4)], [0]),
    ("deg2rad", F.deg2rad, torch.deg2rad, [_r(53, 5, lo=-360, hi=360)], [0]),
    ("rad2deg", F.rad2deg, torch.rad2deg, [_r(54, 5)], [0]),
    ("addcmul", lambda a, b, c: F.addcmul(a, b, c, value=0.5),
     lambda a, b, c: torch.addcmul(a, b, c, value=0.5), [_r(55, 3), _r(56, 3), _r(57, 3)],
     [0, 1, 2]),
    ("addcdiv", lambda a, b, c: F.addcdiv(a, b, c, value=-2),
     lambda a, b, c: torch.addcdiv(a, b, c, value=-2), [_r(58, 3), _r(59, 3), _pos(60, 3)],
     [0, 1, 2]),
    ("diagonal", F.diagonal, torch.diagonal, [_r(61, 3, 4)], [0]),
    ("diagonal_offsets", lambda x: (F.diagonal(x, 1), F.diagonal(x, -2, 0, 2),
                                    F.diagonal(x, 5, 1, 2)),
     lambda x: (torch.diagonal(x, 1), torch.diagonal(x, -2, 0, 2), torch.diagonal(x, 5, 1, 2)),
     [_r(62, 3, 4, 5)], [0]),
    ("diag_vector", lambda x: (F.diag(x), F.diag(x, 2), F.diag(x, -1)),
     lambda x: (torch.diag(x), torch.diag(x, 2), torch.diag(x, -1)), [_r(63, 3)], [0]),
    ("diag_matrix", lambda x: (F.diag(x), F.diag(x, 1), F.diag(x, -2)),
     lambda x: (torch.diag(x), torch.diag(x, 1), torch.diag(x, -2)), [_r(64, 4, 3)], [0]),
    ("diag_embed", F.diag_embed, torch.diag_embed, [_r(65, 2, 3)], [0]),
    ("trace", F.trace, torch.trace, [_r(66, 3, 4)], [0]),
    ("var_mean", lambda x: F.var_mean(x, 1, correction=0),
     lambda x: tuple(torch.var_mean(x, 1, correction=0)), [_r(67, 3, 4)], [0]),
    ("std_mean", lambda x: F.std_mean(x, (0, 2), keepdim=True),
     lambda x: tuple(torch.std_mean(x, (0, 2), keepdim=True)), [_r(68, 2, 3, 4)], [0]),
    ("cdist", F.cdist, torch.cdist, [_r(69, 2, 4, 3), _r(70, 2, 5, 3)], [0, 1]),
    ("cdist_p1", lambda a, b: F.cdist(a, b, 1.0), lambda a, b: torch.cdist(a, b, 1.0),
     [_r(71, 4, 3), _r(72, 5, 3)], [0, 1]),
    ("count_nonzero", lambda x: (F.count_nonzero(x), F.count_nonzero(x, 1)),
     lambda x: (torch.count_nonzero(x), torch.count_nonzero(x, 1)), [_ties(73, 3, 4)], []),
    ("nansum", lambda x: (F.nansum(x), F.nansum(x, 1, keepdim=True)),
     lambda x: (torch.nansum(x), torch.nansum(x, 1, keepdim=True)),
     [_with(_r(85, 12), [np.nan, 1.0, np.nan]).reshape(3, 4)], [0]),
    ("nanmean", lambda x: F.nanmean(x, 0), lambda x: torch.nanmean(x, 0),
     [_with(_r(86, 12), [np.nan, 1.0, np.nan]).reshape(3, 4)], [0]),
    ("cummax", lambda x: tuple(F.cummax(x, 1)), lambda x: tuple(torch.cummax(x, 1)),
     [_ties(74, 3, 9)], [0]),
    ("cummin_nan", lambda x: tuple(F.cummin(x, 0)), lambda x: tuple(torch.cummin(x, 0)),
     [_with(_ties(75, 8), [2.0, np.nan, 1.0, np.nan, 0.0])], []),
    ("cummax_dim0", lambda x: tuple(F.cummax(x, 0)), lambda x: tuple(torch.cummax(x, 0)),
     [_r(76, 6, 3)], [0]),
    ("logcumsumexp", lambda x: F.logcumsumexp(x, 1), lambda x: torch.logcumsumexp(x, 1),
     [_r(77, 3, 7, lo=-20, hi=20)], [0]),
    ("median_all", F.median, torch.median, [_r(78, 3, 5)], [0]),
    ("median_all_ties", F.median, torch.median,            # the gradient shared by the ties
     [np.array([[3.0, 1.0, 2.0], [2.0, 2.0, 5.0]])], [0]),
    ("median_dim", lambda x: tuple(F.median(x, 1)), lambda x: tuple(torch.median(x, 1)),
     [_r(79, 3, 6)], [0]),
    ("median_nan_keepdim", lambda x: tuple(F.median(x, 1, keepdim=True)),
     lambda x: tuple(torch.median(x, 1, keepdim=True)),
     [_with(_r(80, 10), [1.0, np.nan, 3.0, np.nan]).reshape(2, 5)], []),
    ("isclose", lambda a, b: (F.isclose(a, b), F.isclose(a, b, rtol=0.1, atol=0.0),
                              F.isclose(a, b, equal_nan=True), F.isneginf(a), F.isposinf(b)),
     lambda a, b: (torch.isclose(a, b), torch.isclose(a, b, rtol=0.1, atol=0.0),
                   torch.isclose(a, b, equal_nan=True), torch.isneginf(a), torch.isposinf(b)),
     [np.array([1.0, 1.0, np.inf, -np.inf, np.nan, 0.0, 1e-9, 2.0]),
      np.array([1.0 + 1e-6, 1.05, np.inf, np.inf, np.nan, 1e-9, 0.0, 2.3])], []),
    ("fmax_fmin", lambda a, b: (F.fmax(a, b), F.fmin(a, b), a.fmax(b)),
     lambda a, b: (torch.fmax(a, b), torch.fmin(a, b), a.fmax(b)),
     [_with(_ties(83, 8), [np.nan, 1.0, np.nan]), _with(_ties(84, 8), [2.0, np.nan, np.nan])],
     [0, 1]),
    ("diff_kron_erfc", lambda x, y: (F.diff(x), F.diff(x, 2, 0, prepend=y[:1]), F.kron(x, y),
                                     F.erfc(x), x.swapaxes(0, 1)),
     lambda x, y: (torch.diff(x), torch.diff(x, 2, 0, prepend=y[:1]), torch.kron(x, y),
                   torch.erfc(x), x.swapaxes(0, 1)),
     [_r(85, 3, 4), _r(86, 2, 4)], [0, 1]),
    ("grids_and_stacks", lambda a, b: (*F.meshgrid(a, b, indexing="xy"),
                                       *F.meshgrid(a, b, a), F.cartesian_prod(a, b),
                                       F.hstack([a, b]), F.vstack([a, a]), F.dstack([a, a])),
     lambda a, b: (*torch.meshgrid(a, b, indexing="xy"), *torch.meshgrid(a, b, a, indexing="ij"),
                   torch.cartesian_prod(a, b), torch.hstack([a, b]), torch.vstack([a, a]),
                   torch.dstack([a, a])),
     [_r(87, 3), _r(88, 4)], [0, 1]),
    ("searchsorted", lambda s, v: (F.searchsorted(s, v), F.searchsorted(s, v, right=True),
                                   F.bucketize(v, s[0], right=True)),
     lambda s, v: (torch.searchsorted(s, v), torch.searchsorted(s, v, right=True),
                   torch.bucketize(v, s[0], right=True)),
     [np.sort(_ties(89, 2, 6), -1), _ties(90, 2, 5)], []),
    ("rot90", lambda x: (F.rot90(x), F.rot90(x, -1, (2, 0)), F.rot90(x, 2, (1, 2)),
                         F.rot90(x, 7, (-1, -2))),
     lambda x: (torch.rot90(x), torch.rot90(x, -1, (2, 0)), torch.rot90(x, 2, (1, 2)),
                torch.rot90(x, 7, (-1, -2))), [_r(81, 2, 3, 4)], [0]),
    ("tensor_split", lambda x: F.tensor_split(x, 3, 1) + F.tensor_split(x, [1, 5, 3, -2], -1),
     lambda x: torch.tensor_split(x, 3, 1) + torch.tensor_split(x, [1, 5, 3, -2], -1),
     [_r(82, 2, 7, 5)], [0]),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_values_and_gradients_match_torch(case, backend):
    _, ours, theirs, inputs, wrt = case
    check_function(ours, theirs, inputs, wrt, backend)


def test_torch_level_names_and_methods():
    """``ig.mm``, ``ig.lerp``, ... as torch's, and the methods torch's tensors have."""
    a, b = _r(90, 3, 4), _r(91, 4, 2)
    t = ig.tensor(a)
    np.testing.assert_allclose(ig.mm(t, ig.tensor(b)).numpy(), a @ b)
    np.testing.assert_allclose(t.diagonal().numpy(), np.diagonal(a))
    np.testing.assert_allclose(t.reciprocal().numpy(), 1 / a)
    np.testing.assert_allclose(t.logaddexp(t).numpy(), np.logaddexp(a, a))
    assert tuple(t.cummax(1).indices.shape) == (3, 4)


def test_refusals_name_the_shapes():
    with pytest.raises(ValueError, match="mm: mat2 must be 2-D"):
        ig.F.mm(np.ones((2, 3)), np.ones(3))
    with pytest.raises(ValueError, match="no axis of size 3"):
        ig.F.cross(np.ones((2, 2)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="same axis"):
        ig.F.diagonal(np.ones((2, 2)), 0, 1, 1)


def test_isclose_of_integers_and_allclose_as_torch():
    a, b = np.array([3, 5, 7]), np.array([3, 6, 9])
    np.testing.assert_array_equal(ig.F.isclose(a, b).numpy(),
                                  torch.isclose(torch.tensor(a), torch.tensor(b)).numpy())
    np.testing.assert_array_equal(
        ig.F.isclose(a, b, rtol=0.2, atol=0.5).numpy(),
        torch.isclose(torch.tensor(a), torch.tensor(b), rtol=0.2, atol=0.5).numpy())
    x = _r(92, 3, 4)
    assert bool(ig.allclose(x, x + 1e-9)) and not bool(ig.allclose(x, x + 1e-3))
    np.testing.assert_allclose(ig.true_divide(np.array([3, 4]), 2).numpy(), [1.5, 2.0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_reaches_norms_and_huge_integer_divisors_divide_as_floats(backend):
    """A NaN entry makes a vector norm NaN for every order (and normalize, cdist with it),
    as torch's; an int32 tensor divided by a Python int past int32 divides as float32;
    integer floor division by zero gives 0 on every backend (torch raises)."""
    x = np.array([[np.nan, 1.0, 2.0], [3.0, 4.0, 0.0]], np.float32)
    n = np.array([[7, -7, 1]], np.int32)
    f = ig.compile(lambda x, n: (F.vector_norm(x, dim=1), F.vector_norm(x, 3, dim=1),
                                 F.vector_norm(x, 0.5, dim=1), F.normalize(x, dim=1),
                                 n / 2**31, n / 2**40, n // 0),
                   ig.TensorSpec((2, 3)), ig.TensorSpec((1, 3), "int32"), backend=backend)
    got = f(x, n)
    t = torch.tensor(x)
    want = (torch.linalg.vector_norm(t, dim=1), torch.linalg.vector_norm(t, 3, dim=1),
            torch.linalg.vector_norm(t, 0.5, dim=1), torch.nn.functional.normalize(t, dim=1),
            torch.tensor(n) / 2**31, torch.tensor(n) / 2**40)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(got[-1], [[0, 0, 0]])


def test_torch_top_level_names_grad_modes_dtypes_and_eager_selections():
    x = _r(93, 2, 3)
    t = torch.tensor(x)
    for name in ("exp", "sum", "softmax", "argmax", "cumsum", "amax", "logsumexp"):
        args = (1,) if name not in ("exp",) else ()
        np.testing.assert_allclose(getattr(ig, name)(x, *args).numpy(),
                                   getattr(torch, name)(t, *args).numpy(), rtol=1e-6)
    with ig.no_grad():
        assert ig.tensor(x).to(ig.float16).dtype == "float16"

    @ig.no_grad()
    def mean(a):
        return ig.mean(a)
    np.testing.assert_allclose(mean(x).numpy(), x.mean(), rtol=1e-6)
    np.testing.assert_array_equal(ig.nonzero(x > 0).numpy(), torch.nonzero(t > 0).numpy())
    np.testing.assert_array_equal(ig.masked_select(x, x > 0).numpy(),
                                  torch.masked_select(t, t > 0).numpy().astype(np.float32))
    with pytest.raises(TypeError, match="not in a trace"):
        ig.compile(lambda a: ig.nonzero(a), ig.TensorSpec((3,)))
    k = ig.randint(2, 7, (1000,)).numpy()
    assert k.dtype == np.int64 and k.min() == 2 and k.max() == 6
    assert ig.is_tensor(ig.tensor(x)) and ig.numel(x) == 6
