"""Debugging NaNs: the ``debug_nans`` pass reports the first node that makes a NaN or an
infinity, with its op, its operands' ranges and the user's source line; it is off by
default."""
from __future__ import annotations

import inspect

import numpy as np
import pytest

import irgraph.backends as backends
import irgraph.frontend as fe
from irgraph.frontend import F, nn, optim
from irgraph import Graph, TensorType
from irgraph.ops.debug import NonFiniteError
from irgraph.passes.manager import PassManager

SPEC = fe.TensorSpec((2, 3))


def line_of(fn, text: str) -> str:
    src, start = inspect.getsourcelines(fn)
    offset = next(i for i, ln in enumerate(src) if text in ln)
    return f"test_nan_debug.py:{start + offset}"


def model(x):
    y = F.exp(x) - 2.0
    z = F.sqrt(y)                       # NaN where exp(x) < 2
    w = F.log(y)                        # NaN there too, but later
    return z + w


@pytest.mark.parametrize("backend", ["reference", "llvm", "triton"])
def test_reports_the_first_offending_node_with_op_ranges_and_source_line(backend):
    f = fe.compile(model, SPEC, pipeline="default, debug_nans", backend=backend)
    x = np.array([[1.0, 2.0, 3.0], [0.1, 1.5, 2.5]], np.float32)
    with pytest.raises(NonFiniteError) as info:
        f(x)
    msg = str(info.value)
    assert "op 'sqrt'" in msg and "log" not in msg.split("node:")[0]
    assert line_of(model, "F.sqrt(y)") in msg
    assert "produced 1 NaN and 0 inf out of 6 values" in msg
    lo, hi = np.exp(0.1) - 2, np.exp(3.0) - 2
    assert f"range [{lo:.6g}, {hi:.6g}] (0 NaN, 0 inf)" in msg


def test_infinity_is_reported_too():
    def overflow(x):
        return F.exp(x * 100.0)
    f = fe.compile(overflow, SPEC, pipeline="debug_nans")
    with pytest.raises(NonFiniteError, match=r"op 'exp'.*0 NaN and 1 inf") as info:
        f(np.array([[0.0, 1.0, 0.5], [0.1, 0.2, -3.0]], np.float32))
    assert line_of(overflow, "F.exp(x * 100.0)") in str(info.value)
    assert "range [-300, 100]" in str(info.value)


def test_a_non_finite_graph_input_is_named():
    f = fe.compile(model, SPEC, pipeline="debug_nans")
    with pytest.raises(NonFiniteError, match=r"op 'input'.*\n  node: input %x"):
        f(np.array([[np.nan, 2, 3], [4, 5, 6]], np.float32))


def test_off_by_default(monkeypatch):
    monkeypatch.delenv("IRGRAPH_DEBUG_NANS", raising=False)
    f = fe.compile(model, SPEC)
    assert "check_finite" not in [n.op for n in f.graph.nodes]
    out = f(np.zeros((2, 3), np.float32))            # exp(0) - 2 < 0: NaN, silently
    assert np.isnan(out).all()


def test_environment_switch_turns_it_on(monkeypatch):
    monkeypatch.setenv("IRGRAPH_DEBUG_NANS", "1")
    f = fe.compile(model, SPEC)
    assert "check_finite" in [n.op for n in f.graph.nodes]
    with pytest.raises(NonFiniteError, match="op 'sqrt'"):
        f(np.zeros((2, 3), np.float32))
    np.testing.assert_allclose(f(np.full((2, 3), 2.0, np.float32)),
                               np.full((2, 3), np.sqrt(np.exp(2) - 2) + np.log(np.exp(2) - 2)),
                               rtol=1e-6)


def test_gradient_nodes_of_a_training_step_are_checked():
    """sqrt at 0 is finite, its derivative is not: the error comes from the backward pass
    and still names the user's line of the sqrt."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 1)

        def forward(self, x):
            return F.sum(F.sqrt(F.relu(self.fc(x) * 0.0)))

    fe.manual_seed(0)
    net = Net()
    step = fe.compile_train(net, None, optim.SGD(lr=0.1), SPEC,
                            pipeline="default, debug_nans")
    with pytest.raises(NonFiniteError) as info:
        step(np.ones((2, 3), np.float32))
    assert line_of(Net.forward, "F.sqrt") in str(info.value)


def test_checks_are_in_order_and_the_instrumented_graph_verifies():
    g = Graph("g")
    x = g.add_input("x", TensorType((3,)))
    g.set_outputs([g.op("neg", g.op("exp", x))])
    out = PassManager("debug_nans").run(g)
    assert [n.op for n in out.nodes] == ["check_finite", "exp", "check_finite", "neg",
                                         "check_finite"]
    assert out.outputs[0] is out.nodes[-1].outputs[0]
    exe = backends.compile(out, "reference")
    np.testing.assert_allclose(exe(np.zeros(3, np.float32))[0], -1.0)


@pytest.mark.parametrize("backend", ["reference", "llvm", "triton"])
def test_checked_graph_gives_the_same_results_on_every_backend_when_finite(backend):
    f = fe.compile(model, SPEC, pipeline="default, debug_nans", backend=backend)
    assert sum(n.op == "check_finite" for n in f.graph.nodes) >= 4
    x = np.array([[1.0, 2.0, 3.0], [1.5, 0.8, 2.5]], np.float32)
    y = np.exp(x.astype(np.float64)) - 2
    np.testing.assert_allclose(f(x), np.sqrt(y) + np.log(y), rtol=1e-5)
