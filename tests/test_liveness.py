"""irgraph.liveness worked by hand: last reads per node and per group of nodes, the values
dying at each step, live intervals, subgraph bodies; and the users of the one analysis (the
interpreter frees at its points, the memory planner's intervals are its intervals)."""
from __future__ import annotations

import numpy as np

from irgraph import Graph, TensorType, parse
from irgraph.interpreter import interpret
from irgraph.liveness import last_reads, last_uses, live_intervals, subgraphs
from irgraph.passes.memory import liveness


def small() -> Graph:
    """n0: a = exp(x); n1: b = add(a, x); n2: c = mul(b, b); n3: d = neg(x) (unread);
    returns c, a."""
    g = Graph("g")
    t = TensorType((3,), "float32")
    x = g.add_input("x", t)
    a = g.op("exp", x)
    b = g.op("add", a, x)
    c = g.op("mul", b, b)
    g.op("neg", x)
    g.set_outputs([c, a])
    return g


def names(d):
    return {k.name if hasattr(k, "name") else k: (sorted(v.name for v in vals)
                                                 if isinstance(vals, list) else vals)
            for k, vals in d.items()}


def test_last_reads_and_dying_values_by_node():
    g = small()
    x, a, b = g.inputs[0], g.nodes[0].outputs[0], g.nodes[1].outputs[0]
    assert last_reads(g) == {x: 3, a: 1, b: 2}
    # a is a graph output: it never dies; x dies at n3, b at n2; c and d are never read
    assert names(last_uses(g)) == {3: ["x"], 2: [b.name]}


def test_last_reads_by_groups_of_nodes():
    g = small()
    n0, n1, n2, n3 = g.nodes
    steps = [[n0, n1], [n3], [n2]]
    x, b = g.inputs[0], n1.outputs[0]
    assert last_reads(g, steps) == {x: 1, n0.outputs[0]: 0, b: 2}
    assert names(last_uses(g, steps)) == {1: ["x"], 2: [b.name]}


def test_live_intervals():
    g = small()
    a, b, c, d = (n.outputs[0] for n in g.nodes)
    assert live_intervals(g) == {a: (0, 4), b: (1, 2), c: (2, 4), d: (3, 3)}
    assert liveness(g) == live_intervals(g)        # the memory planner's view is this one


def test_subgraph_bodies_have_their_own_liveness():
    g = parse("""
    graph outer(%h0: f32[2], %xs: f32[3,2]) {
      %hT: f32[2], %hs: f32[3,2] = scan(%h0, %xs) {body=graph cell(%h: f32[2], %x: f32[2]) {
          %s: f32[2] = add(%h, %x)
          %t: f32[2] = tanh(%s)
          return %t, %s
        }, num_carry=1, num_seq=1}
      %y: f32[3,2] = mul(%hs, %hs)
      return %hT, %y
    }""")
    (scan, mul) = g.nodes
    (body,) = list(subgraphs(scan))
    assert list(subgraphs(mul)) == []
    h, x = body.inputs
    s, t = (n.outputs[0] for n in body.nodes)
    assert last_reads(body) == {h: 0, x: 0, s: 1}
    assert names(last_uses(body)) == {0: ["h", "x"]}     # s is a body output: kept
    assert live_intervals(body) == {s: (0, 2), t: (1, 2)}
    # the scan node reads its operands: h0 and xs die at it; hs at the mul
    assert names(last_uses(g)) == {0: ["h0", "xs"], 1: ["hs"]}


def test_interpreter_frees_at_last_use_and_keeps_outputs():
    g = small()
    x = np.array([0.0, 1.0, -2.0], np.float32)
    c, a = interpret(g, [x])
    np.testing.assert_allclose(a, np.exp(x), rtol=1e-6)
    np.testing.assert_allclose(c, (np.exp(x) + x) ** 2, rtol=1e-6)
