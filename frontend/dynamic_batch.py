"""One compile, any batch: ``compile(..., dynamic_batch=True)`` and ``compile_train(..., dynamic_batch=True)`` compile
ONE executable for the batch size of the specs (B, the leading axis of every input) and run
any other batch size n through it: rows are padded up to B (copies of the last row, so the
padding computes only finite, discarded values), outputs are sliced back to n rows; an
inference batch larger than B runs in chunks of B. The training step weights each
example's loss (the loss function's ``reduction="none"`` values) by a 0/1 mask and divides
by the true count, so the loss, gradients and update are those of the n true rows. Both
need rows that do not interact: ``row_coupling`` names what breaks that (batch statistics
in training mode, random draws, state updates). docs/usage.md compares this with
per-size compiles.
"""
from __future__ import annotations

import copy
import inspect
from typing import Any, Callable

import numpy as np

from irgraph import Graph
from irgraph.ir import all_nodes

from . import functional as F
from .functional_loss import mean_over
from .tracing import Tensor, TensorSpec, unflatten

__all__ = ["DynamicBatchFunction", "DynamicTrainStep", "row_coupling", "check_dynamic_batch",
           "compile_train_dynamic", "per_example_loss", "pad_rows", "argument_array"]


def argument_array(x, where: str) -> np.ndarray:
    """An argument of a compiled call (``where`` names it) as a numpy array: an array, a numpy
    scalar or an eager tensor; a Python number is refused."""
    if isinstance(x, Tensor):
        return x.numpy()
    if isinstance(x, (np.ndarray, np.generic)):
        return np.asarray(x)
    if isinstance(x, (bool, int, float)):
        raise TypeError(f"{where} is a Python {type(x).__name__} ({x!r}): give an array "
                        f"(np.float32({x!r})), or mark the argument static (static_argnums)")
    raise TypeError(f"{where} must be a numpy array or an eager tensor, got "
                    f"{type(x).__name__}")


def row_coupling(graph: Graph, updates_ok: bool = False) -> str | None:
    """Why rows of a batch are not independent in ``graph`` (None when nothing says so):
    padding the batch would then change the true rows' results. ``updates_ok``: state
    updates are the graph's purpose (a training step's), only its ops count."""
    if graph.donations and not updates_ok:
        return ("it updates state (batch norm's running statistics in training mode, a random "
                "generator's counter), which padded rows would enter")
    for node in all_nodes(graph):
        if node.op == "batch_norm" and node.attrs.get("training"):
            return f"batch norm in training mode normalizes over the batch ({node.loc or node!r})"
        if node.op.startswith("random_"):
            return (f"it draws random numbers ({node.op}), which depend on the batch size "
                    f"({node.loc or node!r})")
    return None


def _check_batched(graph: Graph) -> int:
    """The batch size B of ``graph``: the leading axis of every input and of every user
    output; ValueError naming the first one that has another."""
    if not graph.inputs:
        raise ValueError(f"dynamic_batch: {graph.name} has no inputs to batch")
    for v in graph.inputs:
        if not v.type.shape:
            raise ValueError(f"dynamic_batch: input %{v.name}: {v.type} has no batch axis")
    b = graph.inputs[0].type.shape[0]
    for v in graph.inputs:
        if v.type.shape[0] != b:
            raise ValueError(f"dynamic_batch: input %{v.name}: {v.type} has leading axis "
                             f"{v.type.shape[0]}, but the batch (%{graph.inputs[0].name}) is "
                             f"{b}; every input must lead with the batch axis")
    n_user = len(graph.outputs) - len(graph.donations)
    for k, v in enumerate(graph.outputs[:n_user]):
        if not v.type.shape or v.type.shape[0] != b:
            raise ValueError(f"dynamic_batch: output {k} (%{v.name}: {v.type}) does not lead "
                             f"with the batch axis of {b}: a padded batch would change it")
    return b


def check_dynamic_batch(graph: Graph) -> int:
    """The batch size B a traced inference graph can pad up to; ValueError saying why it
    cannot (rows coupled, an input or output without the batch axis)."""
    reason = row_coupling(graph)
    if reason:
        raise ValueError(f"dynamic_batch: {graph.name} cannot pad a batch: {reason}. Compile "
                         f"one executable per batch size instead (frontend.jit), or call "
                         f"model.eval() for inference")
    return _check_batched(graph)


def _check_rows(arrays: list[np.ndarray], specs: list, where: str) -> int:
    """n, the rows of this batch; TypeError/ValueError naming an argument that does not fit
    the compiled ``specs`` (TensorTypes) apart from its leading axis."""
    if len(arrays) != len(specs):
        raise TypeError(f"{where} takes {len(specs)} inputs, got {len(arrays)}")
    n = None
    for i, (a, t) in enumerate(zip(arrays, specs)):
        if a.dtype != t.np_dtype:
            raise TypeError(f"{where}: input {i} has dtype {a.dtype}, expected {t.dtype}")
        if a.ndim != len(t.shape) or a.shape[1:] != t.shape[1:]:
            raise ValueError(f"{where}: input {i} has shape {a.shape}, expected (n, "
                             f"{', '.join(map(str, t.shape[1:]))}) for any batch size n"
                             if len(t.shape) > 1 else f"{where}: input {i} has shape "
                             f"{a.shape}, expected (n,) for any batch size n")
        if n is None:
            n = a.shape[0]
        elif a.shape[0] != n:
            raise ValueError(f"{where}: input {i} has {a.shape[0]} rows, input 0 has {n}")
    return n


def pad_rows(a: np.ndarray, b: int) -> np.ndarray:
    """``a`` (n <= b rows) with b rows: the last row repeated (zeros when there is none)."""
    n = a.shape[0]
    if n == b:
        return a
    fill = np.repeat(a[-1:], b - n, axis=0) if n else np.zeros((b,) + a.shape[1:], a.dtype)
    return np.concatenate([a, fill], axis=0)


class DynamicBatchFunction:
    """A ``CompiledFunction`` for batches of B rows that takes any number of rows
    (``compile(..., dynamic_batch=True)``); ``compiled`` is the one executable."""

    def __init__(self, compiled):
        self.compiled = compiled
        self.batch_size = check_dynamic_batch(compiled.source_graph)
        self.runs = 0            # executable calls (a batch over B takes several)

    def __call__(self, *inputs):
        g = self.compiled.graph
        arrays = [argument_array(x, f"{g.name}: input {i}") for i, x in enumerate(inputs)]
        n = _check_rows(arrays, [v.type for v in g.inputs], g.name)
        b, parts = self.batch_size, []
        for start in range(0, max(n, 1), b):
            chunk = [pad_rows(a[start:start + b], b) for a in arrays]
            outs = self.compiled.run_outputs(*chunk)[:self.compiled.n_user_outputs]
            self.runs += 1
            parts.append([o[:min(b, n - start)] for o in outs])
        outs = [p[0] if len(parts) == 1 else np.concatenate(p, axis=0) for p in zip(*parts)]
        return unflatten(self.compiled.structure, outs)

    def __getattr__(self, name):            # graph, source_graph, params, weights, ...
        return getattr(self.__dict__["compiled"], name)


def per_example_loss(loss_fn) -> tuple[Callable, str, Any, Any]:
    """(the loss with ``reduction="none"``, its own reduction, its ignore_index or None, its
    class weights or None) for an nn loss module (a ``reduction`` attribute) or a function
    taking ``reduction=`` (``functools.partial(F.cross_entropy, weight=w)`` too)."""
    if loss_fn is None:
        raise TypeError("dynamic_batch training needs a loss function (loss_fn=None: the "
                        "model returns a reduced loss that padded rows would enter)")
    if isinstance(getattr(loss_fn, "reduction", None), str):
        reduction = loss_fn.reduction
        none = copy.copy(loss_fn)
        object.__setattr__(none, "reduction", "none")
        return (none, reduction, getattr(loss_fn, "ignore_index", None),
                getattr(loss_fn, "weight", None))
    try:
        param = inspect.signature(loss_fn).parameters.get("reduction")
    except (TypeError, ValueError):
        param = None
    if param is None:
        raise TypeError(f"dynamic_batch training needs the loss per example: give an nn loss "
                        f"module or a function with a reduction= argument (as F.cross_entropy);"
                        f" {getattr(loss_fn, '__name__', loss_fn)!r} has none")
    reduction = param.default if isinstance(param.default, str) else "mean"
    params = inspect.signature(loss_fn).parameters
    ignore, weight = params.get("ignore_index"), params.get("weight")
    return ((lambda *a: loss_fn(*a, reduction="none")), reduction,
            None if ignore is None else ignore.default,
            None if weight is None or weight.default is inspect.Parameter.empty
            else weight.default)


class DynamicTrainStep:
    """A training step compiled for B rows that takes any batch of n <= B rows exactly
    (``compile_train(..., dynamic_batch=True)``): the loss is ``sum(mask * per-example
    loss) / count`` with ``mask`` and ``count`` runtime inputs. ``step`` is the compiled
    ``TrainStepFunction`` (its two extra batch inputs last)."""

    def __init__(self, step, batch_specs, batch_size: int, ignore_index=None):
        self.step, self.specs, self.batch_size = step, batch_specs, batch_size
        self.ignore_index = ignore_index
        self.optimizer = step.optimizer

    def __call__(self, *batch):
        arrays = [argument_array(x, f"the training step: batch input {i}")
                  for i, x in enumerate(batch)]
        n = _check_rows(arrays, [s.type for s in self.specs], "the training step")
        b = self.batch_size
        if not 0 < n <= b:
            raise ValueError(f"the training step was compiled for batches of up to {b} rows "
                             f"(dynamic_batch pads up to it); this batch has {n}")
        mask = np.zeros(b, np.float32)
        mask[:n] = 1.0
        return self.step(*[pad_rows(a, b) for a in arrays], mask, np.float32(n))

    def __getattr__(self, name):    # graph, params, executable, save_state, load_state, ...
        return getattr(self.__dict__["step"], name)


def compile_train_dynamic(compile_train: Callable, model, loss_fn, optimizer, specs,
                          n_model_inputs, **kwargs) -> DynamicTrainStep:
    """``compile_train(..., dynamic_batch=True)``: see ``DynamicTrainStep``."""
    if kwargs.get("has_aux"):
        raise NotImplementedError("dynamic_batch with has_aux: aux values of padded rows "
                                  "cannot be told apart; compile per batch size")
    specs = [s if isinstance(s, TensorSpec) else TensorSpec(*s) for s in specs]
    none, reduction, ignore_index, class_weight = per_example_loss(loss_fn)
    if reduction not in ("mean", "sum"):
        raise ValueError(f"dynamic_batch training needs a loss reduced by 'mean' or 'sum', "
                         f"not {reduction!r}")
    for i, s in enumerate(specs):
        if not s.shape:
            raise ValueError(f"dynamic_batch: batch input {i} ({s.type}) has no batch axis")
    b = specs[0].shape[0]
    n_in = len(specs) - 1 if n_model_inputs is None else n_model_inputs

    def masked_loss(out, *rest):
        *targets, mask, count = rest
        per = none(out, *targets)
        if not per.shape or per.shape[0] != b:
            raise ValueError(f"dynamic_batch: the loss per example has shape {per.shape}; it "
                             f"must lead with the batch axis of {b}")
        rows = F.sum(F.reshape(per, (b, -1)), dim=1) if per.ndim > 1 else per
        total = F.sum(F.mul(rows, F.cast(mask, rows.dtype)))
        if reduction == "sum":
            return total
        classes = targets and not targets[0].type.is_float
        if classes and (ignore_index is not None or class_weight is not None):
            # mean over the class targets that count, each by its class weight (torch's
            # denominator: the weights of the targets not ignored; class-probability
            # targets, floats, have neither: each row counts, as in torch)
            t = targets[0]
            valid = F.cast(F.ne(t, ignore_index), rows.dtype) if ignore_index is not None \
                else F.ones_like(t, dtype=rows.dtype)
            if class_weight is not None:
                w = F.cast(F.as_tensor(np.asarray(class_weight)), rows.dtype)
                safe = F.where(F.gt(valid, 0.0), t, F.mul(t, 0))    # ignored rows: class 0
                valid = F.mul(valid, w[safe])
            valid = F.sum(F.reshape(valid, (b, -1)), dim=1) if valid.ndim > 1 else valid
            return mean_over(total, F.sum(F.mul(valid, F.cast(mask, rows.dtype))))
        per_row = int(np.prod(per.shape[1:], dtype=np.int64))
        return F.div(total, F.mul(F.cast(count, rows.dtype), float(per_row)))
    masked_loss.__name__ = "masked_loss"
    extra = (TensorSpec((b,), "float32"), TensorSpec((), "float32"))
    step = compile_train(model, masked_loss, optimizer, *specs, *extra, n_model_inputs=n_in,
                         **kwargs)
    reason = row_coupling(step.graph, updates_ok=True)
    if reason:
        raise ValueError(f"dynamic_batch: this training step cannot pad a batch: {reason}. "
                         f"Compile one step per batch size instead (frontend.fit.per_shape)")
    return DynamicTrainStep(step, specs, b, ignore_index)

