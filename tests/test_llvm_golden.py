"""Golden models (tests/golden: MLP, CNN with batch norm, tanh RNN, and a training step of
each, outputs by the reference backend) on the LLVM backend: the graph as stored, and after
the default pass pipeline (fusion regions, memory planning), with 1 and 2 threads.

Tolerances (float32): forward outputs rtol 1e-5 / atol 1e-5 (sums of at most a few hundred
products in another order). Training steps: rtol 1e-4 / atol 1e-4: Adam (alg. 8.7) divides the
first moment by the root of the second, so a gradient of 1e-7 that differs in its last bits
changes a parameter by up to lr times that relative error."""
from __future__ import annotations

import numpy as np
import pytest

import irgraph.backends as backends
from tests.golden import NAMES, load


def tolerance(name: str) -> dict:
    return dict(rtol=1e-4, atol=1e-4) if name.endswith("_train") else dict(rtol=1e-5, atol=1e-5)


def check(name: str, graph, args, expect, threads: int) -> None:
    exe = backends.compile(graph, "llvm", threads=threads)
    got = exe(*[a.copy() for a in args])
    assert len(got) == len(expect)
    for j, (r, e) in enumerate(zip(got, expect)):
        assert r.shape == e.shape and r.dtype == e.dtype
        np.testing.assert_allclose(r, e, **tolerance(name), err_msg=f"{name} output {j}")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", NAMES)
def test_golden_as_stored(name, threads):
    graph, args, expect = load(name)
    check(name, graph, args, expect, threads)


@pytest.mark.parametrize("name", NAMES)
def test_golden_after_default_pipeline(name):
    from irgraph.passes.manager import PassManager, default_pipeline
    graph, args, expect = load(name)
    kind = "training" if name.endswith("_train") else "inference"
    optimized = PassManager(default_pipeline(kind)).run(graph)
    check(name, optimized, args, expect, 2)


@pytest.mark.parametrize("name", NAMES)
def test_golden_with_fused_regions(name):
    """After passes/fusion.py: elementwise regions and epilogue tails run as single loop
    nests; a reduction region's prologue is computed inside the reduction loop."""
    from irgraph.passes.manager import PassManager
    graph, args, expect = load(name)
    fused = PassManager(["simplify", "fuse"]).run(graph)
    assert any(n.op == "fused" for n in fused.nodes)
    check(name, fused, args, expect, 2)


def test_training_step_updates_in_place_and_trains():
    """Ten steps of the MLP's SGD step on the LLVM backend follow the reference's
    trajectory, with the parameters updated in their own buffers."""
    graph, args, _ = load("mlp_train")
    ref = backends.compile(graph, "reference")
    nat = backends.compile(graph, "llvm", threads=2)
    a_ref, a_nat = [a.copy() for a in args], [a.copy() for a in args]
    losses = []
    for _ in range(10):
        lr_ = ref(*a_ref)
        ln = nat(*a_nat)
        losses.append(float(ln[0]))
        np.testing.assert_allclose(ln[0], lr_[0], rtol=1e-4, atol=1e-5)
    for a, b in zip(a_nat, a_ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert losses[-1] < losses[0]
