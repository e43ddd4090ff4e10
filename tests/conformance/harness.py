"""Run PyTorch's own per-op sample inputs (OpInfo) through irgraph and compare with torch.

One graph per (op, dtype, chunk of samples): its inputs are every tensor of every sample, then
one cotangent per differentiable output; its outputs are every sample's forward outputs, then
the gradient of ``sum(out * cotangent)`` with respect to each tensor torch differentiates
(``passes.autodiff.vjp``). One compile per group keeps the LLVM backend's compile time to a
few hundred compiles for the whole database. Only when a group fails to compile or run is
each of its samples compiled alone, to name the one that fails.

A sample's result is one of ``ok`` or a failure kind: ``trace`` (the frontend refused it),
``compile``, ``run``, ``structure`` (number, shape or dtype of the outputs), ``forward``,
``grad`` (numbers differ from torch beyond the tolerance).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import numpy as np
import torch

import irgraph.backends as backends
import os
import irgraph.frontend as fe
from irgraph.frontend.compiler import run_pipeline
from irgraph.frontend.tracing import Tensor, flatten, trace_with
from irgraph import verify
from irgraph.passes.autodiff import vjp

# Tolerances (rtol, atol). Elementwise ops: torch's defaults for float32 (rtol 1.3e-6,
# atol 1e-5) and float64 (1e-7, 1e-7). Ops that accumulate (reductions, matmul,
# convolution, pooling averages, normalization, losses) sum in another order than torch:
# float32 allows rtol 1e-5, atol 1e-4 (a few ulps of a sum of hundreds of terms), float64
# rtol 1e-7, atol 1e-7 still. Gradients take the accumulating class in float32 (a backward
# formula rounds several times: 2844.9143 vs torch's 2844.9104 for pow's, 1.4e-6 apart).
TOLERANCES = {
    ("exact", "float32"): (1.3e-6, 1e-5), ("exact", "float64"): (1e-7, 1e-7),
    ("accum", "float32"): (1e-5, 1e-4), ("accum", "float64"): (1e-7, 1e-7),
}
# samples per graph: bounds a graph's size (the LLVM compile time grows with it)
GROUP_SIZE = 160
# LLVM at opt level 0 (IRGRAPH_CONFORMANCE_OPT overrides): the same lowering, a quarter of the
# compile time of level 3, which tests/test_llvm*.py cover; two threads, fixed (the default picks
# 1 or all by measured run time)
BACKEND_OPTIONS = {"llvm": {"opt": int(os.environ.get("IRGRAPH_CONFORMANCE_OPT", "0")),
                            "threads": 2}}
TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def np_dtype_name(t) -> str:
    return str(t.dtype).replace("torch.", "")


def _to_ours(v):
    """A non-tensor argument as the frontend takes it (torch dtypes become names)."""
    if isinstance(v, torch.dtype):
        return str(v).replace("torch.", "")
    if isinstance(v, torch.Size):
        return tuple(v)
    return v


@dataclasses.dataclass
class Prepared:
    """One sample, made ready for both sides."""
    index: int
    desc: str
    leaves: list[np.ndarray]            # every distinct tensor of (input, args, kwargs)
    grad_leaves: list[int]              # which of them torch differentiates
    rebuild: Callable                   # leaves (traced Tensors) -> (input, args, kwargs)
    outs: list[np.ndarray]              # torch's forward outputs, flattened
    diff_outs: list[int]                # outputs with a gradient (float, requires_grad)
    cts: list[np.ndarray]               # one random cotangent per diff output
    grads: list[np.ndarray]             # torch's d sum(out*ct) / d grad leaf
    sample: Any = None
    # module samples: graph parameter name -> our Parameter, and torch's gradient of each
    # trainable one
    params: dict = dataclasses.field(default_factory=dict)
    param_grads: dict = dataclasses.field(default_factory=dict)


def describe(sample) -> str:
    def d(v):
        if isinstance(v, torch.Tensor):
            return f"{np_dtype_name(v)}{list(v.shape)}"
        if isinstance(v, (list, tuple)):
            inner = ", ".join(d(x) for x in v)
            return f"[{inner}]" if isinstance(v, list) else f"({inner})"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k}={d(x)}" for k, x in v.items()) + "}"
        return repr(v)
    parts = [d(sample.input)] + [d(a) for a in sample.args] + [
        f"{k}={d(v)}" for k, v in sample.kwargs.items()]
    return ", ".join(parts)


def _split(obj, leaves: list, ids: dict):
    """Replace each tensor in ``obj`` by a placeholder index into ``leaves`` (by identity)."""
    if isinstance(obj, torch.Tensor):
        if id(obj) not in ids:
            ids[id(obj)] = len(leaves)
            leaves.append(obj)
        return _Leaf(ids[id(obj)])
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_split(o, leaves, ids) for o in obj)
    if isinstance(obj, list):
        return [_split(o, leaves, ids) for o in obj]
    if isinstance(obj, dict):
        return {k: _split(o, leaves, ids) for k, o in obj.items()}
    return _to_ours(obj)


@dataclasses.dataclass(frozen=True)
class _Leaf:
    i: int


def _fill(obj, values):
    if isinstance(obj, _Leaf):
        return values[obj.i]
    if isinstance(obj, tuple):
        return tuple(_fill(o, values) for o in obj)
    if isinstance(obj, list):
        return [_fill(o, values) for o in obj]
    if isinstance(obj, dict):
        return {k: _fill(o, values) for k, o in obj.items()}
    return obj


def _torch_flat(out) -> list:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _torch_flat(o)]
    raise TypeError(f"unexpected torch output {type(out).__name__}")


def prepare(index: int, sample, torch_fn: Callable, rng: np.random.Generator,
            supports_grad: bool = True) -> Prepared:
    leaves: list = []
    ids: dict = {}
    structure = (_split(sample.input, leaves, ids), _split(tuple(sample.args), leaves, ids),
                 _split(dict(sample.kwargs), leaves, ids))
    # snapshot before torch runs: some ops update arguments in place (batch norm's statistics)
    arrays = [t.detach().cpu().numpy().copy() for t in leaves]
    out = torch_fn(sample.input, *sample.args, **sample.kwargs)
    flat = _torch_flat(out)
    grad_leaves = [i for i, t in enumerate(leaves) if t.requires_grad and t.is_floating_point()]
    diff_outs = [k for k, o in enumerate(flat) if o.requires_grad and o.is_floating_point()]
    cts = [rng.standard_normal(flat[k].shape).astype(np_dtype_name(flat[k]))
           for k in diff_outs]
    grads = []
    if not supports_grad:
        grad_leaves, diff_outs, cts = [], [], []
    if grad_leaves and diff_outs:
        gs = torch.autograd.grad([flat[k] for k in diff_outs], [leaves[i] for i in grad_leaves],
                                 [torch.from_numpy(c) for c in cts], allow_unused=True)
        grads = [np.zeros(arrays[i].shape, arrays[i].dtype) if g is None
                 else g.detach().numpy().copy() for i, g in zip(grad_leaves, gs)]

    def rebuild(values):
        inp, args, kwargs = _fill(structure, values)
        return inp, args, kwargs
    return Prepared(index, describe(sample), arrays, grad_leaves, rebuild,
                    [o.detach().numpy().copy() for o in flat], diff_outs, cts, grads, sample)


@dataclasses.dataclass
class Outcome:
    index: int
    desc: str
    kind: str            # "ok" or the failure kind
    detail: str = ""


class _GroupGraph:
    """The traced (and differentiated) graph of a group of samples, and how to read it."""

    def __init__(self, name: str, fn: Callable, group: Sequence[Prepared]):
        self.group = list(group)
        self.trace_errors: dict[int, str] = {}
        self.slices: dict[int, tuple[int, int]] = {}
        self.out_types: dict[int, list] = {}
        specs = [fe.TensorSpec(a.shape, str(a.dtype)) for p in group for a in p.leaves]
        offsets = np.cumsum([0] + [len(p.leaves) for p in group])

        def combined(*xs):
            outs = []
            for p, lo in zip(self.group, offsets):
                vals = xs[lo:lo + len(p.leaves)]
                try:
                    inp, args, kwargs = p.rebuild(list(vals))
                    leaves, _ = flatten(fn(inp, *args, **kwargs))
                    if not all(isinstance(t, Tensor) for t in leaves):
                        raise TypeError(f"returned {[type(t).__name__ for t in leaves]}")
                except Exception as e:   # noqa: BLE001 -- reported per sample
                    self.trace_errors[p.index] = f"{type(e).__name__}: {e}"
                    continue
                self.slices[p.index] = (len(outs), len(outs) + len(leaves))
                outs += leaves
            return outs

        param_names = {id(q): n for p in group for n, q in p.params.items()}
        graph, self.tracer, _ = trace_with(combined, specs, _safe(name), param_names)
        n_user = len(graph.outputs) - len(graph.donations)
        # gradients: of each traced diff output, wrt each grad leaf of the samples that traced
        of, wrt = [], []
        for p, lo in zip(self.group, offsets):
            if p.index not in self.slices:
                continue
            start, stop = self.slices[p.index]
            if stop - start != len(p.outs):
                continue         # reported as a structure failure; no gradient asked
            if not all(graph.outputs[start + k].type.is_float for k in p.diff_outs):
                continue
            of += [start + k for k in p.diff_outs]
            wrt += [graph.inputs[lo + i].name for i in p.grad_leaves]
            wrt += [n for n in p.param_grads if n in self.tracer.params]
        self.of = of
        self.wrt = list(dict.fromkeys(wrt))
        self.n_forward = len(graph.outputs)
        self.n_user = n_user
        self.forward_graph = graph
        if of and self.wrt:
            graph = vjp(graph, self.wrt, of)
        self.graph = verify(run_pipeline(graph, None, "training"))

    def arguments(self) -> list[np.ndarray]:
        args = [a for p in self.group for a in p.leaves]
        if self.of and self.wrt:
            cts = {}
            for p in self.group:
                if p.index in self.slices:
                    start, _ = self.slices[p.index]
                    for k, c in zip(p.diff_outs, p.cts):
                        cts[start + k] = c
            args += [cts[k] for k in self.of]
        # parameters last, copied: a training-mode graph writes its state updates into them
        return args + [self.tracer.params[v.name].data.copy() for v in self.graph.params]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def _compare(p: Prepared, ours: list[np.ndarray], grads: dict[int, np.ndarray] | None,
             tol: tuple[float, float], grad_tol: tuple[float, float]) -> Outcome:
    if len(ours) != len(p.outs):
        return Outcome(p.index, p.desc, "structure",
                       f"{len(ours)} outputs, torch has {len(p.outs)}")
    for k, (a, b) in enumerate(zip(ours, p.outs)):
        a = np.asarray(a)
        if a.shape != b.shape or a.dtype != b.dtype:
            return Outcome(p.index, p.desc, "structure",
                           f"output {k}: {a.dtype}{list(a.shape)}, torch {b.dtype}{list(b.shape)}")
        bad = _mismatch(a, b, tol)
        if bad:
            return Outcome(p.index, p.desc, "forward", f"output {k}: {bad}")
    if grads is not None:
        for i, want in zip(p.grad_leaves, p.grads):
            got = grads.get(i)
            if got is None:
                continue
            bad = _mismatch(np.asarray(got), want, grad_tol)
            if bad:
                return Outcome(p.index, p.desc, "grad", f"d/d tensor {i}: {bad}")
        for name, want in p.param_grads.items():
            got = grads.get(name)
            if got is None:
                return Outcome(p.index, p.desc, "grad", f"no gradient of parameter {name}")
            bad = _mismatch(np.asarray(got), want, grad_tol)
            if bad:
                return Outcome(p.index, p.desc, "grad", f"d/d {name}: {bad}")
    return Outcome(p.index, p.desc, "ok")


def _mismatch(a: np.ndarray, b: np.ndarray, tol) -> str:
    if a.shape != b.shape:
        return f"shape {a.shape} vs torch {b.shape}"
    if a.dtype.kind != "f":
        if np.array_equal(a, b):
            return ""
        return f"values differ: {a.ravel()[:6]} vs torch {b.ravel()[:6]}"
    rtol, atol = tol
    with np.errstate(invalid="ignore"):
        close = np.isclose(a, b, rtol=rtol, atol=atol, equal_nan=True)
    if close.all():
        return ""
    i = int(np.argmin(close.ravel()))
    return (f"{int((~close).sum())} of {a.size} values differ, e.g. [{i}] "
            f"{a.ravel()[i]!r} vs torch {b.ravel()[i]!r}")


def run_group(name: str, fn: Callable, group: Sequence[Prepared], backend: str,
              tol_class: str, dtype: str, graph: _GroupGraph | None = None) -> list[Outcome]:
    """Outcomes of ``group`` on ``backend``; a group that fails as a whole is split.
    ``graph``: the group's graph when already built (for another backend)."""
    tol, grad_tol = TOLERANCES[(tol_class, dtype)], TOLERANCES[("accum", dtype)]
    stage = "compile"
    try:
        gg = graph or _GroupGraph(name, fn, group)
        exe = backends.compile(gg.graph, backend, **BACKEND_OPTIONS.get(backend, {}))
        stage = "run"
        results = [np.asarray(r) for r in exe(*gg.arguments())]
    except Exception as e:   # noqa: BLE001 -- narrowed to a sample below
        if len(group) == 1:
            return [Outcome(group[0].index, group[0].desc, stage, f"{type(e).__name__}: {e}")]
        return [o for p in group for o in run_group(name, fn, [p], backend, tol_class, dtype)]
    outcomes = []
    grads_by_input = dict(zip(gg.wrt, results[gg.n_forward:]))
    names = [v.name for v in gg.forward_graph.inputs]
    offsets = np.cumsum([0] + [len(p.leaves) for p in group])
    for p, lo in zip(group, offsets):
        if p.index in gg.trace_errors:
            outcomes.append(Outcome(p.index, p.desc, "trace", gg.trace_errors[p.index]))
            continue
        start, stop = gg.slices[p.index]
        grads = None
        if p.grads or p.param_grads:
            grads = {i: grads_by_input[names[lo + i]] for i in p.grad_leaves
                     if names[lo + i] in grads_by_input}
            grads.update({n: grads_by_input[n] for n in p.param_grads if n in grads_by_input})
        outcomes.append(_compare(p, results[start:stop], grads, tol, grad_tol))
    return outcomes


def chunks(items: list, n: int) -> list[list]:
    return [items[i:i + n] for i in range(0, len(items), n)] or [[]]


@functools.lru_cache(maxsize=None)
def op_db_by_name() -> dict:
    from torch.testing._internal.common_methods_invocations import op_db
    return {o.name + ("." + o.variant_test_name if o.variant_test_name else ""): o for o in op_db}


def samples(op_name: str, dtype: str) -> list[Prepared]:
    """torch's samples of ``op_name`` (seeded), prepared with torch's outputs and gradients."""
    info = op_db_by_name()[op_name]
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    raw = list(info.sample_inputs("cpu", TORCH_DTYPES[dtype], requires_grad=True))
    return [prepare(i, s, info.op, rng, info.supports_autograd) for i, s in enumerate(raw)]


# CI time: the max-pool OpInfos have 2,880 samples per dtype (every combination of kernel,
# stride, padding, dilation, ceil_mode and return_indices over a few shapes), two thirds of
# the database. The reference backend runs them all; a compiled backend runs every k-th
# (k = CI_STRIDE[op]) in the CI suite. ``python -m tests.conformance.report`` runs them all.
CI_STRIDE = {"nn.functional.max_pool1d": 8, "nn.functional.max_pool2d": 16,
             "nn.functional.max_pool3d": 12}


def check_op(op_name: str, fn: Callable, tol_class: str, dtype: str,
             backend_names: Sequence[str], limit: int | None = None,
             stride: int | None = None) -> dict[str, list]:
    """(prepared sample, outcome) pairs per backend for the samples of ``op_name`` (the first
    ``limit`` ones when given; every ``stride``-th on compiled backends, default
    ``CI_STRIDE``); a group's graph is built once for the backends that run it."""
    prepared = samples(op_name, dtype)[:limit]
    stride = CI_STRIDE.get(op_name, 1) if stride is None else stride
    return run_prepared(op_name, fn, prepared, tol_class, dtype, backend_names, stride)


def run_prepared(name: str, fn: Callable, prepared: Sequence[Prepared], tol_class: str,
                 dtype: str, backend_names: Sequence[str], stride: int) -> dict[str, list]:
    """(prepared sample, outcome) pairs per backend: every sample on the reference, every
    ``stride``-th on compiled backends, in groups of ``GROUP_SIZE`` whose graph is built once
    for the backends that run it."""
    results: dict[str, list] = {b: [] for b in backend_names}
    subsets: dict[int, list[str]] = {}
    for b in backend_names:
        subsets.setdefault(1 if b == "reference" else stride, []).append(b)
    for k, names in subsets.items():
        for group in chunks(list(prepared)[::k], GROUP_SIZE):
            if not group:
                continue
            try:
                gg = _GroupGraph(name, fn, group)
            except Exception:   # noqa: BLE001 -- run_group narrows it to the samples
                gg = None
            by_index = {p.index: p for p in group}
            for b in names:
                for o in run_group(name, fn, group, b, tol_class, dtype, gg):
                    results[b].append((by_index[o.index], o))
    return results


def graph_ops(op_name: str, fn: Callable, group: Sequence[Prepared]) -> set[str]:
    """The ops of the graph of ``group`` (forward and gradient)."""
    return {n.op for n in _GroupGraph(op_name, fn, group).graph.nodes}


def judge(pairs: list, backend: str, listed: Callable, known_prefix: str):
    """Split (prepared, outcome) pairs: ``(agree, listed, problems, notes)``. ``listed(sample,
    backend)`` gives the reason a sample is in the unsupported table, or None. A failure not
    listed is a problem; so is a listed sample that agrees (the table must be kept exact),
    except entries whose reason starts with ``known_prefix`` (fixes in flight: a note)."""
    agree = n_listed = 0
    problems, notes = [], []
    for p, o in pairs:
        reason = listed(p.sample, backend)
        if o.kind == "ok":
            agree += 1
            if reason is not None:
                msg = f"sample #{o.index} ({o.desc}) agrees on {backend} but is listed: {reason}"
                (notes if reason.startswith(known_prefix) else problems).append(msg)
        elif reason is not None:
            n_listed += 1
        else:
            problems.append(f"sample #{o.index} ({o.desc}) on {backend}: {o.kind}: {o.detail}")
    return agree, n_listed, problems, notes
