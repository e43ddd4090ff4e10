"""An ``onnx.backend.base.Backend`` over irgraph: ``prepare`` imports the model and compiles
it with one irgraph backend; ``run`` takes the inputs in the model's order.

``backend_for("llvm")`` gives the Backend class of one irgraph backend (``reference``,
``llvm``, ``triton``); ``IrgraphBackend`` is the reference one. ``onnx.backend.test``'s
``BackendTest`` drives it over ONNX's node tests (tests/test_onnx_conformance.py).
"""
from __future__ import annotations

from onnx.backend.base import Backend, BackendRep

import numpy as np

from .errors import ShapeInputError
from .importer import import_onnx


class IrgraphRep(BackendRep):
    """A prepared model. Graph inputs the IR needs at import time (shapes, axes, pads: the
    IR's shapes are static) are bound at the first ``run`` that gives them, and the model is
    compiled once per distinct set of their values."""

    def __init__(self, model, target: str, options: dict):
        self.model, self.target, self.options = model, target, options
        self.all_inputs = [vi.name for vi in model.graph.input
                           if vi.name not in {t.name for t in model.graph.initializer}]
        self.bound: list[str] = []          # inputs specialized on their values
        self._compiled: dict = {}
        self._get({})                       # import errors surface at prepare

    def _get(self, values: dict):
        key = tuple((n, values[n].dtype.str, values[n].shape, values[n].tobytes())
                    for n in self.bound if n in values)
        if key in self._compiled:
            return self._compiled[key]
        while True:
            missing = [n for n in self.bound if n not in values]
            if missing:
                return None                 # prepare: wait for run to give the values
            try:
                m = import_onnx(self.model, constants={n: values[n] for n in self.bound})
                break
            except ShapeInputError as e:
                if e.input_name in self.bound:
                    raise
                self.bound.append(e.input_name)
                key = None
        compiled = (m, m.compile(self.target, fold_bn=False, **self.options))
        key = tuple((n, values[n].dtype.str, values[n].shape, values[n].tobytes())
                    for n in self.bound)
        self._compiled[key] = compiled
        return compiled

    def run(self, inputs, **kwargs):
        if isinstance(inputs, dict):
            values = {n: np.asarray(inputs[n]) for n in self.all_inputs}
        else:
            inputs = [inputs] if not isinstance(inputs, (list, tuple)) else inputs
            if len(inputs) != len(self.all_inputs):
                raise TypeError(f"the model takes {len(self.all_inputs)} inputs "
                                f"({', '.join(self.all_inputs)}), got {len(inputs)}")
            values = {n: np.asarray(v) for n, v in zip(self.all_inputs, inputs)}
        m, compiled = self._get(values)
        return tuple(compiled(*[values[n] for n in m.input_names]))


class IrgraphBackend(Backend):
    target = "reference"
    options: dict = {}

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device.upper().startswith("CPU") or (cls.target == "triton"
                                                    and device.upper().startswith("CUDA"))

    @classmethod
    def prepare(cls, model, device: str = "CPU", **kwargs) -> IrgraphRep:
        return IrgraphRep(model, cls.target, cls.options)

    @classmethod
    def run_model(cls, model, inputs, device: str = "CPU", **kwargs):
        return cls.prepare(model, device).run(inputs)

    @classmethod
    def run_node(cls, node, inputs, device: str = "CPU", outputs_info=None, **kwargs):
        raise NotImplementedError("run_node: build a model around the node and use prepare")


_CLASSES: dict[str, type] = {"reference": IrgraphBackend}


def backend_for(target: str, **options) -> type[IrgraphBackend]:
    """The Backend class that compiles with ``backends.compile(graph, target, **options)``."""
    key = target if not options else f"{target}:{sorted(options.items())}"
    if key not in _CLASSES:
        _CLASSES[key] = type(f"Irgraph{target.capitalize()}Backend", (IrgraphBackend,),
                             {"target": target, "options": dict(options)})
    return _CLASSES[key]
