"""The compile driver (frontend/driver.py): every entry point compiles through it, the passes
a backend declares run in the same PassManager as the pipeline (printed, timed, in the
graph the backend builds), and each graph is verified once on its way to the backend."""
from __future__ import annotations

import sys

import numpy as np
import pytest

import irgraph.backends as backends
import irgraph.frontend as fe
from irgraph import Graph, TensorType, verifier
from irgraph.backends import llvm, reference
from irgraph.frontend import distributed as D
from irgraph.frontend import F, driver, nn, optim
from irgraph.frontend.second_order import Newton
from irgraph.passes.manager import PassError, PassManager, default_pipeline
from irgraph.verifier import VerificationError

RNG = np.random.default_rng(0)
X = RNG.standard_normal((6, 4)).astype(np.float32)
Y = np.array([0, 2, 1, 1, 0, 2], np.int64)
SX, SY = fe.TensorSpec((6, 4)), fe.TensorSpec((6,), "int64")


def mlp() -> nn.Module:
    fe.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))


def by_hand(x, w1, b1, w2, b2) -> np.ndarray:
    """``mlp()``'s forward pass in numpy."""
    return np.tanh(x @ w1.T + b1) @ w2.T + b2


def weights(model: nn.Module) -> list[np.ndarray]:
    return [a for i in (0, 2) for a in (model[i].weight.data, model[i].bias.data)]


@pytest.fixture
def runs(monkeypatch):
    """The pass lists the driver's PassManager ran, in order; an entry point that compiled
    through a backend's own ``compile`` (not the driver) fails the test."""
    seen: list[list[str]] = []

    class Recording(PassManager):
        def run(self, graph):
            seen.append(self.names)
            return super().run(graph)

    real = backends.compile

    def prepared_only(graph, backend="reference", *, prepared=False, **options):
        assert prepared, "an entry point compiled without the driver"
        return real(graph, backend, prepared=True, **options)

    def refuse(*args, **kwargs):
        raise AssertionError("an entry point called a backend's own compile")

    monkeypatch.setattr(driver, "PassManager", Recording)
    monkeypatch.setattr(backends, "compile", prepared_only)
    for module in (reference, llvm):
        monkeypatch.setattr(module, "compile", refuse)
    return seen


INFERENCE, TRAINING = default_pipeline("inference"), default_pipeline("training")


def test_compile_and_jit_go_through_the_driver(runs):
    model = mlp()
    f = fe.compile(model, SX)
    assert runs == [INFERENCE] and f.passes.names == INFERENCE
    want = by_hand(X, *weights(model))
    np.testing.assert_allclose(f(X), want, rtol=1e-5, atol=1e-6)
    j = fe.jit(model)
    j(X)
    j(X)                     # the same signature: no second compile
    j(X[:2])
    assert runs == [INFERENCE] * 3


def test_grad_value_and_grad_and_their_jit_form_go_through_the_driver(runs):
    model = mlp()

    def loss(x, y):
        return F.cross_entropy(model(x), y)

    g = fe.grad(loss, SX, SY, model=model)
    v, _ = fe.value_and_grad(loss, SX, SY, model=model)(X, Y)
    fe.grad(loss, model=model)(X, Y)              # no specs: compiled at the call
    assert runs == [TRAINING] * 3 and g.passes.names == TRAINING
    assert np.isfinite(v)


def test_compile_train_and_second_order_steps_go_through_the_driver(runs):
    step = fe.compile_train(mlp(), nn.CrossEntropyLoss(), optim.SGD(lr=0.1), SX, SY)
    assert runs == [TRAINING] and step.passes.names == TRAINING
    newton = fe.compile_train(mlp(), nn.CrossEntropyLoss(), Newton(damping=1.0), SX, SY)
    assert len(runs) == 2                         # the loss and its gradient
    first = newton(X, Y)
    assert len(runs) == 3                         # the Hessian, at the first step
    assert newton(X, Y) < first                   # a damped Newton step descends here
    assert runs == [TRAINING] * 3


def test_data_parallel_steps_go_through_the_driver(runs):
    step = D.compile_data_parallel(mlp(), nn.CrossEntropyLoss(), optim.SGD(lr=0.1), SX, SY)
    assert runs == [TRAINING, TRAINING]           # the gradient, then the update
    assert step.passes.names == TRAINING and step.grad_passes.names == TRAINING
    plain = fe.compile_train(mlp(), nn.CrossEntropyLoss(), optim.SGD(lr=0.1), SX, SY)
    assert step(X, Y) == pytest.approx(plain(X, Y), rel=1e-6)


def test_onnx_models_compile_through_the_driver(runs):
    from irgraph.frontend.onnx import export_onnx, import_onnx
    model = mlp()
    graph = fe.trace(model, SX)
    arrays = {n: p.data for n, p in model.named_parameters(buffers=True)}
    imported = import_onnx(export_onnx(graph, arrays).SerializeToString())
    got = imported.compile()(X)[0]
    assert runs == [INFERENCE]
    want = by_hand(X, *weights(model))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


class RNNLoss(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(2, 3)

    def forward(self, x):
        out, _ = self.rnn(x)
        return (out * out).mean()


def test_second_order_steps_get_bptt_preparation(runs):
    """A short recurrence is unrolled before the gradient (passes/unroll.py's "auto"), as in
    compile_train with a first-order optimizer, and the training pipeline runs."""
    fe.manual_seed(0)
    model = RNNLoss()
    step = fe.compile_train(model, None, Newton(damping=1.0), fe.TensorSpec((4, 1, 2)))
    problem = step.problem
    assert "scan" in [n.op for n in problem.graph.nodes]                # the traced loss
    assert "scan" not in [n.op for n in problem.gradient_graph.nodes]  # 4 steps: unrolled
    assert runs == [TRAINING] and problem.passes.names == TRAINING
    # the compiled gradient against central differences of the compiled loss
    x = RNG.standard_normal((4, 1, 2)).astype(np.float32)
    theta = problem.get()
    _, grad = problem.loss_grad(theta, [x])
    h = 1e-2
    for i in range(0, theta.size, 3):
        e = np.zeros_like(theta)
        e[i] = h
        fd = (problem.loss_grad(theta + e, [x])[0] - problem.loss_grad(theta - e, [x])[0]) / (2 * h)
        assert grad[i] == pytest.approx(fd, abs=2e-3), i


# ---------------------------------------------------------------- LLVM's declared passes
def test_llvm_passes_are_printed_timed_and_in_the_built_graph(capsys):
    fe.manual_seed(0)
    rnn = nn.RNN(3, 4)

    def loss(x):
        out, _ = rnn(x)
        return (out * out).mean()

    spec = fe.TensorSpec((12, 2, 3))                # 12 steps: a rolled scan (BPTT "auto")
    names = list(llvm.PASSES)
    moved = ["llvm_low_precision", "scan_reuse", "scan_accumulate", "fuse_scan_bodies"]
    assert [n for n in names if n in moved] == moved
    f = fe.value_and_grad(loss, spec, model=rnn, backend="llvm", threads=1,
                          print_after=names)
    printed = capsys.readouterr().out
    for i, name in enumerate(names):
        n = len(TRAINING) + len(names)
        assert f"IR after pass {name} ({len(TRAINING) + i + 1}/{n})" in printed
    assert f.passes.names == TRAINING + names
    assert set(names) <= set(f.passes.timings)
    changed = {r.name for r in f.passes.records if r.changed}
    assert {"scan_reuse", "fuse_scan_bodies"} <= changed
    assert "llvm_low_precision" not in changed     # no 16-bit value here
    # what the backend built is the graph after its passes: every scan body fused
    assert f.executable.graph is f.graph
    scans = [n for n in f.graph.nodes if n.op == "scan"]
    assert scans and all("fused" in [m.op for m in s.attrs["body"].nodes] for s in scans)
    x = RNG.standard_normal((12, 2, 3)).astype(np.float32)
    ref = fe.value_and_grad(loss, spec, model=rnn)(x)
    got = f(x)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-5)
    for k in ref[1]:
        np.testing.assert_allclose(got[1][k], ref[1][k], rtol=1e-4, atol=1e-6)


class Masked(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(2, 3)

    def forward(self, x):
        return self.rnn(x, lengths=np.array([5, 2, 4], np.int64))


def test_masked_scans_fold_their_mask_into_the_fused_body_and_match_the_reference():
    fe.manual_seed(1)
    model = Masked()
    spec = fe.TensorSpec((5, 3, 2))
    f = fe.compile(model, spec, backend="llvm", threads=1)
    assert "masked=true" in str(f.source_graph)
    scans = [n for n in f.graph.nodes if n.op == "scan"]
    assert scans and not any(s.attrs["masked"] for s in scans)
    x = RNG.standard_normal((5, 3, 2)).astype(np.float32)
    want = fe.compile(model, spec)(x)
    for a, b in zip(f(x), want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- verified once
@pytest.fixture
def verified(monkeypatch):
    """The graphs verified (outermost calls of ``irgraph.verify`` from any module)."""
    calls: list[Graph] = []
    real = verifier.verify
    depth = [0]

    def counting(g):
        if depth[0] == 0:
            calls.append(g)
        depth[0] += 1
        try:
            return real(g)
        finally:
            depth[0] -= 1

    for name, module in list(sys.modules.items()):
        if name.startswith("irgraph") and getattr(module, "verify", None) is real:
            monkeypatch.setattr(module, "verify", counting)
    return calls


@pytest.mark.parametrize("backend", ["reference", "llvm"])
def test_a_compile_verifies_each_graph_once(verified, backend):
    traced = fe.trace(mlp(), SX)
    verified.clear()
    options = {"threads": 1} if backend == "llvm" else {}
    built = driver.compile_graph(traced, backend=backend, pipeline="default, fuse",
                                 options=options)
    # the pipeline's input, then each new graph a pass made (the last: the built graph);
    # the backend verifies nothing again
    new = sum(r.changed for r in built.passes.records)
    assert new >= 1 and len(verified) == 1 + new
    assert verified[0] is traced and verified[-1] is built.graph
    assert len({id(g) for g in verified}) == len(verified)


def _bad_graph() -> Graph:
    g = Graph("bad")
    x = g.add_input("x", TensorType((3,)))
    g.set_outputs([g.op("exp", x)])
    g.nodes[0].outputs[0].type = TensorType((4,))     # edited in place: no longer valid
    return g


@pytest.mark.parametrize("backend", ["reference", "llvm"])
def test_a_backend_called_directly_verifies_its_input_once(verified, backend):
    g = fe.trace(mlp(), SX)
    verified.clear()
    exe = backends.compile(g, backend)
    assert verified == [g]              # no pass of the backend changed this graph
    rng = np.random.default_rng(1)
    args = [X] + [rng.standard_normal(p.type.shape).astype(np.float32) for p in g.params]
    want = by_hand(*args)
    np.testing.assert_allclose(exe(*args)[0], want, rtol=1e-5, atol=1e-6)
    with pytest.raises(VerificationError, match="bad"):
        backends.compile(_bad_graph(), backend)


def test_a_pass_that_returns_its_input_leaves_it_verified_once(verified):
    with pytest.raises(VerificationError):
        PassManager([lambda g: g]).run(_bad_graph())
    g = fe.trace(mlp(), SX)
    verified.clear()
    pm = PassManager([lambda g: g, "dce"])
    assert pm.run(g) is g
    assert verified == [g] and [r.changed for r in pm.records] == [False, False]


@pytest.mark.parametrize("edit, mutates", [
    (lambda g: setattr(g.inputs[0], "type", TensorType((6, 4), "float64")), True),
    (lambda g: g.set_outputs(g.outputs[::-1] + g.outputs), True),
    (lambda g: setattr(g.nodes[0], "loc", "elsewhere.py:1"), True),
    (lambda g: setattr(_first_fused(g).attrs["body"].nodes[-1], "op", "neg"), True),
    (lambda g: _first_fused(g).attrs.update(kind=_first_fused(g).attrs["kind"]), False),
])
def test_the_manager_sees_a_pass_edit_its_input_even_inside_a_subgraph(edit, mutates):
    """The check compares what the graph's text shows, subgraphs included."""
    g = PassManager("fuse").run(fe.trace(mlp(), SX))
    assert _first_fused(g) is not None
    text = str(g)

    def editing(graph):
        out = graph.copy()
        edit(graph)
        return out

    if not mutates:
        assert PassManager([editing]).run(g) is not g and str(g) == text
        return
    with pytest.raises(PassError, match="mutated its input graph"):
        PassManager([editing]).run(g)
    assert str(g) != text


def _first_fused(g: Graph):
    return next((n for n in g.nodes if n.op == "fused"), None)
