"""End-to-end smoke test of the foundation: trace, print, parse, run, differentiate."""
import numpy as np

import irgraph.frontend as fe
import irgraph
from irgraph.frontend import nn
from irgraph.interpreter import interpret
from irgraph.passes.autodiff import grad


def test_trace_print_parse_run_matches_numpy():
    fe.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    spec = fe.TensorSpec((5, 3))
    g = fe.trace(model, spec)
    assert irgraph.parse(str(g)) == g
    x = np.random.default_rng(1).standard_normal((5, 3)).astype(np.float32)
    w1, b1 = model[0].weight.data, model[0].bias.data
    w2, b2 = model[2].weight.data, model[2].bias.data
    expect = np.maximum(x @ w1.T + b1, 0) @ w2.T + b2
    np.testing.assert_allclose(fe.compile(model, spec)(x), expect, rtol=1e-5, atol=1e-6)


def test_grad_of_sum_of_squares():
    g = fe.trace(lambda x: (x * x).sum(), fe.TensorSpec((4,)))
    x = np.array([1, -2, 3, 0.5], np.float32)
    np.testing.assert_allclose(interpret(grad(g), [x])[0], 2 * x)
