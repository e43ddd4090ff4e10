"""VJP rules of the convolution ops (irgraph/ops/conv.py).

The three operations of section 9.5 close under differentiation: for y = c(K, V, s),
dL/dK = g(G, V, s) (eq. 9.11) and dL/dV = h(K, G, s) (eq. 9.13); g and h are bilinear, and
their own VJPs are again c, g and h, so every order of derivative stays in this op set.
"""
from __future__ import annotations

from math import prod

from irgraph.ops.conv_geometry import repeat_tiles

from .core import vjp_rule

_CONV_KEYS = ("stride", "padding", "dilation", "groups")
_WINDOW_KEYS = ("stride", "padding", "dilation")


def _attrs(node, keys=_CONV_KEYS) -> dict:
    return {k: node.attrs[k] for k in keys}


def _spatial(v) -> tuple[int, ...]:
    return tuple(v.shape[2:])


@vjp_rule("conv", "conv_fft")
def _conv(e, node, xs, ys, gs):
    (x, w), (g,), a = xs, gs, _attrs(node)
    return [e("conv_input_grad", w, g, input_size=_spatial(x), **a),
            e("conv_kernel_grad", x, g, kernel_size=_spatial(w), **a)]


@vjp_rule("conv_kernel_grad")
def _conv_kernel_grad(e, node, xs, ys, gs):
    # <u, g(x, gy)> = <c(x, u), gy>
    (x, gy), (u,), a = xs, gs, _attrs(node)
    return [e("conv_input_grad", u, gy, input_size=_spatial(x), **a), e("conv", x, u, **a)]


@vjp_rule("conv_input_grad")
def _conv_input_grad(e, node, xs, ys, gs):
    # <v, h(w, gy)> = <c(v, w), gy>
    (w, gy), (v,), a = xs, gs, _attrs(node)
    return [e("conv_kernel_grad", v, gy, kernel_size=_spatial(w), **a), e("conv", v, w, **a)]


@vjp_rule("unfold")
def _unfold(e, node, xs, ys, gs):
    a = _attrs(node, _WINDOW_KEYS + ("kernel_size",))
    return [e("fold", gs[0], output_size=_spatial(xs[0]), **a)]


@vjp_rule("fold")
def _fold(e, node, xs, ys, gs):
    return [e("unfold", gs[0], **_attrs(node, _WINDOW_KEYS + ("kernel_size",)))]


# ---------------------------------------------------------------- unshared and tiled
def _lc_grads(e, x, w, g, a):
    """Cotangents of locally_connected(x, w) for output cotangent g, with w (O, *out, C, *k):
    per location p, y_p = U_p @ W_p where U = unfold(x) gives each location's window."""
    d = x.type.rank - 2
    n, c, o = x.shape[0], x.shape[1], w.shape[0]
    out, k = w.shape[1:1 + d], w.shape[2 + d:]
    p, ck = prod(out), c * prod(k)
    u = e("unfold", x, kernel_size=k, **a)                                   # (N, C, *k, *out)
    u = e("transpose", e("reshape", u, shape=(n, ck, p)), perm=(2, 0, 1))    # (P, N, CK)
    wm = e("transpose", e("reshape", w, shape=(o, p, ck)), perm=(1, 0, 2))   # (P, O, CK)
    gm = e("transpose", e("reshape", g, shape=(n, o, p)), perm=(2, 0, 1))    # (P, N, O)
    du = e("matmul", gm, wm)                                                 # (P, N, CK)
    du = e("reshape", e("transpose", du, perm=(1, 2, 0)), shape=(n, c) + k + out)
    dx = e("fold", du, output_size=_spatial(x), kernel_size=k, **a)
    dw = e("matmul", e("transpose", gm, perm=(0, 2, 1)), u)                  # (P, O, CK)
    dw = e("reshape", e("transpose", dw, perm=(1, 0, 2)), shape=w.shape)
    return dx, dw


@vjp_rule("locally_connected")
def _locally_connected(e, node, xs, ys, gs):
    (x, w), (g,) = xs, gs
    return list(_lc_grads(e, x, w, g, _attrs(node, _WINDOW_KEYS)))


def _tile_perm(d: int) -> tuple[int, ...]:
    """(O, C, *k, *t) -> (O, *t, C, *k)."""
    return (0,) + tuple(range(2 + d, 2 + 2 * d)) + (1,) + tuple(range(2, 2 + d))


def _inverse(perm) -> tuple[int, ...]:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


def _expand_tiles(e, w, out):
    """The unshared weight (O, *out, C, *k) of tiled kernels (O, C, *k, *t)."""
    return repeat_tiles(e, e("transpose", w, perm=_tile_perm(len(out))), 1, out)


def _reduce_tiles(e, dw, tiles):
    """Transpose of ``_expand_tiles``: sum each location's gradient into its kernel."""
    d = len(tiles)
    for i, t in enumerate(tiles):
        s, m = dw.shape, dw.shape[1 + i]
        r = -(-m // t)
        if r * t != m:
            pads = [0] * (2 * len(s))
            pads[2 * (1 + i) + 1] = r * t - m
            dw = e("pad", dw, pads=tuple(pads))
        dw = e("reshape", dw, shape=s[:1 + i] + (r, t) + s[2 + i:])
        dw = e("sum", dw, axis=(1 + i,))
    return e("transpose", dw, perm=_inverse(_tile_perm(d)))


@vjp_rule("tiled_conv")
def _tiled_conv(e, node, xs, ys, gs):
    (x, w), (g,), (y,) = xs, gs, ys
    d = x.type.rank - 2
    out = _spatial(y)
    dx, dw = _lc_grads(e, x, _expand_tiles(e, w, out), g, _attrs(node, _WINDOW_KEYS))
    return [dx, _reduce_tiles(e, dw, w.shape[2 + d:])]
