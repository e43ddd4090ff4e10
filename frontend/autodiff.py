"""``frontend.grad`` and ``frontend.value_and_grad``: trace a scalar function, differentiate the
graph, compile it; call the result with numpy arrays.

Conventions follow JAX (``jax.grad``/``jax.value_and_grad``, ``has_aux``) with PyTorch's view
of parameters::

    loss = lambda x, y: F.cross_entropy(model(x), y)
    g = frontend.grad(loss, TensorSpec((8, 4)), TensorSpec((8,), "int64"), model=model)
    g(x, y)            # {"0.weight": ..., "0.bias": ...}: d loss / d each trainable parameter

``wrt`` picks what to differentiate with respect to:

* ``None``: the trainable float parameters the function uses (a dict name -> gradient), or,
  when it uses none, the first input (as ``jax.grad``'s ``argnums=0``);
* an int or a tuple of ints: input positions (an array, or a tuple of arrays);
* a name or a list of names (inputs or parameters, e.g. ``"0.weight"``): an array, or a dict;
* a ``Parameter`` or a list of them: an array, or a tuple.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from irgraph import Graph

from .compiler import CompiledFunction
from .driver import Gradient, compile_graph
from .guards import Guard
from .nn import Module, Parameter
from .tracing import TensorSpec, trace_with, unflatten

Wrt = Any


def _param_names(fn, model: Module | None) -> dict[int, str]:
    owner = fn if isinstance(fn, Module) else model
    if owner is None:
        return {}
    return {id(p): name for name, p in owner.named_parameters(buffers=True)}


def _resolve_wrt(graph: Graph, params: dict[str, Parameter], wrt: Wrt) -> tuple[list[str], Any]:
    """Names of the graph arguments to differentiate by, and how to pack their gradients."""
    if wrt is None:
        names = [p.name for p in graph.params if p.type.is_float and params[p.name].requires_grad]
        if names:
            return names, ("dict", names)
        if not graph.inputs:
            raise ValueError(f"{graph.name}: nothing to differentiate (no inputs, no trainable "
                             f"parameters)")
        return [graph.inputs[0].name], ("one",)
    if isinstance(wrt, (int, np.integer)):
        return [_input_name(graph, int(wrt))], ("one",)
    if isinstance(wrt, str):
        return [wrt], ("one",)
    if isinstance(wrt, Parameter):
        return [_param_name(params, wrt)], ("one",)
    wrt = list(wrt)
    if all(isinstance(w, (int, np.integer)) for w in wrt):
        return [_input_name(graph, int(w)) for w in wrt], ("tuple",)
    if all(isinstance(w, str) for w in wrt):
        return list(wrt), ("dict", list(wrt))
    if all(isinstance(w, Parameter) for w in wrt):
        return [_param_name(params, w) for w in wrt], ("tuple",)
    raise TypeError(f"wrt must be input positions, names or Parameters, got {wrt!r}")


def _input_name(graph: Graph, i: int) -> str:
    if not -len(graph.inputs) <= i < len(graph.inputs):
        raise ValueError(f"{graph.name} has {len(graph.inputs)} inputs; wrt={i} is out of range")
    return graph.inputs[i].name


def _param_name(params: dict[str, Parameter], p: Parameter) -> str:
    for name, q in params.items():
        if q is p:
            return name
    raise ValueError(f"wrt: {p!r} is not used by the traced function")


def _pack(how, grads: list[np.ndarray]):
    if how[0] == "one":
        return grads[0]
    if how[0] == "tuple":
        return tuple(grads)
    return dict(zip(how[1], grads))


class GradFunction(CompiledFunction):
    """A compiled gradient: ``f(*inputs)`` returns the gradients (``grad``) or
    ``(value, gradients)`` (``value_and_grad``); with ``has_aux`` the value is ``(loss, aux)``
    and ``grad`` returns ``(gradients, aux)``. Parameters are read live from the model."""

    def __init__(self, graph: Graph, source_graph: Graph, params: dict[str, Parameter],
                 structure, executable, pack, with_value: bool, has_aux: bool, passes=None):
        super().__init__(graph, params, structure, executable, source_graph, passes)
        self._pack = pack
        self._with_value = with_value
        self._has_aux = has_aux
        self._n_out = len(source_graph.outputs)
        self._n_user = self._n_out - len(source_graph.donations)

    def __call__(self, *inputs):
        outs = self.run_outputs(*inputs)
        # outputs between the user's and the gradients are state updates, already written
        value = unflatten(self.structure, outs[:self._n_user])
        grads = _pack(self._pack, outs[self._n_out:])
        if self._with_value:
            return value, grads
        return (grads, value[1]) if self._has_aux else grads


def check_aux_structure(structure, name: str) -> None:
    """With ``has_aux`` a function returns a pair (scalar loss, aux), aux any tree of
    tensors; ``structure`` is the result's (``tracing.flatten``)."""
    if not (isinstance(structure, tuple) and structure[0] in (tuple, list)
            and len(structure[1]) == 2 and structure[1][0] is None):
        raise TypeError(f"{name}: with has_aux=True the function must return "
                        f"(scalar loss, aux)")


def _build(fn: Callable | Module, specs: Sequence[TensorSpec], wrt: Wrt, has_aux: bool,
           with_value: bool, model: Module | None, backend: str, pipeline, name: str | None,
           options: dict, print_after=None, lazy: bool = True) -> GradFunction:
    if not specs and lazy:  # shapes from the arrays of each call (frontend.jit's table)
        from .jit import JitFunction
        return JitFunction(fn, lambda f, sp: _build(f, sp, wrt, has_aux, with_value, model,
                                                    backend, pipeline, name, options,
                                                    print_after, lazy=False))
    graph, tracer, structure = trace_with(fn, specs, name, _param_names(fn, model))
    n_user = len(graph.outputs) - len(graph.donations)
    if has_aux:
        check_aux_structure(structure, graph.name)
    elif n_user != 1 or structure is not None:
        raise TypeError(f"{graph.name}: grad needs a function returning one scalar tensor; it "
                        f"returned {n_user} tensors (use has_aux=True for (loss, aux))")
    names, pack = _resolve_wrt(graph, tracer.params, wrt)
    # short recurrences unrolled, long ones keep their states for a rolled backward pass;
    # state updates (batch norm) keep their buffers
    built = compile_graph(graph, backend=backend, differentiate=Gradient(tuple(names)),
                          pipeline=pipeline, kind="training", print_after=print_after,
                          options=options)
    out = GradFunction(built.graph, graph, tracer.params, structure, built.executable, pack,
                       with_value, has_aux, built.passes)
    out._guard = Guard(fn, tracer.params, tracer.modules)
    out._rebuild = lambda: _build(fn, specs, wrt, has_aux, with_value, model, backend, pipeline,
                                  name, options, print_after, lazy=False)
    return out


def grad(fn: Callable | Module, *specs: TensorSpec, wrt: Wrt = None, has_aux: bool = False,
         model: Module | None = None, backend: str = "reference", pipeline=None,
         name: str | None = None, print_after=None, **options) -> GradFunction:
    """Compile the gradient of ``fn`` (returning a float scalar) over inputs ``specs``.
    Without specs, ``grad(fn)(*arrays)`` compiles for the arrays' shapes and dtypes at each
    new signature (``frontend.jit``; numpy arrays or eager tensors).

    ``model`` names the parameters of a module that ``fn`` calls (as in its state_dict)."""
    return _build(fn, specs, wrt, has_aux, False, model, backend, pipeline, name, options,
                  print_after)


def value_and_grad(fn: Callable | Module, *specs: TensorSpec, wrt: Wrt = None,
                   has_aux: bool = False, model: Module | None = None,
                   backend: str = "reference", pipeline=None, name: str | None = None,
                   print_after=None, **options) -> GradFunction:
    """As ``grad``, but the compiled function returns ``(value, gradients)``."""
    return _build(fn, specs, wrt, has_aux, True, model, backend, pipeline, name, options,
                  print_after)
