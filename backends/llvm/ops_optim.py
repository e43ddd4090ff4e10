"""Lowerings of the optimizer updates (irgraph/ops/optim.py, alg. 8.1-8.7, eq. 8.39) and of
gradient clipping: one fused loop per update, every state tensor read and written once.

The formulas are those of the registry's kernels, written over ``S`` scalars.
"""
from __future__ import annotations

from .builder import REGISTER, for_range, i64
from .elementwise import elementwise
from .lowering import SAME_INDEX, lowering
from .ops_core import SCALAR
from .scalar import S, const


def _update(name: str, n_tensors: int):
    SAME_INDEX.add(name)

    def deco(formula):
        def one(ctx, node, vs):
            """The update of one element (inside a fused region: passes.fusion's
            ``fuse_updates``): its value, or a list of one per output."""
            dt = node.inputs[0].dtype
            res = formula(*(S(ctx, dt, v) for v in vs), **node.attrs)
            return [r.v for r in res] if isinstance(res, tuple) else res.v
        SCALAR[name] = one

        @lowering(name, parallel=True, size_generic=True)
        def lower(ctx, node, ins, outs):
            dt = ins[0].dtype
            b = ctx.b
            # hyperparameters are rank-0 inputs: load once, outside the loop
            hyper = [S(ctx, dt, h.load(b, i64(0))) for h in ins[n_tensors:]]

            def fn(vs):
                tensors = [S(ctx, dt, v) for v in vs]
                res = formula(*tensors, *hyper, **node.attrs)
                return [r.v for r in (res if isinstance(res, tuple) else (res,))]
            elementwise(ctx, outs, ins[:n_tensors], fn)
        return formula
    return deco


@_update("sgd_update", 2)
def _sgd(p, g, lr):
    return p - lr * g


@_update("momentum_update", 3)
def _momentum(p, g, v, lr, momentum, *, convention, nesterov):
    if convention == "text":
        v2 = momentum * v - lr * g
        return p + v2, v2
    v2 = momentum * v + g
    step = g + momentum * v2 if nesterov else v2
    return p - lr * step, v2


@_update("adagrad_update", 3)
def _adagrad(p, g, r, lr, eps):
    r2 = r + g * g
    return p - lr * g / (eps + r2.sqrt()), r2


@_update("rmsprop_update", 3)
def _rmsprop(p, g, r, lr, alpha, eps, *, convention):
    r2 = alpha * r + (1 - alpha) * g * g
    denom = (eps + r2).sqrt() if convention == "text" else r2.sqrt() + eps
    return p - lr * g / denom, r2


@_update("rmsprop_momentum_update", 4)
def _rmsprop_momentum(p, g, r, v, lr, alpha, eps, momentum, *, convention):
    r2 = alpha * r + (1 - alpha) * g * g
    if convention == "text":
        v2 = momentum * v - lr * g / (eps + r2).sqrt()
        return p + v2, r2, v2
    v2 = momentum * v + g / (r2.sqrt() + eps)
    return p - lr * v2, r2, v2


@_update("adam_update", 4)
def _adam(p, g, s, r, lr, beta1, beta2, eps, t, *, convention):
    """The bias corrections as factors of the hyperparameters alone (lr / (1 - beta1^t) and
    1 / (1 - beta2^t), made once per call): one division and one square root per element
    instead of three divisions (a vector division is the loop's bottleneck; the results
    differ from the kernel's by a rounding)."""
    s2 = beta1 * s + (1 - beta1) * g
    r2 = beta2 * r + (1 - beta2) * g * g
    r_hat = r2 * (1 / (1 - beta2 ** t))
    denom = (r_hat + eps).sqrt() if convention == "text" else r_hat.sqrt() + eps
    return p - (lr / (1 - beta1 ** t)) * s2 / denom, s2, r2


@_update("polyak_update", 2)
def _polyak(avg, p, alpha):
    return alpha * avg + (1 - alpha) * p


@_update("clip_by_value", 1)
def _clip_value(g, clip_value):
    """np.clip(g, -c, c): NaN stays NaN."""
    return g.maximum(S(g.ctx, g.dtype, g.ctx.b.fneg(clip_value.v))).minimum(clip_value)


@_update("clip_by_norm", 1)
def _clip_norm(g, norm, max_norm, *, eps):
    scale = (max_norm / (norm + eps)).minimum(1)
    return g * scale


@lowering("global_norm", parallel=False)
def _global_norm(ctx, node, ins, outs):
    """sqrt of the sum of squares of every input, accumulated in float64 as the kernel does."""
    b = ctx.b
    acc = ctx.alloca(REGISTER["float64"], "acc")
    b.store(const("float64", 0), acc)
    for x in ins:
        with for_range(b, 0, x.type.size, "q") as q:
            v = x.load(b, q)
            if x.dtype != "float64":
                v = b.fpext(v, REGISTER["float64"])
            r = b.fadd(b.load(acc), b.fmul(v, v))
            r.flags.append("reassoc")
            b.store(r, acc)
    total = S(ctx, "float64", b.load(acc)).sqrt().v
    out = outs[0]
    if out.dtype != "float64":
        total = b.fptrunc(total, REGISTER[out.dtype])
    out.store(b, i64(0), total)
