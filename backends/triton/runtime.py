"""Device buffers and launch helpers shared by every kernel wrapper.

Device buffers are torch tensors: CUDA tensors on a GPU, CPU tensors when Triton runs in its
interpreter (``TRITON_INTERPRET=1``). Shapes are static, so each wrapper's metadata (shapes and
strides as a small int64 tensor) is built once when the graph is compiled, never per call.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass

import ml_dtypes
import numpy as np
import torch

from ..base import fork_safe_locks

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int32": torch.int32,
    "int64": torch.int64,
    "bool": torch.bool,
}
NAME_OF_TORCH_DTYPE = {v: k for k, v in TORCH_DTYPES.items()}


def interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# Triton's interpreter swaps module globals (``triton.language``'s builtins) while a kernel
# runs, so two Python threads interpreting kernels at once break each other: interpreted
# runs take turns under the lock INTERPRETER_LOCK (on a GPU, launches from several threads
# need none).
fork_safe_locks(sys.modules[__name__], "INTERPRETER_LOCK")


def default_device() -> torch.device:
    """The device kernels launch on: CPU under the interpreter, else the current CUDA device."""
    if interpreting():
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("the triton backend needs a CUDA GPU, or TRITON_INTERPRET=1 to run "
                           "its kernels on the CPU in Triton's interpreter")
    return torch.device("cuda", torch.cuda.current_device())


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n - 1).bit_length())


def numel(shape) -> int:
    return math.prod(shape)


def contiguous_strides(shape) -> tuple[int, ...]:
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= d
    return tuple(reversed(out))


@dataclass(frozen=True)
class View:
    """A strided window on a contiguous buffer: ``offset + sum(i_k * strides[k])``.

    Unlike torch views, strides may be negative (a slice with a negative step) or zero
    (broadcasting), so every layout change is one strided-copy kernel.
    """
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    offset: int = 0

    @staticmethod
    def of(shape) -> "View":
        shape = tuple(shape)
        return View(shape, contiguous_strides(shape), 0)

    @property
    def is_contiguous(self) -> bool:
        return self.offset == 0 and all(
            s == c or d == 1 for d, s, c in zip(self.shape, self.strides,
                                                contiguous_strides(self.shape)))

    def broadcast_to(self, shape) -> "View":
        """numpy broadcasting: leading axes added, size-1 axes get stride 0."""
        shape = tuple(shape)
        pad = len(shape) - len(self.shape)
        dims = (1,) * pad + self.shape
        strides = (0,) * pad + self.strides
        new = tuple(0 if d == 1 and n != 1 else s for d, n, s in zip(dims, shape, strides))
        return View(shape, new, self.offset)

    def permute(self, perm) -> "View":
        return View(tuple(self.shape[p] for p in perm), tuple(self.strides[p] for p in perm),
                    self.offset)


def meta_tensor(rows: list[tuple[int, ...]], device) -> torch.Tensor:
    """Pack shapes/strides (equal-length rows) into one int64 device tensor, built once."""
    flat = [int(v) for row in rows for v in row] or [0]
    return torch.tensor(flat, dtype=torch.int64, device=device)


def to_device(a, dtype: str, device) -> torch.Tensor:
    """A numpy array (or scalar) copied to ``device`` as a contiguous tensor of ``dtype``
    (bfloat16, which torch cannot take from numpy, travels as its 16-bit words)."""
    arr = np.array(a, dtype=np.dtype(dtype), order="C", copy=True)
    if dtype == "bfloat16":
        return torch.from_numpy(arr.view(np.uint16).view(np.int16)).view(torch.bfloat16).to(
            device)
    return torch.from_numpy(arr).to(device)


def to_host(t: torch.Tensor) -> np.ndarray:
    """A device tensor as a numpy array of the same dtype (bfloat16: ``ml_dtypes``)."""
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def empty(shape, dtype: str, device) -> torch.Tensor:
    return torch.empty(tuple(shape), dtype=TORCH_DTYPES[dtype], device=device)
