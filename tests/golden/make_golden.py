"""Produce the golden models: fixed-seed inputs and the reference backend's outputs.

    python -m tests.golden.make_golden        # rewrites tests/golden/*.ir and *.npz

For each model NAME: ``NAME.ir`` is the graph's text (irgraph.parse reads it back, donations
included) and ``NAME.npz`` holds ``arg_<i>`` (the arguments: inputs, then parameters) and
``out_<j>`` (the reference backend's outputs). Every backend's golden test parses the graph,
runs it on the arguments and compares with the outputs. Models:

* mlp, mlp_train: Linear-ReLU-Linear, and its training step (cross-entropy, SGD; the
  training step is passes.train's value_and_grad + sgd_update graph);
* cnn, cnn_train: Conv2d-BatchNorm2d (training mode)-ReLU-MaxPool2d-Linear, and its step
  with Adam (alg. 8.7);
* rnn, rnn_train: a tanh RNN (eq. 10.8) over 5 steps with a Linear head on the last state,
  and its step with momentum SGD (alg. 8.2).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

import irgraph.backends as backends
import irgraph.frontend as fe
from irgraph.frontend import nn, optim
from irgraph.frontend.compiler import param_names
from irgraph.frontend.tracing import trace_with
from irgraph.frontend.train import compile_train
from irgraph import Graph

HERE = Path(__file__).parent


class _Last(nn.Module):
    """RNN then a Linear head on the final hidden state."""

    def __init__(self, n_in: int, hidden: int, n_out: int):
        super().__init__()
        self.rnn = fe.rnn.RNN(n_in, hidden)
        self.head = nn.Linear(hidden, n_out)

    def forward(self, x):
        _, h = self.rnn(x)
        return self.head(fe.F.reshape(h, (h.shape[1], h.shape[2])))


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))


def _cnn() -> nn.Module:
    from irgraph.frontend.layers import BatchNorm2d, Conv2d, MaxPool2d
    return nn.Sequential(Conv2d(1, 4, 3, padding=1), BatchNorm2d(4), nn.ReLU(), MaxPool2d(2),
                         nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def _rnn() -> nn.Module:
    return _Last(3, 8, 2)


# name -> (model factory, input shape, classes, optimizer factory)
MODELS: dict[str, tuple[Callable, tuple, int, Callable]] = {
    "mlp": (_mlp, (5, 6), 4, lambda: optim.SGD(lr=0.1)),
    "cnn": (_cnn, (2, 1, 8, 8), 3, lambda: optim.Adam(lr=0.01)),
    "rnn": (_rnn, (5, 2, 3), 2, lambda: optim.SGD(lr=0.05, momentum=0.9)),
}


def _batch(shape, classes: int, seed: int):
    r = np.random.default_rng(seed)
    x = r.standard_normal(shape).astype(np.float32)
    n = shape[1] if len(shape) == 3 else shape[0]
    return x, r.integers(0, classes, n).astype(np.int64)


def forward_case(name: str) -> tuple[Graph, list[np.ndarray]]:
    make, shape, classes, _ = MODELS[name]
    fe.manual_seed(7)
    model = make()
    graph, tracer, _ = trace_with(model, (fe.TensorSpec(shape),), name, param_names(model))
    x, _ = _batch(shape, classes, 11)
    return graph, [x] + [tracer.params[p.name].data.copy() for p in graph.params]


def train_case(name: str) -> tuple[Graph, list[np.ndarray]]:
    make, shape, classes, make_opt = MODELS[name]
    fe.manual_seed(7)
    model = make()
    opt = make_opt()
    y_spec = fe.TensorSpec((shape[1] if len(shape) == 3 else shape[0],), "int64")
    step = compile_train(model, nn.CrossEntropyLoss(), opt, fe.TensorSpec(shape), y_spec,
                         pipeline=[], name=f"{name}_loss")
    x, y = _batch(shape, classes, 11)
    lay, g = step.layout, step.graph
    hyper = opt.hyperparameters()
    hargs = [np.asarray(hyper[h], v.type.np_dtype)
             for h, v in zip(lay.hyperparameters, g.inputs[len(lay.batch):])]
    state = [owner[key].copy() for owner, key in step._targets()]
    return g, [x, y] + hargs + state


def cases() -> dict[str, tuple[Graph, list[np.ndarray]]]:
    out = {}
    for name in MODELS:
        out[name] = forward_case(name)
        out[f"{name}_train"] = train_case(name)
    return out


def main() -> None:
    for name, (graph, args) in cases().items():
        outs = backends.compile(graph, "reference")(*[a.copy() for a in args])
        (HERE / f"{name}.ir").write_text(str(graph) + "\n")
        arrays = {f"arg_{i}": a for i, a in enumerate(args)}
        arrays.update({f"out_{j}": o for j, o in enumerate(outs)})
        np.savez(HERE / f"{name}.npz", **arrays)
        print(f"{name}: {len(args)} arguments, {len(outs)} outputs, {len(graph.nodes)} nodes")


if __name__ == "__main__":
    main()
