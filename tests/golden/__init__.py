"""Golden models (made by make_golden.py with the reference backend): every backend's golden
test loads them with ``load(name)`` and must reproduce the outputs within its tolerances."""
from __future__ import annotations

from pathlib import Path

import numpy as np

import irgraph
from irgraph import Graph

HERE = Path(__file__).parent
NAMES = ("mlp", "mlp_train", "cnn", "cnn_train", "rnn", "rnn_train")


def load(name: str) -> tuple[Graph, list[np.ndarray], list[np.ndarray]]:
    """(graph, arguments, expected outputs) of golden model ``name``."""
    graph = irgraph.parse((HERE / f"{name}.ir").read_text())
    with np.load(HERE / f"{name}.npz") as z:
        args = [z[f"arg_{i}"] for i in range(len(graph.arguments))]
        outs = [z[f"out_{j}"] for j in range(len(graph.outputs))]
    return graph, args, outs
