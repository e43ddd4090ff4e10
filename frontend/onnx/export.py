"""irgraph -> ONNX: an inference graph becomes a ``ModelProto`` (default opset 18).

Graph inputs stay inputs, parameters become initializers (their values from ``weights``),
every node maps through ``EXPORTERS`` (op name -> writer). Scans are unrolled first
(``passes.unroll``); nodes without inputs (``full``, ``constant``, ``iota``) become
``Constant``s. An op with no ONNX equivalent, or an attribute value ONNX cannot express
(integer ``div`` rounding toward -inf, ``divisor_override``, training-mode batch norm), is an
``OnnxExportError`` naming the node. ``onnx.checker.check_model(full_check=True)`` is run on
the result.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from irgraph import Graph, Node

from .errors import OnnxExportError
from .handlers import IR_DTYPES

_ELEM = {v: k for k, v in IR_DTYPES.items()}
DEFAULT_OPSET = 18

EXPORTERS: dict[str, Callable] = {}


def exporter(*ops: str):
    def deco(fn):
        for op in ops:
            EXPORTERS[op] = fn
        return fn
    return deco


class _Writer:
    def __init__(self, taken=()):
        import onnx
        self.onnx = onnx
        self.nodes: list = []
        self.initializers: list = []
        self.k = 0
        self.taken = set(taken)         # the graph's own value names

    def fresh(self, base: str) -> str:
        """A name no graph value has and none given before."""
        while True:
            self.k += 1
            name = f"_{base}_{self.k}"
            if name not in self.taken:
                self.taken.add(name)
                return name

    def claim(self, name: str) -> str:
        """``name`` itself where free (an output's public name), else a fresh one."""
        if name in self.taken:
            return self.fresh(name)
        self.taken.add(name)
        return name

    def const(self, arr, base: str = "c") -> str:
        name = self.fresh(base)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(arr), name))
        return name

    def add(self, op_type: str, inputs, outputs, **attrs) -> None:
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), list(outputs),
                                                     name=self.fresh(op_type), **attrs))


def _fail(node: Node, index: int, msg: str):
    loc = f" ({node.loc})" if node.loc else ""
    raise OnnxExportError(f"node {index} '{node.op}'{loc}: {msg}")


def export_onnx(graph: Graph, weights: dict[str, np.ndarray] | None = None, *,
                opset: int = DEFAULT_OPSET, name: str | None = None, check: bool = True):
    """Write ``graph`` (with parameter values ``weights``) as an ONNX ``ModelProto``."""
    import onnx
    if any(n.op == "scan" for n in graph.nodes):
        from irgraph.passes.unroll import unroll
        graph = unroll(graph)
    weights = dict(weights or {})
    w = _Writer([v.name for v in graph.inputs] + [p.name for p in graph.params]
                + [v.name for n in graph.nodes for v in n.outputs])
    val = {v.name: v.name for v in graph.inputs}
    inputs = [onnx.helper.make_tensor_value_info(v.name, _elem(v.type.dtype, v.name),
                                                 list(v.type.shape)) for v in graph.inputs]
    for p in graph.params:
        if p.name not in weights:
            raise OnnxExportError(f"parameter '{p.name}' has no value in weights")
        arr = np.asarray(weights[p.name])
        if arr.shape != p.type.shape or arr.dtype != p.type.np_dtype:
            raise OnnxExportError(f"weights['{p.name}'] is {arr.dtype}{list(arr.shape)}, the "
                                  f"parameter is {p.type}")
        w.initializers.append(onnx.numpy_helper.from_array(arr, p.name))
        val[p.name] = p.name
    for i, node in enumerate(graph.nodes):
        outs = [v.name for v in node.outputs]
        if not node.inputs and node.op in ("full", "constant", "iota"):
            (arr,) = node.opdef.run([], node.attrs)
            w.add("Constant", [], outs, value=onnx.numpy_helper.from_array(np.asarray(arr)))
            continue
        fn = EXPORTERS.get(node.op)
        if fn is None:
            _fail(node, i, "has no ONNX equivalent in the exporter")
        fn(w, node, i, [v.name for v in node.inputs], outs)
    outputs = []
    for k, v in enumerate(graph.outputs):
        name = w.claim(f"output_{k}" if len(graph.outputs) > 1 else "output")
        w.add("Identity", [v.name], [name])
        outputs.append(onnx.helper.make_tensor_value_info(name, _elem(v.type.dtype, name),
                                                          list(v.type.shape)))
    g = onnx.helper.make_graph(w.nodes, name or graph.name, inputs, outputs, w.initializers)
    model = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", opset)],
                                   producer_name="irgraph")
    model.ir_version = min(model.ir_version, 10)     # readable by current runtimes
    if check:
        onnx.checker.check_model(model, full_check=True)
    return model


def _elem(dtype: str, what: str) -> int:
    if dtype not in _ELEM:
        raise OnnxExportError(f"'{what}' has dtype {dtype}, which ONNX export does not map")
    return _ELEM[dtype]


# ---------------------------------------------------------------- elementwise
_SIMPLE = {"add": "Add", "sub": "Sub", "mul": "Mul", "pow": "Pow", "maximum": "Max",
           "minimum": "Min", "neg": "Neg", "exp": "Exp", "log": "Log", "sqrt": "Sqrt",
           "abs": "Abs", "tanh": "Tanh", "sigmoid": "Sigmoid", "relu": "Relu", "sign": "Sign",
           "eq": "Equal", "lt": "Less", "gt": "Greater", "le": "LessOrEqual",
           "ge": "GreaterOrEqual", "logical_and": "And", "logical_or": "Or", "where": "Where",
           "matmul": "MatMul", "stop_gradient": "Identity"}


@exporter(*_SIMPLE)
def _simple(w: _Writer, node: Node, i: int, ins, outs):
    w.add(_SIMPLE[node.op], ins, outs)


@exporter("div")
def _div(w, node, i, ins, outs):
    if not node.inputs[0].type.is_float:
        _fail(node, i, "integer div rounds toward -inf; ONNX's Div truncates")
    w.add("Div", ins, outs)


@exporter("ne")
def _ne(w, node, i, ins, outs):
    eq = w.fresh("eq")
    w.add("Equal", ins, [eq])
    w.add("Not", [eq], outs)


@exporter("rsqrt")
def _rsqrt(w, node, i, ins, outs):
    s = w.fresh("sqrt")
    w.add("Sqrt", ins, [s])
    w.add("Reciprocal", [s], outs)


@exporter("square")
def _square(w, node, i, ins, outs):
    w.add("Mul", [ins[0], ins[0]], outs)


@exporter("cast")
def _cast(w, node, i, ins, outs):
    w.add("Cast", ins, outs, to=_elem(node.attrs["dtype"], outs[0]))


# ---------------------------------------------------------------- shapes
@exporter("reshape", "broadcast_to")
def _reshape(w, node, i, ins, outs):
    shape = w.const(np.asarray(node.attrs["shape"], np.int64), "shape")
    w.add("Reshape" if node.op == "reshape" else "Expand", [ins[0], shape], outs)


@exporter("transpose")
def _transpose(w, node, i, ins, outs):
    w.add("Transpose", ins, outs, perm=list(node.attrs["perm"]))


@exporter("concat")
def _concat(w, node, i, ins, outs):
    w.add("Concat", ins, outs, axis=int(node.attrs["axis"]))


@exporter("slice")
def _slice(w, node, i, ins, outs):
    """The IR's Python slices: ONNX's Slice clamps the same way (a stop below -size with a
    negative step clamps to -1, "before index 0")."""
    a = node.attrs
    args = [w.const(np.asarray(a[k], np.int64), k) for k in ("starts", "stops")]
    axes = w.const(np.arange(len(a["starts"]), dtype=np.int64), "axes")
    steps = w.const(np.asarray(a["steps"], np.int64), "steps")
    w.add("Slice", [ins[0], *args, axes, steps], outs)


_PAD = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


@exporter("pad")
def _pad(w, node, i, ins, outs):
    p = node.attrs["pads"]
    pads = w.const(np.asarray(list(p[0::2]) + list(p[1::2]), np.int64), "pads")
    extra = []
    if node.attrs["mode"] == "constant":
        extra = [w.const(np.asarray(node.attrs["value"], node.inputs[0].type.np_dtype),
                         "value")]
    w.add("Pad", [ins[0], pads, *extra], outs, mode=_PAD[node.attrs["mode"]])


# ---------------------------------------------------------------- reductions, softmax
_REDUCE = {"sum": "ReduceSum", "mean": "ReduceMean", "max": "ReduceMax", "min": "ReduceMin"}


@exporter(*_REDUCE)
def _reduce(w, node, i, ins, outs):
    from irgraph.ops.core import normalize_axes
    axes = normalize_axes(node.attrs["axis"], node.inputs[0].type.rank)
    if not axes:
        w.add("Identity", ins, outs)
        return
    w.add(_REDUCE[node.op], [ins[0], w.const(np.asarray(axes, np.int64), "axes")], outs,
          keepdims=int(node.attrs["keepdims"]))


@exporter("softmax", "log_softmax")
def _softmax(w, node, i, ins, outs):
    w.add("Softmax" if node.op == "softmax" else "LogSoftmax", ins, outs,
          axis=int(node.attrs["axis"]))


# ---------------------------------------------------------------- convolution, pooling
def _onnx_pads(per_side) -> list[int]:
    """IR (b0, a0, b1, a1, ...) -> ONNX (b0, b1, ..., a0, a1, ...)."""
    return list(per_side[0::2]) + list(per_side[1::2])


@exporter("conv")
def _conv(w, node, i, ins, outs):
    a = node.attrs
    w.add("Conv", ins, outs, strides=list(a["stride"]), pads=_onnx_pads(a["padding"]),
          dilations=list(a["dilation"]), group=int(a["groups"]),
          kernel_shape=list(node.inputs[1].type.shape[2:]))


@exporter("conv_input_grad")
def _conv_transpose(w, node, i, ins, outs):
    """The transposed convolution: X = the output gradient, W = the forward weight."""
    a = node.attrs
    gy = node.inputs[1].type.shape[2:]
    k = node.inputs[0].type.shape[2:]
    p = a["padding"]
    full = [a["stride"][j] * (gy[j] - 1) + (k[j] - 1) * a["dilation"][j] + 1
            - p[2 * j] - p[2 * j + 1] for j in range(len(k))]
    opad = [s - f for s, f in zip(a["input_size"], full)]
    if any(o < 0 for o in opad):
        _fail(node, i, f"input_size {list(a['input_size'])} is smaller than the transposed "
                       f"convolution's {full}")
    w.add("ConvTranspose", [ins[1], ins[0]], outs, strides=list(a["stride"]),
          pads=_onnx_pads(p), dilations=list(a["dilation"]), group=int(a["groups"]),
          kernel_shape=list(k), output_padding=opad)


def _pool_geometry(node: Node, i: int, end_pads_free: bool) -> tuple[list[int], int]:
    """(ONNX pads, ceil_mode) giving the IR pool's output size. ONNX's ceil_mode sizes
    lack torch's rule that the last window starts inside the input or its left padding, so
    where they differ: ``ceil_mode`` 0 and the windows' end padded explicitly to the IR's
    size (exact where extra end padding changes no value: max, or an average not counting
    padding), else an error naming the node."""
    a = node.attrs
    pads = list(a["padding"])
    if not a["ceil_mode"]:
        return _onnx_pads(pads), 0
    spatial = node.inputs[0].type.shape[2:]
    out = node.outputs[0].type.shape[2:]
    dil = a.get("dilation") or [1] * len(spatial)
    onnx_out, floor_pads = [], []
    for j, n in enumerate(spatial):
        eff = (a["kernel_size"][j] - 1) * dil[j] + 1
        span = n + pads[2 * j] + pads[2 * j + 1] - eff
        onnx_out.append(-(-span // a["stride"][j]) + 1)
        need = (out[j] - 1) * a["stride"][j] + eff - n - pads[2 * j]
        floor_pads += [pads[2 * j], max(need, pads[2 * j + 1])]
    if list(onnx_out) == list(out):
        return _onnx_pads(pads), 1
    if not end_pads_free:
        _fail(node, i, f"ceil_mode output {list(out)} differs from ONNX's ceil_mode size "
                       f"{onnx_out} (torch drops a last window starting past the input), and "
                       f"padding the end instead would change count_include_pad's divisors")
    return _onnx_pads(floor_pads), 0


@exporter("max_pool")
def _max_pool(w, node, i, ins, outs):
    a = node.attrs
    pads, ceil = _pool_geometry(node, i, True)
    w.add("MaxPool", ins, outs, kernel_shape=list(a["kernel_size"]),
          strides=list(a["stride"]), pads=pads, dilations=list(a["dilation"]), ceil_mode=ceil)


@exporter("avg_pool")
def _avg_pool(w, node, i, ins, outs):
    a = node.attrs
    if a["divisor_override"] is not None:
        _fail(node, i, "divisor_override has no ONNX equivalent")
    pads, ceil = _pool_geometry(node, i, not a["count_include_pad"])
    w.add("AveragePool", ins, outs, kernel_shape=list(a["kernel_size"]),
          strides=list(a["stride"]), pads=pads, ceil_mode=ceil,
          count_include_pad=int(a["count_include_pad"]))


@exporter("adaptive_avg_pool", "adaptive_max_pool")
def _adaptive(w, node, i, ins, outs):
    if any(s != 1 for s in node.attrs["output_size"]):
        _fail(node, i, f"output_size {list(node.attrs['output_size'])}: only global pooling "
                       f"(all 1) has an ONNX equivalent")
    w.add("GlobalAveragePool" if node.op == "adaptive_avg_pool" else "GlobalMaxPool",
          ins, outs)


@exporter("batch_norm")
def _batch_norm(w, node, i, ins, outs):
    a = node.attrs
    if a["training"]:
        _fail(node, i, "training-mode batch norm: export an inference graph")
    if a["axis"] % node.inputs[0].type.rank != 1:
        _fail(node, i, f"axis {a['axis']}: ONNX normalizes axis 1")
    x, gamma, beta, rm, rv = ins
    w.add("BatchNormalization", [x, gamma, beta, rm, rv], outs[:1], epsilon=float(a["eps"]))
    w.add("Identity", [rm], outs[1:2])
    w.add("Identity", [rv], outs[2:3])
