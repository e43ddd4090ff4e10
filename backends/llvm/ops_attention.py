"""Attention regions (``fused`` of kind ``attention``, passes/layer_regions.py) by row blocks:
``softmax(q k^T * scale + mask) v`` without the (L, S) scores of a head in memory.

Threads split the (batch, block of ``ROWS`` queries) units. For each unit, a GEMM writes
the block's scores (ROWS x S) into the thread's scratch, one pass per row applies the
scale and masks and takes the maximum, one exponentiates and sums, one normalizes, and a
second GEMM multiplies the block's weights by v into the output rows. With the causal mask
only the keys up to the block's last query are computed. bench/bench_attention.py measures
this against the composition (which writes and reads all (L, S) scores of a head): at head
dim 64 the row blocks win with the causal mask at every length (1.6x at 128 keys, 2x at
2048: half the keys) and without it on short sequences (1.2-1.35x up to 256 keys), and
lose 10-13% from ``MAX_KEYS`` keys on, where the composition runs.
"""
from __future__ import annotations

from llvmlite import ir

from irgraph.passes.layer_regions import attention_spec

from .builder import STORAGE, broadcast_strides, for_range, i64, prod
from .gemm import gemm_function
from .lowering import fused_kind
from . import scalar as sc

ROWS = 32               # queries per block
MAX_KEYS = 512          # without the causal mask, row blocks below this many keys
# "auto": the rule above; "always" / "never": bench/bench_attention.py compares the two
MODE = "auto"


def _dims(spec):
    *batch, L, E = spec.q.type.shape
    return tuple(batch), L, spec.k.type.shape[-2], E, spec.v.type.shape[-1]


def row_blocks(spec) -> bool:
    """Whether an attention region runs by row blocks here."""
    if spec is None or spec.q.type.dtype not in ("float32", "float64"):
        return False
    batch, L, S, E, EV = _dims(spec)
    if MODE != "auto" or min(L, S, E, EV) == 0:
        return MODE == "always" and min(L, S, E, EV) > 0
    return spec.causal or S < MAX_KEYS


def _scratch(node, threads, features) -> int:
    spec = attention_spec(node.attrs["body"])
    if not row_blocks(spec):
        return 0
    return threads * _per_thread(spec)


def _per_thread(spec) -> int:
    S = _dims(spec)[2]
    size = 8 if spec.q.type.dtype == "float64" else 4
    return -(-ROWS * S * size // 64) * 64


@fused_kind("attention", scratch_rule=_scratch)
def lower_attention(ctx, node, ins, outs) -> bool:
    """The row-block attention, or False (the region's nodes one by one)."""
    body = node.attrs["body"]
    spec = attention_spec(body)
    if not row_blocks(spec) or any(t.swapped for t in list(ins) + list(outs)) \
            or ctx.node_scratch is None:
        return False
    index = {v: i for i, v in enumerate(body.inputs)}
    q, k, v = (ins[index[x]] for x in (spec.q, spec.k, spec.v))
    keep = ins[index[spec.keep]] if spec.keep is not None else None
    add = ins[index[spec.additive]] if spec.additive is not None else None
    (out,) = outs
    batch, L, S, E, EV = _dims(spec)
    dt, b = q.dtype, ctx.b
    elem = STORAGE[dt]
    scores_shape = batch + (L, S)
    nblk = -(-L // ROWS)
    units = prod(batch) * nblk
    gemm = gemm_function(ctx.module, dt, ctx.features)
    mine = b.gep(ctx.node_scratch, [b.mul(ctx.tid, i64(_per_thread(spec)))], inbounds=True)
    sbuf = b.bitcast(mine, ir.PointerType(elem))
    mx = ctx.alloca(elem, "mx")
    tot = ctx.alloca(elem, "tot")
    mstr = [broadcast_strides(m.shape, scores_shape) if m is not None else None
            for m in (keep, add)]

    def mask_base(bi):
        """Offsets of each mask at (batch index bi, row 0, key 0)."""
        bases = []
        for st in mstr:
            if st is None:
                bases.append(None)
                continue
            off, rem = i64(0), bi
            for d in range(len(batch) - 1, -1, -1):
                off = b.add(off, b.mul(b.srem(rem, i64(batch[d])), i64(st[d])))
                rem = b.sdiv(rem, i64(batch[d]))
            bases.append(off)
        return bases

    lo, hi = ctx.split(units)
    with for_range(b, lo, hi, "unit") as u:
        bi = b.sdiv(u, i64(nblk))
        r0 = b.mul(b.srem(u, i64(nblk)), i64(ROWS))
        rows = b.sub(i64(L), r0)
        rows = b.select(b.icmp_signed("<", rows, i64(ROWS)), rows, i64(ROWS))
        keys = i64(S)
        if spec.causal:               # key j is visible to query i iff j <= i
            last = b.add(r0, rows)
            keys = b.select(b.icmp_signed("<", last, i64(S)), last, i64(S))
        qp = b.gep(q.ptr, [b.add(b.mul(bi, i64(L * E)), b.mul(r0, i64(E)))])
        kp = b.gep(k.ptr, [b.mul(bi, i64(S * E))])
        vp = b.gep(v.ptr, [b.mul(bi, i64(S * EV))])
        op = b.gep(out.ptr, [b.add(b.mul(bi, i64(L * EV)), b.mul(r0, i64(EV)))])
        # scores = q_rows @ k^T (k^T's element (e, j) is k[j, e])
        b.call(gemm, [qp, i64(E), i64(1), kp, i64(1), i64(E), sbuf, i64(S), rows, keys,
                      i64(E), ctx.scratch(), i64(0)])
        kb, ab = mask_base(bi)
        with for_range(b, 0, rows, "i") as i:
            gi = b.add(r0, i)
            row = b.gep(sbuf, [b.mul(i, i64(S))])
            b.store(sc.const(dt, float("-inf")), mx)
            with for_range(b, 0, keys, "j") as j:
                x = b.fmul(b.load(b.gep(row, [j])), sc.const(dt, spec.scale))
                if add is not None:
                    st = mstr[1]
                    off = b.add(ab, b.add(b.mul(gi, i64(st[-2])), b.mul(j, i64(st[-1]))))
                    x = b.fadd(x, add.load(b, off))
                visible = None
                if keep is not None:
                    st = mstr[0]
                    off = b.add(kb, b.add(b.mul(gi, i64(st[-2])), b.mul(j, i64(st[-1]))))
                    visible = keep.load(b, off)
                if spec.causal:
                    c = b.icmp_signed("<=", j, gi)
                    visible = c if visible is None else b.and_(visible, c)
                if visible is not None:
                    x = b.select(visible, x, sc.const(dt, float("-inf")))
                b.store(x, b.gep(row, [j]))
                b.store(sc.maximum(ctx, dt, b.load(mx), x), mx)
            m = b.load(mx)
            b.store(sc.const(dt, 0.0), tot)
            with for_range(b, 0, keys, "j") as j:
                e = sc.call(ctx, "exp", b.fsub(b.load(b.gep(row, [j])), m))
                b.store(e, b.gep(row, [j]))
                acc = b.fadd(b.load(tot), e)
                acc.flags.append("reassoc")     # vector partial sums
                b.store(acc, tot)
            inv = b.fdiv(sc.const(dt, 1.0), b.load(tot))
            with for_range(b, 0, keys, "j") as j:
                p = b.gep(row, [j])
                b.store(b.fmul(b.load(p), inv), p)
        # out_rows = weights @ v
        b.call(gemm, [sbuf, i64(S), i64(1), vp, i64(EV), i64(1), op, i64(EV), rows, i64(EV),
                      keys, ctx.scratch(), i64(0)])
    ctx.barrier()
    return True
