"""Section 8.6's methods as host loops over compiled graphs: Newton (alg. 8.8, eq. 8.28),
nonlinear conjugate gradients (alg. 8.9, eq. 8.30/8.31), BFGS and L-BFGS (8.6.3).

On a convex quadratic J = 1/2 theta^T A theta - b^T theta: Newton lands on the minimum in
one step; CG with an exact line search in at most k steps for k distinct eigenvalues of A
(and not before); BFGS/L-BFGS likewise. On an L2-regularized logistic regression every
method reaches scipy.optimize's minimum.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize

import irgraph.frontend as fe
from irgraph.frontend import F, nn, optim
from irgraph.frontend.second_order import BFGS, LBFGS, ConjugateGradient, Newton
from irgraph.frontend.train import compile_train

N = 8
EIGS = np.array([1.0, 1.0, 3.0, 3.0, 3.0, 7.0, 7.0, 12.0])   # k = 4 distinct eigenvalues
K = 4


def quadratic(seed: int = 0):
    r = np.random.default_rng(seed)
    q, _ = np.linalg.qr(r.standard_normal((N, N)))
    return q @ np.diag(EIGS) @ q.T, r.standard_normal(N)


def compile_quadratic(opt, theta0=None):
    theta = nn.Parameter(np.zeros(N) if theta0 is None else theta0.copy())

    def loss(A, b):
        return 0.5 * (theta * F.matmul(A, theta)).sum() - (b * theta).sum()
    step = compile_train(loss, None, opt, fe.TensorSpec((N, N), "float64"),
                         fe.TensorSpec((N,), "float64"), pipeline=[])
    return theta, step


def errors(opt, steps: int, seed: int = 0) -> list[float]:
    A, b = quadratic(seed)
    theta, step = compile_quadratic(opt, np.random.default_rng(seed + 9).standard_normal(N))
    out = []
    for _ in range(steps):
        step(A, b)
        out.append(float(np.linalg.norm(theta.data - np.linalg.solve(A, b))))
    return out


def test_newton_alg_8_8_one_step_on_a_quadratic():
    assert errors(Newton(), 1)[0] < 1e-12


def test_newton_levenberg_marquardt_damping_eq_8_28():
    """theta* = theta_0 - [H + alpha I]^{-1} grad J(theta_0)."""
    A, b = quadratic()
    theta0 = np.random.default_rng(3).standard_normal(N)
    theta, step = compile_quadratic(Newton(damping=2.5), theta0)
    loss = step(A, b)
    expect = theta0 - np.linalg.solve(A + 2.5 * np.eye(N), A @ theta0 - b)
    np.testing.assert_allclose(theta.data, expect, rtol=1e-12)
    assert loss == pytest.approx(0.5 * theta0 @ A @ theta0 - b @ theta0, rel=1e-12)


@pytest.mark.parametrize("beta", ["polak_ribiere", "fletcher_reeves"])
def test_conjugate_gradients_k_steps_for_k_distinct_eigenvalues(beta):
    errs = errors(ConjugateGradient(beta=beta), K + 1)
    assert errs[K - 2] > 1e-3          # not yet after k - 1 line searches
    assert errs[K - 1] < 1e-9          # at the minimum after k


def alg_8_9_reference(A, b, theta, steps, beta_rule):
    """Alg. 8.9 in numpy with the analytic line search of a quadratic."""
    rho, g_prev = np.zeros_like(theta), None
    out = []
    for _ in range(steps):
        g = A @ theta - b
        if g_prev is None:
            beta = 0.0
        elif beta_rule == "fletcher_reeves":
            beta = (g @ g) / (g_prev @ g_prev)                     # eq. 8.30
        else:
            beta = ((g - g_prev) @ g) / (g_prev @ g_prev)          # eq. 8.31
        rho = -g + beta * rho
        eps = -(g @ rho) / (rho @ A @ rho)                         # exact on a quadratic
        theta = theta + eps * rho
        g_prev = g
        out.append(theta)
    return out


@pytest.mark.parametrize("beta", ["polak_ribiere", "fletcher_reeves"])
def test_conjugate_gradient_trajectory_matches_alg_8_9(beta):
    A, b = quadratic(1)
    theta0 = np.random.default_rng(4).standard_normal(N)
    theta, step = compile_quadratic(ConjugateGradient(beta=beta), theta0)
    for k, ref in enumerate(alg_8_9_reference(A, b, theta0, K - 1, beta)):
        step(A, b)
        np.testing.assert_allclose(theta.data, ref, rtol=1e-8, atol=1e-10,
                                   err_msg=f"after step {k + 1}")


def test_conjugate_gradient_restart_resets_beta():
    opt = ConjugateGradient(restart=2)
    A, b = quadratic()
    _, step = compile_quadratic(opt, np.ones(N))
    betas = []
    for _ in range(4):
        step(A, b)
        betas.append(opt.state["beta"])
    assert betas[0] == 0 and betas[1] == 0 and betas[2] != 0 and betas[3] == 0


@pytest.mark.parametrize("make", [BFGS, lambda: LBFGS(history_size=N)])
def test_bfgs_and_lbfgs_reach_the_quadratic_minimum_in_k_steps(make):
    errs = errors(make(), K + 1)
    assert errs[K - 1] < 1e-8


def test_lbfgs_with_small_memory_still_converges():
    errs = errors(LBFGS(history_size=2), 30)
    assert errs[-1] < 1e-8


# ---------------------------------------------------------------- logistic regression
D, M, LAM = 4, 40, 0.1


def logistic_data():
    r = np.random.default_rng(5)
    x = r.standard_normal((M, D))
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.3 * r.standard_normal(M) > 0).astype(float)
    return x, y


def numpy_loss_grad(w, x, y):
    z = x @ w[:D] + w[D]
    p = 1 / (1 + np.exp(-z))
    loss = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)) + 0.5 * LAM * w[:D] @ w[:D]
    gz = (p - y) / M
    return loss, np.concatenate([x.T @ gz + LAM * w[:D], [gz.sum()]])


class LogReg(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(np.zeros(D))
        self.b = nn.Parameter(np.zeros(1))

    def forward(self, x, y):
        p = F.sigmoid(F.matmul(x, self.w) + self.b)
        nll = -(y * F.log(p) + (1.0 - y) * F.log(1.0 - p)).mean()
        return nll + 0.5 * LAM * (self.w * self.w).sum()


@pytest.mark.parametrize("make", [Newton, ConjugateGradient, BFGS, LBFGS,
                                  lambda: ConjugateGradient(beta="fletcher_reeves", restart=5)])
def test_logistic_regression_reaches_scipys_minimum(make):
    x, y = logistic_data()
    ref = scipy.optimize.minimize(numpy_loss_grad, np.zeros(D + 1), args=(x, y), jac=True,
                                  method="L-BFGS-B", options={"gtol": 1e-12, "ftol": 1e-15})
    model = LogReg()
    step = compile_train(model, None, make(), fe.TensorSpec((M, D), "float64"),
                         fe.TensorSpec((M,), "float64"), pipeline=[])
    losses = [step(x, y) for _ in range(40)]
    assert all(b <= a + 1e-12 for a, b in zip(losses, losses[1:]))
    np.testing.assert_allclose(np.append(model.w.data, model.b.data), ref.x, atol=1e-6)
    assert losses[-1] == pytest.approx(ref.fun, rel=1e-9)


def test_lbfgs_trains_a_small_mlp():
    fe.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 1))
    r = np.random.default_rng(0)
    x = r.uniform(-1, 1, (16, 2)).astype(np.float32)
    y = (x[:, :1] * x[:, 1:]).astype(np.float32)
    step = compile_train(model, nn.MSELoss(), LBFGS(), fe.TensorSpec((16, 2)),
                         fe.TensorSpec((16, 1)), pipeline=[])
    losses = [step(x, y) for _ in range(40)]
    assert losses[-1] < 0.2 * losses[0]


def test_singular_hessian_needs_damping():
    """J = (theta_0 + theta_1)^2 is flat along (1, -1): the Newton system is singular."""
    theta = nn.Parameter(np.array([1.0, 2.0]))

    def loss(x):
        s = (theta * x).sum()
        return s * s
    step = compile_train(loss, None, Newton(), fe.TensorSpec((2,), "float64"), pipeline=[])
    with pytest.raises(np.linalg.LinAlgError, match="damping"):
        step(np.ones(2))
    step2 = compile_train(loss, None, Newton(damping=1e-3), fe.TensorSpec((2,), "float64"),
                          pipeline=[])
    step2(np.ones(2))
    assert abs(theta.data.sum()) < 1e-2


def test_bad_arguments():
    with pytest.raises(ValueError, match="polak_ribiere"):
        ConjugateGradient(beta="hestenes")
    with pytest.raises(ValueError, match="history_size"):
        LBFGS(history_size=0)


# ---------------------------------------------------------------- block coordinate descent
def test_coordinate_descent_section_8_7_2_slow_on_coupled_variables():
    """f(x) = (x1 - x2)^2 + a (x1^2 + x2^2): exact minimization over x1 gives x2 / (1 + a),
    then over x2 gives x1 / (1 + a); progress is slow for small a, Newton takes one step."""
    a = 0.05
    x1, x2 = nn.Parameter(np.array([1.0])), nn.Parameter(np.array([-0.5]))

    def f(scale):
        return ((x1 - x2) * (x1 - x2) * scale + a * (x1 * x1 + x2 * x2)).sum()
    opt = optim.BlockCoordinateDescent([[x1], [x2]], inner=Newton, inner_steps=1)
    step = compile_train(f, None, opt, fe.TensorSpec((), "float64"), pipeline=[])
    r1, r2 = 1.0, -0.5
    for _ in range(10):
        step(np.float64(1.0))
        r1 = r2 / (1 + a)
        r2 = r1 / (1 + a)
        assert float(x1.data[0]) == pytest.approx(r1, rel=1e-12)
        assert float(x2.data[0]) == pytest.approx(r2, rel=1e-12)
    assert abs(float(x2.data[0])) > 0.1           # still far from the minimum at 0
    y1, y2 = nn.Parameter(np.array([1.0])), nn.Parameter(np.array([-0.5]))

    def g(scale):
        return ((y1 - y2) * (y1 - y2) * scale + a * (y1 * y1 + y2 * y2)).sum()
    compile_train(g, None, Newton(), fe.TensorSpec((), "float64"), pipeline=[])(np.float64(1))
    assert abs(float(y1.data[0])) < 1e-12 and abs(float(y2.data[0])) < 1e-12


def test_block_coordinate_descent_on_sparse_coding_eq_8_38():
    """J(H, W) = sum |H| + sum (X - W^T H)^2 (+ weight decay on W, as the text advises),
    alternating W (a quadratic: Newton solves it exactly) and H (L-BFGS). J never increases,
    and each W block lands on the closed-form minimizer (H H^T + lam I) W = H X^T."""
    r = np.random.default_rng(0)
    d, k, m, lam = 4, 3, 6, 0.1
    x = r.standard_normal((d, m))
    w = nn.Parameter(r.standard_normal((k, d)) * 0.5)
    h = nn.Parameter(r.standard_normal((k, m)) * 0.5)

    def j(X):
        err = X - F.matmul(w.T, h)
        return F.abs(h).sum() + (err * err).sum() + lam * (w * w).sum()
    opt = optim.BlockCoordinateDescent([[w], [h]], inner=[Newton, LBFGS], inner_steps=15)
    step = compile_train(j, None, opt, fe.TensorSpec((d, m), "float64"), pipeline=[])

    def numpy_j(W, H):
        return np.abs(H).sum() + ((x - W.T @ H) ** 2).sum() + lam * (W * W).sum()
    values = [numpy_j(w.data, h.data)]
    for _ in range(6):
        h_before = h.data.copy()
        step(x)
        hh = h_before
        w_star = np.linalg.solve(hh @ hh.T + lam * np.eye(k), hh @ x.T)
        np.testing.assert_allclose(w.data, w_star, rtol=1e-9, atol=1e-12)
        values.append(numpy_j(w.data, h.data))
    assert all(b <= a + 1e-9 for a, b in zip(values, values[1:]))
    assert values[-1] < 0.6 * values[0]


@pytest.mark.parametrize("make", [ConjugateGradient, BFGS, LBFGS])
def test_float32_converges_and_then_stays_put(make):
    """Separable classes drive a float32 cross-entropy to (rounded) zero: once rounding hides
    any decrease, a step keeps theta instead of failing, and the loss never rises."""
    fe.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 2))
    r = np.random.default_rng(0)
    x = r.uniform(-1, 1, (16, 2)).astype(np.float32)
    y = (x[:, 0] > x[:, 1]).astype(np.int64)
    step = compile_train(model, nn.CrossEntropyLoss(), make(), fe.TensorSpec((16, 2)),
                         fe.TensorSpec((16,), "int64"), pipeline=[])
    losses = [step(x, y) for _ in range(50)]
    assert losses[-1] < 1e-6
    assert all(b <= a for a, b in zip(losses, losses[1:]))


def test_line_search_lands_on_the_minimum_of_a_convex_non_quadratic():
    """Alg. 8.9's line search is an argmin over eps: on J = log cosh(theta - 3) +
    0.05 (theta - 3)^2 (strictly convex, not quadratic) one CG step from 0 lands on 3.
    A lone secant step overshoots (to 9.9, then 4.6 where J' = +1.09) and must be bracketed
    back."""
    theta = nn.Parameter(np.array([0.0]))

    def loss(c):
        z = (theta - c).sum()
        return F.log((F.exp(z) + F.exp(-z)) * 0.5) + 0.05 * z * z
    step = compile_train(loss, None, ConjugateGradient(), fe.TensorSpec((), "float64"),
                         pipeline=[])
    step(np.float64(3.0))
    t = float(theta.data[0])
    assert t == pytest.approx(3.0, abs=1e-8)
    assert abs(np.tanh(t - 3) + 0.1 * (t - 3)) < 1e-8


@pytest.mark.parametrize("make", [BFGS, LBFGS, ConjugateGradient])
def test_rosenbrock_from_the_standard_start(make):
    """Section 8.6's methods on Rosenbrock's (1 - x)^2 + 100 (y - x^2)^2 from (-1.2, 1) reach
    its minimum (1, 1): a line search that stopped on a step's first overshoot left BFGS and
    L-BFGS stalled at (-1.03, 1.06)."""
    th = nn.Parameter(np.array([-1.2, 1.0]))

    def loss(c):
        x, y = th[0], th[1]
        return (c - x) * (c - x) + 100.0 * (y - x * x) * (y - x * x)
    step = compile_train(loss, None, make(), fe.TensorSpec((), "float64"), pipeline=[])
    for _ in range(300):
        last = step(np.float64(1.0))
    np.testing.assert_allclose(th.data, [1.0, 1.0], atol=1e-6)
    assert last < 1e-10
