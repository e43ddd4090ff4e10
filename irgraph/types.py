"""Tensor types of the IR: a static shape and a dtype.

Printed as ``f32[8,16]`` (a scalar is ``f32[]``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# dtype name -> short name used in the text format
DTYPES: dict[str, str] = {
    "float32": "f32",
    "float64": "f64",
    "int32": "i32",
    "int64": "i64",
    "bool": "bool",
}
SHORT_TO_DTYPE: dict[str, str] = {v: k for k, v in DTYPES.items()}
FLOAT_DTYPES = ("float32", "float64")
INT_DTYPES = ("int32", "int64")


def canonical_dtype(dtype) -> str:
    """Normalize a dtype given as a name, a short name or a numpy dtype."""
    if isinstance(dtype, str) and dtype in SHORT_TO_DTYPE:
        return SHORT_TO_DTYPE[dtype]
    name = np.dtype(dtype).name
    if name not in DTYPES:
        raise TypeError(f"unsupported dtype {dtype!r}; irgraph supports {sorted(DTYPES)}")
    return name


@dataclass(frozen=True)
class TensorType:
    shape: tuple[int, ...]
    dtype: str = "float32"

    def __post_init__(self):
        shape = tuple(int(d) for d in self.shape)
        if any(d < 0 for d in shape):
            raise ValueError(f"negative dimension in shape {shape}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def np_dtype(self) -> np.dtype:
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
