"""Batched matrix product C[b] = A[b] @ B[b] with numpy's broadcasting of batch dimensions.

Operands are strided views (batch stride 0 for a broadcast operand; a transposed operand
needs no copy). Float32 uses ``tl.dot`` (IEEE by default, TF32 when the compile option
``allow_tf32`` is set); other dtypes use a broadcast-multiply-and-sum fallback.
"""
from __future__ import annotations

from typing import Callable

import torch
import triton
import triton.language as tl

from irgraph.types import LOW_DTYPES

from ..runtime import View, cdiv, empty, interpreting, numel
from .elementwise import store_as, widen, copy_view


# Triton's interpreter runs kernels as Python (decided, as Triton decides, on import)
INTERPRETED = tl.constexpr(interpreting())
# the accumulator of a product per operand dtype (16-bit floats: float32)
ACCUMULATOR = {"float64": tl.float64, "int32": tl.int32, "int64": tl.int64, "bool": tl.int1,
               "float32": tl.float32, "float16": tl.float32, "bfloat16": tl.float32}


@triton.jit
def dot_acc(a, b, acc, PRECISION: tl.constexpr):
    """acc + a @ b. float16/bfloat16 operands go into ``tl.dot`` as loaded (tensor cores)
    with a float32 accumulator; under the interpreter, whose 16-bit dot is wrong, they are
    widened first (exact, so the float32-accumulated result is the same)."""
    if INTERPRETED:
        a = widen(a)
        b = widen(b)
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def matmul_tile(a_ptr, b_ptr, M, N, K, sab, sam, sak, sbb, sbk, sbn, ACC: tl.constexpr,
                USE_DOT: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """The (BLOCK_M, BLOCK_N) tile of A @ B this program owns (grouped tile order, batch on
    grid axis 1): returns (accumulator, rows, columns, batch)."""
    pid = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    width = GROUP_M * grid_n
    first_m = (pid // width) * GROUP_M
    group_size = tl.minimum(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % group_size
    pid_n = (pid % width) // group_size
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    a_base = a_ptr + batch * sab + rm[:, None].to(tl.int64) * sam
    b_base = b_ptr + batch * sbb + rn[None, :].to(tl.int64) * sbn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(a_base + rk[None, :] * sak, mask=(rm[:, None] < M) & (rk[None, :] < K),
                    other=0)
        b = tl.load(b_base + rk[:, None] * sbk, mask=(rk[:, None] < K) & (rn[None, :] < N),
                    other=0)
        if USE_DOT:
            acc = dot_acc(a, b, acc, PRECISION)
        else:
            acc += tl.sum(a[:, :, None] * b[None, :, :], axis=1).to(acc.dtype)
    return acc, rm, rn, batch


@triton.jit
def matmul_epilogue_offsets(meta_ptr, ROW: tl.constexpr, RANK: tl.constexpr, batch, rm, rn):
    """(base, per-row, per-column) offsets of an epilogue operand whose strides over the
    product's (batch..., M, N) are meta row ``ROW`` (row 0: the shape): the element of tile
    (i, j) of batch ``batch`` is at ``base + row[i] + col[j]``; the batch index is split once
    per program, never per element."""
    base = batch * 0
    rem = batch
    for i in tl.static_range(RANK - 2):
        d = RANK - 3 - i
        size = tl.load(meta_ptr + d)
        base += (rem % size) * tl.load(meta_ptr + ROW * RANK + d)
        rem = rem // size
    row = rm.to(tl.int64) * tl.load(meta_ptr + ROW * RANK + RANK - 2)
    col = rn.to(tl.int64) * tl.load(meta_ptr + ROW * RANK + RANK - 1)
    return base, row, col


@triton.jit
def matmul_kernel(a_ptr, b_ptr, c_ptr, M, N, K,
                  sab, sam, sak, sbb, sbk, sbn, ACC: tl.constexpr,
                  USE_DOT: tl.constexpr, PRECISION: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  GROUP_M: tl.constexpr):
    """C[b] = A[b] @ B[b], one tile per program, accumulated in ``ACC`` (float32 for 16-bit
    operands, else C's dtype)."""
    acc, rm, rn, batch = matmul_tile(a_ptr, b_ptr, M, N, K, sab, sam, sak, sbb, sbk, sbn,
                                     ACC, USE_DOT, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K,
                                     GROUP_M)
    c = c_ptr + batch * M * N + rm[:, None].to(tl.int64) * N + rn[None, :]
    tl.store(c, store_as(acc, c_ptr.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))


def _collapse_batch(view: View, nb: int) -> tuple[View, int] | None:
    """One stride for all leading ``nb`` batch axes of ``view``, if the layout allows."""
    if nb == 0:
        return view, 0
    shape, strides = view.shape[:nb], view.strides[:nb]
    live = [(d, s) for d, s in zip(shape, strides) if d != 1]
    if not live:
        return view, 0
    if all(s == 0 for _, s in live):
        return view, 0
    for (d0, s0), (d1, s1) in zip(live, live[1:]):
        if s0 != s1 * d1:
            return None
    return view, live[-1][1]


def _operand(view: View, nb: int, dtype: str, device) -> tuple[Callable, int, int, int]:
    """(prepare, batch stride, row stride, column stride) of one operand's view."""
    got = _collapse_batch(view, nb)
    if got is None or view.offset != 0:
        prep = copy_view(view, dtype, device)     # materialize; then the batch axes collapse
        view = View.of(view.shape)
        got = _collapse_batch(view, nb)
    else:
        def prep(x):
            return x
    return prep, got[1], view.strides[-2], view.strides[-1]


class MatmulPlan:
    """Operand layouts, strides, blocks and grid of numpy's ``matmul`` of an ``a_shape`` and
    a ``b_shape`` tensor (1-D operands promoted, batch axes broadcast)."""

    def __init__(self, a_shape, b_shape, dtype: str, device, a_view: View | None = None,
                 b_view: View | None = None):
        sa = tuple(a_shape) if len(a_shape) > 1 else (1,) + tuple(a_shape)
        sb = tuple(b_shape) if len(b_shape) > 1 else tuple(b_shape) + (1,)
        av = a_view or View.of(a_shape)
        bv = b_view or View.of(b_shape)
        av = View(sa, av.strides if len(a_shape) > 1 else (0,) + av.strides, av.offset)
        bv = View(sb, bv.strides if len(b_shape) > 1 else bv.strides + (0,), bv.offset)
        batch = tuple(torch.broadcast_shapes(sa[:-2], sb[:-2]))
        nb = len(batch)
        self.a_prep, sab, sam, sak = _operand(av.broadcast_to(batch + sa[-2:]), nb, dtype,
                                              device)
        self.b_prep, sbb, sbk, sbn = _operand(bv.broadcast_to(batch + sb[-2:]), nb, dtype,
                                              device)
        self.m, self.k, self.n = sa[-2], sa[-1], sb[-1]
        self.sizes = (self.m, self.n, self.k, sab, sam, sak, sbb, sbk, sbn)
        self.use_dot = dtype == "float32" or dtype in LOW_DTYPES
        if dtype in LOW_DTYPES:
            # 16-bit operands on tensor cores, float32 accumulation
            self.blocks = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, GROUP_M=8, num_warps=4)
        elif self.use_dot:
            # BLOCK_K 16: an IEEE fp32 dot runs as FMAs on register operands; with 32 the
            # tile (and its epilogue) spills on sm_80 (the AOT gate's statistics)
            self.blocks = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=16, GROUP_M=8, num_warps=8)
        else:
            self.blocks = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, GROUP_M=8, num_warps=4)
        self.grid = (cdiv(self.m, self.blocks["BLOCK_M"]) * cdiv(self.n, self.blocks["BLOCK_N"]),
                     numel(batch))
        self.empty = numel(batch) * self.m * self.n == 0
        self.acc = ACCUMULATOR[dtype]

    def operands(self, a: torch.Tensor, b: torch.Tensor) -> tuple:
        return (self.a_prep(a), self.b_prep(b)) + self.sizes


def matmul(a_shape, b_shape, out_shape, dtype: str, device, precision: str = "ieee",
           a_view: View | None = None, b_view: View | None = None,
           out_dtype: str | None = None
           ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Plan numpy's ``matmul`` of an ``a_shape`` and a ``b_shape`` tensor of ``dtype``; the
    result in ``out_dtype`` (default ``dtype``): float32 stores the accumulator unrounded."""
    plan = MatmulPlan(a_shape, b_shape, dtype, device, a_view, b_view)

    def run(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out = empty(out_shape, out_dtype or dtype, device)
        if plan.empty:
            return out
        if plan.k == 0:
            return out.zero_()
        a, b, *sizes = plan.operands(a, b)
        matmul_kernel[plan.grid](a, b, out, *sizes, ACC=plan.acc, USE_DOT=plan.use_dot,
                                 PRECISION=precision, **plan.blocks)
        return out
    return run
