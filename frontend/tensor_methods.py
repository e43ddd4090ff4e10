"""``Tensor``'s operators and methods (``x + y``, ``x.sum()``, ``x[idx]``, ``x.float()``), with
PyTorch's names: the one table that attaches ``F`` functions to the ``Tensor`` class
(tensor_base.py). functional.py imports this module, so every ``Tensor`` has them once the
frontend is imported."""
from __future__ import annotations

import numpy as np

from .functional_core import (abs, add, amax, amin, argmax, argmin, as_tensor, broadcast_to, cast,
                              clamp,
                              clamp_max, clamp_min, clone, cos, div, eq, erf, exp, flatten,
                              floor_divide, fmod, ge, gt, le, log, log_softmax, logical_and,
                              logical_or, logsumexp, lt, matmul, max, maximum, mean, min, minimum,
                              mul, ne, neg, permute, pow, relu, remainder, reshape, rsqrt, setitem,
                              sigmoid, sign, sin, softmax, sqrt, square, squeeze, std, sub, sum,
                              tanh,
                              transpose, unsqueeze, var, where)
from .functional_index import gather, getitem, index_add, index_select, scatter_add, \
    take_along_dim
from .compositions import expm1, log1p
from . import functional_tensor as T
from . import functional_math as M
from .tensor_base import Tensor



def _swap(f):
    return lambda a, b: f(b, a)


def _rdiv(self, other):
    """``number / x`` as torch's: the reciprocal of x times the number (two roundings)."""
    if isinstance(other, Tensor):
        return div(other, self)
    return mul(M.reciprocal(self), other)


_METHODS = {
    "__add__": add, "__radd__": _swap(add), "__sub__": sub, "__rsub__": _swap(sub),
    "__mul__": mul, "__rmul__": _swap(mul), "__truediv__": div, "__rtruediv__": _rdiv,
    "__pow__": pow, "__rpow__": _swap(pow), "__matmul__": matmul, "__rmatmul__": _swap(matmul),
    "__neg__": neg, "__abs__": abs, "__lt__": lt, "__le__": le, "__gt__": gt, "__ge__": ge,
    "__eq__": eq, "__ne__": ne, "__getitem__": getitem, "__and__": T.bitwise_and,
    "__or__": T.bitwise_or, "__xor__": T.bitwise_xor, "__rand__": _swap(T.bitwise_and),
    "__ror__": _swap(T.bitwise_or), "__rxor__": _swap(T.bitwise_xor),
    "__invert__": T.bitwise_not, "__pos__": lambda self: self,
    "exp": exp, "log": log, "log1p": log1p, "expm1": expm1, "sqrt": sqrt, "rsqrt": rsqrt, "tanh": tanh, "sigmoid": sigmoid,
    "relu": relu, "abs": abs, "sign": sign, "square": square, "neg": neg,
    "sum": sum, "mean": mean, "amax": amax, "amin": amin, "argmax": argmax, "var": var,
    "matmul": matmul, "flatten": flatten, "permute": permute, "transpose": transpose,
    "unsqueeze": unsqueeze, "squeeze": squeeze, "softmax": softmax, "log_softmax": log_softmax,
    "clamp": clamp, "broadcast_to": broadcast_to, "maximum": maximum,
    "minimum": minimum,
    "__floordiv__": floor_divide, "__rfloordiv__": _swap(floor_divide),
    "__mod__": remainder, "__rmod__": _swap(remainder), "fmod": fmod, "remainder": remainder,
    "add": add, "sub": sub, "mul": mul, "div": div, "pow": pow, "eq": eq, "ne": ne, "lt": lt,
    "le": le, "gt": gt, "ge": ge, "floor_divide": floor_divide, "argmin": argmin,
    "clip": clamp, "clamp_min": clamp_min, "clamp_max": clamp_max, "max": max, "min": min,
    "__setitem__": setitem, "clone": clone,
    "logical_and": logical_and, "logical_or": logical_or, "std": std,
    "true_divide": div,
    "logsumexp": logsumexp,
    "erf": erf, "sin": sin, "cos": cos,
    "gather": gather, "index_select": index_select, "take_along_dim": take_along_dim,
    "scatter_add": scatter_add, "index_add": index_add,
    **{name: getattr(T, name) for name in (
        "split", "chunk", "unbind", "flip", "fliplr", "flipud", "roll", "movedim", "narrow",
        "unflatten", "repeat", "tile", "repeat_interleave", "masked_fill", "tril", "triu",
        "cumsum", "cumprod", "prod", "all", "any", "isnan", "isinf", "isfinite", "nan_to_num",
        "floor", "ceil", "trunc", "round", "frac", "logical_not", "logical_xor",
        "bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_not", "norm", "detach", "sort",
        "argsort", "topk", "msort", "kthvalue", "scatter", "scatter_reduce")},
    **{name: getattr(M, name) for name in M.__all__ if name not in (
        "tensordot", "cdist", "meshgrid", "cartesian_prod", "hstack", "vstack", "dstack",
        "searchsorted", "bucketize")},
}
for _name, _fn in _METHODS.items():
    setattr(Tensor, _name, _fn)
Tensor.__hash__ = object.__hash__
Tensor.T = property(lambda self: permute(self, tuple(reversed(range(self.ndim)))))


def _type_as(self, other):
    return cast(self, other.dtype)


def _expand_as(self, other):
    return broadcast_to(self, tuple(other.shape))


# torch's dtype names where numpy's differ ("float" is float32 in torch, float64 in numpy)
_TORCH_NAMES = {"float": "float32", "double": "float64", "half": "float16", "long": "int64",
                "int": "int32", "bool": "bool"}


def torch_dtype(dtype) -> str:
    """A dtype given as torch would take it: ``torch.float16`` (the object), torch's names
    (``"float"``, ``"long"``), or ours."""
    name = str(dtype)
    if name.startswith("torch."):
        name = name[len("torch."):]
    if name in _TORCH_NAMES:
        return _TORCH_NAMES[name]
    return name if str(dtype).startswith("torch.") else dtype


def _new_tensor(self, data, dtype=None, **kwargs):
    """A constant of ``data`` in this tensor's dtype (or ``dtype``), as torch's."""
    return cast(as_tensor(np.asarray(data), self), torch_dtype(dtype) if dtype else self.dtype)


Tensor.type_as = _type_as
Tensor.expand_as = _expand_as
Tensor.new_tensor = _new_tensor


def _reshape_method(self, *shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return reshape(self, shape)


def _expand(self, *sizes):
    """``x.expand(*sizes)``: -1 keeps a dimension; new dimensions go in front (torch)."""
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = tuple(sizes[0])
    return broadcast_to(self, sizes)


def _where_method(self, condition, y):
    """``x.where(condition, y)`` is ``where(condition, x, y)`` (torch)."""
    return where(condition, self, y)


Tensor.reshape = _reshape_method
Tensor.view = _reshape_method
Tensor.expand = _expand
Tensor.where = _where_method


def _conversion(dtype: str | None):
    """``x.float()``, ``x.contiguous()``...: a traced tensor is a value with no memory layout,
    so torch's ``memory_format`` is accepted and has nothing to change."""
    def method(self, memory_format=None):
        return self if dtype is None else cast(self, dtype)
    return method


Tensor.contiguous = _conversion(None)
Tensor.bool = _conversion("bool")
Tensor.float = _conversion("float32")
Tensor.double = _conversion("float64")
Tensor.long = _conversion("int64")
Tensor.int = _conversion("int32")
Tensor.half = _conversion("float16")
Tensor.bfloat16 = _conversion("bfloat16")
def _to(self, *args, **kwargs):
    """``x.to(dtype)``; a device (``"cpu"``, ``torch.device``) leaves x as it is."""
    dtype = kwargs.get("dtype", args[0] if args else None)
    if dtype is None or type(dtype).__name__ == "device" or str(dtype).split(":")[0] in (
            "cpu", "cuda", "mps", "meta"):
        return self
    return cast(self, torch_dtype(dtype))


Tensor.to = _to
def _dims_method(fn):
    """A method taking dims as varargs or one sequence (``x.flip(0, 1)``, ``x.tile(2)``)."""
    def method(self, *dims):
        return fn(self, tuple(dims[0]) if len(dims) == 1 and isinstance(dims[0], (tuple, list))
                  else dims)
    return method


Tensor.flip = _dims_method(T.flip)
Tensor.tile = _dims_method(T.tile)
Tensor.t = lambda self: transpose(self, 0, 1) if self.ndim == 2 else self
Tensor.mT = property(lambda self: transpose(self, -2, -1))
Tensor.new_zeros = lambda self, *size, dtype=None: T.zeros(*size, dtype=dtype or self.dtype)
Tensor.new_ones = lambda self, *size, dtype=None: T.ones(*size, dtype=dtype or self.dtype)
Tensor.new_full = lambda self, size, value, dtype=None: T.full(size, value,
                                                              dtype=dtype or self.dtype)


# ---------------------------------------------------------------- in-place forms
def _category(dtype: str) -> int:
    return 0 if dtype == "bool" else (1 if not dtype.startswith(("float", "bfloat")) else 2)


def assign_inplace(x: Tensor, result, what: str) -> Tensor:
    """``x`` takes ``result`` as its value, in its own shape and dtype (torch's in-place
    rule: a result of a higher kind, float into an integer tensor, is an error; a shape the
    operands broadcast to beyond x's, too); views and their bases follow as an assignment
    ``x[...] = result`` does. Traced tensors are values: x is rebound, not its memory."""
    r = as_tensor(result, x)
    if tuple(r.shape) != tuple(x.shape):
        try:
            r = broadcast_to(r, tuple(x.shape))
        except Exception:
            raise RuntimeError(f"{what}: output with shape {list(x.shape)} doesn't match the "
                               f"broadcast shape {list(r.shape)}") from None
    if r.dtype != x.dtype:
        if _category(r.dtype) > _category(x.dtype):
            raise RuntimeError(f"{what}: result type {r.dtype} can't be cast to the desired "
                               f"output type {x.dtype}")
        r = cast(r, x.dtype)
    setitem(x, (Ellipsis,), r)
    return x


def _inplace(fn, name: str):
    def method(self, *args, **kwargs):
        return assign_inplace(self, fn(self, *args, **kwargs), name)
    method.__name__ = name
    method.__doc__ = f"``x.{name}(...)``: ``x.{name[:-1]}(...)`` assigned to x (torch's)."
    return method


for _name in ("add", "sub", "mul", "div", "true_divide", "floor_divide", "remainder", "fmod",
              "pow", "neg", "abs", "exp", "log", "log1p", "expm1", "sqrt", "rsqrt", "sin",
              "cos", "tanh", "sigmoid", "relu", "clamp", "clip", "clamp_min", "clamp_max",
              "floor", "ceil", "round", "trunc", "frac", "sign", "square", "reciprocal",
              "masked_fill", "lerp", "addcmul", "addcdiv", "nan_to_num", "logical_not",
              "hypot", "xlogy", "scatter", "scatter_add", "scatter_reduce", "index_add",
              "tril", "triu", "cumsum", "cumprod"):
    setattr(Tensor, _name + "_", _inplace(getattr(Tensor, _name), _name + "_"))
for _op, _name in (("__iadd__", "add"), ("__isub__", "sub"), ("__imul__", "mul"),
                   ("__itruediv__", "div"), ("__ifloordiv__", "floor_divide"),
                   ("__imod__", "remainder"), ("__ipow__", "pow"), ("__iand__", "__and__"),
                   ("__ior__", "__or__"), ("__ixor__", "__xor__")):
    setattr(Tensor, _op, _inplace(getattr(Tensor, _name), _op))
Tensor.zero_ = lambda self: assign_inplace(self, T.zeros_like(self), "zero_")
Tensor.fill_ = lambda self, value: assign_inplace(self, T.full_like(self, value), "fill_")
Tensor.copy_ = lambda self, src, non_blocking=False: assign_inplace(
    self, cast(as_tensor(src, self), self.dtype), "copy_")


# torch's layout and size queries (a traced tensor has no memory: contiguous, on the CPU)
Tensor.cpu = lambda self, *args, **kwargs: self
Tensor.view_as = lambda self, other: reshape(self, tuple(other.shape))
Tensor.reshape_as = Tensor.view_as
Tensor.is_floating_point = lambda self: self.type.is_float
Tensor.is_contiguous = lambda self, memory_format=None: True
Tensor.nelement = lambda self: int(np.prod(self.shape))
Tensor.ndimension = lambda self: self.ndim
Tensor.element_size = lambda self: np.dtype(self.type.np_dtype).itemsize
