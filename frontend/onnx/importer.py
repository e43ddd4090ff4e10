"""ONNX -> irgraph: a model becomes a traced ``Graph`` whose parameters are its initializers.

The importer walks the ONNX nodes in order and drives the frontend (``frontend.F`` and the
registry's ops through the tracer), so every node it emits is type-checked by the registry.
Each ONNX operator has one handler (``import_ops.py``, ``import_rnn.py``) that declares the
attributes it understands; any other attribute, an attribute value it cannot express
exactly, an unknown operator or a data type the IR lacks is an ``OnnxImportError`` naming
the node (index, name, op_type). Values known at import time (initializers, ``Constant``
outputs, ``Shape`` of a static shape and arithmetic on those) are kept as numpy arrays, so
shape inputs (Reshape, Slice, Pad, axes) can be read; they become graph nodes or parameters
only when a tensor operand needs them.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np

from irgraph import Graph, verify
from irgraph.registry import IRError

from ..nn import Parameter
from ..tracing import Tensor, Tracer, recording
from . import import_ops, import_rnn  # noqa: F401  (they register the handlers)
from .errors import OnnxImportError, describe_node
from .handlers import HANDLERS, NodeView, ir_dtype
from .handlers import onnx_package as _onnx
from .handlers import tensor_array as _tensor_array


def _value_name(name: str, taken: set[str]) -> str:
    """An IR value name (letters, digits, ``_``, ``.``) for an ONNX name, unique in ``taken``."""
    base = re.sub(r"[^A-Za-z0-9_.]", "_", name) or "v"
    out, k = base, 1
    while out in taken:
        out, k = f"{base}_{k}", k + 1
    taken.add(out)
    return out


class _Context:
    def __init__(self, tracer: Tracer, static: dict[str, np.ndarray], initializers: set[str],
                 taken: set[str]):
        self.tracer = tracer
        self.static = static                # ONNX name -> value known at import time
        self.initializers = initializers    # names that become graph parameters when used
        self.env: dict[str, Tensor] = {}    # ONNX name -> traced tensor
        self.params: dict[str, Parameter] = {}
        self.taken = taken
        self.graph_inputs: set[str] = set()

    def tensor(self, name: str, node: NodeView | None = None) -> Tensor:
        if name in self.env:
            return self.env[name]
        if name not in self.static:
            where = f"{node.where}: " if node else ""
            raise OnnxImportError(f"{where}input '{name}' is not defined before its use")
        arr = self.static[name]
        if name in self.initializers:
            p = Parameter(arr, requires_grad=False)
            self.tracer.param_names[id(p)] = _value_name(name, self.taken)
            self.params[name] = p
            t = Tensor(self.tracer.param_value(p), self.tracer)
        elif arr.ndim == 0:
            t = self.tracer.emit("full", shape=(), value=float(arr), dtype=str(arr.dtype))
        else:
            t = self.tracer.emit("constant", value=arr)
        self.env[name] = t
        return t


@dataclass
class OnnxModel:
    """An imported model: ``graph`` (inputs = the ONNX inputs, parameters = the initializers
    it uses), ``weights`` (parameter name -> array), and the ONNX names of inputs/outputs."""
    graph: Graph
    weights: dict[str, np.ndarray]
    input_names: list[str]
    output_names: list[str]
    opset: int
    _compiled: dict = field(default_factory=dict, repr=False)

    def compile(self, backend: str = "reference", *, fold_bn: bool = True, pipeline=None,
                **options) -> "CompiledOnnx":
        """Batch-norm folding (``passes.fold_bn.fold_bn_weights``), then the compile driver
        (the inference pipeline, the backend's passes, the backend); the result is called
        with the inputs only."""
        from ..driver import compile_graph
        graph, weights = self.graph, self.weights
        if backend == "llvm":       # an inference session's weights: prepared once
            options.setdefault("constant_params", True)
        if fold_bn:
            from irgraph.passes.fold_bn import fold_bn_weights
            graph, weights = fold_bn_weights(graph, weights)
        built = compile_graph(graph, backend=backend, pipeline=pipeline, kind="inference",
                              options=options)
        return CompiledOnnx(built.graph, weights, built.executable)

    def run(self, *inputs, backend: str = "reference", **options) -> list[np.ndarray]:
        key = (backend, tuple(sorted(options.items())))
        if key not in self._compiled:
            self._compiled[key] = self.compile(backend, **options)
        return self._compiled[key](*inputs)


class CompiledOnnx:
    def __init__(self, graph: Graph, weights: dict[str, np.ndarray], executable):
        self.graph, self.executable = graph, executable
        # private read-only copies: the executable may keep what it derives from them
        self._params = [_frozen(weights[p.name]) for p in graph.params]
        self.weights = {**weights, **{p.name: a for p, a in zip(graph.params, self._params)}}

    def __call__(self, *inputs) -> list[np.ndarray]:
        n = len(self.graph.inputs)
        if len(inputs) != n:
            names = ", ".join(v.name for v in self.graph.inputs)
            raise TypeError(f"{self.graph.name}() takes {n} inputs ({names}), got "
                            f"{len(inputs)}")
        return self.executable(*inputs, *self._params)


def _frozen(a) -> np.ndarray:
    a = np.array(a, order="C", copy=True)
    a.setflags(write=False)
    return a


def _load(model):
    onnx = _onnx()
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (bytes, bytearray)):
        return onnx.load_from_string(bytes(model))
    if isinstance(model, (str, os.PathLike)):
        return onnx.load(os.fspath(model))
    raise TypeError(f"import_onnx takes an ONNX ModelProto, bytes or a file path, got "
                    f"{type(model).__name__}")


def _input_type(vi, input_shapes: dict) -> tuple[tuple[int, ...], str]:
    tt = vi.type.tensor_type
    if not vi.type.HasField("tensor_type"):
        raise OnnxImportError(f"graph input '{vi.name}' is not a tensor (sequences, maps and "
                              f"optionals are not supported)")
    dtype = ir_dtype(tt.elem_type, f"graph input '{vi.name}'")
    if vi.name in input_shapes:
        return tuple(int(d) for d in input_shapes[vi.name]), dtype
    if not tt.HasField("shape"):
        raise OnnxImportError(f"graph input '{vi.name}' has no shape; give "
                              f"input_shapes={{'{vi.name}': (...)}}")
    shape = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            shape.append(int(d.dim_value))
        else:
            raise OnnxImportError(
                f"graph input '{vi.name}' has a symbolic dimension "
                f"'{d.dim_param or '?'}'; the IR has static shapes: give "
                f"input_shapes={{'{vi.name}': (...)}}")
    return tuple(shape), dtype


def import_onnx(model, *, input_shapes: dict | None = None, constants: dict | None = None,
                name: str | None = None, check: bool = True) -> OnnxModel:
    """Translate an ONNX model (``ModelProto``, serialized bytes or a file path) into an
    ``OnnxModel``. ``input_shapes`` fixes symbolic input dimensions (e.g. the batch);
    ``constants`` gives graph inputs fixed values (they are no longer inputs): needed where
    an input is a shape, axes, pads or slice bounds (``ShapeInputError`` names it)."""
    onnx = _onnx()
    model = _load(model)
    if check:
        try:
            onnx.checker.check_model(model)
        except onnx.checker.ValidationError as e:
            raise OnnxImportError(f"the model is not valid ONNX: {e}") from None
    opsets = {(o.domain or ""): o.version for o in model.opset_import}
    if "ai.onnx" in opsets:
        opsets[""] = opsets.pop("ai.onnx")
    g = model.graph
    if any(True for _ in g.sparse_initializer):
        raise OnnxImportError("sparse initializers are not supported")
    static = {t.name: _tensor_array(t, f"initializer '{t.name}'") for t in g.initializer}
    inits = set(static)
    gname = re.sub(r"[^A-Za-z0-9_.]", "_", name or g.name or "onnx_model") or "onnx_model"
    if not re.match(r"[A-Za-z_]", gname):
        gname = "g_" + gname
    tracer = Tracer(gname)
    taken: set[str] = set()
    ctx = _Context(tracer, static, inits, taken)
    input_names = []
    with recording(tracer):
        for vi in g.input:
            if vi.name in inits:        # an input with a default value: a parameter
                continue
            if constants and vi.name in constants:
                static[vi.name] = np.asarray(constants[vi.name])
                continue
            shape, dtype = _input_type(vi, input_shapes or {})
            from irgraph import TensorType
            v = tracer.graph.add_input(_value_name(vi.name, taken), TensorType(shape, dtype))
            ctx.env[vi.name] = Tensor(v, tracer)
            ctx.graph_inputs.add(vi.name)
            input_names.append(vi.name)
        for i, node in enumerate(g.node):
            _import_node(ctx, node, i, opsets)
        outs = []
        for vo in g.output:
            if vo.name not in ctx.env and vo.name not in static:
                raise OnnxImportError(f"graph output '{vo.name}' is not computed by any node")
            outs.append(ctx.tensor(vo.name).value)
    tracer.graph.set_outputs(outs)
    verify(tracer.graph)
    weights = {tracer.param_value(p).name: p.data for p in ctx.params.values()}
    return OnnxModel(tracer.graph, weights, input_names, [o.name for o in g.output],
                     opsets.get("", 1))


_FOLD_LIMIT = 4096     # elements: shape arithmetic is folded, weights stay parameters


def _import_node(ctx: _Context, node, index: int, opsets: dict[str, int]) -> None:
    domain = node.domain if node.domain != "ai.onnx" else ""
    h = HANDLERS.get((domain, node.op_type))
    where = describe_node(node, index)
    if h is None:
        raise OnnxImportError(f"{where}: operator {node.op_type} "
                              f"{'of domain ' + repr(domain) + ' ' if domain else ''}"
                              f"is not supported by the importer")
    if domain not in opsets:
        raise OnnxImportError(f"{where}: the model imports no opset for domain {domain!r}")
    view = NodeView(ctx, node, index, opsets[domain])
    unknown = sorted(set(view.attrs) - h.attrs)
    if unknown:
        raise OnnxImportError(f"{where}: attribute(s) {', '.join(unknown)} not supported "
                              f"(understood: {', '.join(sorted(h.attrs)) or 'none'})")
    all_known = all(n == "" or n in ctx.static for n in node.input)
    small = sum(ctx.static[n].size for n in node.input if n in ctx.static) <= _FOLD_LIMIT
    if h.static and all_known and small and any(n for n in node.input):
        outs = _fold(node, ctx, opsets, where)
        for name, val in zip(node.output, outs):
            if name:
                ctx.static[name] = val
        return
    try:
        outs = h.fn(view)
    except OnnxImportError:
        raise
    except (ValueError, TypeError, IndexError, NotImplementedError, IRError) as e:
        raise OnnxImportError(f"{where}: {e}") from e
    if not isinstance(outs, (list, tuple)):
        outs = [outs]
    for k, name in enumerate(node.output):
        if not name:
            continue
        if k >= len(outs) or outs[k] is None:
            raise OnnxImportError(f"{where}: output {k} ('{name}') is not supported")
        if isinstance(outs[k], np.ndarray):
            ctx.static[name] = outs[k]
        else:
            ctx.env[name] = outs[k]


def _fold(node, ctx: _Context, opsets, where: str) -> list[np.ndarray]:
    """Evaluate a shape-arithmetic node whose inputs are all known (ONNX's own reference)."""
    onnx = _onnx()
    from onnx.reference import ReferenceEvaluator
    feeds = {n: ctx.static[n] for n in node.input if n}
    inputs = [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(
        v.dtype), v.shape) for n, v in feeds.items()]
    outputs = [onnx.helper.make_empty_tensor_value_info(n) for n in node.output if n]
    graph = onnx.helper.make_graph([node], "fold", inputs, outputs)
    m = onnx.helper.make_model(graph, opset_imports=[
        onnx.helper.make_opsetid(d, v) for d, v in opsets.items()])
    try:
        res = ReferenceEvaluator(m).run(None, feeds)
    except Exception as e:     # noqa: BLE001 - reported with the node
        raise OnnxImportError(f"{where}: evaluating it on its constant inputs failed: {e}") \
            from e
    it = iter(res)
    return [np.asarray(next(it)) if n else None for n in node.output]
