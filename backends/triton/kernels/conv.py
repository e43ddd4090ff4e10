"""Convolution as implicit GEMM (no im2col buffer): forward, input gradient, kernel gradient.

Every convolution is seen as 3-D (a 1-D or 2-D one gets size-1 axes), layout N C D H W,
weight O C/groups KD KH KW, and one grid axis walks the groups. With P = OD*OH*OW:

* forward (eq. 9.7-9.8):  Y[n, o, p] = sum_{c, r} X[n, c, p*s - pad + r*dil] W[o, c, r]
  GEMM rows (n, p), columns o, reduction over (kernel position r, channel c).
* input gradient (eq. 9.13): dX[n, c, i] = sum_{o, r} dY[n, o, (i + pad - r*dil)/s] W[o, c, r]
  where the division is exact; GEMM rows (n, i), columns c, reduction over (r, o).
* kernel gradient (eq. 9.11): dW[o, c, r] = sum_{n, p} dY[n, o, p] X[n, c, p*s - pad + r*dil]
  GEMM rows o, columns (c, r), reduction over (n, p).

On a GPU every kernel is autotuned over ``gpu_configs`` (tiles that do not spill on sm_80 or
sm_90); under the interpreter one small configuration runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import triton
import triton.language as tl

from irgraph.types import LOW_DTYPES

from ..runtime import View, cdiv, empty, interpreting
from .elementwise import store_as, copy_view
from .matmul import dot_acc


@dataclass(frozen=True)
class ConvGeometry:
    """Shapes of one convolution, padded to 3 spatial axes."""
    n: int
    c: int
    o: int
    groups: int
    size: tuple[int, int, int]        # input D, H, W
    out: tuple[int, int, int]         # output OD, OH, OW
    kernel: tuple[int, int, int]
    stride: tuple[int, int, int]
    pad: tuple[int, int, int]         # padding before each axis (after only sets `out`)
    dil: tuple[int, int, int]

    @staticmethod
    def make(x_shape, w_shape, out_spatial, stride, padding, dilation, groups):
        d = len(x_shape) - 2
        fill = (1,) * (3 - d)
        zero = (0,) * (3 - d)
        return ConvGeometry(x_shape[0], x_shape[1], w_shape[0], groups,
                            fill + tuple(x_shape[2:]), fill + tuple(out_spatial),
                            fill + tuple(w_shape[2:]), fill + tuple(stride),
                            zero + tuple(padding[2 * i] for i in range(d)),
                            fill + tuple(dilation))

    def args(self) -> tuple[int, ...]:
        return (self.n, self.c // self.groups, self.o // self.groups) + self.size + self.out + \
            self.kernel + self.stride + self.pad + self.dil


_GEOM = ("N, CG, OG, D, H, W, OD, OH, OW, KD, KH, KW, SD, SH, SW, PD, PH, PW, "
         "DD, DH, DW")


@triton.jit
def conv_fwd_tile(x_ptr, w_ptr, N, CG, OG, D, H, W, OD, OH, OW, KD, KH, KW, SD, SH, SW,
                  PD, PH, PW, DD, DH, DW, ACC: tl.constexpr, PRECISION: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """This program's (BLOCK_M, BLOCK_N) tile of the forward GEMM, with its output offsets
    into Y (N, O, OD, OH, OW) and their mask."""
    g = tl.program_id(2)
    P = OD * OH * OW
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)        # (n, p) rows
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)        # output channel in group
    m_ok = rm < N * P
    n_ok = rn < OG
    nb = rm // P
    p = rm % P
    od = p // (OH * OW)
    oh = (p // OW) % OH
    ow = p % OW
    C = CG * tl.num_programs(2)
    x_row = x_ptr + (nb.to(tl.int64) * C + g * CG) * (D * H * W)
    w_grp = w_ptr + g.to(tl.int64) * (KD * KH * KW * CG * OG)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    n_cb = tl.cdiv(CG, BLOCK_K)
    for step in range(KD * KH * KW * n_cb):       # one flat loop: the compiler pipelines it
        r = step // n_cb
        c0 = (step % n_cb) * BLOCK_K
        kd = r // (KH * KW)
        kh = (r // KW) % KH
        kw = r % KW
        i_d = od * SD - PD + kd * DD
        i_h = oh * SH - PH + kh * DH
        i_w = ow * SW - PW + kw * DW
        ok = m_ok & (i_d >= 0) & (i_d < D) & (i_h >= 0) & (i_h < H) & (i_w >= 0) & (i_w < W)
        x_pos = x_row + (i_d * H + i_h) * W + i_w
        rc = c0 + tl.arange(0, BLOCK_K)
        c_ok = rc < CG
        a = tl.load(x_pos[:, None] + rc[None, :].to(tl.int64) * (D * H * W),
                    mask=ok[:, None] & c_ok[None, :], other=0.0)
        b = tl.load(w_grp + (r * CG + rc[:, None]) * OG + rn[None, :],
                    mask=c_ok[:, None] & n_ok[None, :], other=0.0)
        acc = dot_acc(a, b, acc, PRECISION)
    offs = ((nb.to(tl.int64) * (OG * tl.num_programs(2)) + g * OG)[:, None]
            + rn[None, :]) * P + p[:, None]
    return acc, offs, m_ok[:, None] & n_ok[None, :]


@triton.jit
def conv_out_coords(N, OG, OD, OH, OW, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Coordinates of this program's forward tile for an epilogue: per row (n, od, oh, ow),
    per column the output channel (across groups), and the row and column masks."""
    P = OD * OH * OW
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    p = rm % P
    return (rm // P, p // (OH * OW), (p // OW) % OH, p % OW, tl.program_id(2) * OG + rn,
            rm < N * P, rn < OG)


@triton.jit
def conv_epilogue_offsets(meta_ptr, ROW: tl.constexpr, n, d, h, w, c):
    """(base, per-row, per-column) offsets of an epilogue operand whose strides over
    (N, O, D, H, W) are meta row ``ROW``: the element of tile (i, j) is at
    ``base + row[i] + col[j]`` (a per-channel bias: one column vector, loaded once)."""
    s = meta_ptr + ROW * 5
    row = (n.to(tl.int64) * tl.load(s) + d.to(tl.int64) * tl.load(s + 2)
           + h.to(tl.int64) * tl.load(s + 3) + w.to(tl.int64) * tl.load(s + 4))
    col = c.to(tl.int64) * tl.load(s + 1)
    return tl.load(s) * 0, row, col


@triton.jit
def conv_fwd_kernel(x_ptr, w_ptr, y_ptr,
                    N, CG, OG, D, H, W, OD, OH, OW, KD, KH, KW, SD, SH, SW, PD, PH, PW,
                    DD, DH, DW, PRECISION: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Y = conv(X, W) with W in the GEMM layout (G, R, C/G, O/G)."""
    acc, offs, mask = conv_fwd_tile(x_ptr, w_ptr, N, CG, OG, D, H, W, OD, OH, OW, KD, KH, KW,
                                    SD, SH, SW, PD, PH, PW, DD, DH, DW,
                                    # float32 sums for 16-bit results, rounded once by store_as
                                    tl.float64 if y_ptr.dtype.element_ty == tl.float64
                                    else tl.float32, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
    tl.store(y_ptr + offs, store_as(acc, y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def conv_input_grad_kernel(gy_ptr, w_ptr, dx_ptr,
                           N, CG, OG, D, H, W, OD, OH, OW, KD, KH, KW, SD, SH, SW, PD, PH, PW,
                           DD, DH, DW, PRECISION: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                           BLOCK_K: tl.constexpr):
    g = tl.program_id(2)
    S = D * H * W
    P = OD * OH * OW
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)        # (n, input position)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)        # input channel in group
    m_ok = rm < N * S
    n_ok = rn < CG
    nb = rm // S
    s = rm % S
    i_d = s // (H * W)
    i_h = (s // W) % H
    i_w = s % W
    O = OG * tl.num_programs(2)
    gy_row = gy_ptr + (nb.to(tl.int64) * O + g * OG) * P
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float64 if dx_ptr.dtype.element_ty == tl.float64
                   else tl.float32)
    n_ob = tl.cdiv(OG, BLOCK_K)
    for step in range(KD * KH * KW * n_ob):       # one flat loop: the compiler pipelines it
        r = step // n_ob
        o0 = (step % n_ob) * BLOCK_K
        kd = r // (KH * KW)
        kh = (r // KW) % KH
        kw = r % KW
        td = i_d + PD - kd * DD
        th = i_h + PH - kh * DH
        tw = i_w + PW - kw * DW
        ok = m_ok & (td >= 0) & (th >= 0) & (tw >= 0)
        ok = ok & (td % SD == 0) & (th % SH == 0) & (tw % SW == 0)
        o_d = td // SD
        o_h = th // SH
        o_w = tw // SW
        ok = ok & (o_d < OD) & (o_h < OH) & (o_w < OW)
        gy_pos = gy_row + (o_d * OH + o_h) * OW + o_w
        ro = o0 + tl.arange(0, BLOCK_K)
        o_ok = ro < OG
        a = tl.load(gy_pos[:, None] + ro[None, :].to(tl.int64) * P,
                    mask=ok[:, None] & o_ok[None, :], other=0.0)
        b = tl.load(w_ptr + ((g * OG + ro[:, None]).to(tl.int64) * CG + rn[None, :])
                    * (KD * KH * KW) + r, mask=o_ok[:, None] & n_ok[None, :], other=0.0)
        acc = dot_acc(a, b, acc, PRECISION)
    dx = dx_ptr + ((nb.to(tl.int64) * (CG * tl.num_programs(2)) + g * CG)[:, None]
                   + rn[None, :]) * S + s[:, None]
    tl.store(dx, store_as(acc, dx_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def conv_kernel_grad_kernel(x_ptr, gy_ptr, dw_ptr,
                            N, CG, OG, D, H, W, OD, OH, OW, KD, KH, KW, SD, SH, SW, PD, PH, PW,
                            DD, DH, DW, PRECISION: tl.constexpr,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                            BLOCK_K: tl.constexpr):
    g = tl.program_id(2)
    R = KD * KH * KW
    P = OD * OH * OW
    S = D * H * W
    ro = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)        # output channel in group
    rq = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)        # (c, r) column
    o_ok = ro < OG
    q_ok = rq < CG * R
    c = rq // R
    r = rq % R
    kd = r // (KH * KW)
    kh = (r // KW) % KH
    kw = r % KW
    O = OG * tl.num_programs(2)
    C = CG * tl.num_programs(2)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float64 if dw_ptr.dtype.element_ty == tl.float64
                   else tl.float32)
    for k0 in range(0, N * P, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)                             # (n, p) reduction index
        k_ok = rk < N * P
        nb = rk // P
        p = rk % P
        od = p // (OH * OW)
        oh = (p // OW) % OH
        ow = p % OW
        a = tl.load(gy_ptr + (nb.to(tl.int64) * O + g * OG)[None, :] * P
                    + ro[:, None].to(tl.int64) * P + p[None, :],
                    mask=o_ok[:, None] & k_ok[None, :], other=0.0)
        i_d = od[:, None] * SD - PD + kd[None, :] * DD
        i_h = oh[:, None] * SH - PH + kh[None, :] * DH
        i_w = ow[:, None] * SW - PW + kw[None, :] * DW
        ok = (k_ok[:, None] & q_ok[None, :] & (i_d >= 0) & (i_d < D) & (i_h >= 0) & (i_h < H)
              & (i_w >= 0) & (i_w < W))
        b = tl.load(x_ptr + ((nb.to(tl.int64) * C + g * CG)[:, None] + c[None, :]) * S
                    + (i_d * H + i_h) * W + i_w, mask=ok, other=0.0)
        acc = dot_acc(a, b, acc, PRECISION)
    dw = dw_ptr + ((g * OG + ro).to(tl.int64) * (CG * R))[:, None] + rq[None, :]
    tl.store(dw, store_as(acc, dw_ptr.dtype.element_ty), mask=o_ok[:, None] & q_ok[None, :])


# ---------------------------------------------------------------- tiles on a GPU
# (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) autotuned over for float32 on a GPU, per
# precision: TF32 runs on tensor cores (the accumulator spread over the MMA layout); IEEE
# fp32 runs tl.dot as FMAs, whose operands live in registers, so its tiles are smaller. Each
# fits the registers of sm_80 and sm_90 without spilling, for the plain kernels and the
# generated epilogues (the AOT gate, tests/test_triton_aot.py and bench/triton_aot_full.py).
_F32_TILES = {"tf32": ((128, 64, 32, 8, 3), (64, 128, 32, 8, 3), (64, 64, 32, 4, 3)),
              "ieee": ((64, 64, 16, 4, 2), (64, 32, 16, 4, 2), (32, 64, 16, 4, 2))}
_F64_TILE = (32, 32, 16, 4, 2)          # fp64 has no tensor-core path: one fixed tile
# float16/bfloat16 operands on tensor cores (float32 accumulators), BLOCK_K 32 as the 16-bit
# matmul's
_LOW_TILES = ((128, 64, 32, 8, 3), (64, 128, 32, 8, 3), (64, 64, 32, 4, 3))


def gpu_configs(dtype: str, precision: str) -> list:
    """The tiles a convolution kernel (plain or with a generated epilogue) runs with on a
    GPU: autotuned over these for float32 and the 16-bit floats, the one fixed tile for
    float64."""
    tiles = (_F32_TILES[precision] if dtype == "float32" else
             _LOW_TILES if dtype in LOW_DTYPES else (_F64_TILE,))
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk},
                          num_warps=warps, num_stages=stages)
            for bm, bn, bk, warps, stages in tiles]


_TUNED: dict[tuple, Callable] = {}
_SMALL = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16)
_KERNELS = {"fwd": conv_fwd_kernel, "input_grad": conv_input_grad_kernel,
            "kernel_grad": conv_kernel_grad_kernel}
# python function of a kernel launched with ``gpu_configs`` on a GPU -> its dtype (None: the
# dtype of its first tensor argument); what ``gpu_tiles`` reads
_GPU_TILED: dict = {k.fn: None for k in _KERNELS.values()}


def gpu_tiles(fn, args, kwargs) -> list[dict]:
    """The launch options (blocks, warps, stages) each GPU tile gives a launch of ``fn`` with
    ``args`` and ``kwargs``; [] for a kernel launched as it is everywhere."""
    if fn not in _GPU_TILED:
        return []
    dtype = _GPU_TILED[fn] or next(str(a.dtype).removeprefix("torch.") for a in args
                                   if isinstance(a, torch.Tensor))
    return [dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)
            for c in gpu_configs(dtype, kwargs["PRECISION"])]


def _launch(kernel, dtype: str, precision: str):
    """``kernel`` ready to launch and its fixed block options ({} when autotuned)."""
    if interpreting():
        return kernel, dict(_SMALL)
    configs = gpu_configs(dtype, precision)
    if len(configs) == 1:
        c = configs[0]
        return kernel, dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)
    return triton.autotune(configs, key=_GEOM.split(", "))(kernel), {}


def _kernel(which: str, dtype: str, precision: str):
    """The kernel to launch and its fixed block sizes ({} when autotuned)."""
    if dtype != "float64" and not interpreting():
        if (which, dtype, precision) not in _TUNED:
            _TUNED[which, dtype, precision] = _launch(_KERNELS[which], dtype, precision)[0]
        return _TUNED[which, dtype, precision], {}
    return _launch(_KERNELS[which], dtype, precision)


def tuned(kernel, dtype: str, precision: str):
    """``kernel`` (a generated conv-epilogue kernel) and its launch blocks, autotuned over the
    GPU tiles as the forward kernel is."""
    _GPU_TILED[kernel.fn] = dtype
    return _launch(kernel, dtype, precision)


def conv_precision(dtype: str, allow_tf32: bool) -> str:
    return "tf32" if allow_tf32 and dtype == "float32" else "ieee"


def conv_grid(rows: int, cols: int, groups: int):
    return lambda meta: (cdiv(rows, meta["BLOCK_M"]), cdiv(cols, meta["BLOCK_N"]), groups)


def weight_gemm_layout(geo: ConvGeometry, dtype: str, device) -> Callable:
    """W (O, C/g, R) -> (g, R, C/g, O/g): the GEMM's B operand contiguous along its columns
    (one small copy per call, so weight tiles load as whole vectors)."""
    og, cg = geo.o // geo.groups, geo.c // geo.groups
    r = geo.kernel[0] * geo.kernel[1] * geo.kernel[2]
    view = View.of((geo.groups, og, cg, r)).permute((0, 3, 2, 1))
    return copy_view(view, dtype, device)


def conv_forward(geo: ConvGeometry, y_shape, dtype: str, device, allow_tf32: bool = False
                 ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Plan ``y = conv(x, w)``; the wrapper lays the weight out as the GEMM's B operand."""
    to_gemm = weight_gemm_layout(geo, dtype, device)
    prec = conv_precision(dtype, allow_tf32)
    kernel, blocks = _kernel("fwd", dtype, prec)
    grid = conv_grid(geo.n * geo.out[0] * geo.out[1] * geo.out[2], geo.o // geo.groups, geo.groups)
    args = geo.args()

    def run(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        y = empty(y_shape, dtype, device)
        if y.numel():
            kernel[grid](x, to_gemm(w), y, *args, PRECISION=prec, **blocks)
        return y
    return run


def conv_input_grad(geo: ConvGeometry, x_shape, dtype: str, device, allow_tf32: bool = False
                    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    prec = conv_precision(dtype, allow_tf32)
    kernel, blocks = _kernel("input_grad", dtype, prec)
    grid = conv_grid(geo.n * geo.size[0] * geo.size[1] * geo.size[2], geo.c // geo.groups,
                 geo.groups)
    args = geo.args()

    def run(w: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
        dx = empty(x_shape, dtype, device)
        if dx.numel():
            kernel[grid](gy, w, dx, *args, PRECISION=prec, **blocks)
        return dx
    return run


def conv_kernel_grad(geo: ConvGeometry, w_shape, dtype: str, device, allow_tf32: bool = False
                     ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    prec = conv_precision(dtype, allow_tf32)
    kernel, blocks = _kernel("kernel_grad", dtype, prec)
    k = geo.kernel[0] * geo.kernel[1] * geo.kernel[2]
    grid = conv_grid(geo.o // geo.groups, (geo.c // geo.groups) * k, geo.groups)
    args = geo.args()

    def run(x: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
        dw = empty(w_shape, dtype, device)
        if dw.numel():
            kernel[grid](x, gy, dw, *args, PRECISION=prec, **blocks)
        return dw
    return run
