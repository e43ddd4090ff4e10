"""Compile a graph into a plan of Triton launches and run it on device tensors.

Every node is lowered once, at compile time, to a step (see table.py). A call validates the
arguments, moves numpy arrays to the device (torch tensors already there are used as they
are), runs the steps in order with values freed after their last use, and returns torch
tensors or numpy arrays. No value goes back to the host between nodes.
"""
from __future__ import annotations

import contextlib
import heapq
from collections import defaultdict
from types import SimpleNamespace
from typing import Callable, Sequence

import numpy as np
import torch

from irgraph import Graph, Node, Value
from irgraph.errors import DataError
from irgraph.interpreter import ExecutionError, run_node
from irgraph.liveness import last_uses

from irgraph.passes.low_precision import widen_low_precision
from irgraph.passes.manager import register_pass

from ..base import (Executable, raise_as_reference, reference_error, run_backend_passes,
                    validate_args)
from .fused_attention import flash_attention
from .fused_norm import row_normalize
from .kernels.elementwise import elementwise
from .lower_optim import inplace_updates, updated_input
from . import runtime
from .runtime import (NAME_OF_TORCH_DTYPE, TORCH_DTYPES, View, default_device, interpreting,
                      to_device, to_host)
from .table import GROUP_KERNELS, LowerContext, Step, group_key, lower_node

OUTPUTS = ("auto", "numpy", "torch")
# ops run on float16/bfloat16 buffers as they are: matmul and the convolutions (16-bit
# operands into tl.dot, float32 accumulation, one rounding per 16-bit result) and layout ops
# (exact copies); passes/low_precision.py widens every other op on 16-bit values to float32
LOW_PRECISION_NATIVE = ("matmul", "matmul_f32", "conv", "conv_fft", "conv_input_grad",
                        "conv_kernel_grad", "reshape", "transpose")


def native_low_precision(node: Node) -> bool:
    """Whether ``node`` runs on its 16-bit operands unwidened (LOW_PRECISION_NATIVE, and an
    attention region the flash kernel or a normalize region the row kernel takes: float32
    accumulation, one rounding per result)."""
    return node.op in LOW_PRECISION_NATIVE or flash_attention(node) or row_normalize(node)


@register_pass("triton_low_precision")
def triton_low_precision(graph: Graph) -> Graph:
    """float16/bfloat16 ops computed in float32 between rounding casts, except those this
    backend runs on 16-bit buffers (``native_low_precision``)."""
    return widen_low_precision(graph, keep=native_low_precision)


# the graph rewrites this backend needs, run by the PassManager after the pipeline
# (attention and normalize regions first: their kernels take 16-bit ones as they are)
PASSES = ("fuse_attention", "fuse_norm", "fuse_norm_grad", "triton_low_precision")


class Plan:
    """A graph lowered to steps; ``plan(tensors) -> tensors`` runs it on the device.

    Nodes of a multi-tensor op (optimizer updates) are gathered into one step, launched where
    the group's last node stood, when no other node before that point reads their outputs.
    """

    def __init__(self, graph: Graph, ctx: LowerContext):
        self.graph = graph
        self.steps: list[tuple[list[Node], Step]] = []
        order = schedule(graph)
        ctx.inplace = inplace_updates(graph, order)
        for nodes in order:
            if len(nodes) == 1:
                self.steps.append((nodes, lower_node(nodes[0], ctx)))
            else:
                self.steps.append((nodes, GROUP_KERNELS[nodes[0].op](nodes, ctx)))
        self.dying = last_uses(graph, [nodes for nodes, _ in self.steps])

    def __call__(self, args: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if interpreting():          # numpy runs the kernels: masked-off lanes may divide by 0
            with np.errstate(all="ignore"):
                return self._run(args)
        return self._run(args)

    def _run(self, args: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        env: dict[Value, torch.Tensor] = dict(zip(self.graph.arguments, args))
        for i, (nodes, step) in enumerate(self.steps):
            outs = step([env[v] for n in nodes for v in n.inputs])
            for v, t in zip((v for n in nodes for v in n.outputs), outs):
                env[v] = t
            for v in self.dying.get(i, ()):
                del env[v]
        return [env[v] for v in self.graph.outputs]


def schedule(graph: Graph) -> list[list[Node]]:
    """The nodes in a topological order where each multi-tensor group is one unit.

    Units are taken in order of their first node as soon as their operands exist (Kahn's
    algorithm), so a node that reads one member's output (Polyak averaging after an update)
    simply runs after the whole group. If grouping would make a cycle, nothing is grouped.
    """
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, node in enumerate(graph.nodes):
        if node.op in GROUP_KERNELS:
            groups[group_key(node)].append(i)
    unit_of = list(range(len(graph.nodes)))
    for members in groups.values():
        for i in members:
            unit_of[i] = members[0]
    order = _topological_units(graph, unit_of)
    if order is None:
        return [[n] for n in graph.nodes]
    return [[graph.nodes[i] for i in range(len(graph.nodes)) if unit_of[i] == u] for u in order]


def _topological_units(graph: Graph, unit_of: list[int]) -> list[int] | None:
    producer = {v: unit_of[i] for i, n in enumerate(graph.nodes) for v in n.outputs}
    deps: dict[int, set[int]] = defaultdict(set)
    for i, node in enumerate(graph.nodes):
        for v in node.inputs:
            if v in producer and producer[v] != unit_of[i]:
                deps[unit_of[i]].add(producer[v])
    users: dict[int, set[int]] = defaultdict(set)
    for u, ds in deps.items():
        for d in ds:
            users[d].add(u)
    units = sorted(set(unit_of))
    waiting = {u: len(deps[u]) for u in units}
    ready = [u for u in units if waiting[u] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        u = heapq.heappop(ready)
        order.append(u)
        for w in users[u]:
            waiting[w] -= 1
            if waiting[w] == 0:
                heapq.heappush(ready, w)
    return order if len(order) == len(units) else None


class TritonExecutable(Executable):
    """``exe(*args)``: args are numpy arrays, scalars or torch tensors on ``exe.device``."""
    backend = "triton"

    def __init__(self, graph: Graph, *, output: str = "auto", allow_tf32: bool = False,
                 device: str | torch.device | None = None):
        super().__init__(graph)        # PASSES ran: 16-bit ops widened (triton_low_precision)
        if output not in OUTPUTS:
            raise ValueError(f"output={output!r}: choose one of {OUTPUTS}")
        self.output = output
        self.device = torch.device(device) if device is not None else default_device()
        self.ctx = LowerContext(self.device, allow_tf32)
        self.ctx.lower_graph = lambda g: Plan(g, self.ctx)
        self.plan = Plan(self.graph, self.ctx)
        self._donate = {o: _copier(graph.outputs[o], self.device) for o in graph.donations}
        self._index_checks = index_checks(self.graph)
        self._staged = staged_arguments(self.graph, self.plan, self.ctx.inplace)

    # ------------------------------------------------------------------ arguments
    def _check_tensor(self, v: Value, t: torch.Tensor) -> torch.Tensor:
        want = TORCH_DTYPES[v.type.dtype]
        if t.dtype != want:
            got = NAME_OF_TORCH_DTYPE.get(t.dtype, str(t.dtype))
            raise TypeError(f"argument %{v.name} has dtype {got}, expected {v.type.dtype} "
                            f"({v.type})")
        if tuple(t.shape) != v.type.shape:
            raise ValueError(f"argument %{v.name} has shape {tuple(t.shape)}, expected "
                             f"{v.type.shape} ({v.type}); a new shape needs a new compilation")
        if t.device != self.device:
            raise ValueError(f"argument %{v.name} is a torch tensor on {t.device}, but this "
                             f"executable runs on {self.device}; move it or pass numpy")
        return t if t.is_contiguous() else t.contiguous()

    def to_device(self, args: Sequence) -> list[torch.Tensor]:
        """Validate every argument, then copy numpy arrays to the device (tensors: no copy)."""
        params = self.graph.arguments
        if len(args) != len(params):
            validate_args(self.graph, args)     # raises the count error
        host = [i for i, a in enumerate(args) if not isinstance(a, torch.Tensor)]
        shim = SimpleNamespace(name=self.graph.name, arguments=[params[i] for i in host])
        arrays = dict(zip(host, validate_args(shim, [args[i] for i in host])))
        out = []
        for i, (v, a) in enumerate(zip(params, args)):
            if i in arrays:
                out.append(to_device(arrays[i], v.type.dtype, self.device))
            else:
                t = self._check_tensor(v, a)
                # an argument written in place before a check that may still fail: a
                # private copy (the donation copies the result back after a good run)
                out.append(t.clone() if i in self._staged and t is a else t)
        for i, check in self._index_checks:
            check(arrays[i] if i in arrays else to_host(out[i]))
        return out

    # ------------------------------------------------------------------ running
    def run_tensors(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Run on device tensors already validated; returns device tensors."""
        with _turn():
            return self.plan(list(tensors))

    def run(self, args: list[np.ndarray]) -> list[np.ndarray]:
        with _turn():
            return [to_host(t) for t in self.plan(self.to_device(args))]

    def __call__(self, *args):
        with _turn():
            return self._call(args)

    def _call(self, args):
        tensors = self.to_device(args)
        try:
            outs = self.plan(tensors)
        except DataError as e:
            # the same class and text as the reference, whose order of checks may differ
            # from this plan's (grouped launches): ask it, on the unchanged arguments
            raise_as_reference(self.graph,
                               validate_args(self.graph, [_host(a) for a in args]), e)
        outs = self._write_donated(args, tensors, outs)
        as_numpy = self.output == "numpy" or (
            self.output == "auto" and not any(isinstance(a, torch.Tensor) for a in args))
        if not as_numpy:
            return outs
        res = [to_host(t) for t in outs]
        return self.apply_donations(args, res)

    def _write_donated(self, given: Sequence, tensors: list[torch.Tensor],
                       outs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Donated outputs land in the caller's device tensor (the in-place update)."""
        for o, a in self.graph.donations.items():
            dst = given[a]
            if (isinstance(dst, torch.Tensor) and dst.device == self.device
                    and dst.is_contiguous() and outs[o] is not dst):
                if outs[o].data_ptr() != dst.data_ptr():
                    self._donate[o](outs[o], out=dst)
                outs[o] = dst
        return outs

    def source(self) -> str:
        """The graph and, per node, the Triton kernel that runs it."""
        lines = [str(self.graph), "", "# kernels:"]
        for nodes, _ in self.plan.steps:
            names = ", ".join(f"%{n.outputs[0].name}" for n in nodes if n.outputs)
            lines.append(f"#   {nodes[0].op} x{len(nodes)}: {names}")
        lines.extend(self.ctx.notes)                  # generated kernels (fused regions)
        return "\n".join(lines)


def _turn():
    """Interpreted kernels of all executables take turns (``runtime.INTERPRETER_LOCK``)."""
    return runtime.INTERPRETER_LOCK if interpreting() else contextlib.nullcontext()


def _host(a):
    """An argument as the reference takes it (a numpy array or a scalar)."""
    return to_host(a) if isinstance(a, torch.Tensor) else a


def _fallible(node: Node) -> bool:
    """Whether running ``node`` may raise in the middle of a plan (the NaN checker's
    ``check_finite``; class indices are checked before any launch)."""
    return node.op == "check_finite" or any(
        isinstance(g, Graph) and any(_fallible(n) for n in g.nodes) for g in node.attrs.values())


def staged_arguments(graph: Graph, plan: Plan, inplace: dict[Node, set[int]]) -> frozenset[int]:
    """Arguments an update writes in place when a step that may raise comes at or after the
    first such write: a call gives them a private copy, so a failed call leaves the caller's
    tensors as they were."""
    index = {v: i for i, v in enumerate(graph.arguments)}
    targets: set[int] = set()
    fallible_after = False
    for nodes, _ in plan.steps:
        for n in nodes:
            targets.update(index[n.inputs[updated_input(j)]] for j in inplace.get(n, ()))
        fallible_after = fallible_after or (bool(targets) and any(map(_fallible, nodes)))
    return frozenset(targets) if fallible_after else frozenset()


def _copier(v: Value, device):
    """A device copy kernel for value ``v`` writing into a given ``out`` tensor."""
    return elementwise("copy", v.shape, v.dtype, [View.of(v.shape)], [v.dtype], device)


def index_checks(graph: Graph) -> list[tuple[int, Callable[[np.ndarray], None]]]:
    """Range checks of class-index arguments (``nll_loss`` targets), run on the host before
    any launch when the argument arrives as numpy: a device kernel cannot raise."""
    args = {v: i for i, v in enumerate(graph.arguments)}
    out = []
    for node in graph.nodes:
        if node.op == "nll_loss" and node.inputs[1] in args:
            out.append((args[node.inputs[1]], _target_check(node)))
    return out


def _target_check(node: Node) -> Callable[[np.ndarray], None]:
    c, ignore = node.inputs[0].shape[1], node.attrs["ignore_index"]
    logp = node.inputs[0].type

    def check(t: np.ndarray) -> None:
        bad = (t != ignore) & ((t < 0) | (t >= c))
        if np.any(bad):         # the reference kernel's own error, as the reference raises it
            try:
                run_node(node, [np.zeros(logp.shape, logp.np_dtype), t])
            except ExecutionError as e:
                raise reference_error(e) from e
            raise AssertionError(f"the reference accepts the targets {t} of {node!r}")
    return check


OPTIONS = ("output", "allow_tf32", "device")


def compile(graph: Graph, **options) -> TritonExecutable:
    """Lower ``graph`` to Triton kernels. Options: ``output`` ("auto", "numpy", "torch"),
    ``allow_tf32`` (matmul/convolution inputs rounded to TF32, as cuDNN's default),
    ``device``. ``graph`` is verified and put through ``PASSES``, then ``build``."""
    _check_options(options)
    return build(run_backend_passes(graph, PASSES), **options)


def _check_options(options: dict) -> None:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TypeError(f"the triton backend takes the options {list(OPTIONS)}, got {unknown}")


def build(graph: Graph, **options) -> TritonExecutable:
    """The executable of a graph the PassManager verified and put through ``PASSES``."""
    _check_options(options)
    return TritonExecutable(graph, **options)
