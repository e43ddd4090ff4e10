"""Save and load a graph with its weights in a checkpoint folder (``checkpoint.py``): the graph
text and an ``.npz`` of the weights, content-named, under a checksummed JSON manifest written
last. Saving is atomic; loading reads nothing outside the folder and never unpickles."""
from __future__ import annotations

import os

import numpy as np

from .checkpoint import FORMAT, CheckpointError, CheckpointReader, write
from .ir import Graph
from .parser import parse

__all__ = ["save", "load", "CheckpointError", "FORMAT"]


def save(path: str | os.PathLike, graph: Graph,
         weights: dict[str, np.ndarray] | None = None) -> None:
    """Write folder ``path``: ``manifest.json``, ``graph-<sha256>.ir`` and
    ``weights-<sha256>.npz``, replacing the checkpoint there atomically (a reader, or a
    process killed at any instant, sees the old checkpoint or the new one, whole)."""
    weights = dict(weights or {})
    names = {p.name for p in graph.params}
    extra = set(weights) - names
    if extra:
        raise ValueError(f"weights {sorted(extra)} are not parameters of graph {graph.name!r}")
    weights = {k: np.asarray(v) for k, v in weights.items()}
    for p in graph.params:
        w = weights.get(p.name)
        if w is not None and (w.shape != p.type.shape or w.dtype != p.type.np_dtype):
            raise ValueError(f"save: weight {p.name!r} is {w.dtype}{list(w.shape)}, "
                             f"the graph declares {p.type}")
    ordered = {p.name: weights[p.name] for p in graph.params if p.name in weights}
    write(path, "graph", ordered, graph_text=str(graph) + "\n")


def load(path: str | os.PathLike) -> tuple[Graph, dict[str, np.ndarray]]:
    """Read what ``save`` wrote: the verified graph and its weights. Any fault of the folder
    (see ``irgraph.checkpoint``) is a ``CheckpointError`` naming the file."""
    with CheckpointReader(path, "graph") as r:
        r.require("graph")
        name = r.files["graph"]["name"]
        text = r.read_text("graph")
        try:
            graph = parse(text)
        except Exception as e:      # ParseError, VerificationError, ...: all mean a bad file
            raise r.error(name, f"is not a valid graph: {e}") from e
        expected = {p.name: (p.type.dtype, p.type.shape) for p in graph.params}
        r.check_arrays(expected, "weight", f"graph {graph.name!r} in {name}",
                       require_all=False)
        return graph, r.read_arrays()
