"""The pass manager: named graph-to-graph passes composed into pipelines.

A pass is a plain function ``Graph -> Graph`` that returns a new graph and never mutates its
input (build the result with ``irgraph.GraphRewriter``). Passes register under a name::

    @register_pass("dce")
    def dce(g: Graph) -> Graph: ...

A pipeline is a list of names/functions or a comma-separated string::

    PassManager("fold_bn, simplify, strip_training").run(graph)
    PassManager(["cse", my_pass], print_after=["cse"]).run(graph)
    PassManager("default, fuse", kind="inference")    # 'default' expands to the preset

The input is verified once, then every new graph a pass returns (and, while verifying, each
pass is checked to leave its input unchanged, by its ``fingerprint``; a pass that returns its
input is not verified again); ``print_after`` prints the IR after every pass (``True``) or the named ones;
``report()`` tabulates time and node counts per pass. A failing pass raises ``PassError``
naming it and the passes that ran before it.
"""
from __future__ import annotations

import importlib
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence, TextIO, Union

from irgraph import Graph, IRError, verify

PassFn = Callable[[Graph], Graph]
PipelineSpec = Union[str, Sequence[Union[str, PassFn]], None]

# modules whose import registers the built-in passes (loaded on first lookup, so that a pass
# module can import this one for ``register_pass``)
_BUILTIN_MODULES = ("irgraph.passes.simplify", "irgraph.passes.inference", "irgraph.passes.fold_bn",
                    "irgraph.passes.fusion", "irgraph.passes.layer_regions",
                    "irgraph.passes.conv_chains",
                    "irgraph.passes.scan_reuse",
                    "irgraph.passes.scan_accumulate",
                    "irgraph.passes.scan_invariants",
                    "irgraph.passes.debug_nans", "irgraph.passes.unroll")

# the default pipelines; 'fuse' is left to backends that lower ``fused`` (see docs)
_PRESETS: dict[str, list[str]] = {
    "inference": ["strip_dead_state", "fold_bn", "strip_training", "simplify"],
    "training": ["simplify"],
}


@dataclass(frozen=True)
class Pass:
    name: str
    fn: PassFn
    doc: str = ""

    def __call__(self, g: Graph) -> Graph:
        return self.fn(g)


_PASSES: dict[str, Pass] = {}
_loaded = False


class PassError(IRError):
    """A pass failed (raised, returned a non-graph, broke the IR or mutated its input)."""


def register_pass(name: str) -> Callable[[PassFn], PassFn]:
    """Decorator: register ``fn`` as the pass ``name``."""
    def deco(fn: PassFn) -> PassFn:
        if name in _PASSES and _PASSES[name].fn is not fn:
            raise ValueError(f"pass {name!r} registered twice")
        _PASSES[name] = Pass(name, fn, (fn.__doc__ or "").strip())
        return fn
    return deco


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for mod in _BUILTIN_MODULES:
            importlib.import_module(mod)


def get_pass(name: str) -> Pass:
    _load_builtins()
    try:
        return _PASSES[name]
    except KeyError:
        raise PassError(f"unknown pass {name!r}; registered passes: "
                        f"{', '.join(sorted(_PASSES))}") from None


def all_passes() -> dict[str, Pass]:
    _load_builtins()
    return dict(_PASSES)


def default_pipeline(kind: str) -> list[str]:
    """The default pass names for ``kind``: ``"inference"`` or ``"training"`` (with
    ``debug_nans`` at the end when the environment sets ``IRGRAPH_DEBUG_NANS=1``)."""
    if kind not in _PRESETS:
        raise ValueError(f"unknown pipeline kind {kind!r}; choose one of {sorted(_PRESETS)}")
    extra = ["debug_nans"] if os.environ.get("IRGRAPH_DEBUG_NANS", "") not in ("", "0") else []
    return list(_PRESETS[kind]) + extra


def parse_pipeline(spec: PipelineSpec, kind: str = "inference") -> list[Pass]:
    """Resolve a pipeline given as None (the default for ``kind``), a comma-separated string or a
    list of names and functions. The name ``default`` expands to the preset of ``kind``."""
    if spec is None:
        spec = ["default"]
    if isinstance(spec, str):
        spec = [s.strip() for s in spec.split(",") if s.strip()]
    out: list[Pass] = []
    for item in spec:
        if isinstance(item, Pass):
            out.append(item)
        elif isinstance(item, str):
            if item == "default":
                out.extend(get_pass(n) for n in default_pipeline(kind))
            else:
                out.append(get_pass(item))
        elif callable(item):
            name = getattr(item, "__name__", None) or type(item).__name__
            out.append(Pass(name, item, (getattr(item, "__doc__", "") or "").strip()))
        else:
            raise PassError(f"a pipeline entry must be a pass name or a function Graph -> Graph, "
                            f"got {item!r}")
    return out


def fingerprint(g: Graph) -> tuple:
    """Everything of ``g`` its text shows (name, arguments, nodes with their operands,
    results, types, attributes, subgraphs and locations, outputs, donations), as a tuple
    that compares equal only while ``g`` is unchanged: how the manager checks that a pass
    left its input alone, at a third of the cost of printing it. Values and other objects
    stand for themselves (``id``); attribute values are immutable (tuples, numbers,
    strings, read-only arrays) or graphs, taken apart in turn."""
    def attr(a):
        if isinstance(a, Graph):
            return fingerprint(a)
        return a if isinstance(a, (int, float, str, tuple, type(None))) else id(a)

    def values(vs):
        return tuple((id(v), v.name, v.type) for v in vs)

    return (g.name, values(g.inputs), values(g.params), tuple(map(id, g.outputs)),
            tuple(sorted(g.donations.items())),
            tuple((n.op, n.loc, tuple(map(id, n.inputs)), values(n.outputs),
                   tuple((k, attr(a)) for k, a in n.attrs.items())) for n in g.nodes))


@dataclass
class PassRecord:
    """What one pass did: time and node counts (``report()`` prints them)."""
    name: str
    seconds: float
    nodes_before: int
    nodes_after: int
    changed: bool = True        # False: the pass returned its input itself


class PassManager:
    """Runs a pipeline of passes over a graph.

    ``verify``: verify the input, then each new graph a pass returns, and check that every
    pass left its input unchanged (the one place a compile verifies: see ``run``).
    ``print_after``: ``True`` (every pass), or names of the passes after which to print the IR.
    ``stream``: where printing goes (default ``sys.stdout``).
    """

    def __init__(self, pipeline: PipelineSpec = None, *, kind: str = "inference",
                 verify: bool = True, print_after: bool | Iterable[str] | None = None,
                 stream: TextIO | None = None):
        self.passes = parse_pipeline(pipeline, kind)
        self.verify = verify
        if print_after is True or print_after == "all":
            self.print_after: set[str] | bool = True
        elif isinstance(print_after, str):
            self.print_after = {s.strip() for s in print_after.split(",") if s.strip()}
        else:
            self.print_after = set(print_after or ())
        if isinstance(self.print_after, set):
            unknown = self.print_after - {p.name for p in self.passes}
            if unknown:
                raise PassError(f"print_after names {sorted(unknown)}, which are not in the "
                                f"pipeline {self.names}")
        self.stream = stream
        self.records: list[PassRecord] = []

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.passes]

    def run(self, graph: Graph) -> Graph:
        """The pipeline applied to ``graph``. Each graph is verified once: the input here
        (``VerificationError`` if it is invalid), every new graph a pass returns after it."""
        self.records = []
        if self.verify:
            verify(graph)
        g, seen = graph, None
        for i, p in enumerate(self.passes):
            g, seen = self._run_one(p, i, g, seen)
        return g

    def _run_one(self, p: Pass, i: int, g: Graph, seen: tuple | None
                 ) -> tuple[Graph, tuple | None]:
        """(the pass's result, its ``fingerprint`` when already known: the input's, when the
        pass returned its input unchanged)."""
        before = (fingerprint(g) if seen is None else seen) if self.verify else ()
        t0 = time.perf_counter()
        try:
            out = p.fn(g)
        except Exception as e:
            raise PassError(f"{self._where(i)} raised {type(e).__name__}: {e}") from e
        seconds = time.perf_counter() - t0
        if not isinstance(out, Graph):
            raise PassError(f"{self._where(i)} returned {type(out).__name__}, not a Graph")
        after = None
        if self.verify:
            after = fingerprint(g)
            if after != before:
                raise PassError(f"{self._where(i)} mutated its input graph; a pass must build "
                                f"a new graph (use irgraph.GraphRewriter)")
            if out is not g:        # a pass returning its input leaves it as verified
                try:
                    verify(out)
                except IRError as e:
                    raise PassError(f"{self._where(i)} produced an invalid graph: {e}") from e
        self.records.append(PassRecord(p.name, seconds, len(g.nodes), len(out.nodes),
                                       out is not g))
        if self.print_after is True or (p.name in self.print_after):
            stream = self.stream or sys.stdout
            print(f"// ----- IR after pass {p.name} ({i + 1}/{len(self.passes)}) -----",
                  file=stream)
            print(out, file=stream)
        return out, (after if out is g else None)

    def _where(self, i: int) -> str:
        ran = ", ".join(self.names[:i]) or "none"
        return (f"pass {self.passes[i].name!r} ({i + 1} of {len(self.passes)} in "
                f"[{', '.join(self.names)}]; passes that ran before it: {ran})")

    @property
    def timings(self) -> dict[str, float]:
        """Seconds per pass name in the last run (summed when a pass runs twice)."""
        out: dict[str, float] = {}
        for r in self.records:
            out[r.name] = out.get(r.name, 0.0) + r.seconds
        return out

    def report(self) -> str:
        """A table of the last run: seconds and node counts per pass."""
        rows = [f"{'pass':<20} {'ms':>10} {'nodes before':>13} {'nodes after':>12}"]
        for r in self.records:
            rows.append(f"{r.name:<20} {1e3 * r.seconds:>10.3f} {r.nodes_before:>13} "
                        f"{r.nodes_after:>12}")
        total = sum(r.seconds for r in self.records)
        rows.append(f"{'total':<20} {1e3 * total:>10.3f}")
        return "\n".join(rows)
