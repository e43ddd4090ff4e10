"""Parameter initialization (section 8.4) with torch.nn.init's names.

Every function fills a Parameter (its ``.data``) or a float numpy array IN PLACE and returns
it. Randomness comes from ``frontend.manual_seed``'s generator, or ``generator=`` (a
``numpy.random.Generator``), so results are reproducible.

* ``uniform_fan_in_``: U(-1/sqrt(m), 1/sqrt(m)) for m inputs (section 8.4; torch's Linear default)
* ``xavier_uniform_``: the normalized initialization, eq. 8.23 (Glorot and Bengio)
* ``orthogonal_``: a random orthogonal matrix times a gain (Saxe et al.)
* ``sparse_``: exactly k non-zero weights per unit (Martens), or torch's column sparsity
* ``kaiming_uniform_`` / ``kaiming_normal_``, ``xavier_normal_``, ``normal_``, ``uniform_``,
  ``trunc_normal_``; ``eye_`` (identity) and ``dirac_`` (identity convolution)
* biases: ``zeros_``, ``constant_`` (0.1 for ReLU units), ``lstm_forget_bias_`` (1 for
  every LSTM forget gate of a model),
  ``softmax_bias_`` (the output bias whose softmax is the class frequencies)
* ``initialize_(module, weight=..., bias=...)``: any of these over a whole model
"""
from __future__ import annotations

import inspect
import math
from typing import Sequence

import numpy as np

from .random import rng


def _array(t) -> np.ndarray:
    # (a numpy array's own .data is a buffer; a bfloat16 one raises reading it)
    a = t if isinstance(t, np.ndarray) else (
        t.data if isinstance(getattr(t, "data", None), np.ndarray) else t)
    if not isinstance(a, np.ndarray) or not (np.issubdtype(a.dtype, np.floating)
                                             or a.dtype.name == "bfloat16"):
        raise TypeError(f"initializers fill a float Parameter or numpy array, got "
                        f"{type(t).__name__}" + (f" of {a.dtype}" if hasattr(a, "dtype") else ""))
    return a


def _gen(generator: np.random.Generator | None) -> np.random.Generator:
    return generator if generator is not None else rng()


def _fill(t, values: np.ndarray):
    a = _array(t)
    a[...] = values.astype(a.dtype, copy=False)
    return t


def calculate_fan_in_and_fan_out(t) -> tuple[int, int]:
    """(m, n) of a weight (out, in, *kernel), as torch: each times the kernel's size."""
    a = _array(t)
    if a.ndim < 2:
        raise ValueError(f"fan in and fan out need a weight of rank >= 2, got shape {a.shape}")
    receptive = int(np.prod(a.shape[2:])) if a.ndim > 2 else 1
    return a.shape[1] * receptive, a.shape[0] * receptive


_calculate_fan_in_and_fan_out = calculate_fan_in_and_fan_out      # torch's private name

_GAINS = {"linear": 1.0, "sigmoid": 1.0, "conv1d": 1.0, "conv2d": 1.0,
          "conv3d": 1.0, "conv_transpose1d": 1.0, "conv_transpose2d": 1.0,
          "conv_transpose3d": 1.0, "tanh": 5.0 / 3, "relu": math.sqrt(2.0), "selu": 3.0 / 4}


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """torch.nn.init.calculate_gain: the gain that keeps activations' scale for a
    nonlinearity."""
    if nonlinearity == "leaky_relu":
        if param is not None and (isinstance(param, bool) or not isinstance(param, (int, float))):
            raise ValueError(f"negative_slope {param!r} is not a valid number")
        slope = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity not in _GAINS:
        raise ValueError(f"unknown nonlinearity {nonlinearity!r}; one of "
                         f"{sorted(_GAINS) + ['leaky_relu']}")
    return _GAINS[nonlinearity]


# ---------------------------------------------------------------- basic fills
def uniform_(t, a: float = 0.0, b: float = 1.0, generator=None):
    return _fill(t, _gen(generator).uniform(a, b, _array(t).shape))


def normal_(t, mean: float = 0.0, std: float = 1.0, generator=None):
    return _fill(t, _gen(generator).normal(mean, std, _array(t).shape))


def constant_(t, val: float):
    """A constant: e.g. 0.1 for the bias of a ReLU unit, 1 for an LSTM forget gate (8.4)."""
    return _fill(t, np.full(_array(t).shape, val))


def zeros_(t):
    return constant_(t, 0.0)


def ones_(t):
    return constant_(t, 1.0)


# ---------------------------------------------------------------- scaled random weights
def uniform_fan_in_(t, generator=None):
    """U(-1/sqrt(m), 1/sqrt(m)) with m the number of inputs (section 8.4)."""
    m, _ = calculate_fan_in_and_fan_out(t)
    bound = 1 / math.sqrt(m)
    return uniform_(t, -bound, bound, generator)


def xavier_uniform_(t, gain: float = 1.0, generator=None):
    """The normalized initialization, eq. 8.23: U(-sqrt(6/(m+n)), sqrt(6/(m+n))) times gain."""
    m, n = calculate_fan_in_and_fan_out(t)
    bound = gain * math.sqrt(6.0 / (m + n))
    return uniform_(t, -bound, bound, generator)


def xavier_normal_(t, gain: float = 1.0, generator=None):
    m, n = calculate_fan_in_and_fan_out(t)
    return normal_(t, 0.0, gain * math.sqrt(2.0 / (m + n)), generator)


def _kaiming_std(t, a: float, mode: str, nonlinearity: str) -> float:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    m, n = calculate_fan_in_and_fan_out(t)
    return calculate_gain(nonlinearity, a) / math.sqrt(m if mode == "fan_in" else n)


def kaiming_uniform_(t, a: float = 0.0, mode: str = "fan_in",
                     nonlinearity: str = "leaky_relu", generator=None):
    """He et al.: U(-b, b) with b = gain * sqrt(3 / fan). A tensor of no elements is left
    as it is (torch's no-op)."""
    if _array(t).size == 0:
        return t
    bound = math.sqrt(3.0) * _kaiming_std(t, a, mode, nonlinearity)
    return uniform_(t, -bound, bound, generator)


def kaiming_normal_(t, a: float = 0.0, mode: str = "fan_in",
                    nonlinearity: str = "leaky_relu", generator=None):
    if _array(t).size == 0:
        return t
    return normal_(t, 0.0, _kaiming_std(t, a, mode, nonlinearity), generator)


def orthogonal_(t, gain: float = 1.0, generator=None):
    """A random orthogonal matrix (Saxe et al.) times ``gain``: rows orthonormal when
    rows <= columns, columns orthonormal otherwise; higher ranks are flattened to
    (shape[0], rest). Haar-distributed (QR of a Gaussian matrix, signs fixed by R's diagonal)."""
    a = _array(t)
    if a.ndim < 2:
        raise ValueError(f"orthogonal_ needs a tensor of rank >= 2, got shape {a.shape}")
    if a.size == 0:
        return t
    rows, cols = a.shape[0], a.size // a.shape[0]
    flat = _gen(generator).standard_normal((rows, cols))
    if rows < cols:
        flat = flat.T
    q, r = np.linalg.qr(flat)
    q = q * np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return _fill(t, (gain * q).reshape(a.shape))


def trunc_normal_(t, mean: float = 0.0, std: float = 1.0, a: float = -2.0, b: float = 2.0,
                  generator=None):
    """N(mean, std^2) truncated to [a, b] (bounds in the values' units, torch's): draws
    outside are drawn again."""
    if not a < b:
        raise ValueError(f"trunc_normal_: need a < b, got a={a}, b={b}")
    g = _gen(generator)
    shape = _array(t).shape
    out = g.normal(mean, std, shape)
    bad = (out < a) | (out > b)
    for _ in range(10000):
        if not bad.any():
            return _fill(t, out)
        out[bad] = g.normal(mean, std, int(bad.sum()))
        bad = (out < a) | (out > b)
    raise ValueError(f"trunc_normal_: [{a}, {b}] holds almost none of N({mean}, {std}^2)")


def eye_(t):
    """The identity matrix (a 2-D weight: inputs passed through, torch's ``eye_``)."""
    x = _array(t)
    if x.ndim != 2:
        raise ValueError(f"eye_: only tensors with 2 dimensions are supported, got shape "
                         f"{x.shape}")
    return _fill(t, np.eye(*x.shape))


def dirac_(t, groups: int = 1):
    """The Dirac delta of a convolution's weight (out, in, *kernel), 3-D to 5-D: each of
    the first min(out / groups, in) channels of every group passes its input channel
    through at the kernel's centre (torch's ``dirac_``)."""
    x = _array(t)
    if x.ndim not in (3, 4, 5):
        raise ValueError(f"dirac_: only tensors with 3, 4, or 5 dimensions are supported, got "
                         f"shape {x.shape}")
    if groups <= 0 or x.shape[0] % groups:
        raise ValueError(f"dirac_: dim 0 ({x.shape[0]}) must be divisible by groups ({groups})")
    per = x.shape[0] // groups
    w = np.zeros(x.shape)
    centre = tuple(k // 2 for k in x.shape[2:])
    for g in range(groups):
        for d in range(min(per, x.shape[1])):
            w[(g * per + d, d) + centre] = 1.0
    return _fill(t, w)


def sparse_(t, sparsity: float | None = None, std: float = 0.01, k: int | None = None,
            generator=None):
    """Sparse initialization (Martens, section 8.4).

    ``k``: each unit (row of a (out, in) weight) gets exactly k non-zero N(0, std^2)
    weights, the text's form. ``sparsity``: torch.nn.init.sparse_'s form, a fraction
    ceil(sparsity * rows) of each column set to zero.
    """
    a = _array(t)
    if a.ndim != 2:
        raise ValueError(f"sparse_ needs a 2-D weight, got shape {a.shape}")
    if (k is None) == (sparsity is None):
        raise ValueError("give exactly one of k (non-zeros per unit) or sparsity (torch's form)")
    g = _gen(generator)
    rows, cols = a.shape
    values = g.normal(0.0, std, a.shape)
    if k is not None:
        if not 0 <= k <= cols:
            raise ValueError(f"k={k} non-zero weights per unit do not fit {cols} inputs")
        mask = np.zeros(a.shape, bool)
        for i in range(rows):
            mask[i, g.permutation(cols)[:k]] = True
    else:
        if not 0 <= sparsity <= 1:
            raise ValueError(f"sparsity must lie in [0, 1], got {sparsity}")
        zeros = int(math.ceil(sparsity * rows))
        mask = np.ones(a.shape, bool)
        for j in range(cols):
            mask[g.permutation(rows)[:zeros], j] = False
    return _fill(t, np.where(mask, values, 0.0))


def softmax_bias_(t, class_freqs: Sequence[float]):
    """Output bias b with softmax(b) = c for the classes' marginal frequencies c (section
    8.4: the inverse of the output's activation applied to the marginal statistics)."""
    c = np.asarray(class_freqs, np.float64)
    a = _array(t)
    if c.shape != a.shape or np.any(c <= 0):
        raise ValueError(f"class frequencies must be {a.shape} positive numbers, got {c}")
    b = np.log(c / c.sum())
    return _fill(t, b - b.mean())


def lstm_forget_bias_(module, value: float = 1.0):
    """Start every LSTM forget gate of ``module`` (``nn.LSTM`` / ``nn.LSTMCell`` layers, itself
    or inside it) with bias ``value``: section 8.4's advice, after Jozefowicz et al., is 1
    (the cell remembers by default). The gate's effective bias is b_ih + b_hh, so b_ih's f
    block is set to ``value`` and b_hh's to 0. A module without LSTM biases is an error."""
    found = False
    for m in module.modules():
        if "f" not in getattr(m, "GATE_NAMES", ()):       # only LSTMs have a forget gate
            continue
        rows = m.gate_slice("f")
        for name, p in m._parameters.items():
            if name.startswith("bias_ih"):
                _array(p)[rows] = value
                found = True
            elif name.startswith("bias_hh"):
                _array(p)[rows] = 0.0
    if not found:
        raise ValueError(f"lstm_forget_bias_: {type(module).__name__} holds no LSTM with "
                         f"biases (bias=False, or no LSTM / LSTMCell in it)")
    return module


def initialize_(module, weight=xavier_uniform_, bias=zeros_, generator=None):
    """Apply ``weight`` to every weight of rank >= 2 and ``bias`` to every bias in ``module``
    and its submodules (e.g. ``initialize_(model, orthogonal_, lambda b: constant_(b, 0.1))``);
    ``None`` leaves that kind alone. Returns the module."""
    for m in module.modules():
        params = getattr(m, "_parameters", {})
        w, b = params.get("weight"), params.get("bias")
        if weight is not None and w is not None and _array(w).ndim >= 2:
            _call(weight, w, generator)
        if bias is not None and b is not None:
            _call(bias, b, generator)
    return module


def _call(fn, t, generator) -> None:
    try:
        takes_gen = "generator" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        takes_gen = False
    if takes_gen and generator is not None:
        fn(t, generator=generator)
    else:
        fn(t)
