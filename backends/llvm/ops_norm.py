"""Lowering of batch normalization (section 8.7.1, eq. 8.34-8.37).

Per channel (threads split the channels): in training, the mean (eq. 8.35) and the biased
variance (eq. 8.36) in float64 over every other axis, then y = gamma (x - mu) / sqrt(var +
eps) + beta and PyTorch's running-average update with the unbiased variance; in inference
the running averages stand in for the statistics. As the registry kernel, in float64.
"""
from __future__ import annotations

from llvmlite import ir

from .builder import F64, for_range, i64, prod
from .lowering import lowering
from . import scalar as sc


@lowering("batch_norm", parallel=True)
def _batch_norm(ctx, node, ins, outs):
    (x, gamma, beta, rmean, rvar), (y, nmean, nvar) = ins, outs
    a = node.attrs
    axis = a["axis"] % x.type.rank
    outer, C, inner = prod(x.shape[:axis]), x.shape[axis], prod(x.shape[axis + 1:])
    m = outer * inner
    dt, b = x.dtype, ctx.b
    acc = ctx.alloca(F64, "acc")

    def f64(v):
        return sc.convert(ctx, dt, "float64", v)

    def to_dt(v):
        return sc.convert(ctx, "float64", dt, v)

    def each(c, fn):
        with for_range(b, 0, outer, "bo") as o:
            base = b.add(b.mul(o, i64(C * inner)), b.mul(c, i64(inner)))
            with for_range(b, 0, inner, "bi") as i:
                fn(b.add(base, i))

    def accumulate(c, term):
        b.store(ir.Constant(F64, 0.0), acc)
        def add(off):
            s = b.fadd(b.load(acc), term(off))
            s.flags.append("reassoc")   # vector partial sums (float64, as the kernel)
            b.store(s, acc)
        each(c, add)
        return b.fdiv(b.load(acc), ir.Constant(F64, float(m)))

    lo, hi = ctx.split(C)
    with for_range(b, lo, hi, "ch") as c:
        if a["training"]:
            mean = accumulate(c, lambda off: f64(x.load(b, off)))

            def sq(off):
                d = b.fsub(f64(x.load(b, off)), mean)
                return b.fmul(d, d)
            var = accumulate(c, sq)
            mom = ir.Constant(F64, a["momentum"])
            keep = ir.Constant(F64, 1.0 - a["momentum"])
            unbiased = b.fdiv(b.fmul(var, ir.Constant(F64, float(m))),
                              ir.Constant(F64, float(m - 1)))
            nmean.store(b, c, to_dt(b.fadd(b.fmul(keep, f64(rmean.load(b, c))),
                                           b.fmul(mom, mean))))
            nvar.store(b, c, to_dt(b.fadd(b.fmul(keep, f64(rvar.load(b, c))),
                                          b.fmul(mom, unbiased))))
        else:
            mean, var = f64(rmean.load(b, c)), f64(rvar.load(b, c))
            nmean.store(b, c, rmean.load(b, c))
            nvar.store(b, c, rvar.load(b, c))
        inv = b.fdiv(ir.Constant(F64, 1.0),
                     sc.call(ctx, "sqrt", b.fadd(var, ir.Constant(F64, a["eps"]))))
        scale = b.fmul(f64(gamma.load(b, c)), inv)
        shift = f64(beta.load(b, c))
        each(c, lambda off: y.store(b, off, to_dt(b.fadd(
            b.fmul(scale, b.fsub(f64(x.load(b, off)), mean)), shift))))
