"""Sample inputs for every registered op, one module per op family.

Each module defines ``SAMPLES: dict[str, list[Case]]``. Registry-wide tests (type rules,
print/parse, gradients by finite differences, every backend against the reference) walk
``all_samples()``; a registered op without samples fails them.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Case:
    inputs: list[np.ndarray]
    attrs: dict[str, Any] = field(default_factory=dict)
    # inputs (by position) that finite differences must not perturb (indices, masks, ...)
    nondiff: tuple[int, ...] = ()
    # note explaining a case (e.g. which text equation it checks)
    note: str = ""


def all_samples() -> dict[str, list[Case]]:
    out: dict[str, list[Case]] = {}
    for mod in pkgutil.iter_modules(__path__):
        m = importlib.import_module(f"{__name__}.{mod.name}")
        for op, cases in getattr(m, "SAMPLES", {}).items():
            if op in out:
                raise ValueError(f"samples for {op!r} defined twice (in {mod.name})")
            out[op] = cases
    return out


def rand(*shape, seed: int = 0, dtype=np.float32, low=-1.0, high=1.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(low, high, shape).astype(dtype)


def positive(*shape, seed: int = 0, dtype=np.float32) -> np.ndarray:
    return rand(*shape, seed=seed, dtype=dtype, low=0.5, high=2.0)
