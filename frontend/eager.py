"""Eager execution: outside any trace, ``F`` functions, tensor operators and models run op by
op and return tensors that hold their values.

    x = np.random.rand(4, 3).astype(np.float32)
    y = F.relu(x) * 2          # a Tensor: tensor([[...]]), y.numpy() is an array
    model(x)                   # any model: the same Tensor class, the same F functions

There is ONE ``Tensor`` class and one implementation of each op's semantics: the eager
tracer stands where a trace's ``Tracer`` would (``tracing.current_tracer()`` returns it when
no trace is being recorded). Each op is checked exactly as tracing checks it (a one-node
graph built by ``Graph.add_node``: attributes and the registry's type rule, the same error
classes and messages) and run by the interpreter's ``run_node`` with the registry's numpy
kernel (the reference backend's semantics). Parameters are read live; state updates (batch
norm's running statistics, a random generator's counter) are written at once into their
buffers, as a compiled call writes them.
"""
from __future__ import annotations

import numpy as np

from irgraph import Graph, TensorType, Value
from irgraph.interpreter import run_node

from .tensor_base import Tensor, format_tensor, user_location

__all__ = ["EagerTracer", "eager_tracer", "tensor", "format_tensor"]


class EagerValue(Value):
    """A value with its data: what an eager tensor holds in place of a graph value."""
    __slots__ = ("data",)

    def __init__(self, name: str, data: np.ndarray):
        super().__init__(name, TensorType.of(data))
        self.data = data


class EagerTracer:
    """Runs each op when it is emitted (the interface of ``tracing.Tracer``)."""
    eager = True

    def __init__(self):
        self.param_names: dict[int, str] = {}
        self._count = 0

    def _value(self, data: np.ndarray) -> EagerValue:
        self._count += 1
        return EagerValue(f"e{self._count}", data)

    def wrap(self, data) -> Tensor:
        """An eager tensor holding ``data`` (a numpy array, kept as it is)."""
        return Tensor(self._value(np.asarray(data)), self)

    def emit(self, op: str, *inputs: Tensor, **attrs):
        for t in inputs:
            if not t.tracer.eager:          # an eager tensor meets a traced one: trace it
                return t.tracer.emit(op, *inputs, **attrs)
        g = Graph("eager")
        g.add_node(op, [t.value for t in inputs], attrs, user_location())
        arrays = run_node(g.nodes[-1], [t.value.data for t in inputs])
        if op.startswith("random_"):
            # each eager draw is a call of its own: the next one reads the advanced counter
            self.__dict__.pop("_random_streams", None)
        res = tuple(Tensor(self._value(a), self) for a in arrays)
        return res[0] if len(res) == 1 else res

    def param_value(self, p) -> EagerValue:
        # weights are read live; a buffer (state) is read as of now, since an update
        # later in the same computation must not change what was read before it
        return self._value(p.data if p.requires_grad else p.data.copy())

    def update_state(self, p, new: Tensor) -> None:
        """Buffer ``p`` takes ``new``'s value, in place when its array allows it."""
        data = new.value.data
        if p.data.flags.writeable and p.data.shape == data.shape and \
                p.data.dtype == data.dtype:
            np.copyto(p.data, data)
        else:
            p.data = np.array(data)


_TRACER: list[EagerTracer] = []


def eager_tracer() -> EagerTracer:
    if not _TRACER:
        _TRACER.append(EagerTracer())
    return _TRACER[0]


def tensor(data, dtype: str | None = None) -> Tensor:
    """An eager tensor of ``data`` (array-like; ``torch.tensor``'s defaults: Python floats
    are float32, ints int64, bools bool), or of ``dtype``. A numpy array keeps its dtype."""
    if isinstance(data, Tensor):
        data = np.asarray(data)
    arr = np.array(data, dtype=None if dtype is None else TensorType((), dtype).np_dtype)
    if dtype is None and not isinstance(data, np.ndarray) and arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    if dtype is None and arr.dtype.kind in "iu" and arr.dtype not in (np.int32, np.int64):
        arr = arr.astype(np.int64)
    TensorType.of(arr)          # a dtype the IR has, else a clear error
    return eager_tracer().wrap(arr)
