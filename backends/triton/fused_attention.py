"""Attention regions (``fused`` of kind ``attention``, passes/layer_regions.py) as one flash
kernel (kernels/attention.py): float32 operands, head dims up to ``MAX_HEAD_DIM``. Other
regions of that kind run their body's kernels one by one."""
from __future__ import annotations

from irgraph import Node
from irgraph.passes.layer_regions import attention_spec

from .kernels import attention as ak
from .table import LowerContext, Step


def attention_step(node: Node, ctx: LowerContext) -> Step | None:
    """The flash kernel's step for an attention region, or None when it does not apply."""
    body = node.attrs["body"]
    spec = attention_spec(body)
    if spec is None or spec.q.type.dtype != "float32":
        return None
    e, ev = spec.q.type.shape[-1], spec.v.type.shape[-1]
    if max(e, ev) > ak.MAX_HEAD_DIM:
        return None
    index = {v: i for i, v in enumerate(body.inputs)}
    iq, ik, iv = index[spec.q], index[spec.k], index[spec.v]
    im = index[spec.keep] if spec.keep is not None else None
    ia = index[spec.additive] if spec.additive is not None else None
    run = ak.attention(spec.q.type.shape, spec.k.type.shape, spec.v.type.shape, spec.scale,
                       spec.causal, None if im is None else spec.keep.type.shape,
                       None if ia is None else spec.additive.type.shape, "float32",
                       ctx.input_precision, ctx.device)
    ctx.notes.append(f"# %{node.outputs[0].name}: flash attention (causal={spec.causal}, "
                     f"keep-mask={im is not None}, additive mask={ia is not None})")

    def step(xs):
        return [run(xs[iq], xs[ik], xs[iv], None if im is None else xs[im],
                    None if ia is None else xs[ia])]
    return step
