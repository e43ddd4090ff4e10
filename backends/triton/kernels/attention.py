"""Fused attention: ``softmax(q k^T * scale + mask) v`` in one kernel, the scores never in
memory (the flash-attention scheme).

One program per (query block, batch): it keeps its (BLOCK_M, E) queries, scaled, in
registers and walks the keys in blocks of BLOCK_N. For each block, ``tl.dot`` gives the
scores, the mask applies (padding columns, the causal triangle, a bool keep-mask or an
additive mask), and the online softmax updates the running row maximum ``m``, the running
sum ``l`` of ``exp(s - m)`` and the output accumulator, each rescaled by ``exp(m_old -
m_new)`` when the maximum grows; the output is ``acc / l`` at the end. With the causal mask
(key j visible to query i iff j <= i), key blocks past the query block's last row are
skipped. A row with no visible key gives 0/0 = NaN, as the softmax of a row of -inf does.

Operands are (B1, B2, rows, cols) strided views (the batch dims as two axes, so a mask
broadcast over heads needs no copy); float32, float16 or bfloat16, accumulated in float32 and
rounded once (to nearest even) when stored.
"""
from __future__ import annotations

from typing import Callable

import torch
import triton
import triton.language as tl

from ..runtime import TORCH_DTYPES as TORCH, cdiv, empty, next_pow2
from .elementwise import store_as, widen

NO_MASK, KEEP_MASK, ADD_MASK = 0, 1, 2
MAX_HEAD_DIM = 256


@triton.jit
def attention_kernel(q_ptr, k_ptr, v_ptr, keep_ptr, add_ptr, o_ptr, L, S, E, EV, H2, scale,
                     sq1, sq2, sql, sqe, sk1, sk2, sks, ske, sv1, sv2, svs, sve,
                     sm1, sm2, sml, sms, sa1, sa2, sal, sas, so1, so2, sol, soe,
                     CAUSAL: tl.constexpr, KEEP: tl.constexpr, ADD: tl.constexpr,
                     PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_E: tl.constexpr, BLOCK_EV: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b1 = (bh // H2).to(tl.int64)
    b2 = (bh % H2).to(tl.int64)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    re = tl.arange(0, BLOCK_E)
    rv = tl.arange(0, BLOCK_EV)
    q = tl.load(q_ptr + b1 * sq1 + b2 * sq2 + rm[:, None].to(tl.int64) * sql + re[None, :] * sqe,
                mask=(rm[:, None] < L) & (re[None, :] < E), other=0)
    q = widen(q).to(tl.float32)
    q = q * scale                       # as the composition: q scaled before the product
    k_base = k_ptr + b1 * sk1 + b2 * sk2 + re[:, None] * ske
    v_base = v_ptr + b1 * sv1 + b2 * sv2 + rv[None, :] * sve
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_EV), tl.float32)
    hi = S
    if CAUSAL:                          # keys past this block's last query are all masked
        hi = tl.minimum(S, (pid_m + 1) * BLOCK_M)
    for n0 in range(0, hi, BLOCK_N):
        rn = n0 + tl.arange(0, BLOCK_N)
        kt = widen(tl.load(k_base + rn[None, :].to(tl.int64) * sks,
                           mask=(re[:, None] < E) & (rn[None, :] < S), other=0)).to(tl.float32)
        s = tl.dot(q, kt, input_precision=PRECISION)
        inside = (rm[:, None] < L) & (rn[None, :] < S)
        if ADD:
            s += widen(tl.load(add_ptr + b1 * sa1 + b2 * sa2 + rm[:, None].to(tl.int64) * sal
                               + rn[None, :].to(tl.int64) * sas, mask=inside,
                               other=0)).to(tl.float32)
        visible = rn[None, :] < S
        if KEEP:
            keep = tl.load(keep_ptr + b1 * sm1 + b2 * sm2 + rm[:, None].to(tl.int64) * sml
                           + rn[None, :].to(tl.int64) * sms, mask=inside, other=0)
            visible = visible & (keep != 0)
        if CAUSAL:
            visible = visible & (rn[None, :] <= rm[:, None])
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # rows with nothing visible yet keep m = -inf: subtract 0 there (exp(-inf) = 0)
        m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_sub)
        p = tl.exp(s - m_sub[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = widen(tl.load(v_base + rn[:, None].to(tl.int64) * svs,
                          mask=(rn[:, None] < S) & (rv[None, :] < EV), other=0)).to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision=PRECISION)
        m_i = m_new
    out = acc / l_i[:, None]
    o = o_ptr + b1 * so1 + b2 * so2 + rm[:, None].to(tl.int64) * sol + rv[None, :] * soe
    tl.store(o, store_as(out, o_ptr.dtype.element_ty),
             mask=(rm[:, None] < L) & (rv[None, :] < EV))


def blocks(e: int, ev: int, precision: str) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N) for head dims ``e`` and ``ev``: the query block, the key block and
    the accumulator live in registers (an IEEE float32 ``tl.dot`` runs on FMAs, without
    tensor cores, so its tiles are smaller); tests/test_triton_aot.py checks the spills."""
    wide = max(next_pow2(e), next_pow2(ev))
    if precision == "ieee":
        return (32, 32) if wide <= 32 else (16, 32) if wide <= 64 else (16, 16)
    return (64, 64) if wide <= 64 else (64, 32) if wide <= 128 else (32, 32)


def _as4(t: torch.Tensor, shape4) -> torch.Tensor:
    """``t`` broadcast to (batch..., rows, cols), seen as (B1, B2, rows, cols)."""
    return t.expand(shape4[0]).reshape(shape4[1])


def attention(q_shape, k_shape, v_shape, scale: float, causal: bool, keep_shape, add_shape,
              dtype: str, precision: str, device) -> Callable:
    """A launcher ``run(q, k, v, keep, additive) -> out`` (``keep``/``additive`` None when
    absent) for operands of these shapes; batch dims of q, k, v are equal."""
    *batch, L, E = q_shape
    S, EV = k_shape[-2], v_shape[-1]
    b2 = batch[-1] if batch else 1
    b1 = 1
    for d in batch[:-1]:
        b1 *= d
    scores = (*batch, L, S)
    bm, bn = blocks(E, EV, precision)
    be, bev = max(16, next_pow2(E)), max(16, next_pow2(EV))
    grid = (cdiv(L, bm), b1 * b2)
    out_shape = (*batch, L, EV)
    zero = torch.zeros(1, dtype=torch.float32, device=device)

    def run(q, k, v, keep=None, additive=None):
        if S == 0:                  # no keys: an empty softmax, a product over nothing
            return torch.zeros(out_shape, dtype=TORCH[dtype], device=device)
        out = empty(out_shape, dtype, device)
        if L == 0 or EV == 0 or b1 * b2 == 0:
            return out
        q4 = q.reshape(b1, b2, L, E)
        k4 = k.reshape(b1, b2, S, E)
        v4 = v.reshape(b1, b2, S, EV)
        o4 = out.view(b1, b2, L, EV)
        m4 = _as4(keep, (scores, (b1, b2, L, S))) if keep is not None else None
        a4 = _as4(additive, (scores, (b1, b2, L, S))) if additive is not None else None
        ms = m4.stride() if m4 is not None else (0, 0, 0, 0)
        as_ = a4.stride() if a4 is not None else (0, 0, 0, 0)
        attention_kernel[grid](
            q4, k4, v4, m4 if m4 is not None else zero, a4 if a4 is not None else zero, o4,
            L, S, E, EV, b2, scale, *q4.stride(), *k4.stride(), *v4.stride(), *ms, *as_,
            *o4.stride(), CAUSAL=causal, KEEP=m4 is not None, ADD=a4 is not None,
            PRECISION=precision, BLOCK_M=bm, BLOCK_N=bn, BLOCK_E=be, BLOCK_EV=bev)
        return out
    return run
