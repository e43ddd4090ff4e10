"""Tensor types of the IR: a static shape and a dtype.

Printed as ``f32[8,16]`` (a scalar is ``f32[]``).
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from functools import cached_property

import ml_dtypes  # noqa: F401  (registers numpy's "bfloat16" dtype)
import numpy as np

# dtype name -> short name used in the text format
DTYPES: dict[str, str] = {
    "float32": "f32",
    "float64": "f64",
    "float16": "f16",
    "bfloat16": "bf16",
    "int32": "i32",
    "int64": "i64",
    "bool": "bool",
}
SHORT_TO_DTYPE: dict[str, str] = {v: k for k, v in DTYPES.items()}
ITEMSIZE: dict[str, int] = {k: np.dtype(k).itemsize for k in DTYPES}
FLOAT_DTYPES = ("float32", "float64", "float16", "bfloat16")
# 16-bit floats: stored in 16 bits, computed in float32 (each op's result rounded to nearest
# even once, on store, as PyTorch does); reductions, matmul and convolution accumulate in
# float32. docs/low_precision.md
LOW_DTYPES = ("float16", "bfloat16")


def compute_dtype(dtype: str) -> str:
    """The dtype an op on ``dtype`` computes in: float32 for the 16-bit floats."""
    return "float32" if dtype in LOW_DTYPES else dtype
INT_DTYPES = ("int32", "int64")

# Bounds on every TensorType (so on every path that builds one: the parser, the builder's type
# rules, passes, tracing, load). Sizes stay far from int64 overflow in index arithmetic.
MAX_RANK = 64                 # numpy's limit
MAX_DIM = 2 ** 48             # one dimension
MAX_BYTES = 2 ** 48           # 256 TiB: the product of the dimensions (0 counted as 1, as numpy
                              # does for the strides) times the item size


def canonical_dtype(dtype) -> str:
    """Normalize a dtype given as a name, a short name or a numpy dtype."""
    if isinstance(dtype, str) and dtype in SHORT_TO_DTYPE:
        return SHORT_TO_DTYPE[dtype]
    if isinstance(dtype, str) and dtype in DTYPES:
        return dtype
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = None
    if name not in DTYPES:
        raise TypeError(f"unsupported dtype {dtype!r}; irgraph supports {sorted(DTYPES)}")
    return name


def check_shape(shape, dtype: str = "float32") -> tuple[int, ...]:
    """``shape`` as a tuple of Python ints, or ValueError (TypeError for non-integers) naming
    the bound it breaks: rank <= MAX_RANK, 0 <= each dimension <= MAX_DIM, and the product of
    the dimensions (0 counted as 1) times the item size <= MAX_BYTES."""
    try:
        dims = tuple(shape)
    except TypeError:
        raise TypeError(f"a shape must be a sequence of ints, got {shape!r}") from None
    if len(dims) > MAX_RANK:
        raise ValueError(f"shape has rank {len(dims)}, over the limit of {MAX_RANK}")
    out = []
    for i, d in enumerate(dims):
        try:
            d = operator.index(d)
        except TypeError:
            raise TypeError(f"dimension {i} of shape {dims} is {d!r}, not an int") from None
        if d < 0:
            raise ValueError(f"negative dimension {d} (axis {i}) in shape {tuple(dims)}")
        if d > MAX_DIM:
            raise ValueError(f"dimension {d} (axis {i}) of shape {tuple(dims)} is over the "
                             f"limit of 2**48 = {MAX_DIM}")
        out.append(d)
    itemsize = ITEMSIZE[canonical_dtype(dtype)]
    extent = math.prod(max(d, 1) for d in out) * itemsize
    if extent > MAX_BYTES:
        zeros = ", 0 counted as 1" if 0 in out else ""
        raise ValueError(f"shape {tuple(out)} of {dtype} spans {extent} bytes (the dimensions "
                         f"times {itemsize}-byte items{zeros}), over the limit of 2**48 = "
                         f"{MAX_BYTES} bytes")
    return tuple(out)


@dataclass(frozen=True)
class TensorType:
    shape: tuple[int, ...]
    dtype: str = "float32"

    def __post_init__(self):
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        object.__setattr__(self, "shape", check_shape(self.shape, self.dtype))

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @cached_property
    def np_dtype(self) -> np.dtype:
        # cached in the instance (not a field: equality and hashing ignore it); every call
        # of an executable checks its arguments against it
        return np.dtype(self.dtype)

    @property
    def nbytes(self) -> int:
        return self.size * self.np_dtype.itemsize

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    def with_shape(self, shape) -> "TensorType":
        return TensorType(tuple(shape), self.dtype)

    def with_dtype(self, dtype) -> "TensorType":
        return TensorType(self.shape, dtype)

    def __str__(self) -> str:
        return f"{DTYPES[self.dtype]}[{','.join(map(str, self.shape))}]"

    __repr__ = __str__

    @staticmethod
    def of(array) -> "TensorType":
        array = np.asarray(array)
        return TensorType(array.shape, array.dtype)
