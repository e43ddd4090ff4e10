"""fold_params: binding weights precomputes what depends on parameters alone."""
from __future__ import annotations

import numpy as np
import pytest

from irgraph import Graph, TensorType
from irgraph.interpreter import interpret
from irgraph.passes.fold_params import fold_params


def dense() -> Graph:
    """y = x @ transpose(w) + b * 2, plus a broadcast of b larger than b itself."""
    g = Graph("dense")
    x = g.add_input("x", TensorType((5, 3)))
    w = g.add_param("w", TensorType((4, 3)))
    b = g.add_param("b", TensorType((4,)))
    two = g.op("full", shape=(), value=2.0)
    y = g.op("add", g.op("matmul", x, g.op("transpose", w, perm=(1, 0))), g.op("mul", b, two))
    big = g.op("broadcast_to", b, shape=(5, 4))
    g.set_outputs([g.op("add", y, big)])
    return g


def test_parameter_only_values_become_parameters():
    g = dense()
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal(4).astype(
        np.float32)
    out, weights = fold_params(g, {"w": w, "b": b})
    names = [p.name for p in out.params]
    assert "w" not in names and "w.folded" in names          # transpose(w) precomputed
    np.testing.assert_array_equal(weights["w.folded"], w.T)
    assert "transpose" not in [n.op for n in out.nodes]
    assert "broadcast_to" in [n.op for n in out.nodes]       # larger than b: not stored
    assert set(weights) == set(names)
    x = rng.standard_normal((5, 3)).astype(np.float32)
    np.testing.assert_allclose(interpret(out, [x] + [weights[n] for n in names])[0],
                               x @ w.T + 2 * b + b, rtol=1e-6)


def test_unbound_parameters_stay_parameters():
    g = dense()
    out, weights = fold_params(g, {"b": np.ones(4, np.float32)})
    assert "w" in [p.name for p in out.params] and "w" not in weights
    assert "transpose" in [n.op for n in out.nodes]


def test_a_weight_of_the_wrong_shape_is_named():
    with pytest.raises(ValueError, match="weight 'w' has shape \\(3, 4\\)"):
        fold_params(dense(), {"w": np.ones((3, 4), np.float32), "b": np.ones(4, np.float32)})
