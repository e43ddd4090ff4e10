"""Second-order and batch methods of section 8.6 as host-side loops over compiled graphs.

``compile_train(model, loss_fn, Newton(), *specs)`` compiles the loss graph's
value-and-gradient (and, for Newton, its Hessian: ``passes.autodiff.higher.hessian``) once;
each ``step(*batch)`` is one iteration of the algorithm on the flattened trainable parameters
theta (float64 on the host), run against those executables:

* ``Newton``: alg. 8.8, with Levenberg-Marquardt damping alpha I (eq. 8.28);
* ``ConjugateGradient``: nonlinear CG, alg. 8.9, beta by Fletcher-Reeves (eq. 8.30) or
  Polak-Ribiere (eq. 8.31), restarts every k steps, and a line search;
* ``BFGS`` and ``LBFGS`` (section 8.6.3): the inverse-Hessian approximation M, or its
  limited-memory form (the last m pairs, two-loop recursion);
* ``BlockCoordinateDescent`` (section 8.7.2): minimize over one group of parameters at a
  time, the others fixed, cycling through the groups (e.g. sparse coding, eq. 8.38).

The line search finds the minimum along the direction by secant steps on the directional
derivative (exact on a quadratic after one secant step, as alg. 8.9 asks), and falls back
to backtracking (Armijo) where the objective is not convex along the line.
"""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

from irgraph import Graph

from .driver import Gradient, Hessian, compile_graph
from .nn import Parameter


class LineSearchError(RuntimeError):
    pass


# ---------------------------------------------------------------- the compiled problem
class Problem:
    """The loss of a traced graph as a function of the flat trainable parameters theta."""

    def __init__(self, graph: Graph, params: dict[str, Parameter], trainable: list[str],
                 backend: str, pipeline=None, print_after=None, **options):
        self.graph, self.params, self.trainable = graph, params, list(trainable)
        self.backend, self.options = backend, options
        self.pipeline, self.print_after = pipeline, print_after
        self.n_batch = len(graph.inputs)
        # the loss's value and gradient through the compile driver (BPTT preparation, the
        # pipeline, the backend's passes); no state updates: each evaluation is pure
        built = self._compile(Gradient(tuple(self.trainable), keep_donations=False))
        self.n_grads_from = len(built.graph.outputs) - len(self.trainable)
        self._vg = built.executable
        self.gradient_graph, self.passes = built.graph, built.passes
        self._hess = None
        self.shapes = [params[n].data.shape for n in self.trainable]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.size = sum(self.sizes)
        self.evaluations = 0

    def get(self) -> np.ndarray:
        return np.concatenate([self.params[n].data.ravel() for n in self.trainable]
                              ).astype(np.float64)

    def set(self, theta: np.ndarray) -> None:
        for n, a in zip(self.trainable, self._split(theta)):
            p = self.params[n]
            np.copyto(p.data, a.astype(p.data.dtype))

    def _split(self, theta: np.ndarray) -> list[np.ndarray]:
        out, i = [], 0
        for shape, size in zip(self.shapes, self.sizes):
            out.append(theta[i:i + size].reshape(shape))
            i += size
        return out

    def _args(self, theta: np.ndarray, batch) -> list:
        at = dict(zip(self.trainable, self._split(theta)))
        return list(batch) + [
            at[v.name].astype(self.params[v.name].data.dtype) if v.name in at
            else self.params[v.name].data for v in self.graph.params]

    def loss_grad(self, theta: np.ndarray, batch) -> tuple[float, np.ndarray]:
        self.evaluations += 1
        outs = self._vg(*self._args(theta, batch))
        g = np.concatenate([np.asarray(a, np.float64).ravel() for a in outs[self.n_grads_from:]])
        return float(outs[0]), g

    def hessian(self, theta: np.ndarray, batch, max_size: int) -> np.ndarray:
        if self._hess is None:
            self._hess = self._compile(Hessian(tuple(self.trainable), 0, max_size)).executable
        return np.asarray(self._hess(*self._args(theta, batch))[0], np.float64)

    def _compile(self, differentiate):
        return compile_graph(self.graph, backend=self.backend, differentiate=differentiate,
                             pipeline=self.pipeline, kind="training",
                             print_after=self.print_after, options=self.options)


class HostStepFunction:
    """``step(*batch) -> loss``: one iteration of a host-side optimizer (a float: the loss at
    the parameters before the step)."""

    def __init__(self, problem: Problem, optimizer: "HostOptimizer"):
        self.problem, self.optimizer = problem, optimizer
        self.graph = problem.graph

    def __call__(self, *batch) -> float:
        if len(batch) != self.problem.n_batch:
            raise TypeError(f"the training step takes {self.problem.n_batch} batch input(s), "
                            f"got {len(batch)}")
        theta = self.problem.get()
        loss, new = self.optimizer.iterate(self.problem, theta, batch)
        self.problem.set(new)
        self.optimizer.step_count += 1
        return loss


def compile_host_step(graph: Graph, params: dict[str, Parameter], trainable: list[str],
                      optimizer: "HostOptimizer", backend: str, **options):
    return optimizer.compile_host(graph, params, trainable, backend, **options)


# ---------------------------------------------------------------- line search
def line_search(problem: Problem, theta: np.ndarray, d: np.ndarray, batch, loss0: float,
                slope0: float, eps1: float = 1.0, tol: float = 1e-10,
                max_iter: int = 40) -> tuple[float, float, np.ndarray]:
    """argmin over eps of J(theta + eps d) (alg. 8.9); returns (eps, J, gradient there).

    Secant steps on phi'(eps) = grad J(theta + eps d) . d, exact on a quadratic (phi' is
    linear: the first secant lands on the minimum), inside a bracket once one is found: a
    point where phi' >= 0, or where phi rose above the lowest point on the descending side,
    or was not finite, bounds the minimum. A secant step that leaves the bracket's inner
    80% is a bisection instead, so the bracket keeps shrinking (a lone secant step on a
    convex but not quadratic phi could stop short of the minimum, or overshoot it). Ends
    when |phi'| <= tol |phi'(0)|; if it never gets there, the lowest point found if it
    decreases the loss enough (Armijo), else backtracking from eps1."""
    if not slope0 < 0:
        raise LineSearchError(f"not a descent direction (directional derivative {slope0})")
    lo = (0.0, loss0, slope0)       # the descending side: phi' < 0 there, phi lowest so far
    hi = None                       # the far side of the minimum, once found
    prev = lo                       # the last point evaluated (for the secant before a bracket)
    e = eps1
    best = (0.0, loss0, None)
    for _ in range(max_iter):
        f, g = problem.loss_grad(theta + e * d, batch)
        s = float(g @ d) if np.all(np.isfinite(g)) else float("nan")
        ok = bool(np.isfinite(f) and np.isfinite(s))
        if ok and f <= best[1]:
            best = (e, f, g)
        if ok and abs(s) <= tol * abs(slope0):
            return e, f, g
        if ok and s < 0 and f <= lo[1]:
            lo = (e, f, s)
        else:
            hi = (e, f, s) if ok else (e, np.inf, np.nan)
        point = (e, f, s)
        if hi is None:              # still descending: the secant through the last two
            e0, _, s0 = prev
            e = e + s * (e - e0) / (s0 - s) if s > s0 else 2 * e
            e = min(e, 1e3 * point[0]) if np.isfinite(e) else 2 * point[0]
        else:
            width = hi[0] - lo[0]
            e = lo[0] + width / 2
            if np.isfinite(hi[2]) and hi[2] > lo[2]:
                sec = lo[0] - lo[2] * width / (hi[2] - lo[2])
                if lo[0] + 0.1 * width <= sec <= hi[0] - 0.1 * width:
                    e = sec
            if width <= 1e-14 * hi[0]:
                break
        prev = point if ok else prev
    if best[2] is not None and best[1] <= loss0 + 1e-4 * best[0] * slope0:
        return best
    return _backtrack(problem, theta, d, batch, loss0, slope0, eps1)


def _backtrack(problem, theta, d, batch, loss0, slope0, e, shrink=0.5, c1=1e-4, tries=50):
    for _ in range(tries):
        f, g = problem.loss_grad(theta + e * d, batch)
        if np.isfinite(f) and f <= loss0 + c1 * e * slope0:
            return e, f, g
        e *= shrink
    raise LineSearchError("no step along the direction decreases the loss (Armijo condition "
                          "failed 50 times)")


# ---------------------------------------------------------------- the optimizers
class HostOptimizer:
    """Base of the host-side methods: ``iterate(problem, theta, batch) -> (loss, theta')``."""
    host_side = True

    def __init__(self, params: Iterable[Parameter] | None = None):
        self.params = None if params is None else list(params)
        self.step_count = 0
        self.state: dict[str, np.ndarray | float | list] = {}

    def iterate(self, problem: Problem, theta: np.ndarray, batch):
        raise NotImplementedError

    def compile_host(self, graph: Graph, params: dict[str, Parameter], trainable: list[str],
                     backend: str, **options) -> HostStepFunction:
        return HostStepFunction(Problem(graph, params, trainable, backend, **options), self)


class Newton(HostOptimizer):
    """Newton's method (alg. 8.8): theta <- theta - lr [H + damping I]^{-1} g.

    ``damping`` is eq. 8.28's alpha (Levenberg-Marquardt); 0 is the plain method. The Hessian
    is the compiled graph of ``passes.autodiff.higher.hessian`` (up to ``max_size``
    parameters: it has k^2 entries, the cost the text warns of).
    """

    def __init__(self, params=None, lr: float = 1.0, damping: float = 0.0,
                 max_size: int = 256):
        super().__init__(params)
        self.lr, self.damping, self.max_size = lr, damping, max_size

    def iterate(self, problem, theta, batch):
        loss, g = problem.loss_grad(theta, batch)
        h = problem.hessian(theta, batch, self.max_size)
        h = h + self.damping * np.eye(len(theta))
        try:
            delta = -np.linalg.solve(h, g)
        except np.linalg.LinAlgError:
            raise np.linalg.LinAlgError(
                "Newton: the (damped) Hessian is singular; raise damping (eq. 8.28)") from None
        self.state["hessian"] = h
        return loss, theta + self.lr * delta


class ConjugateGradient(HostOptimizer):
    """Nonlinear conjugate gradients (alg. 8.9): rho_t = -g_t + beta_t rho_{t-1}, then a line
    search along rho_t. ``beta``: 'polak_ribiere' (eq. 8.31, alg. 8.9's) or
    'fletcher_reeves' (eq. 8.30). ``restart``: reset beta to 0 when t is a multiple of k
    (alg. 8.9's nonlinear CG; None: never). Polak-Ribiere as in eq. 8.31 (no max(beta, 0)).
    """

    def __init__(self, params=None, beta: str = "polak_ribiere", restart: int | None = None,
                 line_search_tol: float = 1e-10):
        super().__init__(params)
        if beta not in ("polak_ribiere", "fletcher_reeves"):
            raise ValueError(f"beta must be 'polak_ribiere' or 'fletcher_reeves', got {beta!r}")
        self.beta, self.restart, self.tol = beta, restart, line_search_tol

    def beta_t(self, g: np.ndarray, g_prev: np.ndarray) -> float:
        den = float(g_prev @ g_prev)
        if den == 0:
            return 0.0
        if self.beta == "fletcher_reeves":
            return float(g @ g) / den                      # eq. 8.30
        return float((g - g_prev) @ g) / den               # eq. 8.31

    def iterate(self, problem, theta, batch):
        loss, g = problem.loss_grad(theta, batch)
        t = self.step_count + 1
        rho_prev, g_prev = self.state.get("rho"), self.state.get("g")
        restart = self.restart is not None and t % self.restart == 0
        beta = 0.0 if rho_prev is None or restart else self.beta_t(g, g_prev)
        rho = -g + beta * rho_prev if beta else -g
        if float(g @ rho) >= 0:       # not a descent direction: restart along -g
            rho = -g
        if not np.any(g):
            return loss, theta
        found = _search(problem, theta, rho, g, batch, loss, _first_step(rho), self.tol)
        if found is None:           # no decrease at this precision: stay, and restart next
            self.state.update(rho=None, g=None, beta=0.0, eps=0.0)
            return loss, theta
        eps, rho = found[0], found[3]
        self.state.update(rho=rho, g=g, beta=beta, eps=eps)
        return loss, theta + eps * rho


def _search(problem: Problem, theta, d, g, batch, loss, eps1, tol):
    """``line_search`` along d, then along -g if that fails; None when neither decreases the
    loss (converged to the precision of the loss): (eps, J, gradient, direction) otherwise."""
    for direction, first in ((d, eps1), (-g, _first_step(g))):
        try:
            return line_search(problem, theta, direction, batch, loss, float(g @ direction),
                               eps1=first, tol=tol) + (direction,)
        except LineSearchError:
            if direction is not d or np.array_equal(d, -g):
                return None
    return None


def _first_step(d: np.ndarray) -> float:
    """A first trial step of at most unit length in parameter space."""
    return float(min(1.0, 1.0 / max(float(np.linalg.norm(d)), 1e-12)))


class BFGS(HostOptimizer):
    """BFGS (section 8.6.3): M approximates H^{-1}; rho = -M g, a line search gives
    eps*, theta <- theta + eps* rho, and M takes the BFGS update from s = eps* rho and
    y = g' - g: M <- (I - s y^T / y^T s) M (I - y s^T / y^T s) + s s^T / y^T s."""

    def __init__(self, params=None, line_search_tol: float = 1e-10):
        super().__init__(params)
        self.tol = line_search_tol

    def has_curvature(self) -> bool:
        """Whether M holds curvature yet (then the natural first trial step is 1)."""
        return self.state.get("M") is not None

    def direction(self, g: np.ndarray) -> np.ndarray:
        m = self.state.get("M")
        return -g if m is None else -(m @ g)

    def remember(self, s: np.ndarray, y: np.ndarray) -> None:
        ys = float(y @ s)
        if ys <= 1e-12 * float(np.linalg.norm(y) * np.linalg.norm(s)):
            return            # curvature condition fails: keep M positive definite
        m = self.state.get("M")
        if m is None:          # first update: scale I as is customary (Nocedal & Wright 6.20)
            m = np.eye(len(s)) * ys / float(y @ y)
        r = 1.0 / ys
        left = np.eye(len(s)) - r * np.outer(s, y)
        self.state["M"] = left @ m @ left.T + r * np.outer(s, s)

    def iterate(self, problem, theta, batch):
        loss, g = problem.loss_grad(theta, batch)
        if not np.any(g):
            return loss, theta
        d = self.direction(g)
        if float(g @ d) >= 0:
            d = -g
        found = _search(problem, theta, d, g, batch, loss,
                        1.0 if self.has_curvature() else _first_step(d), self.tol)
        if found is None:           # no decrease at this precision: stay, forget curvature
            self.forget()
            return loss, theta
        eps, _, g_new, d = found
        s = eps * d
        self.remember(s, g_new - g)
        return loss, theta + s

    def forget(self) -> None:
        self.state["M"] = None


class LBFGS(BFGS):
    """L-BFGS (section 8.6.3): BFGS whose M is never formed: the last ``history_size`` pairs
    (s, y) give M g by the two-loop recursion."""

    def __init__(self, params=None, history_size: int = 10, line_search_tol: float = 1e-10):
        super().__init__(params, line_search_tol)
        if history_size < 1:
            raise ValueError(f"history_size must be >= 1, got {history_size}")
        self.history_size = history_size
        self.state["mem"] = []

    def has_curvature(self) -> bool:
        return bool(self.state["mem"])

    def forget(self) -> None:
        self.state["mem"] = []

    def direction(self, g):
        mem = self.state["mem"]
        if not mem:
            return -g
        q = g.copy()
        alphas = []
        for s, y in reversed(mem):
            a = float(s @ q) / float(y @ s)
            alphas.append(a)
            q -= a * y
        s, y = mem[-1]
        q *= float(s @ y) / float(y @ y)
        for (s, y), a in zip(mem, reversed(alphas)):
            b = float(y @ q) / float(y @ s)
            q += (a - b) * s
        return -q

    def remember(self, s, y):
        if float(y @ s) <= 1e-12 * float(np.linalg.norm(y) * np.linalg.norm(s)):
            return
        mem = self.state["mem"]
        mem.append((s, y))
        del mem[:-self.history_size]


class BlockCoordinateDescent(HostOptimizer):
    """Block coordinate descent (section 8.7.2): each step is one sweep over ``groups`` (lists
    of Parameters); for each group, ``inner_steps`` iterations of a fresh ``inner()`` (a
    host-side method, e.g. ``Newton`` for an exact minimization of a quadratic block, or
    ``LBFGS``; a list gives one per group) minimize the loss over that group with every
    other parameter fixed."""

    def __init__(self, groups: Iterable[Iterable[Parameter]],
                 inner: Callable[[], HostOptimizer] | list = LBFGS, inner_steps: int = 10):
        groups = [list(g) for g in groups]
        if not groups or any(not g for g in groups):
            raise ValueError("block coordinate descent needs non-empty parameter groups")
        inner = list(inner) if isinstance(inner, (list, tuple)) else [inner] * len(groups)
        if len(inner) != len(groups):
            raise ValueError(f"{len(inner)} inner methods for {len(groups)} groups")
        super().__init__([p for g in groups for p in g])
        self.groups, self.inner, self.inner_steps = groups, inner, inner_steps

    def compile_host(self, graph, params, trainable, backend, **options):
        ids = {id(p): n for n, p in params.items()}
        steps = []
        for i, group in enumerate(self.groups):
            names = [ids[id(p)] for p in group if id(p) in ids and ids[id(p)] in trainable]
            if not names:
                raise ValueError(f"parameter group {i} has no parameter the loss uses")
            steps.append(HostStepFunction(Problem(graph, params, names, backend, **options),
                                          self.inner[i]()))
        return _SweepFunction(steps, self)


class _SweepFunction:
    """``step(*batch) -> loss``: one sweep of block coordinate descent (the loss before it)."""

    def __init__(self, steps: list[HostStepFunction], optimizer: BlockCoordinateDescent):
        self.steps, self.optimizer = steps, optimizer
        self.graph = steps[0].graph

    def __call__(self, *batch) -> float:
        first = None
        for step, make in zip(self.steps, self.optimizer.inner):
            step.optimizer = make()      # curvature from the last sweep is stale: start afresh
            for _ in range(self.optimizer.inner_steps):
                loss = step(*batch)
                first = loss if first is None else first
        self.optimizer.step_count += 1
        return first
