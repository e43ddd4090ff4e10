"""The scan rewrites the LLVM backend applies before lowering (passes/scan_reuse.py,
passes/scan_accumulate.py): BPTT gradients (eq. 10.20-10.21 with the step of eq. 10.8-10.9)
stay the same, the backward body no longer recomputes tanh(h W + x U), its weight-gradient
carries leave the scan; scans they do not apply to are left alone."""
from __future__ import annotations

import numpy as np
import pytest

import irgraph.backends as backends
from irgraph import Graph, verify
from irgraph.interpreter import interpret
from irgraph.passes.autodiff import value_and_grad
from irgraph.passes.scan_accumulate import hoist_scan_accumulators
from irgraph.passes.scan_reuse import reuse_forward_outputs
from tests.helpers import elman_args as args
from tests.helpers import elman_graph


def training_graph(**attrs) -> Graph:
    """sum(h_t^2) over the Elman RNN, with its gradients wrt h0, W and U."""
    g = elman_graph(**attrs)
    _, ys = g.outputs
    g.set_outputs([g.op("sum", g.op("mul", ys, ys), axis=None)])
    return value_and_grad(g, wrt=["h0", "W", "U"])


def rewritten(g: Graph) -> Graph:
    return verify(hoist_scan_accumulators(reuse_forward_outputs(g)))


def scans(g: Graph):
    return [n for n in g.nodes if n.op == "scan"]


def backward(g: Graph):
    return next(n for n in scans(g) if n.attrs["reverse"])


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_bptt_gradients_unchanged_and_backward_body_lighter(steps):
    g = training_graph(steps=steps)
    r = rewritten(g)
    a = args(seed=steps, steps=steps)
    for got, want in zip(interpret(r, a), interpret(g, a)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)
    before, after = backward(g), backward(r)
    assert before.attrs["num_carry"] == 3 and after.attrs["num_carry"] == 1   # W, U hoisted
    assert after.attrs["num_seq"] == before.attrs["num_seq"] + 1       # h_t from forward
    body_ops = [n.op for n in after.attrs["body"].nodes]
    assert "tanh" not in body_ops and body_ops.count("matmul") == 2    # only dh, dx left


def test_gradients_against_finite_differences_after_the_rewrite():
    """The rewritten graph's dL/dW against central differences in float64."""
    g = training_graph(steps=4)
    r = rewritten(g)
    a = args(seed=3, steps=4)
    w = a[2]
    dw = interpret(r, a)[2]
    eps = 1e-6
    for i, j in [(0, 0), (1, 2), (2, 1)]:
        hi, lo = [x.copy() for x in a], [x.copy() for x in a]
        hi[2][i, j] = w[i, j] + eps
        lo[2][i, j] = w[i, j] - eps
        fd = (interpret(r, hi)[0] - interpret(r, lo)[0]) / (2 * eps)
        assert abs(fd - dw[i, j]) < 1e-6 * max(1.0, abs(fd))


def test_masked_training_graph_gradients_unchanged():
    g = training_graph(steps=4, masked=True)
    r = rewritten(g)
    a = args(seed=1, steps=4, masked=True)
    for got, want in zip(interpret(r, a), interpret(g, a)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)


def test_saving_scan_keeps_its_accumulator():
    """Saved states hold the accumulator's per-step values: no hoisting there."""
    bwd = backward(training_graph(steps=4))
    g = Graph("one")
    ins = [g.add_input(f"i{k}", v.type) for k, v in enumerate(bwd.inputs)]
    g.set_outputs(g.add_node("scan", ins, dict(bwd.attrs, save_every=2)))
    assert hoist_scan_accumulators(g) is g


def test_untouched_graph_is_returned_as_is():
    g = elman_graph(steps=3)
    assert rewritten(g) == g


@pytest.mark.parametrize("threads", [1, 2])
def test_llvm_backend_matches_reference_on_the_rewritten_training_graph(threads):
    g = training_graph(steps=5)
    a = args(seed=2, steps=5)
    got = backends.compile(g, "llvm", threads=threads)(*a)
    for x, y in zip(got, interpret(g, a)):
        np.testing.assert_allclose(x, y, rtol=1e-11, atol=1e-12)


def test_sum_over_steps_of_batched_products_is_one_matmul():
    """sum_t S_t^T Q_t (the gradient of an input projection shared by every step) becomes
    (S as [T*b, m])^T (Q as [T*b, n]): same values (float64 reference, and LLVM), the
    batched product gone; a product something else reads, or a sum over another axis,
    stays."""
    from irgraph import TensorType
    from irgraph.passes.scan_accumulate import fold_batched_matmul_sums
    g = Graph("bsum")
    s = g.add_input("s", TensorType((5, 3, 4), "float64"))
    q = g.add_input("q", TensorType((5, 3, 6), "float64"))
    prod = g.op("matmul", g.op("transpose", s, perm=(0, 2, 1)), q)
    kept = g.op("matmul", g.op("transpose", s, perm=(0, 2, 1)), q)
    g.set_outputs([g.op("sum", prod, axis=(0,), keepdims=True), g.op("sum", kept, axis=(1,)),
                   kept])
    new = verify(fold_batched_matmul_sums(g))
    ranks = sorted(n.inputs[0].type.rank for n in new.nodes if n.op == "matmul")
    assert ranks == [2, 3]                     # the folded one is a plain 2-D matmul
    rng = np.random.default_rng(0)
    sa, qa = rng.standard_normal((5, 3, 4)), rng.standard_normal((5, 3, 6))
    want = interpret(g, [sa, qa])
    np.testing.assert_allclose(want[0][0], sum(sa[t].T @ qa[t] for t in range(5)), rtol=1e-12)
    for got in (interpret(new, [sa, qa]), backends.compile(new, "llvm", threads=2)(sa, qa)):
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-12)
    assert fold_batched_matmul_sums(new) is new


def test_unread_per_step_outputs_give_the_backward_scan_no_zero_sequence():
    """Only the last state feeds the loss (fig. 10.5): the per-step outputs' cotangent is
    zero, so the backward step takes no dL/dy_t sequence and adds nothing (the graph holds
    no [T, b, h] zeros); the gradients match finite differences of the float64 loss."""
    import irgraph.frontend as fe
    from irgraph.frontend import F
    from irgraph.frontend.rnn import scan
    T, B, H = 40, 2, 3                     # above the unrolling threshold: a rolled BPTT

    def loss(h0, xs, w):
        hs = scan(lambda h, x, w: (F.tanh(x + F.matmul(h, w)),) * 2, h0, xs, consts=[w])
        return F.sum(hs[0] * hs[0])
    specs = [fe.TensorSpec(s, "float64") for s in ((B, H), (T, B, H), (H, H))]
    g = fe.grad(loss, *specs, wrt=[0, 1, 2])
    zeros = [n for n in g.graph.nodes if n.op == "full" and n.outputs[0].shape == (T, B, H)]
    assert not zeros
    rng = np.random.default_rng(0)
    args = [rng.standard_normal(s.type.shape) * 0.5 for s in specs]
    f = fe.compile(loss, *specs)
    grads = g(*args)
    for k, a in enumerate(args):
        e = np.zeros_like(a)
        e.flat[1] = 1e-6
        fd = (f(*[x + e if j == k else x for j, x in enumerate(args)])
              - f(*[x - e if j == k else x for j, x in enumerate(args)])) / 2e-6
        np.testing.assert_allclose(grads[k].flat[1], fd, rtol=1e-6, atol=1e-8)
