"""VJP rule of batch normalization (irgraph/ops/norm.py, section 8.7.1), written with core ops.

In training mode the gradient flows through the minibatch mean and standard deviation
(eq. 8.36-8.37): with xhat = (x - mu) / sigma and gh = dL/dxhat = g * gamma,

    dL/dx = (gh - mean(gh) - xhat * mean(gh * xhat)) / sigma

where mean(gh) = gamma * dL/dbeta / M and mean(gh * xhat) = gamma * dL/dgamma / M (M values
per channel), so the backward pass reduces over x four times (mu, sigma, the two parameter
gradients)
which has no component that only shifts the mean or scales the spread of a unit: the two
subtracted terms remove exactly those directions. The running-average outputs add their own
(small) terms. In inference mode the op is an affine map of x with the running statistics
as ordinary differentiable inputs.
"""
from __future__ import annotations

from math import prod

from irgraph.ops.core import reduced_shape
from irgraph.ops.norm import bn_axes

from .core import vjp_rule


def _is_zero(v) -> bool:
    """A cotangent the driver filled with zeros (an unused output): its terms can be skipped."""
    n = v.node
    return n is not None and n.op == "full" and n.attrs.get("value") == 0.0


@vjp_rule("batch_norm")
def _batch_norm(e, node, xs, ys, gs):
    x, gamma, beta, rm, rv = xs
    g, g_mean, g_var = gs
    a = node.attrs
    red, _ = bn_axes(x.type.rank, a["axis"])
    keep = reduced_shape(x.shape, red, True)
    vec = gamma.shape

    def per_channel(v):                     # (C,) -> broadcastable against x
        return e("reshape", v, shape=keep)

    def kept(v):                            # sum over all but the channel axis, keepdims
        return e("sum", v, axis=red, keepdims=True)

    def total(v):                           # ... -> (C,)
        return e("reshape", kept(v), shape=vec)

    def mean(v):
        return e("mean", v, axis=red, keepdims=True)

    eps = e.scalar(a["eps"], x)
    if a["training"]:
        mu = mean(x)
        xc = e("sub", x, mu)
        inv = e("rsqrt", e("add", mean(e("square", xc)), eps))
    else:
        xc = e("sub", x, per_channel(rm))
        inv = e("rsqrt", e("add", per_channel(rv), eps))
    xhat = e("mul", xc, inv)
    gh = e("mul", g, per_channel(gamma))
    k_gamma, k_beta = kept(e("mul", g, xhat)), kept(g)
    d_gamma, d_beta = e("reshape", k_gamma, shape=vec), e("reshape", k_beta, shape=vec)
    if a["training"]:
        # mean(gh) = gamma * d_beta / M and mean(gh * xhat) = gamma * d_gamma / M: per-channel
        # work instead of two more passes over x, kept in the broadcast shape (one value per
        # channel from the sums to dx: a backend sweeps the channels' elements for the sums,
        # then once for dx)
        scale = per_channel(e("mul", gamma, e.scalar(prod(vec) / x.type.size, x)))
        m_gh = e("mul", k_beta, scale)
        m_ghx = e("mul", k_gamma, scale)
        centred = e("sub", e("sub", gh, m_gh), e("mul", xhat, m_ghx))
        dx = e("mul", centred, inv)
        dx = _running_terms(e, x, xc, dx, g_mean, g_var, a["momentum"], keep)
        keep_old = e.scalar(1.0 - a["momentum"], x)
        d_rm = None if _is_zero(g_mean) else e("mul", g_mean, keep_old)
        d_rv = None if _is_zero(g_var) else e("mul", g_var, keep_old)
    else:
        dx = e("mul", gh, inv)
        d_rm = e("neg", total(e("mul", gh, inv)))
        cube = e("mul", e("mul", inv, inv), inv)
        d_rv = total(e("mul", e("mul", gh, xc), e("mul", cube, e.scalar(-0.5, x))))
        if not _is_zero(g_mean):
            d_rm = e("add", d_rm, g_mean)
        if not _is_zero(g_var):
            d_rv = e("add", d_rv, g_var)
    return [dx, d_gamma, d_beta, d_rm, d_rv]


def _running_terms(e, x, xc, dx, g_mean, g_var, momentum, keep):
    """Add what the running averages contribute in training mode: new_mean has
    momentum * mean(x), new_var has momentum * sum((x - mu)^2) / (M - 1)."""
    m = x.type.size // prod(keep)
    if not _is_zero(g_mean):
        gm = e("mul", e("reshape", g_mean, shape=keep), e.scalar(momentum / m, x))
        dx = e("add", dx, e("broadcast_to", gm, shape=x.shape))
    if not _is_zero(g_var):
        gv = e("mul", e("reshape", g_var, shape=keep), e.scalar(2 * momentum / (m - 1), x))
        dx = e("add", dx, e("mul", xc, gv))
    return dx

