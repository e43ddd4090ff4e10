"""The irgraph command (frontend/cli) and the divergence finder (frontend/check).

The demo runs end to end in a subprocess (as a user runs it); the other subcommands run
in-process through ``frontend.cli.main`` on small files written to tmp_path. Faults are
injected into one LLVM lowering (with a private object cache, so no cached object hides
the fault) and the finder must name exactly that node.
"""
from __future__ import annotations

import math
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import irgraph.frontend as fe
import irgraph
from irgraph.backends.llvm import lowering as llvm_lowering
from irgraph.backends.llvm import ops_core, scalar
from irgraph.backends.llvm.elementwise import elementwise
from irgraph.frontend import F
from irgraph.frontend.check import find_divergence, node_differences, observe
from irgraph.frontend.cli import main
from irgraph.interpreter import interpret

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ["demo", "show", "run", "check", "bench"]


@pytest.mark.parametrize("command", [None] + COMMANDS)
def test_help_of_every_subcommand(command, capsys):
    with pytest.raises(SystemExit) as e:
        main(([command] if command else []) + ["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "usage: irgraph" in text and "exit codes: 0 ok, 1 failure" in text
    if command is None:
        assert all(c in text for c in COMMANDS)


def test_usage_errors_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--optimizer", "nope"])
    assert e.value.code == 2
    assert main([]) == 2
    assert main(["show", str(tmp_path / "missing.py"), "--input", "3"]) == 2
    assert "missing.py: no such file" in capsys.readouterr().err


def test_python_m_irgraph_launches_the_command():
    r = subprocess.run([sys.executable, "-m", "irgraph", "run", "--help"], capture_output=True,
                       text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0 and "INPUTS.npz" in r.stdout


# ---------------------------------------------------------------- the demo, end to end
def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "irgraph", "demo", "--epochs", "2", "--quick",
                        "--plot", "--out", str(out)], capture_output=True, text=True,
                       timeout=400, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    text = r.stdout
    for expected in ("epoch 2/2", "examples/s", "2 batch norm(s)", "0 after folding",
                     "check llvm: the folded model agrees", "check triton: the folded model agrees",
                     "training step (batch 64)", "saved the folded model"):
        assert expected in text, text
    printed = float(re.search(r"held-out accuracy: ([\d.]+)%", text).group(1)) / 100
    # the saved model, re-run on the reference interpreter, classifies the held-out digits
    graph, weights = irgraph.load(out / "model")
    assert "batch_norm" not in [n.op for n in graph.nodes]
    x = np.load(out / "heldout_inputs.npz", allow_pickle=False)[graph.inputs[0].name]
    from irgraph.frontend.data import load_digits, split
    _, labels = load_digits()
    _, te = split(len(labels), 0.2, seed=0)
    (logits,) = interpret(graph, [x] + [weights[p.name] for p in graph.params])
    acc = float((logits.argmax(1) == labels[te]).mean())
    assert acc > 0.8                                   # chance is 0.1
    assert abs(acc - printed) <= 1 / len(te) + 1e-9
    assert (out / "training.png").stat().st_size > 1000
    assert (out / "model.dot").read_text().startswith("digraph")


# ---------------------------------------------------------------- show, run, check on files
MODEL = textwrap.dedent("""\
    from irgraph.frontend import F, nn


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4 * 6 * 6, 3)

        def forward(self, x):
            h = F.relu(self.bn(self.conv(x)))
            return self.fc(h.reshape(-1, 4 * 6 * 6)).tanh()


    def f(x, y):
        return (x * y).tanh().sum()
    """)


@pytest.fixture
def model_file(tmp_path):
    p = tmp_path / "model.py"
    p.write_text(MODEL)
    return p


def test_show_prints_ir_before_and_after_the_pipeline(model_file, capsys):
    assert main(["show", f"{model_file}:Net", "--input", "2,1,8,8"]) == 0
    text = capsys.readouterr().out
    before, after = text.split("# after the pipeline")
    assert "batch_norm(" in before and "batch_norm(" not in after   # folded into the conv
    assert "model.py:12" in before                   # the user's line of the conv and bn
    assert main(["show", f"{model_file}:f", "--input", "f32[3]", "--input", "3",
                 "--emit", "dot"]) == 0
    assert capsys.readouterr().out.startswith('digraph "f"')


def test_show_says_which_inputs_are_missing(model_file, capsys):
    assert main(["show", f"{model_file}:f", "--input", "3"]) == 2
    assert "f takes 2 input(s) (x, y)" in capsys.readouterr().err
    assert main(["show", str(model_file), "--input", "3"]) != 0     # Net needs 4-D input
    assert main(["show", f"{model_file}:g", "--input", "3"]) == 2
    assert "defines no 'g'" in capsys.readouterr().err
    assert main(["show", f"{model_file}:f", "--input", "q8[3]", "--input", "3"]) == 2


def test_run_a_saved_model(tmp_path, capsys):
    g = irgraph.Graph("affine")
    x = g.add_input("x", irgraph.TensorType((2, 3), "float32"))
    w = g.add_param("w", irgraph.TensorType((3, 2), "float32"))
    g.set_outputs([g.op("relu", g.op("matmul", x, w))])
    irgraph.save(tmp_path / "m", g, {"w": np.array([[1, -1], [2, 0], [0, 1]], np.float32)})
    np.savez(tmp_path / "in.npz", x=np.array([[1, 1, 1], [-1, 0, 2]], np.float32))
    assert main(["run", str(tmp_path / "m"), str(tmp_path / "in.npz"), "-o",
                 str(tmp_path / "out.npz"), "--backend", "llvm"]) == 0
    got = np.load(tmp_path / "out.npz", allow_pickle=False)["output_0"]
    # by hand: [1,1,1] @ w = [3, 0]; [-1,0,2] @ w = [-1, 3] -> relu
    assert got.tolist() == [[3.0, 0.0], [0.0, 3.0]]
    np.savez(tmp_path / "bad.npz", z=np.zeros((2, 3), np.float32))
    assert main(["run", str(tmp_path / "m"), str(tmp_path / "bad.npz")]) == 2
    assert "lacks input(s) ['x']" in capsys.readouterr().err
    np.savez(tmp_path / "shape.npz", x=np.zeros((3, 3), np.float32))
    assert main(["run", str(tmp_path / "m"), str(tmp_path / "shape.npz")]) == 2
    assert "input %x is float32[3, 3], the graph takes f32[2,3]" in capsys.readouterr().err


def test_check_reports_agreement(model_file, capsys):
    assert main(["check", f"{model_file}:Net", "--input", "2,1,8,8", "--backend", "llvm",
                 "--per-node"]) == 0
    text = capsys.readouterr().out
    assert "llvm: agrees with the reference" in text and "per node" in text


# ---------------------------------------------------------------- fault injection
def _break_tanh(monkeypatch, tmp_path):
    """The LLVM lowering of tanh computes tanh(x) + 0.5 (fused loops and standalone)."""
    monkeypatch.setenv("IRGRAPH_CACHE_DIR", str(tmp_path / "cache"))

    def wrong(ctx, dt, v):
        return ctx.b.fadd(scalar.call(ctx, "tanh", v), scalar.const(dt, 0.5))

    def lower(ctx, node, ins, outs):
        elementwise(ctx, outs, ins, lambda vs: wrong(ctx, ins[0].dtype, vs[0]))
    monkeypatch.setitem(llvm_lowering.LOWERINGS, "tanh", llvm_lowering.Lowering(lower, True))
    monkeypatch.setitem(ops_core.SCALAR, "tanh",
                        lambda ctx, node, vs: wrong(ctx, node.inputs[0].dtype, vs[0]))


def chain(x, w):
    h = F.relu(x @ w)               # line A: matmul, relu
    e = (h * 0.5).exp()
    t = (e - 1.0).tanh()            # the first tanh: the culprit
    return (t.tanh() + h).sum()     # a second tanh after it


def test_divergence_finder_names_the_broken_node(monkeypatch, tmp_path):
    specs = fe.TensorSpec((4, 3)), fe.TensorSpec((3, 5))
    g = fe.trace(chain, *specs)
    r = np.random.default_rng(0)
    args = [r.standard_normal((4, 3)).astype(np.float32),
            r.standard_normal((3, 5)).astype(np.float32)]
    assert find_divergence(g, args, "llvm", cache=False).agrees
    _break_tanh(monkeypatch, tmp_path)
    div = find_divergence(g, args, "llvm", cache=False)
    tanhs = [i for i, n in enumerate(g.nodes) if n.op == "tanh"]
    assert not div.agrees and div.culprit.index == tanhs[0]
    line = chain.__code__.co_firstlineno + 3
    assert div.culprit.node.loc.endswith(f"test_cli.py:{line}")
    assert div.culprit.max_diff == pytest.approx(0.5, abs=1e-6)
    assert div.compiles <= 2 + math.ceil(math.log2(len(g.nodes)))
    report = div.format()
    assert f"'tanh' at {div.culprit.node.loc}" in report and ">> %" in report
    assert "max|x| =" in report
    per_node = {d.index: d for d in node_differences(g, args, "llvm", cache=False)}
    assert [i for i, d in per_node.items() if d.diverges][0] == tanhs[0]
    assert not any(per_node[i].diverges for i in range(tanhs[0]))
    assert all(per_node[i].diverges for i in range(tanhs[0], len(g.nodes)))


def test_bisection_finds_the_first_of_many_nodes_in_log_compiles():
    """A fake backend that is wrong from node k on (the reference plus an offset wherever an
    observed value comes from node k): the finder names node k within ceil(log2 n) + 2
    compiles, for every k of a 40-node chain."""
    def chain40(x):
        for _ in range(40):
            x = x * 1.01
        return x.sum()
    g = fe.trace(chain40, fe.TensorSpec((3,)))
    args = [np.ones(3, np.float32)]
    n = len(g.nodes)
    for k in range(0, n, 7):
        bad = g.nodes[k].outputs[0]

        def broken(graph, k=k):
            ref_exe = observe(g, [bad] + list(g.outputs))    # noqa: F841 (shape of the idea)

            class Exe:
                def __call__(self, *a):
                    outs = interpret(graph, list(a))
                    # output values computed at or after node k are off by 1
                    names = [v.name for v in graph.outputs]
                    return [o + 1 if int(nm) >= int(bad.name) else o
                            for o, nm in zip(outs, names)]
            return Exe()
        div = find_divergence(g, args, broken)
        assert div.culprit.index == k and div.compiles <= 2 + math.ceil(math.log2(n))
    ok = find_divergence(g, args, lambda graph: (lambda *a: interpret(graph, list(a))))
    assert ok.agrees and ok.compiles == 1 and "agrees" in ok.format()


def test_check_command_exits_1_and_names_the_node(monkeypatch, tmp_path, model_file,
                                                  capsys):
    _break_tanh(monkeypatch, tmp_path)
    assert main(["check", f"{model_file}:Net", "--input", "2,1,8,8",
                 "--backend", "llvm"]) == 1
    text = capsys.readouterr().out
    assert re.search(r"first divergent node #\d+ 'tanh' at .*model\.py:13", text), text
    assert ">> %" in text and "x #" in text
