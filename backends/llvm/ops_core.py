"""Lowerings of the core elementwise ops (irgraph/ops/core.py): sources, unary, binary,
comparisons, where and cast."""
from __future__ import annotations

import numpy as np
from llvmlite import ir

from .builder import I8, i64, strided_nest
from .elementwise import elementwise
from .lowering import lowering
from . import scalar as sc
from .scalar import FLOATS, const

# op -> fn(ctx, node, vals) -> value: elementwise ops on one element (fused loop nests)
SCALAR: dict = {}

# ---------------------------------------------------------------- sources


@lowering("constant", parallel=False)
def _constant(ctx, node, ins, outs):
    (out,) = outs
    data = np.ascontiguousarray(node.attrs["value"], dtype=out.type.np_dtype).tobytes()
    if not data:
        return
    arr = ir.ArrayType(I8, len(data))
    gv = ir.GlobalVariable(ctx.module, arr, name=ctx.module.get_unique_name("const"))
    gv.global_constant = True
    gv.linkage = "private"
    gv.align = 64
    gv.initializer = ir.Constant(arr, bytearray(data))
    memcpy(ctx, out.ptr, ctx.b.bitcast(gv, ir.PointerType(I8)), len(data))


def memcpy(ctx, dst, src, nbytes: int) -> None:
    ptr = ir.PointerType(I8)
    fn = ctx.intrinsic("llvm.memcpy", [ptr, ptr, ir.IntType(64)])
    b = ctx.b
    b.call(fn, [b.bitcast(dst, ptr), b.bitcast(src, ptr), i64(nbytes),
                ir.Constant(ir.IntType(1), 0)])


@lowering("full", parallel=True, size_generic=True)
def _full(ctx, node, ins, outs):
    value = const(outs[0].dtype, node.attrs["value"])
    elementwise(ctx, outs, [], lambda vs: value)


@lowering("iota", parallel=True)
def _iota(ctx, node, ins, outs):
    (out,) = outs
    shape, axis = out.shape, node.attrs["axis"]
    if out.type.size == 0:
        return
    b = ctx.b
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    n = shape[axis]
    with strided_nest(b, [out.type.size], [[1]], outer=ctx.split(out.type.size)) as (o,):
        idx = b.srem(b.sdiv(o, i64(inner)), i64(n))
        out.store(b, o, sc.convert(ctx, "int64", out.dtype, idx))


# ---------------------------------------------------------------- unary


def _unary(op):
    def deco(fn):
        SCALAR[op] = lambda ctx, node, vs: fn(ctx, node.inputs[0].dtype, vs[0])

        @lowering(op, parallel=True, size_generic=True)
        def lower(ctx, node, ins, outs):
            dt = ins[0].dtype
            elementwise(ctx, outs, ins, lambda vs: fn(ctx, dt, vs[0]))
        return fn
    return deco


@_unary("neg")
def _neg(ctx, dt, x):
    if dt in FLOATS:
        return ctx.b.fneg(x)
    return x if dt == "bool" else ctx.b.sub(const(dt, 0), x)


# one LLVM float intrinsic each (float32 exp, log and tanh inline: scalar.call)
for _name in ("exp", "log", "sqrt", "tanh", "sin", "cos"):
    _unary(_name)(lambda ctx, dt, x, _name=_name: sc.call(ctx, _name, x))


@_unary("rsqrt")
def _rsqrt(ctx, dt, x):
    return ctx.b.fdiv(const(dt, 1), sc.call(ctx, "sqrt", x))


@_unary("erf")
def _erf(ctx, dt, x):
    """float32: inline polynomial (vmath.erf_f32, vectorizes); float64: the C library's erf."""
    if dt == "float32":
        return sc.call(ctx, "erf", x)
    return ctx.b.call(ctx.extern("erf", x.type, [x.type]), [x])


@_unary("sigmoid")
def _sigmoid(ctx, dt, x):
    return sc.sigmoid(ctx, dt, x)


@_unary("relu")
def _relu(ctx, dt, x):
    return sc.maximum(ctx, dt, x, const(dt, 0))


@_unary("abs")
def _abs(ctx, dt, x):
    if dt in FLOATS:
        return sc.call(ctx, "fabs", x)
    if dt == "bool":
        return x
    b = ctx.b
    return b.select(b.icmp_signed("<", x, const(dt, 0)), b.sub(const(dt, 0), x), x)


@_unary("sign")
def _sign(ctx, dt, x):
    b = ctx.b
    if dt == "bool":
        return x
    zero, one, m1 = const(dt, 0), const(dt, 1), const(dt, -1)
    gt = sc.compare(ctx, dt, ">", x, zero)
    lt = sc.compare(ctx, dt, "<", x, zero)
    other = b.fadd(x, zero) if dt in FLOATS else zero   # 0 stays 0, NaN stays NaN
    return b.select(gt, one, b.select(lt, m1, other))


@_unary("square")
def _square(ctx, dt, x):
    b = ctx.b
    if dt in FLOATS:
        return b.fmul(x, x)
    return b.and_(x, x) if dt == "bool" else b.mul(x, x)


@lowering("cast", parallel=True, size_generic=True)
def _cast(ctx, node, ins, outs):
    src, dst = ins[0].dtype, outs[0].dtype
    elementwise(ctx, outs, ins, lambda vs: sc.convert(ctx, src, dst, vs[0]))


# ---------------------------------------------------------------- binary


def _binary(op):
    def deco(fn):
        SCALAR[op] = lambda ctx, node, vs: fn(ctx, node.inputs[0].dtype, vs[0], vs[1])

        @lowering(op, parallel=True, size_generic=True)
        def lower(ctx, node, ins, outs):
            dt = ins[0].dtype
            elementwise(ctx, outs, ins, lambda vs: fn(ctx, dt, vs[0], vs[1]))
        return fn
    return deco


def _arith(fop, iop, bop):
    def fn(ctx, dt, x, y):
        name = fop if dt in FLOATS else (bop if dt == "bool" else iop)
        return getattr(ctx.b, name)(x, y)
    return fn


_binary("add")(_arith("fadd", "add", "or_"))
_binary("sub")(_arith("fsub", "sub", "xor"))
_binary("mul")(_arith("fmul", "mul", "and_"))


@_binary("div")
def _div(ctx, dt, x, y):
    if dt in FLOATS:
        return ctx.b.fdiv(x, y)
    if dt == "bool":
        return x
    return sc.floor_div(ctx, dt, x, y)


@_binary("pow")
def _pow(ctx, dt, x, y):
    if dt in FLOATS:
        return sc.call(ctx, "pow", x, y)
    if dt == "bool":
        return ctx.b.or_(x, ctx.b.not_(y))
    return sc.int_pow(ctx, dt, x, y)


@_binary("fmod")
def _fmod(ctx, dt, x, y):
    """LLVM's ``frem`` is C's ``fmod`` (exact); a vector ``frem`` becomes one libm ``fmod``
    call per lane. float16/bfloat16 registers are float32: the remainder of two such values
    is exact there and representable in 16 bits."""
    return ctx.b.frem(x, y)


@_binary("maximum")
def _maximum(ctx, dt, x, y):
    return sc.maximum(ctx, dt, x, y)


@_binary("minimum")
def _minimum(ctx, dt, x, y):
    return sc.maximum(ctx, dt, x, y, want_max=False)


for _op, _cmp in {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}.items():
    _binary(_op)(lambda ctx, dt, x, y, _cmp=_cmp: sc.compare(ctx, dt, _cmp, x, y))


@_binary("logical_and")
def _land(ctx, dt, x, y):
    return ctx.b.and_(sc.truth(ctx, dt, x), sc.truth(ctx, dt, y))


@_binary("logical_or")
def _lor(ctx, dt, x, y):
    return ctx.b.or_(sc.truth(ctx, dt, x), sc.truth(ctx, dt, y))


SCALAR["cast"] = lambda ctx, node, vs: sc.convert(ctx, node.inputs[0].dtype,
                                                  node.outputs[0].dtype, vs[0])
SCALAR["where"] = lambda ctx, node, vs: ctx.b.select(vs[0], vs[1], vs[2])
SCALAR["broadcast_to"] = lambda ctx, node, vs: vs[0]
SCALAR["full"] = lambda ctx, node, vs: const(node.outputs[0].dtype, node.attrs["value"])
SCALAR["stop_gradient"] = lambda ctx, node, vs: vs[0]


@lowering("stop_gradient", parallel=True, size_generic=True)
def _identity(ctx, node, ins, outs):
    elementwise(ctx, outs, ins, lambda vs: vs[0])


@lowering("where", parallel=True, size_generic=True)
def _where(ctx, node, ins, outs):
    elementwise(ctx, outs, ins, lambda vs: ctx.b.select(vs[0], vs[1], vs[2]))

