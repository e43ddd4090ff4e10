"""Lowering of ``fused`` regions (irgraph/ops/fused.py): one generated kernel per region."""
from __future__ import annotations

from irgraph import Node

from . import codegen, codegen_reduce, codegen_rows
from .fused_attention import attention_step
from .fused_norm import normalize_step
from .table import LowerContext, Step, lowering


@lowering("fused")
def _fused(node: Node, ctx: LowerContext) -> Step:
    """An elementwise region, a reduction with its prologue and epilogue, or a matmul or
    convolution with its elementwise epilogue: one generated kernel (codegen.py,
    codegen_reduce.py); an attention region, the flash kernel (fused_attention.py); a normalize
    region, the row kernel (fused_norm.py); a rows region (a normalization's backward), one
    generated kernel sweeping each row once per level of its reductions (codegen_rows.py). Other
    bodies run their own nodes' kernels back to back."""
    body = node.attrs["body"]
    if node.attrs["kind"] == "attention":
        step = attention_step(node, ctx)
        if step is not None:
            return step
    if node.attrs["kind"] == "normalize":
        step = normalize_step(node, ctx)
        if step is not None:
            return step
    if node.attrs["kind"] == "elementwise" and codegen.supports(body):
        run = codegen.FusedElementwise(body, ctx.device)
        ctx.notes.append(run.source)
        return run
    if node.attrs["kind"] == "reduction" and codegen_reduce.supports_reduction(body):
        run = codegen_reduce.FusedReduction(body, ctx.device)
        ctx.notes.append(run.source)
        return run
    if node.attrs["kind"] == "rows" and codegen_rows.supports_rows(body):
        run = codegen_rows.FusedRows(body, ctx.device)
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
