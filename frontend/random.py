"""The frontend's random state, used by layer initializers: ``frontend.manual_seed(s)``."""
from __future__ import annotations

import numpy as np

from .module import Parameter

_STATE = {"rng": np.random.default_rng(0)}


def manual_seed(seed: int) -> None:
    """Seed the initializers' generator and the default Philox generator of traced random
    numbers (``F.rand``, ``F.dropout``: key ``seed``, counter 0)."""
    _STATE["rng"] = np.random.default_rng(seed)
    default_generator().manual_seed(seed)


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


class Generator:
    """The state of traced random numbers (docs/random.md): a Philox key and a counter, each a
    rank-0 int64 ``Parameter`` (``key``, ``counter``). A traced function that draws from it
    reads both as graph parameters (``rng.key``, ``rng.counter``) and returns ``counter + 1``
    as a state update, so each call of a compiled function or training step draws fresh
    numbers and the counter is saved with the training state."""

    def __init__(self, seed: int = 0):
        self.key = Parameter(np.zeros((), np.int64), requires_grad=False)
        self.counter = Parameter(np.zeros((), np.int64), requires_grad=False)
        self.manual_seed(seed)

    def manual_seed(self, seed: int) -> "Generator":
        """Key ``seed`` (its 64 bits, two's complement), counter 0; in place, so compiled
        functions that read this generator see it."""
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"a seed must be an int, got {type(seed).__name__}")
        if not -(1 << 63) <= int(seed) < (1 << 64):
            raise ValueError(f"seed {seed} does not fit in 64 bits")
        self.key.data[()] = np.uint64(int(seed) % (1 << 64)).astype(np.int64)
        self.counter.data[()] = 0
        return self

    def get_state(self) -> tuple[int, int]:
        return int(self.key.data), int(self.counter.data)

    def set_state(self, state) -> None:
        key, counter = (int(v) for v in state)
        self.key.data[()] = key
        self.counter.data[()] = counter


_DEFAULT: list[Generator] = []


def default_generator() -> Generator:
    if not _DEFAULT:
        _DEFAULT.append(Generator(0))
    return _DEFAULT[0]
