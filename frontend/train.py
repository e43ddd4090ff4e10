"""``frontend.compile_train``: a whole training step compiled as one graph.

    opt = optim.Adam(lr=1e-3)
    step = compile_train(model, nn.CrossEntropyLoss(), opt, TensorSpec((32, 10)),
                         TensorSpec((32,), "int64"))
    for x, y in batches:
        loss = step(x, y)          # the model's parameters and opt.state change in place
        opt.lr = ...               # a new value is a new runtime input: no recompilation

The model is traced in its current mode (``model.train()`` / ``model.eval()``): batch norm's
mode is part of what is compiled, and in training mode its running statistics are outputs of
the step written back into the model's buffers.

With ``has_aux=True`` the loss function returns ``(loss, aux)`` (JAX's convention; aux any
tuple/list/dict tree of tensors: logits, an accuracy, the last hidden state to carry into
the next truncated-BPTT chunk) and ``step(*batch)`` returns ``(loss, aux)`` with aux as numpy
arrays: outputs of the same compiled graph, from the forward pass the gradient used.

``step.save_state(folder)`` / ``step.load_state(folder)`` write and restore the whole training
state (parameters, buffers, optimizer state and step count, the frontend's random state) in
an atomic, checksummed checkpoint folder (``irgraph.checkpoint``): a run resumed from it
continues bit for bit as the uninterrupted run would.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from irgraph.checkpoint import CheckpointReader, write
from irgraph.passes.train import TrainStep, training_step

from .compiler import param_names
from .driver import compile_graph
from .guards import Guard, rebuild_if_changed
from .dynamic_batch import compile_train_dynamic
from .nn import Module, Parameter
from . import random as _random
from .optim import Optimizer
from .autodiff import check_aux_structure
from .tracing import TensorSpec, flatten, trace_with, unflatten


class TrainStepFunction:
    """A compiled training step: ``step(*batch) -> loss`` (a float), or ``(loss, aux)`` when
    compiled with ``has_aux`` (``aux_structure``: the tree aux's arrays are put back in)."""

    def __init__(self, layout: TrainStep, graph, executable, optimizer: Optimizer,
                 params: dict[str, Parameter], has_aux: bool = False, aux_structure=None,
                 amp_init_scale: float = 2.0 ** 16):
        self.layout = layout            # the step graph as built, and where things sit
        self.passes = None              # the PassManager that ran (timings, report())
        self.graph = graph              # what the backend compiled (after the pipeline)
        self.executable = executable
        self.optimizer = optimizer
        self.params = params            # graph parameter name -> Parameter (weights, buffers)
        self._hdtype = [v.type.np_dtype for v in graph.inputs[len(layout.batch):]]
        # the hyperparameters' last values and their arrays (None: none yet)
        self._hyper: tuple[list, list] = ([None] * len(self._hdtype), [None] * len(self._hdtype))
        self.has_aux, self.aux_structure = has_aux, aux_structure
        # dynamic loss scaling (autocast="f16"): the scale and the good-step count, float32
        # scalars updated in place by the step
        self.amp = {n: np.array(v, np.float32) for n, v in
                    zip(layout.loss_scale, (amp_init_scale, 0.0))}

    _guard = _rebuild = None

    _layout_version = _spec = None

    def __call__(self, *batch):
        if self._guard is not None:     # the model changed what it traces: compile again
            # so does a structural option set on the optimizer (nesterov, maximize,
            # amsgrad, centered: its spec), as torch's step reads them at each call
            rebuild_if_changed(self, self._rebuild, keep=("amp",), force=(
                self._layout_version != self.optimizer.layout_version
                or self._spec != self.optimizer.spec()))
        lay = self.layout
        if len(batch) != len(lay.batch):
            raise TypeError(f"the training step takes {len(lay.batch)} batch input(s) "
                            f"({', '.join(lay.batch)}), got {len(batch)}")
        hyper = self.optimizer.hyperparameters()
        values = [hyper[h] for h in lay.hyperparameters]
        last, hargs = self._hyper
        if values != last:
            # the same array while a value repeats (only Adam's t moves at each step): the
            # executable reads nothing anew for it
            hargs = [a if a is not None and v == w else np.asarray(v, dt)
                     for v, w, a, dt in zip(values, last, hargs, self._hdtype)]
            self._hyper = (values, hargs)
        buffers = self._buffers()
        outs = self.executable(*batch, *hargs, *buffers)
        # donated outputs are already in the argument buffers when those were writable;
        # otherwise (a read-only or replaced array) the new array takes the old one's place
        first = len(lay.batch) + len(hargs)
        for o, a in self.graph.donations.items():
            if outs[o] is not buffers[a - first]:
                self._store(a - first, outs[o])
        self.optimizer.step_count += 1
        if not self.has_aux:
            return float(outs[0])
        aux = outs[len(outs) - lay.aux:]
        return float(outs[0]), unflatten(self.aux_structure, aux)

    def _slots(self) -> list[tuple[str, str]]:
        return [(pn, slot) for pn, slots in self.layout.state.items() for slot in slots]

    def _buffers(self) -> list[np.ndarray]:
        """The graph parameters' arrays: the model's, then the optimizer state's (read afresh
        at each step: the user may have replaced an array)."""
        state = self.optimizer.state
        return ([self.params[n].data for n in self.layout.params] +
                [state[pn][slot] for pn, slot in self._slots()] +
                [self.amp[n] for n in self.layout.loss_scale])

    def _store(self, i: int, array: np.ndarray) -> None:
        n = len(self.layout.params)
        if i < n:
            self.params[self.layout.params[i]].data = array
        elif i - n < len(self._slots()):
            pn, slot = self._slots()[i - n]
            self.optimizer.state[pn][slot] = array
        else:
            self.amp[self.layout.loss_scale[i - n - len(self._slots())]] = array

    @property
    def loss_scale(self) -> float | None:
        """The current dynamic loss scale (autocast="f16"), else None."""
        return float(self.amp["amp.scale"]) if self.amp else None

    def source(self) -> str:
        return self.executable.source()

    # -- the training state
    def _state_arrays(self) -> dict[str, np.ndarray]:
        """Checkpoint array name -> the live array: ``param:<name>`` for the model's
        parameters and buffers, ``state:<param>:<slot>`` for the optimizer's state."""
        out = {f"param:{n}": p.data for n, p in self.params.items()}
        out.update((f"state:{pn}:{slot}", self.optimizer.state[pn][slot])
                   for pn, slot in self._slots())
        out.update((f"state:{n}", a) for n, a in self.amp.items())
        return out

    def save_state(self, folder) -> None:
        """Write the training state to ``folder`` atomically: every parameter and buffer,
        the optimizer's state and step count (Adam's t, a schedule's k), the frontend's
        random state. Hyperparameters are the optimizer object's, not saved."""
        meta = {"optimizer": type(self.optimizer).__name__,
                "step_count": int(self.optimizer.step_count), "rng": _random.get_state()}
        write(folder, "training_state", self._state_arrays(), meta)

    def load_state(self, folder) -> None:
        """Restore what ``save_state`` wrote, for this same model and optimizer class; all or
        nothing: any fault of the folder is an ``irgraph.CheckpointError`` raised before
        anything changes."""
        live = self._state_arrays()
        with CheckpointReader(folder, "training_state") as r:
            r.check_arrays({k: (a.dtype.name, a.shape) for k, a in live.items()}, "array",
                           "this training step")
            bad = lambda what: r.error("manifest.json", f"meta: {what}")  # noqa: E731
            if set(r.meta) != {"optimizer", "step_count", "rng"}:
                raise bad(f"has keys {sorted(r.meta)}, expected optimizer, rng, step_count")
            opt, k = r.meta["optimizer"], r.meta["step_count"]
            if opt != type(self.optimizer).__name__:
                raise bad(f"the state is {opt!r}'s, this step's optimizer is "
                          f"{type(self.optimizer).__name__}")
            if type(k) is not int or k < 0:
                raise bad(f"step_count {k!r} is not an int >= 0")
            saved_rng = _random.get_state()
            try:
                _random.set_state(r.meta["rng"])    # validates; restored below on failure
            except ValueError as e:
                raise bad(f"rng: {e}") from None
            try:
                arrays = r.read_arrays()
            except BaseException:
                _random.set_state(saved_rng)
                raise
        for name, a in arrays.items():
            if live[name].flags.writeable:
                np.copyto(live[name], a)
            elif name.startswith("param:"):
                self.params[name[len("param:"):]].data = a
            elif name[len("state:"):] in self.amp:
                self.amp[name[len("state:"):]] = a
            else:
                _, pn, slot = name.split(":")
                self.optimizer.state[pn][slot] = a
        self.optimizer.step_count = k
        self.optimizer.restart_steps()


def compile_train(model: Module | Callable, loss_fn: Callable | None, optimizer: Optimizer,
                  *specs: TensorSpec, backend: str = "reference", pipeline=None,
                  n_model_inputs: int | None = None, name: str | None = None,
                  has_aux: bool = False, dynamic_batch: bool = False,
                  autocast: str | None = None, bptt: str = "auto", print_after=None,
                  **options) -> TrainStepFunction:
    """Compile forward + loss + gradients + optimizer update into one step.

    The batch is ``specs``: the first ``n_model_inputs`` (default: all but the last) go to
    ``model``, the rest to ``loss_fn(model_output, *rest)``; with ``loss_fn=None`` the model
    itself returns the loss. ``has_aux``: that loss is ``(loss, aux)`` and the step returns
    both (see the module docstring). Second-order optimizers (``optimizer.host_side``) get a step
    that drives compiled loss/gradient/Hessian-vector graphs from the host.
    ``dynamic_batch``: the step takes any batch of up to the specs' batch size, exactly
    (padded rows masked out of the loss; frontend/jit.py).
    ``autocast`` ("bf16"/"bfloat16" or "f16"/"float16"): mixed precision as torch.autocast
    (passes/autocast.py: matmuls and convolutions in 16 bits, float32 master weights and
    optimizer state); with float16, dynamic loss scaling as torch's GradScaler inside the
    step (passes/train.py ``LossScaling``; ``step.loss_scale``). docs/low_precision.md
    ``bptt`` (recurrences, passes/unroll.py): ``"rolled"`` keeps every recurrence a loop
    with a reverse-time loop for its gradient (code size and compile time independent of
    the sequence length), ``"unrolled"`` unfolds every one into a copy of its cell per step,
    ``"auto"`` (default) unrolls those of at most ``passes.unroll.DEFAULT_THRESHOLD`` steps.
    """
    if bptt not in ("auto", "rolled", "unrolled"):
        raise ValueError(f"compile_train: bptt must be 'auto', 'rolled' or 'unrolled', "
                         f"got {bptt!r}")
    if dynamic_batch and autocast is not None:
        raise NotImplementedError("autocast: with a fixed batch (dynamic_batch=False)")
    if dynamic_batch:
        return compile_train_dynamic(compile_train, model, loss_fn, optimizer, specs,
                                     n_model_inputs, backend=backend, pipeline=pipeline,
                                     name=name, has_aux=has_aux, bptt=bptt, **options)
    if not isinstance(optimizer, Optimizer) and not getattr(optimizer, "host_side", False):
        raise TypeError(f"optimizer must be a frontend.optim optimizer, got "
                        f"{type(optimizer).__name__}")
    n_in = count_model_inputs(loss_fn, specs, n_model_inputs)
    fn = loss_function(model, loss_fn, n_in, has_aux)
    graph, tracer, structure = trace_with(fn, specs, name or f"{type(model).__name__}_loss",
                                          param_names(model))
    trainable = trainable_names(tracer.params, optimizer)
    scaling = None
    if autocast is not None:
        from irgraph.types import canonical_dtype
        from irgraph.passes.autocast import autocast as _autocast
        from irgraph.passes.train import LossScaling
        low = canonical_dtype(autocast)
        if getattr(optimizer, "host_side", False):
            raise NotImplementedError("autocast: with an optimizer compiled into the step")
        graph = _autocast(graph, low)
        scaling = LossScaling() if low == "float16" else None
    if getattr(optimizer, "host_side", False):
        if has_aux:
            raise NotImplementedError(f"has_aux: {type(optimizer).__name__} steps from the host "
                                      f"(section 8.6 methods) return the loss only")
        from .second_order import compile_host_step
        return compile_host_step(graph, tracer.params, trainable, optimizer, backend,
                                 pipeline=pipeline, print_after=print_after, **options)
    groups = optimizer.plan_steps({n: tracer.params[n] for n in trainable})
    step = TrainingStep(trainable, optimizer.spec(), aux=has_aux, loss_scaling=scaling,
                        bptt=bptt, groups=groups)
    built = compile_graph(graph, backend=backend, differentiate=step, pipeline=pipeline,
                          kind="training", print_after=print_after, keep_interface=True,
                          options=options)
    optimizer.bind({n: tracer.params[n] for n in trainable})
    fn = TrainStepFunction(step.layout, built.graph, built.executable, optimizer,
                           dict(tracer.params), has_aux, structure[1][1] if has_aux else None,
                           *([scaling.init_scale] if scaling else []))
    fn.passes = built.passes
    fn._layout_version = optimizer.layout_version
    fn._spec = optimizer.spec()
    fn._guard = Guard(model, tracer.params, tracer.modules)
    fn._rebuild = lambda: compile_train(model, loss_fn, optimizer, *specs, backend=backend,
                                        pipeline=pipeline, n_model_inputs=n_model_inputs,
                                        name=name, has_aux=has_aux, autocast=autocast,
                                        bptt=bptt, **options)
    return fn


class TrainingStep:
    """What the compile driver differentiates for ``compile_train``: the loss graph becomes
    ONE training-step graph (``passes.train.training_step``: BPTT preparation, gradient,
    optimizer update); ``layout`` says where things sit in it once built."""

    def __init__(self, trainable, spec, **kwargs):
        self.trainable, self.spec, self.kwargs = list(trainable), spec, kwargs
        self.layout: TrainStep | None = None

    def __call__(self, graph):
        self.layout = training_step(graph, self.trainable, self.spec, **self.kwargs)
        return self.layout.graph


def count_model_inputs(loss_fn, specs, n) -> int:
    if n is None:
        n = len(specs) if loss_fn is None else len(specs) - 1
    if not 0 <= n <= len(specs) or (loss_fn is not None and n == 0 and not specs):
        raise ValueError(f"n_model_inputs={n} does not fit {len(specs)} batch spec(s)")
    return n


def loss_function(model, loss_fn, n_in: int, has_aux: bool = False) -> Callable:
    def loss(*batch):
        out = model(*batch[:n_in])
        result = out if loss_fn is None else loss_fn(out, *batch[n_in:])
        if has_aux:
            check_aux_structure(flatten(result)[1], "the loss function")
            value = result[0]
        else:
            value = result
        if not hasattr(value, "value") or value.shape != ():
            shape = getattr(value, "shape", type(value).__name__)
            raise ValueError(f"the loss must be a scalar tensor; got {shape} (reduce it, e.g. "
                             f"with .mean())" + ("" if has_aux else "; a loss function that "
                                                 "returns (loss, aux) needs has_aux=True"))
        return result
    return loss


def trainable_names(params: dict[str, Parameter], optimizer) -> list[str]:
    chosen = None if optimizer.params is None else {id(p) for p in optimizer.params}
    names = [n for n, p in params.items() if p.requires_grad and
             (chosen is None or id(p) in chosen) and np.issubdtype(p.data.dtype, np.floating)]
    if not names:
        raise ValueError("no trainable parameter of the model is used by the loss (or given "
                         "to the optimizer)")
    return names
