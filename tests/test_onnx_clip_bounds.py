"""ONNX Clip and HardSigmoid import with 0-d bounds: the graph holds no tensor of the input's
shape filled with a bound (where/minimum/maximum broadcast the 0-d bound), and the values
equal numpy's (NaN kept, min applied before max) on the reference and LLVM backends; a 0-d
initializer reaches the executable 0-d."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from irgraph.frontend.onnx import import_onnx

SHAPE = (2, 3, 4, 5)


def _model(node, inits=()):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, SHAPE)
    graph = helper.make_graph([node], "g", [x], [y], initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _scalar(name, v, dims=()):
    return helper.make_tensor(name, TensorProto.FLOAT, dims, [v])


CASES = [
    (helper.make_node("Clip", ["x", "lo", "hi"], ["y"]),
     [_scalar("lo", -0.5), _scalar("hi", 0.75)], lambda x: np.minimum(np.maximum(x, -0.5), 0.75)),
    (helper.make_node("Clip", ["x", "lo", "hi"], ["y"]),               # min > max: max wins
     [_scalar("lo", 1.0, (1,)), _scalar("hi", 0.0)],
     lambda x: np.where(np.isnan(x), np.nan, 0.0).astype(np.float32)),
    (helper.make_node("Clip", ["x", "", "hi"], ["y"]),
     [_scalar("hi", 6.0)], lambda x: np.minimum(x, 6.0)),
    (helper.make_node("HardSigmoid", ["x"], ["y"], alpha=0.3, beta=0.4),
     [], lambda x: np.clip(0.3 * x + 0.4, 0.0, 1.0)),
]


@pytest.mark.parametrize("node,inits,want", CASES)
@pytest.mark.parametrize("backend", ["reference", "llvm"])
def test_bounds_broadcast_and_values(node, inits, want, backend):
    m = import_onnx(_model(node, inits))
    for n in m.graph.nodes:
        if n.op in ("full", "broadcast_to", "constant"):
            assert n.outputs[0].type.shape != SHAPE, f"a bound filled to the input's shape: {n}"
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32) * 4
    x.reshape(-1)[:3] = np.nan
    got = m.compile(backend)(x)[0]
    np.testing.assert_allclose(got, want(x), rtol=1e-6, atol=1e-6)   # NaNs where x's are
