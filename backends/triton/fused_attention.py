"""Attention regions (``fused`` of kind ``attention``, passes/layer_regions.py) as one flash
kernel (kernels/attention.py): float32, float16 or bfloat16 operands (float32 accumulation,
one rounding of the output), head dims up to ``MAX_HEAD_DIM``. Other regions of that kind run
their body's kernels one by one."""
from __future__ import annotations

from irgraph import Node
from irgraph.passes.layer_regions import attention_spec

from .kernels import attention as ak
from .table import LowerContext, Step


DTYPES = ("float32", "float16", "bfloat16")


def _spec(node: Node):
    """The attention the flash kernel runs for ``node``, or None."""
    if node.op != "fused" or node.attrs["kind"] != "attention":
        return None
    spec = attention_spec(node.attrs["body"])
    if spec is None or spec.q.type.dtype not in DTYPES \
            or max(spec.q.type.shape[-1], spec.v.type.shape[-1]) > ak.MAX_HEAD_DIM:
        return None
    return spec


def flash_attention(node: Node) -> bool:
    """Whether the flash kernel runs ``node`` (16-bit operands as they are)."""
    return _spec(node) is not None


def attention_step(node: Node, ctx: LowerContext) -> Step | None:
    """The flash kernel's step for an attention region, or None when it does not apply."""
    spec = _spec(node)
    if spec is None:
        return None
    body = node.attrs["body"]
    index = {v: i for i, v in enumerate(body.inputs)}
    iq, ik, iv = index[spec.q], index[spec.k], index[spec.v]
    im = index[spec.keep] if spec.keep is not None else None
    ia = index[spec.additive] if spec.additive is not None else None
    run = ak.attention(spec.q.type.shape, spec.k.type.shape, spec.v.type.shape, spec.scale,
                       spec.causal, None if im is None else spec.keep.type.shape,
                       None if ia is None else spec.additive.type.shape, spec.q.type.dtype,
                       ctx.input_precision, ctx.device)
    ctx.notes.append(f"# %{node.outputs[0].name}: flash attention (causal={spec.causal}, "
                     f"keep-mask={im is not None}, additive mask={ia is not None})")

    def step(xs):
        return [run(xs[iq], xs[ik], xs[iv], None if im is None else xs[im],
                    None if ia is None else xs[ia])]
    return step
