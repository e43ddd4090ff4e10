"""Tensor functions of ``torch`` beyond the core ops, as compositions of them (``frontend.F``
and tensor methods): splitting and joining (``split``, ``chunk``, ``unbind``), reordering
(``flip``, ``roll``, ``movedim``), repetition (``repeat``, ``tile``), masks and triangles
(``masked_fill``, ``tril``, ``triu``), scans and products (``cumsum``, ``cumprod``, ``prod``,
as log-depth sweeps of adds and multiplies), tests (``all``, ``any``, ``isnan``, ``isinf``,
``isfinite``), rounding (``floor``, ``ceil``, ``trunc``, ``round``: zero gradient, as torch),
logical and bitwise operators, ``einsum`` (pairwise contractions as batched matmuls), ``norm``
and the factories (``zeros``, ``ones``, ``full``, ``arange``, ``eye``, ``linspace`` and their
``_like`` forms)."""
from __future__ import annotations

import builtins
import math
import re
from typing import Sequence

import numpy as np

from irgraph.ops.core import wrap_dim
from irgraph.types import LOW_DTYPES, TensorType

from .functional_core import (MinMax, abs, add, amax, amin, as_tensor, cast, check_fits,
                              emit_op, eq,
                              div, exact_floor, floor_divide, gt, logical_and, logical_or, lt,
                              matmul, mul, ne, neg,
                              pad, permute, reshape, slice_axes, squeeze, sub, sum, where)
from .functional_distance import vector_norm
from .functional_index import index_select, scatter_add
from .tracing import Tensor, current_tracer

__all__ = ["split", "chunk", "unbind", "flip", "fliplr", "flipud", "roll", "movedim",
           "narrow", "unflatten", "repeat", "tile", "repeat_interleave", "masked_fill", "tril",
           "triu", "cumsum", "cumprod", "prod", "all", "any", "isnan", "isinf", "isfinite",
           "nan_to_num", "floor", "ceil", "trunc", "round", "frac", "logical_not",
           "logical_xor", "bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_not", "einsum",
           "norm", "detach", "zeros", "ones", "full", "empty", "zeros_like", "ones_like",
           "full_like", "empty_like", "arange", "eye", "linspace", "sort", "argsort", "topk",
           "msort", "kthvalue", "scatter", "scatter_reduce"]


def _dim(x: Tensor, dim: int) -> int:
    return wrap_dim(dim, builtins.max(x.ndim, 1))


def _narrow(x: Tensor, d: int, start: int, stop: int) -> Tensor:
    starts, stops = [0] * x.ndim, list(x.shape)
    starts[d], stops[d] = start, stop
    return slice_axes(x, starts, stops, [1] * x.ndim)


# ---------------------------------------------------------------- split and join
def split(tensor, split_size_or_sections, dim: int = 0) -> tuple[Tensor, ...]:
    """``torch.split``: pieces of ``split_size`` along ``dim`` (the last one smaller), or of the
    listed sizes (which must add up to the dimension)."""
    x = as_tensor(tensor)
    d = _dim(x, dim)
    n = x.shape[d]
    if isinstance(split_size_or_sections, (int, np.integer)):
        size = int(split_size_or_sections)
        if size <= 0 and n:
            raise ValueError(f"split: split_size must be positive, got {size}")
        sizes = [builtins.min(size, n - s) for s in range(0, n, size)] if n else [0]
    else:
        sizes = [int(s) for s in split_size_or_sections]
        if builtins.sum(sizes) != n or builtins.any(s < 0 for s in sizes):
            raise ValueError(f"split: sizes {sizes} must be non-negative and add up to "
                             f"{n} (dimension {dim})")
    out, start = [], 0
    for s in sizes:
        out.append(_narrow(x, d, start, start + s))
        start += s
    return tuple(out)


def chunk(input, chunks: int, dim: int = 0) -> tuple[Tensor, ...]:
    """``torch.chunk``: pieces of ``ceil(n / chunks)`` (so possibly fewer than ``chunks``)."""
    if chunks <= 0:
        raise ValueError(f"chunk: chunks must be positive, got {chunks}")
    x = as_tensor(input)
    d = _dim(x, dim)
    n = x.shape[d]
    if n == 0:                  # torch: ``chunks`` empty pieces
        return tuple(_narrow(x, d, 0, 0) for _ in range(chunks))
    return split(x, -(-n // chunks), dim)


def unbind(input, dim: int = 0) -> tuple[Tensor, ...]:
    x = as_tensor(input)
    d = _dim(x, dim)
    return tuple(squeeze(_narrow(x, d, i, i + 1), d) for i in range(x.shape[d]))


def narrow(input, dim: int, start: int, length: int) -> Tensor:
    x = as_tensor(input)
    d = _dim(x, dim)
    n = x.shape[d]
    start = start + n if start < 0 else start
    if not (0 <= start <= n and 0 <= length and start + length <= n):
        raise IndexError(f"narrow: start {start} and length {length} out of range for "
                         f"dimension {dim} of size {n}")
    return _narrow(x, d, start, start + length)


def unflatten(input, dim: int, sizes) -> Tensor:
    x = as_tensor(input)
    d = _dim(x, dim)
    sizes = tuple(sizes)
    if not sizes:
        raise ValueError("unflatten: sizes must be non-empty")
    if x.ndim == 0:
        raise ValueError("unflatten: a 0-d tensor has no dimension to unflatten")
    return reshape(x, tuple(x.shape[:d]) + sizes + tuple(x.shape[d + 1:]))


def movedim(input, source, destination) -> Tensor:
    x = as_tensor(input)
    src = [source] if isinstance(source, int) else list(source)
    dst = [destination] if isinstance(destination, int) else list(destination)
    if len(src) != len(dst):
        raise ValueError("movedim: source and destination must have the same length")
    src, dst = [_dim(x, s) for s in src], [_dim(x, t) for t in dst]
    for name, dims in (("source", src), ("destination", dst)):
        if len(set(dims)) != len(dims):
            raise ValueError(f"movedim: repeated dim in `{name}` ({dims})")
    order = [None] * x.ndim
    for s, t in zip(src, dst):
        order[t] = s
    rest = iter(i for i in range(x.ndim) if i not in src)
    return permute(x, tuple(o if o is not None else next(rest) for o in order))


# ---------------------------------------------------------------- reorder and repeat
def _take(x: Tensor, d: int, idx) -> Tensor:
    return index_select(x, d, as_tensor(np.asarray(idx, np.int64), x))


def flip(input, dims) -> Tensor:
    x = as_tensor(input)
    dims = [_dim(x, d) for d in ([dims] if isinstance(dims, int) else dims)]
    if len(set(dims)) != len(dims):
        raise ValueError(f"flip: dims {list(dims)} repeat a dim")
    if x.ndim == 0:
        return x
    for d in dims:
        x = _take(x, d, np.arange(x.shape[d] - 1, -1, -1))
    return x


def fliplr(input) -> Tensor:
    return flip(input, 1)


def flipud(input) -> Tensor:
    return flip(input, 0)


def roll(input, shifts, dims=None) -> Tensor:
    """``torch.roll``: elements shifted along ``dims`` (the flattened tensor without)."""
    x = as_tensor(input)
    if dims is None:
        return reshape(roll(reshape(x, (-1,)), shifts, 0), x.shape)
    shifts = [shifts] if isinstance(shifts, int) else list(shifts)
    dims = [dims] if isinstance(dims, int) else list(dims)
    if len(shifts) != len(dims):
        raise ValueError("roll: shifts and dims must have the same length")
    for s, d in zip(shifts, dims):
        d = _dim(x, d)
        n = x.shape[d]
        if n:
            x = _take(x, d, (np.arange(n) - s) % n)
    return x


def repeat(input, *sizes) -> Tensor:
    """``Tensor.repeat``: the tensor tiled ``sizes`` times (at least its rank; extra sizes
    add leading dimensions)."""
    x = as_tensor(input)
    sizes = tuple(sizes[0]) if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)) \
        else tuple(sizes)
    if len(sizes) < x.ndim:
        raise ValueError(f"repeat: {len(sizes)} sizes for a tensor of rank {x.ndim}")
    x = reshape(x, (1,) * (len(sizes) - x.ndim) + tuple(x.shape))
    for d, r in enumerate(sizes):
        if r != 1:
            x = _take(x, d, np.tile(np.arange(x.shape[d]), int(r)))
    return x


def tile(input, dims) -> Tensor:
    """``torch.tile``: ``repeat`` with fewer sizes than the rank padded by leading ones."""
    x = as_tensor(input)
    dims = tuple(dims)
    return repeat(x, (1,) * (x.ndim - len(dims)) + dims)


def repeat_interleave(input, repeats: int, dim: int | None = None, *,
                      output_size: int | None = None) -> Tensor:
    """Each element ``repeats`` times along ``dim`` (the flattened tensor without); an
    integer count (a tensor of counts would make the output's size depend on its values)."""
    if isinstance(repeats, Tensor):
        raise TypeError("repeat_interleave: repeats must be an int when tracing (a tensor of "
                        "counts makes the output's size depend on the data)")
    x = as_tensor(input)
    if dim is None:
        x, dim = reshape(x, (-1,)), 0
    d = _dim(x, dim)
    return _take(x, d, np.repeat(np.arange(x.shape[d]), int(repeats)))


def scatter(input, dim: int, index, src=None, *, value=None, reduce: str | None = None
            ) -> Tensor:
    """``torch.scatter``: ``input`` with ``src[i]`` (or a number, given as ``src`` or
    ``value``) written at ``i with i[dim] = index[i]`` (src read on index's extent);
    ``reduce="add"`` adds instead (``scatter_add``). An index repeated along ``dim`` with
    different ``src`` values writes their sum (torch leaves which one wins undefined)."""
    x = as_tensor(input)
    if src is not None and value is not None:
        raise TypeError("scatter: give src or value, not both")
    if src is None and value is None:
        raise TypeError("scatter: give src (a tensor) or value (a number)")
    number = value if src is None else src
    if reduce not in (None, "add"):
        raise NotImplementedError(f"scatter: reduce={reduce!r} is not supported (None or "
                                  f"'add'; torch.scatter_reduce's 'sum' and 'mean' are)")
    idx = as_tensor(index)
    if isinstance(number, (Tensor, np.ndarray)) and not (
            isinstance(number, np.ndarray) and number.ndim == 0 and src is None):
        s = as_tensor(number, x)
    else:
        check_fits(number, x.dtype, "scatter")
        s = full(idx.shape, number, dtype=x.dtype)
    if reduce == "add":
        return scatter_add(x, dim, idx, s)
    return _scattered(x, dim, idx, s, include_self=False)[0]


def _scattered(x: Tensor, dim: int, idx: Tensor, s: Tensor, include_self: bool):
    """(x with the sum of the ``s`` scattered to each written place, there instead of x's
    value unless ``include_self``; how many were scattered to each place (float32))."""
    ones = full(idx.shape, 1.0, dtype="float32")
    count = scatter_add(full(x.shape, 0.0, dtype="float32"), dim, idx, ones)
    total = scatter_add(full(x.shape, 0.0, dtype=x.dtype), dim, idx, s)
    written = gt(count, 0.0)
    return where(written, add(x, total) if include_self else total, x), count


def scatter_reduce(input, dim: int, index, src, reduce: str, *,
                   include_self: bool = True) -> Tensor:
    """``torch.scatter_reduce`` with ``reduce`` "sum" or "mean": the places ``index``
    writes get the sum (or mean) of what is scattered there, with their own value counted
    in unless ``include_self=False``; other places keep theirs. A mean of integers rounds
    toward minus infinity, as torch's."""
    if reduce not in ("sum", "mean"):
        raise NotImplementedError(f"scatter_reduce: reduce={reduce!r} is not supported "
                                  f"('sum' or 'mean')")
    x = as_tensor(input)
    idx = as_tensor(index)
    s = as_tensor(src, x)
    out, count = _scattered(x, dim, idx, s, include_self)
    if reduce == "sum":
        return out
    n = add(count, 1.0) if include_self else count
    n = cast(where(gt(count, 0.0), n, 1.0), x.dtype)
    mean = div(out, n) if x.type.is_float else floor_divide(out, n)
    return where(gt(count, 0.0), mean, x)


# ---------------------------------------------------------------- masks and triangles
def masked_fill(input, mask, value) -> Tensor:
    """``value`` where ``mask``, in x's dtype (torch casts the value: 2.7 into an integer
    tensor is 2)."""
    x = as_tensor(input)
    check_fits(value, x.dtype, "masked_fill", floats=True)
    v = value if isinstance(value, Tensor) else as_tensor(np.asarray(value), x)
    return where(as_tensor(mask, x), cast(v, x.dtype), x)


def _triangle(x: Tensor, diagonal: int, lower: bool, name: str) -> Tensor:
    if x.ndim < 2:
        raise ValueError(f"{name}: input must have at least 2 dimensions, got {x.ndim}")
    rows, cols = x.shape[-2:]
    offset = np.arange(cols)[None, :] - np.arange(rows)[:, None]
    keep = offset <= diagonal if lower else offset >= diagonal
    return where(as_tensor(keep, x), x, as_tensor(np.zeros((), x.type.np_dtype), x))


def tril(input, diagonal: int = 0) -> Tensor:
    return _triangle(as_tensor(input), diagonal, True, "tril")


def triu(input, diagonal: int = 0) -> Tensor:
    return _triangle(as_tensor(input), diagonal, False, "triu")


# ---------------------------------------------------------------- scans and products
def inclusive_scan(x: Tensor, dim: int, op, fill) -> Tensor:
    """Inclusive scan of ``op`` along ``dim`` in ceil(log2 n) sweeps (Hillis and Steele): at
    sweep k each element combines with the one 2^k before it (``fill`` before the start)."""
    d = _dim(x, dim)
    if x.ndim == 0:
        return x
    n = x.shape[d]
    step = 1
    while step < n:
        pads = [0] * (2 * x.ndim)
        pads[2 * (x.ndim - 1 - d)] = step
        shifted = pad(_narrow(x, d, 0, n - step), pads, value=fill)
        x = op(x, shifted)
        step *= 2
    return x


def _accumulating(x: Tensor, dtype: str | None):
    """(the tensor to accumulate, the result's dtype) of torch's cumsum / cumprod / prod:
    ``dtype`` if given; bool and integers as int64; float16 and bfloat16 accumulated in
    float32 and rounded once at the end (torch's opmath)."""
    if dtype is not None:
        return cast(x, dtype), TensorType((), dtype).dtype
    if not x.type.is_float:
        return cast(x, "int64"), "int64"
    if x.dtype in LOW_DTYPES:
        return cast(x, "float32"), x.dtype
    return x, x.dtype


def cumsum(input, dim: int, dtype: str | None = None) -> Tensor:
    x, out = _accumulating(as_tensor(input), dtype)
    return cast(inclusive_scan(x, dim, add, 0.0), out)


def cumprod(input, dim: int, dtype: str | None = None) -> Tensor:
    x, out = _accumulating(as_tensor(input), dtype)
    return cast(inclusive_scan(x, dim, mul, 1.0), out)


def prod(input, dim: int | None = None, keepdim: bool = False,
         dtype: str | None = None) -> Tensor:
    """``torch.prod`` as a tree of multiplies (no division, so zeros have torch's
    gradient)."""
    x, out_dtype = _accumulating(as_tensor(input), dtype)
    if out_dtype != x.dtype:
        return cast(prod(x, dim, keepdim), out_dtype)
    if dim is None:
        out = prod(reshape(x, (-1,)), 0)
        return reshape(out, (1,) * x.ndim) if keepdim else out
    d = _dim(x, dim)
    if x.ndim == 0:
        return x
    while x.shape[d] > 1:
        n = x.shape[d]
        half = n // 2
        y = mul(_narrow(x, d, 0, half), _narrow(x, d, half, 2 * half))
        x = y if n % 2 == 0 else emit_op("concat", y, _narrow(x, d, n - 1, n), axis=d)
    if x.shape[d] == 0:
        shape = list(x.shape)
        shape[d] = 1
        x = as_tensor(np.ones(shape, x.type.np_dtype), x)
    return x if keepdim else squeeze(x, d)


# ---------------------------------------------------------------- tests
def _truth(x: Tensor) -> Tensor:
    return x if x.dtype == "bool" else ne(x, 0)


def all(input, dim=None, keepdim: bool = False) -> Tensor:
    x = cast(_truth(as_tensor(input)), "int32")
    if not x.numel():       # every slice is empty: True, in the reduced shape
        return eq(sum(x, dim, keepdim=keepdim), 0)
    return cast(amin(x, dim, keepdim), "bool")


def any(input, dim=None, keepdim: bool = False) -> Tensor:
    x = cast(_truth(as_tensor(input)), "int32")
    if not x.numel():       # every slice is empty: False, in the reduced shape
        return ne(sum(x, dim, keepdim=keepdim), 0)
    return cast(amax(x, dim, keepdim), "bool")


def isnan(input) -> Tensor:
    x = as_tensor(input)
    return ne(x, x)


def isinf(input) -> Tensor:
    x = as_tensor(input)
    return eq(abs(x), math.inf) if x.type.is_float else ne(x, x)


def isfinite(input) -> Tensor:
    x = as_tensor(input)
    return logical_and(eq(x, x), ne(abs(x), math.inf)) if x.type.is_float else eq(x, x)


def nan_to_num(input, nan: float = 0.0, posinf: float | None = None,
               neginf: float | None = None) -> Tensor:
    x = as_tensor(input)
    if not x.type.is_float:
        return x
    big = float(np.finfo(x.type.np_dtype).max)
    x = where(ne(x, x), nan, x)
    x = where(eq(x, math.inf), big if posinf is None else posinf, x)
    return where(eq(x, -math.inf), -big if neginf is None else neginf, x)


# ---------------------------------------------------------------- rounding (zero gradient)
def _rounded(x: Tensor, f) -> Tensor:
    x = as_tensor(x)
    if not x.type.is_float:
        return x
    return emit_op("stop_gradient", f(x))


def floor(input) -> Tensor:
    return _rounded(input, exact_floor)


def ceil(input) -> Tensor:
    return _rounded(input, lambda x: neg(exact_floor(neg(x))))


def trunc(input) -> Tensor:
    return _rounded(input, lambda x: where(lt(x, 0.0), neg(exact_floor(neg(x))),
                                           exact_floor(x)))


def round(input, decimals: int = 0) -> Tensor:
    """Half to even, as torch (``decimals``: scaled by 10^decimals first)."""
    def half_even(x):
        f = exact_floor(x)
        d = sub(x, f)
        odd = ne(emit_op("fmod", f, as_tensor(2.0, f)), 0.0)
        up = logical_or(lt(0.5, d), logical_and(eq(d, 0.5), odd))
        return where(up, add(f, 1.0), f)
    x = as_tensor(input)
    if decimals > 0:
        s = 10.0 ** decimals
        return _rounded(x, lambda v: half_even(v * s) / s)
    if decimals < 0:                    # as torch: by an exact 10^k, not an inexact 10^-k
        s = 10.0 ** -decimals
        return _rounded(x, lambda v: half_even(v / s) * s)
    return _rounded(x, half_even)


def frac(input) -> Tensor:
    x = as_tensor(input)
    return x - trunc(x)


# ---------------------------------------------------------------- logical and bitwise
def logical_not(input) -> Tensor:
    return eq(_truth(as_tensor(input)), False)


def logical_xor(a, b) -> Tensor:
    return ne(_truth(as_tensor(a)), _truth(as_tensor(b, as_tensor(a))))


def _bool_only(name: str, a: Tensor, b: Tensor) -> None:
    if a.dtype != "bool" or b.dtype != "bool":
        raise TypeError(f"{name}: bitwise operations on {a.dtype} and {b.dtype} tensors are "
                        f"not supported (only bool tensors, where they are logical)")


def _bitwise(name: str, logical):
    def f(a, b) -> Tensor:
        x = as_tensor(a) if isinstance(a, Tensor) else None
        y = as_tensor(b, x) if x is not None else as_tensor(b)
        x = x if x is not None else as_tensor(a, y)
        _bool_only(name, x, y)
        return logical(x, y)
    f.__name__ = name
    return f


bitwise_and = _bitwise("bitwise_and", logical_and)
bitwise_or = _bitwise("bitwise_or", logical_or)
bitwise_xor = _bitwise("bitwise_xor", ne)


def bitwise_not(input) -> Tensor:
    """``~x``: logical not of a bool tensor, ``-1 - x`` (every bit flipped) of an integer."""
    x = as_tensor(input)
    if x.dtype == "bool":
        return logical_not(x)
    if x.type.is_float:
        raise TypeError(f"bitwise_not: not defined for {x.dtype} tensors")
    return sub(-1, x)


# ---------------------------------------------------------------- einsum
def _einsum_terms(equation: str, ops: Sequence[Tensor]):
    eq_ = equation.replace(" ", "")
    lhs, arrow, rhs = eq_.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ops):
        raise ValueError(f"einsum: {len(terms)} operands in {equation!r}, got {len(ops)}")
    used = set(re.sub(r"[^A-Za-z]", "", eq_))
    spare = iter(c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                 if c not in used)
    ell_rank = builtins.max([x.ndim - len(t.replace("...", "")) for t, x in zip(terms, ops)
                             if "..." in t], default=0)
    ell = "".join(next(spare) for _ in range(ell_rank))
    out_terms = []
    for t, x in zip(terms, ops):
        if "..." in t:
            k = x.ndim - len(t.replace("...", ""))
            t = t.replace("...", ell[ell_rank - k:])
        if len(t) != x.ndim or (t and not t.isalpha()):
            raise ValueError(f"einsum: term {t!r} does not fit an operand of rank {x.ndim}")
        if len(set(t)) != len(t):
            raise NotImplementedError(f"einsum: a repeated index within one operand ({t!r}, "
                                      f"a diagonal) is not supported")
        out_terms.append(t)
    if arrow:
        out = rhs.replace("...", ell)
    else:
        counts = {}
        for t in out_terms:
            for c in t:
                counts[c] = counts.get(c, 0) + 1
        out = ell + "".join(sorted(c for c, n in counts.items() if n == 1 and c not in ell))
    return out_terms, out


def _contract(a: Tensor, ta: str, b: Tensor, tb: str, keep: set) -> tuple[Tensor, str]:
    """``a`` (indices ``ta``) times ``b`` summed over the indices shared and not kept, as one
    batched matmul; the result's indices: batch, a's own, b's own."""
    size = {**dict(zip(ta, a.shape)), **dict(zip(tb, b.shape))}
    for t, x in ((ta, a), (tb, b)):       # broadcast size-1 dimensions as einsum does
        for c, n in zip(t, x.shape):
            size[c] = builtins.max(size[c], n)
    batch = [c for c in ta if c in tb and c in keep]
    summed = [c for c in ta if c in tb and c not in keep]
    a_own = [c for c in ta if c not in tb]
    b_own = [c for c in tb if c not in ta]

    def arrange(x, t, order):
        x = permute(x, tuple(t.index(c) for c in order)) if list(t) != order else x
        return emit_op("broadcast_to", x, shape=tuple(size[c] for c in order)) \
            if tuple(x.shape) != tuple(size[c] for c in order) else x
    nb = int(np.prod([size[c] for c in batch]))
    m = int(np.prod([size[c] for c in a_own]))
    k = int(np.prod([size[c] for c in summed]))
    n = int(np.prod([size[c] for c in b_own]))
    am = reshape(arrange(a, ta, batch + a_own + summed), (nb, m, k))
    bm = reshape(arrange(b, tb, batch + summed + b_own), (nb, k, n))
    y = matmul(am, bm)
    order = batch + a_own + b_own
    return reshape(y, tuple(size[c] for c in order)), "".join(order)


def einsum(equation: str, *operands) -> Tensor:
    """``torch.einsum``: operands contracted left to right, each pair as one batched matmul
    (an index only one operand has and the output lacks is summed first); ``...`` broadcast
    dimensions. A repeated index within one operand (a diagonal) is refused."""
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    ops = [as_tensor(x) for x in operands]
    terms, out = _einsum_terms(equation, ops)

    def needed_after(i):
        return set(out).union(*[set(t) for t in terms[i + 1:]])
    # indices of one operand only and not wanted later: summed at once
    for i, (x, t) in enumerate(zip(ops, terms)):
        others = set(out).union(*[set(u) for j, u in enumerate(terms) if j != i])
        drop = [t.index(c) for c in t if c not in others]
        if drop:
            ops[i] = sum(x, tuple(drop))
            terms[i] = "".join(c for c in t if c in others)
    acc, ta = ops[0], terms[0]
    for i in range(1, len(ops)):
        acc, ta = _contract(acc, ta, ops[i], terms[i], needed_after(i))
    missing = [c for c in ta if c not in out]
    if missing:
        acc = sum(acc, tuple(ta.index(c) for c in missing))
        ta = "".join(c for c in ta if c in out)
    if set(ta) != set(out) or len(ta) != len(out):
        raise ValueError(f"einsum: output indices {out!r} must appear in the inputs")
    return permute(acc, tuple(ta.index(c) for c in out)) if ta != out else acc


# ---------------------------------------------------------------- norms
def norm(input, p="fro", dim=None, keepdim: bool = False, dtype: str | None = None) -> Tensor:
    """``torch.norm`` of vectors: ``p`` a number, ``inf``, or ``"fro"`` (2, over all the
    given dimensions)."""
    x = as_tensor(input)
    if dtype is not None:
        x = cast(x, dtype)
    if p == "fro":
        p = 2
    if isinstance(p, str):
        raise NotImplementedError(f"norm: p={p!r} (matrix norms) is not supported")
    return vector_norm(x, p, dim, keepdim)


def detach(input) -> Tensor:
    """The same values, no gradient through them."""
    return emit_op("stop_gradient", as_tensor(input))


# ---------------------------------------------------------------- factories
def _shape(size) -> tuple[int, ...]:
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        size = tuple(size[0])
    return tuple(int(s) for s in size)


def _factory_dtype(dtype, value=0.0) -> str:
    if dtype is not None:
        return str(np.dtype(str(dtype).removeprefix("torch.")))
    if isinstance(value, bool):
        return "bool"
    return "int64" if isinstance(value, (int, np.integer)) else "float32"


def full(size, fill_value, *, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    size = _shape((size,)) if isinstance(size, (tuple, list)) else _shape((size,))
    dt = _factory_dtype(dtype, fill_value)
    check_fits(fill_value, dt, "full")
    if dt == "int64" and not -2**53 <= int(fill_value) <= 2**53:    # exact past 2^53
        return current_tracer().emit("constant", value=np.full(size, int(fill_value), np.int64))
    return current_tracer().emit("full", shape=size, value=float(fill_value), dtype=dt)


def zeros(*size, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    return full(_shape(size), 0.0, dtype=dtype or "float32")


def ones(*size, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    return full(_shape(size), 1.0, dtype=dtype or "float32")


empty = zeros


def _like(name, value):
    def f(input, dtype=None, *, device=None, requires_grad: bool = False,
          memory_format=None) -> Tensor:
        x = as_tensor(input)
        return full(x.shape, value, dtype=dtype or x.dtype)
    f.__name__ = name
    return f


zeros_like = _like("zeros_like", 0.0)
ones_like = _like("ones_like", 1.0)
empty_like = zeros_like


def full_like(input, fill_value, *, dtype=None, device=None,
              requires_grad: bool = False) -> Tensor:
    x = as_tensor(input)
    return full(x.shape, fill_value, dtype=dtype or x.dtype)


def arange(start, end=None, step=1, *, dtype=None, device=None,
           requires_grad: bool = False) -> Tensor:
    """``torch.arange``: int64 for integer arguments, else float32 (or ``dtype``)."""
    if end is None:
        start, end = 0, start
    ints = builtins.all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                        for v in (start, end, step))
    dt = str(np.dtype(str(dtype).removeprefix("torch."))) if dtype is not None else \
        ("int64" if ints else "float32")
    if step == 0:
        raise ValueError("arange: step must be nonzero")
    n = builtins.max(0, math.ceil((end - start) / step))
    values = (np.asarray(start, np.float64) + np.arange(n) * np.float64(step)) if not ints \
        else start + np.arange(n, dtype=np.int64) * step
    return current_tracer().emit("constant", value=np.asarray(values).astype(dt))


def linspace(start, end, steps: int, *, dtype=None, device=None,
             requires_grad: bool = False) -> Tensor:
    dt = str(np.dtype(str(dtype).removeprefix("torch."))) if dtype is not None else "float32"
    return current_tracer().emit("constant", value=np.linspace(start, end, int(steps))
                                 .astype(dt))


def eye(n: int, m: int | None = None, *, dtype=None, device=None,
        requires_grad: bool = False) -> Tensor:
    dt = str(np.dtype(str(dtype).removeprefix("torch."))) if dtype is not None else "float32"
    return current_tracer().emit("constant", value=np.eye(n, m).astype(dt))


# ---------------------------------------------------------------- sorting
def _flip_pairs(t: Tensor, j: int) -> Tensor:
    """Each element's partner at distance ``j`` along the last axis (index ``i xor j``): the
    axis seen as (blocks, 2, j) with its middle dimension reversed."""
    n = t.shape[-1]
    lead = tuple(t.shape[:-1])
    u = reshape(t, lead + (n // (2 * j), 2, j))
    u = index_select(u, len(lead) + 1, as_tensor(np.array([1, 0], np.int64), t))
    return reshape(u, lead + (n,))


def _after(a: Tensor, ia: Tensor, b: Tensor, ib: Tensor, n: int, descending: bool) -> Tensor:
    """Whether (a, ia) sorts after (b, ib): padding (an index past n) last, then by value
    (NaN the largest, as torch), then by index (a stable sort)."""
    pad_a, pad_b = ~lt(ia, n), ~lt(ib, n)
    if a.type.is_float:
        nan_a, nan_b = ne(a, a), ne(b, b)
        num = logical_and(~nan_a, ~nan_b)
        if descending:
            beyond = logical_or(logical_and(nan_b, ~nan_a), logical_and(num, lt(a, b)))
        else:
            beyond = logical_or(logical_and(nan_a, ~nan_b), logical_and(num, gt(a, b)))
        tie = logical_or(eq(a, b), logical_and(nan_a, nan_b))
    else:
        beyond = lt(a, b) if descending else gt(a, b)
        tie = eq(a, b)
    by_value = logical_or(beyond, logical_and(tie, gt(ia, ib)))
    return logical_or(logical_and(pad_a, ~pad_b), logical_and(eq(pad_a, pad_b), by_value))


def sort(input, dim: int = -1, descending: bool = False, stable: bool = False) -> MinMax:
    """``torch.sort``: (values, indices) along ``dim``, a stable order (ties keep their
    positions; NaN counts as the largest). A bitonic sorting network of compare-and-swap
    sweeps over the axis padded to a power of two: O(n log^2 n) work, the gradient of the
    values is routed back to the positions they came from."""
    x = as_tensor(input)
    if x.ndim == 0:
        return MinMax(x, as_tensor(np.array(0, np.int64), x))
    d = _dim(x, dim)
    xm = movedim(x, d, -1)
    n = xm.shape[-1]
    size = 1 << builtins.max(0, (n - 1).bit_length())
    lead = tuple(xm.shape[:-1])
    v = xm
    if size > n:
        v = pad(xm, (0, size - n), value=0.0)
    i = x.tracer.emit("iota", shape=lead + (size,), axis=len(lead), dtype="int64")
    pos = np.arange(size)
    k = 2
    while k <= size:
        j = k // 2
        while j >= 1:
            first = as_tensor(((pos & j) == 0) == ((pos & k) == 0), v)  # keeps the earlier one
            pv, pi = _flip_pairs(v, j), _flip_pairs(i, j)
            swap = where(first, _after(v, i, pv, pi, n, descending),
                         _after(pv, pi, v, i, n, descending))
            v, i = where(swap, pv, v), where(swap, pi, i)
            j //= 2
        k *= 2
    if size > n:
        v, i = _narrow(v, v.ndim - 1, 0, n), _narrow(i, i.ndim - 1, 0, n)
    return MinMax(movedim(v, -1, d), movedim(i, -1, d))


def argsort(input, dim: int = -1, descending: bool = False, stable: bool = False) -> Tensor:
    return sort(input, dim, descending).indices


def msort(input) -> Tensor:
    return sort(input, 0).values


def topk(input, k: int, dim: int = -1, largest: bool = True, sorted: bool = True) -> MinMax:
    """``torch.topk``: the ``k`` largest (smallest) along ``dim`` in order, with indices."""
    x = as_tensor(input)
    d = _dim(x, dim)
    n = x.shape[d] if x.ndim else 1
    if not 0 <= k <= n:
        raise IndexError(f"topk: k ({k}) out of range for dimension {dim} of size {n}")
    values, indices = sort(x, d, descending=largest)
    if x.ndim == 0:
        return MinMax(values, indices)
    return MinMax(_narrow(values, d, 0, k), _narrow(indices, d, 0, k))


def kthvalue(input, k: int, dim: int = -1, keepdim: bool = False) -> MinMax:
    """``torch.kthvalue``: the k-th smallest (1-based) along ``dim`` and its index."""
    x = as_tensor(input)
    d = _dim(x, dim)
    n = x.shape[d] if x.ndim else 1
    if not 1 <= k <= n:
        raise IndexError(f"kthvalue: k ({k}) out of range for dimension {dim} of size {n}")
    values, indices = sort(x, d)
    if x.ndim == 0:
        return MinMax(values, indices)
    v, i = _narrow(values, d, k - 1, k), _narrow(indices, d, k - 1, k)
    return MinMax(v, i) if keepdim else MinMax(squeeze(v, d), squeeze(i, d))
