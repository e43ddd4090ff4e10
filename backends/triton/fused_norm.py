"""Normalize regions (``fused`` of kind ``normalize``, passes/layer_regions.py: layer, group,
instance and RMS norm) as one kernel (kernels/row_norm.py): the statistics and the output, with
the weight, the bias and the intermediates the region exports, per row of the normalized
trailing axes. float32, float64, float16 or bfloat16 rows (16-bit ones with float32
statistics, each result rounded once). Other regions of that kind run their body's kernels
one by one."""
from __future__ import annotations

from irgraph import Node
from irgraph.passes.layer_regions import normalize_spec

from .kernels import row_norm as rk
from .table import LowerContext, Step


DTYPES = ("float32", "float64", "float16", "bfloat16")


def _spec(node: Node):
    """The normalization the row kernel runs for ``node``, or None (empty rows: the body)."""
    if node.op != "fused" or node.attrs["kind"] != "normalize":
        return None
    spec = normalize_spec(node.attrs["body"])
    if spec is None or spec.x.type.dtype not in DTYPES:
        return None
    trail = spec.x.type.shape[spec.x.type.rank - spec.axes:]
    if 0 in trail:
        return None
    return spec


def row_normalize(node: Node) -> bool:
    """Whether the row kernel runs ``node`` (16-bit operands as they are)."""
    return _spec(node) is not None


def normalize_step(node: Node, ctx: LowerContext) -> Step | None:
    """The row kernel's step for a normalize region, or None when it does not apply."""
    spec = _spec(node)
    if spec is None:
        return None
    body = node.attrs["body"]
    index = {v: i for i, v in enumerate(body.inputs)}
    role_of = {v: role for role, v in spec.roles.items()}
    results = ["out" if v is spec.out else role_of[v] for v in body.outputs]
    exports = sorted({r for r in results if r != "out"})
    ix = index[spec.x]
    iw = index[spec.weight] if spec.weight is not None else None
    ib = index[spec.bias] if spec.bias is not None else None
    run = rk.row_norm(spec.x.type.shape, spec.axes, spec.eps, spec.x.type.dtype, exports,
                      ctx.device, centered=spec.centered)
    ctx.notes.append(f"# %{node.outputs[0].name}: {'' if spec.centered else 'RMS '}"
                     f"row normalization over the last "
                     f"{spec.axes} axes (weight={iw is not None}, bias={ib is not None}, "
                     f"exports={exports})")

    def step(xs):
        got = run(xs[ix], None if iw is None else xs[iw], None if ib is None else xs[ib])
        return [got[r] for r in results]
    return step
