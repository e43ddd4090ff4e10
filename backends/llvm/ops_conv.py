"""Lowerings of the convolution family (chapter 9) on the packed GEMM of gemm.py.

Per image and group (the groups a loop of the generated code: one body, compile time flat in
their number), with R = C/groups * prod(kernel) rows and P = prod(out) columns:

* conv (eq. 9.6-9.8; conv_fft computes the same function): cols = im2col(x) (R x P), then
  y = W_g (O/g x R) @ cols. A 1x1 kernel at stride 1 without padding skips im2col.
* conv_kernel_grad (eq. 9.11): dW_g += gy_g (O/g x P) @ cols^T, one partial sum per thread,
  added up after a barrier.
* conv_input_grad (eq. 9.12-9.13): dcols = W_g^T @ gy_g, then col2im adds it into dx.
* unfold / fold: im2col / col2im themselves; locally_connected (eq. 9.9) and tiled_conv
  (eq. 9.10): im2col, then a per-location dot product.

Threads split the images (each with its own scratch columns), or, for a batch smaller than
the thread count, the GEMM of each image.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir

from irgraph.ops.conv_geometry import out_shape
from irgraph.types import TensorType

from .builder import (F32, I16, STORAGE, Buf, broadcast_strides, for_range, i64, prod,
                      row_strides)
from . import gemm_bf16
from . import conv_depthwise, conv_dot, conv_winograd
from .conv_direct import (Direct, arrays, convolve, kernel_gradient, scatter_input_grad,
                          scratch_bytes, usable)
from .gemm import call_gemm, gemm_function, no_epilogue, run_columns
from .gemm import prepacked_bytes as gemm_prepacked_bytes
from .gemm_tiling import splits_rows, tiling
from .lowering import fused_kind, kind_declines, lowering, prep_stride, prepares, scratch
from .module import ALIGN
from .ops_core import SCALAR


def conv_geo(x_shape, kernel, a):
    return dict(spatial=tuple(x_shape[2:]), kernel=tuple(kernel), stride=a["stride"],
                padding=a["padding"], dilation=a["dilation"],
                out=out_shape(x_shape[2:], kernel, a["stride"], a["padding"], a["dilation"]))


def is_pointwise(geo) -> bool:
    return (all(k == 1 for k in geo["kernel"]) and all(s == 1 for s in geo["stride"])
            and not any(geo["padding"]))


def window_nest(ctx, geo, channels: int, inside, outside=None, rows=None) -> None:
    """Loops c < channels, kernel offsets, output positions. Calls
    ``inside(row, col, in_offset_within_channel_plane, valid, c)`` where the last axis'
    window position is inside x (``valid``: the other axes' test, None for 1-D) and
    ``outside(row, col)`` where it is not. The last axis is cut into three ranges computed
    per kernel offset (zero / copy / zero), so the copy loop carries no bounds test.
    ``rows``: (lo, hi), only output positions lo <= p < hi along the first axis (of two or
    more)."""
    b = ctx.b
    d = len(geo["kernel"])
    kprod = prod(geo["kernel"])
    kstr, ostr, istr = (row_strides(geo["kernel"]), row_strides(geo["out"]),
                        row_strides(geo["spatial"]))
    with for_range(b, 0, channels, "wc") as c:
        def per_k(ks):
            row = b.add(b.mul(c, i64(kprod)), _dot(b, ks, kstr))
            _p_nest(ctx, geo, d, 0, ks, [],
                    lambda ps, ins, ok: inside(row, _dot(b, ps, ostr), _dot(b, ins, istr),
                                               ok, c),
                    None if outside is None else lambda ps: outside(row, _dot(b, ps, ostr)),
                    rows=rows)
        _k_nest(ctx, geo, d, 0, [], per_k)


def _dot(b, idx, strides):
    acc = i64(0)
    for i, s in zip(idx, strides):
        acc = b.add(acc, b.mul(i, i64(s)))
    return acc


def _k_nest(ctx, geo, d, ax, ks, fn):
    if ax == d:
        fn(ks)
        return
    with for_range(ctx.b, 0, geo["kernel"][ax], f"wk{ax}") as k:
        _k_nest(ctx, geo, d, ax + 1, ks + [k], fn)


def _position(b, geo, ax: int, p, k):
    return b.sub(b.add(b.mul(p, i64(geo["stride"][ax])), b.mul(k, i64(geo["dilation"][ax]))),
                 i64(geo["padding"][2 * ax]))


def _p_nest(ctx, geo, d, ax, ks, ps, inside, outside, ins=(), ok=None, rows=None):
    b = ctx.b
    if ax == d - 1:
        _last_axis(ctx, geo, ax, ks, ps, inside, outside, list(ins), ok)
        return
    lo, hi = rows if rows is not None and ax == 0 else (0, geo["out"][ax])
    with for_range(b, lo, hi, f"wp{ax}") as p:
        pos = _position(b, geo, ax, p, ks[ax])
        valid = b.and_(b.icmp_signed(">=", pos, i64(0)),
                       b.icmp_signed("<", pos, i64(geo["spatial"][ax])))
        safe = b.select(valid, pos, i64(0))
        _p_nest(ctx, geo, d, ax + 1, ks, ps + [p], inside, outside, list(ins) + [safe],
                valid if ok is None else b.and_(ok, valid))


def _last_axis(ctx, geo, ax, ks, ps, inside, outside, ins, ok) -> None:
    """Output positions p of the last axis with the window inside x form [lo, hi)."""
    b = ctx.b
    s, n, size = geo["stride"][ax], geo["out"][ax], geo["spatial"][ax]
    a = b.sub(i64(geo["padding"][2 * ax]), b.mul(ks[ax], i64(geo["dilation"][ax])))
    lo = b.select(b.icmp_signed("<=", a, i64(0)), i64(0),
                  b.sdiv(b.add(a, i64(s - 1)), i64(s)))
    last = b.add(a, i64(size - 1))          # p * s <= last
    hi = b.select(b.icmp_signed("<", last, i64(0)), i64(0), b.add(b.sdiv(last, i64(s)), i64(1)))
    lo = _clamp(b, lo, n)
    hi = _clamp(b, hi, n)
    hi = b.select(b.icmp_signed("<", hi, lo), lo, hi)

    def ranges():
        if outside is not None:
            with for_range(b, 0, lo, "wz0") as p:
                outside(ps + [p])
        with for_range(b, lo, hi, f"wp{ax}") as p:
            inside(ps + [p], ins + [_position(b, geo, ax, p, ks[ax])], None)
        if outside is not None:
            with for_range(b, hi, n, "wz1") as p:
                outside(ps + [p])
    if ok is None:
        ranges()
        return
    # the other axes' test is the same along the whole row: decided once, outside the loops
    with b.if_else(ok) as (inside_rows, outside_rows):
        with inside_rows:
            ranges()
        with outside_rows:
            if outside is not None:
                with for_range(b, 0, n, "wz") as p:
                    outside(ps + [p])


def _clamp(b, v, n: int):
    v = b.select(b.icmp_signed("<", v, i64(0)), i64(0), v)
    return b.select(b.icmp_signed(">", v, i64(n)), i64(n), v)


# kernel offsets x output positions of a channel up to which im2col is straight-line code
TINY_IM2COL = 256


def window_table(geo) -> list[tuple[int, int, int | None]]:
    """Every (row within a channel's rows, output column, input offset within the channel's
    plane, None where the window leaves x) of a geometry, worked out at compile time."""
    kstr, ostr, istr = (row_strides(geo["kernel"]), row_strides(geo["out"]),
                        row_strides(geo["spatial"]))
    table = []
    for ks in np.ndindex(*geo["kernel"]):
        for ps in np.ndindex(*geo["out"]):
            pos = [p * s + k * dl - geo["padding"][2 * ax] for ax, (p, k, s, dl) in
                   enumerate(zip(ps, ks, geo["stride"], geo["dilation"]))]
            inside = all(0 <= q < n for q, n in zip(pos, geo["spatial"]))
            table.append((int(np.dot(ks, kstr)), int(np.dot(ps, ostr)),
                          int(np.dot(pos, istr)) if inside else None))
    return table


def im2col(ctx, x: Buf, xbase, channels: int, geo, dst: Buf, at=None, rows=None) -> None:
    """dst[(c, k), p] = x[xbase + c*plane + in(p, k)], zero where the window leaves x;
    ``at(row, col)`` places the element instead (a transposed layout). Tiny planes (at most
    TINY_IM2COL offsets and positions per channel: late layers, small images) copy through
    a table of compile-time offsets, no loop or bounds test per position. ``rows``: the
    output rows (``window_nest``) to make, all by default."""
    b = ctx.b
    plane, pn = prod(geo["spatial"]), prod(geo["out"])
    zero = ir.Constant(dst.elem, 0.0)
    if at is None:
        def at(row, col):
            return b.add(b.mul(row, i64(pn)), col)
    kprod = prod(geo["kernel"])
    if kprod * pn <= TINY_IM2COL and rows is None:
        table = window_table(geo)
        with for_range(b, 0, channels, "wc") as c:
            base, row0 = b.add(xbase, b.mul(c, i64(plane))), b.mul(c, i64(kprod))
            for r, col, off in table:
                v = zero if off is None else x.load(b, b.add(base, i64(off)))
                dst.store(b, at(b.add(row0, i64(r)), i64(col)), v)
        return

    def inside(row, col, inoff, ok, c):
        v = x.load(b, b.add(xbase, b.add(b.mul(c, i64(plane)), inoff)))
        dst.store(b, at(row, col), v if ok is None else b.select(ok, v, zero))

    def outside(row, col):
        dst.store(b, at(row, col), zero)
    window_nest(ctx, geo, channels, inside, outside, rows)


def col2im(ctx, src: Buf, channels: int, geo, dx: Buf, xbase) -> None:
    """dx[xbase + c*plane + in(p, k)] += src[(c, k), p] where the window is inside x."""
    b = ctx.b
    plane, pn = prod(geo["spatial"]), prod(geo["out"])

    def inside(row, col, inoff, ok, c):
        def add():
            at = b.add(xbase, b.add(b.mul(c, i64(plane)), inoff))
            v = src.load(b, b.add(b.mul(row, i64(pn)), col))
            dx.store(b, at, b.fadd(dx.load(b, at), v))
        if ok is None:
            add()
        else:
            with b.if_then(ok):
                add()
    window_nest(ctx, geo, channels, inside)


def _zero(ctx, buf: Buf, base, n: int) -> None:
    b = ctx.b
    with for_range(b, 0, n, "z") as i:
        buf.store(b, b.add(base, i), ir.Constant(buf.elem, 0.0))


def cols_bytes(x_shape, w_shape, kernel, a, dtype_size: int, groups: int) -> int:
    geo = conv_geo(x_shape, kernel, a)
    rows = (x_shape[1] // groups) * prod(kernel)
    return -(-rows * prod(geo["out"]) * dtype_size // ALIGN) * ALIGN


def thread_cols(ctx, nbytes: int, elem) -> ir.Value:
    return ctx.b.bitcast(ctx.thread_scratch(nbytes), ir.PointerType(elem))


def thread_gemm(ctx, dtype, a, a_str, bm, b_str, c, ldc, M, N, K, acc=0, ep=None, pre=None):
    """One whole GEMM on this thread (the caller split the work); M, N and K may be values.
    ``ep``: the epilogue's (bias, R, ldr, lo, hi, flags) at C's first row and column
    (gemm.gemm_function), applied as the tiles are stored. ``pre``: a block where A's
    packed form is kept between calls (the same A at every call that passes it)."""
    b = ctx.b
    fn = gemm_function(ctx.module, dtype, ctx.features, epilogue=ep is not None,
                       prepacked=pre is not None)
    if pre is not None and ep is None:
        ep = no_epilogue(dtype)
    b.call(fn, [a, i64(a_str[0]), i64(a_str[1]), bm, i64(b_str[0]), i64(b_str[1]), c,
                i64(ldc), M if isinstance(M, ir.Value) else i64(M),
                N if isinstance(N, ir.Value) else i64(N), K if isinstance(K, ir.Value) else i64(K),
                ctx.scratch(), i64(acc)] + list(ep or ()) + ([pre] if pre is not None else []))


# ---------------------------------------------------------------- conv


def _conv_scratch(node, threads, features):
    x, w = node.inputs
    if conv_depthwise.applies(x.shape, w.shape, node.attrs["groups"], x.dtype):
        return threads * _depthwise_bytes(node)
    if gemm_bf16.native(node):      # the bfloat16 im2col columns of lower_conv
        return threads * conv_cols_bytes(node)
    wg = _winograd(node, threads, features)
    if wg is not None:
        return wg.scratch_bytes()
    dot = _dot_forward(node, features)
    if dot is not None:
        return scratch_bytes(x.dtype, dot.scratch_parts())
    dc = _direct_forward(node, threads, features)
    if dc is not None:
        return threads * dc.scratch_bytes(dc.forward_parts(node.attrs["groups"]))
    rows = row_chunks(node)
    if rows is not None:
        return threads * _chunk_bytes(node, rows)
    k = images_per_gemm(node, threads, features)
    if k is not None:
        return threads * _batched_bytes(node, k)
    if is_pointwise(conv_geo(x.shape, w.shape[2:], node.attrs)):
        return 0            # the GEMM reads each image in place: no columns
    if splits_k(node, threads, features):
        return max(_ksplit_bytes(node, threads), threads * cols_bytes(
            x.shape, w.shape, w.shape[2:], node.attrs, x.type.np_dtype.itemsize, 1))
    return threads * cols_bytes(x.shape, w.shape, w.shape[2:], node.attrs,
                                 x.type.np_dtype.itemsize, node.attrs["groups"])


scratch("conv", "conv_fft")(_conv_scratch)

# im2col columns of one chunk of output rows: about this many bytes, to stay in cache
ROW_CHUNK_BYTES = 384 * 1024
# but at least this many columns per GEMM call (each call packs the weights again)
MIN_CHUNK_COLS = 512


def row_chunks(node) -> int | None:
    """Output rows (first spatial axis of two or more) per chunk when the im2col/GEMM path
    runs chunk by chunk: im2col of the chunk, its GEMM and epilogue while the columns are in
    cache, threads taking (image, chunk) pairs. The chunks as even as their count allows
    (a short last chunk leaves a thread idle at batch 1: MobileNetV2's stem, two threads,
    chunks of 33, 33, 33 and 13 rows ran 143 and 104 us). None for one chunk per image (and
    for a pointwise kernel, which has no columns)."""
    x, w = node.inputs
    geo = conv_geo(x.shape, w.shape[2:], node.attrs)
    out = geo["out"]
    if is_pointwise(geo) or len(out) < 2:
        return None
    inner = prod(out[1:])
    R = x.shape[1] // node.attrs["groups"] * prod(geo["kernel"])
    cols = max(MIN_CHUNK_COLS, ROW_CHUNK_BYTES // (R * x.type.np_dtype.itemsize))
    rows = -(-cols // inner)
    if 2 * rows > out[0]:
        return None
    return -(-out[0] // -(-out[0] // rows))     # as many chunks, of rows as even as can be


# the columns and results of a batched pointwise GEMM per thread, at most
MAX_BATCHED_BYTES = 4 << 20


def images_per_gemm(node, threads: int, features: str) -> int | None:
    """Images whose output positions a pointwise (1x1, stride 1, unpadded) convolution puts
    side by side as the columns of one GEMM, when the thread doing the most GEMM columns
    (counted as the GEMM's tiles spend them, ``gemm.run_columns``: 9 positions of a 3 x 3
    grid fill a 16-column vector) then does at least a quarter fewer than with one GEMM
    per image; None for one per image. The images' columns are copied in, the results
    copied out, which costs about a fifth of the GEMM: 576 -> 96 channels on 14 x 14 (196
    columns: 192 and 4 dot products), batch 8, one thread, best of 25, Intel Xeon
    (AVX-512): 4 images a GEMM 1.46 ms, one 1.11 (onnxruntime 1.17); MobileNetV2, batch
    8, two threads: 25.1-26.3 ms with 7 x 7 and 14 x 14 grids batched, 22.4-23.4 without."""
    x, w = node.inputs
    geo = conv_geo(x.shape, w.shape[2:], node.attrs)
    N, C, O = x.shape[0], x.shape[1], w.shape[0]
    if (not is_pointwise(geo) or node.attrs["groups"] != 1 or N < 2
            or x.dtype not in ("float32", "float64")):
        return None
    P, t = prod(geo["out"]), tiling(x.dtype, features)

    def cost(k):            # columns of the busiest thread
        return -(-(-(-N // k)) // threads) * run_columns(k * P, C, t)
    item = x.type.np_dtype.itemsize
    fits = [k for k in range(1, N + 1) if (C + O) * k * P * item <= MAX_BATCHED_BYTES]
    best = min(fits, key=lambda k: (cost(k), k), default=1)
    return best if best > 1 and cost(best) * 4 <= cost(1) * 3 else None


# a batch smaller than the thread count whose im2col GEMM would split its rows (few
# columns) splits its reduction instead from this many rows of the columns (R) on
KSPLIT_FROM = 1024


def splits_k(node, threads: int, features: str) -> bool:
    """Whether the threads of an image's im2col GEMM (a batch smaller than the thread
    count, one group, columns too few to split: ``splits_rows``) take runs of its
    reduction, each the im2col rows of its own input channels, with no barrier before its
    GEMM and no other thread's columns packed again; after a barrier the partial sums are
    added up and the region's epilogue applied, each thread over its run of output
    channels. By rows, every thread packs all of the columns (R x P) for its tiles after
    waiting for all of them. ResNet-18's 512-channel 3x3 layers on 7 x 7 (R = 4608, 49
    columns) at batch 1 on two threads."""
    x, w = node.inputs
    geo = conv_geo(x.shape, w.shape[2:], node.attrs)
    t = tiling(x.dtype, features)
    C, O, R = x.shape[1], w.shape[0], x.shape[1] * prod(w.shape[2:])
    return (threads > 1 and x.shape[0] < threads and node.attrs["groups"] == 1
            and not is_pointwise(geo) and x.dtype in ("float32", "float64")
            and R >= KSPLIT_FROM and C >= threads and row_chunks(node) is None
            and splits_rows(O, prod(geo["out"]), t.mr, t.nr, threads))


def _ksplit_bytes(node, threads: int) -> int:
    """The node scratch of ``splits_k``: the columns, then threads - 1 partial sums."""
    x, w = node.inputs
    P = prod(conv_geo(x.shape, w.shape[2:], node.attrs)["out"])
    item = x.type.np_dtype.itemsize
    cols = cols_bytes(x.shape, w.shape, w.shape[2:], node.attrs, item, 1)
    return cols + (threads - 1) * w.shape[0] * P * item


def _batched_bytes(node, k: int) -> int:
    x, w = node.inputs
    P = prod(x.shape[2:])
    return -(-(x.shape[1] + w.shape[0]) * k * P * x.type.np_dtype.itemsize // ALIGN) * ALIGN


def _chunk_bytes(node, rows: int) -> int:
    x, w = node.inputs
    out = conv_geo(x.shape, w.shape[2:], node.attrs)["out"]
    R = x.shape[1] // node.attrs["groups"] * prod(w.shape[2:])
    return -(-R * rows * prod(out[1:]) * x.type.np_dtype.itemsize // ALIGN) * ALIGN


def _depthwise_bytes(node) -> int:
    """One thread's scratch of a depthwise convolution (conv_depthwise's padded plane)."""
    x = node.inputs[0]
    a = node.attrs
    return scratch_bytes(x.dtype, [conv_depthwise.scratch_elems(
        x.shape, node.inputs[1].shape, a["padding"], a["stride"], a["dilation"])])


def _depthwise(ctx, node, x: Buf, w: Buf, y: Buf, put=None) -> None:
    a = node.attrs
    b = ctx.b
    xp = b.bitcast(ctx.thread_scratch(_depthwise_bytes(node)), ir.PointerType(x.elem))
    conv_depthwise.lower(ctx, x, w, y, a["stride"], a["padding"], a["dilation"], xp, put)


def _winograd(node, threads, features):
    x, w = node.inputs
    return conv_winograd.plan(x.shape, w.shape, node.attrs, x.dtype, features, threads)


@prepares("conv", "fused")
def _prepared_weights(node, threads, features):
    """(the weight operand's position, the bytes of its transform) of a Winograd
    convolution, alone or as an epilogue region's (whose one convolution reads a region
    input as its weights): the transform is kept between calls when those weights are
    constant (``lowering.PREPARES``). None for every other node."""
    conv, inputs = node, list(node.inputs)
    if node.op == "fused":
        if node.attrs.get("kind") != "epilogue":
            return None
        body = node.attrs["body"]
        conv, inputs = epilogue_conv(body, threads, features), list(body.inputs)
        if conv is None:
            return None
    w = conv.inputs[1]
    if w not in inputs:
        return None
    wg = _winograd(conv, threads, features)
    if wg is not None:
        return inputs.index(w), 1, conv_winograd.prepared_bytes(wg)
    if _gemm_prepacks(conv, threads, features):
        O, R = w.shape[0], prod(w.shape[1:])
        return inputs.index(w), threads, gemm_prepacked_bytes(O, R, w.dtype, features)
    return None


def _gemm_prepacks(conv, threads, features) -> bool:
    """Whether ``_conv`` runs ``conv`` through ``_conv_gemm`` with the weights as one
    GEMM operand (one group, not batched pointwise), whose packed form a prepared block
    can keep: a region per thread (each its run of rows), the first also for the whole."""
    x, w = conv.inputs
    return (x.dtype in ("float32", "float64") and conv.attrs["groups"] == 1
            and x.type.rank >= 3
            and not conv_depthwise.applies(x.shape, w.shape, 1, x.dtype)
            and _winograd(conv, threads, features) is None
            and _dot_forward(conv, features) is None
            and _direct_forward(conv, threads, features) is None
            and images_per_gemm(conv, threads, features) is None)


def _direct(x_shape, cin, cout, kernel, pads, a, dtype, features, threads):
    """The direct (grid) convolution when it applies and pays, else None: stride 1, a float
    type, at least one image per thread, little wasted grid, not a 1x1 kernel (its input
    is already the GEMM operand)."""
    if (dtype not in ("float32", "float64") or x_shape[0] < threads
            or not usable(x_shape[2:], kernel, a["stride"], pads, a["dilation"])
            or (all(k == 1 for k in kernel) and not any(pads))):    # 1x1: a plain GEMM
        return None
    dc = Direct(cin, cout, tuple(x_shape[2:]), tuple(pads), tuple(kernel),
                tuple(a["dilation"]), dtype, features)
    return dc if dc.worth_it() else None


def _direct_forward(node, threads, features):
    x, w = node.inputs
    G = node.attrs["groups"]
    dc = _direct(x.shape, x.shape[1] // G, w.shape[0] // G, w.shape[2:],
                 node.attrs["padding"], node.attrs, x.dtype, features, threads)
    return dc if dc is not None and dc.beats_im2col(x.shape[0], threads) else None


def _dot_forward(node, features):
    x, w = node.inputs
    geo = conv_geo(x.shape, w.shape[2:], node.attrs)
    return conv_dot.plan(x.shape[0], x.shape[1], w.shape[0], prod(geo["out"]),
                         w.shape[1] * prod(w.shape[2:]), node.attrs["groups"], x.dtype,
                         features)


def _conv_dot(ctx, dot, node, x: Buf, w: Buf, y: Buf) -> None:
    """Few output positions: a transposed im2col of every image (threads split the images),
    then dot products along R (threads split the output channels); or, for a batch of them,
    im2col side by side, one GEMM, the result put back in (N, O, P) order."""
    b = ctx.b
    geo = conv_geo(x.shape, w.shape[2:], node.attrs)
    C, plane, P = x.shape[1], prod(geo["spatial"]), prod(geo["out"])
    lo, hi = ctx.split(x.shape[0])
    if not dot.dots:
        J, O, R = dot.J, dot.O, dot.R
        cp, outp = arrays(ctx, x.dtype, ctx.node_scratch, dot.scratch_parts())
        cols = Buf(cp, _tt((R, J), x))
        with for_range(b, lo, hi, "img") as n:
            first = b.mul(n, i64(P))
            im2col(ctx, x, b.mul(n, i64(C * plane)), C, geo, cols,
                   at=lambda row, col: b.add(b.mul(row, i64(J)), b.add(first, col)))
        ctx.barrier()
        call_gemm(ctx, x.dtype, w.ptr, (R, 1), cp, (J, 1), outp, J, O, J, R)
        ctx.barrier()
        with for_range(b, lo, hi, "img") as n:
            with for_range(b, 0, O, "o") as o:
                src = b.add(b.mul(o, i64(J)), b.mul(n, i64(P)))
                dst = b.mul(b.add(b.mul(n, i64(O)), o), i64(P))
                with for_range(b, 0, P, "p") as p:
                    y.store(b, b.add(dst, p), b.load(b.gep(outp, [b.add(src, p)])))
        return
    cols = Buf(b.bitcast(ctx.node_scratch, ir.PointerType(x.elem)), _tt((dot.J, dot.Rp), x))
    with for_range(b, lo, hi, "img") as n:
        first = b.mul(n, i64(P))
        im2col(ctx, x, b.mul(n, i64(C * plane)), C, geo, cols,
               at=lambda row, col: b.add(b.mul(b.add(first, col), i64(dot.Rp)),
                                         dot.pos(b, row)))
    conv_dot.zero_gaps(ctx, dot, cols.ptr, b.mul(lo, i64(P)), b.mul(hi, i64(P)))
    ctx.barrier()
    conv_dot.multiply(ctx, dot, w.ptr, cols.ptr, y.ptr)


def _forward_meets(node, threads: int, features: str) -> bool:
    """Whether ``_conv``'s threads meet (``Lowering.meets``): Winograd (a barrier after the
    weight transform), few positions (``conv_dot``: im2col, then the GEMM), a batch smaller
    than the thread count (each image's GEMM split), bfloat16. The other paths split
    images, chunks of images or of rows, each share in the running thread's own scratch
    (``Ctx.thread_scratch``): claimed shares."""
    x, w = node.inputs
    if x.dtype == "bfloat16":
        return True
    if conv_depthwise.applies(x.shape, w.shape, node.attrs["groups"], x.dtype):
        return False
    if (_winograd(node, threads, features) is not None
            or _dot_forward(node, features) is not None):
        return True
    if (_direct_forward(node, threads, features) is not None
            or images_per_gemm(node, threads, features) is not None
            or row_chunks(node) is not None):
        return False
    # per_image: each image's GEMM split, after im2col into the node's scratch (a barrier),
    # and a barrier before the next image or group; one pointwise image of one group meets
    # nowhere (the threads' shares of its GEMM, each with its epilogue)
    return x.shape[0] < threads and not (x.shape[0] == 1 and node.attrs["groups"] == 1 and
                                         is_pointwise(conv_geo(x.shape, w.shape[2:],
                                                               node.attrs)))


@lowering("conv", "conv_fft", parallel=True, meets=_forward_meets)
def _conv(ctx, node, ins, outs):
    (x, w), (y,) = ins, outs
    if x.dtype == "bfloat16":       # kept unwidened where gemm_bf16.native holds
        return lower_conv(ctx, node, x, w, y)
    G = node.attrs["groups"]
    if conv_depthwise.applies(x.shape, w.shape, G, x.dtype):
        _depthwise(ctx, node, x, w, y)
        return
    wg = _winograd(node, ctx.max_threads, ctx.features)
    if wg is not None:
        conv_winograd.lower(ctx, wg, x, w, y, prep=ctx.prep)
        return
    dot = _dot_forward(node, ctx.features)
    if dot is not None:
        _conv_dot(ctx, dot, node, x, w, y)
        return
    dc = _direct_forward(node, ctx.max_threads, ctx.features)
    if dc is not None:
        R = dc.R
        convolve(ctx, dc, G, x.shape[0], x, y, w,
                 lambda g, o, r: ctx.b.add(ctx.b.mul(ctx.b.add(ctx.b.mul(g, i64(dc.cout)), o),
                                                     i64(R)), r))
        return
    _conv_gemm(ctx, node, x, w, y)


# output bytes of one GEMM call when a region's epilogue follows it (applied while in cache)
EPILOGUE_CHUNK_BYTES = 256 * 1024


def _conv_gemm(ctx, node, x: Buf, w: Buf, y: Buf, tail=None, ep=None) -> None:
    """im2col (none for a pointwise kernel) and one GEMM per image and group. With
    ``tail(n, g, p0, p1, i0=0, i1=og)`` (a region's epilogue over output positions
    [p0, p1) of channels [i0, i1) of image n, group g) the GEMM runs in chunks of columns,
    each followed by the tail while its output is in cache; at a batch smaller than the
    thread count the threads then split each image's columns, or its rows where
    ``splits_rows`` (the tail applied by the thread that made them). With ``ep`` (the
    epilogue GEMM's (bias, R, lo, hi, flags), ``gemm_epilogue``; R laid out as y) the
    GEMMs apply it themselves, unchunked; the batched pointwise GEMM keeps ``tail``."""
    G = node.attrs["groups"]
    geo = conv_geo(x.shape, w.shape[2:], node.attrs)
    N, C, O = x.shape[0], x.shape[1], w.shape[0]
    cg, og = C // G, O // G
    R, P, plane = cg * prod(geo["kernel"]), prod(geo["out"]), prod(geo["spatial"])
    colbytes = cols_bytes(x.shape, w.shape, w.shape[2:], node.attrs, x.type.np_dtype.itemsize,
                           G)
    b = ctx.b
    pointwise = is_pointwise(geo)
    nr, mr = tiling(x.dtype, ctx.features).nr, tiling(x.dtype, ctx.features).mr
    chunk = max(nr, EPILOGUE_CHUNK_BYTES // (og * x.type.np_dtype.itemsize) // nr * nr)
    # threads sharing an image's GEMM (a batch smaller than the thread count) take runs
    # of its rows (output channels) where its columns make too few strips
    rows_split = splits_rows(og, P, mr, nr, ctx.max_threads)
    prep = ctx.prep if G == 1 else None     # kept packed weights (``_prepared_weights``)
    stride = prep_stride(gemm_prepacked_bytes(og, R, x.dtype, ctx.features))

    def pre(rows_of=None):
        """The prepared region of the whole weights (the first), or of the run of rows
        this thread takes (``rows_of``: its id)."""
        if prep is None or rows_of is None:
            return prep
        return b.gep(prep, [b.mul(rows_of, i64(stride))])

    def epi(g, m0, yoff):
        """The epilogue's operands at row m0 of group g's GEMM, C at y's offset yoff."""
        if ep is None:
            return None
        bias, res, lo, hi, flags = ep
        return (b.gep(bias, [b.add(b.mul(g, i64(og)), m0)]), b.gep(res, [yoff]), i64(P),
                lo, hi, flags)

    def chunks(src, wp, yp, n, g, c0, c1):
        with for_range(b, c0, c1, "pch", chunk) as p0:
            p1 = b.select(b.icmp_signed("<", b.add(p0, i64(chunk)), c1),
                          b.add(p0, i64(chunk)), c1)
            thread_gemm(ctx, x.dtype, wp, (R, 1), b.gep(src, [p0]), (P, 1), b.gep(yp, [p0]), P,
                        og, b.sub(p1, p0), R, pre=pre())
            tail(n, g, p0, p1)

    k = images_per_gemm(node, ctx.max_threads, ctx.features)
    if k is not None:
        _batched_pointwise(ctx, node, k, x, w, y, tail)
        return
    rows = row_chunks(node)
    if rows is not None:
        out0, inner = geo["out"][0], prod(geo["out"][1:])
        nch = -(-out0 // rows)
        ld = rows * inner
        cols = Buf(thread_cols(ctx, _chunk_bytes(node, rows), x.elem), _tt((R, ld), x))
        lo, hi = ctx.split(N * nch)
        with for_range(b, lo, hi, "chunk") as u:
            n, k = b.sdiv(u, i64(nch)), b.srem(u, i64(nch))
            r0 = b.mul(k, i64(rows))
            r1 = b.select(b.icmp_signed("<", b.add(r0, i64(rows)), i64(out0)),
                          b.add(r0, i64(rows)), i64(out0))
            p0, p1 = b.mul(r0, i64(inner)), b.mul(r1, i64(inner))
            with for_range(b, 0, G, "grp") as g:
                xbase = b.add(b.mul(n, i64(C * plane)), b.mul(g, i64(cg * plane)))
                im2col(ctx, x, xbase, cg, geo, cols, rows=(r0, r1),
                       at=lambda row, col: b.add(b.mul(row, i64(ld)), b.sub(col, p0)))
                wp = b.gep(w.ptr, [b.mul(g, i64(og * R))])
                yoff = b.add(b.add(b.mul(n, i64(O * P)), b.mul(g, i64(og * P))), p0)
                yp = b.gep(y.ptr, [yoff])
                thread_gemm(ctx, x.dtype, wp, (R, 1), cols.ptr, (ld, 1), yp, P, og, b.sub(p1, p0),
                            R, ep=epi(g, i64(0), yoff), pre=pre())
                if tail is not None and ep is None:
                    tail(n, g, p0, p1)
        return

    def k_split(n):
        """``splits_k``: this thread's input channels' rows of the columns, its partial
        GEMM over them (thread 0's into y, the others' into the scratch after the
        columns), a barrier, then its run of output channels summed and the tail."""
        kp = prod(geo["kernel"])
        cols = Buf(b.bitcast(ctx.node_scratch, ir.PointerType(x.elem)), _tt((R, P), x))
        part = b.gep(cols.ptr, [i64(R * P)])
        c0, c1 = ctx.split(C)
        r0, r1 = b.mul(c0, i64(kp)), b.mul(c1, i64(kp))
        xbase = b.mul(n, i64(C * plane))
        im2col(ctx, x, b.add(xbase, b.mul(c0, i64(plane))), b.sub(c1, c0), geo, cols,
               at=lambda row, col: b.add(b.mul(b.add(row, r0), i64(P)), col))
        yp = b.gep(y.ptr, [b.mul(n, i64(O * P))])
        mine = b.select(b.icmp_signed("==", ctx.tid, i64(0)), yp,
                        b.gep(part, [b.mul(b.sub(ctx.tid, i64(1)), i64(O * P))]))
        thread_gemm(ctx, x.dtype, b.gep(w.ptr, [r0]), (R, 1), b.gep(cols.ptr, [b.mul(r0, i64(P))]),
                    (P, 1), mine, P, og, P, b.sub(r1, r0), pre=pre(ctx.tid))
        ctx.barrier()
        m0, m1 = ctx.split(og)
        with for_range(b, 1, ctx.nthreads, "kpart") as t:
            src = b.gep(part, [b.mul(b.sub(t, i64(1)), i64(O * P))])
            with for_range(b, b.mul(m0, i64(P)), b.mul(m1, i64(P)), "ksum") as i:
                at = b.gep(yp, [i])
                b.store(b.fadd(b.load(at), b.load(b.gep(src, [i]))), at)
        tail(n, i64(0), i64(0), i64(P), m0, m1)
        if N > 1:
            ctx.barrier()

    if tail is not None and not ctx.single and splits_k(node, ctx.max_threads, ctx.features):
        with for_range(b, 0, N, "img") as n:
            k_split(n)
        return

    def image(n, split_gemm: bool):
        if pointwise:           # the GEMM reads the image in place
            cols = None
        else:
            cols = Buf(thread_cols(ctx, colbytes, x.elem) if not split_gemm
                       else b.bitcast(ctx.node_scratch, ir.PointerType(x.elem)),
                       _tt((R, P), x))
        with for_range(b, 0, G, "grp") as g:           # one body for every group
            xbase = b.add(b.mul(n, i64(C * plane)), b.mul(g, i64(cg * plane)))
            if pointwise:
                src = b.gep(x.ptr, [xbase])
            else:
                if split_gemm:      # threads split the channels (rows of cols)
                    c0, c1 = ctx.split(cg)
                    row0 = b.mul(c0, i64(prod(geo["kernel"])))
                    im2col(ctx, x, b.add(xbase, b.mul(c0, i64(plane))), b.sub(c1, c0), geo,
                           cols, at=lambda row, col: b.add(b.mul(b.add(row, row0), i64(P)),
                                                           col))
                    ctx.barrier()
                else:
                    im2col(ctx, x, xbase, cg, geo, cols)
                src = cols.ptr
            wp = b.gep(w.ptr, [b.mul(g, i64(og * R))])
            yoff = b.add(b.mul(n, i64(O * P)), b.mul(g, i64(og * P)))
            yp = b.gep(y.ptr, [yoff])
            if split_gemm and ep is not None:      # this thread's rows or strips, one GEMM
                if rows_split:
                    lo, hi = ctx.split(-(-og // mr))
                    m0 = b.mul(lo, i64(mr))
                    m1 = b.select(b.icmp_signed("<", b.mul(hi, i64(mr)), i64(og)),
                                  b.mul(hi, i64(mr)), i64(og))
                    c0, c1, src0 = m0, m1, i64(0)
                else:
                    lo, hi = ctx.split(-(-P // nr))
                    c0, c1 = b.mul(lo, i64(nr)), b.mul(hi, i64(nr))
                    c1 = b.select(b.icmp_signed("<", c1, i64(P)), c1, i64(P))
                with b.if_then(b.icmp_signed("<", c0, c1)):
                    if rows_split:
                        at = b.mul(m0, i64(P))
                        thread_gemm(ctx, x.dtype, b.gep(wp, [b.mul(m0, i64(R))]), (R, 1), src,
                                    (P, 1), b.gep(yp, [at]), P, b.sub(m1, m0), P, R,
                                    ep=epi(g, m0, b.add(yoff, at)), pre=pre(ctx.tid))
                    else:
                        thread_gemm(ctx, x.dtype, wp, (R, 1), b.gep(src, [c0]), (P, 1),
                                    b.gep(yp, [c0]), P, og, b.sub(c1, c0), R,
                                    ep=epi(g, i64(0), b.add(yoff, c0)), pre=pre())
                if G > 1 or N > 1:
                    ctx.barrier()
            elif ep is not None:
                thread_gemm(ctx, x.dtype, wp, (R, 1), src, (P, 1), yp, P, og, P, R,
                            ep=epi(g, i64(0), yoff), pre=pre())
            elif split_gemm and tail is not None and rows_split:   # this thread's rows
                lo, hi = ctx.split(-(-og // mr))
                m0 = b.mul(lo, i64(mr))
                m1 = b.select(b.icmp_signed("<", b.mul(hi, i64(mr)), i64(og)),
                              b.mul(hi, i64(mr)), i64(og))
                with b.if_then(b.icmp_signed("<", m0, m1)):
                    wrows = b.gep(wp, [b.mul(m0, i64(R))])
                    yrows = b.gep(yp, [b.mul(m0, i64(P))])
                    with for_range(b, 0, P, "pch", chunk) as p0:
                        p1 = b.select(b.icmp_signed("<", b.add(p0, i64(chunk)), i64(P)),
                                      b.add(p0, i64(chunk)), i64(P))
                        thread_gemm(ctx, x.dtype, wrows, (R, 1), b.gep(src, [p0]), (P, 1),
                                    b.gep(yrows, [p0]), P, b.sub(m1, m0), b.sub(p1, p0), R,
                                    pre=pre(ctx.tid))
                        tail(n, g, p0, p1, m0, m1)
                if G > 1 or N > 1:
                    ctx.barrier()
            elif split_gemm and tail is not None:     # this thread's strips of columns
                lo, hi = ctx.split(-(-P // nr))
                c1 = b.mul(hi, i64(nr))
                chunks(src, wp, yp, n, g, b.mul(lo, i64(nr)),
                       b.select(b.icmp_signed("<", c1, i64(P)), c1, i64(P)))
                if G > 1 or N > 1:
                    ctx.barrier()
            elif split_gemm:
                call_gemm(ctx, x.dtype, wp, (R, 1), src, (P, 1), yp, P, og, P, R,
                          pre=pre if prep is not None else None)
                if G > 1 or N > 1:      # the columns are rebuilt next (the node's own
                    ctx.barrier()       # barrier follows the last GEMM)
            elif tail is not None:
                chunks(src, wp, yp, n, g, i64(0), i64(P))
            else:
                thread_gemm(ctx, x.dtype, wp, (R, 1), src, (P, 1), yp, P, og, P, R, pre=pre())
    per_image(ctx, N, image)


def _batched_pointwise(ctx, node, k: int, x: Buf, w: Buf, y: Buf, tail) -> None:
    """``images_per_gemm``: threads take groups of k images; each group's channels copied
    side by side (C x k*P), one GEMM, its O x k*P result copied into y (through the
    region's epilogue, ``tail`` with the positions of the result)."""
    b = ctx.b
    N, C, O, P = x.shape[0], x.shape[1], w.shape[0], prod(x.shape[2:])
    J = k * P
    mine = ctx.thread_scratch(_batched_bytes(node, k))
    cols = b.bitcast(mine, ir.PointerType(x.elem))
    res = b.gep(cols, [i64(C * J)])
    lo, hi = ctx.split(-(-N // k))
    with for_range(b, lo, hi, "igrp") as u:
        n0 = b.mul(u, i64(k))
        n1 = b.select(b.icmp_signed("<", b.add(n0, i64(k)), i64(N)), b.add(n0, i64(k)),
                      i64(N))
        with for_range(b, n0, n1, "img") as n:
            col0 = b.mul(b.sub(n, n0), i64(P))
            with for_range(b, 0, C, "c") as c:
                src = b.mul(b.add(b.mul(n, i64(C)), c), i64(P))
                dst = b.add(b.mul(c, i64(J)), col0)
                with for_range(b, 0, P, "p") as p:
                    b.store(x.load(b, b.add(src, p)), b.gep(cols, [b.add(dst, p)]))
        thread_gemm(ctx, x.dtype, w.ptr, (C, 1), cols, (J, 1), res, J, O,
              b.mul(b.sub(n1, n0), i64(P)), C)
        with for_range(b, n0, n1, "img") as n:
            col0 = b.mul(b.sub(n, n0), i64(P))
            with for_range(b, 0, O, "o") as o:
                src = b.add(b.mul(o, i64(J)), col0)
                dst = b.mul(b.add(b.mul(n, i64(O)), o), i64(P))
                with for_range(b, 0, P, "p") as p:
                    y.store(b, b.add(dst, p), b.load(b.gep(res, [b.add(src, p)])))
            if tail is not None:
                tail(n, i64(0), i64(0), i64(P))


def per_image(ctx, N: int, image) -> None:
    """Images split across threads; a batch smaller than the thread count splits each GEMM."""
    b = ctx.b
    if N >= ctx.max_threads or ctx.single:
        lo, hi = ctx.split(N)
        with for_range(b, lo, hi, "img") as n:
            image(n, False)
    else:
        with for_range(b, 0, N, "img") as n:
            image(n, True)


# ---------------------------------------------------------------- conv epilogue regions


def epilogue_path(node, threads: int, features: str) -> str | None:
    """How ``_conv`` lowers a convolution when a region's epilogue can ride along:
    "depthwise" (applied to each output as it is made), "winograd" (after each chunk of
    images), "gemm" (after each chunk of GEMM columns), None for the other paths (the
    region's nodes then run one by one)."""
    x, w = node.inputs
    G = node.attrs["groups"]
    if x.dtype not in ("float32", "float64") or x.type.rank != 4:
        return None
    if conv_depthwise.applies(x.shape, w.shape, G, x.dtype):
        return "depthwise"
    if _winograd(node, threads, features) is not None:
        return "winograd"
    if (_dot_forward(node, features) is None
            and _direct_forward(node, threads, features) is None):
        return "gemm"
    return None


def epilogue_conv(body, threads: int = 1, features: str = ""):
    """The convolution of a ``fused`` epilogue region (passes/fusion.py) whose output this
    module's lowering applies the region's elementwise tail to as values are made: a
    convolution on an ``epilogue_path`` first, then only elementwise ops over its output
    shape (their operands broadcast into it), the region exporting tail values of that
    shape and dtype alone. None when the region is not of that form (then its nodes run
    one by one)."""
    nodes = body.nodes
    if not nodes or nodes[0].op != "conv":
        return None
    conv = nodes[0]
    y = conv.outputs[0]
    if epilogue_path(conv, threads, features) is None:
        return None
    shape = y.type.shape
    made = {y}
    for n in nodes[1:]:
        if n.op not in SCALAR or len(n.outputs) != 1:
            return None
        for v in list(n.inputs) + list(n.outputs):
            if len(v.shape) > len(shape) or any(
                    d not in (1, e) for d, e in zip(v.shape[::-1], shape[::-1])):
                return None
        made.add(n.outputs[0])
    if any(v not in made or v is y or v.type != y.type for v in body.outputs):
        return None
    return conv


class GemmEpilogue:
    """A region tail the epilogue GEMM applies (``gemm_epilogue``): the bias (a value of
    shape (1, O, 1, 1) or (O, 1, 1)) or None, the residual (a value of the output's type)
    or None and whether it is added after the clamps, and the clamps (bound, inclusive),
    None where absent."""

    def __init__(self):
        self.bias = self.residual = self.lo = self.hi = None
        self.after = False
        self.upper_first = False

    def flags(self) -> int:
        from . import gemm as gm
        f = gm.EP_BIAS if self.bias is not None else 0
        if self.residual is not None:
            f |= gm.EP_RES_AFTER if self.after else gm.EP_RES_BEFORE
        # an inclusive clamp at a bound other than 0 gives the same bits as a strict one (y
        # equal to the bound is the bound); at 0 the two part on y = -0.0
        if self.lo is not None:
            f |= gm.EP_LO | (gm.EP_LO_INCLUSIVE if self.lo[1] and self.lo[0] == 0 else 0)
        if self.hi is not None:
            f |= gm.EP_HI | (gm.EP_HI_INCLUSIVE if self.hi[1] and self.hi[0] == 0 else 0)
        return f


def _scalar_constants(body) -> dict:
    """The values of the body's ``full`` nodes of one element: value -> float."""
    return {n.outputs[0]: float(n.attrs["value"]) for n in body.nodes
            if n.op == "full" and prod(n.outputs[0].shape) == 1}


def gemm_epilogue(body) -> GemmEpilogue | None:
    """The epilogue GEMM's operands for a region ``epilogue_conv`` takes whose tail is one
    chain from the convolution's output y to the region's single result, in this order:
    add of a per-channel bias (a region input of shape (1, O, 1, 1) or (O, 1, 1)), add of
    a residual (a region input of y's type), the clamps, or the residual after the clamps.
    A clamp is where(lt(y, c), c, y) / where(le(...)) (lower bound c; gt / ge: upper; the
    compare's operands either way round), relu(y) (lower 0, inclusive: maximum's), or
    maximum / minimum of y and a constant (inclusive when y is the first operand: NaN
    stays NaN in every form, as the kernel's ordered compares); c a one-element ``full``.
    At most one lower and one upper clamp (the upper first only with hi > lo, where the
    order gives the same values). None for any other tail (which runs as
    ``_conv_epilogue``'s chunked second pass)."""
    nodes = body.nodes
    if not nodes or nodes[0].op != "conv" or len(body.outputs) != 1:
        return None
    y = nodes[0].outputs[0]
    O = y.shape[1]
    consts = _scalar_constants(body)
    users: dict = {}
    for n in nodes:
        for v in n.inputs:
            users.setdefault(v, []).append(n)
    ep, cur, pending = GemmEpilogue(), y, None
    clamped = False

    def clamp(lower: bool, bound: float, inclusive: bool) -> bool:
        nonlocal clamped
        if (ep.residual is not None and ep.after) or bound != bound:
            return False        # a NaN bound: maximum's NaN, where's y (not one rule)
        if lower and ep.lo is None:
            ep.lo = (bound, inclusive)
            ep.upper_first = ep.hi is not None
        elif not lower and ep.hi is None:
            ep.hi = (bound, inclusive)
        else:
            return False
        clamped = True
        return True
    flip = {"lt": "gt", "le": "ge", "gt": "lt", "ge": "le"}
    for n in nodes[1:]:
        ins = list(n.inputs)
        if n.op == "full" and n.outputs[0] in consts:
            continue
        if pending is None and cur not in ins:
            return None
        other = [v for v in ins if v is not cur]
        if n.op in flip and len(other) == 1 and other[0] in consts:
            if pending is not None:
                return None
            op = n.op if ins[0] is cur else flip[n.op]
            pending = (n, op, consts[other[0]])
            continue
        if n.op == "where":
            if pending is None or ins[0] is not pending[0].outputs[0] or ins[2] is not cur \
                    or ins[1] not in consts or repr(consts[ins[1]]) != repr(pending[2]) \
                    or users.get(ins[0]) != [n]:
                return None
            _, op, c = pending
            if not clamp(op in ("lt", "le"), c, op in ("le", "ge")):
                return None
            if set(users.get(cur, [])) != {pending[0], n}:
                return None
            pending = None
        elif pending is not None:
            return None
        elif users.get(cur) != [n]:
            return None
        elif n.op == "add" and len(other) == 1 and other[0] in body.inputs:
            v = other[0]
            if v.type == y.type and ep.residual is None:
                ep.residual, ep.after = v, clamped
            elif (ep.bias is None and ep.residual is None and not clamped
                  and v.dtype == y.dtype and tuple(v.shape) in ((1, O, 1, 1), (O, 1, 1))):
                ep.bias = v
            else:
                return None
        elif n.op == "relu" and len(ins) == 1:
            if not clamp(True, 0.0, True):
                return None
        elif n.op in ("maximum", "minimum") and len(other) == 1 and other[0] in consts:
            if not clamp(n.op == "maximum", consts[other[0]], ins[0] is cur):
                return None
        else:
            return None
        cur = n.outputs[0]
    if pending is not None or cur is not body.outputs[0] or users.get(cur):
        return None
    if ep.upper_first and not ep.lo[0] < ep.hi[0]:
        return None         # the clamps' order would change values
    return ep


def _epilogue_scratch(node, threads, features) -> int:
    conv = epilogue_conv(node.attrs["body"], threads, features)
    return _conv_scratch(conv, threads, features) if conv is not None else 0


def _epilogue_meets(node, threads, features) -> bool | None:
    """A region ``_conv_epilogue`` takes meets where its convolution's lowering does."""
    conv = epilogue_conv(node.attrs["body"], threads, features)
    return None if conv is None else _forward_meets(conv, threads, features)


def epilogue_tail(ctx, conv, tail, results, buf):
    """``apply(off, idx, acc, fixed=None)``: the values of ``results`` when the convolution
    ``conv`` made ``acc`` at index ``idx`` (n, o, oh, ow) of its output, offset ``off`` there
    (None: worked out from ``idx``), through the elementwise ``tail`` nodes (``SCALAR``),
    their other operands loaded from ``buf`` (value -> Buf) broadcast into the output's
    shape, or taken from ``fixed``. ``apply.hoist(idx, k)``: the operands constant along
    the last ``k`` axes (a bias along rows and columns), loaded once at ``idx`` (those axes'
    indices unused) for ``fixed``: before a loop over those axes, so that no load of them
    is left in it for the stores to be checked against."""
    b = ctx.b
    y = conv.outputs[0]
    shape = y.type.shape
    flat = row_strides(shape)
    made = {n.outputs[0] for n in tail}
    sources = list(dict.fromkeys(v for n in tail for v in n.inputs
                                 if v is not y and v not in made))

    def load(v, off, idx):
        st = broadcast_strides(v.shape, shape)
        if tuple(st) == tuple(flat) and off is not None:
            at = off
        else:
            at = i64(0)
            for i, s in zip(idx, st):
                if s:
                    at = b.add(at, b.mul(i, i64(s)))
        return buf[v].load(b, at)

    def hoist(idx, k: int) -> dict:
        return {v: load(v, None, idx) for v in sources
                if not any(broadcast_strides(v.shape, shape)[len(shape) - k:])}

    def apply(off, idx, acc, fixed=None):
        env = {y: acc}
        for v in sources:
            env[v] = fixed[v] if fixed and v in fixed else load(v, off, idx)
        for n in tail:
            env[n.outputs[0]] = SCALAR[n.op](ctx, n, [env[v] for v in n.inputs])
        return [env[v] for v in results]
    apply.hoist = hoist
    return apply


@fused_kind("epilogue", scratch_rule=_epilogue_scratch, meets_rule=_epilogue_meets)
def _conv_epilogue(ctx, node, ins, outs) -> bool:
    """A convolution with its bias, activation and residual add applied to each output in
    the same pass (depthwise) or to each chunk of GEMM columns while in cache, not in a
    second sweep over the output; False for other regions."""
    body = node.attrs["body"]
    conv = epilogue_conv(body, ctx.max_threads, ctx.features)
    if conv is None or kind_declines(node, ins, outs):
        return False
    b = ctx.b
    buf = dict(zip(body.inputs, ins))
    y = conv.outputs[0]
    shape = y.type.shape
    apply = epilogue_tail(ctx, conv, body.nodes[1:], body.outputs, buf)

    def put(off, idx, acc):
        for o, v in zip(outs, apply(off, idx, acc)):
            o.store(b, off, v)
    x, w = (buf[v] for v in conv.inputs)
    out = Buf(outs[0].ptr, y.type)     # the conv's values, overwritten by the tail's
    if epilogue_path(conv, ctx.max_threads, ctx.features) == "depthwise":
        _depthwise(ctx, conv, x, w, out, put)
        return True
    N, O, OH, OW = shape
    og = O // conv.attrs["groups"]

    def columns(n, g, p0, p1, i0=i64(0), i1=i64(og)):
        with for_range(b, i0, i1, "eo") as i:
            o = b.add(b.mul(g, i64(og)), i)
            row = b.mul(b.add(b.mul(n, i64(O)), o), i64(OH * OW))
            with for_range(b, p0, p1, "ep") as p:
                off = b.add(row, p)
                put(off, (n, o, b.sdiv(p, i64(OW)), b.srem(p, i64(OW))), out.load(b, off))
    if epilogue_path(conv, ctx.max_threads, ctx.features) == "winograd":
        conv_winograd.lower(ctx, _winograd(conv, ctx.max_threads, ctx.features), x, w, out,
                            tail=lambda n, p0, p1: columns(n, i64(0), p0, p1), prep=ctx.prep)
        return True
    _conv_gemm(ctx, conv, x, w, out, columns, ep=_gemm_epilogue_args(body, buf, y))
    return True


def _gemm_epilogue_args(body, buf, y):
    """(bias, R, lo, hi, flags) of the epilogue GEMM for the region (``gemm_epilogue``),
    or None (then the chunked second pass)."""
    ep = gemm_epilogue(body)
    if ep is None:
        return None
    elem = STORAGE[y.dtype]
    null = ir.Constant(ir.PointerType(elem), None)
    return (buf[ep.bias].ptr if ep.bias is not None else null,
            buf[ep.residual].ptr if ep.residual is not None else null,
            ir.Constant(elem, ep.lo[0] if ep.lo is not None else -np.inf),
            ir.Constant(elem, ep.hi[0] if ep.hi is not None else np.inf), i64(ep.flags()))


# ---------------------------------------------------------------- conv_kernel_grad


@scratch("conv_kernel_grad")
def _kgrad_scratch(node, threads, features):
    x, gy = node.inputs
    if gemm_bf16.native(node):
        return threads * grad_scratch_bytes(node)
    a = node.attrs
    dc = _direct_kernel_grad(node, threads, features)
    if dc is not None:
        return threads * dc.scratch_bytes(dc.kernel_grad_parts())
    cols = cols_bytes(x.shape, None, a["kernel_size"], a, x.type.np_dtype.itemsize,
                       a["groups"])
    dw = -(-node.outputs[0].type.nbytes // ALIGN) * ALIGN
    return threads * (cols + dw)


def _direct_kernel_grad(node, threads, features):
    x, gy = node.inputs
    a = node.attrs
    G = a["groups"]
    dc = _direct(x.shape, x.shape[1] // G, gy.shape[1] // G, a["kernel_size"], a["padding"],
                 a, x.dtype, features, threads)
    return dc if dc is not None and dc.out == tuple(gy.shape[2:]) else None


@lowering("conv_kernel_grad", parallel=True)
def _conv_kernel_grad(ctx, node, ins, outs):
    """dW = sum over images of gy_g @ cols^T; a partial sum per thread, then reduced (at
    stride 1: dot products of gy with shifted rows of the padded input, no im2col)."""
    (x, gy), (dw,) = ins, outs
    if x.dtype == "bfloat16":       # kept unwidened where gemm_bf16.native holds
        return lower_conv_kernel_grad(ctx, node, x, gy, dw)
    a = node.attrs
    G = a["groups"]
    dc = _direct_kernel_grad(node, ctx.max_threads, ctx.features)
    if dc is not None:
        kernel_gradient(ctx, dc, G, x.shape[0], x, gy, dw)
        return
    geo = conv_geo(x.shape, a["kernel_size"], a)
    N, C, O = x.shape[0], x.shape[1], gy.shape[1]
    cg, og = C // G, O // G
    R, P, plane = cg * prod(geo["kernel"]), prod(geo["out"]), prod(geo["spatial"])
    itemsize = x.type.np_dtype.itemsize
    colbytes = cols_bytes(x.shape, None, a["kernel_size"], a, itemsize, G)
    dwbytes = -(-dw.type.nbytes // ALIGN) * ALIGN
    b = ctx.b
    mine = b.gep(ctx.node_scratch, [b.mul(ctx.tid, i64(colbytes + dwbytes))])
    cols = Buf(b.bitcast(mine, ir.PointerType(x.elem)), _tt((R, P), x))
    part = Buf(b.bitcast(b.gep(mine, [i64(colbytes)]), ir.PointerType(x.elem)), dw.type)
    _zero(ctx, part, i64(0), dw.type.size)
    lo, hi = ctx.split(N)
    with for_range(b, lo, hi, "img") as n:
        with for_range(b, 0, G, "grp") as g:
            xbase = b.add(b.mul(n, i64(C * plane)), b.mul(g, i64(cg * plane)))
            im2col(ctx, x, xbase, cg, geo, cols)
            gp = b.gep(gy.ptr, [b.add(b.mul(n, i64(O * P)), b.mul(g, i64(og * P)))])
            dst = b.gep(part.ptr, [b.mul(g, i64(og * R))])
            if og * R <= DOT_LIMIT:
                _dots(ctx, gp, cols.ptr, dst, og, R, P, x.elem)
            else:
                thread_gemm(ctx, x.dtype, gp, (P, 1), cols.ptr, (1, P), dst, R, og, R, P, acc=1)
    ctx.barrier()
    _sum_partials(ctx, dw, colbytes + dwbytes, colbytes)


DOT_LIMIT = 1024    # dW blocks up to this many entries: dot products beat packing a GEMM
AXPY_LIMIT = 512    # W blocks up to this many entries: row updates beat a GEMM for dx


def _dots(ctx, a, bm, c, M: int, N: int, K: int, elem) -> None:
    """c[i, j] += sum_k a[i, k] * bm[j, k]: both operands contiguous along k (gy rows and
    im2col rows), so each entry is one vectorized dot product; for the small kernel
    gradients of small convolutions, where packing a GEMM costs more than it saves."""
    b = ctx.b
    acc = ctx.alloca(elem, "dot")
    with for_range(b, 0, M, "di") as i:
        with for_range(b, 0, N, "dj") as j:
            b.store(ir.Constant(elem, 0.0), acc)
            ra, rb = b.mul(i, i64(K)), b.mul(j, i64(K))
            with for_range(b, 0, K, "dk") as k:
                prodv = b.fmul(b.load(b.gep(a, [b.add(ra, k)])), b.load(b.gep(bm, [b.add(rb, k)])))
                s = b.fadd(b.load(acc), prodv)
                s.flags.append("reassoc")
                b.store(s, acc)
            at = b.gep(c, [b.add(b.mul(i, i64(N)), j)])
            b.store(b.fadd(b.load(at), b.load(acc)), at)


def _axpys(ctx, w, gy, cols: Buf, O: int, R: int, P: int) -> None:
    """cols[r, :] = sum_o w[o, r] * gy[o, :]: unit-stride vector updates of whole rows (the
    input gradient of small convolutions, where K = O/groups is too short for a GEMM)."""
    b = ctx.b
    _zero(ctx, cols, i64(0), R * P)
    with for_range(b, 0, R, "ar") as r:
        row = b.mul(r, i64(P))
        with for_range(b, 0, O, "ao") as o:
            coef = b.load(b.gep(w, [b.add(b.mul(o, i64(R)), r)]))
            src = b.mul(o, i64(P))
            with for_range(b, 0, P, "ap") as q:
                at = b.add(row, q)
                v = b.fmul(coef, b.load(b.gep(gy, [b.add(src, q)])))
                cols.store(b, at, b.fadd(cols.load(b, at), v))


def _sum_partials(ctx, out: Buf, stride_bytes: int, first_bytes: int) -> None:
    """out[i] = sum over threads t of partial_t[i] (elements split across threads)."""
    b = ctx.b
    lo, hi = ctx.split(out.type.size)
    nt = ctx.nthreads if not ctx.single else i64(1)
    acc = ctx.alloca(out.elem, "acc")
    with for_range(b, lo, hi, "e") as e:
        b.store(ir.Constant(out.elem, 0.0), acc)
        with for_range(b, 0, nt, "t") as t:
            raw = b.gep(ctx.node_scratch, [b.add(b.mul(t, i64(stride_bytes)), i64(first_bytes))])
            p = b.bitcast(raw, ir.PointerType(out.elem))
            b.store(b.fadd(b.load(acc), b.load(b.gep(p, [e]))), acc)
        out.store(b, e, b.load(acc))


def _tt(shape, like: Buf):
    return TensorType(shape, like.dtype)


# ---------------------------------------------------------------- conv_input_grad


@scratch("conv_input_grad")
def _igrad_scratch(node, threads, features):
    w, gy = node.inputs
    if gemm_bf16.native(node):
        return threads * grad_scratch_bytes(node)
    a = node.attrs
    wg = _winograd_input_grad(node, threads, features)
    if wg is not None:
        return wg.scratch_bytes()
    scattered = _scattered_input_grad(node, threads, features)
    if scattered is not None:
        return threads * scattered.scratch_bytes(scattered.scatter_parts(a["groups"]))
    dc = _direct_input_grad(node, threads, features)
    if dc is not None:
        return threads * dc.scratch_bytes(dc.forward_parts(a["groups"]))
    xs = (gy.shape[0], w.shape[1] * a["groups"]) + tuple(a["input_size"])
    return threads * cols_bytes(xs, w.shape, w.shape[2:], a, w.type.np_dtype.itemsize,
                                 a["groups"])


def _winograd_input_grad(node, threads, features):
    w, gy = node.inputs
    return conv_winograd.plan_input_grad(w.shape, gy.shape, node.attrs, w.dtype, features,
                                         threads)


def _direct_input_grad(node, threads, features):
    """eq. 9.13 at stride 1 as a direct convolution of gy: padded by dilation * (k - 1) -
    padding per side, kernel flipped, channel axes swapped."""
    w, gy = node.inputs
    a = node.attrs
    G, kernel = a["groups"], w.shape[2:]
    pads = tuple(d * (k - 1) - p for k, d, pair in zip(kernel, a["dilation"], zip(
        a["padding"][::2], a["padding"][1::2])) for p in pair)
    dc = _direct(gy.shape, w.shape[0] // G, w.shape[1], kernel, pads, a, w.dtype, features,
                 threads)
    return dc if dc is not None and dc.out == tuple(a["input_size"]) else None


def _scattered_input_grad(node, threads, features):
    """The forward convolution's geometry when scattering gy on its grid costs clearly less
    than the flipped convolution (whose grid spans gy padded by dilation * (k - 1)): a
    valid convolution's input gradient, say. None otherwise."""
    w, gy = node.inputs
    a = node.attrs
    G = a["groups"]
    xs = (gy.shape[0], w.shape[1] * G) + tuple(a["input_size"])
    fwd = _direct(xs, w.shape[1], w.shape[0] // G, w.shape[2:], a["padding"], a, w.dtype,
                  features, threads)
    if fwd is None or fwd.out != tuple(gy.shape[2:]):
        return None
    flipped = _direct_input_grad(node, threads, features)
    if flipped is not None and fwd.Qpad * 5 > flipped.Qpad * 4:
        return None
    return fwd


def _input_grad_meets(node, threads: int, features: str) -> bool:
    """Whether ``_conv_input_grad``'s threads meet: Winograd and bfloat16 do; the scattered
    and direct paths and col2im split the images, each share in the running thread's own
    scratch (claimed shares)."""
    w = node.inputs[0]
    return w.dtype == "bfloat16" or _winograd_input_grad(node, threads, features) is not None


@lowering("conv_input_grad", parallel=True, meets=_input_grad_meets)
def _conv_input_grad(ctx, node, ins, outs):
    """dx = col2im(W_g^T @ gy_g) per image and group (or, at stride 1, gy scattered on the
    forward grid, or the flipped direct convolution of gy)."""
    (w, gy), (dx,) = ins, outs
    if w.dtype == "bfloat16":       # kept unwidened where gemm_bf16.native holds
        return lower_conv_input_grad(ctx, node, w, gy, dx)
    a = node.attrs
    G = a["groups"]
    wg = _winograd_input_grad(node, ctx.max_threads, ctx.features)
    if wg is not None:
        conv_winograd.lower(ctx, wg, gy, w, dx)
        return
    scattered = _scattered_input_grad(node, ctx.max_threads, ctx.features)
    if scattered is not None:
        scatter_input_grad(ctx, scattered, G, gy.shape[0], gy, dx, w)
        return
    dc = _direct_input_grad(node, ctx.max_threads, ctx.features)
    if dc is not None:
        b, kp = ctx.b, prod(w.shape[2:])
        og, cg = dc.cin, dc.cout

        def w_offset(g, c, r):          # w[g*og + r // kp, c, kp - 1 - r % kp]
            o, k = b.sdiv(r, i64(kp)), b.srem(r, i64(kp))
            row = b.add(b.mul(b.add(b.mul(g, i64(og)), o), i64(cg)), c)
            return b.add(b.mul(row, i64(kp)), b.sub(i64(kp - 1), k))
        convolve(ctx, dc, G, gy.shape[0], gy, dx, w, w_offset)
        return
    geo = conv_geo(dx.shape, w.shape[2:], a)
    N, C, O = dx.shape[0], dx.shape[1], w.shape[0]
    cg, og = C // G, O // G
    R, P, plane = cg * prod(geo["kernel"]), prod(geo["out"]), prod(geo["spatial"])
    colbytes = cols_bytes(dx.shape, w.shape, w.shape[2:], a, w.type.np_dtype.itemsize, G)
    b = ctx.b
    cols = Buf(thread_cols(ctx, colbytes, w.elem), _tt((R, P), w))
    lo, hi = ctx.split(N)
    with for_range(b, lo, hi, "img") as n:
        _zero(ctx, dx, b.mul(n, i64(C * plane)), C * plane)
        with for_range(b, 0, G, "grp") as g:
            gp = b.gep(gy.ptr, [b.add(b.mul(n, i64(O * P)), b.mul(g, i64(og * P)))])
            wp = b.gep(w.ptr, [b.mul(g, i64(og * R))])
            if og * R <= AXPY_LIMIT:
                _axpys(ctx, wp, gp, cols, og, R, P)
            else:
                thread_gemm(ctx, w.dtype, wp, (1, R), gp, (P, 1), cols.ptr, P, R, P, og)
            xbase = b.add(b.mul(n, i64(C * plane)), b.mul(g, i64(cg * plane)))
            col2im(ctx, cols, cg, geo, dx, xbase)


# ---------------------------------------------------------------- unfold / fold


@lowering("unfold", parallel=True)
def _unfold(ctx, node, ins, outs):
    (x,), (out,) = ins, outs
    geo = conv_geo(x.shape, node.attrs["kernel_size"], node.attrs)
    C, plane = x.shape[1], prod(geo["spatial"])
    rows, pn = C * prod(geo["kernel"]), prod(geo["out"])
    b = ctx.b
    lo, hi = ctx.split(x.shape[0])
    with for_range(b, lo, hi, "img") as n:
        dst = Buf(b.gep(out.ptr, [b.mul(n, i64(rows * pn))]), _tt((rows, pn), out))
        im2col(ctx, x, b.mul(n, i64(C * plane)), C, geo, dst)


@lowering("fold", parallel=True)
def _fold(ctx, node, ins, outs):
    (cols,), (out,) = ins, outs
    a = node.attrs
    shape = out.shape
    geo = conv_geo(shape, a["kernel_size"], a)
    C, plane = shape[1], prod(geo["spatial"])
    rows, pn = C * prod(geo["kernel"]), prod(geo["out"])
    b = ctx.b
    lo, hi = ctx.split(shape[0])
    with for_range(b, lo, hi, "img") as n:
        _zero(ctx, out, b.mul(n, i64(C * plane)), C * plane)
        src = Buf(b.gep(cols.ptr, [b.mul(n, i64(rows * pn))]), _tt((rows, pn), cols))
        col2im(ctx, src, C, geo, out, b.mul(n, i64(C * plane)))


# ---------------------------------------------------------------- unshared and tiled


def _lc_scratch(node, threads, features):
    x, w = node.inputs
    d = x.type.rank - 2
    k = w.shape[2 + d:] if node.op == "locally_connected" else w.shape[2:2 + d]
    return threads * cols_bytes(x.shape, w.shape, k, node.attrs, x.type.np_dtype.itemsize, 1)


scratch("locally_connected", "tiled_conv")(_lc_scratch)


@lowering("locally_connected", "tiled_conv", parallel=True)
def _unshared(ctx, node, ins, outs):
    """y[n, o, p] = sum_r cols[r, p] * W(o, p, r): W's own kernel per location (eq. 9.9) or
    kernel (p mod t) per direction (eq. 9.10)."""
    (x, w), (y,) = ins, outs
    d = x.type.rank - 2
    tiled = node.op == "tiled_conv"
    kernel = w.shape[2:2 + d] if tiled else w.shape[2 + d:]
    geo = conv_geo(x.shape, kernel, node.attrs)
    N, C, O = x.shape[0], x.shape[1], w.shape[0]
    R, P, plane = C * prod(kernel), prod(geo["out"]), prod(geo["spatial"])
    colbytes = cols_bytes(x.shape, w.shape, kernel, node.attrs, x.type.np_dtype.itemsize, 1)
    b = ctx.b
    cols = Buf(thread_cols(ctx, colbytes, x.elem), _tt((R, P), x))
    if tiled:
        t = w.shape[2 + d:]
        idx = np.zeros(geo["out"], np.int64)
        for ax, (m, ti) in enumerate(zip(geo["out"], t)):
            view = [1] * d
            view[ax] = m
            idx = idx + (np.arange(m) % ti).reshape(view) * row_strides(t)[ax]
        tflat = ctx.global_array("tile.index", idx.ravel())
        tprod = prod(t)
    acc = ctx.alloca(STORAGE[x.dtype], "acc")
    lo, hi = ctx.split(N)
    with for_range(b, lo, hi, "img") as n:
        im2col(ctx, x, b.mul(n, i64(C * plane)), C, geo, cols)
        with for_range(b, 0, O, "o") as o:
            with for_range(b, 0, P, "p") as p:
                b.store(ir.Constant(STORAGE[x.dtype], 0.0), acc)
                if tiled:
                    tf = b.load(b.gep(tflat, [p]))
                with for_range(b, 0, R, "r") as r:
                    if tiled:
                        woff = b.add(b.mul(b.add(b.mul(o, i64(R)), r), i64(tprod)), tf)
                    else:
                        woff = b.add(b.mul(b.add(b.mul(o, i64(P)), p), i64(R)), r)
                    v = b.fmul(cols.load(b, b.add(b.mul(r, i64(P)), p)), w.load(b, woff))
                    b.store(b.fadd(b.load(acc), v), acc)
                y.store(b, b.add(b.mul(b.add(b.mul(n, i64(O)), o), i64(P)), p), b.load(acc))


# ---------------------------------------------------------------- bfloat16 (native)
# Where gemm_bf16.native holds, the convolutions above hand their bfloat16 operands
# to these, on gemm_bf16's kernel (vdpbf16ps, float32 sums).
def conv_cols_bytes(node) -> int:
    """Bytes of one image-and-group's bfloat16 im2col columns (R x P) of a native bfloat16
    convolution, 64-byte aligned."""
    x, w = node.inputs
    a = node.attrs
    P = prod(out_shape(x.shape[2:], w.shape[2:], a["stride"], a["padding"], a["dilation"]))
    return -(-gemm_bf16.contraction(node) * P * 2 // 64) * 64


def lower_conv(ctx, node, x, w, y) -> None:
    """A bfloat16 ``conv``/``conv_fft`` (``native``), per image and group: im2col into
    bfloat16 columns (R = C/groups * prod(kernel) rows, P output positions; none for a 1x1
    kernel at stride 1 without padding), then y_g (O/groups x P) = W_g (O/groups x R) @ cols
    on gemm_bf16's kernel (its unit-stride rows packed as vectors), float32 sums rounded once
    to bfloat16. Images are split across threads, or each image's GEMM when the batch is
    smaller than the thread count."""
    b = ctx.b
    G = node.attrs["groups"]
    geo = conv_geo(x.shape, w.shape[2:], node.attrs)
    N, C, O = x.shape[0], x.shape[1], w.shape[0]
    cg, og = C // G, O // G
    R, P, plane = cg * prod(geo["kernel"]), prod(geo["out"]), prod(geo["spatial"])
    if N == 0 or og == 0 or P == 0:
        return
    colbytes = conv_cols_bytes(node)
    pointwise = is_pointwise(geo)
    fn = gemm_bf16.gemm_function(ctx.module, True)

    def image(n, split_gemm: bool):
        mine = ctx.node_scratch if split_gemm else b.gep(ctx.node_scratch,
                                                          [b.mul(ctx.tid, i64(colbytes))])
        cols = b.bitcast(mine, ir.PointerType(I16))
        with for_range(b, 0, G, "grp") as g:
            xbase = b.add(b.mul(n, i64(C * plane)), b.mul(g, i64(cg * plane)))
            if pointwise:
                src = b.gep(x.ptr, [xbase])
            else:
                if split_gemm:
                    with ctx.thread0():
                        _im2col_bits(ctx, x.ptr, xbase, cg, geo, cols)
                    ctx.barrier()
                else:
                    _im2col_bits(ctx, x.ptr, xbase, cg, geo, cols)
                src = cols
            wp = b.gep(w.ptr, [b.mul(g, i64(og * R))])
            yp = b.gep(y.ptr, [b.add(b.mul(n, i64(O * P)), b.mul(g, i64(og * P)))])
            if split_gemm:
                gemm_bf16.call_gemm(ctx, wp, (R, 1), src, (P, 1), yp, P, og, P, R)
                ctx.barrier()
            else:
                b.call(fn, [wp, i64(R), i64(1), src, i64(P), i64(1), yp, i64(P), i64(og),
                            i64(P), i64(R), ctx.scratch()])
    per_image(ctx, N, image)


def _im2col_bits(ctx, x, xbase, channels: int, geo, dst, transposed: bool = False) -> None:
    """im2col of 16-bit words, copied as they are: dst[(c, k), p] = x[xbase + c*plane +
    in(p, k)] (``transposed``: dst[p, (c, k)]), zero where the window leaves x (the windows
    of ops_conv's ``window_nest``)."""
    b = ctx.b
    plane, pn = prod(geo["spatial"]), prod(geo["out"])
    rows = channels * prod(geo["kernel"])
    zero = ir.Constant(I16, 0)

    def at(row, col):
        i = b.add(b.mul(col, i64(rows)), row) if transposed else b.add(b.mul(row, i64(pn)), col)
        return b.gep(dst, [i])

    def inside(row, col, inoff, ok, c):
        v = b.load(b.gep(x, [b.add(xbase, b.add(b.mul(c, i64(plane)), inoff))]))
        b.store(v if ok is None else b.select(ok, v, zero), at(row, col))

    def outside(row, col):
        b.store(zero, at(row, col))
    window_nest(ctx, geo, channels, inside, outside)


def _aligned(n: int) -> int:
    return -(-n // 64) * 64


def _grad_geometry(node):
    """(geo, N, C, O, G, R, P, plane) of a convolution gradient node."""
    a = node.attrs
    G = a["groups"]
    if node.op == "conv_kernel_grad":
        (x, gy), dw = node.inputs, node.outputs[0]
        x_shape, kernel, O = x.shape, tuple(dw.shape[2:]), gy.shape[1]
    else:
        (w, gy), dx = node.inputs, node.outputs[0]
        x_shape, kernel, O = dx.shape, tuple(w.shape[2:]), w.shape[0]
    geo = conv_geo(x_shape, kernel, a)
    C = x_shape[1]
    return geo, x_shape[0], C, O, G, C // G * prod(kernel), prod(geo["out"]), \
        prod(geo["spatial"])


def grad_scratch_bytes(node) -> int:
    """Per-thread scratch of a native bfloat16 gradient convolution: the kernel gradient's
    transposed bfloat16 columns (P x R) and float32 partial sum of dW; the input gradient's
    float32 columns (R x P) and float32 image of dx (C x plane)."""
    geo, N, C, O, G, R, P, plane = _grad_geometry(node)
    if node.op == "conv_kernel_grad":
        return _aligned(P * R * 2) + _aligned(O * R * 4)
    return _aligned(R * P * 4) + _aligned(C * plane * 4)


def lower_conv_kernel_grad(ctx, node, x, gy, dw) -> None:
    """dW_g (O/g x R) = sum over images of gy_g (O/g x P) @ cols^T (P x R): per thread a
    float32 partial sum over its images (the GEMM adding its float32 sums into it), then the
    partials added in float32 and each result rounded once to bfloat16."""
    geo, N, C, O, G, R, P, plane = _grad_geometry(node)
    cg, og = C // G, O // G
    b = ctx.b
    colbytes = _aligned(P * R * 2)
    step = grad_scratch_bytes(node)
    mine = b.gep(ctx.node_scratch, [b.mul(ctx.tid, i64(step))])
    cols = b.bitcast(mine, ir.PointerType(I16))
    part = b.bitcast(b.gep(mine, [i64(colbytes)]), ir.PointerType(F32))
    with for_range(b, 0, O * R, "z") as i:
        b.store(ir.Constant(F32, 0.0), b.gep(part, [i]))
    fn = gemm_bf16.gemm_function(ctx.module, True, out_f32=True, accumulate=True)
    lo, hi = ctx.split(N)
    with for_range(b, lo, hi, "img") as n:
        with for_range(b, 0, G, "grp") as g:
            xbase = b.add(b.mul(n, i64(C * plane)), b.mul(g, i64(cg * plane)))
            _im2col_bits(ctx, x.ptr, xbase, cg, geo, cols, transposed=True)
            gp = b.gep(gy.ptr, [b.add(b.mul(n, i64(O * P)), b.mul(g, i64(og * P)))])
            dst = b.gep(part, [b.mul(g, i64(og * R))])
            b.call(fn, [gp, i64(P), i64(1), cols, i64(R), i64(1), dst, i64(R), i64(og),
                        i64(R), i64(P), ctx.scratch()])
    ctx.barrier()
    out = Buf(dw.ptr, TensorType((O * R,), "bfloat16"))
    nt = ctx.nthreads if not ctx.single else i64(1)
    acc = ctx.alloca(F32, "acc")
    lo, hi = ctx.split(O * R)
    with for_range(b, lo, hi, "e") as e:
        b.store(ir.Constant(F32, 0.0), acc)
        with for_range(b, 0, nt, "t") as t:
            raw = b.gep(ctx.node_scratch, [b.add(b.mul(t, i64(step)), i64(colbytes))])
            p = b.bitcast(raw, ir.PointerType(F32))
            b.store(b.fadd(b.load(acc), b.load(b.gep(p, [e]))), acc)
        out.store(b, e, b.load(acc))


def lower_conv_input_grad(ctx, node, w, gy, dx) -> None:
    """Per image: dcols_g (R x P) = W_g^T (R x O/g) @ gy_g (O/g x P) in float32, added by
    col2im into a float32 image of dx, each value rounded once to bfloat16 at the end."""
    geo, N, C, O, G, R, P, plane = _grad_geometry(node)
    cg, og = C // G, O // G
    b = ctx.b
    colbytes = _aligned(R * P * 4)
    mine = b.gep(ctx.node_scratch, [b.mul(ctx.tid, i64(grad_scratch_bytes(node)))])
    cols = Buf(b.bitcast(mine, ir.PointerType(F32)), TensorType((R, P), "float32"))
    img = Buf(b.bitcast(b.gep(mine, [i64(colbytes)]), ir.PointerType(F32)),
              TensorType((C * plane,), "float32"))
    out = Buf(dx.ptr, TensorType((N * C * plane,), "bfloat16"))
    fn = gemm_bf16.gemm_function(ctx.module, False, out_f32=True)
    lo, hi = ctx.split(N)
    with for_range(b, lo, hi, "img") as n:
        with for_range(b, 0, C * plane, "z") as i:
            img.store(b, i, ir.Constant(F32, 0.0))
        with for_range(b, 0, G, "grp") as g:
            gp = b.gep(gy.ptr, [b.add(b.mul(n, i64(O * P)), b.mul(g, i64(og * P)))])
            wp = b.gep(w.ptr, [b.mul(g, i64(og * R))])
            b.call(fn, [wp, i64(1), i64(R), gp, i64(P), i64(1), cols.ptr, i64(P), i64(R),
                        i64(P), i64(og), ctx.scratch()])
            col2im(ctx, cols, cg, geo, img, b.mul(g, i64(cg * plane)))
        base = b.mul(n, i64(C * plane))
        with for_range(b, 0, C * plane, "r") as i:
            out.store(b, b.add(base, i), img.load(b, i))
