"""``frontend.trace`` and ``frontend.compile``: from user code to an executable."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from irgraph import Graph

from .driver import compile_graph
from .guards import Guard, rebuild_if_changed
from .dynamic_batch import DynamicBatchFunction, check_dynamic_batch
from .nn import Module
from .tracing import TensorSpec, trace_with, unflatten


def param_names(fn) -> dict[int, str]:
    """{id(parameter): its state_dict name} of a module's parameters and buffers; {} for a function."""
    if isinstance(fn, Module):
        return {id(p): name for name, p in fn.named_parameters(buffers=True)}
    return {}


def trace(fn: Callable | Module, *specs: TensorSpec, name: str | None = None) -> Graph:
    """Trace ``fn`` (a function or an ``nn.Module``) over input specs into a verified Graph."""
    graph, _, _ = trace_with(fn, specs, name, param_names(fn))
    return graph


class CompiledFunction:
    """A compiled model: call it with numpy arrays; parameters come from the module (live).
    When the modules it traced change what they trace (``model.eval()``, a replaced layer,
    parameters of another dtype: ``guards``), the next call compiles it again."""
    _guard = _rebuild = None

    def __init__(self, graph: Graph, params: dict[str, Any], structure, executable,
                 source_graph: Graph, passes=None):
        self.graph = graph                  # what the backend compiled
        self.source_graph = source_graph    # what tracing produced
        self.passes = passes                # the PassManager that ran (timings, report())
        self.params = params                # graph parameter name -> Parameter
        self.structure = structure
        self.executable = executable
        self.n_user_outputs = len(graph.outputs) - len(graph.donations)

    def run_outputs(self, *inputs) -> list:
        """Run on ``inputs`` with the live parameters; every output of the compiled graph."""
        if self._guard is not None:
            rebuild_if_changed(self, self._rebuild)
        n = len(self.graph.inputs)
        if len(inputs) != n:
            names = ", ".join(v.name for v in self.graph.inputs)
            raise TypeError(f"{self.graph.name}() takes {n} inputs ({names}), got {len(inputs)}")
        refuse_traced(inputs, self.graph.name)
        args = list(inputs) + [self.params[p.name].data for p in self.graph.params]
        return self.executable(*args)

    def __call__(self, *inputs):
        outs = self.run_outputs(*inputs)
        # outputs past the user's are state updates, already written into the buffers
        return unflatten(self.structure, outs[:self.n_user_outputs])

    @property
    def weights(self) -> dict[str, np.ndarray]:
        return {name: p.data for name, p in self.params.items()}


def compile(fn: Callable | Module, *specs: TensorSpec, backend: str = "reference",
            pipeline=None, name: str | None = None, dynamic_batch: bool = False,
            print_after=None, **options) -> CompiledFunction:
    """Trace ``fn`` over ``specs``, run the pass pipeline, compile with ``backend``
    (frontend/driver.py; ``print_after``: as ``PassManager`` takes it; the passes that ran
    are ``result.passes``).

    ``dynamic_batch``: the result takes any number of rows (the leading axis of every input
    and output), padding up to the specs' batch size (frontend/dynamic_batch.py)."""
    graph, tracer, structure = trace_with(fn, specs, name, param_names(fn))
    if dynamic_batch:
        check_dynamic_batch(graph)          # before the compile it would waste
    built = compile_graph(graph, backend=backend, pipeline=pipeline, kind="inference",
                          print_after=print_after, options=options)
    compiled = CompiledFunction(built.graph, tracer.params, structure, built.executable,
                                graph, built.passes)
    compiled._guard = Guard(fn, tracer.params, tracer.modules)
    compiled._rebuild = lambda: compile(fn, *specs, backend=backend, pipeline=pipeline,
                                        name=name, **options)
    return DynamicBatchFunction(compiled) if dynamic_batch else compiled


def run_pipeline(graph: Graph, pipeline, kind: str) -> Graph:
    """Run ``pipeline`` (None: the default for ``kind``; a list or a string of pass names)."""
    from irgraph.passes.manager import PassManager, default_pipeline
    if pipeline is None:
        pipeline = default_pipeline(kind)
    return PassManager(pipeline, kind=kind).run(graph)     # 'default' in a spec means kind's


def refuse_traced(args, name: str) -> None:
    """A compiled function runs on arrays; called inside another trace (``ig.grad`` of a
    function that calls ``ig.grad``), its inputs are traced tensors without values."""
    for a in args:
        tracer = getattr(a, "tracer", None)
        if tracer is not None and not tracer.eager:
            raise NotImplementedError(
                f"{name}(): a compiled function (ig.compile, ig.grad, ig.jit) called inside a "
                f"trace, on traced tensors: nesting ig.grad (a gradient of a gradient) is not "
                f"traced through; for second derivatives use irgraph.passes.autodiff.hessian, "
                f"hvp or jacobian on the graph, or call the inner function itself (not "
                f"compiled) in the outer one")
