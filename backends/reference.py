"""The reference backend: the numpy interpreter. Slow and obviously right; the golden oracle."""
from __future__ import annotations

from irgraph import Graph

from .base import Executable, run_backend_passes, run_reference

PASSES: tuple[str, ...] = ()        # the interpreter runs any verified graph as it is


class ReferenceExecutable(Executable):
    backend = "reference"

    def run(self, args):
        return run_reference(self.graph, args)


def compile(graph: Graph, **options) -> ReferenceExecutable:
    """``graph`` verified, then ``build``."""
    return build(run_backend_passes(graph, PASSES), **options)


def build(graph: Graph, **options) -> ReferenceExecutable:
    """The executable of a verified graph (``compile``, or the compile driver)."""
    if options:
        raise TypeError(f"the reference backend takes no options, got {sorted(options)}")
    return ReferenceExecutable(graph)
