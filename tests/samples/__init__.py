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


def low_precision_samples(dtype: str) -> dict[str, list[Case]]:
    """The float32 samples of every float-typed op again in ``dtype`` (float16 or bfloat16):
    float32 arrays rounded to ``dtype``, float32 dtype attributes renamed. A case the op's type
    rule rejects in ``dtype`` (ops defined for float32/float64 only) is left out."""
    from irgraph import IRError, get_op
    from irgraph.types import TensorType

    def low(v):
        if isinstance(v, np.ndarray) and v.dtype == np.float32:
            return v.astype(dtype)
        if isinstance(v, str) and v in ("float32", "f32"):
            return dtype
        if isinstance(v, tuple):
            return tuple(low(x) for x in v)
        return v

    out: dict[str, list[Case]] = {}
    for op, cases in all_samples().items():
        opdef = get_op(op)
        if opdef.has_subgraph:
            continue
        for c in cases:
            ins = [low(a) for a in c.inputs]
            attrs = {k: low(v) for k, v in c.attrs.items()}
            if all(a is b for a, b in zip(ins, c.inputs)) and all(
                    attrs[k] is c.attrs[k] for k in attrs):
                continue                    # nothing float32 in it
            try:
                opdef.infer([TensorType.of(a) for a in ins], opdef.check_attrs(attrs))
            except (IRError, ValueError, TypeError):
                continue
            out.setdefault(op, []).append(Case(ins, attrs, c.nondiff, c.note))
    return out
