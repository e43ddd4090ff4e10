"""The LLVM executable's repeat path: a call passing the previous clean call's very arrays
again (a training step's parameters and optimizer state) skips the per-argument work, and
must give what the full path gives in every case it does not cover.

The update is alg. 8.1 (SGD, p' = p - lr g, donated to p and written in place); each
result is checked against numpy's formula on copies, each error against the full path's.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

import irgraph.backends as backends
from irgraph import Graph, TensorType
from tests.test_llvm_inplace import F, _sgd_graph



def _sgd(extra_out: bool = False) -> Graph:
    """p' = sgd_update(p, g, lr) donated to p (test_llvm_inplace's graph), and s =
    sum(g + g) (a fresh output that does not read p)."""
    g = _sgd_graph()
    if extra_out:
        gr = g.inputs[0]
        g.set_outputs(list(g.outputs) + [g.op("sum", g.op("add", gr, gr), axis=(0, 1),
                                              keepdims=False)])
    return g


def _arrays(seed=0):
    r = np.random.default_rng(seed)
    return (r.standard_normal(F.shape).astype(np.float32), np.array(0.25, np.float32),
            r.standard_normal(F.shape).astype(np.float32))


@pytest.fixture(params=[1, 2])
def exe(request):
    e = backends.compile(_sgd(extra_out=True), "llvm", threads=request.param)
    assert e.plan.inplace == {0: 2}
    return e


def test_repeated_arrays_take_the_repeat_path_and_update_in_place(exe):
    """Alg. 8.1 ten times over the same arrays: p_k = p_0 - k lr g, in the caller's p."""
    g, lr, p = _arrays()
    want = p.astype(np.float64)
    for _ in range(10):
        new, s = exe(g, lr, p)
        want = want - 0.25 * g
        assert new is p
        np.testing.assert_allclose(s, 2 * g.astype(np.float64).sum(), rtol=1e-5)
    assert exe._memo is not None and exe._memo.objs[2] is p
    np.testing.assert_allclose(p, want, rtol=1e-5, atol=1e-6)


def test_fresh_outputs_are_new_arrays_each_call(exe):
    g, lr, p = _arrays()
    _, s1 = exe(g, lr, p)
    _, s2 = exe(g, lr, p)
    assert s1 is not s2 and not np.shares_memory(s1, s2)
    np.testing.assert_array_equal(s1, s2)


def test_new_input_arrays_are_read(exe):
    """A new g (another object, same type) each call: its values are used."""
    _, lr, p = _arrays()
    p0 = p.copy()
    total = np.zeros(F.shape, np.float64)
    for k in range(4):
        g = _arrays(seed=10 + k)[0]
        exe(g, lr, p)
        total += g
    np.testing.assert_allclose(p, p0 - 0.25 * total, rtol=1e-5, atol=1e-6)


def test_replaced_parameter_is_written_not_the_old_one(exe):
    g, lr, p = _arrays()
    exe(g, lr, p)
    exe(g, lr, p)
    old = p.copy()
    q = _arrays(seed=5)[2]
    q0 = q.copy()
    (new, _) = exe(g, lr, q)
    assert new is q
    np.testing.assert_allclose(q, q0 - 0.25 * g, rtol=1e-6)
    np.testing.assert_array_equal(p, old)


def test_input_that_views_the_written_parameter_is_read_before_the_write(exe):
    """g a view of p itself: p' = p - lr p, as numpy computes it on copies."""
    g, lr, p = _arrays()
    exe(g, lr, p)
    exe(g, lr, p)
    want = p.astype(np.float64) * (1 - 0.25)
    (new, s) = exe(p, lr, p)       # g is p: the write must not be seen by the read
    np.testing.assert_allclose(new, want, rtol=1e-6)
    np.testing.assert_allclose(s, 2 * (want / 0.75).sum(), rtol=1e-5)


def test_shape_changed_in_place_is_refused_as_by_the_full_path(exe):
    g, lr, p = _arrays()
    exe(g, lr, p)
    exe(g, lr, p)
    p.shape = (7, 33)
    with pytest.raises(ValueError, match=r"%p has shape \(7, 33\), expected \(33, 7\)"):
        exe(g, lr, p)
    p.shape = (33, 7)
    before = p.copy()
    exe(g, lr, p)
    np.testing.assert_allclose(p, before - 0.25 * g, rtol=1e-6)


def test_dtype_changed_in_place_is_refused_as_by_the_full_path(exe):
    g, lr, p = _arrays()
    exe(g, lr, p)
    exe(g, lr, p)
    g.dtype = np.int32
    with pytest.raises(TypeError, match=r"%g has dtype int32"):
        exe(g, lr, p)


def test_parameter_made_read_only_is_left_alone(exe):
    """The full path's rule: a read-only donated argument is not written; the new value is
    returned in a new array."""
    g, lr, p = _arrays()
    exe(g, lr, p)
    exe(g, lr, p)
    p.flags.writeable = False
    before = p.copy()
    (new, _) = exe(g, lr, p)
    assert new is not p
    np.testing.assert_array_equal(p, before)
    np.testing.assert_allclose(new, before - 0.25 * g, rtol=1e-6)


def test_wrong_argument_count_and_kind_after_repeats(exe):
    g, lr, p = _arrays()
    exe(g, lr, p)
    exe(g, lr, p)
    with pytest.raises(TypeError, match="takes 3 arguments"):
        exe(g, lr)
    with pytest.raises(TypeError, match="%g must be a numpy array"):
        exe(g.tolist(), lr, p)
    # a Python float for the rank-0 lr is accepted (the full path converts it)
    before = p.copy()
    exe(g, 0.5, p)
    np.testing.assert_allclose(p, before - 0.5 * g, rtol=1e-6)


def test_non_contiguous_input_is_read_as_the_full_path_reads_it(exe):
    g, lr, p = _arrays()
    exe(g, lr, p)
    exe(g, lr, p)
    wide = np.zeros((33, 14), np.float32)
    wide[:, ::2] = g
    view = wide[:, ::2]
    assert not view.flags.c_contiguous
    before = p.copy()
    exe(view, lr, p)
    np.testing.assert_allclose(p, before - 0.25 * g, rtol=1e-6)


def test_concurrent_callers_each_get_their_own_results():
    """Two Python threads calling one executable: every call's fresh output is its own."""
    e = backends.compile(_sgd(extra_out=True), "llvm", threads=2)
    errors = []

    def worker(seed):
        g, lr, p = _arrays(seed)
        try:
            for _ in range(200):
                before = p.copy()
                _, s = e(g, lr, p)
                np.testing.assert_allclose(p, before - 0.25 * g, rtol=1e-6)
                np.testing.assert_allclose(s, 2 * g.astype(np.float64).sum(), rtol=1e-5)
        except AssertionError as err:       # pragma: no cover - reported below
            errors.append(err)
    ts = [threading.Thread(target=worker, args=(s,)) for s in (1, 2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors[0]


def test_failed_repeat_call_raises_the_reference_error_and_keeps_arguments():
    """nll_loss with a class index out of range, after clean calls: the full path's error
    (the reference's class and text), the donated parameter unchanged."""
    g = Graph("step")
    x = g.add_input("x", TensorType((4, 3)))
    y = g.add_input("y", TensorType((4,), "int64"))
    p = g.add_param("p", TensorType((4, 3)))
    loss = g.op("nll_loss", g.op("log_softmax", g.op("add", x, p), axis=1), y)
    g.set_outputs([g.op("sgd_update", p, x, g.op("constant", value=np.float32(0.5))), loss])
    g.donations[0] = 2
    e = backends.compile(g, "llvm", threads=1)
    xs = np.ones((4, 3), np.float32)
    ps = np.zeros((4, 3), np.float32)
    ys = np.array([0, 1, 2, 0])
    e(xs, ys, ps)
    e(xs, ys, ps)
    assert e._memo is not None          # the bad call takes the repeat path
    before = ps.copy()
    bad = np.array([0, 1, 7, 0])
    with pytest.raises(Exception) as got:
        e(xs, bad, ps)
    with pytest.raises(type(got.value)) as ref:
        backends.compile(g, "reference")(xs, bad, ps.copy())
    assert str(got.value) == str(ref.value)
    np.testing.assert_array_equal(ps, before)
    e(xs, ys, ps)
    np.testing.assert_allclose(ps, before - 0.5, rtol=1e-6)


def _forward() -> Graph:
    """y = tanh(x @ w), s = sum(x): an inference graph (fresh outputs, no donation)."""
    g = Graph("fwd")
    x = g.add_input("x", TensorType((6, 5)))
    w = g.add_param("w", TensorType((5, 5)))
    g.set_outputs([g.op("tanh", g.op("matmul", x, w)), g.op("sum", x, axis=(0, 1))])
    return g


def _forward_want(x, w):
    return np.tanh(x.astype(np.float64) @ w), x.astype(np.float64).sum()


@pytest.mark.parametrize("threads", [1, 2])
def test_call_into_repeats_write_the_given_buffers(threads):
    e = backends.compile(_forward(), "llvm", threads=threads)
    r = np.random.default_rng(4)
    w = r.standard_normal((5, 5)).astype(np.float32)
    y, s = np.empty((6, 5), np.float32), np.empty((), np.float32)
    for k in range(5):
        x = r.standard_normal((6, 5)).astype(np.float32)
        got = e.call_into([y, s], x, w)
        assert got[0] is y and got[1] is s
        wy, ws = _forward_want(x, w)
        np.testing.assert_allclose(y, wy, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(s, ws, rtol=1e-5, atol=1e-5)
    assert e._memo is not None and e._memo.objs[1] is w


def _warm_forward(seed):
    """The forward graph after two call_into calls (a memo kept): (exe, x, w, y, s)."""
    e = backends.compile(_forward(), "llvm", threads=1)
    r = np.random.default_rng(seed)
    w = r.standard_normal((5, 5)).astype(np.float32)
    x = r.standard_normal((6, 5)).astype(np.float32)
    y, s = np.empty((6, 5), np.float32), np.empty((), np.float32)
    e.call_into([y, s], x, w)
    e.call_into([y, s], x, w)
    assert e._memo is not None
    return e, x, w, y, s


def test_call_into_buffer_overlapping_an_argument_gets_numpy_out_semantics():
    """out=[x itself, ...] after repeats: the result is computed aside and copied (the
    reads of x all happen before x is written), as numpy's out= behaves."""
    e, x, w, y, s = _warm_forward(5)
    wy, ws = _forward_want(x, w)
    e.call_into([x, s], x, w)
    np.testing.assert_allclose(x, wy, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s, ws, rtol=1e-5, atol=1e-5)


def test_call_into_non_contiguous_buffer_after_repeats():
    e, x, w, y, s = _warm_forward(6)
    wide = np.zeros((5, 6), np.float32).T          # (6, 5), Fortran order
    assert not wide.flags.c_contiguous
    e.call_into([wide, s], x, w)
    np.testing.assert_allclose(wide, _forward_want(x, w)[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="output buffer 0 is read-only"):
        y.flags.writeable = False
        e.call_into([y, s], x, w)
