"""In-place donation in the LLVM backend: a donated output written straight into its
argument's buffer (no copy after the run), with the same results as the copying path.

Alg. 8.1 (SGD, p' = p - lr g) and the Adam update (alg. 8.7) are the updates; every result
is compared with numpy's formula or with the reference interpreter run on copies.
"""
from __future__ import annotations

import numpy as np
import pytest

import irgraph.backends as backends
from irgraph.backends.llvm import NativeError
from irgraph import Graph, TensorType
from irgraph.interpreter import interpret

RNG = np.random.default_rng(3)
F = TensorType((33, 7))


def _sgd_graph(read_after: bool = False) -> Graph:
    """p' = sgd_update(p, g, lr) donated to p; optionally another output reads p after."""
    g = Graph("sgd")
    gr = g.add_input("g", F)
    lr = g.add_input("lr", TensorType(()))
    p = g.add_param("p", F)
    new = g.op("sgd_update", p, gr, lr)
    outs = [new, g.op("neg", p)] if read_after else [new]
    g.set_outputs(outs)
    g.donations[0] = 2
    return g


def _args():
    return (RNG.standard_normal(F.shape).astype(np.float32), np.array(0.5, np.float32),
            RNG.standard_normal(F.shape).astype(np.float32))


@pytest.mark.parametrize("threads", [1, 2])
def test_sgd_update_written_into_the_parameter(threads):
    """Alg. 8.1 in place: the caller's p holds p - lr g and is the returned array."""
    exe = backends.compile(_sgd_graph(), "llvm", threads=threads)
    assert exe.plan.inplace == {0: 2}
    gr, lr, p = _args()
    want = p - 0.5 * gr
    (out,) = exe(gr, lr, p)
    assert out is p
    np.testing.assert_allclose(p, want, rtol=1e-6)


def test_argument_read_after_the_update_is_not_overwritten():
    exe = backends.compile(_sgd_graph(read_after=True), "llvm", threads=2)
    assert not exe.plan.inplace
    gr, lr, p = _args()
    p0 = p.copy()
    new, neg = exe(gr, lr, p)
    np.testing.assert_allclose(new, p0 - 0.5 * gr, rtol=1e-6)
    np.testing.assert_array_equal(neg, -p0)


def test_read_only_parameter_is_left_alone():
    exe = backends.compile(_sgd_graph(), "llvm", threads=2)
    gr, lr, p = _args()
    p.flags.writeable = False
    p0 = p.copy()
    (out,) = exe(gr, lr, p)
    np.testing.assert_array_equal(p, p0)
    np.testing.assert_allclose(out, p0 - 0.5 * gr, rtol=1e-6)


def test_parameter_sharing_memory_with_another_argument():
    """g and p the same array: the update must read g before anything overwrites it."""
    exe = backends.compile(_sgd_graph(), "llvm", threads=2)
    _, lr, p = _args()
    p0 = p.copy()
    (out,) = exe(p, lr, p)
    np.testing.assert_allclose(out, p0 - 0.5 * p0, rtol=1e-6)
    np.testing.assert_allclose(p, p0 - 0.5 * p0, rtol=1e-6)


def test_adam_state_updated_in_place_matches_reference():
    """Alg. 8.7: p, s, r all written into their own buffers; vs the reference interpreter."""
    g = Graph("adam")
    gr = g.add_input("g", F)
    hyper = [g.add_input(n, TensorType(())) for n in ("lr", "b1", "b2", "eps", "t")]
    p, s, r = (g.add_param(n, F) for n in ("p", "s", "r"))
    new = g.add_node("adam_update", [p, gr, s, r, *hyper], {"convention": "torch"})
    g.set_outputs(list(new))
    g.donations.update({0: 6, 1: 7, 2: 8})
    exe = backends.compile(g, "llvm", threads=2)
    assert exe.plan.inplace == {0: 6, 1: 7, 2: 8}
    hv = [np.array(v, np.float32) for v in (1e-2, 0.9, 0.999, 1e-8, 3.0)]
    state = [RNG.standard_normal(F.shape).astype(np.float32) for _ in range(3)]
    state[2] = np.abs(state[2])
    gv = RNG.standard_normal(F.shape).astype(np.float32)
    want = interpret(g, [gv, *hv, *(a.copy() for a in state)])
    got = exe(gv, *hv, *state)
    for a, o, w in zip(state, got, want):
        assert o is a
        np.testing.assert_allclose(o, w, rtol=1e-5, atol=1e-6)


def test_failed_step_leaves_the_parameter_unchanged():
    """An out-of-range class index found before the update: the error is raised and the
    parameter keeps its old values (the in-place node does not run)."""
    g = Graph("bad")
    logits = g.add_input("logits", TensorType((4, 3)))
    target = g.add_input("target", TensorType((4,), "int64"))
    lr = g.add_input("lr", TensorType(()))
    p = g.add_param("p", F)
    loss = g.op("nll_loss", g.op("log_softmax", logits, axis=1), target)
    g.set_outputs([g.op("sgd_update", p, g.op("full", shape=F.shape, value=1.0), lr), loss])
    g.donations[0] = 3
    exe = backends.compile(g, "llvm", threads=2)
    assert exe.plan.inplace == {0: 3}
    p0 = RNG.standard_normal(F.shape).astype(np.float32)
    p_arr = p0.copy()
    with pytest.raises(NativeError):
        exe(np.zeros((4, 3), np.float32), np.array([0, 5, 1, 2]), np.array(0.5, np.float32),
            p_arr)
    np.testing.assert_array_equal(p_arr, p0)


def test_call_into_with_an_in_place_output():
    """call_into: the caller's output buffer receives p - lr g and so does the donated p."""
    exe = backends.compile(_sgd_graph(), "llvm", threads=2)
    gr, lr, p = _args()
    want = p - 0.5 * gr
    out = np.zeros(F.shape, np.float32)
    res = exe.call_into([out], gr, lr, p)
    np.testing.assert_allclose(out, want, rtol=1e-6)
    np.testing.assert_allclose(p, want, rtol=1e-6)
    np.testing.assert_allclose(res[0], want, rtol=1e-6)
