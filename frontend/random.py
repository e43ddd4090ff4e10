"""The frontend's random state, used by layer initializers: ``frontend.manual_seed(s)``."""
from __future__ import annotations

import numpy as np

_STATE = {"rng": np.random.default_rng(0)}


def manual_seed(seed: int) -> None:
    _STATE["rng"] = np.random.default_rng(seed)


def rng() -> np.random.Generator:
    return _STATE["rng"]


def get_state() -> dict:
    """The random state as JSON-able data (``set_state`` restores it)."""
    return _STATE["rng"].bit_generator.state


def set_state(state) -> None:
    """Restore what ``get_state`` returned; ValueError naming the fault otherwise."""
    if not isinstance(state, dict) or state.get("bit_generator") != "PCG64":
        raise ValueError(f"not a PCG64 random state: {str(state)[:80]}")
    bits = np.random.PCG64()
    try:
        bits.state = state
    except (TypeError, ValueError, KeyError, OverflowError) as e:
        raise ValueError(f"not a PCG64 random state: {e}") from None
    _STATE["rng"] = np.random.Generator(bits)
