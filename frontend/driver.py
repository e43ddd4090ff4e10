"""The compile driver: the one way from a traced graph to an executable.

Every entry point (``compile``, ``jit``, ``grad``/``value_and_grad``, ``compile_train``, the
host-side second-order steps, data parallelism, the ONNX importer) traces its function and
hands the graph to ``compile_graph``, which runs the same chain::

    graph --differentiate--> graph to compile --PassManager--> backend.build
          (BPTT preparation,                    (the pipeline, then the passes
           then the gradient, Hessian            the backend declares: its PASSES)
           or training step)

* ``differentiate``: what to differentiate, a function ``Graph -> Graph`` applied to the
  traced graph: ``Gradient`` (value and gradient), ``Hessian``, or a builder of a whole
  training step (frontend/train.py). Each prepares recurrences for BPTT first
  (``passes.unroll.prepare_bptt``: short scans unrolled, long ones keep their states).
* One ``PassManager`` runs the pipeline (``pipeline``/``kind``, as ``PassManager`` takes
  them) followed by the backend's declared passes, so those are verified, timed
  (``Compiled.passes.timings``, ``report()``) and printed (``print_after``) like any other.
* The PassManager verifies the graph it starts from and every new graph a pass returns; the
  backend builds the result as it is (``backends.compile(..., prepared=True)``: no second
  verification, no second run of its passes).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, TextIO

from irgraph import Graph
from irgraph.passes.manager import PassManager, get_pass, parse_pipeline

import irgraph.backends as backends

Differentiate = Callable[[Graph], Graph]


@dataclass(frozen=True)
class Gradient:
    """Value and gradient of output ``of`` by the arguments named ``wrt`` (outputs: the
    graph's, then one gradient per name), after BPTT preparation (``bptt``: "auto",
    "rolled" or "unrolled", passes/unroll.py). ``keep_donations``: the source graph's
    donations (state updates such as batch norm's running statistics) stay donations."""
    wrt: tuple[str, ...]
    of: int = 0
    bptt: str = "auto"
    keep_donations: bool = True

    def __call__(self, graph: Graph) -> Graph:
        from irgraph.passes.unroll import bptt
        vg = bptt(graph, list(self.wrt), self.of, mode=self.bptt)
        if self.keep_donations:
            vg.donations = dict(graph.donations)
        return vg


@dataclass(frozen=True)
class Hessian:
    """The (n, n) Hessian of output ``of`` over the flattened ``wrt`` arguments (its one
    output; passes/autodiff/higher.py), after BPTT preparation."""
    wrt: tuple[str, ...]
    of: int = 0
    max_size: int | None = None

    def __call__(self, graph: Graph) -> Graph:
        from irgraph.passes.autodiff.higher import MAX_SIZE, hessian
        from irgraph.passes.unroll import prepare_bptt
        size = MAX_SIZE if self.max_size is None else self.max_size
        return hessian(prepare_bptt(graph), list(self.wrt), self.of, size)


@dataclass
class Compiled:
    """What ``compile_graph`` made: ``graph``, the graph the backend built (after the
    pipeline and the backend's passes; its arguments, outputs and donations are those of
    ``source``), ``executable``, ``passes`` (the PassManager that ran: ``timings``,
    ``records``, ``report()``), ``source``, the graph the pipeline started from (the
    differentiated one when something was differentiated) and ``cached``: the pipeline's
    result came from the disk cache (frontend/pipeline_cache.py; ``passes.records`` is
    then empty)."""
    graph: Graph
    executable: Any
    passes: PassManager
    source: Graph
    cached: bool = False


def pipeline_of(backend: str, pipeline=None, kind: str = "inference") -> list:
    """The passes a compile with ``backend`` runs: ``pipeline`` (None: ``kind``'s default),
    then the backend's declared ``PASSES``."""
    declared = backends.get_backend(backend).PASSES
    return parse_pipeline(pipeline, kind) + [get_pass(name) for name in declared]


def compile_graph(graph: Graph, *, backend: str = "reference",
                  differentiate: Differentiate | None = None, pipeline=None,
                  kind: str = "inference", print_after: bool | Iterable[str] | None = None,
                  stream: TextIO | None = None, keep_interface: bool = False,
                  options: dict | None = None) -> Compiled:
    """Differentiate ``graph`` (when asked), run the pipeline and the backend's passes in
    one PassManager, build with ``backend`` (``options``: the backend's). ``print_after``
    and ``stream`` as ``PassManager`` takes them (the backend's pass names included).
    ``keep_interface``: the passes must keep the graph's arguments and donations (a
    training step updates its parameters in place)."""
    pm = PassManager(pipeline_of(backend, pipeline, kind), kind=kind,      # bad names fail
                     print_after=print_after, stream=stream)               # before any work
    source = differentiate(graph) if differentiate is not None else graph
    out, cached = _run_passes(pm, source, backend, kind, options or {})
    if keep_interface:
        check_same_interface(source, out)
    exe = backends.compile(out, backend, prepared=True, **(options or {}))
    return Compiled(out, exe, pm, source, cached)


def _run_passes(pm: PassManager, source: Graph, backend: str, kind: str,
                options: dict) -> tuple[Graph, bool]:
    """(``pm.run(source)``, False), or (the result stored by an earlier compile, True) for a
    backend that declares ``CACHES_PIPELINE`` (frontend/pipeline_cache.py; ``pm.records``
    stays empty)."""
    from . import pipeline_cache
    if not (getattr(backends.get_backend(backend), "CACHES_PIPELINE", False)
            and options.get("cache", True) and not pm.print_after
            and pm.verify and pipeline_cache.pays(source)
            and pipeline_cache.cacheable(pm.passes)):
        return pm.run(source), False
    pm.records = []
    key = pipeline_cache.key(source, pm.passes, backend, kind)
    out = pipeline_cache.load(key, source.name)
    if out is not None:     # (the stored result's source, of the same structure, verified)
        return out, True
    out = pm.run(source)
    pipeline_cache.store(key, out)
    return out, False


def check_same_interface(before: Graph, after: Graph) -> None:
    """The passes must keep a step's arguments and donations (in-place updates)."""
    sig = [(v.name, str(v.type)) for v in before.arguments]
    if [(v.name, str(v.type)) for v in after.arguments] != sig or \
            after.donations != before.donations:
        raise RuntimeError("the pass pipeline changed the training step's arguments or "
                           "donations; the step cannot update parameters in place")
