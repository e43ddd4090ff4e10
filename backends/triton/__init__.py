"""The Triton backend: ``compile(graph, **options) -> TritonExecutable``.

Each op is lowered through the kernel table (table.py) to Triton kernels with host wrappers
(kernels/); buffers are torch tensors on the GPU, or on the CPU when ``TRITON_INTERPRET=1``
runs the same kernels in Triton's interpreter. Importing defines kernels only: no device
query, compilation or launch happens before ``compile``.
"""
from __future__ import annotations

from . import (lower_conv, lower_core, lower_debug, lower_fused,  # noqa: F401  (lowerings)
               lower_gather, lower_norm, lower_optim, lower_pool, lower_random,
               lower_recurrence)
from .executable import PASSES, Plan, TritonExecutable, build, compile
from .table import KERNELS, UnsupportedOpError, lowering

__all__ = ["compile", "build", "PASSES", "TritonExecutable", "Plan", "KERNELS",
           "UnsupportedOpError", "lowering"]
