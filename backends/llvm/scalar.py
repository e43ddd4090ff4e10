"""Scalar semantics of our dtypes in LLVM IR, matching numpy (NaN propagation, floor
division, integer wrap-around, bool as logical).

``S`` wraps one LLVM value of a dtype so that formulas (optimizer updates) read as math:
``p - lr * g / (S.sqrt(r) + eps)``.
"""
from __future__ import annotations

from llvmlite import ir

from .builder import F32, F64, I1, REGISTER, round16
from .lowering import Ctx
from .vmath import erf_f32, exp_f32, log_f32, sigmoid_f32, tanh_f32

FLOATS = ("float32", "float64", "float16", "bfloat16")
LOW = ("float16", "bfloat16")       # float32 registers (builder.REGISTER)
_INLINE = {"exp": exp_f32, "log": log_f32, "tanh": tanh_f32, "erf": erf_f32}
INTS = ("int32", "int64")


def const(dtype: str, value) -> ir.Constant:
    ty = REGISTER[dtype]
    if dtype in LOW:        # the value rounded to 16 bits (from float32, as PyTorch does)
        import numpy as np
        return ir.Constant(ty, float(np.float32(value).astype(dtype)))
    if dtype in FLOATS:
        return ir.Constant(ty, float(value))
    return ir.Constant(ty, int(bool(value)) if dtype == "bool" else int(value))


def is_nan(ctx: Ctx, x: ir.Value) -> ir.Value:
    return ctx.b.fcmp_unordered("uno", x, x)


def maximum(ctx: Ctx, dtype: str, x: ir.Value, y: ir.Value, want_max: bool = True) -> ir.Value:
    """numpy.maximum / minimum: a NaN in either operand gives NaN."""
    b = ctx.b
    if dtype in FLOATS:
        pick = b.fcmp_ordered(">" if want_max else "<", x, y)
        r = b.select(pick, x, y)
        return b.select(b.fcmp_unordered("uno", x, y), b.fadd(x, y), r)
    if dtype == "bool":
        return b.or_(x, y) if want_max else b.and_(x, y)
    return b.select(b.icmp_signed(">" if want_max else "<", x, y), x, y)


def call(ctx: Ctx, name: str, x: ir.Value, *more: ir.Value) -> ir.Value:
    """An LLVM float intrinsic (llvm.exp, llvm.sqrt, ...); float32 exp, log and tanh are
    inline code instead of libm calls (vmath.py), so the loops around them vectorize."""
    inline = _INLINE.get(name) if x.type == F32 and not more else None
    if inline is not None:
        return inline(ctx.b, x)
    fn = ctx.intrinsic(f"llvm.{name}", [x.type])
    return ctx.b.call(fn, [x, *more])


def sigmoid(ctx: Ctx, dtype: str, x: ir.Value) -> ir.Value:
    """Stable in both tails: 1/(1+e^-x) for x >= 0, e^x/(1+e^x) otherwise (NaN stays NaN)."""
    if x.type == F32:
        return sigmoid_f32(ctx.b, x)
    b = ctx.b
    one = const(dtype, 1)
    e = call(ctx, "exp", b.fneg(call(ctx, "fabs", x)))      # e^-|x| in (0, 1]
    den = b.fadd(one, e)
    pos = b.fdiv(one, den)
    neg = b.fdiv(e, den)
    return b.select(b.fcmp_ordered(">=", x, const(dtype, 0)), pos, neg)


def floor_div(ctx: Ctx, dtype: str, x: ir.Value, y: ir.Value) -> ir.Value:
    """numpy's // on integers: rounds towards -inf; x // 0 == 0; MIN // -1 wraps to MIN."""
    b = ctx.b
    zero, one = const(dtype, 0), const(dtype, 1)
    y_zero = b.icmp_signed("==", y, zero)
    y_m1 = b.icmp_signed("==", y, const(dtype, -1))
    safe_y = b.select(b.or_(y_zero, y_m1), one, y)       # no trap: never divide by 0 or -1
    q = b.sdiv(x, safe_y)
    r = b.srem(x, safe_y)
    adjust = b.and_(b.icmp_signed("!=", r, zero),
                    b.icmp_signed("!=", b.icmp_signed("<", r, zero),
                                  b.icmp_signed("<", safe_y, zero)))
    q = b.select(adjust, b.sub(q, one), q)
    q = b.select(y_m1, b.sub(zero, x), q)
    return b.select(y_zero, zero, q)


def int_pow(ctx: Ctx, dtype: str, x: ir.Value, y: ir.Value) -> ir.Value:
    """x ** y on integers by squaring (wraps like numpy); a negative exponent gives torch's
    result: 1 for a base of 1, +-1 for -1 (by the exponent's parity), else 0."""
    b = ctx.b
    ty = REGISTER[dtype]
    one, zero = const(dtype, 1), const(dtype, 0)
    odd_exp = b.trunc(y, I1)
    negative = b.select(b.icmp_signed("==", x, one), one,
                        b.select(b.icmp_signed("==", x, const(dtype, -1)),
                                 b.select(odd_exp, const(dtype, -1), one), zero))
    is_neg = b.icmp_signed("<", y, zero)
    y = b.select(is_neg, zero, y)
    acc = ctx.alloca(ty)
    base = ctx.alloca(ty)
    exp = ctx.alloca(ty)
    b.store(const(dtype, 1), acc)
    b.store(x, base)
    b.store(y, exp)
    cond = b.append_basic_block("ipow.cond")
    body = b.append_basic_block("ipow.body")
    end = b.append_basic_block("ipow.end")
    b.branch(cond)
    b.position_at_end(cond)
    e = b.load(exp)
    b.cbranch(b.icmp_signed(">", e, const(dtype, 0)), body, end)
    b.position_at_end(body)
    odd = b.trunc(e, I1)
    a = b.load(acc)
    bb = b.load(base)
    b.store(b.select(odd, b.mul(a, bb), a), acc)
    b.store(b.mul(bb, bb), base)
    b.store(b.ashr(e, const(dtype, 1)), exp)
    b.branch(cond)
    b.position_at_end(end)
    return b.select(is_neg, negative, b.load(acc))


def convert(ctx: Ctx, src: str, dst: str, x: ir.Value) -> ir.Value:
    """numpy's astype between our dtypes; float to int is never undefined: NaN and values out
    of range give the most negative integer, as numpy does on x86."""
    b = ctx.b
    if src == dst:
        return x
    if dst in LOW:          # via float32 (PyTorch's rule), then rounded to 16 bits
        return round16(b, dst, convert(ctx, src, "float32", x))
    if src in LOW:
        src = "float32"
        if dst == "float32":
            return x
    sty, dty = REGISTER[src], REGISTER[dst]
    if dst == "bool":
        return (b.fcmp_unordered("!=", x, const(src, 0)) if src in FLOATS
                else b.icmp_unsigned("!=", x, const(src, 0)))
    if src == "bool":
        return b.uitofp(x, dty) if dst in FLOATS else b.zext(x, dty)
    if src in FLOATS and dst in FLOATS:
        return b.fpext(x, dty) if dty == F64 else b.fptrunc(x, dty)
    if src in FLOATS:
        name = f"llvm.fptosi.sat.i{dty.width}.{'f32' if sty == F32 else 'f64'}"
        sat = ctx.module.globals.get(name) or ir.Function(
            ctx.module, ir.FunctionType(dty, [sty]), name)
        # numpy on x86: NaN and out-of-range values become the most negative integer
        limit = float(2 ** (dty.width - 1))
        inside = b.and_(b.fcmp_ordered("<", x, ir.Constant(sty, limit)),
                        b.fcmp_ordered(">=", x, ir.Constant(sty, -limit)))
        return b.select(inside, b.call(sat, [x]), ir.Constant(dty, -(1 << (dty.width - 1))))
    if dst in FLOATS:
        return b.sitofp(x, dty)
    return b.sext(x, dty) if dty.width > sty.width else b.trunc(x, dty)


def compare(ctx: Ctx, dtype: str, op: str, x: ir.Value, y: ir.Value) -> ir.Value:
    """numpy comparisons: NaN compares unequal to everything, != is true for NaN."""
    b = ctx.b
    if dtype in FLOATS:
        return b.fcmp_unordered(op, x, y) if op == "!=" else b.fcmp_ordered(op, x, y)
    if dtype == "bool":
        return b.icmp_unsigned(op, x, y)
    return b.icmp_signed(op, x, y)


def truth(ctx: Ctx, dtype: str, x: ir.Value) -> ir.Value:
    return convert(ctx, dtype, "bool", x)


class S:
    """A scalar of ``dtype`` in a register, with numpy-like operators (for formulas)."""

    def __init__(self, ctx: Ctx, dtype: str, v: ir.Value):
        self.ctx, self.dtype, self.v = ctx, dtype, v

    def _lift(self, o) -> "S":
        return o if isinstance(o, S) else S(self.ctx, self.dtype, const(self.dtype, o))

    def _bin(self, o, fop, iop, swap=False) -> "S":
        o = self._lift(o)
        x, y = (o.v, self.v) if swap else (self.v, o.v)
        fn = fop if self.dtype in FLOATS else iop
        return S(self.ctx, self.dtype, getattr(self.ctx.b, fn)(x, y))

    def __add__(self, o):
        return self._bin(o, "fadd", "add")

    def __radd__(self, o):
        return self._bin(o, "fadd", "add", True)

    def __sub__(self, o):
        return self._bin(o, "fsub", "sub")

    def __rsub__(self, o):
        return self._bin(o, "fsub", "sub", True)

    def __mul__(self, o):
        return self._bin(o, "fmul", "mul")

    def __rmul__(self, o):
        return self._bin(o, "fmul", "mul", True)

    def __truediv__(self, o):
        return self._bin(o, "fdiv", "sdiv")

    def __rtruediv__(self, o):
        return self._bin(o, "fdiv", "sdiv", True)

    def __pow__(self, o):
        o = self._lift(o)
        return S(self.ctx, self.dtype, call(self.ctx, "pow", self.v, o.v))

    def sqrt(self) -> "S":
        return S(self.ctx, self.dtype, call(self.ctx, "sqrt", self.v))

    def minimum(self, o) -> "S":
        return S(self.ctx, self.dtype, maximum(self.ctx, self.dtype, self.v,
                                                self._lift(o).v, want_max=False))

    def maximum(self, o) -> "S":
        return S(self.ctx, self.dtype, maximum(self.ctx, self.dtype, self.v, self._lift(o).v))

