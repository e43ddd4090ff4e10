"""Triton lowering of the Philox random-number ops (irgraph/ops/random.py).

One kernel: each lane computes one Philox-4x32-10 block (four 32-bit words, held in uint64
lanes so that the 32x32 -> 64 multiply is exact and nothing relies on uint32 wrap-around)
and stores its four elements. Bits depend only on key, counter, stream and element index,
so they equal the reference's and the LLVM backend's bit for bit.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from irgraph import Node
from irgraph.ops.random import PHILOX_M0, PHILOX_M1, PHILOX_W0, PHILOX_W1, ROUNDS

from .runtime import cdiv, empty
from .table import LowerContext, Step, lowering

BLOCK = 256
KINDS = {"random_bits": 0, "random_uniform": 1, "random_normal": 3}


@triton.jit
def _mulhilo(m, x):
    p = x * m
    return p >> 32, p & 0xFFFFFFFF


@triton.jit
def _word_lo_hi(ptr, like):
    v = tl.load(ptr)
    lo = (like * 0 + (v & 0xFFFFFFFF)).to(tl.uint64)
    hi = (like * 0 + ((v >> 32) & 0xFFFFFFFF)).to(tl.uint64)
    return lo, hi


@triton.jit
def philox_kernel(out_ptr, key_ptr, counter_ptr, n, stream, M0: tl.constexpr,
                  M1: tl.constexpr, W0: tl.constexpr, W1: tl.constexpr,
                  ROUNDS: tl.constexpr, KIND: tl.constexpr, BLOCK: tl.constexpr):
    """Block j = this lane: counter (j, stream, lo(counter), hi(counter)), key (lo, hi);
    element 4j + l gets word l (KIND 0 bits, 1 uniform, 2 uniform float64, 3 normal)."""
    j = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    c0 = j.to(tl.uint64)
    c1 = (j * 0 + stream).to(tl.uint64)
    c2, c3 = _word_lo_hi(counter_ptr, j)
    k0, k1 = _word_lo_hi(key_ptr, j)
    m0 = (j * 0 + M0).to(tl.uint64)
    m1 = (j * 0 + M1).to(tl.uint64)
    for r in tl.static_range(ROUNDS):
        if r > 0:
            k0 = (k0 + W0) & 0xFFFFFFFF
            k1 = (k1 + W1) & 0xFFFFFFFF
        hi0, lo0 = _mulhilo(m0, c0)
        hi1, lo1 = _mulhilo(m1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    if KIND == 0:
        v0 = c0.to(tl.int64)
        v1 = c1.to(tl.int64)
        v2 = c2.to(tl.int64)
        v3 = c3.to(tl.int64)
        v0 = tl.where(v0 >= 2147483648, v0 - 4294967296, v0)
        v1 = tl.where(v1 >= 2147483648, v1 - 4294967296, v1)
        v2 = tl.where(v2 >= 2147483648, v2 - 4294967296, v2)
        v3 = tl.where(v3 >= 2147483648, v3 - 4294967296, v3)
    elif KIND == 1:
        s24 = 5.9604644775390625e-08          # 2**-24
        v0 = (c0 >> 8).to(tl.float32) * s24
        v1 = (c1 >> 8).to(tl.float32) * s24
        v2 = (c2 >> 8).to(tl.float32) * s24
        v3 = (c3 >> 8).to(tl.float32) * s24
    elif KIND == 2:
        s32 = 2.3283064365386963e-10          # 2**-32
        v0 = c0.to(tl.float64) * s32
        v1 = c1.to(tl.float64) * s32
        v2 = c2.to(tl.float64) * s32
        v3 = c3.to(tl.float64) * s32
    else:
        v0, v1 = _box_muller(c0, c1)
        v2, v3 = _box_muller(c2, c3)
    base = j * 4
    ty = out_ptr.dtype.element_ty
    tl.store(out_ptr + base, v0.to(ty), mask=base < n)
    tl.store(out_ptr + base + 1, v1.to(ty), mask=base + 1 < n)
    tl.store(out_ptr + base + 2, v2.to(ty), mask=base + 2 < n)
    tl.store(out_ptr + base + 3, v3.to(ty), mask=base + 3 < n)


@triton.jit
def _box_muller(even, odd):
    s24 = 5.9604644775390625e-08
    u1 = ((even >> 8).to(tl.float64) + 1.0) * s24
    u2 = (odd >> 8).to(tl.float64) * s24
    r = tl.sqrt(-2.0 * tl.log(u1))            # float64: correctly rounded
    theta = 6.283185307179586 * u2            # 2 pi
    return r * tl.cos(theta), r * tl.sin(theta)


assert 6.283185307179586 == 2.0 * math.pi and 5.9604644775390625e-08 == 2.0 ** -24


@lowering("random_bits", "random_uniform", "random_normal")
def _random(node: Node, ctx: LowerContext) -> Step:
    out = node.outputs[0].type
    kind = KINDS[node.op]
    if kind == 1 and out.dtype == "float64":
        kind = 2
    n = out.size
    grid = (max(1, cdiv(cdiv(n, 4), BLOCK)),)
    stream = node.attrs["stream"]

    def step(xs: list[torch.Tensor]) -> list[torch.Tensor]:
        res = empty(out.shape, out.dtype, ctx.device)
        if n:
            philox_kernel[grid](res, xs[0], xs[1], n, stream, M0=PHILOX_M0, M1=PHILOX_M1,
                                W0=PHILOX_W0, W1=PHILOX_W1, ROUNDS=ROUNDS, KIND=kind,
                                BLOCK=BLOCK)
        return [res]
    return step
