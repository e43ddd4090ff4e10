"""VJP rules of the pooling ops (irgraph/ops/pool.py).

Max pooling routes each gradient to its window's first maximum (``max_pool_grad``); that op is
linear in the gradient and piecewise constant in x, and its transpose reads values at the
chosen positions (``max_pool_select``), whose transpose is ``max_pool_grad`` again. Average
pooling is linear: its VJP is ``avg_pool_grad``, whose VJP is ``avg_pool``.
"""
from __future__ import annotations

from .core import vjp_rule

_MAX = ("kernel_size", "stride", "padding", "dilation", "ceil_mode")
_AVG = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
        "divisor_override")


def _attrs(node, keys) -> dict:
    return {k: node.attrs[k] for k in keys}


def _max_family(prefix: str, keys: tuple[str, ...]) -> None:
    """Rules of ``<prefix>``, ``<prefix>_grad`` and ``<prefix>_select``."""
    grad_op, select_op = prefix + "_grad", prefix + "_select"

    @vjp_rule(prefix)
    def _fwd(e, node, xs, ys, gs):
        return [e(grad_op, xs[0], gs[0], **_attrs(node, keys))]

    # x only chooses positions: no gradient with respect to it (zero almost everywhere)
    @vjp_rule(grad_op)
    def _grad(e, node, xs, ys, gs):
        return [None, e(select_op, xs[0], gs[0], **_attrs(node, keys))]

    @vjp_rule(select_op)
    def _select(e, node, xs, ys, gs):
        return [None, e(grad_op, xs[0], gs[0], **_attrs(node, keys))]


_max_family("max_pool", _MAX)
_max_family("adaptive_max_pool", ("output_size",))


@vjp_rule("avg_pool")
def _avg_pool(e, node, xs, ys, gs):
    return [e("avg_pool_grad", gs[0], input_size=xs[0].shape[2:], **_attrs(node, _AVG))]


@vjp_rule("avg_pool_grad")
def _avg_pool_grad(e, node, xs, ys, gs):
    return [e("avg_pool", gs[0], **_attrs(node, _AVG))]


@vjp_rule("adaptive_avg_pool")
def _adaptive_avg_pool(e, node, xs, ys, gs):
    return [e("adaptive_avg_pool_grad", gs[0], input_size=xs[0].shape[2:],
              output_size=node.attrs["output_size"])]


@vjp_rule("adaptive_avg_pool_grad")
def _adaptive_avg_pool_grad(e, node, xs, ys, gs):
    return [e("adaptive_avg_pool", gs[0], output_size=node.attrs["output_size"])]
