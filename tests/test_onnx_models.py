"""ONNX import/export on whole models.

* Round trip: DSL models (MLP, CNN with batch norm, RNN) -> export -> the ONNX checker,
  ONNX's ReferenceEvaluator and onnxruntime agree with irgraph's reference interpreter;
  -> import -> the same outputs on the reference, LLVM and Triton backends.
* Real models: ResNet-18, MobileNetV2 and 2-layer LSTM/GRU networks written in torch
  (tests/onnx_models.py), exported by ``torch.onnx.export``, imported with batch norm folded,
  run on the reference and LLVM backends against torch's outputs.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import irgraph.backends as backends
import irgraph.frontend as fe
from irgraph.frontend import nn
from irgraph.frontend.onnx import OnnxExportError, OnnxImportError, export_onnx, import_onnx

import onnx_models as om

try:
    import onnxruntime
except ImportError:     # optional: the ReferenceEvaluator is the required check
    onnxruntime = None


def _close(got, want, tol=1e-4):
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale)


# ---------------------------------------------------------------- round trip of DSL models
def _mlp():
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(),
                         nn.Linear(16, 3), nn.Softmax(-1)), (4, 6)


def _cnn():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Conv2d(8, 6, 3, stride=2, padding=1),
                          nn.BatchNorm2d(6), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                          nn.Linear(6, 5))
    rng = np.random.default_rng(1)
    for name, p in model.named_parameters(buffers=True):
        if name.endswith("running_mean"):
            p.data[...] = 0.2 * rng.standard_normal(p.shape)
        elif name.endswith("running_var"):
            p.data[...] = 0.5 + rng.random(p.shape)
        elif name.endswith(".weight") and p.data.ndim == 1:
            p.data[...] = 1 + 0.3 * rng.standard_normal(p.shape)
    return model.eval(), (2, 3, 8, 8)


class _RNNModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(5, 7)
        self.head = nn.Linear(7, 2)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.head(y)


def _rnn():
    return _RNNModel(), (4, 3, 5)


def _weights(model, graph):
    named = dict(model.named_parameters(buffers=True))
    return {p.name: named[p.name].data for p in graph.params}


@pytest.mark.parametrize("make", [_mlp, _cnn, _rnn], ids=["mlp", "cnn_bn", "rnn"])
@pytest.mark.parametrize("fold", [False, True], ids=["bn", "folded"])
def test_round_trip(make, fold):
    from irgraph.passes.fold_bn import fold_bn_weights
    fe.manual_seed(0)
    model, shape = make()
    graph = fe.trace(model, fe.TensorSpec(shape))
    weights = _weights(model, graph)
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    want = backends.compile(graph, "reference")(x, *[weights[p.name] for p in graph.params])[0]
    if fold:
        graph, weights = fold_bn_weights(graph, weights)
    proto = export_onnx(graph, weights)       # runs onnx.checker (full_check)
    onnx.checker.check_model(proto, full_check=True)
    _close(ReferenceEvaluator(proto).run(None, {graph.inputs[0].name: x})[0], want)
    if onnxruntime is not None:
        sess = onnxruntime.InferenceSession(proto.SerializeToString(),
                                            providers=["CPUExecutionProvider"])
        _close(sess.run(None, {graph.inputs[0].name: x})[0], want)
    back = import_onnx(proto.SerializeToString())
    for target in ("reference", "llvm", "triton"):
        _close(back.run(x, backend=target)[0], want)


# ---------------------------------------------------------------- real models from torch
@pytest.mark.parametrize("name,shape,targets", [
    ("resnet18", (1, 3, 32, 32), ("reference", "llvm")),
    ("mobilenet_v2", (1, 3, 32, 32), ("reference", "llvm")),
    ("lstm", (6, 2, 8), ("reference", "llvm")), ("gru", (6, 2, 8), ("reference", "llvm"))])
def test_torch_exported_model(name, shape, targets):
    model = om.build(name)
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    want = om.torch_out(model, x)
    imported = import_onnx(om.to_onnx(model, torch.from_numpy(x)))
    for target in targets:
        compiled = imported.compile(target)         # batch norm folded
        assert not any(n.op == "batch_norm" for n in compiled.graph.nodes)
        _close(compiled(x)[0], want)


# ---------------------------------------------------------------- semantics by hand
def _model(nodes, inputs, outputs, opset=17, inits=(), domain_opsets=()):
    g = helper.make_graph(nodes, "t", inputs, outputs, list(inits))
    ops = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v)
                                               for d, v in domain_opsets]
    return helper.make_model(g, opset_imports=ops)


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def test_softmax_before_opset_13_normalizes_the_coerced_2d_rows():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7
    node = helper.make_node("Softmax", ["x"], ["y"], axis=1)
    m = import_onnx(_model([node], [_vi("x", [2, 3, 4])], [_vi("y", [2, 3, 4])], opset=11))
    rows = x.reshape(2, 12).astype(np.float64)
    want = (np.exp(rows) / np.exp(rows).sum(1, keepdims=True)).reshape(2, 3, 4)
    _close(m.run(x)[0], want, 1e-6)
    m13 = import_onnx(_model([node], [_vi("x", [2, 3, 4])], [_vi("y", [2, 3, 4])], opset=13))
    e = np.exp(x.astype(np.float64))
    _close(m13.run(x)[0], e / e.sum(1, keepdims=True), 1e-6)


def test_gemm_attributes_by_hand():
    a = np.array([[1., 2.], [3., 4.]], np.float32)
    b = np.array([[1., 0.], [2., 1.]], np.float32)
    c = np.array([10., 20.], np.float32)
    node = helper.make_node("Gemm", ["a", "b", "c"], ["y"], alpha=2.0, beta=0.5, transB=1)
    m = import_onnx(_model([node], [_vi("a", [2, 2]), _vi("b", [2, 2]), _vi("c", [2])],
                           [_vi("y", [2, 2])]))
    # 2 * a @ b.T + 0.5 c: a @ b.T = [[1, 4], [3, 10]]
    np.testing.assert_array_equal(m.run(a, b, c)[0], [[7., 18.], [11., 30.]])


def test_symbolic_dimension_needs_input_shapes():
    node = helper.make_node("Relu", ["x"], ["y"])
    proto = _model([node], [_vi("x", ["N", 3])], [_vi("y", ["N", 3])])
    with pytest.raises(OnnxImportError, match="symbolic dimension 'N'.*input_shapes"):
        import_onnx(proto)
    m = import_onnx(proto, input_shapes={"x": (2, 3)})
    np.testing.assert_array_equal(m.run(np.array([[-1, 2, -3], [4, -5, 6]], np.float32))[0],
                                  [[0, 2, 0], [4, 0, 6]])


# ---------------------------------------------------------------- errors name the node
def test_unsupported_operator_names_the_node():
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="first"),
             helper.make_node("Erf", ["r"], ["y"], name="my_erf")]
    proto = _model(nodes, [_vi("x", [2])], [_vi("y", [2])])
    with pytest.raises(OnnxImportError, match=r"node 1 'my_erf' \(Erf\): operator Erf"):
        import_onnx(proto)


@pytest.mark.parametrize("node,match", [
    (helper.make_node("LSTM", ["x", "w", "r"], ["y"], hidden_size=2, input_forget=1,
                      name="cell"), r"node 0 'cell' \(LSTM\): input_forget=1"),
    (helper.make_node("MaxPool", ["x"], ["y", "idx"], kernel_shape=[2], name="mp"),
     r"node 0 'mp' \(MaxPool\): the Indices output"),
    (helper.make_node("RNN", ["x", "w", "r"], ["y"], hidden_size=2, activations=["Elu"],
                      name="rnn"), r"activation 'Elu' is not supported"),
])
def test_unsupported_attribute_value_names_the_node(node, match):
    ins = [_vi("x", [3, 1, 2])]
    inits = []
    if node.op_type in ("LSTM", "RNN"):
        g = 4 if node.op_type == "LSTM" else 1
        inits = [onnx.numpy_helper.from_array(np.zeros((1, g * 2, 2), np.float32), "w"),
                 onnx.numpy_helper.from_array(np.zeros((1, g * 2, 2), np.float32), "r")]
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT if o != "idx" else
                                          TensorProto.INT64, None) for o in node.output]
    proto = _model([node], ins, outs, inits=inits)
    with pytest.raises(OnnxImportError, match=match):
        import_onnx(proto, check=False)


def test_unknown_attribute_is_refused():
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="c", frobnicate=3)
    w = onnx.numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w")
    proto = _model([node], [_vi("x", [1, 1, 2, 2])], [_vi("y", [1, 1, 2, 2])], inits=[w])
    with pytest.raises(OnnxImportError, match=r"node 0 'c' \(Conv\): attribute\(s\) "
                                              r"frobnicate not supported"):
        import_onnx(proto, check=False)


def test_export_refuses_an_op_without_onnx_equivalent():
    def f(x):
        return fe.F.unfold(x, 2)
    graph = fe.trace(f, fe.TensorSpec((1, 1, 3, 3)))
    with pytest.raises(OnnxExportError, match=r"node \d+ 'unfold'.*no ONNX equivalent"):
        export_onnx(graph, {})


def _ort(proto, *xs):
    import onnxruntime as ort           # (in the [test] extra)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: x for i, x in zip(sess.get_inputs(), xs)})


def test_lstm_clip_bounds_the_gates_not_the_cell_state_as_onnxruntime():
    """clip bounds every gate's input; h = o * tanh(C) takes the cell unclipped (an input
    and weights that drive the cell past the clip)."""
    r = np.random.default_rng(0)
    w = onnx.numpy_helper.from_array((r.standard_normal((1, 8, 3)) * 2).astype(np.float32), "w")
    rr = onnx.numpy_helper.from_array((r.standard_normal((1, 8, 2)) * 2).astype(np.float32),
                                      "r")
    node = helper.make_node("LSTM", ["x", "w", "r"], ["y", "yh", "yc"], hidden_size=2,
                            clip=0.5)
    proto = _model([node], [_vi("x", [4, 1, 3])],
                   [_vi("y", [4, 1, 1, 2]), _vi("yh", [1, 1, 2]), _vi("yc", [1, 1, 2])],
                   inits=[w, rr])
    x = (r.standard_normal((4, 1, 3)) * 3).astype(np.float32)
    want = _ort(proto, x)
    got = import_onnx(proto).run(x)
    for g, t in zip(got, want):
        _close(g, t, 1e-5)


def test_import_folds_transposed_constant_pads_and_checks_softmax_axes():
    """torch's exported F.pad computes its widths through Transpose/Slice of constants:
    folded at import; a Softmax axis out of range and a wrong Reshape name the node."""
    m = torch.nn.Sequential(torch.nn.ReflectionPad2d((1, 2, 0, 1)))
    x = np.random.default_rng(1).standard_normal((2, 3, 6, 5)).astype(np.float32)
    import io
    buf = io.BytesIO()
    torch.onnx.export(m, (torch.tensor(x),), buf, opset_version=17, dynamo=False)
    got = import_onnx(buf.getvalue()).run(x)[0]
    np.testing.assert_allclose(got, m(torch.tensor(x)).numpy(), rtol=1e-6)
    node = helper.make_node("Softmax", ["x"], ["y"], axis=4, name="sm")
    with pytest.raises(OnnxImportError, match=r"'sm' \(Softmax\): axis 4 is out of range"):
        import_onnx(_model([node], [_vi("x", [2, 3, 4, 5])], [_vi("y", None)]), check=False)
    shape = onnx.numpy_helper.from_array(np.array([5, 4], np.int64), "s")
    node = helper.make_node("Reshape", ["x", "s"], ["y"], name="rs")
    with pytest.raises(OnnxImportError, match=r"'rs' \(Reshape\)"):
        import_onnx(_model([node], [_vi("x", [2, 6])], [_vi("y", None)], inits=[shape]),
                    check=False)


def test_conv_transpose_same_padding_past_the_full_size_as_onnxruntime():
    r = np.random.default_rng(2)
    w = onnx.numpy_helper.from_array(r.standard_normal((1, 2, 3, 3)).astype(np.float32), "w")
    for auto in ("SAME_UPPER", "SAME_LOWER"):
        node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], auto_pad=auto,
                                strides=[2, 2], output_shape=[16, 17])
        proto = _model([node], [_vi("x", [1, 1, 7, 8])], [_vi("y", [1, 2, 16, 17])],
                       inits=[w])
        x = r.standard_normal((1, 1, 7, 8)).astype(np.float32)
        _close(import_onnx(proto).run(x)[0], _ort(proto, x)[0], 1e-5)


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_export_of_ceil_mode_pools_and_clashing_names(kind):
    """torch's ceil_mode drops a last window starting past the input, ONNX's sizes do not:
    max pools (and averages not counting padding) export with the end padded instead; an
    average counting padding is refused, naming the node. A graph input named "output"
    keeps its name; the graph's output takes another."""
    def f(output):
        if kind == "max":
            return fe.F.max_pool2d(output, 2, 3, 1, ceil_mode=True)
        return fe.F.avg_pool2d(output, 2, 3, 1, ceil_mode=True, count_include_pad=False)
    g = fe.trace(f, fe.TensorSpec((2, 3, 6, 7)))
    assert g.outputs[0].type.shape == (2, 3, 3, 3)
    proto = export_onnx(g, {})
    x = np.random.default_rng(3).standard_normal((2, 3, 6, 7)).astype(np.float32)
    want = backends.compile(g, "reference")(x)[0]
    _close(_ort(proto, x)[0], want, 1e-6)
    _close(ReferenceEvaluator(proto).run(None, {"output": x})[0], want, 1e-6)
    g2 = fe.trace(lambda a: fe.F.avg_pool2d(a, 2, 3, 1, ceil_mode=True),
                  fe.TensorSpec((2, 3, 6, 7)))
    with pytest.raises(OnnxExportError, match=r"'avg_pool'.*ceil_mode output \[3, 3\]"):
        export_onnx(g2, {})
