"""Optimizer updates fused with the nodes that make their gradient (passes/fusion.py
``fuse_updates``, one of the LLVM backend's passes): one loop per parameter, still written
in place into the donated parameter and state, with the reference interpreter's values on
the graph as written (odd sizes, 1 and 2 threads), and nodes read elsewhere or broadcasting
left out of the region."""
from __future__ import annotations

import numpy as np
import pytest

import irgraph.backends as backends
import irgraph.frontend as fe
from irgraph import Graph, TensorType, verify
from irgraph.frontend import nn, optim
from irgraph.interpreter import interpret
from irgraph.passes.fusion import fuse, fuse_updates

F = "float32"


def _graph(shape=(33, 7), kind="adam", extra_reader=False, bias=False) -> Graph:
    """p' = update(p, g + wd p [* scale], state...) donated to p and the state; optionally
    another output reads wd p (so that node stays out), or a broadcast bias joins g."""
    t = TensorType(shape, F)
    s0 = TensorType((), F)
    g = Graph("step")
    gr = g.add_input("g", t)
    wd, lr, scale = (g.add_input(n, s0) for n in ("wd", "lr", "scale"))
    hyper = [g.add_input(n, s0) for n in ("beta1", "beta2", "eps", "t")] if kind == "adam" \
        else [g.add_input("momentum", s0)]
    bvec = g.add_input("b", TensorType(shape[-1:], F)) if bias else None
    p = g.add_param("p", t)
    state = [g.add_param(n, t) for n in (("m", "v") if kind == "adam" else ("buf",))]
    decay = g.op("mul", wd, p)
    grad = g.op("mul", g.op("add", gr, decay), scale)
    if bias:
        grad = g.op("add", grad, bvec)
    if kind == "adam":
        outs = g.add_node("adam_update", [p, grad, *state, lr, *hyper], {"convention": "torch"})
    else:
        outs = g.add_node("momentum_update", [p, grad, *state, lr, *hyper],
                          {"convention": "torch", "nesterov": True})
    g.set_outputs(list(outs) + ([g.op("neg", decay)] if extra_reader else []))
    first = len(g.inputs)
    for k in range(len(outs)):
        g.donations[k] = first + k
    return g


def _args(g: Graph, seed=0):
    r = np.random.default_rng(seed)
    vals = {"wd": 0.1, "lr": 0.01, "scale": 0.5, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
            "t": 3.0, "momentum": 0.9}
    out = []
    for v in g.arguments:
        if v.type.rank == 0:
            out.append(np.array(vals[v.name], np.float32))
        elif v.name == "v":
            out.append(r.random(v.shape).astype(np.float32))     # a second moment: >= 0
        else:
            out.append(r.standard_normal(v.shape).astype(np.float32))
    return out


def _region(g: Graph):
    (f,) = [n for n in g.nodes if n.op == "fused"]
    return [n.op for n in f.attrs["body"].nodes]


def _one_region_as_written(g: Graph, r: Graph, kind: str) -> None:
    """``r`` is one fused region of the whole chain and the update, with ``g``'s values."""
    upd = "adam_update" if kind == "adam" else "momentum_update"
    assert _region(r) == ["mul", "add", "mul", upd] and [n.op for n in r.nodes] == ["fused"]
    a = _args(g)
    for got, want in zip(interpret(r, [x.copy() for x in a]), interpret(g, a)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("kind", ["adam", "momentum"])
def test_the_gradient_chain_joins_the_update(kind):
    g = _graph(kind=kind)
    _one_region_as_written(g, verify(fuse_updates(g)), kind)


@pytest.mark.parametrize("kind", ["adam", "momentum"])
def test_a_chain_fuse_grouped_still_joins_its_update(kind):
    """``fuse`` (a user's pipeline, before the backend's passes) groups the weight-decay
    chain into an elementwise region of its own; ``fuse_updates`` takes its nodes back into
    the update's loop: one region as without ``fuse``, not a second pass over the
    parameter, and the same values."""
    g = _graph(kind=kind)
    f = verify(fuse(g))
    assert [n.op for n in f.nodes].count("fused") == 1 and f.nodes[-1].op != "fused"
    _one_region_as_written(g, verify(fuse_updates(f)), kind)
    # a region something else reads as well stays as fuse made it
    f = verify(fuse(_graph(kind=kind, extra_reader=True)))
    r = verify(fuse_updates(f))
    assert [n.op for n in r.nodes].count("fused") == [n.op for n in f.nodes].count("fused")


def test_nodes_read_elsewhere_or_broadcasting_stay_out():
    r = verify(fuse_updates(_graph(extra_reader=True)))
    assert _region(r) == ["add", "mul", "adam_update"]       # wd p is read by another output
    r = verify(fuse_updates(_graph(bias=True)))
    # the bias add broadcasts b: it stays, and with it everything feeding it
    assert "fused" not in [n.op for n in r.nodes]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape,kind,extra", [((33, 7), "adam", False), ((1031,), "momentum", False),
                                              ((5, 3, 67), "adam", True)])
def test_llvm_updates_in_place_with_the_reference_values(threads, shape, kind, extra):
    g = _graph(shape, kind, extra_reader=extra)
    exe = backends.compile(g, "llvm", threads=threads)
    assert "fused" in [n.op for n in exe.graph.nodes]
    assert exe.plan.inplace == g.donations                    # no copy after the run
    a = _args(g, seed=threads)
    want = interpret(g, [x.copy() for x in a])
    got = exe(*a)
    for k, (x, y) in enumerate(zip(got, want)):
        np.testing.assert_allclose(x, y, rtol=2e-6, atol=1e-6)
        if k in g.donations:
            assert x is a[g.donations[k]]                     # written into the argument


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("make", [lambda: optim.Adam(lr=1e-2, weight_decay=0.05,
                                                     convention="torch"),
                                  lambda: optim.SGD(lr=1e-2, momentum=0.9, weight_decay=0.05,
                                                    convention="torch"),
                                  lambda: optim.SGD(lr=1e-2, weight_decay=0.05)])
def test_training_steps_with_weight_decay_match_the_reference_backend(threads, make):
    x = np.random.default_rng(1).standard_normal((9, 13)).astype(np.float32)
    y = np.random.default_rng(2).integers(0, 5, 9).astype(np.int64)
    params = []
    for backend, opts in (("reference", {}), ("llvm", {"threads": threads})):
        fe.manual_seed(0)
        model = nn.Sequential(nn.Linear(13, 17), nn.ReLU(), nn.Linear(17, 5))
        step = fe.compile_train(model, nn.CrossEntropyLoss(), make(), fe.TensorSpec(x.shape),
                                fe.TensorSpec(y.shape, "int64"), backend=backend, **opts)
        for _ in range(3):
            step(x, y)
        params.append({k: np.array(v) for k, v in model.state_dict().items()})
    for k in params[0]:
        np.testing.assert_allclose(params[1][k], params[0][k], rtol=1e-4, atol=1e-5)
