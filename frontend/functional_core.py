"""The core of ``frontend.F``: one function per core op (arithmetic, comparisons, reductions,
shapes, basic indexing, softmax), with ``torch``'s names, arguments and type promotion; each adds
IR nodes to the current trace. The other ``functional_*`` modules and ``compositions`` build on
these; functional.py is the namespace that gathers them all."""
from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import numpy as np

from irgraph.ops.core import normalize_axes, reduced_shape, wrap_dim
from irgraph.registry import ops_with
from irgraph.types import LOW_DTYPES, TensorType, canonical_dtype

from .tracing import Tensor, current_tracer


# ---------------------------------------------------------------- conversions
def as_tensor(x, like: Tensor | None = None) -> Tensor:
    """A Tensor for ``x``: tensors pass through; parameters become graph parameters; Python
    numbers and numpy arrays become constants (numbers take ``like``'s dtype)."""
    if isinstance(x, Tensor):
        return x
    tr = like.tracer if like is not None else current_tracer()
    if (not isinstance(x, np.ndarray) and isinstance(getattr(x, "data", None), np.ndarray)
            and hasattr(x, "requires_grad")):       # (a bfloat16 array's .data raises)
        return Tensor(tr.param_value(x), tr)
    if isinstance(x, (bool, int, float, np.number, np.bool_)):
        dtype = _scalar_dtype(x, like)
        if dtype == "int32" and isinstance(x, (int, np.integer)) and not isinstance(x, bool):
            x = (int(x) + 2**31) % 2**32 - 2**31   # wrapped into int32, as torch's scalar
        big = isinstance(x, (int, np.integer)) and not -2**53 <= int(x) <= 2**53
        if dtype == "int64" and big:
            # past 2^53 a float64 attribute would round it: the exact integer as an array
            return tr.emit("constant", value=np.array(int(x), np.int64))
        return tr.emit("full", shape=(), value=float(x), dtype=dtype)
    arr = np.asarray(x)
    if arr.dtype == np.float64 and (like is None or like.dtype == "float32"):
        arr = arr.astype(np.float32)
    return tr.emit("constant", value=arr)


def in_float32(fn):
    """Decorator of a composition of several ops: on a float16/bfloat16 input it computes in
    float32 and rounds its result once, as torch's (its "opmath"), instead of rounding after
    each op (a float16 layer norm of values near 300 squares them past 65504: all zeros;
    a bfloat16 mean near 100 is rounded to 0.5 before it is subtracted). Other inputs run
    as they are."""
    @functools.wraps(fn)
    def run(input, *args, **kwargs):
        x = as_tensor(input)
        if x.dtype not in LOW_DTYPES:
            return fn(x, *args, **kwargs)
        return cast(fn(cast(x, "float32"), *args, **kwargs), x.dtype)
    return run


_KINDS = {"bool": 0, "int32": 1, "int64": 1, "float32": 2, "float64": 2, "float16": 2,
          "bfloat16": 2}


def _widest(dtypes) -> str:
    """The widest of dtypes of one kind; float16 with bfloat16 gives float32 (PyTorch's
    rule: neither holds the other)."""
    names = set(dtypes)
    if names == {"float16", "bfloat16"}:
        return "float32"
    return sorted(names, key=lambda d: (np.dtype(d).itemsize, d))[-1]


def _scalar_dtype(x, like: Tensor | None) -> str:
    """PyTorch's rule: a Python number takes the tensor's dtype unless it is of a higher kind
    (bool < int < float); then it takes that kind's default (int64, float32)."""
    kind = 0 if isinstance(x, (bool, np.bool_)) else 1 if isinstance(x, (int, np.integer)) else 2
    own = ("bool", "int64", "float32")[kind]
    if like is None or kind > _KINDS[like.dtype]:
        return own
    return like.dtype


def result_dtype(*xs: Tensor) -> str:
    """PyTorch's type promotion: the highest kind (bool < int < float) wins, then the widest
    dtype of that kind; 0-d tensors count only when their kind is above every other's."""
    def best(group):
        top = np.max([_KINDS[x.dtype] for x in group])
        return top, _widest(x.dtype for x in group if _KINDS[x.dtype] == top)
    shaped, zero = [x for x in xs if x.ndim], [x for x in xs if not x.ndim]
    if not shaped or not zero:
        return best(xs)[1]
    (ks, ds), (kz, dz) = best(shaped), best(zero)
    return dz if kz > ks else ds


def promote(a, b) -> tuple[Tensor, Tensor]:
    if not isinstance(a, Tensor):
        b = as_tensor(b)
        a = as_tensor(a, b)
    else:
        b = as_tensor(b, a)
    if a.dtype != b.dtype:
        dt = result_dtype(a, b)
        a, b = cast(a, dt), cast(b, dt)
    return a, b


def emit_op(op: str, *xs: Tensor, **attrs):
    """Op ``op`` of tensors ``xs`` (at least one) in their tracer; its output(s)."""
    return xs[0].tracer.emit(op, *xs, **attrs)


def cast(x: Tensor, dtype: str) -> Tensor:
    x = as_tensor(x)
    return x if x.dtype == TensorType((), dtype).dtype else emit_op("cast", x, dtype=dtype)


# ---------------------------------------------------------------- elementwise
def _binary(op):
    def f(a, b):
        a, b = promote(a, b)
        return emit_op(op, a, b)
    f.__name__ = op
    return f


maximum, minimum = (_binary(n) for n in ("maximum", "minimum"))


def mul(a, b) -> Tensor:
    """``a * b``; of two bool tensors a logical and, as torch."""
    a, b = promote(a, b)
    return emit_op("logical_and" if a.dtype == b.dtype == "bool" else "mul", a, b)


def pow(a, b) -> Tensor:
    """``a ** b``. An integer tensor to a negative Python integer is an error, as torch's; a
    negative element of an integer exponent tensor gives torch's integer result (0, or +-1
    for a base of +-1)."""
    a, b_ = promote(a, b)
    if (isinstance(b, (int, np.integer)) and not isinstance(b, bool) and b < 0
            and not a.type.is_float and a.dtype != "bool"):
        raise ValueError(f"pow: integers to negative integer powers are not allowed "
                         f"({a.dtype} tensor ** {b})")
    return emit_op("pow", a, b_)


def _scaled(op: str, a, b, alpha) -> Tensor:
    """``a op alpha * b`` (torch's ``alpha=``): alpha must not be of a higher kind than the
    operands (no float alpha for integer tensors, only a bool one for bool tensors)."""
    a, b = promote(a, b)
    if not (isinstance(alpha, (int, np.integer)) and not isinstance(alpha, bool) and alpha == 1):
        if isinstance(alpha, (bool, np.bool_)) or not isinstance(
                alpha, (int, float, np.integer, np.floating)):
            raise TypeError(f"{op}: alpha must be a number, got {alpha!r}")
        if not b.type.is_float and isinstance(alpha, (float, np.floating)):
            raise TypeError(f"{op}: for integral tensors ({b.dtype}) alpha must not be a "
                            f"floating point number, got {alpha!r}")
        b = emit_op("mul", b, as_tensor(alpha, b))
    if a.dtype == "bool" and b.dtype == "bool":     # torch: a logical or; no bool minus
        if op == "sub":
            raise TypeError("sub: subtraction of two bool tensors is not supported; use "
                            "logical_xor or ~ (as torch)")
        return emit_op("logical_or", a, b)
    return emit_op(op, a, b)


def add(a, b, *, alpha=1) -> Tensor:
    """``torch.add``: ``a + alpha * b``."""
    return _scaled("add", a, b, alpha)


def sub(a, b, *, alpha=1) -> Tensor:
    """``torch.sub``: ``a - alpha * b``."""
    return _scaled("sub", a, b, alpha)


_INTEGRAL = {"float16": 2.0 ** 10, "bfloat16": 2.0 ** 7, "float32": 2.0 ** 23,
             "float64": 2.0 ** 52}          # |q| at least this is an integer


def _trunc(q: Tensor) -> Tensor:
    """``q`` rounded toward zero, through int64 where |q| is small enough to be inexact and
    ``q`` itself elsewhere (integers already, infinities, NaN: never converted); a zero keeps
    the sign of ``q`` (trunc(-0.5) is -0.0)."""
    small = lt(abs(q), _INTEGRAL[q.dtype])
    t = where(small, cast(cast(where(small, q, 0.0), "int64"), q.dtype), q)
    return where(eq(t, 0.0), mul(q, 0.0), t)


def exact_floor(x: Tensor) -> Tensor:
    """``x`` rounded toward -inf, exactly: ``x - fmod(x, 1)``, one less where that fraction is
    negative; infinities and NaN (whose fraction is NaN) stay as they are."""
    frac = emit_op("fmod", x, as_tensor(1.0, x))
    f = emit_op("sub", x, frac)
    f = where(lt(frac, 0.0), sub(f, 1.0), f)
    return where(ne(frac, frac), x, f)


def _floor_div(a: Tensor, b: Tensor) -> Tensor:
    """torch's (and Python's) float floor division, in the operands' dtype, step for step as
    torch's ``div_floor_floating``: ``a / b`` where ``b`` is 0; else ``(a - fmod(a, b)) / b``,
    one less where the remainder's sign differs from ``b``'s, floored and moved up where that
    left more than 0.5 (the quotient is then integral up to rounding), and a zero quotient
    takes the sign of ``a / b``. ``1.0 // 0.1`` is 9: ``fmod(1.0, 0.1)`` is 0.0999..., exact."""
    q = emit_op("div", a, b)
    mod = emit_op("fmod", a, b)
    d = emit_op("div", emit_op("sub", a, mod), b)
    d = where(logical_and(ne(mod, 0.0), ne(lt(b, 0.0), lt(mod, 0.0))), sub(d, 1.0), d)
    f = exact_floor(d)
    f = where(gt(sub(d, f), 0.5), add(f, 1.0), f)
    f = where(eq(d, 0.0), mul(q, 0.0), f)     # |q| < 1 there: the zero of q's sign
    return where(eq(b, 0.0), q, f)


def div(a, b, rounding_mode: str | None = None) -> Tensor:
    """``torch.div``: true division (integers divide as float32); ``rounding_mode="floor"``
    rounds the quotient toward -inf (the IR's integer ``div``; floats as ``_floor_div``),
    ``"trunc"`` toward zero. A rounded quotient has zero
    gradient, as in torch."""
    if rounding_mode is None:       # a Python int divides as a float (2**31 past int32)
        a, b = (float(v) if isinstance(v, (int, np.integer)) and not isinstance(
            v, (bool, np.bool_)) else v for v in (a, b))
    a, b = promote(a, b)
    if rounding_mode not in (None, "floor", "trunc"):
        raise ValueError(f"div expected rounding_mode to be one of None, 'trunc', or 'floor' "
                         f"but found {rounding_mode!r}")
    if a.dtype == "bool":
        to = "int64" if rounding_mode else "float32"
        a, b = cast(a, to), cast(b, to)
    if rounding_mode is None:
        if not a.type.is_float:
            a, b = cast(a, "float32"), cast(b, "float32")
        return emit_op("div", a, b)
    if not a.type.is_float:
        q = emit_op("div", a, b)                       # rounds toward -inf
        if rounding_mode == "floor":
            return q
        r = sub(a, mul(q, b))                        # toward zero: one up where signs differ
        return where(logical_and(ne(r, 0), ne(lt(a, 0), lt(b, 0))), add(q, 1), q)
    a, b = emit_op("stop_gradient", a), emit_op("stop_gradient", b)
    return _trunc(emit_op("div", a, b)) if rounding_mode == "trunc" else _floor_div(a, b)


def floor_divide(a, b) -> Tensor:
    """``a // b`` (``torch.floor_divide``): rounds the quotient toward -inf."""
    return _exact_div(a, b, rounding_mode="floor")


def _remainder_operands(name: str, a, b) -> tuple[Tensor, Tensor]:
    a, b = promote(a, b)
    if a.dtype == "bool":
        raise TypeError(f"{name}: not defined for bool tensors (cast them to a number first)")
    return a, b


def _int_remainder(a: Tensor, b: Tensor) -> Tensor:
    """Integer ``a - (a // b) * b`` (the IR's ``div`` rounds toward -inf): the sign of ``b``.
    ``x % 0`` is 0, as numpy's (torch raises; the kernels never divide by zero)."""
    r = sub(a, mul(emit_op("div", a, b), b))
    return where(eq(b, 0), as_tensor(0, r), r)


def fmod(a, b) -> Tensor:
    """``torch.fmod``: the remainder of ``a / b`` truncated, with the sign of ``a``; floats
    exactly (the ``fmod`` op, C's ``fmod``: ``fmod(x, 0)`` is NaN, ``fmod(x, inf)`` is ``x``),
    integers from the IR's integer ``div`` (``fmod(x, 0)`` is 0). Gradients as torch's:
    ``g`` to ``a``, ``-g * trunc(a / b)`` to ``b``."""
    a, b = _remainder_operands("fmod", a, b)
    if a.type.is_float:
        return emit_op("fmod", a, b)
    r = _int_remainder(a, b)
    return where(logical_and(ne(r, 0), ne(lt(r, 0), lt(a, 0))), sub(r, b), r)


def remainder(a, b) -> Tensor:
    """``torch.remainder`` (Python's ``%``): the remainder of ``a / b`` floored, with the sign
    of ``b``; floats as torch's kernel, ``fmod(a, b) + b`` where ``fmod`` is nonzero with a sign
    other than ``b``'s (``remainder(-0.5, inf)`` is inf, as torch); integers from the IR's
    integer ``div`` (``x % 0`` is 0)."""
    a, b = _remainder_operands("remainder", a, b)
    if not a.type.is_float:
        return _int_remainder(a, b)
    mod = emit_op("fmod", a, b)
    return where(logical_and(ne(mod, 0.0), ne(lt(b, 0.0), lt(mod, 0.0))), add(mod, b), mod)
eq, ne, lt, le, gt, ge = (_binary(n) for n in ("eq", "ne", "lt", "le", "gt", "ge"))
logical_and, logical_or = _binary("logical_and"), _binary("logical_or")


def _opmath(fn, reverse: bool = True):
    """torch's arithmetic of a float16/bfloat16 tensor with a Python number: the number kept
    in float32, the op computed there and its result rounded once (``x * 1e-8`` in float16
    is not ``x * 0``, nor ``x * 257`` in bfloat16 ``x * 256``). ``reverse``: also with the
    number first (torch's ``x // s`` computes so, ``s // x`` rounds s to x's dtype first)."""
    @functools.wraps(fn)
    def run(a, b, *args, **kwargs):
        for i, (t, s) in enumerate(((a, b), (b, a))):
            if i == 1 and not reverse:
                break
            if (isinstance(t, Tensor) and not isinstance(s, Tensor) and t.dtype in LOW_DTYPES
                    and isinstance(s, (float, int, np.floating, np.integer))
                    and not isinstance(s, (bool, np.bool_))):
                wide = cast(t, "float32")
                out = fn(wide, s, *args, **kwargs) if i == 0 else fn(s, wide, *args, **kwargs)
                return cast(out, t.dtype) if out.dtype == "float32" else out
        return fn(a, b, *args, **kwargs)
    return run


# remainder, fmod and pow round the number to the tensor's dtype first, as torch's
_exact_div = div
add, sub, mul, div = (_opmath(f) for f in (add, sub, mul, div))
floor_divide = _opmath(floor_divide, reverse=False)


def _unary(op):
    float_only = op in ops_with("float_only")

    def f(x):
        x = as_tensor(x)
        if float_only and not x.type.is_float:
            x = cast(x, "float32")
        return emit_op(op, x)
    f.__name__ = op
    return f


neg, exp, log, sqrt, rsqrt, tanh, sigmoid, relu, abs, _sign, square = (_unary(n) for n in (
    "neg", "exp", "log", "sqrt", "rsqrt", "tanh", "sigmoid", "relu", "abs", "sign", "square"))


def sign(x) -> Tensor:
    """-1, 0 or 1; 0 for NaN, as torch (numpy's sign, the op's, keeps NaN)."""
    x = as_tensor(x)
    s = _sign(x)
    return where(ne(x, x), 0.0, s) if x.type.is_float else s
erf = _unary("erf")
sin, cos = _unary("sin"), _unary("cos")


def check_fits(value, dtype: str, what: str, floats: bool = False) -> None:
    """torch's check when a Python integer fills an integer tensor (where, masked_fill,
    clamp, full): one outside the dtype's range is an error, not a wrapped value; with
    ``floats`` (an assignment, where no promotion widens the tensor) a float too."""
    kinds = (int, float, np.integer, np.floating) if floats else (int, np.integer)
    if isinstance(value, kinds) and not isinstance(value, (bool, np.bool_)) \
            and dtype in ("int32", "int64") and np.isfinite(value):
        info = np.iinfo(dtype)
        if not info.min <= int(value) <= info.max:
            raise ValueError(f"{what}: value {value} cannot be converted to type {dtype} "
                             f"without overflow")


def where(cond, x, y) -> Tensor:
    cond = as_tensor(cond)
    for a, b in ((x, y), (y, x)):
        if isinstance(b, Tensor):
            check_fits(a, b.dtype, "where")
    x, y = promote(x, y)
    if cond.dtype != "bool":
        cond = ne(cond, 0)
    return emit_op("where", cond, x, y)


def clamp(x, min=None, max=None) -> Tensor:
    """``torch.clamp``: ``min`` then ``max`` (a number or a tensor); at least one is given."""
    if min is None and max is None:
        raise ValueError("clamp: at least one of min and max must be given")
    # where(), not maximum/minimum: at a bound the gradient passes to x, as torch's clamp.
    # A NaN bound gives NaN (and no gradient), as torch's: a compare with it is never true
    for bound, beyond in ((min, lt), (max, gt)):
        if bound is None:
            continue
        x = as_tensor(x)
        check_fits(bound, x.dtype, "clamp")
        if isinstance(bound, (float, np.floating)) and np.isnan(bound):
            x = add(mul(x, 0.0), bound)
        elif isinstance(bound, (int, float, np.number)):
            x = where(beyond(x, bound), bound, x)
        else:
            b = as_tensor(bound, x)
            x = where(logical_or(beyond(x, b), ne(b, b)) if b.type.is_float else beyond(x, b),
                      b, x)
    return x


clip = clamp


def clamp_min(x, min) -> Tensor:
    return clamp(x, min=min)


def clamp_max(x, max) -> Tensor:
    return clamp(x, max=max)


# ---------------------------------------------------------------- reductions
def _axes(x: Tensor, dim):
    """The dims of a reduction over ``dim`` (an int or a sequence), each checked and made
    >= 0 by the registry's ``wrap_dim`` (torch's rule: rank r takes [-r, r-1], a 0-d tensor
    -1 and 0); None or () means every dim, as in torch."""
    if dim is None:
        return None
    dims = (dim,) if isinstance(dim, (int, np.integer)) else tuple(dim)
    if not dims:
        return None
    if len(set(wrap_dim(d, x.ndim) for d in dims)) != len(dims):
        raise ValueError(f"dim {dim} names a dimension more than once")
    return normalize_axes(dims, x.ndim)


def _count(x: Tensor, axes) -> int:
    """How many elements each result of a reduction over ``axes`` (as ``_axes`` gives) takes."""
    return int(np.prod([x.shape[a] for a in (range(x.ndim) if axes is None else axes)],
                       dtype=np.int64))


def _nonempty(x: Tensor, axes, name: str) -> None:
    """torch refuses a maximum or minimum over an empty dimension (it has no identity)."""
    for a in range(x.ndim) if axes is None else axes:
        if x.shape[a] == 0:
            raise IndexError(f"{name}(): expected reduction dim {a} of a tensor of shape "
                             f"{x.shape} to have non-zero size")
    if axes is None and x.numel() == 0:
        raise IndexError(f"{name}(): the tensor of shape {x.shape} is empty")


def sum(x, dim=None, keepdim: bool = False, dtype: str | None = None) -> Tensor:
    """``torch.sum``: bool and integer tensors sum as int64 unless ``dtype`` says otherwise."""
    x = as_tensor(x)
    if dtype is not None:
        x = cast(x, dtype)
    elif not x.type.is_float:
        x = cast(x, "int64")
    return emit_op("sum", x, axis=_axes(x, dim), keepdims=keepdim)


def mean(x, dim=None, keepdim: bool = False, dtype: str | None = None) -> Tensor:
    x = as_tensor(x)
    if dtype is not None:
        x = cast(x, dtype)
    return emit_op("mean", x if x.type.is_float else cast(x, "float32"), axis=_axes(x, dim),
                 keepdims=keepdim)


def amax(x, dim=None, keepdim: bool = False) -> Tensor:
    x = as_tensor(x)
    _nonempty(x, _axes(x, dim), "amax")
    return emit_op("max", x, axis=_axes(x, dim), keepdims=keepdim)


def amin(x, dim=None, keepdim: bool = False) -> Tensor:
    x = as_tensor(x)
    _nonempty(x, _axes(x, dim), "amin")
    return emit_op("min", x, axis=_axes(x, dim), keepdims=keepdim)


def argmax(x, dim: int | None = None, keepdim: bool = False) -> Tensor:
    x = as_tensor(x)
    if dim is None:
        _nonempty(x, None, "argmax")
        i = emit_op("argmax", reshape(x, (-1,)), axis=0, keepdims=False)
        return reshape(i, (1,) * x.ndim) if keepdim else i
    _nonempty(x, _axes(x, dim), "argmax")
    return emit_op("argmax", x, axis=wrap_dim(dim, x.ndim), keepdims=keepdim)


def argmin(x, dim: int | None = None, keepdim: bool = False) -> Tensor:
    """Index of the first minimum (torch's tie rule), as the first maximum of ``-x``; of
    ``-1 - x`` for integers (order-reversing too, and no overflow: -INT_MIN would wrap
    back to INT_MIN)."""
    x = as_tensor(x)
    if x.dtype == "bool":
        x = cast(x, "int64")
    return argmax(neg(x) if x.type.is_float else sub(-1, x), dim, keepdim)


class MinMax(NamedTuple):
    """What ``torch.max(x, dim)`` returns: ``values`` and ``indices`` (unpacks as a tuple)."""
    values: Tensor
    indices: Tensor


def max(x, dim=None, keepdim: bool = False):
    """``torch.max``: ``max(x)`` the maximum, ``max(x, dim)`` (values, indices) and
    ``max(x, other)`` the elementwise maximum."""
    if dim is None:
        return amax(x)
    if not isinstance(dim, (int, np.integer)):
        return maximum(x, dim)
    idx = argmax(x, dim, keepdim=True)
    return MinMax(_take_at(x, idx, dim, keepdim), idx if keepdim else squeeze(idx, dim))


def min(x, dim=None, keepdim: bool = False):
    """``torch.min``: as ``max`` with minima."""
    if dim is None:
        return amin(x)
    if not isinstance(dim, (int, np.integer)):
        return minimum(x, dim)
    idx = argmin(x, dim, keepdim=True)
    return MinMax(_take_at(x, idx, dim, keepdim), idx if keepdim else squeeze(idx, dim))


def _take_at(x, idx: Tensor, dim: int, keepdim: bool) -> Tensor:
    """The entries of ``x`` at ``idx`` (kept-dim indices) along ``dim``. As torch's
    ``max(x, dim)``, the values' gradient goes to the returned index only, not to every tie."""
    x = as_tensor(x)
    if not x.ndim:                    # a scalar is its own maximum
        wrap_dim(dim, 0)
        return x
    dim = wrap_dim(dim, x.ndim)
    pos = x.tracer.emit("iota", shape=x.shape, axis=dim, dtype=idx.dtype)
    zero = 0.0 if x.type.is_float else 0
    return sum(where(eq(pos, idx), x, zero), dim, keepdim).to(x.dtype)


def _correction(dim, unbiased, correction, name: str):
    """torch's ``var``/``std`` arguments: ``var(x, unbiased)`` (a bool where ``dim`` goes),
    ``var(x, dim, unbiased, keepdim)`` and ``correction=`` (``unbiased``: correction 1)."""
    if isinstance(dim, (bool, np.bool_)):
        dim, unbiased = None, bool(dim)
    if correction is not None and unbiased is not None:
        raise ValueError(f"{name}: give unbiased or correction, not both")
    c = correction if correction is not None else (1 if unbiased in (None, True) else 0)
    return dim, c


@in_float32
def var(x, dim=None, unbiased: bool | None = None, keepdim: bool = False, *,
        correction: float | None = None) -> Tensor:
    """``torch.var``: the squared deviations summed, divided by ``max(0, n - correction)``
    (as torch: NaN for no degrees of freedom and a zero sum)."""
    x = as_tensor(x)
    dim, c = _correction(dim, unbiased, correction, "var")
    x = x if x.type.is_float else cast(x, "float32")
    axes = _axes(x, dim)
    m = mean(x, axes, keepdim=True)
    dof = _count(x, axes) - c
    dof = dof if dof > 0 else 0
    return div(sum(square(sub(x, m)), axes, keepdim), float(dof))


@in_float32
def std(x, dim=None, unbiased: bool | None = None, keepdim: bool = False, *,
        correction: float | None = None) -> Tensor:
    """``sqrt(var)``; where the variance is 0 (a constant row) the gradient is 0, as torch's
    (sqrt's own would be inf * 0 = NaN)."""
    v = var(x, dim, unbiased, keepdim, correction=correction)
    pos = gt(v, 0.0)
    return where(pos, sqrt(where(pos, v, 1.0)), v)


def logsumexp(x, dim, keepdim: bool = False) -> Tensor:
    """``log(sum(exp(x)))`` over ``dim``, shifted by the maximum so it cannot overflow; over an
    empty dim it is log(0) = -inf (torch)."""
    x = as_tensor(x)
    x = x if x.type.is_float else cast(x, "float32")
    axes = _axes(x, dim)
    if _count(x, axes) == 0:
        shape = reduced_shape(x.shape, normalize_axes(axes, x.ndim), keepdim)
        return x.tracer.emit("full", shape=shape, value=float("-inf"), dtype=x.dtype)
    m = amax(x, axes, keepdim=True)   # its gradient cancels: d/dm (log sum e^(x-m) + m) = 0
    # an infinite maximum shifts by 0 (as torch): a row of -inf gives -inf and one holding
    # +inf gives +inf, not inf - inf = NaN
    m = where(eq(abs(m), float("inf")), 0.0, m)
    out = add(log(sum(exp(sub(x, m)), axes, keepdim=True)), m)
    return out if keepdim else reshape(out, reduced_shape(x.shape, normalize_axes(axes, x.ndim),
                                                          False))


# ---------------------------------------------------------------- linear algebra
def matmul(a, b, out_dtype=None) -> Tensor:
    """``a @ b``. ``out_dtype="float32"`` on float16/bfloat16 operands gives the float32 sums
    as they are, not rounded to 16 bits (``matmul_f32``; ``torch.mm``'s ``out_dtype``)."""
    a, b = promote(a, b)
    out = a.dtype if out_dtype is None else canonical_dtype(out_dtype)
    if out == a.dtype:
        return emit_op("matmul", a, b)
    if out != "float32" or a.dtype not in LOW_DTYPES:
        raise TypeError(f"matmul: out_dtype={out_dtype!r} takes float16/bfloat16 operands to "
                        f"float32, got {a.dtype} operands")
    return emit_op("matmul_f32", a, b)


def linear(x, weight, bias=None) -> Tensor:
    """``x @ weight.T + bias`` with PyTorch's (out_features, in_features) weight, or a 1-D
    weight (in_features,): ``x @ weight``, the out axis dropped (torch)."""
    weight = as_tensor(weight)
    y = matmul(x, weight if weight.ndim == 1 else transpose(weight, 0, 1))
    return y if bias is None else add(y, bias)


# ---------------------------------------------------------------- shapes
def reshape(x, shape) -> Tensor:
    x = as_tensor(x)
    shape = list(shape)
    if shape.count(-1) > 1:
        raise ValueError(f"reshape {x.shape} -> {shape}: only one dimension can be -1")
    if -1 in shape:
        rest = int(np.prod([d for d in shape if d != -1]))
        if rest == 0 or x.numel() % rest:
            raise ValueError(f"cannot reshape {x.shape} to {tuple(shape)}")
        shape[shape.index(-1)] = x.numel() // rest
    if tuple(shape) == x.shape:
        return x
    return emit_op("reshape", x, shape=tuple(shape))


_dim = wrap_dim     # a dimension index checked as torch does (rank 0 takes -1 and 0), >= 0


def flatten(x, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    x = as_tensor(x)
    if x.ndim == 0:
        return reshape(x, (1,))
    s, e = _dim(start_dim, x.ndim), _dim(end_dim, x.ndim)
    if s > e:
        raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim}")
    return reshape(x, x.shape[:s] + (int(np.prod(x.shape[s:e + 1])),) + x.shape[e + 1:])


def permute(x, *dims) -> Tensor:
    x = as_tensor(x)
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = tuple(dims[0])
    dims = tuple(_dim(d, x.ndim) for d in dims)
    if sorted(dims) != list(range(x.ndim)):
        raise ValueError(f"permute: {dims} is not a permutation of the {x.ndim} dims of "
                         f"{x.shape}")
    if dims == tuple(range(x.ndim)):
        return x
    return emit_op("transpose", x, perm=dims)


def transpose(x, dim0: int, dim1: int) -> Tensor:
    x = as_tensor(x)
    perm = list(range(x.ndim))
    dim0, dim1 = _dim(dim0, x.ndim), _dim(dim1, x.ndim)
    if not x.ndim:
        return x
    perm[dim0], perm[dim1] = perm[dim1], perm[dim0]
    return permute(x, perm)


def broadcast_to(x, shape) -> Tensor:
    """``torch.broadcast_to``: -1 keeps a dimension; new dimensions go in front."""
    x = as_tensor(x)
    shape = tuple(int(d) for d in shape)
    lead = len(shape) - x.ndim
    if lead < 0:
        raise ValueError(f"broadcast_to: {len(shape)} sizes for a tensor of rank {x.ndim}")
    shape = tuple(x.shape[i - lead] if d == -1 and i >= lead else d
                  for i, d in enumerate(shape))
    if any(d < 0 for d in shape):
        raise ValueError(f"broadcast_to: -1 is not allowed for a new leading dimension: "
                         f"{shape}")
    return x if shape == x.shape else emit_op("broadcast_to", x, shape=shape)


def unsqueeze(x, dim: int) -> Tensor:
    x = as_tensor(x)
    dim = _dim(dim, x.ndim + 1)
    return reshape(x, x.shape[:dim] + (1,) + x.shape[dim:])


def squeeze(x, dim: int | Sequence[int] | None = None) -> Tensor:
    """Drop size-1 dimensions: all, one, or those in a tuple (others are kept, as torch)."""
    x = as_tensor(x)
    if dim is None:
        return reshape(x, tuple(d for d in x.shape if d != 1))
    if isinstance(dim, (tuple, list)):
        drop = {_dim(d, x.ndim) for d in dim} if x.ndim else set()
        return reshape(x, tuple(s for i, s in enumerate(x.shape) if i not in drop or s != 1))
    if not x.ndim:
        _dim(dim, 0)
        return x
    dim = _dim(dim, x.ndim)
    return x if x.shape[dim] != 1 else reshape(x, x.shape[:dim] + x.shape[dim + 1:])


def cat(xs: Sequence, dim: int = 0) -> Tensor:
    """``torch.cat``: joins along ``dim``; mixed dtypes promote as in arithmetic."""
    if isinstance(xs, Tensor) or not len(xs):
        raise TypeError("cat() takes a non-empty sequence of tensors")
    like = next((x for x in xs if isinstance(x, Tensor)), None)
    xs = [as_tensor(x, like) for x in xs]
    dtype = result_dtype(*xs)
    # torch's legacy rule: a 1-D empty tensor joins any tensor (it is skipped)
    kept = [x for x in xs if x.shape != (0,)]
    if kept and len(kept) < len(xs) and any(x.ndim != 1 for x in kept):
        xs = kept
    xs = [cast(x, dtype) for x in xs]
    return xs[0].tracer.emit("concat", *xs, axis=dim)


concat = concatenate = cat


def stack(xs: Sequence, dim: int = 0) -> Tensor:
    return cat([unsqueeze(x, dim) for x in xs], dim)


def slice_axes(x, starts, stops, steps) -> Tensor:
    return emit_op("slice", as_tensor(x), starts=tuple(starts), stops=tuple(stops),
                 steps=tuple(steps))


def pad(x, pad: Sequence[int], mode: str = "constant", value: float = 0.0) -> Tensor:
    """PyTorch's convention: ``pad`` lists (left, right) pairs starting from the LAST axis.
    Negative widths crop. As torch, ``circular`` crops first and wraps the cropped tensor;
    the other modes pad the whole tensor, then crop."""
    x = as_tensor(x)
    if len(pad) % 2 or len(pad) // 2 > x.ndim:
        raise ValueError(f"pad {list(pad)} must hold (before, after) pairs for at most "
                         f"{x.ndim} axes")
    pads = [0] * (2 * x.ndim)
    for i in range(len(pad) // 2):
        ax = x.ndim - 1 - i
        pads[2 * ax], pads[2 * ax + 1] = int(pad[2 * i]), int(pad[2 * i + 1])
    for ax, n in enumerate(x.shape):
        lo, hi = pads[2 * ax], pads[2 * ax + 1]
        if (lo or hi) and mode == "constant" and n + (lo if lo < 0 else 0) + (
                hi if hi < 0 else 0) < 0:
            raise ValueError(f"pad {list(pad)}: negative padding ({lo}, {hi}) crops more than "
                             f"the {n} elements of dimension {ax}")
        if mode != "constant" and ((lo or hi) and n + lo + hi <= 0 or ax and n == 0):
            raise ValueError(f"pad {list(pad)} ({mode}): input {list(x.shape)} is too small: "
                             f"dimension {ax} would have {n + lo + hi} elements (every "
                             f"dimension but the batch must be non-empty, and stay so)")
    grow = tuple(p if p > 0 else 0 for p in pads)
    crop = tuple(-p if p < 0 else 0 for p in pads)
    value = 0.0 if value is None else float(value)
    if mode == "circular":
        return _grow(_crop(x, crop, pad), grow, mode, value)
    return _crop(_grow(x, grow, mode, value), crop, pad)


def _grow(x: Tensor, grow: tuple[int, ...], mode: str, value: float) -> Tensor:
    return x if not any(grow) else emit_op("pad", x, pads=grow, mode=mode, value=value)


def _crop(x: Tensor, crop: tuple[int, ...], pad) -> Tensor:
    """``x`` without ``crop[2a]`` elements before and ``crop[2a+1]`` after on each axis a."""
    if not any(crop):
        return x
    starts = list(crop[0::2])
    stops = [d - c for d, c in zip(x.shape, crop[1::2])]
    if any(b > e for b, e in zip(starts, stops)):
        raise ValueError(f"pad {list(pad)} crops more than the shape {x.shape} holds")
    return slice_axes(x, starts, stops, [1] * x.ndim)


def _basic_index(x: Tensor, index):
    """Normalize a basic index into per-axis (starts, stops, steps) and the result's layout:
    ``out`` lists ``("axis", a)`` for kept axes and ``("new",)`` for each ``None``."""
    if not isinstance(index, tuple):
        index = (index,)
    if builtins_sum(i is Ellipsis for i in index) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if any(i is Ellipsis for i in index):
        k = index.index(Ellipsis)
        fill = x.ndim - (len(index) - 1 - builtins_sum(i is None for i in index))
        index = index[:k] + (slice(None),) * fill + index[k + 1:]
    starts, stops, steps, out, axis = [], [], [], [], 0
    for i in index:
        if i is None:
            out.append(("new",))
            continue
        if axis >= x.ndim:
            raise IndexError(f"too many indices for a tensor of shape {x.shape}")
        d = x.shape[axis]
        if isinstance(i, (bool, np.bool_)):
            raise TypeError(f"boolean index {i!r} is not supported: use ints, slices, None or ...")
        if isinstance(i, (int, np.integer)):
            i = int(i)
            if not -d <= i < d:
                raise IndexError(f"index {i} is out of bounds for axis {axis} of size {d}")
            i %= d
            starts.append(i), stops.append(i + 1), steps.append(1)
        elif isinstance(i, slice):
            b, e, s = i.indices(d)
            if e < 0:   # a negative step runs past index 0; -1 would wrap to the end
                e = -d - 1
            starts.append(b), stops.append(e), steps.append(s)
            out.append(("axis", axis))
        else:
            raise TypeError(f"unsupported index of type {type(i).__name__}: use ints, slices, "
                            f"None or ... (advanced indexing is not supported)")
        axis += 1
    for a in range(axis, x.ndim):
        starts.append(0), stops.append(x.shape[a]), steps.append(1)
        out.append(("axis", a))
    return starts, stops, steps, out


def basic_getitem(x: Tensor, index) -> Tensor:
    """Basic indexing: ints, slices (any step), None and Ellipsis (``F.getitem``,
    functional_index.py, adds one integer tensor among them)."""
    starts, stops, steps, out = _basic_index(x, index)
    full = all(b == 0 and e == d and s == 1 for b, e, s, d in zip(starts, stops, steps, x.shape))
    y = x if full else slice_axes(x, starts, stops, steps)
    shape = [1 if o[0] == "new" else y.shape[o[1]] for o in out]
    y = reshape(y, tuple(shape))
    if y is x:
        y = Tensor(x.value, x.tracer)
    # a view, as torch's: an assignment into it (``x[0][1] = v``, ``row = x[2]; row[0] = v``)
    # is written back into x (``setitem``)
    y._view = (x, index, x._value)
    return y


def setitem(x: Tensor, index, value) -> None:
    """``x[index] = value`` for ints and slices of any step, traced functionally: ``x`` is
    rebound to ``where(mask, value spread into place, x)`` (views taken earlier keep the old
    value). A step s puts s - 1 zeros between the values along its axis (pad, reshape); a
    negative step is the reversed values at the ascending positions. ``x[mask] = value``
    with a boolean mask over x's leading axes: ``_masked_setitem``."""
    mask = _bool_mask(index)
    if mask is not None:
        _masked_setitem(x, mask, value)
        return
    items = index if isinstance(index, tuple) else (index,)
    if any(isinstance(i, (Tensor, list, np.ndarray)) for i in items):
        raise IndexError("assignment through integer tensor indices (x[idx] = v) is not "
                         "supported: build the result with where() or scatter_add()")
    starts, stops, steps, out = _basic_index(x, index)
    if any(o[0] == "new" for o in out):
        raise IndexError("None cannot be used in an index that is assigned to")
    # (a negative step's stop is -d-1 for the slice op; as a range it is -1)
    counts = [len(range(b, e if e >= 0 else -1, st)) for b, e, st in zip(starts, stops, steps)]
    if not all(counts):
        return
    view = tuple(counts[o[1]] for o in out)
    check_fits(value, x.dtype, "setitem", floats=True)
    v = cast(as_tensor(value, x), x.dtype)
    v = reshape(broadcast_to(v, view), tuple(counts))
    mask = x.tracer.emit("full", shape=tuple(counts), value=1.0, dtype="bool")
    lows = []
    for ax, (b, st, n) in enumerate(zip(starts, steps, counts)):
        if st < 0:                   # the same positions, ascending, with reversed values
            v = v[(slice(None),) * ax + (slice(None, None, -1),)]
            b, st = b + (n - 1) * st, -st
        if st > 1 and n > 1:
            v, mask = _spread(v, ax, st), _spread(mask, ax, st)
        lows.append(b)
    pads = tuple(p for b, e, d in zip(lows, v.shape, x.shape) for p in (b, d - b - e))
    if any(pads):
        v = emit_op("pad", v, pads=pads, value=0.0, mode="constant")
        mask = emit_op("pad", mask, pads=pads, value=0.0, mode="constant")
    x._value = where(mask, v, x).value
    _write_back(x)


def _bool_mask(index):
    """The boolean mask of ``x[mask]`` (a bool tensor or array, alone), else None."""
    if isinstance(index, tuple) and len(index) == 1:
        index = index[0]
    if isinstance(index, Tensor) and index.dtype == "bool":
        return index
    if isinstance(index, np.ndarray) and index.dtype == np.bool_ and index.ndim > 0:
        return as_tensor(index)
    return None


def _masked_setitem(x: Tensor, mask: Tensor, value) -> None:
    """``x[mask] = value`` (torch's): the mask covers x's leading axes; the value is one
    element or one row of x's trailing axes for every selected position (a value with one
    entry per True needs their count, known only at run time: refused)."""
    lead = x.shape[:mask.ndim]
    if tuple(mask.shape) != tuple(lead):
        raise IndexError(f"the mask's shape {tuple(mask.shape)} does not match the indexed "
                         f"tensor's leading axes {tuple(lead)} (x shape {tuple(x.shape)})")
    v = cast(as_tensor(value, x), x.dtype)
    rest = x.shape[mask.ndim:]
    if v.ndim > len(rest) and any(d != 1 for d in v.shape[:v.ndim - len(rest)]):
        raise IndexError(f"x[mask] = value: a value of shape {tuple(v.shape)} gives one entry "
                         f"per selected position, a count known only at run time; give one "
                         f"element or a value of the trailing shape {tuple(rest)}")
    if v.ndim > len(rest):
        v = reshape(v, v.shape[v.ndim - len(rest):])
    m = reshape(mask, tuple(mask.shape) + (1,) * len(rest))
    x._value = where(m, v, x).value
    _write_back(x)


def _write_back(view: Tensor) -> None:
    """After an assignment into a view of basic indexing, the same assignment into the tensor
    it views (and on up a chain of views). A view taken before its base was assigned to holds
    the base's old values, so writing it back would undo that assignment: refused."""
    if view._view is None:
        return
    base, index, seen = view._view
    if base._value is not seen:
        raise ValueError("assignment into a view of a tensor that was assigned to after the "
                         "view was taken: the view holds its old values (traced tensors are "
                         "values, not memory); take the view again after the assignment")
    setitem(base, index, view)
    view._view = (base, index, base._value)


def _spread(t: Tensor, axis: int, step: int) -> Tensor:
    """``t`` with ``step - 1`` zeros (False) between its entries along ``axis``."""
    shape = t.shape
    n = shape[axis]
    t = reshape(t, shape[:axis + 1] + (1,) + shape[axis + 1:])
    pads = [0] * (2 * (len(shape) + 1))
    pads[2 * (axis + 1) + 1] = step - 1
    t = emit_op("pad", t, pads=tuple(pads), value=0.0, mode="constant")
    t = reshape(t, shape[:axis] + (n * step,) + shape[axis + 1:])
    return t[(slice(None),) * axis + (slice(0, (n - 1) * step + 1),)]


def clone(x) -> Tensor:
    """A new tensor object for the same value (``torch.clone``; assignment to either one
    leaves the other alone)."""
    x = as_tensor(x)
    return Tensor(x.value, x.tracer)


builtins_sum = __builtins__["sum"] if isinstance(__builtins__, dict) else __builtins__.sum


# ---------------------------------------------------------------- softmax
def _along(op: str, x, dim, dtype) -> Tensor:
    """softmax-like ops: ``dtype`` casts the input first (torch); integers go to float32."""
    x = as_tensor(x)
    if dtype is not None:
        x = cast(x, dtype)
    elif not x.type.is_float:
        x = cast(x, "float32")
    return emit_op(op, x, axis=wrap_dim(dim, x.ndim))


def softmax(x, dim: int = -1, _stacklevel: int = 3, dtype: str | None = None) -> Tensor:
    return _along("softmax", x, dim, dtype)


def log_softmax(x, dim: int = -1, _stacklevel: int = 3, dtype: str | None = None) -> Tensor:
    return _along("log_softmax", x, dim, dtype)
