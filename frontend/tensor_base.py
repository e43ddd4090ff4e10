"""The ``Tensor`` class: an IR value and the tracer that owns it (a trace's ``Tracer`` or the
eager tracer), how it prints, and the user's source location that every op records.

The tracers (tracing.py, eager.py) build on this module; ``Tensor``'s operators and methods
(``x + y``, ``x.sum()``, ``x[idx]``) are attached in one place, tensor_methods.py.
"""
from __future__ import annotations

import os
import sys

import numpy as np

from irgraph import TensorType, Value

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OUR_DIRS = tuple(os.path.join(_ROOT, d) + os.sep for d in ("frontend", "irgraph", "passes",
                                                              "backends"))


def user_location() -> str | None:
    """``file:line`` of the innermost caller outside irgraph's own packages."""
    f = sys._getframe(1)
    while f is not None:
        path = os.path.abspath(f.f_code.co_filename)
        if not path.startswith(_OUR_DIRS):
            return f"{os.path.basename(path)}:{f.f_lineno}"
        f = f.f_back
    return None


class Tensor:
    """A traced tensor. Arithmetic and methods follow PyTorch's names."""
    __array_priority__ = 1000  # numpy scalars on the left defer to our operators
    __array_ufunc__ = None     # numpy arrays and scalars on the left defer as well

    _view = None        # (base tensor, index, base's value then): see functional_core.setitem

    def __init__(self, value: Value, tracer):
        # tracer: a tracing.Tracer (recording a graph) or the eager.EagerTracer
        self._value = value
        self.tracer = tracer

    @property
    def value(self) -> Value:
        return self._value

    @property
    def type(self) -> TensorType:
        return self.value.type

    @property
    def shape(self) -> tuple[int, ...]:
        return self.value.type.shape

    @property
    def dtype(self) -> str:
        return self.value.type.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def dim(self) -> int:
        return self.ndim

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    def numel(self) -> int:
        return self.type.size

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __repr__(self) -> str:
        if self.tracer.eager:
            return format_tensor(self.value.data)
        return f"Tensor(%{self.value.name}: {self.type})"

    def __bool__(self):
        if self.tracer.eager:
            return bool(self.value.data)
        loc = user_location()
        raise TypeError(f"{loc + ': ' if loc else ''}a traced tensor has no truth value while "
                        f"tracing: data-dependent Python control flow (if/while on a tensor) "
                        f"cannot be traced; use F.where")

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def _data(self, what: str) -> np.ndarray:
        """The values of an eager tensor; a traced tensor has none (TypeError)."""
        if self.tracer.eager:
            return self.value.data
        raise TypeError(f"{what} needs the tensor's data, which does not exist while tracing "
                        f"(%{self.value.name}: {self.type}); compute it in the graph instead")

    def __float__(self):
        return float(self._data("float()"))

    def __int__(self):
        return int(self._data("int()"))

    def __index__(self):
        data = self._data("using a traced tensor as an index or size")
        if data.ndim or data.dtype.kind not in "iu":
            raise TypeError(f"only a 0-d integer tensor can be an index, not {self.type}")
        return int(data)

    def __array__(self, dtype=None, copy=None):
        data = self._data("converting to a numpy array")
        return np.array(data, dtype=dtype, copy=True) if copy else np.asarray(data, dtype)

    def item(self):
        data = self._data(".item()")
        if data.size != 1:
            raise ValueError(f"item(): the tensor has {data.size} elements ({self.type}), "
                             f"not one")
        return data.item()

    def numpy(self) -> np.ndarray:
        return self._data(".numpy()")

    def tolist(self):
        return self._data(".tolist()").tolist()

    # operators and methods are attached in tensor_methods.py, the one table of them


_DEFAULT_DTYPES = ("float32", "int64", "bool")


def format_tensor(data: np.ndarray) -> str:
    """``tensor([...])`` as torch prints it; the dtype is named when it is not a default."""
    finite = data[np.isfinite(data)] if data.dtype.kind == "f" else data
    whole = data.dtype.kind != "f" or bool(np.all(finite == np.round(finite)) and
                                           np.all(np.abs(finite) < 1e8))
    # torch's style: four decimals, "1." when every value is a whole number
    body = np.array2string(data, separator=", ", prefix="tensor(", threshold=1000,
                           edgeitems=3, precision=4, floatmode="maxprec" if whole else "fixed")
    dt = data.dtype.name
    return f"tensor({body})" if dt in _DEFAULT_DTYPES else f"tensor({body}, dtype={dt})"
