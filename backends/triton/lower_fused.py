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
    for make in _BY_KIND.get(node.attrs["kind"], ()):
        run = make(node, body, ctx)
        if run is not None:
            return run
    plan = ctx.lower_graph(body)
    return lambda xs: plan(xs)


def _noted(run, ctx: LowerContext):
    """A generated kernel, its source kept for ``exe.source()``."""
    ctx.notes.append(run.source)
    return run


def _generated(supports, kernel):
    """A maker of ``kernel(body, device)`` for the bodies ``supports`` accepts."""
    return lambda node, body, ctx: (_noted(kernel(body, ctx.device), ctx) if supports(body)
                                    else None)


def _epilogue(node: Node, body, ctx: LowerContext):
    if not codegen.supports_epilogue(body):
        return None
    if codegen.lift_constants(body)[0].nodes[0].op == "conv":
        return _noted(codegen.FusedConvEpilogue(body, ctx.device, ctx.allow_tf32), ctx)
    return _noted(codegen.FusedEpilogue(body, ctx.device, ctx.input_precision), ctx)


# each region kind's kernels, tried in order (None: does not apply); a kind none of them
# takes runs its body's nodes back to back
_BY_KIND = {
    "attention": (lambda node, body, ctx: attention_step(node, ctx),),
    "normalize": (lambda node, body, ctx: normalize_step(node, ctx),),
    "elementwise": (_generated(codegen.supports, codegen.FusedElementwise),),
    "reduction": (_generated(codegen_reduce.supports_reduction, codegen_reduce.FusedReduction),),
    "rows": (_generated(codegen_rows.supports_rows, codegen_rows.FusedRows),),
    "epilogue": (_epilogue,),
}
