"""Sample inputs of the optimizer-update ops (irgraph/ops/optim.py).

Hyperparameters are rank-0 inputs of the parameter's dtype; state tensors that must stay
non-negative (squared-gradient accumulators) are drawn positive.
"""
from __future__ import annotations

import numpy as np

from . import Case, positive, rand

_P = (3, 5)


def _s(v: float, dtype=np.float32) -> np.ndarray:
    return np.asarray(v, dtype)


def _ptg(seed: int = 0, dtype=np.float32) -> list[np.ndarray]:
    return [rand(*_P, seed=seed, dtype=dtype), rand(*_P, seed=seed + 1, dtype=dtype)]


def _case(inputs: list[np.ndarray], attrs: dict | None = None, note: str = "") -> Case:
    """Update ops are never differentiated: finite differences perturb no input."""
    return Case(inputs, attrs or {}, nondiff=tuple(range(len(inputs))), note=note)


SAMPLES = {
    "sgd_update": [
        _case(_ptg() + [_s(0.1)], note="alg. 8.1"),
        _case(_ptg(2, np.float64) + [_s(0.5, np.float64)]),
    ],
    "momentum_update": [
        _case(_ptg() + [rand(*_P, seed=5), _s(0.1), _s(0.9)], {"convention": "text"},
               note="alg. 8.2"),
        _case(_ptg() + [rand(*_P, seed=5), _s(0.1), _s(0.9)], {"convention": "torch"}),
        _case(_ptg() + [rand(*_P, seed=5), _s(0.1), _s(0.9)],
              {"convention": "torch", "nesterov": True}),
    ],
    "adagrad_update": [
        _case(_ptg() + [positive(*_P, seed=5), _s(0.1), _s(1e-7)],
              note="alg. 8.4"),
    ],
    "rmsprop_update": [
        _case(_ptg() + [positive(*_P, seed=5), _s(0.01), _s(0.99), _s(1e-6)],
              {"convention": c}, note="alg. 8.5")
        for c in ("text", "torch")
    ],
    "rmsprop_momentum_update": [
        _case(_ptg() + [positive(*_P, seed=5), rand(*_P, seed=6), _s(0.01), _s(0.9), _s(1e-6),
                        _s(0.5)], {"convention": c}, note="alg. 8.6")
        for c in ("text", "torch")
    ],
    "adam_update": [
        _case(_ptg() + [rand(*_P, seed=5), positive(*_P, seed=6), _s(1e-3), _s(0.9),
                        _s(0.999), _s(1e-8), _s(3.0)], {"convention": c},
              note="alg. 8.7 at t = 3")
        for c in ("text", "torch")
    ],
    "polyak_update": [
        _case(_ptg() + [_s(0.99)], note="eq. 8.39"),
    ],
    "clip_by_value": [
        _case([rand(*_P, seed=1, low=-3, high=3), _s(0.5)]),
    ],
    "clip_by_norm": [
        _case([rand(*_P, seed=1), _s(10.0), _s(1.0)], note="clipped"),
        _case([rand(*_P, seed=1), _s(0.5), _s(1.0)], {"eps": 0.0},
              note="below the threshold: unchanged"),
    ],
    "global_norm": [
        _case([rand(*_P, seed=1), rand(4, seed=2), rand(2, 2, 2, seed=3)]),
        _case([rand(7, seed=1, dtype=np.float64)]),
    ],
}
