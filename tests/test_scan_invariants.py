"""Loop-invariant nodes hoisted out of scan bodies (passes/scan_invariants.py, one of the
LLVM backend's passes): the same values as the reference interpreter on the graph as
written (float64, odd sizes, masked, reverse, nested, 1 and 2 threads), the invariant work
gone from the body, fallible nodes and per-step work left where they were."""
from __future__ import annotations

import numpy as np
import pytest

import irgraph.backends as backends
from irgraph import Graph, TensorType, verify
from irgraph.interpreter import interpret
from irgraph.passes.scan_invariants import scan_invariants
from tests.helpers import elman_graph

F64 = "float64"


def _cell(b: int, h: int, d: int) -> Graph:
    """h' = tanh(h @ (2 W)^T + x @ U) with W^T and 2 made inside the body (invariant), plus
    a per-step value (h * h) and a fallible node on invariants (take, whose index may be out
    of range) that must stay."""
    c = Graph("cell")
    hc = c.add_input("h", TensorType((b, h), F64))
    x = c.add_input("x", TensorType((b, d), F64))
    w = c.add_param("W", TensorType((h, h), F64))
    u = c.add_param("U", TensorType((d, h), F64))
    two = c.op("full", shape=(), value=2.0, dtype=F64)
    wt = c.op("transpose", c.op("mul", w, two), perm=(1, 0))
    idx = c.op("full", shape=(d,), value=d - 1, dtype="int64")
    u2 = c.op("take", u, idx, axis=0)             # fallible: stays in the body
    pre = c.op("add", c.op("matmul", hc, wt), c.op("matmul", x, c.op("sub", u, u2)))
    new = c.op("tanh", pre)
    c.set_outputs([new, c.op("mul", new, new)])
    return c


def _graph(steps=5, b=3, h=7, d=5, **attrs) -> Graph:
    return elman_graph(steps, b, h, d, cell=_cell, **attrs)


def _args(steps=5, b=3, h=7, d=5, masked=False, seed=0):
    r = np.random.default_rng(seed)
    a = [r.standard_normal((b, h)), r.standard_normal((steps, b, d))]
    if masked:
        a.append(r.random((steps, b)) > 0.4)
    return a + [0.3 * r.standard_normal((h, h)), r.standard_normal((d, h))]


def _body_ops(g: Graph) -> list[str]:
    (scan,) = [n for n in g.nodes if n.op == "scan"]
    return [n.op for n in scan.attrs["body"].nodes]


def test_invariant_nodes_leave_the_body_and_values_stay():
    g = _graph()
    r = verify(scan_invariants(g))
    ops = _body_ops(r)
    assert "transpose" not in ops and ops.count("mul") == 1       # only the per-step h * h
    assert "take" in ops and "full" in ops                         # fallible node, its constant
    outer = [n.op for n in r.nodes]
    assert outer.index("transpose") < outer.index("scan")
    a = _args()
    for got, want in zip(interpret(r, a), interpret(g, a)):
        np.testing.assert_array_equal(got, want)


def test_nothing_to_hoist_returns_the_graph_itself():
    g = _graph()
    once = scan_invariants(g)
    assert scan_invariants(once) is once


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("attrs", [{}, {"masked": True}, {"reverse": True},
                                   {"masked": True, "reverse": True, "save_every": 2}])
def test_llvm_matches_the_reference_on_the_graph_as_written(threads, attrs):
    g = _graph(**attrs)
    a = _args(masked=attrs.get("masked", False), seed=threads)
    got = backends.compile(g, "llvm", threads=threads)(*a)
    for x, y in zip(got, interpret(g, a)):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-12)


def _nested(steps_in=3, steps_out=4, b=2, h=5) -> Graph:
    """An outer scan whose body runs an inner scan reading W^T of the outer invariant W."""
    inner = Graph("inner")
    hc = inner.add_input("h", TensorType((b, h), F64))
    wi = inner.add_param("W", TensorType((h, h), F64))
    new = inner.op("tanh", inner.op("matmul", hc, inner.op("transpose", wi, perm=(1, 0))))
    inner.set_outputs([new])
    outer = Graph("outer")
    ho = outer.add_input("h", TensorType((b, h), F64))
    wo = outer.add_param("W", TensorType((h, h), F64))
    (hn,) = outer.add_node("scan", [ho, wo], dict(body=inner, num_carry=1, num_seq=0,
                                                   length=steps_in))
    outer.set_outputs([hn, hn])
    g = Graph("nested")
    h0 = g.add_input("h0", TensorType((b, h), F64))
    w = g.add_param("W", TensorType((h, h), F64))
    outs = g.add_node("scan", [h0, w], dict(body=outer, num_carry=1, num_seq=0,
                                            length=steps_out))
    g.set_outputs(outs)
    return g


@pytest.mark.parametrize("threads", [1, 2])
def test_nested_scans_hoist_inside_out(threads):
    g = _nested()
    r = verify(scan_invariants(g))
    (outer,) = [n for n in r.nodes if n.op == "scan"]
    (inner,) = [n for n in outer.attrs["body"].nodes if n.op == "scan"]
    assert "transpose" not in [n.op for n in outer.attrs["body"].nodes]
    assert "transpose" not in [n.op for n in inner.attrs["body"].nodes]
    rng = np.random.default_rng(5)
    a = [rng.standard_normal((2, 5)), 0.5 * rng.standard_normal((5, 5))]
    want = interpret(g, a)
    for got in (interpret(r, a), backends.compile(g, "llvm", threads=threads)(*a)):
        for x, y in zip(got, want):
            np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_hoisted_value_that_is_also_a_per_step_output(threads):
    """y_t = W^T at every step: the body returns the new invariant; the stacked output is
    T copies of it, as the reference computes."""
    c = Graph("cell")
    hc = c.add_input("h", TensorType((2, 3), F64))
    x = c.add_input("x", TensorType((2, 3), F64))
    w = c.add_param("W", TensorType((3, 3), F64))
    wt = c.op("transpose", w, perm=(1, 0))
    c.set_outputs([c.op("tanh", c.op("add", c.op("matmul", hc, wt), x)), wt])
    g = Graph("g")
    h0 = g.add_input("h0", TensorType((2, 3), F64))
    xs = g.add_input("xs", TensorType((4, 2, 3), F64))
    wg = g.add_param("W", TensorType((3, 3), F64))
    g.set_outputs(g.add_node("scan", [h0, xs, wg], dict(body=c, num_carry=1, num_seq=1)))
    assert "transpose" not in _body_ops(verify(scan_invariants(g)))
    rng = np.random.default_rng(threads)
    a = [rng.standard_normal((2, 3)), rng.standard_normal((4, 2, 3)), rng.standard_normal((3, 3))]
    want = interpret(g, a)
    np.testing.assert_array_equal(want[1], np.broadcast_to(a[2].T, (4, 3, 3)))
    for got, ref in zip(backends.compile(g, "llvm", threads=threads)(*a), want):
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
