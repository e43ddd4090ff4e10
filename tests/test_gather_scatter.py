"""Gather and scatter by integer tensors (irgraph/ops/gather.py, frontend/functional_index.py)
against torch on every backend: values and gradients of gather, index_select,
take_along_dim, x[idx] and embeddings (float32 on reference, LLVM and Triton; float64 on
reference and LLVM), repeated and negative indices, padding_idx, out-of-range errors, and
the thread-safety of LLVM's scatter-add (threads=2, many duplicates) against np.add.at."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import irgraph.backends as backends
import irgraph.frontend as fe
from irgraph.frontend import F, TensorSpec, nn
from irgraph import Graph, TensorType
from irgraph.errors import RuntimeDataError

BACKENDS32 = ["reference", "llvm", "triton"]
BACKENDS64 = ["reference", "llvm"]
RNG = np.random.default_rng(7)
X = RNG.standard_normal((5, 6, 4))


def _tol(dtype):
    return dict(rtol=1e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)


# (name, our function of (x, idx), torch's, index array, extent of the indexed axis).
# gather and index_select take [0, n) as torch's (a negative index is an error:
# test_negative_or_too_large_indices_are_errors_where_torch_raises); x[idx] and
# take_along_dim wrap a negative index once, and torch's take_along_dim, which rejects
# negatives, gets those indices wrapped (idx % extent).
CASES = [
    ("gather_dim1", lambda x, i: F.gather(x, 1, i), lambda x, i: torch.gather(x, 1, i),
     (np.array([[[0, 5, 5, 1]] * 3] * 5) + np.arange(3)[None, :, None]) % 6, 6),
    ("method_gather_neg_dim", lambda x, i: x.gather(-1, i),
     lambda x, i: torch.gather(x, -1, i), RNG.integers(0, 4, (2, 6, 7)), 4),
    ("index_select", lambda x, i: F.index_select(x, 1, i),
     lambda x, i: torch.index_select(x, 1, i), np.array([5, 0, 5, 3, 2]), 6),
    ("take_along_dim_bcast", lambda x, i: F.take_along_dim(x, i, 2),
     lambda x, i: torch.take_along_dim(x, i, 2), RNG.integers(-4, 4, (1, 6, 3)), 4),
    ("take_along_dim_flat", lambda x, i: F.take_along_dim(x, i),
     lambda x, i: torch.take_along_dim(x, i), RNG.integers(-120, 120, (9,)), 120),
    ("getitem_rows", lambda x, i: x[i], lambda x, i: x[i], np.array([[4, 0], [4, -5]]), None),
    ("getitem_cols", lambda x, i: x[:, i], lambda x, i: x[:, i], np.array([3, 3, -6, 0]),
     None),
    ("getitem_ellipsis_int", lambda x, i: x[..., 1, i], lambda x, i: x[..., 1, i],
     np.array([[0, 1], [-1, -1]]), None),
]


def _torch_value_grad(tfn, x: np.ndarray, idx: np.ndarray):
    """torch's output and the gradient of sum(out * ct) for a fixed random ct."""
    xt = torch.tensor(x, requires_grad=True)
    out = tfn(xt, torch.tensor(idx))
    ct = np.random.default_rng(1).standard_normal(tuple(out.shape)).astype(x.dtype)
    (out * torch.tensor(ct)).sum().backward()
    return out.detach().numpy(), xt.grad.numpy(), ct


def _check_case(name, fn, tfn, idx, n, dtype, backend):
    x = X.astype(dtype)
    idx = np.asarray(idx, np.int64)
    want_out, want_grad, ct = _torch_value_grad(tfn, x, idx if n is None else idx % n)

    def loss(x, i, c):
        return (fn(x, i) * c).sum()

    specs = (TensorSpec(x.shape, dtype.__name__), TensorSpec(idx.shape, "int64"),
             TensorSpec(ct.shape, dtype.__name__))
    out = fe.compile(fn, *specs[:2], backend=backend)(x, idx)
    value, grad = fe.value_and_grad(loss, *specs, wrt=0, backend=backend)(x, idx, ct)
    np.testing.assert_allclose(out, want_out, **_tol(dtype), err_msg=name)
    np.testing.assert_allclose(grad, want_grad, **_tol(dtype), err_msg=name)
    assert out.dtype == dtype and grad.dtype == dtype


@pytest.mark.parametrize("backend", BACKENDS32)
def test_values_and_gradients_match_torch_float32(backend):
    for case in CASES:
        _check_case(*case, np.float32, backend)


@pytest.mark.parametrize("backend", BACKENDS64)
def test_values_and_gradients_match_torch_float64(backend):
    for case in CASES[:6]:
        _check_case(*case, np.float64, backend)


@pytest.mark.parametrize("backend", BACKENDS32)
def test_embedding_with_padding_idx_matches_torch(backend):
    """Forward and weight gradient as torch's nn.Embedding, repeated indices accumulating,
    the padding row (given as a negative index) getting no gradient."""
    fe.manual_seed(3)
    emb = nn.Embedding(10, 4, padding_idx=-2)
    assert emb.padding_idx == 8 and not emb.weight.data[8].any()
    idx = np.array([[1, 8, 3, 1], [8, 9, 1, 0]])
    ct = RNG.standard_normal((2, 4, 4)).astype(np.float32)
    ref = torch.nn.Embedding(10, 4, padding_idx=-2)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(emb.weight.data))
    (ref(torch.tensor(idx)) * torch.tensor(ct)).sum().backward()

    def loss(i, c):
        return (emb(i) * c).sum()
    g = fe.grad(loss, TensorSpec((2, 4), "int64"), TensorSpec((2, 4, 4)), model=emb,
                backend=backend)(idx, ct)
    np.testing.assert_allclose(g["weight"], ref.weight.grad.numpy(), rtol=1e-6, atol=1e-6)
    assert not g["weight"][8].any() and g["weight"][1].any()
    out = fe.compile(emb, TensorSpec((2, 4), "int64"), backend=backend)(idx)
    np.testing.assert_array_equal(out, ref(torch.tensor(idx)).detach().numpy())


def test_embedding_init_and_refusals():
    fe.manual_seed(0)
    w = nn.Embedding(2000, 8).weight.data
    assert w.dtype == np.float32 and abs(w.mean()) < 0.03 and abs(w.std() - 1) < 0.03
    with pytest.raises(NotImplementedError, match="max_norm"):
        nn.Embedding(10, 3, max_norm=1.0)
    with pytest.raises(NotImplementedError, match="max_norm"):
        fe.trace(lambda i, w: F.embedding(i, w, max_norm=2.0), TensorSpec((3,), "int64"),
                 TensorSpec((10, 3)))
    with pytest.raises(ValueError, match="padding_idx"):
        nn.Embedding(10, 3, padding_idx=10)
    with pytest.raises(TypeError, match="int32 or int64"):
        fe.trace(lambda x, i: x[i], TensorSpec((4,)), TensorSpec((2,)))


@pytest.mark.parametrize("backend", BACKENDS32)
def test_out_of_range_index_is_a_clear_error(backend):
    """x[i]: -n is the first entry (wrapped once); -n-1 and n fail at call time, naming the
    op, the index and the extent, on every backend (forward gather and backward scatter)."""
    f = fe.compile(lambda x, i: x[i], TensorSpec((5, 3)),
                   TensorSpec((3,), "int64"), backend=backend)
    x = X[:, :3, 0].astype(np.float32)
    np.testing.assert_array_equal(f(x, np.array([-5, 4, 0])), x[[0, 4, 0]])
    for bad in (5, -6):
        with pytest.raises(RuntimeDataError, match=f"index {bad} is out of range.*size 5"):
            f(x, np.array([0, bad, 1]))
    g = Graph("scatter")
    z = g.add_input("z", TensorType((4, 3), "float32"))
    i = g.add_input("i", TensorType((2, 3), "int32"))
    s = g.add_input("s", TensorType((2, 3), "float32"))
    g.set_outputs([g.op("scatter_add", z, i, s, axis=0)])
    exe = backends.compile(g, backend)
    with pytest.raises(RuntimeDataError, match="index 4 is out of range"):
        exe(np.zeros((4, 3), np.float32), np.array([[0, 1, 4], [0, 0, 0]], np.int32),
            np.ones((2, 3), np.float32))


def _scatter_graph(op: str, x_shape, idx_shape, src_shape, axis: int) -> Graph:
    g = Graph(op)
    x = g.add_input("x", TensorType(x_shape, "float32"))
    i = g.add_input("i", TensorType(idx_shape, "int64"))
    s = g.add_input("s", TensorType(src_shape, "float32"))
    g.set_outputs([g.op(op, x, i, s, axis=axis)])
    return g


@pytest.mark.parametrize("threads", [1, 2])
def test_llvm_scatter_add_under_threads_equals_np_add_at(threads):
    """Thousands of additions into few rows: threads own disjoint outputs and add in index
    order, so the result equals np.add.at's bit for bit (no lost or reordered updates)."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((7, 64)).astype(np.float32)
    idx = rng.integers(-7, 7, 3000)
    src = rng.standard_normal((3000, 64)).astype(np.float32)
    want = x.copy()
    np.add.at(want, np.where(idx < 0, idx + 7, idx), src)
    got = backends.compile(_scatter_graph("index_add", x.shape, idx.shape, src.shape, 0),
                           "llvm", threads=threads)(x, idx, src)[0]
    np.testing.assert_array_equal(got, want)

    xs = rng.standard_normal((40, 5)).astype(np.float32)
    ix = rng.integers(0, 5, (40, 300))
    sv = rng.standard_normal((40, 300)).astype(np.float32)
    want = xs.copy()
    np.add.at(want, (np.arange(40)[:, None], ix), sv)
    got = backends.compile(_scatter_graph("scatter_add", xs.shape, ix.shape, sv.shape, 1),
                           "llvm", threads=threads)(xs, ix, sv)[0]
    np.testing.assert_array_equal(got, want)


def test_triton_scatters_equal_np_add_at():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((6, 3, 5)).astype(np.float32)
    idx = rng.integers(-3, 3, (4, 2))
    src = rng.standard_normal((6, 4, 2, 5)).astype(np.float32)
    want = x.copy()
    np.add.at(want, (slice(None), np.where(idx < 0, idx + 3, idx).ravel()),
              src.reshape(6, 8, 5))
    got = backends.compile(_scatter_graph("index_add", x.shape, idx.shape, src.shape, 1),
                           "triton")(x, idx, src)[0]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("backend", BACKENDS32)
def test_scatter_add_and_index_add_functions_match_torch(backend):
    x = X[:4, :5, 0].astype(np.float32)
    idx = np.array([[0, 4, 4], [1, 4, 0], [2, 2, 2]])
    src = RNG.standard_normal((3, 4)).astype(np.float32)
    want = torch.tensor(x).scatter_add(1, torch.tensor(idx), torch.tensor(src)).numpy()
    f = fe.compile(lambda a, i, s: F.scatter_add(a, 1, i, s), TensorSpec(x.shape),
                   TensorSpec(idx.shape, "int64"), TensorSpec(src.shape), backend=backend)
    np.testing.assert_allclose(f(x, idx, src), want, rtol=1e-6, atol=1e-6)
    rows = np.array([3, 0, 3])
    want = torch.tensor(x).index_add(0, torch.tensor(rows), torch.tensor(x[:3]),
                                     alpha=2).numpy()
    f = fe.compile(lambda a, i: a.index_add(0, i, a[:3], alpha=2), TensorSpec(x.shape),
                   TensorSpec((3,), "int64"), backend=backend)
    np.testing.assert_allclose(f(x, rows), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS32)
def test_an_add_into_a_base_leaves_the_base_itself_alone(backend):
    """index_add / scatter_add write a copy of their base: a table looked up twice gets each
    lookup's gradient once (both scatter into zeros the pipeline keeps as one value), and a
    base read again after the add still holds its own values."""
    w = np.arange(12, dtype=np.float64).reshape(4, 3) / 10
    i1, i2 = np.array([0, 1]), np.array([2, 3])
    specs = (TensorSpec((2,), "int64"), TensorSpec((2,), "int64"), TensorSpec((4, 3), "float64"))
    got = fe.grad(lambda a, b, w: F.sum(F.embedding(a, w) ** 2) + F.sum(F.embedding(b, w) * 3.0),
                  *specs, wrt=2, backend=backend)(i1, i2, w)
    tw = torch.tensor(w, requires_grad=True)
    ((torch.nn.functional.embedding(torch.tensor(i1), tw) ** 2).sum()
     + (torch.nn.functional.embedding(torch.tensor(i2), tw) * 3.0).sum()).backward()
    np.testing.assert_allclose(got, tw.grad.numpy(), rtol=1e-12)
    for op, idx in (("index_add", np.array([0, 2])), ("scatter_add", np.array([[0, 2], [2, 1]]))):
        g = Graph(op)
        i = g.add_input("i", TensorType(idx.shape, "int64"))
        src = g.add_input("src", TensorType((2, 2), "float64"))
        x = g.add_input("x", TensorType((3, 2), "float64"))
        g.set_outputs([g.op("add", g.op(op, x, i, src, axis=0), x)])
        args = [idx, np.ones((2, 2)), np.arange(6.0).reshape(3, 2)]
        want = backends.compile(g, "reference")(*args)[0]
        np.testing.assert_array_equal(backends.compile(g, backend)(*args)[0], want)
        base = torch.arange(6.0, dtype=torch.float64).reshape(3, 2)
        t = (base.index_add(0, torch.tensor(idx), torch.ones(2, 2, dtype=torch.float64))
             if op == "index_add" else
             base.scatter_add(0, torch.tensor(idx), torch.ones(2, 2, dtype=torch.float64)))
        np.testing.assert_array_equal(want, (t + base).numpy())


# x[i, j]: several integer tensors index together (torch's advanced indexing)
SEVERAL = {
    "adjacent": lambda t, i, j: t[i, j],
    "after_slice": lambda t, i, j: t[:, i, j],
    "apart": lambda t, i, j: t[i, :, j],             # apart: their dimensions go first
    "int_between": lambda t, i, j: t[i, 1, j],       # ints index first (torch), then adjacent
    "ellipsis_none": lambda t, i, j: t[None, ..., i, j],
    "broadcast": lambda t, i, j: t[i[:, None], j[None, :]],
    "three": lambda t, i, j: t[i, j, i],
    "step_slice": lambda t, i, j: t[::2, i, 1:, j],
}


@pytest.mark.parametrize("backend", BACKENDS32)
@pytest.mark.parametrize("case", sorted(SEVERAL))
def test_several_tensor_indices_as_torch(case, backend):
    """Values and the gradient of x (repeated positions accumulate) against torch, with
    negative indices; the indices are traced inputs."""
    f = SEVERAL[case]
    x = RNG.standard_normal((5, 4, 6, 3)).astype(np.float32)
    i = np.array([0, -1, 2, 0], np.int64)
    j = np.array([2, 1, -3, 2], np.int64)
    ct = None
    tx = torch.tensor(x, requires_grad=True)
    want = f(tx, torch.tensor(i), torch.tensor(j))
    ct = RNG.standard_normal(tuple(want.shape)).astype(np.float32)
    (want * torch.tensor(ct)).sum().backward()
    specs = (TensorSpec(x.shape), TensorSpec(i.shape, "int64"), TensorSpec(j.shape, "int64"))
    out = fe.compile(f, *specs, backend=backend)(x, i, j)
    np.testing.assert_array_equal(out, want.detach().numpy())
    g = fe.grad(lambda t, a, b, c: (f(t, a, b) * c).sum(), *specs, TensorSpec(ct.shape),
                wrt=[0], backend=backend)(x, i, j, ct)
    g = g[0] if isinstance(g, (tuple, list)) else g
    np.testing.assert_allclose(g, tx.grad.numpy(), rtol=1e-6, atol=1e-6)


def test_picking_each_rows_label_as_torch():
    """The usual ``logp[arange(n), y]``."""
    logits = RNG.standard_normal((6, 5)).astype(np.float32)
    y = np.array([4, 0, 2, 2, 1, 3])
    f = lambda t, lab: -F.log_softmax(t, dim=1)[fe.arange(6), lab].mean()
    got = fe.compile(f, TensorSpec((6, 5)), TensorSpec((6,), "int64"), backend="llvm")(logits, y)
    want = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(y))
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-6)


def test_several_indices_out_of_range_name_the_axis():
    with pytest.raises(Exception, match="index 7 is out of range for an axis of size 4"):
        fe.compile(lambda t, i: t[i, i], TensorSpec((9, 4)), TensorSpec((2,), "int64"),
                   backend="reference")(RNG.standard_normal((9, 4)).astype(np.float32),
                                        np.array([1, 7]))


@pytest.mark.parametrize("backend", BACKENDS32)
def test_masked_assignment_as_torch(backend):
    """``x[mask] = scalar`` over the whole shape and ``y[row_mask] = row`` over the leading
    axis (the row broadcast to every selected row): values, and the gradients of x (zero
    where overwritten) and of the row (summed over the selected rows), against torch."""
    def f(x, m, r):
        x = x * 1
        x[m] = -1.5
        y = x * 2
        y[m[:, 0]] = r
        return (y * y).sum() + x.sum(), x, y
    x = RNG.standard_normal((5, 4)).astype(np.float32)
    m = RNG.random((5, 4)) > 0.5
    m[:2, 0], m[2:4, 0] = True, False
    r = RNG.standard_normal(4).astype(np.float32)
    tx, tr = torch.tensor(x, requires_grad=True), torch.tensor(r, requires_grad=True)
    want = f(tx, torch.tensor(m), tr)
    want[0].backward()
    specs = (TensorSpec((5, 4)), TensorSpec((5, 4), "bool"), TensorSpec((4,)))
    got = fe.compile(f, *specs, backend=backend)(x, m, r)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-6, atol=1e-6)
    gx, gr = fe.grad(lambda *a: f(*a)[0], *specs, wrt=[0, 2], backend=backend)(x, m, r)
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(gr, tr.grad.numpy(), rtol=1e-6, atol=1e-6)


def test_masked_assignment_refusals_are_clear():
    def assign(index, value):
        def f(x):
            x = x * 1
            x[index] = value
            return x
        return f
    spec = TensorSpec((3, 4))
    with pytest.raises(IndexError, match="does not match the indexed tensor's leading axes"):
        fe.trace(assign(np.ones((4,), bool), 0.0), spec)
    with pytest.raises(IndexError, match="known only at run time"):
        fe.trace(assign(np.ones((3,), bool), np.ones((3, 4), np.float32)), spec)
    with pytest.raises(IndexError, match="integer tensor indices"):
        fe.trace(assign(np.array([0, 2]), 0.0), spec)


@pytest.mark.parametrize("backend", BACKENDS32)
def test_embedding_refuses_negative_indices_as_torch(backend):
    """torch's embedding takes indices in [0, num) only (take, x[i], allow -num..-1)."""
    emb = nn.Embedding(3, 2)
    f = fe.compile(emb, TensorSpec((2,), "int64"), backend=backend)
    np.testing.assert_array_equal(f(np.array([2, 0])), emb.weight.data[[2, 0]])
    with pytest.raises(RuntimeDataError, match=r"index -1 is out of range .*\[0, 3\)"):
        f(np.array([0, -1]))
    g = fe.compile(lambda w, i: w[i], TensorSpec((3, 2)), TensorSpec((2,), "int64"),
                   backend=backend)
    np.testing.assert_array_equal(g(emb.weight.data, np.array([0, -1])),
                                  emb.weight.data[[0, -1]])


SCATTER_X = RNG.standard_normal((3, 5))
SCATTER_SRC = RNG.standard_normal((3, 3))     # (torch's scatter_reduce backward needs index's shape)
UNIQUE = np.array([[0, 1, 2], [4, 3, 0], [2, 0, 1]])           # distinct along dim 1
REPEATED = np.array([[0, 1, 1], [4, 4, 4], [2, 0, 2]])
ROWS = np.array([[0, 2, 1, 0, 2], [1, 0, 2, 2, 0]])


@pytest.mark.parametrize("backend", BACKENDS64)
def test_scatter_and_scatter_reduce_match_torch(backend):
    """scatter (src, a value, reduce='add') and scatter_reduce sum/mean with and without
    the input's own value: values and the gradients of input and src."""
    from _torch_twins import check_function
    check_function(
        lambda x, s: (F.scatter(x, 1, UNIQUE, s), x.scatter(0, ROWS, 2.5),
                      F.scatter(x, 1, REPEATED, s, reduce="add"),
                      F.scatter_reduce(x, 1, REPEATED, s, "sum"),
                      F.scatter_reduce(x, 1, REPEATED, s, "mean", include_self=False),
                      x.scatter_reduce(1, REPEATED, s, "mean")),
        lambda x, s: (torch.scatter(x, 1, torch.tensor(UNIQUE), s),
                      x.scatter(0, torch.tensor(ROWS), 2.5),
                      torch.scatter_add(x, 1, torch.tensor(REPEATED), s),
                      torch.scatter_reduce(x, 1, torch.tensor(REPEATED), s, "sum"),
                      torch.scatter_reduce(x, 1, torch.tensor(REPEATED), s, "mean",
                                           include_self=False),
                      x.scatter_reduce(1, torch.tensor(REPEATED), s, "mean")),
        [SCATTER_X, SCATTER_SRC], [0, 1], backend)


def test_integer_scatter_reduce_mean_floors_as_torch():
    x = np.random.default_rng(3).integers(-9, 9, (3, 5))
    s = np.random.default_rng(4).integers(-9, 9, (3, 4))
    for inc in (True, False):
        got = F.scatter_reduce(x, 1, REPEATED, s, "mean", include_self=inc).numpy()
        want = torch.scatter_reduce(torch.tensor(x), 1, torch.tensor(REPEATED), torch.tensor(s),
                                    "mean", include_self=inc).numpy()
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    with pytest.raises(NotImplementedError, match="amax"):
        F.scatter_reduce(x, 1, REPEATED, s, "amax")


BAG_INPUT = np.array([1, 2, 4, 5, 4, 3, 2, 9, 0, 0])


@pytest.mark.parametrize("backend", BACKENDS32)
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_embedding_bag_matches_torch(mode, backend):
    """F.embedding_bag over a 1-D input cut by offsets (an empty bag, the last offset
    included or not, padding entries left out) and a 2-D input, with per-sample weights in
    sum mode: values and the weight's gradient."""
    from _torch_twins import check_function
    w = RNG.standard_normal((10, 3))
    psw = RNG.standard_normal(10)
    rows = np.array([[1, 2, 4], [4, 3, 4]])

    def ours(w, psw):
        extra = dict(per_sample_weights=psw) if mode == "sum" else {}
        return (F.embedding_bag(BAG_INPUT, w, np.array([0, 3, 3, 7]), mode=mode, **extra),
                F.embedding_bag(BAG_INPUT, w, np.array([0, 4, 10]), mode=mode,
                                include_last_offset=True, padding_idx=4),
                F.embedding_bag(rows, w, mode=mode, padding_idx=4))

    def theirs(w, psw):
        f = torch.nn.functional.embedding_bag
        extra = dict(per_sample_weights=psw) if mode == "sum" else {}
        t = torch.tensor
        return (f(t(BAG_INPUT), w, t([0, 3, 3, 7]), mode=mode, **extra),
                f(t(BAG_INPUT), w, t([0, 4, 10]), mode=mode, include_last_offset=True,
                  padding_idx=4),
                f(t(rows), w, mode=mode, padding_idx=4))
    check_function(ours, theirs, [w, psw], [0, 1] if mode == "sum" else [0], backend)


def test_embedding_bag_module_and_refusals_as_torch():
    fe.manual_seed(0)
    ours = nn.EmbeddingBag(10, 3, mode="sum", padding_idx=0)
    assert np.all(ours.weight.data[0] == 0)
    theirs = torch.nn.EmbeddingBag(10, 3, mode="sum", padding_idx=0)
    theirs.load_state_dict({"weight": torch.from_numpy(ours.weight.data)})
    assert repr(ours) == repr(theirs)
    offsets = np.array([0, 5])
    got = ours(BAG_INPUT, offsets).numpy()
    want = theirs(torch.tensor(BAG_INPUT), torch.tensor(offsets)).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6)
    with pytest.raises(ValueError, match="per_sample_weights is only supported"):
        F.embedding_bag(BAG_INPUT, ours.weight, offsets, mode="mean",
                        per_sample_weights=np.ones(10, np.float32))
    with pytest.raises(ValueError, match="offsets has to be None"):
        F.embedding_bag(np.zeros((2, 3), np.int64), ours.weight, offsets)
    with pytest.raises(ValueError, match="needs offsets"):
        F.embedding_bag(BAG_INPUT, ours.weight)


def test_boolean_masks_select_eagerly_and_are_refused_in_a_trace():
    """Outside a trace x[mask] is torch's (numpy's) boolean selection, alone or beside
    slices; in a trace the result's shape would depend on the values: a clear error."""
    import irgraph as ig
    x = np.arange(24.0).reshape(2, 3, 4)
    t = torch.tensor(x)
    m = x[:, :, 0] > 5                                            # (2, 3)
    cols = np.array([True, False, False, True])
    for ours, theirs in ((ig.tensor(x)[ig.tensor(x) > 10], t[t > 10]),
                         (ig.tensor(x)[m], t[torch.tensor(m)]),
                         (ig.tensor(x)[1, :, cols], t[1, :, torch.tensor(cols)]),
                         (ig.tensor(x)[m, 2:], t[torch.tensor(m), 2:]),
                         (ig.tensor(x)[None, 1, cols[:3]], t[None, 1, torch.tensor(cols[:3])])):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    with pytest.raises(IndexError, match=r"boolean mask\(s\) of shape \[3\]"):
        ig.tensor(x)[np.array([True, False, True])]
    with pytest.raises(TypeError, match="not in a trace"):
        fe.compile(lambda a: a[a > 0], TensorSpec((3,), "float32"))
