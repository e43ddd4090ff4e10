"""The frontend's random state, used by layer initializers: ``frontend.manual_seed(s)``."""
from __future__ import annotations

import numpy as np

_STATE = {"rng": np.random.default_rng(0)}


def manual_seed(seed: int) -> None:
    _STATE["rng"] = np.random.default_rng(seed)


def rng() -> np.random.Generator:
    return _STATE["rng"]
