"""The text format under arbitrary and corrupted input.

Any text gives either a graph that prints back to itself (print(parse(t)) parses to an equal
graph, and printing that again gives the same text) or a ParseError, an IRError whose message
starts with ``line L, column C:``. No other exception class, whatever the text.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import irgraph
from irgraph import Graph, IRError, ParseError, TensorType

LOCATED = re.compile(r"^line [0-9]+, column [0-9]+: ")
GOLDEN = sorted((Path(__file__).parents[1] / "golden").glob("*.ir"))


def _feature_graph() -> Graph:
    """A graph using what the golden models do not: constant arrays of every kind, non-finite
    and negative-zero floats, strings, a fused subgraph, donations."""
    f2 = TensorType((2,))
    body = Graph("body")
    bx = body.add_input("x", f2)
    body.set_outputs([body.op("relu", body.op("neg", bx))])
    g = Graph("features")
    x = g.add_input("x", f2)
    w = g.add_param("w", f2)
    c = g.op("constant", value=np.array([1.5, -0.0], np.float32))
    g.op("constant", value=np.array([[1, -2147483648]], np.int32))
    g.op("constant", value=np.array([True, False]))
    big = g.op("full", shape=(2,), value=float("inf"))
    y = g.add_node("fused", [g.op("add", x, c)], {"body": body, "kind": "generic"})[0]
    m = g.op("minimum", y, big)
    z = g.op("check_finite", m, y, big, checked_op="minimum", node="n", source="model.py:3",
             names=("a\u00e9\"", "b"))
    p = g.op("pad", z, pads=(1, 0), value=-0.0, loc="model.py:7")
    g.set_outputs([p, g.op("sub", w, x)])
    g.donations = {1: 1}
    return g


TEXTS = [p.read_text() for p in GOLDEN] + [str(_feature_graph())]


def _parse_or_error(text: str):
    """The property: an IRError with line:column, or a graph whose text is a fixed point."""
    try:
        g = irgraph.parse(text)
    except IRError as e:
        assert isinstance(e, ParseError) and LOCATED.match(str(e)), str(e)[:500]
        return None
    printed = str(g)
    again = irgraph.parse(printed)
    assert again == g and str(again) == printed
    return g


def test_the_seed_texts_are_printed_graphs():
    assert len(GOLDEN) >= 3 and any("scan(" in t for t in TEXTS)
    for text in TEXTS:
        g = _parse_or_error(text)
        assert g is not None and str(g) == text.rstrip("\n")


# ------------------------------------------------------------------ (a) arbitrary text
TOKENS = ["graph", " g", "(", ")", "%x", "%y", ":", " f32", "i32", "bool", "[", "]", "2", "0",
          ",", "{", "}", "=", " neg", " add", "return ", "donate", "->", "\n", " ", "array",
          "<", ">", "1.5", "-0.0", "1e999", "nan", "-inf", '"s"', "\u0663", "9" * 30, "params",
          "  # loc.py:1", "true", "none", "fused", "body", "kind", "\"generic\"", "-", "."]
TOKEN_SOUP = st.lists(st.sampled_from(TOKENS) | st.text(max_size=2), max_size=40).map("".join)


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=120) | TOKEN_SOUP
       | TOKEN_SOUP.map(lambda s: "graph g(%x: f32[2]) {\n  " + s))
def test_arbitrary_text_parses_to_a_fixed_point_or_a_located_irerror(text):
    _parse_or_error(text)


# ------------------------------------------------------------------ (b) corrupted graphs
JUNK = ["9" * 4301, "-" + "9" * 25, "9223372036854775808", "-9223372036854775809",
        "4611686018427387905", "281474976710657", "\u0663", "\u0661\u0662", "\uff11",
        "[" * 100, "graph g() {" * 70, "[" * 70 + "]" * 70, "1e999", "-1e999", "1e-999",
        "nan", "inf", "-inf", "0->0, 0->1", "1->0", ",", "}", "{", "(", ")", "->", "=", ":",
        '"\\ud800"', '"\\q"', "%0", "%zz", "f32[0]", "f32[]", "f64[2,3]",
        "array<f32[2]>[1.0, 2.0]", "array<i32[1]>[2147483648]", "array<bool[1]>[1]",
        "{a=1, a=1}", "{perm=[1, 0]}", "# comment\n", "\n", "donate(0->0)", "return", "none",
        "true", "1.5", "-0", "007", "\t", "\x00", "\u00e9"]
TOKEN = re.compile(r"\s+|%?[A-Za-z0-9_.]+|.", re.S)


def _mutate(text: str, data) -> str:
    for _ in range(data.draw(st.integers(1, 3))):
        kind = data.draw(st.sampled_from(["delete", "duplicate", "replace", "insert", "tokens"]))
        a = data.draw(st.integers(0, len(text)))
        b = min(len(text), a + data.draw(st.integers(0, 12)))
        if kind == "delete":
            text = text[:a] + text[b:]
        elif kind == "duplicate":
            text = text[:a] + text[a:b] * 2 + text[b:]
        elif kind == "replace":
            text = text[:a] + data.draw(st.sampled_from(JUNK)) + text[b:]
        elif kind == "insert":
            text = text[:a] + data.draw(st.sampled_from(JUNK) | st.text(max_size=3)) + text[a:]
        else:  # delete, duplicate or replace whole tokens (one by another of the same text)
            toks = TOKEN.findall(text)
            i = data.draw(st.integers(0, len(toks) - 1))
            op = data.draw(st.sampled_from(["delete", "duplicate", "swap"]))
            if op == "delete":
                del toks[i]
            elif op == "duplicate":
                toks.insert(i, toks[i])
            else:
                toks[i] = toks[data.draw(st.integers(0, len(toks) - 1))]
            text = "".join(toks)
    return text


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.sampled_from(range(len(TEXTS))), st.data())
def test_corrupted_printed_graphs_parse_to_a_fixed_point_or_a_located_irerror(which, data):
    _parse_or_error(_mutate(TEXTS[which], data))


# ------------------------------------------------------------------ (c) regressions
BASE = "graph g(%x: f32[2]) {\n  %y: f32[2] = neg(%x)\n  return %y\n}"
DONATED = ("graph g(%x: f32[2]) params(%w: f32[2]) {\n  %y: f32[2] = neg(%x)\n"
           "  %z: f32[2] = neg(%w)\n  donate({pairs})\n  return %y, %z\n}")


def _const(decl: str, value: str) -> str:
    return BASE.replace("%y: f32[2] = neg(%x)", f"%y: {decl} = constant() {{value={value}}}")


def _nested(depth: int) -> str:
    """``depth`` graphs, each (but the innermost) a fused node's body inside the previous."""
    text = f"graph g{depth}(%x: f32[2]) {{\n%y: f32[2] = neg(%x)\nreturn %y\n}}"
    for k in range(depth - 1, 0, -1):
        text = (f"graph g{k}(%x: f32[2]) {{\n%y: f32[2] = fused(%x) {{body={text}, "
                f"kind=\"generic\"}}\nreturn %y\n}}")
    return text


@pytest.mark.parametrize("text,pattern", [
    # integers of 4,301 digits (int() refuses them with a ValueError) and past int64
    (BASE.replace("f32[2]", "f32[" + "9" * 4301 + "]", 1),
     r"^line 1, column 17: integer 9+\.\.\.9+ \(4301 digits\) is out of the int64 range"),
    (BASE.replace("neg(%x)", "neg(%x) {a=" + "9" * 4301 + "}"),
     r"^line 2, column 27: integer .*\(4301 digits\) is out of the int64 range"),
    (DONATED.replace("{pairs}", "0->" + "1" * 4301), r"^line 4, column 13: integer .* int64"),
    (BASE.replace("neg(%x)", "neg(%x) {a=-" + "0" * 5000 + "9223372036854775809}"),
     r"^line 2, column 27: integer -00000.* \(19 digits\) is out of the int64 range"),
    (BASE.replace("neg(%x)", "neg(%x) {a=-9223372036854775809}"),
     r"^line 2, column 27: integer -9223372036854775809 is out of the int64 range"),
    # dimensions: unicode digits, >= 2**63, past 2**48, an int64 product that wraps to 4
    (BASE.replace("f32[2]", "f32[\u0663]", 1), r"^line 1, column 17: unexpected character"),
    (BASE.replace("f32[2]", "f32[1\uff11]", 1), r"^line 1, column 18: unexpected character"),
    (BASE.replace("f32[2]", "f32[9223372036854775808]", 1),
     r"^line 1, column 17: integer 9223372036854775808 is out of the int64 range"),
    (BASE.replace("f32[2]", "f32[281474976710657]", 1),
     r"^line 1, column 13: bad type f32\[281474976710657\]: dimension 281474976710657 .*"
     r"over the limit of 2\*\*48"),
    (BASE.replace("f32[2]", "f32[4611686018427387905,4]"),
     r"^line 1, column 13: bad type f32\[4611686018427387905, 4\]: dimension "
     r"4611686018427387905 \(axis 0\)"),
    (BASE.replace("f32[2]", "f32[-2]", 1), r"^line 1, column 13: bad type .*negative"),
    # array<...> shapes whose element count overflows int64, and bad elements
    (_const("f32[4611686018427387905,4]", "array<f32[4611686018427387905,4]>[1.0, 2.0]"),
     r"^line 2, column 7: bad type f32\[4611686018427387905, 4\]"),
    (_const("f32[2]", "array<f32[4294967296,4294967297]>[1.0, 2.0]"),
     r"^line 2, column 40: bad type f32\[4294967296, 4294967297\]: .* spans "
     r"73786976312018075648 bytes .*, over the limit"),     # 2**66 + 2**34; in int64: 2**34
    (_const("f32[2]", "array<f32[16777216,16777217]>[1.0, 2.0]"),
     r"^line 2, column 40: bad type .*spans 1125899973951488 bytes .*, over the limit"),
    (_const("i32[1]", "array<i32[1]>[2147483648]"),
     r"^line 2, column 34: bad array<i32\[1\]> values: 2147483648 is not an int32"),
    (_const("f32[1]", "array<f32[1]>[1e300]"), r"^line 2, column 34: .*out of the float32 range"),
    (_const("f32[1]", "array<f32[1]>[[1.0]]"), r"^line 2, column 34: .*\(1\.0,\) is not a"),
    (_const("f32[1]", "array<f32[1]>[none]"), r"^line 2, column 34: .*None is not a"),
    (_const("bool[1]", "array<bool[1]>[1]"), r"^line 2, column 35: .*1 is not a bool"),
    (_const("f32[1]", "array<f32[1]> 1.0"), r"^line 2, column 48: expected '\['"),
    # deep nesting: subgraphs and brackets
    (_nested(200), r"^line 65, column [0-9]+: nesting deeper than 64 levels"),
    (_nested(65), r"^line 65, column [0-9]+: nesting deeper than 64 levels"),
    (BASE.replace("neg(%x)", "neg(%x) {a=" + "[" * 200 + "]" * 200 + "}"),
     r"^line 2, column 90: nesting deeper than 64 levels"),
    (BASE.replace("neg(%x)", "neg(%x) {a=" + "[" * 5000), r"^line 2, column 90: nesting"),
    # float literals
    (BASE.replace("neg(%x)", "neg(%x) {a=1e999}"),
     r"^line 2, column 27: 1e999 is out of the float64 range"),
    (BASE.replace("neg(%x)", "neg(%x) {a=0." + "1" * 200 + "}"),
     r"^line 2, column 27: number literal of 202 characters"),
    # duplicate keys
    (DONATED.replace("{pairs}", "0->0, 0->1"),
     r"^line 4, column 16: output 0 is donated twice \(0->0 and 0->1\)"),
    (DONATED.replace("{pairs}", "0->0)\n  donate(0->0"), r"^line 5, column 10: output 0 is"),
    (BASE.replace("neg(%x)", "neg(%x) {a=1, a=2}"),
     r"^line 2, column 30: attribute 'a' is given twice"),
    # found by the verifier after parsing, reported where it was written
    (DONATED.replace("{pairs}", "0->5"), r"^line 4, column 3: graph 'g': donation 0->5 is out"),
    (DONATED.replace("{pairs}", "0->1, 1->1"), r"^line 4, column 3: .*donated the same"),
])
def test_each_finding_gives_a_located_parse_error(text, pattern):
    with pytest.raises(ParseError) as info:
        irgraph.parse(text)
    assert re.search(pattern, str(info.value)), str(info.value)[:500]


def test_the_nesting_limit_is_64_graphs_and_the_printer_prints_them():
    g = _parse_or_error(_nested(64))      # 64 levels: accepted, prints back to itself
    assert g is not None and str(g).count("graph g") == 64
    assert _parse_or_error(_nested(65)) is None


@pytest.mark.parametrize("text,value", [
    (BASE.replace("neg(%x)", "pad(%x) {pads=[0, 0], value=1e-999}"), 0.0),
    (BASE.replace("neg(%x)", "pad(%x) {pads=[0, 0], value=-inf}"), -np.inf),
    (BASE.replace("neg(%x)", "pad(%x) {pads=[0, 0], value=-0}"), 0.0),
    (BASE.replace("neg(%x)", "pad(%x) {pads=[0, 0], value=00000000000000000000000001.5e0}"),
     1.5),
])
def test_float_literals_that_fit_are_read_and_round_trip(text, value):
    g = _parse_or_error(text)
    assert g is not None and g.nodes[0].attrs["value"] == value


def test_int64_bounds_leading_zeros_and_zero_size_dimensions_are_accepted():
    g = _parse_or_error(BASE.replace("f32[2]", "f32[" + "0" * 5000 + "2]"))
    assert g is not None and g.inputs[0].type.shape == (2,)
    g = _parse_or_error(BASE.replace("neg(%x)", "iota() {axis=0, shape=[0, 7]}")
                        .replace("%y: f32[2]", "%y: i64[0,7]"))
    assert g is not None and g.outputs[0].type.shape == (0, 7)
    g = _parse_or_error(_const("i64[2]", "array<i64[2]>[-9223372036854775808, "
                                         "9223372036854775807]"))
    assert g.nodes[0].attrs["value"].tolist() == [-2 ** 63, 2 ** 63 - 1]


def test_a_type_rule_raising_anything_is_a_located_parse_error(monkeypatch):
    """A type rule that fails with an unexpected class (a KeyError on odd attributes) still
    gives a ParseError at the node's op, and a VerificationError from verify."""
    opdef = irgraph.get_op("neg")
    g = irgraph.parse(BASE)

    def broken(x):
        raise KeyError("missing")
    monkeypatch.setattr(opdef, "_type_rule", broken)
    with pytest.raises(ParseError, match=r"^line 2, column 16: KeyError: 'missing'"):
        irgraph.parse(BASE)
    with pytest.raises(irgraph.VerificationError, match=r"type rule failed: KeyError") as info:
        irgraph.verify(g)
    assert info.value.node is g.nodes[0]


def test_parse_takes_text_only():
    with pytest.raises(TypeError, match="takes the text of a graph"):
        irgraph.parse(b"graph g() {\n return\n}")


@pytest.mark.parametrize("loc,read", [(" a.py:1\nreturn %x\r ", "a.py:1 return %x"),
                                      ("\n \t", None), ("m.py:3", "m.py:3")])
def test_a_builder_graph_with_any_location_prints_text_that_reads_back(loc, read):
    g = Graph("g")
    x = g.add_input("x", TensorType((2,)))
    g.set_outputs([g.op("neg", x, loc=loc)])
    back = _parse_or_error(str(g))
    assert back is not None and str(back) == str(g) and back.nodes[0].loc == read
