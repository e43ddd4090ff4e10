"""Tensor functions beyond the core ops (split, flip, roll, repeat, triangles, scans and
products, tests, rounding, logical and bitwise operators, einsum, factories) and the scalar
and dtype rules a PyTorch user meets, against torch 2.13 on every backend: values, dtypes and
the gradients of every float input, float64."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import irgraph as ig
import irgraph.frontend as fe
from irgraph.frontend import F
from _torch_twins import check_function

BACKENDS = ["reference", "llvm", "triton"]


def _r(seed, *shape):
    return np.random.default_rng(seed).uniform(-3, 3, shape)


X = _r(0, 3, 4, 5)
XI = np.random.default_rng(1).integers(-5, 6, (3, 4))
TIES = np.random.default_rng(2).integers(-3, 4, (5, 9)).astype(np.float64)
HALVES = np.array([[-2.5, -1.5, -0.5, 0.5], [1.5, 2.5, 0.49, -0.51], [3.7, -3.2, 0.0, 7.5]])
# (id, ours, torch's, inputs, positions differentiated)
CASES = [
    ("split", lambda x: F.split(x, 2, 1), lambda x: torch.split(x, 2, 1), [X], [0]),
    ("split_sections", lambda x: F.split(x, [1, 3, 1], -1),
     lambda x: torch.split(x, [1, 3, 1], -1), [X], [0]),
    ("chunk", lambda x: x.chunk(3, 2), lambda x: x.chunk(3, 2), [X], [0]),
    ("unbind", lambda x: x.unbind(1), lambda x: x.unbind(1), [X], [0]),
    ("flip", lambda x: x.flip((0, 2)), lambda x: x.flip((0, 2)), [X], [0]),
    ("roll", lambda x: x.roll((1, -2), (1, 2)), lambda x: x.roll((1, -2), (1, 2)), [X], [0]),
    ("roll_flat", lambda x: x.roll(3), lambda x: x.roll(3), [X], [0]),
    ("movedim", lambda x: x.movedim(0, -1), lambda x: x.movedim(0, -1), [X], [0]),
    ("narrow", lambda x: x.narrow(2, 1, 3), lambda x: x.narrow(2, 1, 3), [X], [0]),
    ("unflatten", lambda x: x.unflatten(1, (2, 2)), lambda x: x.unflatten(1, (2, 2)), [X], [0]),
    ("repeat", lambda x: x.repeat(2, 1, 1, 3), lambda x: x.repeat(2, 1, 1, 3), [X], [0]),
    ("tile", lambda x: x.tile((2, 1)), lambda x: x.tile((2, 1)), [X], [0]),
    ("repeat_interleave", lambda x: x.repeat_interleave(2, 1),
     lambda x: x.repeat_interleave(2, 1), [X], [0]),
    ("masked_fill", lambda x: x.masked_fill(x > 1, -7.0), lambda x: x.masked_fill(x > 1, -7.0),
     [X], [0]),
    ("tril", lambda x: x.tril(1), lambda x: x.tril(1), [X], [0]),
    ("triu", lambda x: x.triu(-1), lambda x: x.triu(-1), [X], [0]),
    ("cumsum", lambda x: x.cumsum(2), lambda x: x.cumsum(2), [X], [0]),
    ("cumsum_int", lambda x: x.cumsum(1), lambda x: x.cumsum(1), [XI], []),
    ("cumprod", lambda x: x.cumprod(1), lambda x: x.cumprod(1), [X * 0.5], [0]),
    ("cumprod_zero", lambda x: x.cumprod(0), lambda x: x.cumprod(0),
     [np.array([2.0, 0.0, 3.0, 0.5, 0.0, 4.0])], [0]),
    ("prod", lambda x: x.prod(2), lambda x: x.prod(2), [X * 0.7], [0]),
    ("prod_all_zero", lambda x: x.prod(), lambda x: x.prod(),
     [np.array([[2.0, 0.0, 3.0], [1.5, -1.0, 2.0]])], [0]),
    ("prod_keepdim_int", lambda x: x.prod(0, keepdim=True), lambda x: x.prod(0, keepdim=True),
     [XI], []),
    ("all_any", lambda x: (x.all(), x.any(1), (x > 0).all(0, keepdim=True)),
     lambda x: (x.all(), x.any(1), (x > 0).all(0, keepdim=True)), [XI], []),
    ("tests", lambda x: (F.isnan(x), F.isinf(x), F.isfinite(x), F.nan_to_num(x, 0.5)),
     lambda x: (torch.isnan(x), torch.isinf(x), torch.isfinite(x), torch.nan_to_num(x, 0.5)),
     [np.array([1.0, np.nan, np.inf, -np.inf, -2.0])], []),
    ("rounding", lambda x: (x.floor(), x.ceil(), x.trunc(), x.round(), x.frac()),
     lambda x: (x.floor(), x.ceil(), x.trunc(), x.round(), x.frac()), [HALVES], [0]),
    ("round_decimals", lambda x: x.round(decimals=1), lambda x: x.round(decimals=1),
     [np.array([0.25, 1.35, -2.449, 7.06])], []),
    ("logical", lambda a, b: ((a > 0) & (b > 0), (a > 0) | (b > 0), (a > 0) ^ (b > 0),
                              ~(a > 0), F.logical_not(a), F.logical_xor(a, b)),
     lambda a, b: ((a > 0) & (b > 0), (a > 0) | (b > 0), (a > 0) ^ (b > 0), ~(a > 0),
                   torch.logical_not(a), torch.logical_xor(a, b)),
     [XI, XI.T.copy().reshape(3, 4)], []),
    ("invert_int", lambda a: ~a, lambda a: ~a, [XI], []),
    ("bool_arithmetic", lambda a, b: ((a > 0) + (b > 0), (a > 0) * (b > 0), (a > 0) + True),
     lambda a, b: ((a > 0) + (b > 0), (a > 0) * (b > 0), (a > 0) + True),
     [XI, XI.T.copy().reshape(3, 4)], []),
    ("norm", lambda x: (F.norm(x), F.norm(x, 1, 2), x.norm(3, dim=(0, 1), keepdim=True)),
     lambda x: (torch.norm(x), torch.norm(x, 1, 2), x.norm(3, dim=(0, 1), keepdim=True)),
     [X], [0]),
    ("detach", lambda x: x * x.detach(), lambda x: x * x.detach(), [X], [0]),
    ("argmax_keepdim", lambda x: (x.argmax(keepdim=True), x.argmin(keepdim=True)),
     lambda x: (x.argmax(keepdim=True), x.argmin(keepdim=True)), [X], []),
    ("std_constant_row", lambda x: x.std(1), lambda x: x.std(1),
     [np.array([[1.0, 1.0, 1.0], [0.5, 2.0, -1.0]])], [0]),
    ("broadcast_to_keep", lambda x: x[:, :1].broadcast_to((2, -1, 5)),
     lambda x: x[:, :1].broadcast_to((2, -1, 5)), [_r(3, 4, 1)], [0]),
    ("big_int_scalars", lambda x: (x + (2**53 + 1), x == 2**60 + 1, x % (2**55 + 3)),
     lambda x: (x + (2**53 + 1), x == 2**60 + 1, x % (2**55 + 3)),
     [np.array([0, 2**60, 2**62 + 5])], []),
    ("varargs_dims", lambda x: (x.flip(0, 1), x.tile(2), x.tile(2, 1, 1)),
     lambda x: (x.flip(0, 1), x.tile(2), x.tile(2, 1, 1)), [X], [0]),
    ("bool_triangles_and_fills", lambda a: ((a > 0).tril(), (a > 0).triu(1),
                                            a.masked_fill(a > 2, 2.7), (a > 0).masked_fill(a > 2, 0)),
     lambda a: ((a > 0).tril(), (a > 0).triu(1), a.masked_fill(a > 2, 2.7),
                (a > 0).masked_fill(a > 2, 0)), [XI], []),
    ("round_negative_decimals", lambda x: (x.round(decimals=-2), x.round(decimals=-3)),
     lambda x: (x.round(decimals=-2), x.round(decimals=-3)),
     [np.random.default_rng(3).standard_normal(2000) * 1e6], []),
    ("einsum_scalar_operands", lambda a, s: (fe.einsum("i,->i", a, s), fe.einsum("->", s),
                                             fe.einsum("...,i->i", s, a)),
     lambda a, s: (torch.einsum("i,->i", a, s), torch.einsum("->", s),
                   torch.einsum("...,i->i", s, a)), [_r(8, 3), np.array(2.5)], [0, 1]),
    ("sin_cos_tan", lambda x: (F.sin(x), x.cos(), x.tan()),
     lambda x: (torch.sin(x), x.cos(), x.tan()),
     [np.concatenate([X.ravel() * 7, [0.0, np.pi, -np.pi / 2, 1e5, -3e4]])], [0]),
    ("sort", lambda x: x.sort(1), lambda x: torch.sort(x, dim=1, stable=True), [TIES], [0]),
    ("sort_descending", lambda x: x.sort(0, descending=True),
     lambda x: torch.sort(x, dim=0, descending=True, stable=True), [TIES], [0]),
    ("sort_nan", lambda x: x.sort(-1), lambda x: torch.sort(x, stable=True),
     [np.array([[3.0, np.nan, -1.0, 3.0, np.nan, 0.0, 2.5]])], []),
    ("argsort_int", lambda x: x.argsort(1, descending=True),
     lambda x: torch.argsort(x, dim=1, descending=True, stable=True), [XI], []),
    ("topk", lambda x: x.topk(3, 2), lambda x: x.topk(3, 2), [X], [0]),
    ("topk_smallest", lambda x: x.topk(2, 0, largest=False), lambda x: x.topk(2, 0,
                                                                               largest=False),
     [X], [0]),
    ("kthvalue", lambda x: x.kthvalue(2, 1, keepdim=True), lambda x: x.kthvalue(2, 1,
                                                                                 keepdim=True),
     [X], [0]),
    ("msort", lambda x: F.msort(x), lambda x: torch.msort(x), [X], [0]),
    *[(f"einsum_{eq}", lambda *xs, eq=eq: fe.einsum(eq, *xs),
       lambda *xs, eq=eq: torch.einsum(eq, *xs), [_r(10 + k, *s) for k, s in enumerate(shapes)],
       list(range(len(shapes)))) for eq, shapes in [
        ("ij,jk->ik", [(3, 4), (4, 5)]),
        ("bhqd,bhkd->bhqk", [(2, 3, 4, 5), (2, 3, 6, 5)]),
        ("ij->ji", [(3, 4)]),
        ("ij->", [(3, 4)]),
        ("i,i->", [(5,), (5,)]),
        ("i,j->ij", [(3,), (4,)]),
        ("bij,bjk", [(2, 3, 4), (2, 4, 5)]),
        ("...ij,...jk->...ik", [(2, 3, 4), (4, 2)]),
        ("abc,cd,de->ae", [(2, 3, 4), (4, 5), (5, 2)]),
        ("ijk,ik->j", [(3, 4, 5), (3, 5)]),
        ("ij,ij->i", [(3, 4), (1, 4)]),
    ]],
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_tensor_functions_match_torch(case, backend):
    _, ours, theirs, inputs, wrt = case
    check_function(ours, theirs, inputs, wrt, backend)


def test_factories_as_torch():
    for ours, theirs in [(ig.zeros(2, 3), torch.zeros(2, 3)), (ig.ones((2,)), torch.ones(2)),
                         (ig.full((2, 2), 7), torch.full((2, 2), 7)),
                         (ig.full((2,), 1.5), torch.full((2,), 1.5)),
                         (ig.arange(5), torch.arange(5)), (ig.arange(1, 2, 0.25),
                                                           torch.arange(1, 2, 0.25)),
                         (ig.arange(10, 0, -3), torch.arange(10, 0, -3)),
                         (ig.eye(3, 2), torch.eye(3, 2)),
                         (ig.linspace(0, 1, 5), torch.linspace(0, 1, 5)),
                         (ig.full((2,), 2**53 + 1), torch.full((2,), 2**53 + 1)),
                         (ig.zeros_like(ig.tensor(np.ones((2, 2), np.int32))),
                          torch.zeros_like(torch.ones(2, 2, dtype=torch.int32)))]:
        want = theirs.numpy()
        assert ours.numpy().dtype == want.dtype, (ours, theirs)
        np.testing.assert_allclose(ours.numpy(), want, rtol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_factories_inside_a_traced_function(backend):
    def f(x):
        return x + ig.arange(4) * ig.ones(3, 4) + ig.eye(3, 4) + ig.full_like(x, 0.5)
    x = _r(4, 3, 4)
    got = fe.compile(f, fe.TensorSpec(x.shape, "float64"), backend=backend)(x)
    want = x + np.arange(4) + np.eye(3, 4) + 0.5
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_bitwise_operators_of_integers_and_bool_minus_are_refused():
    a = ig.tensor(np.array([6, 5]))
    with pytest.raises(TypeError, match="bitwise operations on int64"):
        a & 3
    with pytest.raises(TypeError, match="subtraction of two bool tensors"):
        (a > 5) - (a > 5)
    with pytest.raises(NotImplementedError, match="diagonal"):
        fe.einsum("ii->i", ig.tensor(np.eye(2)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_assignment_into_a_view_writes_through_as_torch(backend):
    """``y[0][1] = v`` and ``row = y[2]; row[0] = v`` change y, as torch's views do (and the
    gradient follows the assigned values)."""
    def f(x):
        y = x * 1.0
        y[0][1] = 100.0
        row = y[2]
        row[0] = -x[1, 1] * 3
        y[1:, ::2][0] = 7.0
        return y

    x = _r(7, 3, 3)
    check_function(f, f, [x], [0], backend)


def test_assignment_into_a_stale_view_is_refused():
    y = ig.tensor(np.zeros((3, 3)))
    row = y[0]
    y[0, 1] = 5.0                   # the base changes after the view was taken
    with pytest.raises(ValueError, match="take the view again"):
        row[2] = 1.0


@pytest.mark.parametrize("backend", ["reference", "llvm", "triton"])
def test_sign_of_nan_and_all_any_of_empty_as_torch(backend):
    """torch: sign(NaN) is 0; all/any over an empty axis are True/False in the reduced
    shape (not a 0-d result)."""
    x = np.array([np.nan, -2.0, 0.0, 3.0], np.float32)
    got = fe.compile(lambda a: F.sign(a), fe.TensorSpec((4,)), backend=backend)(x)
    np.testing.assert_array_equal(got, torch.sign(torch.tensor(x)).numpy())
    e = np.zeros((0, 3), np.float32)
    outs = fe.compile(lambda a: (F.all(a, 0), F.any(a, 1, keepdim=True), F.any(a)),
                      fe.TensorSpec((0, 3)), backend=backend)(e)
    t = torch.tensor(e)
    for o, w in zip(outs, (torch.all(t, 0), torch.any(t, 1, keepdim=True), torch.any(t))):
        assert o.shape == tuple(w.shape) and o.dtype == np.bool_
        np.testing.assert_array_equal(o, w.numpy())


def test_integer_fills_out_of_range_and_repeated_dims_are_errors_as_torch():
    spec = fe.TensorSpec((2,), "int32")
    for fn in (lambda a: F.where(a > 0, a, 2**40), lambda a: F.masked_fill(a, a < 0, 2**40),
               lambda a: F.clamp(a, max=2**40), lambda a: F.full_like(a, 2**40)):
        with pytest.raises(ValueError, match="cannot be converted to type int32 without "
                                             "overflow"):
            fe.trace(fn, spec)
    with pytest.raises(ValueError, match="repeated dim in `destination`"):
        fe.trace(lambda a: F.movedim(a, (0, 1), (1, 1)), fe.TensorSpec((2, 3, 4)))


@pytest.mark.parametrize("backend", ["reference", "llvm", "triton"])
def test_negative_or_too_large_indices_are_errors_where_torch_raises(backend):
    """gather, index_select, scatter_add and one_hot take indices in [0, n) only (x[i]
    counts a negative one from the end, as torch)."""
    from irgraph.errors import RuntimeDataError
    spec_x, spec_i = fe.TensorSpec((3, 4)), fe.TensorSpec((3, 1), "int64")
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    fns = [lambda a, i: F.gather(a, 1, i), lambda a, i: F.index_select(a, 1, i[:, 0]),
           lambda a, i: F.scatter_add(a, 1, i, a[:, :1]),
           lambda a, i: F.one_hot(i, 4)]
    good, bad = np.array([[0], [3], [1]]), np.array([[0], [-1], [1]])
    for fn in fns:
        f = fe.compile(fn, spec_x, spec_i, backend=backend)
        f(x, good)
        with pytest.raises(RuntimeDataError, match=r"index -1 is out of range .*\[0, "):
            f(x, bad)
    f = fe.compile(lambda i: F.one_hot(i, 3), spec_i, backend=backend)
    with pytest.raises(RuntimeDataError, match=r"index 3 is out of range"):
        f(good)


def test_tensor_methods_torch_code_reaches_for():
    """x.half(), x.to(torch.float16), x.to("float") (torch's float32), x.to(device),
    type_as, expand_as, new_tensor."""
    x = ig.tensor(np.arange(3.0))
    assert x.half().dtype == "float16" and x.to(torch.float16).dtype == "float16"
    assert x.to("float").dtype == "float32" and x.to(torch.long).dtype == "int64"
    assert x.to("cpu") is x and x.to(torch.device("cpu")) is x
    assert x.type_as(ig.tensor(np.ones(2, np.float32))).dtype == "float32"
    assert x.expand_as(ig.tensor(np.ones((2, 3)))).shape == (2, 3)
    y = x.new_tensor([1, 2])
    assert y.dtype == "float64" and y.numpy().tolist() == [1.0, 2.0]


S0 = np.array(1.5)


@pytest.mark.parametrize("backend", ["reference", "llvm"])
def test_scalar_inputs_flip_gather_and_scatter_as_torch(backend):
    """A 0-d tensor is its one element along dim 0 (or -1), as torch's."""
    check_function(lambda x: (F.flip(x, (0,)), F.gather(x, 0, np.array(0)),
                              F.scatter_add(x, -1, np.array(0), x * 2)),
                   lambda x: (torch.flip(x, (0,)), torch.gather(x, 0, torch.tensor(0)),
                              torch.scatter_add(x, -1, torch.tensor(0), x * 2)),
                   [S0], [0], backend)


def test_chunks_of_an_empty_dim_and_shape_errors_as_torch():
    x = np.zeros((0, 2))
    got = [tuple(t.shape) for t in F.chunk(x, 3, 0)]
    assert got == [tuple(t.shape) for t in torch.zeros(0, 2).chunk(3, 0)] == [(0, 2)] * 3
    with pytest.raises(ValueError, match="repeat a dim"):
        F.flip(np.zeros((2, 3)), (0, -2))
    with pytest.raises(ValueError, match="sizes must be non-empty"):
        F.unflatten(np.zeros(6), 0, ())
    for shape, pad, mode in [((2, 3, 5), (-6, 1), "constant"), ((1, 2, 4), (-1, -3), "reflect"),
                             ((3, 2, 1), (-1, 0), "replicate"), ((2, 0, 5), (1, 2), "reflect")]:
        with pytest.raises(RuntimeError):
            torch.nn.functional.pad(torch.zeros(shape), pad, mode)
        with pytest.raises(ValueError, match="pad"):
            F.pad(np.zeros(shape, np.float32), pad, mode)


@pytest.mark.parametrize("backend", ["reference", "llvm"])
def test_index_add_refuses_a_negative_index_as_torch(backend):
    from irgraph.errors import RuntimeDataError
    f = fe.compile(lambda x, i, s: F.index_add(x, 1, i, s), fe.TensorSpec((2, 4), "float32"),
                   fe.TensorSpec((2,), "int64"), fe.TensorSpec((2, 2), "float32"),
                   backend=backend)
    x, s = np.zeros((2, 4), np.float32), np.ones((2, 2), np.float32)
    np.testing.assert_array_equal(f(x, np.array([3, 3]), s), [[0, 0, 0, 2]] * 2)
    with pytest.raises(RuntimeDataError, match="index -1 is out of range"):
        f(x, np.array([0, -1]), s)
    with pytest.raises(RuntimeError, match="out of bounds"):
        torch.zeros(2, 4).index_add(1, torch.tensor([0, -1]), torch.ones(2, 2))


def _inplace_chain(x, clone):
    y = clone(x)
    y.add_(1).mul_(2)
    y.clamp_(-1, 3)
    row = y[0]
    row.zero_()                  # through a view: its base follows
    y += x
    y -= 0.25
    y *= x
    y[1:].masked_fill_(y[1:] > 0.2, 0.5)
    return y.sigmoid_()


@pytest.mark.parametrize("backend", BACKENDS)
def test_inplace_methods_and_operators_as_torch(backend):
    """add_, mul_, clamp_, zero_ (through a view), +=, -=, *=, masked_fill_ on a slice,
    sigmoid_: torch's values and gradients (a traced tensor is rebound, not overwritten)."""
    check_function(lambda x: _inplace_chain(x, lambda t: t * 1.0),
                   lambda x: _inplace_chain(x, torch.clone), [X[0]], [0], backend)


def test_inplace_keeps_the_dtype_and_shape_as_torch():
    h = ig.tensor(np.ones(3, np.float16))
    h += ig.tensor(np.full(3, 0.1, np.float32))
    th = torch.ones(3, dtype=torch.float16)
    th += torch.full((3,), 0.1)
    assert h.dtype == "float16"
    np.testing.assert_array_equal(h.numpy(), th.numpy())
    i = ig.tensor(np.arange(3))
    with pytest.raises(RuntimeError, match="can't be cast"):
        i += 2.5
    with pytest.raises(RuntimeError, match="doesn't match the broadcast shape"):
        ig.tensor(np.zeros(3)).add_(np.ones((2, 3)))
    z = ig.tensor(np.arange(4.0))
    assert z.fill_(7).numpy().tolist() == [7.0] * 4
    assert z.copy_(np.array([1, 2, 3, 4])).numpy().tolist() == [1.0, 2.0, 3.0, 4.0]


def test_assigning_a_value_an_integer_tensor_cannot_hold_is_refused_as_torch():
    y = ig.tensor(np.zeros(4, np.int32))
    with pytest.raises(ValueError, match="cannot be converted to type int32"):
        y[1:3] = 1e10
    with pytest.raises(ValueError, match="cannot be converted to type int32"):
        y.masked_fill(np.array([True, False, False, False]), 1e10)
    y[1:3] = 7.9                                   # truncated, as torch's
    assert y.numpy().tolist() == [0, 7, 7, 0]
    np.testing.assert_array_equal(F.clamp(np.array([1, 2]), max=1e20).numpy(), [1.0, 2.0])
