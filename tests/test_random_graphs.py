"""Property-based tests: random well-typed graphs drawn from the whole registry (through
every family's samples) print, parse, verify, copy and execute, and the parsed graph computes
bit-for-bit what the original does."""
from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import irgraph
from irgraph import Graph, TensorType
from irgraph.interpreter import interpret
from tests.samples import all_samples

SAMPLES = all_samples()
CHOICES = [(op, i) for op in sorted(SAMPLES) for i in range(len(SAMPLES[op]))]


@st.composite
def random_graphs(draw, max_nodes: int = 6):
    """A graph of sample-shaped nodes; a float operand may reuse any earlier value of its type.

    Returns the graph and its arguments. Operands that carry indices or masks (a case's
    ``nondiff`` positions) and non-float operands always get the sample's own data.
    """
    g = Graph("random")
    args: list[np.ndarray] = []
    pool: dict[str, list] = {}
    for _ in range(draw(st.integers(1, max_nodes))):
        op, i = draw(st.sampled_from(CHOICES))
        case = SAMPLES[op][i]
        operands = []
        for k, a in enumerate(case.inputs):
            t = TensorType.of(a)
            reusable = pool.get(str(t), []) if t.is_float and k not in case.nondiff else []
            if reusable and draw(st.booleans()):
                operands.append(draw(st.sampled_from(reusable)))
            else:
                operands.append(g.add_input(f"in{len(args)}", t))
                args.append(np.array(a))
        for v in g.add_node(op, operands, case.attrs):
            pool.setdefault(str(v.type), []).append(v)
    values = [v for n in g.nodes for v in n.outputs]
    picked = draw(st.lists(st.sampled_from(values), min_size=1, max_size=3, unique_by=id))
    g.set_outputs(picked)
    return g, args


def _same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a, b)


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(random_graphs())
def test_random_graphs_print_parse_verify_execute(built):
    g, args = built
    irgraph.verify(g)
    text = str(g)
    back = irgraph.parse(text)
    assert str(back) == text and back == g
    assert g.copy() == g
    with np.errstate(all="ignore"):
        outs = interpret(g, args)
        again = interpret(back, args)
    for v, a, b in zip(g.outputs, outs, again):
        assert (a.shape, a.dtype.name) == (v.type.shape, v.type.dtype)
        _same(a, b)


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(random_graphs(max_nodes=4))
def test_random_graph_views_agree_with_the_graph(built):
    g, _ = built
    G = g.to_networkx()
    ops = sorted(n for n in G if isinstance(n, int))
    assert ops == list(range(len(g.nodes)))
    assert G.number_of_edges() == sum(len(n.inputs) for n in g.nodes) + len(g.outputs)
    assert g.to_dot().count(" -> ") == G.number_of_edges()


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(random_graphs(max_nodes=3), st.data())
def test_corrupted_text_gives_an_irerror_or_a_valid_graph(built, data):
    """Deleting or replacing a stretch of the text never crashes the parser with anything but
    an IRError (ParseError or VerificationError)."""
    text = str(built[0])
    start = data.draw(st.integers(0, len(text) - 1))
    stop = data.draw(st.integers(start, min(len(text), start + 8)))
    junk = data.draw(st.text(alphabet="%:=(){}[]<>,.#-0123456789afinrx\"\n ", max_size=4))
    try:
        g = irgraph.parse(text[:start] + junk + text[stop:])
    except irgraph.IRError:
        return
    assert irgraph.verify(g) is g
