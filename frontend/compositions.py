"""Activations of ``torch.nn.functional`` that are compositions of core ops.

They live in ``frontend.F`` (functional.py re-exports them; the losses are functional_loss.py).
Each is written in a form that is numerically stable in both tails and has finite gradients: a
branch ``where`` does not select is still computed, so it must not overflow.
"""
from __future__ import annotations

import numpy as np

from .functional_core import (abs, as_tensor, cast, eq, erf, exp, ge, gt, in_float32, le, log,
                              lt, mul, neg, reshape, sigmoid, slice_axes, softmax, tanh, where)
from .functional_random import rand_like
from .tracing import Tensor

__all__ = ["leaky_relu", "relu6", "hardtanh", "elu", "softplus", "silu", "logsigmoid",
           "gelu", "mish", "hardswish", "log1p", "expm1", "hardsigmoid", "selu", "celu",
           "softsign", "softmin", "glu", "hardshrink", "softshrink", "tanhshrink", "threshold",
           "prelu", "rrelu"]


# ---------------------------------------------------------------- log1p, expm1
def _near_zero(x: Tensor):
    """(|x| < 1/2, x there and 1/2 elsewhere): the lanes a near-zero form computes, fed a
    harmless value where it is not selected (where computes both branches, and a NaN or an
    inf in the one left aside would still reach the gradient as 0 * inf)."""
    near = lt(abs(x), 0.5)
    return near, where(near, x, 0.5)


def log1p(input) -> Tensor:
    """``log(1 + x)`` to the last bits near 0, where ``log(1 + x)`` loses them (x = 1e-9 in
    float32: 1 + x rounds to 1): Goldberg's form ``log(w) x / (w - 1)`` with ``w = 1 + x``
    rounded, whose rounding errors cancel, for |x| < 1/2; ``x`` itself where w rounds to
    1; ``log(1 + x)`` beyond (it loses nothing there)."""
    x = as_tensor(input)
    if not x.type.is_float:
        x = cast(x, "float32")
    near, xn = _near_zero(x)
    w = xn + 1
    d = w - 1
    exact = eq(d, 0)
    # where 1 + x rounds to 1, x - x^2/2 + x^3/3 - x^4/4 (equal to x in value): its own
    # derivatives to the fourth, where x alone would have none past the first
    tiny = xn * (1 - xn * (0.5 - xn * (1 / 3 - xn * 0.25)))
    goldberg = where(exact, tiny, log(w) * (xn / where(exact, 1.0, d)))
    return where(near, goldberg, log(x + 1))


def expm1(input) -> Tensor:
    """``exp(x) - 1`` to the last bits near 0: Kahan's form ``(u - 1) x / log(u)`` with
    ``u = exp(x)`` rounded, for |x| < 1/2; ``x`` where u rounds to 1; ``exp(x) - 1`` beyond
    (it loses nothing there)."""
    x = as_tensor(input)
    if not x.type.is_float:
        x = cast(x, "float32")
    near, xn = _near_zero(x)
    u = exp(xn)
    one = eq(u, 1)
    # where exp(x) rounds to 1, x + x^2/2 + x^3/6 + x^4/24 (equal to x in value), as in log1p
    tiny = xn * (1 + xn * (0.5 + xn * (1 / 6 + xn * (1 / 24))))
    kahan = where(one, tiny, (u - 1) * (xn / where(one, 1.0, log(u))))
    return where(near, kahan, exp(x) - 1)


# ---------------------------------------------------------------- activations
def leaky_relu(input, negative_slope: float = 0.01) -> Tensor:
    x = as_tensor(input)
    return where(x > 0, x, x * negative_slope)


def hardtanh(input, min_val: float = -1.0, max_val: float = 1.0) -> Tensor:
    """``clamp(x, min_val, max_val)`` with torch's gradient: 0 at either bound too (clamp's
    passes there), a NaN's passed on. The bounds take ``x <= min_val`` and ``x >= max_val``
    (a -0.0 at a bound of 0 gives 0.0: equal, its sign aside)."""
    if min_val > max_val:
        raise ValueError(f"hardtanh: min_val ({min_val}) cannot be greater than max_val "
                         f"({max_val})")
    x = as_tensor(input)
    if not x.type.is_float:         # torch takes the bounds in the integer dtype: -1.0 -> -1
        min_val, max_val = int(min_val), int(max_val)
    x = where(le(x, min_val), min_val, x)
    return where(ge(x, max_val), max_val, x)


def relu6(input) -> Tensor:
    return hardtanh(input, 0.0, 6.0)


@in_float32
def elu(input, alpha: float = 1.0) -> Tensor:
    """``alpha (exp(x) - 1)`` for x <= 0, else ``x`` (exp only sees x <= 0): torch's
    gradient, ``alpha`` at 0 and 1 at a NaN."""
    x = as_tensor(input)
    neg_part = le(x, 0.0)
    return where(neg_part, expm1(where(neg_part, x, 0.0)) * alpha, x)


def log1p_exp(z: Tensor) -> Tensor:
    """``log(1 + exp(z))`` as ``max(z, 0) + log1p(exp(-|z|))``, both kinks at 0 taken from
    the right (``where``, not maximum/abs, whose tie rules zero the curvature there): the
    derivatives at 0 are sigmoid's, 1/2 and then 1/4."""
    right = ge(z, 0.0)
    return where(right, z, 0.0) + log1p(exp(neg(where(right, z, neg(z)))))


@in_float32
def softplus(input, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    """``log(1 + exp(beta x)) / beta`` (``log1p_exp``), then ``x`` above ``threshold``
    (torch's linear regime)."""
    x = as_tensor(input)
    bx = x * beta
    return where(bx > threshold, x, log1p_exp(bx) / beta)


@in_float32
def silu(input) -> Tensor:
    x = as_tensor(input)
    return x * sigmoid(x)


@in_float32
def logsigmoid(input) -> Tensor:
    """``log(sigmoid(x)) = -softplus(-x)``, stable for large |x|."""
    return neg(log1p_exp(neg(as_tensor(input))))


@in_float32
def gelu(input, approximate: str = "none") -> Tensor:
    """``x Phi(x)``: exactly ``x (1 + erf(x / sqrt 2)) / 2``, or with ``approximate="tanh"``
    ``x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2`` (torch's two forms)."""
    x = as_tensor(input)
    if not x.type.is_float:
        x = cast(x, "float32")
    if approximate == "none":
        return x * (erf(x * float(np.sqrt(0.5))) + 1) * 0.5
    if approximate == "tanh":
        inner = (x + x * x * x * 0.044715) * float(np.sqrt(2 / np.pi))
        return x * (tanh(inner) + 1) * 0.5
    raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")


@in_float32
def mish(input) -> Tensor:
    """``x tanh(softplus(x))``."""
    x = as_tensor(input)
    return x * tanh(softplus(x))


@in_float32
def hardswish(input) -> Tensor:
    """``x relu6(x + 3) / 6``: 0 below -3, ``x`` above 3; the gradient 0 at -3 and 1 at 3,
    as torch's (``relu6``'s, 0 at its bounds)."""
    x = as_tensor(input)
    return x * relu6(x + 3) * (1 / 6)


def hardsigmoid(input) -> Tensor:
    """``relu6(x + 3) / 6``: 0 at and below -3, 1 at and above 3, with torch's gradient
    (1/6 strictly between, 0 at the bounds)."""
    x = as_tensor(input)
    return where(le(x, -3.0), 0.0, where(ge(x, 3.0), 1.0, x * (1 / 6) + 0.5))


# SELU's constants (Klambauer et al., 2017), as torch's
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


@in_float32
def selu(input) -> Tensor:
    """``scale * elu(x, alpha)`` with the self-normalizing constants."""
    return elu(input, SELU_ALPHA) * SELU_SCALE


@in_float32
def celu(input, alpha: float = 1.0) -> Tensor:
    """``max(0, x) + min(0, alpha (exp(x / alpha) - 1))``; the gradient 1 at 0, as torch."""
    if alpha == 0:
        raise ValueError("celu: alpha must not be 0 (it divides x)")
    x = as_tensor(input)
    neg_part = le(x, 0.0)
    return where(neg_part, expm1(where(neg_part, x, 0.0) * (1 / alpha)) * alpha, x)


def softsign(input) -> Tensor:
    """``x / (1 + |x|)``."""
    x = as_tensor(input)
    return x / (abs(x) + 1)


def _legacy_dim(ndim: int) -> int:
    """torch's implicit softmax/softmin dimension (deprecated): 0 for 0-, 1- and 3-D
    inputs, else 1."""
    return 0 if ndim in (0, 1, 3) else 1


def softmin(input, dim: int | None = None, _stacklevel: int = 3,
            dtype: str | None = None) -> Tensor:
    """``softmax(-x, dim)``."""
    x = as_tensor(input)
    if dtype is not None:
        x = cast(x, dtype)
    return softmax(neg(x), _legacy_dim(x.ndim) if dim is None else dim)


def glu(input, dim: int = -1) -> Tensor:
    """The gated linear unit: ``a * sigmoid(b)`` of the two halves ``a``, ``b`` of ``dim``."""
    x = as_tensor(input)
    if x.ndim == 0:
        raise ValueError("glu does not take a 0-d tensor")
    ax = dim % x.ndim if -x.ndim <= dim < x.ndim else None
    if ax is None:
        raise IndexError(f"glu: dim {dim} is out of range for a {x.ndim}-d tensor")
    n = x.shape[ax]
    if n % 2:
        raise ValueError(f"glu: halving dimension {dim} must be even, got size {n}")

    def half(lo: int):
        starts = [0] * x.ndim
        stops = list(x.shape)
        starts[ax], stops[ax] = lo, lo + n // 2
        return slice_axes(x, starts, stops, [1] * x.ndim)
    return half(0) * sigmoid(half(n // 2))


def hardshrink(input, lambd: float = 0.5) -> Tensor:
    """``x`` where ``|x| > lambd``, else 0."""
    x = as_tensor(input)
    return where(gt(abs(x), lambd), x, 0.0)


def softshrink(input, lambd: float = 0.5) -> Tensor:
    """``x - lambd`` above ``lambd``, ``x + lambd`` below ``-lambd``, else 0."""
    if lambd < 0:
        raise ValueError(f"softshrink: lambd must be at least 0, got {lambd}")
    x = as_tensor(input)
    return where(gt(x, lambd), x - lambd, where(lt(x, -lambd), x + lambd, 0.0))


def tanhshrink(input) -> Tensor:
    """``x - tanh(x)``."""
    x = as_tensor(input)
    return x - tanh(x)


def threshold(input, threshold: float, value: float, inplace: bool = False) -> Tensor:
    """``x`` where ``x > threshold``, else ``value``."""
    x = as_tensor(input)
    return where(gt(x, threshold), x, value)


def prelu(input, weight) -> Tensor:
    """``x`` where ``x > 0``, else ``weight * x``; ``weight`` has one element or one per
    channel (axis 1)."""
    x = as_tensor(input)
    w = as_tensor(weight, x)
    if w.ndim != 1 and w.numel() != 1:
        raise ValueError(f"prelu: weight must be 1-D (one slope, or one per channel), got "
                         f"shape {list(w.shape)}")
    if w.numel() != 1:
        channels = x.shape[1] if x.ndim >= 2 else (x.shape[0] if x.ndim == 1 else 1)
        if w.numel() != channels:
            raise ValueError(f"prelu: {w.numel()} slopes for {channels} channels of input "
                             f"shape {list(x.shape)}")
        if x.ndim >= 2:
            w = reshape(w, (1, channels) + (1,) * (x.ndim - 2))
    else:
        w = reshape(w, ())
    return where(gt(x, 0.0), x, mul(w, x))


def rrelu(input, lower: float = 1 / 8, upper: float = 1 / 3, training: bool = False,
          inplace: bool = False, *, generator=None) -> Tensor:
    """Randomized leaky ReLU: in training each negative element takes its own slope drawn
    uniformly from [lower, upper) (``F.rand_like``); otherwise the mean slope
    ``(lower + upper) / 2``."""
    x = as_tensor(input)
    if not training:
        return leaky_relu(x, (lower + upper) / 2)
    slope = rand_like(x, generator=generator) * (upper - lower) + lower
    return where(gt(x, 0.0), x, x * slope)
