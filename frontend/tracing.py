"""Tracing: Python code on ``Tensor`` objects records IR nodes into a graph.

A ``Tensor`` holds an IR value and the tracer that owns its graph; its operators call
``F`` functions, which add nodes. ``trace(fn, *specs)`` runs ``fn`` once on fresh input
tensors; module parameters become graph parameters named by their path in the module.
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from irgraph import Graph, TensorType, Value, verify
from irgraph.types import canonical_dtype

from .eager import eager_tracer
from .tensor_base import Tensor, user_location

__all__ = ["TensorSpec", "Tracer", "Tensor", "current_tracer", "recording", "trace_with",
           "flatten", "unflatten", "user_location"]


@dataclass(frozen=True)
class TensorSpec:
    """The static type of a traced input: ``TensorSpec((8, 16), "float32")``."""
    shape: tuple[int, ...]
    dtype: str = "float32"

    def __post_init__(self):
        shape = (self.shape,) if isinstance(self.shape, (int, np.integer)) else self.shape
        try:
            shape = tuple(int(d) for d in shape)
        except (TypeError, ValueError):
            raise TypeError(f"TensorSpec shape must be a tuple of ints, got {self.shape!r}") \
                from None
        if any(d < 0 for d in shape):
            raise ValueError(f"TensorSpec shape {shape} has a negative dimension")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))

    @property
    def type(self) -> TensorType:
        return TensorType(self.shape, self.dtype)


class Tracer:
    """Owns the graph being built; maps parameters (by identity) to their graph values."""

    def __init__(self, name: str, param_names: dict[int, str] | None = None):
        self.graph = Graph(name)
        self.param_names = dict(param_names or {})
        self.param_values: dict[int, Value] = {}
        self.params: dict[str, Any] = {}
        # the modules called while tracing (id -> module): a function's guard watches them
        self.modules: dict[int, Any] = {}
        # parameter name -> new value: state a traced model updates (batch norm's running
        # statistics in training mode). compile() adds them as outputs donated to the buffers.
        self.state_updates: dict[str, Value] = {}

    def update_state(self, p, new: "Tensor") -> None:
        """Record that buffer ``p`` (a Parameter) takes the value ``new`` after this run."""
        name = self.param_value(p).name
        self.state_updates[name] = new.value

    eager = False     # frontend.eager.EagerTracer runs ops instead of recording them

    def emit(self, op: str, *inputs: "Tensor", **attrs):
        # an eager tensor (computed outside any trace) enters a trace as a constant
        values = [self.emit("constant", value=t.value.data).value if t.tracer.eager
                  else t.value for t in inputs]
        outs = self.graph.add_node(op, values, attrs, user_location())
        res = tuple(Tensor(v, self) for v in outs)
        return res[0] if len(res) == 1 else res

    def param_value(self, p) -> Value:
        key = id(p)
        if key not in self.param_values:
            name = self.param_names.get(key) or self.graph.fresh_name("param")
            self.param_values[key] = self.graph.add_param(name, TensorType.of(p.data))
            self.params[name] = p
        return self.param_values[key]


_CURRENT: contextvars.ContextVar[Tracer | None] = contextvars.ContextVar("irgraph_tracer",
                                                                         default=None)


def current_tracer() -> Tracer:
    """The trace being recorded; outside any trace, the eager tracer (frontend/eager.py),
    which runs each op at once with the registry's kernels."""
    tr = _CURRENT.get()
    return eager_tracer() if tr is None else tr


def note_module(module) -> None:
    """A module is being called: the trace being recorded (not the eager one) depends on it."""
    tr = _CURRENT.get()
    if tr is not None:
        tr.modules.setdefault(id(module), module)


@contextlib.contextmanager
def recording(tracer: Tracer):
    """Within the ``with`` block, ops record into ``tracer`` (``current_tracer()`` returns it);
    the trace recorded before is current again after it, also on an exception."""
    token = _CURRENT.set(tracer)
    try:
        yield tracer
    finally:
        _CURRENT.reset(token)


def trace_with(fn: Callable, specs, name: str | None = None,
               param_names: dict[int, str] | None = None,
               flatten_outputs=None) -> tuple[Graph, Tracer, Any]:
    """Trace ``fn`` over ``specs``; returns (graph, tracer, output structure)."""
    specs = [s if isinstance(s, TensorSpec) else TensorSpec(*s) if isinstance(s, tuple)
             else _bad_spec(s) for s in specs]
    tracer = Tracer(_graph_name(name or getattr(fn, "__name__", type(fn).__name__)),
                    param_names)
    with recording(tracer):
        inputs = []
        taken = set((param_names or {}).values())
        for i, (s, pname) in enumerate(zip(specs, _arg_names(fn, len(specs)))):
            while pname in taken:       # parameters keep their state_dict names
                pname += "_input"
            inputs.append(Tensor(tracer.graph.add_input(pname, s.type), tracer))
        result = fn(*inputs)
    leaves, structure = flatten(result)
    # a graph's user-visible outputs come first; state updates (donated) follow them
    outs = []
    for leaf in leaves:
        if not isinstance(leaf, Tensor):
            raise TypeError(f"traced function returned {type(leaf).__name__}; it must return "
                            f"tensors (or tuples/lists/dicts of them)")
        if leaf.tracer.eager:           # computed outside the trace: a constant
            leaf = tracer.emit("constant", value=leaf.value.data)
        if leaf.tracer is not tracer:
            raise ValueError("traced function returned a tensor from another trace")
        outs.append(leaf.value)
    for pname, new in tracer.state_updates.items():
        tracer.graph.donations[len(outs)] = len(tracer.graph.inputs) + [
            p.name for p in tracer.graph.params].index(pname)
        outs.append(new)
    tracer.graph.set_outputs(outs)
    verify(tracer.graph)
    return tracer.graph, tracer, structure


def _graph_name(name: str) -> str:
    """A name the text format can print and parse back: ``<lambda>`` becomes ``lambda``."""
    import re
    name = re.sub(r"[^A-Za-z0-9_.]", "_", str(name).replace("<", "").replace(">", ""))
    return name if re.match(r"[A-Za-z_]", name) else f"g_{name}" if name else "main"


def _bad_spec(s):
    raise TypeError(f"input specs must be frontend.TensorSpec(shape, dtype), got {s!r}")


def _arg_names(fn, n: int) -> list[str]:
    import inspect
    import re
    target = fn.forward if hasattr(fn, "forward") else fn
    try:
        names = [p.name for p in inspect.signature(target).parameters.values()
                 if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        names = []
    names = [nm for nm in names if re.match(r"^[A-Za-z0-9_]+$", nm)]
    if len(names) < n or len(set(names[:n])) < n:
        return [f"arg{i}" for i in range(n)]
    return names[:n]


def flatten(obj) -> tuple[list, Any]:
    """Flatten nested tuples/lists/dicts into leaves and a structure for ``unflatten``."""
    if isinstance(obj, (tuple, list)):
        leaves, structs = [], []
        for o in obj:
            l, s = flatten(o)
            leaves += l
            structs.append(s)
        return leaves, (type(obj), structs)
    if isinstance(obj, dict):
        leaves, structs = [], []
        for k in obj:
            l, s = flatten(obj[k])
            leaves += l
            structs.append((k, s))
        return leaves, (dict, structs)
    return [obj], None


def unflatten(structure, leaves: list):
    it = iter(leaves)

    def build(s):
        if s is None:
            return next(it)
        kind, items = s
        if kind is dict:
            return {k: build(sub) for k, sub in items}
        if hasattr(kind, "_fields"):      # a namedtuple, e.g. F.max's (values, indices)
            return kind(*[build(sub) for sub in items])
        return kind(build(sub) for sub in items)
    return build(structure)
