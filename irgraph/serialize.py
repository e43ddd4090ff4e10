"""Save and load a graph with its weights: graph text + JSON manifest + ``.npz``. Never pickle."""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from .ir import Graph
from .parser import parse

FORMAT = "irgraph-1"


def save(path: str | os.PathLike, graph: Graph,
         weights: dict[str, np.ndarray] | None = None) -> None:
    """Write ``path`` (a directory): ``graph.ir``, ``manifest.json`` and ``weights.npz``."""
    os.makedirs(path, exist_ok=True)
    weights = dict(weights or {})
    names = {p.name for p in graph.params}
    extra = set(weights) - names
    if extra:
        raise ValueError(f"weights {sorted(extra)} are not parameters of graph {graph.name!r}")
    weights = {k: np.asarray(v) for k, v in weights.items()}
    _check_weights(graph, weights, "save")
    with open(os.path.join(path, "graph.ir"), "w") as f:
        f.write(str(graph) + "\n")
    with open(os.path.join(path, "manifest.json"), "w") as f:
        json.dump({"format": FORMAT, "graph": "graph.ir", "weights": sorted(weights)}, f, indent=1)
    np.savez(os.path.join(path, "weights.npz"), allow_pickle=False, **weights)


def load(path: str | os.PathLike) -> tuple[Graph, dict[str, np.ndarray]]:
    """Read what ``save`` wrote. Arrays are loaded with ``allow_pickle=False``."""
    with open(os.path.join(path, "manifest.json")) as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown format {manifest.get('format')!r}, expected {FORMAT}")
    with open(os.path.join(path, manifest["graph"])) as f:
        graph = parse(f.read())
    try:
        with np.load(os.path.join(path, "weights.npz"), allow_pickle=False) as z:
            weights = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError) as e:
        raise ValueError(f"{path}: cannot read weights.npz: {e}") from None
    extra = set(weights) - {p.name for p in graph.params}
    if extra:
        raise ValueError(f"{path}: weights {sorted(extra)} are not parameters of graph "
                         f"{graph.name!r}")
    _check_weights(graph, weights, str(path))
    return graph, weights


def _check_weights(graph: Graph, weights: dict[str, np.ndarray], where: str) -> None:
    """Each weight must have its parameter's exact shape and dtype (no object arrays)."""
    for p in graph.params:
        if p.name not in weights:
            continue
        w = weights[p.name]
        if w.shape != p.type.shape or w.dtype != p.type.np_dtype:
            raise ValueError(f"{where}: weight {p.name!r} is {w.dtype}{list(w.shape)}, "
                             f"the graph declares {p.type}")
