"""The pass manager: passes by name, pipelines as lists or strings, verification after each
pass, IR printing, timing report, errors naming the passes that ran, the compile option."""
from __future__ import annotations

import io

import numpy as np
import pytest

import irgraph.frontend as fe
from irgraph.frontend import nn
from irgraph import Graph, TensorType
from irgraph.passes.manager import (PassError, PassManager, all_passes, default_pipeline, get_pass,
                            parse_pipeline, register_pass)


def small_graph() -> Graph:
    g = Graph("small")
    x = g.add_input("x", TensorType((3,)))
    one = g.op("full", shape=(), value=1.0)
    a = g.op("mul", x, one)
    b, c, c2 = g.op("exp", a), g.op("exp", x), g.op("exp", x)
    g.op("tanh", x)                                          # dead
    g.set_outputs([g.op("add", b, g.op("add", c, c2))])
    return g


def test_builtin_passes_are_registered_by_name():
    names = set(all_passes())
    assert {"constant_fold", "algebraic", "cse", "dce", "simplify", "strip_training",
            "strip_dead_state", "fold_bn", "fuse", "debug_nans", "unroll", "bptt"} <= names
    assert get_pass("cse").name == "cse" and "Before" in get_pass("cse").doc


def test_pipeline_as_string_list_and_default():
    assert [p.name for p in parse_pipeline("cse, dce")] == ["cse", "dce"]
    assert [p.name for p in parse_pipeline(["cse", "dce"])] == ["cse", "dce"]
    assert [p.name for p in parse_pipeline(None, "training")] == default_pipeline("training")
    assert [p.name for p in parse_pipeline("default, fuse")] == \
        default_pipeline("inference") + ["fuse"]
    assert parse_pipeline([]) == [] and parse_pipeline("") == []


def test_default_pipelines_and_debug_nans_is_off_by_default(monkeypatch):
    monkeypatch.delenv("IRGRAPH_DEBUG_NANS", raising=False)
    assert "fold_bn" in default_pipeline("inference")
    assert "fold_bn" not in default_pipeline("training")
    assert "debug_nans" not in default_pipeline("inference") + default_pipeline("training")
    monkeypatch.setenv("IRGRAPH_DEBUG_NANS", "1")
    assert default_pipeline("training")[-1] == "debug_nans"
    with pytest.raises(ValueError, match="unknown pipeline kind"):
        default_pipeline("eval")


def test_run_gives_a_new_graph_and_leaves_the_input_alone():
    g = small_graph()
    text = str(g)
    out = PassManager("simplify").run(g)
    assert str(g) == text
    assert [n.op for n in out.nodes] == ["exp", "add", "add"]    # x*1 -> x, CSE, DCE
    assert out.nodes[1].inputs == (out.nodes[0].outputs[0],) * 2


def test_print_after_every_pass_and_chosen_ones():
    buf = io.StringIO()
    PassManager("constant_fold, cse, dce", print_after=True, stream=buf).run(small_graph())
    text = buf.getvalue()
    for name in ("constant_fold", "cse", "dce"):
        assert f"IR after pass {name}" in text
    assert text.count("graph small") == 3
    buf = io.StringIO()
    PassManager("cse, dce", print_after=["dce"], stream=buf).run(small_graph())
    assert "after pass dce" in buf.getvalue() and "after pass cse" not in buf.getvalue()
    with pytest.raises(PassError, match="not in the pipeline"):
        PassManager("cse", print_after=["dce"])


def test_report_times_each_pass_with_node_counts():
    pm = PassManager("cse, dce")
    pm.run(small_graph())
    assert [r.name for r in pm.records] == ["cse", "dce"]
    assert all(r.seconds >= 0 for r in pm.records)
    assert (pm.records[0].nodes_before, pm.records[0].nodes_after) == (8, 7)
    assert pm.records[1].nodes_after == 6
    report = pm.report()
    assert "cse" in report and "dce" in report and "total" in report
    assert set(pm.timings) == {"cse", "dce"}
    pm = PassManager("dce, cse, dce")
    pm.run(small_graph())
    assert pm.timings["dce"] == pm.records[0].seconds + pm.records[2].seconds


def test_unknown_pass_is_named():
    with pytest.raises(PassError, match="unknown pass 'cse2'.*registered passes"):
        PassManager("cse, cse2")


def _breaks_types(g: Graph) -> Graph:
    out = g.copy()
    out.nodes[-1].outputs[0].type = TensorType((99,))
    return out


def _mutates(g: Graph) -> Graph:
    g.name = "changed"
    return g.copy()


def _raises(g: Graph) -> Graph:
    raise RuntimeError("boom")


@pytest.mark.parametrize("bad, msg", [
    (_breaks_types, "_breaks_types.*produced an invalid graph"),
    (_mutates, "_mutates.*mutated its input graph"),
    (_raises, "_raises.*raised RuntimeError: boom"),
    (lambda g: None, "returned NoneType, not a Graph"),
])
def test_errors_name_the_failing_pass_and_those_that_ran(bad, msg):
    with pytest.raises(PassError, match=msg) as info:
        PassManager(["cse", "dce", bad]).run(small_graph())
    assert "3 of 3" in str(info.value)
    assert "passes that ran before it: cse, dce" in str(info.value)


def test_register_a_new_pass_and_use_it_by_name(monkeypatch):
    from irgraph.passes import manager
    monkeypatch.setattr(manager, "_PASSES", dict(manager._PASSES))   # restored afterwards

    @register_pass("test_rename_graph")
    def rename(g: Graph) -> Graph:
        """Rename the graph (a do-nothing pass for this test)."""
        return g.copy(name="renamed")

    assert PassManager("dce, test_rename_graph").run(small_graph()).name == "renamed"
    with pytest.raises(ValueError, match="registered twice"):
        register_pass("cse")(lambda g: g)


def test_compile_takes_the_pipeline_option():
    fe.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    spec = fe.TensorSpec((2, 4))
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    plain = fe.compile(model, spec, pipeline=[])
    fused = fe.compile(model, spec, pipeline="default, fuse")
    assert "fused" not in [n.op for n in plain.graph.nodes]
    assert "fused" in [n.op for n in fused.graph.nodes]
    np.testing.assert_allclose(fused(x), plain(x), rtol=1e-6)
    np.testing.assert_allclose(fe.compile(model, spec)(x), plain(x), rtol=1e-6)


def test_default_in_a_pipeline_spec_means_the_preset_of_its_kind():
    """compile_train's run_pipeline(graph, "default, ...", "training") must not fold or
    strip batch norms: only the inference preset does."""
    from irgraph.frontend.compiler import run_pipeline
    g = Graph("bn")
    x = g.add_input("x", TensorType((4, 3)))
    ps = [g.add_param(n, TensorType((3,))) for n in ("g", "b", "m", "v")]
    g.set_outputs([g.op("batch_norm", x, *ps, training=False)[0]])
    train = run_pipeline(g, "default, dce", "training")
    infer = run_pipeline(g, "default, dce", "inference")
    assert "batch_norm" in [n.op for n in train.nodes]
    assert "batch_norm" not in [n.op for n in infer.nodes]


OPTIMIZING = ["constant_fold", "algebraic", "cse", "dce", "simplify", "simplify_subgraphs",
              "strip_dead_state", "strip_training", "fold_bn", "fuse", "debug_nans"]


@pytest.mark.parametrize("name", OPTIMIZING)
def test_every_optimizing_pass_documents_ir_before_and_after(name):
    doc = all_passes()[name].doc
    before, _, after = doc.partition("After")
    assert "Before" in before and "%" in before and "%" in after, name
