"""torch's top-level conveniences a ported script reaches for: the gradient-mode context
managers (no-ops here: gradients are what ``ig.grad`` and compiled steps compute, nothing is
recorded on tensors), the dtype names (``ig.float32`` is the string dtype irgraph uses
everywhere; ``x.to(ig.float16)`` works), ``is_tensor``, ``numel`` and ``from_numpy``."""
from __future__ import annotations

import builtins
import contextlib

import numpy as np

from .eager import tensor
from .tracing import Tensor

__all__ = ["no_grad", "enable_grad", "set_grad_enabled", "inference_mode", "is_tensor",
           "numel", "tensor", "float16", "bfloat16", "float32", "float64", "int32", "int64",
           "bool", "half", "float", "double", "long", "int"]

float16, bfloat16, float32, float64 = "float16", "bfloat16", "float32", "float64"
int32, int64, bool = "int32", "int64", "bool"
half, float, double, long, int = float16, float32, float64, int64, int32


class _GradMode(contextlib.ContextDecorator):
    """A context manager (and decorator) that changes nothing: no tensor records a graph
    for a later ``backward``, so there is nothing to switch off."""

    def __init__(self, mode: builtins.bool = False):
        self.mode = mode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def no_grad():
    return _GradMode(False)


def enable_grad():
    return _GradMode(True)


def inference_mode(mode: builtins.bool = True):
    return _GradMode(not mode)


def set_grad_enabled(mode: builtins.bool):
    return _GradMode(mode)


def is_tensor(obj) -> builtins.bool:
    return isinstance(obj, Tensor)


def numel(input) -> builtins.int:
    return builtins.int(np.prod(getattr(input, "shape", np.shape(input))))
