"""Lowerings of the Philox random-number ops (irgraph/ops/random.py): Philox-4x32-10 over
32-bit words (the 32x32 -> 64 multiply as a zero-extended i64 multiply), one block of four
words per loop iteration, split across threads by block. An element's bits depend only on
the key, the counter, the stream and its index, so every thread count gives the same bits.
"""
from __future__ import annotations

import math

from llvmlite import ir

from irgraph.ops.random import PHILOX_M0, PHILOX_M1, PHILOX_W0, PHILOX_W1, ROUNDS

from .builder import F32, F64, I32, I64, for_range, i64
from .lowering import lowering
from .scalar import call


def _i32(v: int) -> ir.Constant:
    return ir.Constant(I32, v & 0xFFFFFFFF)


def _mulhilo(b: ir.IRBuilder, m: int, x: ir.Value) -> tuple[ir.Value, ir.Value]:
    p = b.mul(ir.Constant(I64, m), b.zext(x, I64))
    return b.trunc(b.lshr(p, i64(32)), I32), b.trunc(p, I32)


def philox(b: ir.IRBuilder, c: list[ir.Value], k: list[ir.Value]) -> list[ir.Value]:
    """Ten Philox-4x32 rounds of counter words ``c`` under key words ``k`` (i32 values)."""
    c0, c1, c2, c3 = c
    k0, k1 = k
    for r in range(ROUNDS):
        if r:
            k0 = b.add(k0, _i32(PHILOX_W0))
            k1 = b.add(k1, _i32(PHILOX_W1))
        hi0, lo0 = _mulhilo(b, PHILOX_M0, c0)
        hi1, lo1 = _mulhilo(b, PHILOX_M1, c2)
        c0, c1, c2, c3 = b.xor(b.xor(hi1, c1), k0), lo1, b.xor(b.xor(hi0, c3), k1), lo0
    return [c0, c1, c2, c3]


def _split64(b: ir.IRBuilder, v: ir.Value) -> list[ir.Value]:
    return [b.trunc(v, I32), b.trunc(b.lshr(v, i64(32)), I32)]


def _numbers(b, ctx, op: str, dtype: str, w: list[ir.Value]) -> list[ir.Value]:
    """The four output values of one block (irgraph/ops/random.py has the formulas)."""
    if op == "random_bits":
        return w
    if op == "random_uniform":
        if dtype == "float32":
            return [b.fmul(b.uitofp(b.lshr(x, _i32(8)), F32), ir.Constant(F32, 2.0 ** -24))
                    for x in w]
        return [b.fmul(b.uitofp(x, F64), ir.Constant(F64, 2.0 ** -32)) for x in w]
    out = []
    scale = ir.Constant(F64, 2.0 ** -24)
    for even, odd in ((w[0], w[1]), (w[2], w[3])):
        u1 = b.fmul(b.fadd(b.uitofp(b.lshr(even, _i32(8)), F64), ir.Constant(F64, 1.0)), scale)
        u2 = b.fmul(b.uitofp(b.lshr(odd, _i32(8)), F64), scale)
        r = call(ctx, "sqrt", b.fmul(ir.Constant(F64, -2.0), call(ctx, "log", u1)))
        theta = b.fmul(ir.Constant(F64, 2.0 * math.pi), u2)
        for z in (b.fmul(r, call(ctx, "cos", theta)), b.fmul(r, call(ctx, "sin", theta))):
            out.append(b.fptrunc(z, F32) if dtype == "float32" else z)
    return out


@lowering("random_bits", "random_uniform", "random_normal", parallel=True)
def _random(ctx, node, ins, outs):
    (key, counter), (out,) = ins, outs
    b = ctx.b
    dtype = out.dtype
    n = out.type.size
    if n == 0:
        return
    k = _split64(b, key.load(b, i64(0)))
    c23 = _split64(b, counter.load(b, i64(0)))
    stream = _i32(node.attrs["stream"])

    def block(j: ir.Value, lanes: int) -> None:
        w = philox(b, [b.trunc(j, I32), stream, *c23], k)
        vals = _numbers(b, ctx, node.op, dtype, w)
        base = b.mul(j, i64(4))
        for lane in range(lanes):
            out.store(b, b.add(base, i64(lane)), vals[lane])

    full, tail = divmod(n, 4)
    if full:
        lo, hi = ctx.split(full)
        with for_range(b, lo, hi, "blk") as j:
            block(j, 4)
    if tail:
        with ctx.thread0():
            block(i64(full), tail)
