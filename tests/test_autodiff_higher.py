"""Second and third derivatives: hvp, hessian and jacobian (passes/autodiff/higher.py) and grad
of grad of grad, against torch.autograd.functional, finite differences of the gradient and
analytic values."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import irgraph
from irgraph import Graph, IRError, TensorType, verify
from irgraph.interpreter import interpret
from irgraph.passes.autodiff import grad, hessian, hvp, jacobian

RNG = np.random.default_rng(0)
X = RNG.standard_normal((4, 3))
W = RNG.standard_normal((3, 2)) * 0.7
B = RNG.standard_normal((2,)) * 0.3


def mlp_loss_graph() -> Graph:
    """L(x; W, b) = mean(tanh(x W + b)^2) + sum(sigmoid(W)^3): smooth, mixed curvature."""
    g = Graph("loss")
    x = g.add_input("x", TensorType((4, 3), "float64"))
    w = g.add_param("w", TensorType((3, 2), "float64"))
    b = g.add_param("b", TensorType((2,), "float64"))
    h = g.op("tanh", g.op("add", g.op("matmul", x, w), b))
    s = g.op("sigmoid", w)
    reg = g.op("sum", g.op("mul", s, g.op("square", s)))
    g.set_outputs([g.op("add", g.op("mean", g.op("square", h)), reg)])
    return verify(g)


def mlp_loss_torch(w, b, x=torch.tensor(X)):
    return torch.mean(torch.tanh(x @ w + b) ** 2) + torch.sum(torch.sigmoid(w) ** 3)


def test_hessian_matches_torch_autograd_functional_hessian():
    H = interpret(hessian(mlp_loss_graph(), wrt=["w", "b"]), [X, W, B])[0]
    th = torch.autograd.functional.hessian(mlp_loss_torch, (torch.tensor(W), torch.tensor(B)))
    ref = np.block([[th[0][0].reshape(6, 6).numpy(), th[0][1].reshape(6, 2).numpy()],
                    [th[1][0].reshape(2, 6).numpy(), th[1][1].numpy()]])
    assert H.shape == (8, 8)
    np.testing.assert_allclose(H, ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(H, H.T, atol=1e-12)


def test_hessian_matches_finite_differences_of_the_gradient():
    g = mlp_loss_graph()
    gg, H = grad(g, wrt=["w", "b"]), interpret(hessian(g, wrt=["w", "b"]), [X, W, B])[0]
    theta, eps = np.concatenate([W.ravel(), B]), 1e-6

    def flat_grad(t):
        w, b = t[:6].reshape(3, 2), t[6:]
        return np.concatenate([a.ravel() for a in interpret(gg, [X, w, b])])
    fd = np.stack([(flat_grad(theta + eps * e) - flat_grad(theta - eps * e)) / (2 * eps)
                   for e in np.eye(8)])
    np.testing.assert_allclose(H, fd, rtol=1e-6, atol=1e-8)


def test_hvp_matches_torch_hvp_and_names_its_vector_inputs():
    g = hvp(mlp_loss_graph(), wrt=["w", "b"])
    assert [v.name for v in g.inputs] == ["x", "v_w", "v_b"]
    assert [v.name for v in g.params] == ["w", "b"]
    vw, vb = RNG.standard_normal((3, 2)), RNG.standard_normal(2)
    hw, hb = interpret(g, [X, vw, vb, W, B])
    _, (tw, tb) = torch.autograd.functional.hvp(
        mlp_loss_torch, (torch.tensor(W), torch.tensor(B)), (torch.tensor(vw), torch.tensor(vb)))
    np.testing.assert_allclose(hw, tw.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(hb, tb.numpy(), rtol=1e-10, atol=1e-12)


def test_hvp_equals_hessian_times_vector():
    g = mlp_loss_graph()
    H = interpret(hessian(g, wrt=["w"]), [X, W, B])[0]
    v = RNG.standard_normal((3, 2))
    (hv,) = interpret(hvp(g, wrt=["w"]), [X, v, W, B])
    np.testing.assert_allclose(hv.ravel(), H @ v.ravel(), rtol=1e-10, atol=1e-12)


def quadratic_graph(k: int) -> Graph:
    """J(theta) = 1/2 theta^T A theta - c^T theta (A, c as inputs)."""
    g = Graph("quad")
    a = g.add_input("A", TensorType((k, k), "float64"))
    c = g.add_input("c", TensorType((k,), "float64"))
    t = g.add_param("theta", TensorType((k,), "float64"))
    q = g.op("mul", g.op("sum", g.op("mul", t, g.op("matmul", a, t))), g.op(
        "full", shape=(), value=0.5, dtype="float64"))
    g.set_outputs([g.op("sub", q, g.op("sum", g.op("mul", c, t)))])
    return g


def test_newton_step_with_graph_hessian_solves_a_quadratic_in_one_step_eq_8_27():
    """Eq. 8.26 is exact for a quadratic, so eq. 8.27 theta* = theta0 - H^-1 g lands on the
    minimum A^-1 c; the Hessian graph gives H = A (symmetrized)."""
    k = 5
    m = RNG.standard_normal((k, k))
    A, c, t0 = m @ m.T + k * np.eye(k), RNG.standard_normal(k), RNG.standard_normal(k)
    g = quadratic_graph(k)
    H = interpret(hessian(g, wrt=["theta"]), [A, c, t0])[0]
    np.testing.assert_allclose(H, A, rtol=1e-12)
    (gr,) = interpret(grad(g, wrt=["theta"]), [A, c, t0])
    np.testing.assert_allclose(t0 - np.linalg.solve(H, gr), np.linalg.solve(A, c), rtol=1e-10)


def test_grad_of_grad_of_grad_is_the_third_derivative():
    """f = tanh(x) * exp(x / 2), scalar x: f''' computed by three nested grad() graphs."""
    g = Graph("f")
    x = g.add_input("x", TensorType((), "float64"))
    half = g.op("full", shape=(), value=0.5, dtype="float64")
    g.set_outputs([g.op("mul", g.op("tanh", x), g.op("exp", g.op("mul", x, half)))])
    g3 = grad(grad(grad(g)))
    assert irgraph.parse(str(g3)) == g3
    for x0 in (-1.3, 0.0, 0.4, 2.0):
        t = np.tanh(x0)
        d1, d2, d3 = 1 - t * t, -2 * t * (1 - t * t), -2 * (1 - t * t) * (1 - 3 * t * t)
        e = np.exp(x0 / 2)
        # Leibniz: (t e)''' = t''' e + 3 t'' e' + 3 t' e'' + t e'''
        expect = e * (d3 + 3 * d2 / 2 + 3 * d1 / 4 + t / 8)
        np.testing.assert_allclose(interpret(g3, [np.array(x0)])[0], expect, rtol=1e-12)


def test_grad_of_grad_of_grad_of_a_polynomial_analytic():
    """Third derivative through mul, pow, sum and broadcasting: d^3/dx^3 sum(x^3 y + x^4) with
    x a scalar broadcast against y of 3 elements = 6 sum(y) + 3 * 24 x."""
    g = Graph("p")
    x = g.add_input("x", TensorType((), "float64"))
    y = g.add_input("y", TensorType((3,), "float64"))
    three = g.op("full", shape=(), value=3.0, dtype="float64")
    p = g.op("add", g.op("mul", g.op("pow", x, three), y), g.op("square", g.op("square", x)))
    g.set_outputs([g.op("sum", p)])
    g3 = grad(grad(grad(g, wrt=["x"]), wrt=["x"]), wrt=["x"])
    yv = np.array([0.5, -2.0, 1.0])
    np.testing.assert_allclose(interpret(g3, [np.array(1.7), yv])[0],
                               6 * yv.sum() + 3 * 24 * 1.7, rtol=1e-12)


def test_jacobian_matches_torch_jacobian():
    g = Graph("j")
    x = g.add_input("x", TensorType((3,), "float64"))
    w = g.add_param("w", TensorType((2, 3), "float64"))
    g.set_outputs([g.op("softmax", g.op("matmul", w, g.op("tanh", x)))])
    xv, wv = RNG.standard_normal(3), RNG.standard_normal((2, 3))
    jx, jw = interpret(jacobian(g, wrt=["x", "w"]), [xv, wv])
    tx, tw = torch.autograd.functional.jacobian(
        lambda a, b: torch.softmax(b @ torch.tanh(a), 0), (torch.tensor(xv), torch.tensor(wv)))
    assert jx.shape == (2, 3) and jw.shape == (2, 2, 3)
    np.testing.assert_allclose(jx, tx.numpy(), rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(jw, tw.numpy(), rtol=1e-10, atol=1e-13)


def test_higher_graphs_print_parse_and_verify():
    g = mlp_loss_graph()
    for h in (hvp(g), hessian(g), jacobian(g)):
        verify(h)
        assert irgraph.parse(str(h)) == h


def test_hessian_refuses_large_parameter_counts_with_a_clear_error():
    g = quadratic_graph(40)
    with pytest.raises(IRError, match=r"1600|40.*max_size|max_size"):
        hessian(g, wrt=["theta", "A"], max_size=1000)
    assert hessian(g, wrt=["theta"], max_size=40).outputs[0].shape == (40, 40)


def test_hvp_and_hessian_need_a_float_scalar_output():
    g = Graph("v")
    x = g.add_input("x", TensorType((3,), "float64"))
    g.set_outputs([g.op("tanh", x)])
    with pytest.raises(IRError, match="scalar"):
        hvp(g)
    with pytest.raises(IRError, match="scalar"):
        hessian(g)


def test_hessian_of_pow_at_zero_base_is_finite():
    """d^2 a^b at a = 0, b = 2: the limits (a^(b-1) (1 + b log a) -> 0, a^b log^2 a -> 0), not
    the 0 * log 0 = nan of a naive second reverse pass (torch gives nan there)."""
    g = Graph("p")
    a = g.add_input("a", TensorType((2,), "float64"))
    b = g.add_input("b", TensorType((2,), "float64"))
    g.set_outputs([g.op("sum", g.op("pow", a, b))])
    av, bv = np.array([0.0, 1.5]), np.array([2.0, 3.0])
    H = interpret(hessian(g, wrt=["a", "b"]), [av, bv])[0]
    a1, b1 = 1.5, 3.0
    d_ab = a1 ** (b1 - 1) * (1 + b1 * np.log(a1))
    expect = np.array([[2.0, 0, 0, 0], [0, b1 * (b1 - 1) * a1 ** (b1 - 2), 0, d_ab],
                       [0, 0, 0, 0], [0, d_ab, 0, a1 ** b1 * np.log(a1) ** 2]])
    np.testing.assert_allclose(H, expect, rtol=1e-12, atol=1e-14)


def test_jacobian_of_the_gradient_graph_is_the_hessian():
    """Composing transforms: jacobian(grad(g)) and hessian(g) agree."""
    g = mlp_loss_graph()
    jw, jb = interpret(jacobian(grad(g, wrt=["w"]), wrt=["w", "b"]), [X, W, B])
    H = interpret(hessian(g, wrt=["w", "b"]), [X, W, B])[0]
    np.testing.assert_allclose(np.concatenate([jw.reshape(6, 6), jb.reshape(6, 2)], 1), H[:6],
                               rtol=1e-12, atol=1e-14)


def test_hvp_through_convolution_and_pooling_matches_torch():
    """Second order through the chapter 9 ops' rules: a small CNN's loss, torch's hvp."""
    import irgraph.frontend as fe
    from irgraph.frontend import F
    rng = np.random.default_rng(5)
    xv = rng.standard_normal((2, 2, 6, 6))
    kv, lv = rng.standard_normal((3, 2, 3, 3)) * 0.4, rng.standard_normal((4, 27)) * 0.3
    yv = np.array([1, 3])

    def loss(x, y, k, lin):
        h = F.avg_pool2d(F.tanh(F.conv2d(x, k, stride=1, padding=1)), 2)
        return F.cross_entropy(F.reshape(h, (2, 27)) @ lin.T, y)
    g = fe.trace(loss, fe.TensorSpec((2, 2, 6, 6), "float64"), fe.TensorSpec((2,), "int64"),
                 fe.TensorSpec((3, 2, 3, 3), "float64"), fe.TensorSpec((4, 27), "float64"))
    vk, vl = rng.standard_normal(kv.shape), rng.standard_normal(lv.shape)
    hk, hl = interpret(hvp(g, wrt=["k", "lin"]), [xv, yv, kv, lv, vk, vl])

    def tloss(k, lin):
        h = torch.nn.functional.avg_pool2d(torch.tanh(torch.nn.functional.conv2d(
            torch.tensor(xv), k, padding=1)), 2)
        return torch.nn.functional.cross_entropy(h.reshape(2, 27) @ lin.T, torch.tensor(yv))
    _, (tk, tl) = torch.autograd.functional.hvp(
        tloss, (torch.tensor(kv), torch.tensor(lv)), (torch.tensor(vk), torch.tensor(vl)))
    np.testing.assert_allclose(hk, tk.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(hl, tl.numpy(), rtol=1e-9, atol=1e-12)


def _derivatives(fn, x: float, order: int, backend: str) -> list[float]:
    """d/dx .. d^order/dx^order of the scalar ``fn`` at ``x``: ``grad`` applied again and
    again to the traced graph, each run on ``backend``."""
    import irgraph.frontend as fe
    from irgraph.frontend.driver import compile_graph
    g = fe.trace(fn, fe.TensorSpec((), "float64"))
    out = []
    for _ in range(order):
        g = grad(g)
        out.append(float(compile_graph(g, backend=backend, kind="training").executable(
            np.array(x))[0]))
    return out


def _torch_derivatives(fn, x: float, order: int) -> list[float]:
    t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y, out = fn(t), []
    for _ in range(order):
        y = torch.autograd.grad(y, t, create_graph=True)[0] if y.requires_grad else \
            torch.zeros((), dtype=torch.float64)
        out.append(y.item())
    return out


@pytest.mark.parametrize("backend", ["reference", "llvm"])
def test_derivatives_at_zero_to_the_fourth_order_match_torch(backend):
    """At x = 0 exactly, where compositions take kinks or near-zero forms: softplus and
    logsigmoid (curvature 1/4 and -1/4: a tie rule at the kink had made it 0), expm1 and
    log1p (a branch returning x alone had no second derivative), and x**c for c = 0, 1, 2 (a
    power a^-1 left aside by a where met a zero cotangent as 0 * inf = NaN)."""
    from irgraph.frontend import F
    TF = torch.nn.functional
    cases = [(F.softplus, TF.softplus), (F.logsigmoid, TF.logsigmoid),
             (F.expm1, torch.expm1), (F.log1p, torch.log1p)]
    cases += [((lambda c: lambda x: F.pow(x, c))(c), (lambda c: lambda t: torch.pow(t, c))(c))
              for c in (0.0, 1.0, 2.0)]
    for ours, theirs in cases:
        np.testing.assert_allclose(_derivatives(ours, 0.0, 4, backend),
                                   _torch_derivatives(theirs, 0.0, 4), rtol=1e-7, atol=1e-12)
