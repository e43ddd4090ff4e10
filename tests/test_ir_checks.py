"""The IR's checks and views: verifier failure modes (each names the node), parser errors
(line and column), save/load of graph + weights (never pickle), networkx and DOT views."""
from __future__ import annotations

import json
import os
import re

import networkx as nx
import numpy as np
import pytest

import irgraph
from irgraph import Graph, ParseError, TensorType, VerificationError, verify
from irgraph.registry import _REGISTRY, Attr, IRError, OpDef, a_graph

F32 = TensorType((2, 3), "float32")


def mlp() -> Graph:
    g = Graph("mlp")
    x = g.add_input("x", TensorType((4, 3)))
    w = g.add_param("fc.weight", TensorType((3, 5)))
    b = g.add_param("fc.bias", TensorType((5,)))
    h = g.op("add", g.op("matmul", x, w, loc="model.py:10"), b, loc="model.py:10")
    y = g.op("relu", h, loc="model.py:11")
    g.set_outputs([g.op("sum", y, axis=(1,)), y])
    return g


# ------------------------------------------------------------------ verifier
def _fails(g: Graph, *patterns: str) -> str:
    with pytest.raises(VerificationError) as info:
        verify(g)
    msg = str(info.value)
    for p in patterns:
        assert re.search(p, msg), f"{p!r} not in:\n{msg}"
    return msg


def test_valid_graph_verifies_and_returns_itself():
    g = mlp()
    assert verify(g) is g


def test_use_before_definition_names_the_node():
    g = mlp()
    g.nodes[0], g.nodes[1] = g.nodes[1], g.nodes[0]
    _fails(g, r"input %0 is used before it is defined", r"at node: %1: f32\[4,5\] = add\(%0, "
           r"%fc\.bias\)")


def test_value_from_another_graph_is_undefined():
    g, other = mlp(), mlp()
    g.nodes[2].inputs = (other.nodes[1].outputs[0],)
    _fails(g, r"used before it is defined", r"at node: .*relu")


def test_double_definition_names_the_node():
    g = mlp()
    g.nodes[2].outputs[0].name = "0"
    _fails(g, r"value %0 is defined twice \(SSA\)", r"at node: %0: f32\[4,5\] = relu")


def test_output_defined_twice_by_the_same_node_object():
    g = mlp()
    g.nodes.append(g.nodes[-1])
    _fails(g, r"defined twice", r"at node: .*sum")


def test_type_mismatch_names_the_node_and_both_types():
    g = mlp()
    g.nodes[2].outputs[0].type = TensorType((4, 5), "float64")
    _fails(g, r"%2 has type f64\[4,5\], the registry infers f32\[4,5\]", r"at node: .*relu")


def test_unknown_op_names_the_node():
    g = mlp()
    g.nodes[2].op = "frobnicate"
    _fails(g, r"unknown op 'frobnicate'", r"at node: .*frobnicate\(%1\)")


def test_bad_attribute_value_names_node_and_attribute():
    g = mlp()
    g.nodes[3].attrs["axis"] = "one"
    _fails(g, r"bad attribute axis='one'", r"at node: .*sum\(%2\)")


def test_unknown_attribute_names_node():
    g = mlp()
    g.nodes[2].attrs["alpha"] = 0.1
    _fails(g, r"unknown attribute\(s\) \['alpha'\]", r"at node: .*relu")


def test_wrong_input_count_names_node():
    g = mlp()
    g.nodes[2].inputs = g.nodes[2].inputs * 2
    _fails(g, r"'relu' takes 1 input\(s\), got 2", r"at node:")


@pytest.mark.parametrize("donations,pattern", [
    ({0: 9}, r"donation 0->9 is out of range"),
    ({5: 0}, r"donation 5->0 is out of range"),
    ({1: 1}, r"donation 1->1: output type f32\[4,5\] differs from argument type f32\[3,5\]"),
    ({0: 2, 1: 2}, r"donation|same argument"),
])
def test_bad_donation(donations, pattern):
    g = mlp()
    g.donations = donations
    _fails(g, pattern)


def test_two_outputs_donated_to_one_buffer():
    g = Graph("d")
    a = g.add_param("a", F32)
    g.set_outputs([g.op("neg", a), g.op("exp", a)])
    g.donations = {0: 0, 1: 0}
    _fails(g, r"two outputs are donated the same argument buffer")


def test_undefined_output():
    g, other = mlp(), mlp()
    g.outputs.append(other.outputs[0])
    _fails(g, r"output %\d+ is not defined")


def test_verification_message_shows_the_graph():
    g = mlp()
    g.nodes[2].op = "nope"
    msg = _fails(g)
    assert "--- graph ---" in msg and "graph mlp(%x: f32[4,3])" in msg


@pytest.fixture
def sub_op(monkeypatch):
    """A temporary op whose attribute is a graph (as recurrence ops have)."""
    op = OpDef("test.call", lambda x, body: x, {"body": Attr(a_graph)}, 1,
               nondiff_reason="test op")
    op.type_rule(lambda x, body: x)
    monkeypatch.setitem(_REGISTRY, op.name, op)
    return op.name


def test_invalid_subgraph_names_the_outer_node(sub_op):
    body = mlp()
    body.nodes[2].op = "nope"
    g = Graph("outer")
    x = g.add_input("x", F32)
    g.set_outputs([g.op(sub_op, x, body=body, loc="loop.py:4")])
    _fails(g, r"subgraph attribute 'body' is invalid", r"unknown op 'nope'", r"loop\.py:4")


def test_builder_rejects_a_bad_node_with_the_user_location():
    g = Graph("b")
    x = g.add_input("x", F32)
    with pytest.raises(IRError, match=r"user\.py:3: op 'matmul' cannot take .*contracted"):
        g.op("matmul", x, x, loc="user.py:3")
    with pytest.raises(IRError, match=r"value name %x is defined twice"):
        g.add_input("x", F32)


# ------------------------------------------------------------------ parser
GOOD = str(mlp())


@pytest.mark.parametrize("text,pattern", [
    (GOOD.replace("relu(%1)", "relu(%7)"), r"^line 4, column 23: use of undefined value %7"),
    (GOOD.replace("relu(%1)", "frob(%1)"), r"^line 4, column 18: unknown op 'frob'"),
    (GOOD.replace("%2: f32[4,5] = relu", "%2: f32[4,6] = relu"),
     r"^line 4, column 18: .*declared types \['f32\[4,6\]'\] differ from inferred"),
    (GOOD.replace("axis=[1]", "axis=[1], bogus=2"),
     r"^line 5, column 16: op 'sum' got unknown attribute"),
    (GOOD.replace("f32[4,3]", "f33[4,3]"), r"^line 1, column 15: expected a type like f32"),
    (GOOD.replace("f32[4,3]", "f32[4,x]"), r"^line 1, column 21: expected an integer, "
                                           r"found 'x'"),
    (GOOD.replace("= relu(", "= relu $("), r"^line 4, column 23: unexpected character '\$'"),
    (GOOD.replace("return", "retrun"), r"^line 6, column 3: expected %name, found 'retrun'"),
    (GOOD.rsplit("}", 1)[0], r"^line \d+, column \d+: expected '}', found the end"),
    (GOOD + "\ngraph", r"^line 8, column 1: text after the end of the graph"),
    (GOOD.replace("axis=[1]", "axis=@"), r"^line 5, column 30: unexpected character '@'"),
    ("graph g(%x: f32[2]) {\n  %x: f32[2] = neg(%x)\n  return %x\n}",
     r"^line 2, column 16: value name %x is defined twice"),
    ("graph g(%x: f32[2], %x: f32[2]) {\n  return %x\n}", r"^line 1, .*defined twice"),
    ("graph g(%x: f32[2]) {\n  %y: f32[2] = add(%x, %x) {alpha=}\n  return %y\n}",
     r"^line 2, column 35: bad attribute value '}'"),
    ("graph g(%x: f32[2]) {\n  %y: f32[2] = constant() {value=array<f32[2]>[1.0]}\n"
     "  return %y\n}", r"^line 2, .*array<f32\[2\]> needs a list of 2 numbers"),
    ("graph g(%x: f32[2]) {\n  %y: f32[2] = neg(%x)\n", r"ends without 'return'"),
    ("graph g(%x: f32[2]) {\n  %y: i32[2] = constant() {value=array<i32[2]>[1, \"a\"]}\n"
     "  return %y\n}", r"^line 2, column 34: bad array<i32\[2\]> values"),
    ("graph g(%x: f32[2]) {\n  %y: f32[2] = neg(%x) {a=\"\\q\"}\n  return %y\n}",
     r"^line 2, column 27: bad string"),
])
def test_parse_errors_carry_line_and_column(text, pattern):
    with pytest.raises(ParseError) as info:
        irgraph.parse(text)
    assert re.search(pattern, str(info.value)), str(info.value)


def test_parse_error_is_an_irerror():
    assert issubclass(ParseError, IRError)


def test_parser_reads_comments_blank_lines_and_locations():
    text = ("# a comment line\n\ngraph g(%x: f32[2]) {\n  # inside\n"
            "  %y: f32[2] = neg(%x)  # user.py:5\n\n  return %y\n}\n")
    g = irgraph.parse(text)
    assert g.nodes[0].loc == "user.py:5" and len(g.nodes) == 1


def test_parse_of_a_donated_graph_keeps_donations():
    g = Graph("step")
    x = g.add_input("x", F32)
    w = g.add_param("w", F32)
    g.set_outputs([g.op("sum", x), g.op("sub", w, x)])
    g.donations = {1: 1}
    back = irgraph.parse(str(g))
    assert back.donations == {1: 1} and back == g


# ------------------------------------------------------------------ save / load
def _weights():
    rng = np.random.default_rng(0)
    return {"fc.weight": rng.standard_normal((3, 5)).astype(np.float32),
            "fc.bias": rng.standard_normal(5).astype(np.float32)}


def test_save_load_round_trip(tmp_path):
    g, w = mlp(), _weights()
    irgraph.save(tmp_path / "m", g, w)
    names = sorted(os.listdir(tmp_path / "m"))
    assert len(names) == 3 and names[1] == "manifest.json"
    assert re.fullmatch(r"graph-[0-9a-f]{64}\.ir", names[0])
    assert re.fullmatch(r"weights-[0-9a-f]{64}\.npz", names[2])
    g2, w2 = irgraph.load(tmp_path / "m")
    assert g2 == g and sorted(w2) == sorted(w)
    for k in w:
        assert w2[k].dtype == w[k].dtype
        np.testing.assert_array_equal(w2[k], w[k])
    import irgraph.backends as backends
    x = np.ones((4, 3), np.float32)
    for a, b in zip(backends.compile(g)(x, w["fc.weight"], w["fc.bias"]),
                    backends.compile(g2)(x, w2["fc.weight"], w2["fc.bias"])):
        np.testing.assert_array_equal(a, b)


def test_manifest_is_json_and_graph_is_text(tmp_path):
    irgraph.save(tmp_path, mlp(), _weights())
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["arrays"] == {"fc.bias": {"dtype": "float32", "shape": [5]},
                                  "fc.weight": {"dtype": "float32", "shape": [3, 5]}}
    assert (tmp_path / manifest["files"]["graph"]["name"]).read_text().startswith("graph mlp(")


def _replace_file(folder, role: str, write) -> None:
    """Replace a checkpoint's data file and update its checksum in the manifest, so that
    what load checks after the checksum is reached."""
    import hashlib
    manifest = json.loads((folder / "manifest.json").read_text())
    path = folder / manifest["files"][role]["name"]
    write(path)
    data = path.read_bytes()
    manifest["files"][role].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_pickled_object_array_is_refused(tmp_path):
    irgraph.save(tmp_path, mlp(), _weights())
    evil = np.empty(2, dtype=object)
    evil[0], evil[1] = {"a": 1}, [1, 2]
    _replace_file(tmp_path, "weights", lambda p: np.savez(
        p, allow_pickle=True, **{"fc.bias": evil, "fc.weight": evil}))
    with pytest.raises(irgraph.CheckpointError, match=r"weights-\w+\.npz: member 'fc\.\w+\.npy'"):
        irgraph.load(tmp_path)


def test_saving_an_object_array_is_refused(tmp_path):
    w = _weights()
    w["fc.bias"] = np.array([object()] * 5, dtype=object)
    with pytest.raises(ValueError, match=r"weight 'fc.bias' is object\[5\]"):
        irgraph.save(tmp_path, mlp(), w)


@pytest.mark.parametrize("bad,pattern", [
    (np.zeros((5, 3), np.float32), r"'fc.weight.npy' holds float32\[5, 3\], the manifest "
                                   r"declares float32\[3, 5\]"),
    (np.zeros((3, 5), np.float64), r"'fc.weight.npy' holds float64\[3, 5\], the manifest "
                                   r"declares float32\[3, 5\]"),
])
def test_shape_or_dtype_mismatch_is_refused_on_load(tmp_path, bad, pattern):
    irgraph.save(tmp_path, mlp(), _weights())
    _replace_file(tmp_path, "weights", lambda p: np.savez(
        p, **{"fc.weight": bad, "fc.bias": _weights()["fc.bias"]}))
    with pytest.raises(irgraph.CheckpointError, match=pattern):
        irgraph.load(tmp_path)


def test_shape_mismatch_is_refused_on_save(tmp_path):
    w = _weights()
    w["fc.bias"] = np.zeros(6, np.float32)
    with pytest.raises(ValueError, match=r"fc.bias"):
        irgraph.save(tmp_path, mlp(), w)


def test_unknown_weights_and_formats_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"\['nope'\] are not parameters"):
        irgraph.save(tmp_path, mlp(), {"nope": np.zeros(1)})
    irgraph.save(tmp_path, mlp(), _weights())
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other", "graph": "graph.ir"}))
    with pytest.raises(ValueError, match=r"unknown format 'other'"):
        irgraph.load(tmp_path)


def test_corrupt_graph_text_gives_a_parse_error(tmp_path):
    irgraph.save(tmp_path, mlp(), _weights())
    _replace_file(tmp_path, "graph", lambda p: p.write_text(GOOD.replace("relu", "relu!")))
    with pytest.raises(irgraph.CheckpointError, match=r"graph-\w+\.ir: is not a valid graph: "
                                                      r"line 4, column 22"):
        irgraph.load(tmp_path)


def test_save_uses_no_pickle_anywhere():
    import inspect
    src = inspect.getsource(irgraph.serialize)
    assert "import pickle" not in src and "allow_pickle=True" not in src


# ------------------------------------------------------------------ views
def test_to_networkx_structure():
    g = mlp()
    G = g.to_networkx()
    assert nx.is_directed_acyclic_graph(G)
    assert G.number_of_nodes() == len(g.inputs) + len(g.params) + len(g.nodes) + len(g.outputs)
    assert G.number_of_edges() == sum(len(n.inputs) for n in g.nodes) + len(g.outputs)
    ops = [n for n in nx.topological_sort(G) if isinstance(n, int)]
    # any topological order of the view is an order the IR allows: producers come first
    pos = {n: i for i, n in enumerate(ops)}
    for u, v in G.edges():
        if isinstance(u, int) and isinstance(v, int):
            assert pos[u] < pos[v]
    assert list(nx.lexicographical_topological_sort(
        G.subgraph([n for n in G if isinstance(n, int)]))) == list(range(len(g.nodes)))
    assert G.nodes[1]["op"] == "add" and G.nodes[1]["loc"] == "model.py:10"
    assert set(nx.ancestors(G, ("output", 0))) == {("input", "x"), ("param", "fc.weight"),
                                                    ("param", "fc.bias"), 0, 1, 2, 3}
    edge = G.get_edge_data(("param", "fc.weight"), 0)[0]
    assert edge == {"value": "fc.weight", "type": "f32[3,5]", "operand": 1}


def test_to_networkx_keeps_repeated_operands():
    g = Graph("sq")
    x = g.add_input("x", F32)
    g.set_outputs([g.op("mul", x, x)])
    G = g.to_networkx()
    assert G.number_of_edges(("input", "x"), 0) == 2


def test_to_dot_lists_every_node_and_edge():
    g = mlp()
    dot = g.to_dot()
    assert dot.startswith('digraph "mlp" {') and dot.rstrip().endswith("}")
    labels = re.findall(r'^\s+n\d+ \[shape=ellipse, label="(\w+)"\];', dot, re.M)
    assert labels == [n.op for n in g.nodes]
    edges = re.findall(r"^\s+(\w+) -> (\w+) \[label=\"(%[\w.]+): ([^\"]+)\"\];", dot, re.M)
    assert len(edges) == sum(len(n.inputs) for n in g.nodes) + len(g.outputs)
    assert ("param_1", "n0", "%fc.weight", "f32[3,5]") in edges
    assert ("n3", "out0", "%3", "f32[4]") in edges
    assert dot.count("{") == dot.count("}")


# ------------------------------------------------------------------ reference interpreter
def test_interpreter_keeps_outputs_that_later_nodes_also_use():
    from irgraph.interpreter import interpret
    g = Graph("keep")
    x = g.add_input("x", F32)
    a = g.op("exp", x)
    b = g.op("neg", a)
    g.set_outputs([a, x, b, a])
    xv = np.arange(6, dtype=np.float32).reshape(2, 3)
    outs = interpret(g, [xv])
    np.testing.assert_allclose(outs[0], np.exp(xv))
    np.testing.assert_array_equal(outs[1], xv)
    np.testing.assert_allclose(outs[2], -np.exp(xv))
    np.testing.assert_allclose(outs[3], np.exp(xv))


def test_interpreter_errors_name_the_node_and_location():
    from irgraph.interpreter import ExecutionError, interpret
    g = Graph("bad")
    x = g.add_input("x", TensorType((3,), "float32"))
    i = g.add_input("i", TensorType((3,), "int64"))
    g.set_outputs([g.op("take", x, i, axis=0, loc="user.py:9")])
    with pytest.raises(ExecutionError, match=r"take\(%x, %i\) .* # user\.py:9 \(from user\.py:9\)"):
        interpret(g, [np.zeros(3, np.float32), np.array([0, 5, 1])])
    with pytest.raises(ExecutionError, match=r"takes 2 arguments, got 1"):
        interpret(g, [np.zeros(3, np.float32)])


def test_backend_executable_validates_params_by_name():
    import irgraph.backends as backends
    exe = backends.compile(mlp(), "reference")
    w = _weights()
    with pytest.raises(ValueError, match=r"argument %fc\.bias has shape \(4,\), expected \(5,\)"):
        exe(np.ones((4, 3), np.float32), w["fc.weight"], np.ones(4, np.float32))
    with pytest.raises(TypeError, match=r"takes 3 arguments \(x, fc\.weight, fc\.bias\), got 1"):
        exe(np.ones((4, 3), np.float32))
    out = exe(np.asfortranarray(np.ones((4, 3), np.float32)), w["fc.weight"], w["fc.bias"])
    np.testing.assert_allclose(out[1], np.maximum(np.ones((4, 3)) @ w["fc.weight"]
                                                  + w["fc.bias"], 0), rtol=1e-6)
