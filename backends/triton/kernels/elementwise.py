"""Elementwise kernels: one generic strided kernel specialized per op by a constexpr name.

Each input is read either contiguously (same shape as the output) or through a ``View`` whose
strides come from a metadata tensor (broadcasting, transposes, slices with negative steps).
The same kernel with ``OP="copy"`` and a strided output writes concatenations in place.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from irgraph.registry import ops_with

from ..runtime import View, cdiv, contiguous_strides, empty, interpreting, meta_tensor, numel

BLOCK = 1024
# Kernels choose between the interpreter's numpy and the GPU's libdevice where they differ:
# a float ``%`` is numpy's exact fmod in the interpreter, but the GPU compiler expands it
# as ``a - trunc(a / b) * b``, rounded; libdevice's fmod is exact (and has no interpreter).
INTERPRETING = tl.constexpr(interpreting())

# The ops the kernel's branches implement, by arity ("copy" is the kernel's own: a strided
# copy); an op outside them is an error, in the host wrapper and in the kernel itself.
# tests/test_registry_traits.py checks they are the registry's elementwise ops (but
# broadcast_to and stop_gradient, which need no kernel).
UNARY = ("copy", "neg", "exp", "log", "sqrt", "rsqrt", "tanh", "sigmoid", "relu", "abs", "sign",
         "square", "cast", "erf", "sin", "cos")
BINARY = ("add", "sub", "mul", "div", "pow", "fmod", "maximum", "minimum", "eq", "ne", "lt", "le",
          "gt", "ge", "logical_and", "logical_or")
TERNARY = ("where",)
FLOAT_ONLY = tuple(sorted(ops_with("float_only") & set(UNARY + BINARY + TERNARY)))


@triton.jit
def _bf16_rne(x):
    """float32 ``x`` rounded to bfloat16, to nearest even, by hand: Triton's interpreter
    truncates in ``.to(tl.bfloat16)``. The high half of the bits, after adding 0x7FFF plus the
    lowest kept bit (a tie goes to the even neighbour; a carry moves into the exponent, up to
    inf); a NaN keeps its sign and top payload bits and is made quiet."""
    bits = x.to(tl.uint32, bitcast=True)
    up = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16
    hi = tl.where(x != x, (bits >> 16) | 0x40, up)
    return hi.to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def widen(x):
    """A float16/bfloat16 ``x`` as float32, exactly (bfloat16 from its bits, shifted into the
    high half: the interpreter's conversion loses subnormals); other dtypes as they are."""
    if x.dtype == tl.bfloat16:
        y = (x.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    elif x.dtype == tl.float16:
        y = x.to(tl.float32)
    else:
        y = x
    return y


@triton.jit
def store_as(x, DTYPE: tl.constexpr):
    """``x`` converted for a store into a ``DTYPE`` buffer: the one conversion every kernel's
    store of a computed value goes through. float16/bfloat16 results come from float32 (a
    float64 is rounded to float32 first, as PyTorch does) rounded once to nearest even; a
    16-bit value widens to float32 before any other conversion (docs/low_precision.md)."""
    x = widen(x)
    if DTYPE == tl.bfloat16:
        y = _bf16_rne(x.to(tl.float32))
    elif DTYPE == tl.float16:
        y = x.to(tl.float32).to(tl.float16)
    else:
        y = x.to(DTYPE)
    return y


@triton.jit
def _tanh(x):
    """tanh(|x|) = -m / (2 + m), m = expm1(-2|x|), the sign put back (libdevice is GPU-only);
    expm1 by Kahan's (u - 1) y / log(u), u = exp(y) rounded, below |x| = 1/4, where u - 1
    would lose the last bits: every dtype to a few ulps (a Taylor series cut after x^9
    left float64 1e-9 off near |x| = 0.2)."""
    ax = tl.abs(x)
    y = -2.0 * ax
    u = tl.exp(y)
    near = (ax < 0.25) & (u != 1.0)
    kahan = tl.where(u == 1.0, y, (u - 1.0) * (y / tl.where(near, tl.log(u), 1.0)))
    m = tl.where(ax < 0.25, kahan, u - 1.0)
    r = -m / (2.0 + m)
    return tl.where(x < 0, -r, r)


@triton.jit
def _sigmoid(x):
    e = tl.exp(-tl.abs(x))
    return tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def _pow(x, y):
    """numpy's float power: negative bases allowed for integral exponents. exp(y log|x|) in
    float64 (in float32 the rounding of y log|x| alone left 29.9 ** 13 3e-6 off); 1 where
    y = 0 or x = 1, NaN or not (pow(1, nan) = 1); a -0.0 base keeps its sign through odd
    exponents (-0.0 ** -1 = -inf), as numpy and torch."""
    ax = tl.abs(x).to(tl.float64)
    r = tl.exp(y.to(tl.float64) * tl.log(ax)).to(x.dtype)
    y_int = y == tl.floor(y)
    odd = y_int & (tl.floor(y * 0.5) * 2.0 != y)
    negative = (x < 0) | ((x == 0) & (1.0 / x < 0))
    r = tl.where(negative & odd, -r, r)
    r = tl.where((x < 0) & (~y_int), float("nan"), r)
    r = tl.where((y == 0) | (x == 1), 1.0, r)
    return r


@triton.jit
def _ipow(a, b):
    """Integer power by repeated squaring (wrapping as numpy), a negative exponent giving
    torch's result (1 for a base of 1, +-1 for -1 by the exponent's parity, else 0): a loop
    that runs while any exponent bit is left (as many steps as the block's largest exponent
    has bits), not 63 unrolled steps."""
    res = tl.full(a.shape, 1, a.dtype)
    base = a
    e = tl.maximum(b, 0)
    while tl.max(e, axis=None) > 0:
        res = tl.where((e & 1) != 0, res * base, res)
        base = base * base
        e = e >> 1
    one = tl.full(a.shape, 1, a.dtype)
    minus_one = tl.where((b & 1) != 0, -one, one)
    negative = tl.where(a == 1, one, tl.where(a == -1, minus_one, one * 0))
    return tl.where(b < 0, negative, res)


@triton.jit
def _floordiv(a, b):
    # a zero divisor gives 0, as the reference's numpy and the LLVM backend give
    zero = b == 0
    d = tl.where(zero, 1, b)
    q = a // d
    r = a - q * d
    fix = (r != 0) & ((r < 0) != (d < 0))
    return tl.where(zero, 0, tl.where(fix, q - 1, q))


@triton.jit
def _unary(x, OP: tl.constexpr):
    if OP == "copy" or OP == "cast":
        y = x
    elif OP == "neg":
        y = -x
    elif OP == "exp":
        y = tl.exp(x)
    elif OP == "log":
        y = tl.log(x)
    elif OP == "sqrt":
        y = tl.sqrt(x)
    elif OP == "rsqrt":
        y = 1.0 / tl.sqrt(x)
    elif OP == "tanh":
        y = _tanh(x)
    elif OP == "sigmoid":
        y = _sigmoid(x)
    elif OP == "erf":
        y = tl.math.erf(x)
    elif OP == "sin":
        y = tl.sin(x)
    elif OP == "cos":
        y = tl.cos(x)
    elif OP == "relu":
        y = tl.where(x > 0, x, tl.where(x == x, 0, x))
    elif OP == "abs":
        y = tl.abs(x)
    elif OP == "sign":
        y = tl.where(x > 0, 1, tl.where(x < 0, -1, x))
    elif OP == "square":
        y = x * x
    else:
        tl.static_assert(False, "elementwise_kernel: an op with no unary branch")
    return y


@triton.jit
def _binary(a, b, OP: tl.constexpr, IS_FLOAT: tl.constexpr):
    if OP == "add":
        y = a + b
    elif OP == "sub":
        y = a - b
    elif OP == "mul":
        y = a * b
    elif OP == "div":
        if IS_FLOAT:
            y = a / b
        else:
            y = _floordiv(a, b)
    elif OP == "pow":
        if IS_FLOAT:
            y = _pow(a, b)
        else:
            y = _ipow(a, b)
    elif OP == "fmod":
        if INTERPRETING:
            y = a % b
        else:
            y = libdevice.fmod(a, b)
    elif OP == "maximum":
        y = tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)
    elif OP == "minimum":
        y = tl.minimum(a, b, propagate_nan=tl.PropagateNan.ALL)
    elif OP == "eq":
        y = a == b
    elif OP == "ne":
        y = a != b
    elif OP == "lt":
        y = a < b
    elif OP == "le":
        y = a <= b
    elif OP == "gt":
        y = a > b
    elif OP == "ge":
        y = a >= b
    elif OP == "logical_and":
        y = (a != 0) & (b != 0)
    elif OP == "logical_or":
        y = (a != 0) | (b != 0)
    else:
        tl.static_assert(False, "elementwise_kernel: an op with no binary branch")
    return y


@triton.jit
def strided_offset(offs, meta_ptr, ROW: tl.constexpr, RANK: tl.constexpr):
    """Offset of flat output index ``offs`` in the view whose strides are meta row ``ROW``."""
    rem = offs
    res = offs.to(tl.int64) * 0
    for i in tl.static_range(RANK):
        d = RANK - 1 - i
        size = tl.load(meta_ptr + d)
        idx = rem % size
        rem = rem // size
        res += idx * tl.load(meta_ptr + ROW * RANK + d)
    return res


@triton.jit
def _load_input(x_ptr, x_off, offs, mask, meta_ptr, ROW: tl.constexpr, RANK: tl.constexpr,
                STRIDED: tl.constexpr):
    if STRIDED:
        x = tl.load(x_ptr + x_off + strided_offset(offs, meta_ptr, ROW, RANK), mask=mask)
    else:
        x = tl.load(x_ptr + offs, mask=mask)
    return x


@triton.jit
def elementwise_kernel(out_ptr, a_ptr, b_ptr, c_ptr, meta_ptr, n, out_off, a_off, b_off, c_off,
                       OP: tl.constexpr, NIN: tl.constexpr, RANK: tl.constexpr,
                       OUT_S: tl.constexpr, A_S: tl.constexpr, B_S: tl.constexpr,
                       C_S: tl.constexpr, IS_FLOAT: tl.constexpr, TO_BOOL: tl.constexpr,
                       BLOCK: tl.constexpr):
    """out[i] = OP(a[i], b[i], c[i]); meta rows: shape, out strides, a, b, c strides."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    a = _load_input(a_ptr, a_off, offs, mask, meta_ptr, 2, RANK, A_S)
    if NIN == 1:
        y = _unary(a, OP)
    elif NIN == 2:
        b = _load_input(b_ptr, b_off, offs, mask, meta_ptr, 3, RANK, B_S)
        y = _binary(a, b, OP, IS_FLOAT)
    else:
        tl.static_assert(OP == "where", "elementwise_kernel: an op with no ternary branch")
        b = _load_input(b_ptr, b_off, offs, mask, meta_ptr, 3, RANK, B_S)
        c = _load_input(c_ptr, c_off, offs, mask, meta_ptr, 4, RANK, C_S)
        y = tl.where(a != 0, b, c)
    if TO_BOOL:
        y = widen(y) != 0
    if OUT_S:
        dst = out_ptr + out_off + strided_offset(offs, meta_ptr, 1, RANK)
    else:
        dst = out_ptr + offs
    tl.store(dst, store_as(y, out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def fill_kernel(out_ptr, n, value, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.zeros((BLOCK,), dtype=tl.float64) + value
    tl.store(out_ptr + offs, store_as(x, out_ptr.dtype.element_ty), mask=offs < n)


@triton.jit
def iota_kernel(out_ptr, n, inner, size, BLOCK: tl.constexpr):
    """out[i] = index of flat position i along an axis of length ``size`` and stride ``inner``."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    idx = (offs // inner) % size
    tl.store(out_ptr + offs, store_as(idx, out_ptr.dtype.element_ty), mask=offs < n)


@triton.jit
def pad_kernel(out_ptr, in_ptr, meta_ptr, n, value, RANK: tl.constexpr, MODE: tl.constexpr,
               BLOCK: tl.constexpr):
    """Padding; meta rows: out shape, in shape, pads before, in strides."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    rem = offs
    src = offs.to(tl.int64) * 0
    inside = mask
    for i in tl.static_range(RANK):
        d = RANK - 1 - i
        idx = rem % tl.load(meta_ptr + d)
        rem = rem // tl.load(meta_ptr + d)
        size = tl.load(meta_ptr + RANK + d)
        j = idx - tl.load(meta_ptr + 2 * RANK + d)
        if MODE == "reflect":
            j = tl.where(j < 0, -j, j)
            j = tl.where(j >= size, 2 * (size - 1) - j, j)
        elif MODE == "replicate":
            j = tl.minimum(tl.maximum(j, 0), size - 1)
        elif MODE == "circular":
            j = ((j % size) + size) % size
        else:
            inside = inside & (j >= 0) & (j < size)
        src += j * tl.load(meta_ptr + 3 * RANK + d)
    x = tl.load(in_ptr + src, mask=inside, other=value)
    tl.store(out_ptr + offs, store_as(x, out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def gather_kernel(out_ptr, src_ptr, idx_ptr, n, SCATTER: tl.constexpr, BLOCK: tl.constexpr):
    """Gather out[i] = src[idx[i]] (0 where idx < 0) or, with SCATTER, the transpose
    out[idx[i]] += src[i] (atomic adds: several i may share one idx)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    idx = tl.load(idx_ptr + offs, mask=mask, other=-1)
    ok = mask & (idx >= 0)
    if SCATTER:
        v = tl.load(src_ptr + offs, mask=mask, other=0)
        tl.atomic_add(out_ptr + idx, v, mask=ok)
    else:
        v = tl.load(src_ptr + idx, mask=ok, other=0)
        tl.store(out_ptr + offs, v, mask=mask)


# ---------------------------------------------------------------- host wrappers
def _grid(n: int) -> tuple[int]:
    return (max(1, cdiv(n, BLOCK)),)


def elementwise(op: str, out_shape: Sequence[int], out_dtype: str, views: Sequence[View],
                in_dtypes: Sequence[str], device,
                out_view: View | None = None) -> Callable[..., torch.Tensor]:
    """Plan ``out = op(*inputs)`` over ``views`` of the inputs; returns ``run(*tensors)``.

    ``out_view`` writes into a strided window of a caller-given ``out`` tensor instead of a
    fresh one (used for concatenation).
    """
    nin = len(views)
    if op not in (UNARY if nin == 1 else BINARY if nin == 2 else TERNARY):
        raise ValueError(f"elementwise op {op!r} does not take {nin} input(s)")
    if op in FLOAT_ONLY and in_dtypes[0] not in ("float32", "float64"):
        raise ValueError(f"{op} needs a float tensor, got {in_dtypes[0]}")
    out_shape = tuple(out_shape)
    for v in views:
        if v.shape != out_shape:
            raise ValueError(f"input view {v.shape} does not match output {out_shape}")
    n = numel(out_shape)
    rank = max(1, len(out_shape))
    shape = out_shape or (1,)
    strided = [not (v.is_contiguous) for v in views] + [False] * (3 - nin)
    ov = out_view or View.of(out_shape)
    rows = [shape, ov.strides or (1,)] + [v.strides or (0,) for v in views]
    meta = meta_tensor(rows, device)
    offs = [v.offset for v in views] + [0] * (3 - nin)
    consts = dict(OP=op, NIN=nin, RANK=rank, OUT_S=out_view is not None, A_S=strided[0],
                  B_S=strided[1], C_S=strided[2],
                  IS_FLOAT=in_dtypes[-1] in ("float32", "float64"),
                  TO_BOOL=out_dtype == "bool" and op in ("cast", "copy"), BLOCK=BLOCK)

    def run(*xs: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        if out is None:
            out = empty(out_shape, out_dtype, device)
        if n == 0:
            return out
        ptrs = list(xs) + [xs[0]] * (3 - nin)
        elementwise_kernel[_grid(n)](out, *ptrs, meta, n, ov.offset, *offs, **consts)
        return out
    return run


def copy_view(view: View, dtype: str, device) -> Callable[[torch.Tensor], torch.Tensor]:
    """Materialize a strided view as a contiguous tensor (identity when already contiguous)."""
    n = numel(view.shape)
    if view.is_contiguous and n:
        return lambda x: x.view(-1)[:n].view(view.shape)   # a leading window: no copy
    return elementwise("copy", view.shape, dtype, [view], [dtype], device)


def fill(shape, value: float, dtype: str, device) -> Callable[[], torch.Tensor]:
    n = numel(shape)

    def run() -> torch.Tensor:
        out = empty(shape, dtype, device)
        if n:
            fill_kernel[_grid(n)](out, n, float(value), BLOCK=BLOCK)
        return out
    return run


def iota(shape, axis: int, dtype: str, device) -> Callable[[], torch.Tensor]:
    n = numel(shape)
    inner = contiguous_strides(shape)[axis]

    def run() -> torch.Tensor:
        out = empty(shape, dtype, device)
        if n:
            iota_kernel[_grid(n)](out, n, inner, shape[axis], BLOCK=BLOCK)
        return out
    return run


def pad(in_shape, pads, value: float, mode: str, dtype: str,
        device) -> Callable[[torch.Tensor], torch.Tensor]:
    rank = len(in_shape)
    before = tuple(pads[2 * i] for i in range(rank))
    out_shape = tuple(d + pads[2 * i] + pads[2 * i + 1] for i, d in enumerate(in_shape))
    n = numel(out_shape)
    meta = meta_tensor([out_shape, tuple(in_shape), before, contiguous_strides(in_shape)],
                       device)
    if dtype == "bool":
        value = float(bool(value))

    def run(x: torch.Tensor) -> torch.Tensor:
        out = empty(out_shape, dtype, device)
        if n:
            pad_kernel[_grid(n)](out, x, meta, n, value, RANK=rank, MODE=mode, BLOCK=BLOCK)
        return out
    return run


def gather(index, src_shape, dtype: str, device, scatter: bool = False
           ) -> Callable[[torch.Tensor], torch.Tensor]:
    """Plan a gather by a static index array (its shape is the output's; -1 reads zero) or,
    with ``scatter``, its transpose: a ``src_shape`` result summing src at the indices."""
    index = np.asarray(index, np.int64)
    idx = torch.from_numpy(np.ascontiguousarray(index.reshape(-1))).to(device)
    n = index.size
    out_shape = tuple(src_shape) if scatter else index.shape
    zeros = fill(out_shape, 0.0, dtype, device)

    def run(x: torch.Tensor) -> torch.Tensor:
        out = zeros() if scatter else empty(out_shape, dtype, device)
        if n:
            gather_kernel[_grid(n)](out, x, idx, n, SCATTER=scatter, BLOCK=BLOCK)
        return out
    return run
