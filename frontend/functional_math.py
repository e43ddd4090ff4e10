"""torch's tensor functions composed of the core ops, with torch's names and arguments
(re-exported by functional.py): products (``mm``, ``bmm``, ``addmm``, ``outer``, ...),
elementwise functions (``lerp``, ``hypot``, ``logaddexp``, ``xlogy``, ``logit``, ``log2``,
``sinh``, ...), diagonals (``diagonal``, ``diag``, ``trace``), distances (``cdist``),
moments (``var_mean``, ``std_mean``) and scans and order statistics (``cummax``, ``cummin``,
``logcumsumexp``, ``median``), ``rot90`` and ``tensor_split``."""
from __future__ import annotations

import math

import numpy as np

from irgraph.ops.core import wrap_dim

from .compositions import expm1, log1p
from .functional_core import (MinMax, abs, add, as_tensor, broadcast_to, cast, cat, div,
                              eq, erf, exp, ge, le, lt, stack, unsqueeze,
                              log, logical_and, logical_or, matmul, maximum, mean, mul,
                              pad, promote, reshape, sin, sqrt, std, sub, sum, transpose, var,
                              where)
from .functional_distance import vector_norm
from .functional_index import take_along_dim
from .functional_tensor import (all as all_elements, arange, flip, inclusive_scan, isfinite,
                                isnan, movedim, narrow, sort)
from .tracing import Tensor

__all__ = ["mm", "mv", "dot", "bmm", "addmm", "addmv", "baddbmm", "outer", "inner",
           "tensordot", "cross", "reciprocal", "lerp", "hypot", "logaddexp", "logaddexp2",
           "xlogy", "logit", "log2", "log10", "exp2", "sinh", "cosh", "tan", "sinc",
           "deg2rad", "rad2deg", "addcmul", "addcdiv", "diagonal", "diag", "diag_embed", "trace",
           "var_mean", "std_mean", "cdist", "count_nonzero", "nansum", "nanmean", "cummax",
           "cummin",
           "logcumsumexp", "median", "rot90", "tensor_split", "isclose", "allclose",
           "isneginf", "isposinf", "fmax", "fmin", "true_divide", "erfc", "diff", "kron",
           "meshgrid", "cartesian_prod", "swapaxes", "swapdims", "hstack", "vstack", "dstack",
           "searchsorted", "bucketize"]


def _float(x) -> Tensor:
    x = as_tensor(x)
    return x if x.type.is_float else cast(x, "float32")


def _ranks(name: str, **tensors) -> None:
    for what, (t, rank) in tensors.items():
        if t.ndim != rank:
            raise ValueError(f"{name}: {what} must be {rank}-D, got {tuple(t.shape)}")


# ---------------------------------------------------------------- products
def mm(input, mat2) -> Tensor:
    a, b = as_tensor(input), as_tensor(mat2)
    _ranks("mm", input=(a, 2), mat2=(b, 2))
    return matmul(a, b)


def mv(input, vec) -> Tensor:
    a, v = as_tensor(input), as_tensor(vec)
    _ranks("mv", input=(a, 2), vec=(v, 1))
    return matmul(a, v)


def dot(input, other) -> Tensor:
    a, b = as_tensor(input), as_tensor(other)
    _ranks("dot", input=(a, 1), other=(b, 1))
    return sum(a * b)


def bmm(input, mat2) -> Tensor:
    a, b = as_tensor(input), as_tensor(mat2)
    _ranks("bmm", input=(a, 3), mat2=(b, 3))
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"bmm: batch sizes differ: {tuple(a.shape)} and {tuple(b.shape)}")
    return matmul(a, b)


def _scaled_sum(input, product, beta, alpha) -> Tensor:
    """beta * input + alpha * product, as torch's addmm family (beta = 0 ignores input,
    NaN included)."""
    p = product if alpha == 1 else product * alpha
    if beta == 0:
        return p
    i = as_tensor(input)
    return (i if beta == 1 else i * beta) + p


def addmm(input, mat1, mat2, *, beta=1, alpha=1) -> Tensor:
    return _scaled_sum(input, mm(mat1, mat2), beta, alpha)


def addmv(input, mat, vec, *, beta=1, alpha=1) -> Tensor:
    return _scaled_sum(input, mv(mat, vec), beta, alpha)


def baddbmm(input, batch1, batch2, *, beta=1, alpha=1) -> Tensor:
    return _scaled_sum(input, bmm(batch1, batch2), beta, alpha)


def outer(input, vec2) -> Tensor:
    a, b = as_tensor(input), as_tensor(vec2)
    _ranks("outer", input=(a, 1), vec2=(b, 1))
    return reshape(a, (-1, 1)) * reshape(b, (1, -1))


def inner(input, other) -> Tensor:
    """Sums over the last axis of both (a product of scalars when either is 0-d)."""
    a, b = as_tensor(input), as_tensor(other)
    if a.ndim == 0 or b.ndim == 0:
        return a * b
    return tensordot(a, b, ([-1], [-1]))


def tensordot(a, b, dims=2) -> Tensor:
    """Sums over ``dims`` (a count of a's last and b's first axes, or two lists)."""
    from .functional_tensor import einsum
    a, b = as_tensor(a), as_tensor(b)
    if isinstance(dims, (int, np.integer)):
        da, db = list(range(a.ndim - int(dims), a.ndim)), list(range(int(dims)))
    else:
        da, db = [list(d) if isinstance(d, (list, tuple)) else [d] for d in dims]
    da = [wrap_dim(d, a.ndim) for d in da]
    db = [wrap_dim(d, b.ndim) for d in db]
    if len(da) != len(db) or any(a.shape[i] != b.shape[j] for i, j in zip(da, db)):
        raise ValueError(f"tensordot: axes {da} of {tuple(a.shape)} and {db} of "
                         f"{tuple(b.shape)} do not match")
    letters = "abcdefghijklmnopqrstuvwxyz"
    la = list(letters[:a.ndim])
    lb = [None] * b.ndim
    for i, j in zip(da, db):
        lb[j] = la[i]
    rest = iter(letters[a.ndim:])
    lb = [c if c is not None else next(rest) for c in lb]
    out = [c for i, c in enumerate(la) if i not in da] + [c for j, c in enumerate(lb)
                                                          if j not in db]
    return einsum(f"{''.join(la)},{''.join(lb)}->{''.join(out)}", a, b)


def cross(input, other, dim=None) -> Tensor:
    """The cross product of 3-vectors along ``dim`` (default: the first axis of size 3)."""
    a, b = as_tensor(input), as_tensor(other)
    if dim is None:
        dim = next((i for i, s in enumerate(a.shape) if s == 3), None)
        if dim is None:
            raise ValueError(f"cross: no axis of size 3 in {tuple(a.shape)}")
    d = wrap_dim(dim, a.ndim)
    if a.shape[d] != 3 or b.shape[d] != 3:
        raise ValueError(f"cross: axis {dim} must have size 3, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")

    def c(t, i):
        return narrow(t, d, i, 1)
    from .functional_core import cat
    return cat([c(a, 1) * c(b, 2) - c(a, 2) * c(b, 1), c(a, 2) * c(b, 0) - c(a, 0) * c(b, 2),
                c(a, 0) * c(b, 1) - c(a, 1) * c(b, 0)], d)


# ---------------------------------------------------------------- elementwise
def reciprocal(input) -> Tensor:
    from .functional_core import div
    return div(1.0, _float(input))


def lerp(input, end, weight) -> Tensor:
    """start + w (end - start), as torch: from the end's side for |w| >= 1/2, so w = 1 gives
    end exactly."""
    s, e = as_tensor(input), as_tensor(end)
    w = as_tensor(weight, s)
    d = e - s
    return where(abs(w) < 0.5, s + w * d, e - d * (1 - w))


def hypot(input, other) -> Tensor:
    a, b = _float(input), _float(other)
    return sqrt(a * a + b * b)


def logaddexp(input, other) -> Tensor:
    """log(e^a + e^b) as max + log1p(e^-|a - b|); two equal infinities give themselves."""
    from .functional_tensor import isinf
    a, b = _float(input), _float(other)
    both = eq(a, b) & isinf(a)          # inf - inf would be NaN: the infinity itself
    gap = where(both, 0.0, abs(a - b))
    return where(both, a, maximum(a, b) + log1p(exp(-gap)))


def logaddexp2(input, other) -> Tensor:
    ln2 = math.log(2.0)
    return logaddexp(_float(input) * ln2, _float(other) * ln2) / ln2


def xlogy(input, other) -> Tensor:
    """x log y, 0 where x is 0 (and y is not NaN), as torch."""
    x, y = _float(input), _float(other)
    # torch's gradients too: log(y) by x (0 where x = 0 and y <= 0), x / y by y
    off = eq(x, 0) & (y <= 0)
    return x * where(off, 0.0, log(where(off, 1.0, y)))


def logit(input, eps=None) -> Tensor:
    x = _float(input)
    if eps is not None:
        from .functional_core import clamp
        x = clamp(x, float(eps), 1.0 - float(eps))
    return log(x / (1 - x))


def log2(input) -> Tensor:
    return log(_float(input)) * (1 / math.log(2.0))


def log10(input) -> Tensor:
    return log(_float(input)) * (1 / math.log(10.0))


def exp2(input) -> Tensor:
    return exp(_float(input) * math.log(2.0))


def sinh(input) -> Tensor:
    """(e^x - e^-x) / 2 through expm1, exact to the last bits near 0."""
    x = _float(input)
    return (expm1(x) - expm1(-x)) * 0.5


def cosh(input) -> Tensor:
    x = _float(input)
    return (exp(x) + exp(-x)) * 0.5


def tan(input) -> Tensor:
    from .functional_core import cos
    x = _float(input)
    return sin(x) / cos(x)


def sinc(input) -> Tensor:
    """sin(pi x) / (pi x), 1 at 0."""
    x = _float(input)
    zero = eq(x, 0)
    px = where(zero, 1.0, x) * math.pi
    return where(zero, 1.0, sin(px) / px)


def deg2rad(input) -> Tensor:
    return _float(input) * (math.pi / 180.0)


def rad2deg(input) -> Tensor:
    return _float(input) * (180.0 / math.pi)


def addcmul(input, tensor1, tensor2, *, value=1) -> Tensor:
    return as_tensor(input) + as_tensor(tensor1) * as_tensor(tensor2) * value


def addcdiv(input, tensor1, tensor2, *, value=1) -> Tensor:
    return as_tensor(input) + as_tensor(tensor1) / as_tensor(tensor2) * value


def nansum(input, dim=None, keepdim: bool = False) -> Tensor:
    """The sum with NaN taken as 0."""
    x = as_tensor(input)
    return sum(where(isnan(x), 0.0, x), dim, keepdim) if x.type.is_float else \
        sum(x, dim, keepdim)


def nanmean(input, dim=None, keepdim: bool = False) -> Tensor:
    """The mean of the elements that are not NaN."""
    x = _float(input)
    count = sum(cast(~isnan(x), x.dtype), dim, keepdim)
    return nansum(x, dim, keepdim) / count


def count_nonzero(input, dim=None) -> Tensor:
    x = as_tensor(input)
    return sum(cast(~eq(x, 0), "int64"), dim)


# ---------------------------------------------------------------- diagonals
def diagonal(input, offset: int = 0, dim1: int = 0, dim2: int = 1) -> Tensor:
    """The diagonal of the (dim1, dim2) planes, appended as the last axis (torch's)."""
    x = as_tensor(input)
    d1, d2 = wrap_dim(dim1, x.ndim), wrap_dim(dim2, x.ndim)
    if d1 == d2:
        raise ValueError(f"diagonal: dim1 and dim2 are the same axis ({dim1}, {dim2})")
    x = movedim(x, (d1, d2), (-2, -1))
    rows, cols = x.shape[-2], x.shape[-1]
    n = max(0, min(rows, cols - offset) if offset >= 0 else min(rows + offset, cols))
    r0, c0 = (0, offset) if offset >= 0 else (-offset, 0)
    if n == 0:
        return narrow(narrow(x, -1, 0, 0), -2, 0, 1)[..., 0, :]
    i = np.arange(n) + r0
    j = np.arange(n) + c0
    return x[..., i, j]


def trace(input) -> Tensor:
    x = as_tensor(input)
    _ranks("trace", input=(x, 2))
    return sum(diagonal(x))


def diag_embed(input, offset: int = 0, dim1: int = -2, dim2: int = -1) -> Tensor:
    """Each last-axis vector as the ``offset`` diagonal of a square matrix (dims -2, -1)."""
    x = as_tensor(input)
    if (dim1, dim2) not in ((-2, -1), (x.ndim - 1, x.ndim)):
        raise NotImplementedError("diag_embed: only dim1=-2, dim2=-1 are supported")
    n, k = x.shape[-1], int(offset)
    extra = k if k >= 0 else -k
    size = n + extra
    # x padded to the matrix size, read at the row (offset >= 0) or the column of each entry
    padded = pad(x, (0, extra))
    r = np.arange(size).reshape(-1, 1)
    c = np.arange(size).reshape(1, -1)
    on = as_tensor(c - r == k)
    along = reshape(padded, x.shape[:-1] + ((size, 1) if offset >= 0 else (1, size)))
    return where(on, along, 0.0 * along)


def diag(input, diagonal_: int = 0, **kw) -> Tensor:
    """A vector's diagonal matrix, or a matrix's diagonal (torch.diag; ``diagonal=`` too)."""
    k = kw.pop("diagonal", diagonal_)
    if kw:
        raise TypeError(f"diag: unexpected arguments {sorted(kw)}")
    x = as_tensor(input)
    if x.ndim == 1:
        return diag_embed(x, k)
    if x.ndim == 2:
        return diagonal(x, k)
    raise ValueError(f"diag: input must be 1-D or 2-D, got {tuple(x.shape)}")


# ---------------------------------------------------------------- moments, distances
def var_mean(input, dim=None, unbiased=None, keepdim: bool = False, *, correction=None):
    x = as_tensor(input)
    return (var(x, dim, unbiased, keepdim, correction=correction),
            mean(x, dim, keepdim=keepdim))


def std_mean(input, dim=None, unbiased=None, keepdim: bool = False, *, correction=None):
    x = as_tensor(input)
    return (std(x, dim, unbiased, keepdim, correction=correction),
            mean(x, dim, keepdim=keepdim))


def cdist(x1, x2, p: float = 2.0, compute_mode=None) -> Tensor:
    """p-norm distances between the rows of x1 (..., P, M) and x2 (..., R, M): (..., P, R)."""
    a, b = as_tensor(x1), as_tensor(x2)
    if a.ndim < 2 or b.ndim < 2 or a.shape[-1] != b.shape[-1]:
        raise ValueError(f"cdist: x1 {tuple(a.shape)} and x2 {tuple(b.shape)} must be "
                         f"(..., P, M) and (..., R, M)")
    diff = reshape(a, a.shape[:-1] + (1, a.shape[-1])) - \
        reshape(b, b.shape[:-2] + (1,) + b.shape[-2:])
    return vector_norm(diff, p, dim=-1)


# ---------------------------------------------------------------- scans, order statistics
def _cum_extreme(input, dim: int, larger: bool) -> MinMax:
    """torch's cummax / cummin: the running extreme and the index where it was last reached
    (ties take the later index; a NaN, once met, stays, at the latest NaN's index), as a
    log-depth scan of (value, index) pairs; the values are then read at the indices, so
    the gradient goes where torch's does."""
    from .functional_core import broadcast_to
    from .functional_tensor import detach
    x = as_tensor(input)
    if x.ndim == 0:
        return MinMax(x, cast(eq(x, x), "int64") * 0)
    d = wrap_dim(dim, x.ndim)
    n = x.shape[d]
    shape = [1] * x.ndim
    shape[d] = n
    v = detach(x)
    idx = broadcast_to(reshape(arange(n, dtype="int64"), tuple(shape)), tuple(x.shape))
    step = 1
    while step < n:
        pads = [0] * (2 * x.ndim)
        pads[2 * (x.ndim - 1 - d)] = step
        ev = pad(narrow(v, d, 0, n - step), pads)
        ei = pad(narrow(idx, d, 0, n - step), pads, value=-1)    # -1: before the start
        later = ((v >= ev) if larger else (v <= ev)) | (ei < 0)
        if v.type.is_float:
            later = later | isnan(v)
        v = where(later, v, ev)
        idx = where(later, idx, ei)
        step *= 2
    return MinMax(take_along_dim(x, idx, d), idx)


def cummax(input, dim: int) -> MinMax:
    return _cum_extreme(input, dim, True)


def cummin(input, dim: int) -> MinMax:
    return _cum_extreme(input, dim, False)


def logcumsumexp(input, dim: int) -> Tensor:
    """log(cumsum(exp(x))) as a log-depth scan of ``logaddexp``."""
    return inclusive_scan(_float(input), dim, logaddexp, -math.inf)


def median(input, dim=None, keepdim: bool = False):
    """The lower median (the ((n - 1) // 2)-th in order): of all elements (no dim), or along
    ``dim`` with its index; NaN where the slice holds one (at the first NaN's index), as
    torch."""
    from .functional_core import argmax, squeeze
    x = as_tensor(input)
    if dim is None:
        flat = reshape(x, (-1,))
        value = median(flat, 0).values
        if not x.type.is_float:
            return value
        # torch's gradient: shared evenly by the elements equal to the median (the NaNs,
        # when it is NaN); the value itself stays the median exactly
        from .functional_tensor import detach
        v = detach(value)
        hit = where(isnan(v), isnan(flat), eq(flat, v))
        share = sum(where(hit, flat, 0.0)) / cast(sum(cast(hit, "int32")), x.dtype)
        return v + (share - detach(share))
    d = wrap_dim(dim, max(x.ndim, 1))
    n = x.shape[d] if x.ndim else 1
    s = sort(x, d, stable=True)
    k = (n - 1) // 2
    vals, idx = narrow(s.values, d, k, 1), narrow(s.indices, d, k, 1)
    if x.type.is_float:
        nans = isnan(x)
        first = argmax(cast(nans, "int32"), d, keepdim=True)      # the first NaN's index
        has = take_along_dim(nans, first, d)
        vals = where(has, take_along_dim(x, first, d), vals)
        idx = where(has, first, idx)
    if not keepdim:
        vals, idx = squeeze(vals, d), squeeze(idx, d)
    return MinMax(vals, idx)


def rot90(input, k: int = 1, dims=(0, 1)) -> Tensor:
    """``torch.rot90``: ``k`` quarter turns in the plane of ``dims``, from the first
    towards the second (k < 0 the other way)."""
    x = as_tensor(input)
    dims = list(dims)
    if len(dims) != 2:
        raise ValueError(f"rot90: dims must be two dims, got {dims}")
    if x.ndim < 2:
        raise ValueError(f"rot90: input must have at least 2 dims, got shape {list(x.shape)}")
    a, b = (wrap_dim(d, x.ndim) for d in dims)
    if a == b:
        raise ValueError(f"rot90: dims {dims} must differ")
    k = int(k) % 4
    if k == 1:
        return transpose(flip(x, (b,)), a, b)
    if k == 2:
        return flip(x, (a, b))
    if k == 3:
        return flip(transpose(x, a, b), (b,))
    return x


def tensor_split(input, indices_or_sections, dim: int = 0) -> tuple[Tensor, ...]:
    """``torch.tensor_split``: ``n`` pieces as equal as they come (the first ``size % n``
    one longer), or the pieces between the listed indices (clamped to the dimension; an
    index below the one before gives an empty piece)."""
    x = as_tensor(input)
    if x.ndim == 0:
        raise ValueError("tensor_split: a 0-d tensor has no dimension to split")
    d = wrap_dim(dim, x.ndim)
    n = x.shape[d]
    if isinstance(indices_or_sections, (int, np.integer)):
        parts = int(indices_or_sections)
        if parts <= 0:
            raise ValueError(f"tensor_split: sections must be positive, got {parts}")
        sizes = [n // parts + (1 if i < n % parts else 0) for i in range(parts)]
        bounds = np.cumsum([0] + sizes)
        pairs = zip(bounds[:-1], bounds[1:])
    else:
        cuts = [int(i) for i in np.asarray(indices_or_sections).reshape(-1)]
        cuts = [min(max(c + n if c < 0 else c, 0), n) for c in cuts]
        pairs = zip([0] + cuts, cuts + [n])
    return tuple(narrow(x, d, int(lo), max(int(hi) - int(lo), 0)) for lo, hi in pairs)


def isclose(input, other, rtol: float = 1e-05, atol: float = 1e-08,
            equal_nan: bool = False) -> Tensor:
    """``torch.isclose``: ``|a - b| <= atol + rtol |b|`` where both are finite, equal values
    (infinities of one sign) always, two NaNs with ``equal_nan``; integers exactly when the
    tolerances are 0, else compared as float64."""
    a, b = promote(as_tensor(input), as_tensor(other))
    if rtol < 0 or atol < 0:
        raise ValueError(f"isclose: rtol ({rtol}) and atol ({atol}) must be non-negative")
    same = eq(a, b)
    if not a.type.is_float:
        if rtol == 0 and atol == 0:
            return same
        a, b = cast(a, "float64"), cast(b, "float64")
    near = le(abs(sub(a, b)), add(mul(abs(b), rtol), atol))
    out = logical_or(same, logical_and(logical_and(isfinite(a), isfinite(b)), near))
    return logical_or(out, logical_and(isnan(a), isnan(b))) if equal_nan else out


def allclose(input, other, rtol: float = 1e-05, atol: float = 1e-08,
             equal_nan: bool = False) -> Tensor:
    """``torch.allclose``: every element ``isclose`` (a 0-d bool tensor; ``bool()`` of it
    outside a trace)."""
    return all_elements(isclose(input, other, rtol, atol, equal_nan))


def isneginf(input) -> Tensor:
    x = as_tensor(input)
    return eq(x, -math.inf) if x.type.is_float else eq(x, x + 1)


def isposinf(input) -> Tensor:
    x = as_tensor(input)
    return eq(x, math.inf) if x.type.is_float else eq(x, x + 1)


def fmax(input, other) -> Tensor:
    """``torch.fmax``: the larger, a NaN only where both are (the gradient to ``input`` on
    ties, as torch's)."""
    a, b = promote(as_tensor(input), as_tensor(other))
    if not a.type.is_float:
        return maximum(a, b)
    return where(logical_or(ge(a, b), isnan(b)), a, b)


def fmin(input, other) -> Tensor:
    """``torch.fmin``: the smaller, a NaN only where both are."""
    a, b = promote(as_tensor(input), as_tensor(other))
    if not a.type.is_float:
        return where(le(a, b), a, b)
    return where(logical_or(le(a, b), isnan(b)), a, b)


def true_divide(input, other) -> Tensor:
    """``torch.true_divide``: ``div`` without rounding."""
    return div(input, other)


def erfc(input) -> Tensor:
    """``1 - erf(x)``."""
    return 1.0 - erf(_float(input))


def diff(input, n: int = 1, dim: int = -1, prepend=None, append=None) -> Tensor:
    """``torch.diff``: the ``n``-th forward difference along ``dim`` (``prepend`` /
    ``append`` joined first); booleans differ by "not equal", as torch's."""
    x = as_tensor(input)
    if x.ndim == 0:
        raise ValueError("diff: expected at least a 1-dimensional tensor")
    d = wrap_dim(dim, x.ndim)
    parts = [as_tensor(t, x) for t in (prepend, x, append) if t is not None]
    parts = [p if p.ndim == x.ndim else broadcast_to(
        unsqueeze(p, d) if p.ndim == x.ndim - 1 else p,
        tuple(1 if a == d else s for a, s in enumerate(x.shape))) for p in parts]
    x = cat(parts, d) if len(parts) > 1 else x
    for _ in range(int(n)):
        m = x.shape[d]
        if m == 0:
            break
        hi, lo = narrow(x, d, 1, m - 1), narrow(x, d, 0, m - 1)
        x = (hi != lo) if x.dtype == "bool" else hi - lo
    return x


def kron(input, other) -> Tensor:
    """``torch.kron``: the Kronecker product (each entry of ``input`` times all of
    ``other``), ranks padded with leading 1s."""
    a, b = as_tensor(input), as_tensor(other)
    r = max(a.ndim, b.ndim)
    a = reshape(a, (1,) * (r - a.ndim) + tuple(a.shape))
    b = reshape(b, (1,) * (r - b.ndim) + tuple(b.shape))
    wide_a = reshape(a, tuple(s for d in a.shape for s in (d, 1)))
    wide_b = reshape(b, tuple(s for d in b.shape for s in (1, d)))
    return reshape(wide_a * wide_b, tuple(p * q for p, q in zip(a.shape, b.shape)))


def meshgrid(*tensors, indexing: str = "ij") -> tuple[Tensor, ...]:
    """``torch.meshgrid``: 1-D tensors broadcast to a grid; ``indexing="xy"`` swaps the first
    two axes (numpy's default, torch's when asked)."""
    if len(tensors) == 1 and isinstance(tensors[0], (list, tuple)):
        tensors = tuple(tensors[0])
    if indexing not in ("ij", "xy"):
        raise ValueError(f"meshgrid: indexing must be 'ij' or 'xy', got {indexing!r}")
    ts = [reshape(as_tensor(t), (-1,)) for t in tensors]
    shape = tuple(t.shape[0] for t in ts)
    grids = [broadcast_to(reshape(t, tuple(-1 if i == k else 1 for i in range(len(ts)))),
                          shape) for k, t in enumerate(ts)]
    if indexing == "xy" and len(ts) >= 2:
        grids = [transpose(g, 0, 1) for g in grids]
    return tuple(grids)


def cartesian_prod(*tensors) -> Tensor:
    """``torch.cartesian_prod``: every combination, one per row (one tensor: itself)."""
    if len(tensors) == 1:
        return as_tensor(tensors[0])
    grids = meshgrid(*tensors, indexing="ij")
    return stack([reshape(g, (-1,)) for g in grids], 1)


def swapaxes(input, axis0: int, axis1: int) -> Tensor:
    return transpose(as_tensor(input), axis0, axis1)


swapdims = swapaxes


def _at_least(t: Tensor, rank: int) -> Tensor:
    if t.ndim >= rank:
        return t
    if rank == 3 and t.ndim == 2:
        return unsqueeze(t, 2)
    return reshape(t, (1,) * (rank - max(t.ndim, 1)) + (tuple(t.shape) or (1,)))


def hstack(tensors) -> Tensor:
    """``torch.hstack``: along dim 1 (dim 0 for 1-D tensors)."""
    ts = [as_tensor(t) for t in tensors]
    ts = [_at_least(t, 1) for t in ts]
    return cat(ts, 0 if ts[0].ndim == 1 else 1)


def vstack(tensors) -> Tensor:
    """``torch.vstack``: along dim 0, 1-D tensors as rows."""
    return cat([_at_least(as_tensor(t), 2) for t in tensors], 0)


def dstack(tensors) -> Tensor:
    """``torch.dstack``: along dim 2 (1-D as (1, n, 1), 2-D as (m, n, 1))."""
    ts = []
    for t in tensors:
        t = as_tensor(t)
        if t.ndim <= 1:
            t = reshape(t, (1, -1, 1))
        ts.append(_at_least(t, 3))
    return cat(ts, 2)


def searchsorted(sorted_sequence, input, *, out_int32: bool = False, right: bool = False,
                 side: str | None = None, sorter=None) -> Tensor:
    """``torch.searchsorted``: for each value, the number of entries of the sorted last
    dim below it (``right``/``side="right"``: at most it); a 1-D sequence serves every
    value, an N-D one its own row (leading dims equal)."""
    if sorter is not None:
        raise NotImplementedError("searchsorted: sorter is not supported; sort first")
    if side is not None:
        if side not in ("left", "right") or (right and side == "left"):
            raise ValueError(f"searchsorted: side must be 'left' or 'right' (and agree with "
                             f"right), got {side!r}")
        right = side == "right"
    seq = as_tensor(sorted_sequence)
    v = as_tensor(input, seq)
    scalar = v.ndim == 0
    if scalar:
        v = reshape(v, (1,))
    if seq.ndim > 1 and tuple(seq.shape[:-1]) != tuple(v.shape[:-1]):
        raise ValueError(f"searchsorted: the sequence's leading dims {list(seq.shape[:-1])} "
                         f"must be the values' {list(v.shape[:-1])}")
    below = (le if right else lt)(unsqueeze(seq, -2) if seq.ndim > 1 else seq,
                                  unsqueeze(v, -1))
    out = sum(cast(below, "int32" if out_int32 else "int64"), -1)
    return reshape(out, ()) if scalar else out


def bucketize(input, boundaries, *, out_int32: bool = False, right: bool = False) -> Tensor:
    """``torch.bucketize``: the bucket of each value among 1-D sorted ``boundaries``
    (``right``: a value equal to a boundary goes to its right)."""
    b = as_tensor(boundaries)
    if b.ndim != 1:
        raise ValueError(f"bucketize: boundaries must be 1-D, got {list(b.shape)}")
    return searchsorted(b, input, out_int32=out_int32, right=right)
