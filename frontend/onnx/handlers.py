"""The ONNX operator handlers' table and what a handler sees: ``handler`` registers one for
ONNX op types (import_ops.py, import_rnn.py), ``NodeView`` is its view of a node (inputs,
attributes, known values), and the element types the IR has. importer.py drives them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..tracing import Tensor, Tracer
from .errors import OnnxImportError, ShapeInputError, describe_node


def onnx_package():
    """The ``onnx`` package (an optional dependency: the [onnx] extra), or a clear ImportError."""
    try:
        import onnx
    except ImportError as e:     # pragma: no cover - the [onnx] extra is not installed
        raise ImportError("ONNX support needs the onnx package: pip install -e '.[onnx]'") \
            from e
    return onnx


# ONNX TensorProto element types the IR has (the others are refused by name)
IR_DTYPES = {1: "float32", 11: "float64", 6: "int32", 7: "int64", 9: "bool"}


def ir_dtype(elem_type: int, what: str) -> str:
    if elem_type in IR_DTYPES:
        return IR_DTYPES[elem_type]
    name = onnx_package().TensorProto.DataType.Name(elem_type)
    raise OnnxImportError(f"{what} has element type {name}; the IR has float32, float64, "
                          f"int32, int64 and bool only")


# ---------------------------------------------------------------- handlers
@dataclass
class Handler:
    fn: Callable
    attrs: frozenset
    static: bool = False        # evaluated on known values when every input is known


HANDLERS: dict[tuple[str, str], Handler] = {}
TRAINING = "ai.onnx.preview.training"


def handler(*op_types: str, attrs=(), domain: str = "", static: bool = False):
    """Register ``fn(node: NodeView) -> outputs`` for ONNX ``op_types`` of ``domain``;
    ``attrs`` are the attribute names it understands (any other one is refused)."""
    def deco(fn):
        for op in op_types:
            HANDLERS[(domain, op)] = Handler(fn, frozenset(attrs), static)
        return fn
    return deco


class NodeView:
    """One ONNX node during import: operands as tensors or known arrays, decoded attributes,
    the operator set version, and ``fail`` for errors naming the node."""

    def __init__(self, ctx, node, index: int, opset: int):
        # ctx: the importer's state (importer.py): tracer, environment, known values
        self.ctx, self.node, self.index, self.opset = ctx, node, index, opset
        self.op_type = node.op_type
        onnx = onnx_package()
        self.attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        for k, v in list(self.attrs.items()):
            if isinstance(v, bytes):
                self.attrs[k] = v.decode()
            elif isinstance(v, list) and v and isinstance(v[0], bytes):
                self.attrs[k] = [s.decode() for s in v]
        self.n_inputs = len(node.input)

    @property
    def where(self) -> str:
        return describe_node(self.node, self.index)

    def fail(self, msg: str):
        raise OnnxImportError(f"{self.where}: {msg}")

    def attr(self, name: str, default=None):
        return self.attrs.get(name, default)

    def has(self, i: int) -> bool:
        return i < len(self.node.input) and self.node.input[i] != ""

    def input(self, i: int) -> Tensor:
        if not self.has(i):
            self.fail(f"input {i} is required")
        return self.ctx.tensor(self.node.input[i], self)

    def optional(self, i: int) -> Tensor | None:
        return self.input(i) if self.has(i) else None

    def known(self, i: int, what: str) -> np.ndarray:
        """Input ``i`` as a numpy array: it must be known at import time."""
        if not self.has(i):
            self.fail(f"input {i} ({what}) is required")
        name = self.node.input[i]
        if name in self.ctx.graph_inputs:
            raise ShapeInputError(
                f"{self.where}: input {i} ({what}) is the graph input '{name}', whose value "
                f"the IR needs at import time (static shapes): give it in "
                f"import_onnx(..., constants={{'{name}': value}})", name)
        if name not in self.ctx.static:
            self.fail(f"input {i} ({what}, '{name}') must be a constant or an initializer "
                      f"(the IR has static shapes); it is computed at run time")
        return self.ctx.static[name]

    def is_known(self, i: int) -> bool:
        return self.has(i) and self.node.input[i] in self.ctx.static

    @property
    def n_outputs(self) -> int:
        """How many outputs are used (trailing empty names do not count)."""
        outs = list(self.node.output)
        while outs and outs[-1] == "":
            outs.pop()
        return len(outs)

    def wants(self, i: int) -> bool:
        return i < len(self.node.output) and self.node.output[i] != ""

    def tracer(self) -> Tracer:
        return self.ctx.tracer

    def emit(self, op: str, *xs: Tensor, **attrs):
        return self.ctx.tracer.emit(op, *xs, **attrs)

    def const(self, value, dtype: str) -> Tensor:
        """A constant tensor of ``dtype`` (a uniform one is a ``full``)."""
        arr = np.asarray(value, dtype=np.dtype(dtype))
        if arr.size and (arr == arr.reshape(-1)[0]).all():
            return self.emit("full", shape=arr.shape, value=float(arr.reshape(-1)[0]),
                             dtype=dtype)
        return self.emit("constant", value=arr)


# ---------------------------------------------------------------- the import
def tensor_array(t, what: str) -> np.ndarray:
    """The numpy array of ONNX TensorProto ``t`` (``what`` names it if its type is refused)."""
    onnx = onnx_package()
    ir_dtype(t.data_type, what)
    return np.array(onnx.numpy_helper.to_array(t))
