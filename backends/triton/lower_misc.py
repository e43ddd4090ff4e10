"""Lowerings of batch norm, recurrence (``scan``), ``fused`` regions, ``stop_gradient`` and the
NaN checker's ``check_finite``."""
from __future__ import annotations

import torch

from irgraph import Node
from irgraph.ops import recurrence as R
from irgraph.ops.debug import NonFiniteError, non_finite_message

from . import codegen, codegen_reduce
from .kernels import elementwise as ew
from .kernels import norm as nk
from .kernels import reduce as red
from .runtime import View, empty
from .table import LowerContext, Step, lowering


@lowering("batch_norm")
def _batch_norm(node: Node, ctx: LowerContext) -> Step:
    x = node.inputs[0].type
    a = node.attrs
    run = nk.batch_norm(x.shape, a["axis"], a["training"], a["eps"], a["momentum"], x.dtype,
                        ctx.device)
    return lambda xs: run(*xs)


@lowering("stop_gradient")
def _stop_gradient(node: Node, ctx: LowerContext) -> Step:
    return lambda xs: [xs[0]]              # buffers are never written in place: share it


@lowering("fused")
def _fused(node: Node, ctx: LowerContext) -> Step:
    """An elementwise region, a reduction with its prologue and epilogue, or a matmul or
    convolution with its elementwise epilogue: one generated kernel (codegen.py,
    codegen_reduce.py). Other bodies run their own nodes' kernels back to back."""
    body = node.attrs["body"]
    if node.attrs["kind"] == "elementwise" and codegen.supports(body):
        run = codegen.FusedElementwise(body, ctx.device)
        ctx.notes.append(run.source)
        return run
    if node.attrs["kind"] == "reduction" and codegen_reduce.supports_reduction(body):
        run = codegen_reduce.FusedReduction(body, ctx.device)
        ctx.notes.append(run.source)
        return run
    if node.attrs["kind"] == "epilogue" and codegen.supports_epilogue(body):
        conv = codegen.lift_constants(body)[0].nodes[0].op == "conv"
        run = (codegen.FusedConvEpilogue(body, ctx.device, ctx.allow_tf32) if conv else
               codegen.FusedEpilogue(body, ctx.device, ctx.input_precision))
        ctx.notes.append(run.source)
        return run
    plan = ctx.lower_graph(body)
    return lambda xs: plan(xs)


@lowering("check_finite")
def _check_finite(node: Node, ctx: LowerContext) -> Step:
    """A device reduction counts non-finite values; only that count comes to the host (the
    checker is a debugging mode: it must stop at the first bad node)."""
    x = node.inputs[0].type
    if x.dtype not in ("float32", "float64"):
        return lambda xs: [xs[0]]
    shape = x.shape
    views = [View.of(shape)] * 2
    bad = ew.elementwise("sub", shape, x.dtype, views, [x.dtype] * 2, ctx.device)
    count = red.reduce("sum", shape, tuple(range(len(shape))), (), x.dtype, x.dtype,
                       ctx.device)
    a = node.attrs

    def step(xs: list[torch.Tensor]) -> list[torch.Tensor]:
        # x - x is 0 where x is finite and NaN where it is NaN or +-inf
        total = float(count(bad(xs[0], xs[0])).cpu())
        if total != total:
            arrays = [t.cpu().numpy() for t in xs]
            raise NonFiniteError(non_finite_message(arrays[0], arrays[1:],
                                                    checked_op=a["checked_op"],
                                                    node=a["node"], source=a["source"],
                                                    names=a["names"]))
        return [xs[0]]
    return step


@lowering("scan")
def _scan(node: Node, ctx: LowerContext) -> Step:
    """The body is lowered once; the host loop launches its kernels step after step, slicing
    sequences and writing per-step outputs in place on the device (fig. 10.2)."""
    attrs = dict(node.attrs)
    body = R.step_body(attrs)
    plan = ctx.lower_graph(body)
    nc = attrs["num_carry"]
    steps = R.num_steps([v.type for v in node.inputs], attrs)
    save = attrs["save_every"]
    out_types = [v.type for v in node.outputs]
    y_types = out_types[nc:len(body.outputs)]
    saved_types = out_types[len(body.outputs):]
    copy_y = [_copier(t.shape[1:], t.dtype, ctx.device) for t in y_types]
    copy_saved = [_copier(t.shape[1:], t.dtype, ctx.device) for t in saved_types]

    def step(xs: list[torch.Tensor]) -> list[torch.Tensor]:
        carries, seqs, mask, consts = R.split_inputs(xs, attrs)
        ys = [empty(t.shape, t.dtype, ctx.device) for t in y_types]
        saved = [empty(t.shape, t.dtype, ctx.device) for t in saved_types]
        order = range(steps - 1, -1, -1) if attrs["reverse"] else range(steps)
        for p, t in enumerate(order):
            if save and p % save == 0:
                for c, buf, cp in zip(carries, saved, copy_saved):
                    cp(c, out=buf[p // save])
            per_step = [s[t] for s in seqs] + ([mask[t]] if mask is not None else [])
            res = plan(list(carries) + per_step + list(consts))
            carries = res[:nc]
            for y, buf, cp in zip(res[nc:], ys, copy_y):
                cp(y, out=buf[t])
        return list(carries) + ys + saved
    return step


def _copier(shape, dtype: str, device):
    return ew.elementwise("copy", shape, dtype, [View.of(shape)], [dtype], device)
