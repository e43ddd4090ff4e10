"""The LLVM lowering of ``scan`` (fig. 10.2), whose carries ping-pong between two buffers:
odd and even step counts, saved states (save_every), reverse, masks, two carries, integer
carries, nested scans, one and two threads — each against the reference interpreter or the
numpy loop of eq. 10.8-10.9."""
from __future__ import annotations

import numpy as np
import pytest

import irgraph.backends as backends
from irgraph import Graph, TensorType
from irgraph.interpreter import interpret
from tests.samples.recurrence import counter, nested, two_carries
from tests.helpers import elman_args as args
from tests.helpers import elman_graph, numpy_elman


def llvm(graph: Graph, inputs, threads: int):
    return backends.compile(graph, "llvm", threads=threads)(*inputs)


def same(got, want, rtol=1e-12):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=rtol, atol=1e-14)


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("save_every", [0, 1, 2, 3])
@pytest.mark.parametrize("threads", [1, 2])
def test_elman_odd_even_steps_and_saved_states(steps, save_every, threads):
    """Final carry, every y_t and the saved entering carries, for both step parities."""
    g = elman_graph(steps=steps, save_every=save_every)
    a = args(seed=steps, steps=steps)
    got = llvm(g, a, threads)
    same(got, interpret(g, a))
    h, ys = numpy_elman(*a)
    np.testing.assert_allclose(got[0], h, rtol=1e-12)
    np.testing.assert_allclose(got[1], ys, rtol=1e-12)


@pytest.mark.parametrize("steps", [3, 4])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_reverse_and_masked(steps, reverse, masked):
    g = elman_graph(steps=steps, reverse=reverse, masked=masked, save_every=2)
    a = args(seed=7, steps=steps, masked=masked)
    for threads in (1, 2):
        same(llvm(g, a, threads), interpret(g, a))


def _scan_graph(body: Graph, carries, seqs, consts, **attrs) -> Graph:
    g = Graph("s")
    vals = [g.add_input(f"c{i}", t) for i, t in enumerate(carries)]
    vals += [g.add_input(f"x{i}", t) for i, t in enumerate(seqs)]
    vals += [g.add_param(f"w{i}", t) for i, t in enumerate(consts)]
    g.set_outputs(g.add_node("scan", vals, dict(body=body, num_carry=len(carries),
                                                num_seq=len(seqs), **attrs)))
    return g


@pytest.mark.parametrize("steps", [1, 2, 5, 6])
def test_two_carries_two_outputs(steps):
    f = "float64"
    g = _scan_graph(two_carries(2, 3), [TensorType((2, 3), f)] * 2,
                    [TensorType((steps, 2, 3), f)], [TensorType((3, 3), f)], save_every=2)
    r = np.random.default_rng(steps)
    a = [r.standard_normal(v.type.shape) for v in g.arguments]
    for threads in (1, 2):
        same(llvm(g, a, threads), interpret(g, a))


@pytest.mark.parametrize("steps", [3, 4])
def test_integer_carry_counts_steps(steps):
    g = _scan_graph(counter(3), [TensorType((3,), "float64"), TensorType((), "int64")], [],
                    [TensorType((3, 3), "float64")], length=steps, save_every=1)
    a = [np.ones(3), np.array(0, np.int64), np.random.default_rng(0).standard_normal((3, 3))]
    got = llvm(g, a, 2)
    same(got, interpret(g, a))
    assert int(got[1]) == steps


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_nested_scans(steps):
    f = "float64"
    g = _scan_graph(nested(2, 3, 2, inner=3), [TensorType((2, 3), f)],
                    [TensorType((steps, 3, 2, 2), f)],
                    [TensorType((3, 3), f), TensorType((2, 3), f)])
    r = np.random.default_rng(steps)
    a = [r.standard_normal(v.type.shape) for v in g.arguments]
    for threads in (1, 2):
        same(llvm(g, a, threads), interpret(g, a))


def test_float32_rnn_64_steps_against_numpy():
    """Eq. 10.8-10.9 in float32 over 64 steps with the inline tanh, vs a float64 loop."""
    steps, b, h, d = 64, 8, 32, 16
    gr = Graph("rnn32")
    h0 = gr.add_input("h0", TensorType((b, h)))
    xs = gr.add_input("xs", TensorType((steps, b, d)))
    w = gr.add_param("W", TensorType((h, h)))
    u = gr.add_param("U", TensorType((d, h)))
    from tests.samples.recurrence import elman
    gr.set_outputs(gr.add_node("scan", [h0, xs, w, u], dict(
        body=elman(b, h, d, "float32"), num_carry=1, num_seq=1)))
    r = np.random.default_rng(1)
    a = [r.standard_normal((b, h)), r.standard_normal((steps, b, d)),
         r.standard_normal((h, h)) / 6, r.standard_normal((d, h)) / 4]
    a32 = [x.astype(np.float32) for x in a]
    want_h, want_ys = numpy_elman(*[x.astype(np.float64) for x in a32])
    for threads in (1, 2):
        got_h, got_ys = llvm(gr, a32, threads)
        np.testing.assert_allclose(got_h, want_h, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got_ys, want_ys, rtol=1e-4, atol=1e-5)
