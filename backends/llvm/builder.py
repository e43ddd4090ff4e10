"""IR-building helpers: LLVM types of our dtypes, tensor buffers, loops as context managers.

Everything here builds llvmlite.ir; nothing JITs (see jit.py).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator, Sequence

from llvmlite import ir

from irgraph import TensorType

I1, I8, I16, I32, I64 = (ir.IntType(1), ir.IntType(8), ir.IntType(16), ir.IntType(32),
                         ir.IntType(64))
F16, F32, F64 = ir.HalfType(), ir.FloatType(), ir.DoubleType()
VOID = ir.VoidType()
PTR = ir.PointerType(I8)

# storage type of each dtype (bool is one byte in memory, i1 in registers; the 16-bit floats
# are float32 in registers, holding values exactly representable in 16 bits: Buf.load widens,
# Buf.store rounds to nearest even)
STORAGE: dict[str, ir.Type] = {"float32": F32, "float64": F64, "int32": I32, "int64": I64,
                               "bool": I8, "float16": F16, "bfloat16": I16}
REGISTER: dict[str, ir.Type] = dict(STORAGE, bool=I1, float16=F32, bfloat16=F32)


def _i32(v: int) -> ir.Constant:
    return ir.Constant(I32, v)


def widen16(b: ir.IRBuilder, dtype: str, v: ir.Value) -> ir.Value:
    """A stored float16 (half) or bfloat16 (i16 bits) as float32: exact."""
    if dtype == "float16":
        return b.fpext(v, F32)
    return b.bitcast(b.shl(b.zext(v, I32), _i32(16)), F32)


def bf16_bits(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """The float32 ``x`` rounded to bfloat16, to nearest even, as its float32 bits (the low 16
    bits zero); a NaN stays a NaN (its quiet bit set)."""
    bits = b.bitcast(x, I32)
    odd = b.and_(b.lshr(bits, _i32(16)), _i32(1))
    rounded = b.and_(b.add(bits, b.add(_i32(0x7FFF), odd)), _i32(-65536))
    nan = b.fcmp_unordered("uno", x, x)
    return b.select(nan, b.and_(b.or_(bits, _i32(0x00400000)), _i32(-65536)), rounded)


def narrow16(b: ir.IRBuilder, dtype: str, x: ir.Value) -> ir.Value:
    """The float32 ``x`` rounded to nearest even and stored as float16 (half) or bfloat16."""
    if dtype == "float16":
        return b.fptrunc(x, F16)
    return b.trunc(b.lshr(bf16_bits(b, x), _i32(16)), I16)


def round16(b: ir.IRBuilder, dtype: str, x: ir.Value) -> ir.Value:
    """The float32 ``x`` rounded to ``dtype``'s 16 bits, kept in float32 (a register value)."""
    if dtype == "float16":
        return b.fpext(b.fptrunc(x, F16), F32)
    return b.bitcast(bf16_bits(b, x), F32)


def i64(v: int) -> ir.Constant:
    return ir.Constant(I64, int(v))


def row_strides(shape: Sequence[int]) -> tuple[int, ...]:
    """Row-major strides in elements."""
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= d
    return tuple(reversed(out))


def broadcast_strides(shape: Sequence[int], out_shape: Sequence[int]) -> tuple[int, ...]:
    """Strides that read a tensor of ``shape`` at indices of the broadcast ``out_shape``."""
    lead = len(out_shape) - len(shape)
    own = row_strides(shape)
    return tuple(0 if i < lead or shape[i - lead] == 1 else own[i - lead]
                 for i in range(len(out_shape)))


def coalesce(shape: Sequence[int], strides: Sequence[Sequence[int]]):
    """Merge adjacent dimensions that every operand walks contiguously (fewer, longer loops)."""
    dims = [(d, [s[i] for s in strides]) for i, d in enumerate(shape) if d != 1]
    if not dims:
        return (), [() for _ in strides]
    merged = [dims[0]]
    for d, st in dims[1:]:
        pd, pst = merged[-1]
        if all(a == b * d for a, b in zip(pst, st)):
            merged[-1] = (pd * d, st)
        else:
            merged.append((d, st))
    return tuple(d for d, _ in merged), [tuple(st[k] for _, st in merged)
                                          for k in range(len(strides))]


class Buf:
    """A tensor in memory: a typed pointer and its TensorType (row-major, contiguous)."""

    def __init__(self, ptr: ir.Value, type: TensorType, swapped: bool = False):
        self.ptr = ptr
        self.type = type
        # the memory holds the tensor with its last two axes swapped (a folded transpose);
        # only lowerings that say so (matmul) accept such a buffer
        self.swapped = swapped

    @property
    def dtype(self) -> str:
        return self.type.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return self.type.shape

    @property
    def elem(self) -> ir.Type:
        return STORAGE[self.type.dtype]

    def at(self, b: ir.IRBuilder, offset: ir.Value) -> ir.Value:
        return b.gep(self.ptr, [offset], inbounds=True)

    def load(self, b: ir.IRBuilder, offset: ir.Value) -> ir.Value:
        v = b.load(self.at(b, offset))
        if self.dtype in ("float16", "bfloat16"):
            return widen16(b, self.dtype, v)
        return b.trunc(v, I1) if self.dtype == "bool" else v

    def store(self, b: ir.IRBuilder, offset: ir.Value, value: ir.Value) -> None:
        if self.dtype == "bool":
            value = b.zext(value, I8)
        elif self.dtype in ("float16", "bfloat16"):
            value = narrow16(b, self.dtype, value)
        b.store(value, self.at(b, offset))


@contextmanager
def for_range(b: ir.IRBuilder, start, stop, name: str = "i",
              step: int | ir.Value = 1) -> Iterator[ir.Value]:
    """``for i in range(start, stop, step)`` (step > 0, a constant or an i64 value); yields
    i (i64)."""
    start = i64(start) if isinstance(start, int) else start
    stop = i64(stop) if isinstance(stop, int) else stop
    pre = b.block
    cond = b.append_basic_block(f"{name}.cond")
    body = b.append_basic_block(f"{name}.body")
    end = b.append_basic_block(f"{name}.end")
    b.branch(cond)
    b.position_at_end(cond)
    idx = b.phi(I64, name=name)
    idx.add_incoming(start, pre)
    b.cbranch(b.icmp_signed("<", idx, stop), body, end)
    b.position_at_end(body)
    yield idx
    nxt = b.add(idx, i64(step) if isinstance(step, int) else step, name=f"{name}.next",
                flags=("nsw",))
    idx.add_incoming(nxt, b.block)
    b.branch(cond)
    b.position_at_end(end)


@contextmanager
def strided_nest(b: ir.IRBuilder, shape: Sequence[int], strides: Sequence[Sequence[int]],
                 bases: Sequence[ir.Value] | None = None,
                 outer: tuple[ir.Value, ir.Value] | None = None) -> Iterator[list[ir.Value]]:
    """Loops over ``shape``; yields, per operand, its element offset (base + sum(i*stride)).
    Sizes and strides are constants, or i64 values where known at run time only.

    ``outer`` = (lo, hi) restricts the outermost loop (a thread's share of it).
    """
    offs = list(bases) if bases is not None else [i64(0)] * len(strides)
    with _nest(b, list(shape), [list(s) for s in strides], offs, outer, 0) as res:
        yield res


@contextmanager
def _nest(b, shape, strides, offs, outer, depth):
    if depth == len(shape):
        yield offs
        return
    size = shape[depth]
    lo, hi = outer if (outer is not None and depth == 0) else (
        i64(0), i64(size) if isinstance(size, int) else size)
    with for_range(b, lo, hi, name=f"d{depth}") as i:
        new = [o if isinstance(s[depth], int) and not s[depth] else
               b.add(o, b.mul(i, i64(s[depth]) if isinstance(s[depth], int) else s[depth]))
               for o, s in zip(offs, strides)]
        with _nest(b, shape, strides, new, outer, depth + 1) as res:
            yield res


def fma_intrinsic(module: ir.Module, ty: ir.Type) -> ir.Function:
    """``llvm.fma`` on ``ty`` (a float or double, or a vector of them) in ``module``."""
    elem = ty.element if isinstance(ty, ir.VectorType) else ty
    name = "llvm.fma." + (f"v{ty.count}" if isinstance(ty, ir.VectorType) else "") + (
        "f32" if elem == ir.FloatType() else "f64")
    return module.globals.get(name) or ir.Function(module, ir.FunctionType(ty, [ty] * 3),
                                                   name)


def prod(xs: Sequence[int]) -> int:
    return int(math.prod(xs))


def cpu_relax(b: ir.IRBuilder, module: ir.Module) -> None:
    """A spin-wait hint (x86 ``pause``: saves power, yields the core's other hyperthread);
    nothing on other targets."""
    if not module.triple.startswith(("x86_64", "i686")):
        return
    name = "llvm.x86.sse2.pause"
    fn = module.globals.get(name) or ir.Function(module, ir.FunctionType(VOID, []), name)
    b.call(fn, [])
