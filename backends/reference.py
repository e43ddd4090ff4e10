"""The reference backend: the numpy interpreter. Slow and obviously right; the golden oracle."""
from __future__ import annotations

from irgraph import Graph

from .base import Executable, run_reference


class ReferenceExecutable(Executable):
    backend = "reference"

    def run(self, args):
        return run_reference(self.graph, args)


def compile(graph: Graph, **options) -> ReferenceExecutable:
    if options:
        raise TypeError(f"the reference backend takes no options, got {sorted(options)}")
    return ReferenceExecutable(graph)
