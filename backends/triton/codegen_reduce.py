"""Code generation for ``fused`` regions of kind ``reduction``: ONE Triton kernel computes the
elementwise prologue over S, the one ``sum``/``mean``/``max``/``min``, and the elementwise
epilogue over the reduced shape R, without writing any intermediate to memory.

The reduced axes are moved last (the kernel walks S as an (M, K) matrix through strided
operand offsets, never copying an operand); each program owns BLOCK_M rows, loops over K in
BLOCK_K chunks, then applies the epilogue to its row results and stores them.

    fused(%x: f32[2,5]) {%0 = mul(%x, %x); %1 = sum(%0) {axis=[1]}; %2 = sqrt(%1); return %2}
    ->  for k0 ...: v_in0 = load(...); v0 = _binary(v_in0, v_in0, "mul"); acc += v0
        red = tl.sum(acc, axis=1); v2 = _unary(red, "sqrt"); store(out0_ptr + rows, v2)
"""
from __future__ import annotations

import hashlib
from math import prod

import torch

from irgraph import Graph, Node, Value
from irgraph.ops.core import normalize_axes
from irgraph.registry import ops_with

from .codegen import (elementwise_expr, elementwise_nodes, lift_constants, literal, load_kernel,
                      same_shape_outputs)
from .runtime import View, cdiv, empty, meta_tensor, next_pow2, to_device

REDUCTIONS = ops_with("reduction")
# the reductions the generated kernel implements (a region reducing by another one is not
# generated: its nodes run one by one)
KERNEL_REDUCTIONS = ("sum", "mean", "max", "min")


def _split(body: Graph) -> tuple[list[Node], Node, list[Node]] | None:
    reds = [n for n in body.nodes if n.op in REDUCTIONS]
    if len(reds) != 1 or reds[0].op not in KERNEL_REDUCTIONS:
        return None
    i = body.nodes.index(reds[0])
    return body.nodes[:i], reds[0], body.nodes[i + 1:]


def supports_reduction(body: Graph) -> bool:
    """Prologue over S, one float reduction, epilogue over R; every result R-shaped."""
    body, _ = lift_constants(body)
    parts = _split(body)
    if parts is None:
        return False
    pro, red, epi = parts
    x, y = red.inputs[0].type, red.outputs[0].type
    if x.dtype not in ("float32", "float64") or x.size == 0 or y.size == 0:
        return False
    if not (elementwise_nodes(pro, x.shape) and elementwise_nodes(epi, y.shape)
            and same_shape_outputs(body, y.shape)):
        return False
    pro_vals = {v for n in pro for v in n.outputs} | {red.inputs[0]} - set(body.inputs)
    if any(v in pro_vals for n in epi for v in n.inputs):
        return False                            # the epilogue reads reduced values only
    r_vals = {red.outputs[0]} | {v for n in epi for v in n.outputs}
    if any(v not in r_vals for v in body.outputs):
        return False
    try:
        for v in body.inputs:
            if _read_by_nodes(v, pro + [red]):
                torch.broadcast_shapes(v.shape, x.shape) == x.shape or _fail()
            if _read_by_nodes(v, epi):
                torch.broadcast_shapes(v.shape, y.shape) == y.shape or _fail()
    except (RuntimeError, ValueError):
        return False
    return True


def _fail():
    raise ValueError("does not broadcast")


def _read_by_nodes(v: Value, nodes) -> bool:
    return any(v in n.inputs for n in nodes)


class FusedReduction:
    """A planned launch of the generated kernel of one reduction region."""

    def __init__(self, body: Graph, device):
        body, consts = lift_constants(body)
        self.consts = [to_device(c, v.dtype, device)
                       for c, v in zip(consts, body.inputs[len(body.inputs) - len(consts):])]
        pro, red, epi = _split(body)
        s_shape, r = red.inputs[0].shape, red.outputs[0].type
        axes = normalize_axes(red.attrs["axis"], len(s_shape))
        keep = [i for i in range(len(s_shape)) if i not in axes]
        self.m, self.k = prod(s_shape[i] for i in keep), prod(s_shape[i] for i in axes)
        s_views = [View.of(v.shape).broadcast_to(s_shape).permute(keep + list(axes))
                   if _read_by_nodes(v, pro + [red]) else None for v in body.inputs]
        r_views = [_row_view(v.shape, r.shape, keep, axes, red.attrs["keepdims"])
                   if _read_by_nodes(v, epi) else None for v in body.inputs]
        rank_s, rank_r = max(1, len(s_shape)), max(1, len(keep))
        s_perm = tuple(s_shape[i] for i in keep + list(axes))
        self.meta_s = meta_tensor(_rows(s_perm, s_views, rank_s), device)
        self.meta_r = meta_tensor(_rows(tuple(s_shape[i] for i in keep), r_views, rank_r),
                                  device)
        self.block_k = min(1024, next_pow2(self.k))
        self.block_m = max(1, min(64, 4096 // self.block_k))
        self.source, name = render_reduction(body, pro, red, epi, s_views, r_views,
                                             rank_s, rank_r)
        self.kernel = load_kernel(self.source, name)
        self.out_types = [v.type for v in body.outputs]
        self.device = device

    def __call__(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        outs = [empty(t.shape, t.dtype, self.device) for t in self.out_types]
        self.kernel[(cdiv(self.m, self.block_m),)](
            *outs, *xs, *self.consts, self.meta_s, self.meta_r, self.m, self.k,
            BLOCK_M=self.block_m, BLOCK_K=self.block_k)
        return outs


def _row_view(shape, r_shape, keep, axes, keepdims: bool) -> View:
    """An epilogue operand as a view over the kept axes (the rows' order)."""
    v = View.of(shape).broadcast_to(r_shape)
    if keepdims:
        v = View(tuple(v.shape[i] for i in keep), tuple(v.strides[i] for i in keep), v.offset)
    return v


def _rows(shape, views, rank: int) -> list[tuple[int, ...]]:
    zeros = (0,) * rank
    return [tuple(shape) or (1,)] + [(v.strides or zeros) if v is not None else zeros
                                     for v in views]


def render_reduction(body: Graph, pro, red: Node, epi, s_views, r_views, rank_s: int,
                     rank_r: int) -> tuple[str, str]:
    acc_ty = {"float32": "tl.float32", "float64": "tl.float64"}[red.outputs[0].dtype]
    init = {op: literal(v, red.outputs[0].dtype) for op, v in
            (("sum", 0), ("mean", 0), ("max", float("-inf")), ("min", float("inf")))}
    names: dict[Value, str] = {}
    lines = ["    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)",
             "    rmask = rows < M",
             f"    acc = tl.full((BLOCK_M, BLOCK_K), {init[red.op]}, {acc_ty})",
             "    nan = tl.zeros((BLOCK_M, BLOCK_K), tl.int1)",
             "    for k0 in range(0, K, BLOCK_K):",
             "        cols = k0 + tl.arange(0, BLOCK_K)",
             "        mask = rmask[:, None] & (cols[None, :] < K)",
             "        offs = rows[:, None].to(tl.int64) * K + cols[None, :]"]
    for i, v in enumerate(body.inputs):
        if s_views[i] is not None:
            names[v] = f"s_in{i}"
            lines.append(f"        s_in{i} = _load_input(in{i}_ptr, 0, offs, mask, meta_s_ptr, "
                         f"{i + 1}, {rank_s}, {not s_views[i].is_contiguous})")
    for k, node in enumerate(pro):
        names[node.outputs[0]] = f"p{k}"
        expr = elementwise_expr(node.op, [names[v] for v in node.inputs], node, node.outputs[0],
                     "(BLOCK_M, BLOCK_K)")
        lines.append(f"        p{k} = {expr}")
    x = names[red.inputs[0]]
    if red.op in ("sum", "mean"):
        lines.append(f"        acc += tl.where(mask, {x}, 0).to({acc_ty})")
        total = "tl.sum(acc, axis=1)" + (" / K" if red.op == "mean" else "")
        lines.append(f"    red = {total}")
    elif red.op in ("max", "min"):
        fn = "tl.maximum" if red.op == "max" else "tl.minimum"
        lines += [f"        acc = tl.where(mask, {fn}(acc, {x}), acc)",
                  f"        nan = nan | (mask & ({x} != {x}))",
                  f"    red = tl.{red.op}(acc, axis=1)",
                  "    red = tl.where(tl.max(nan.to(tl.int32), axis=1) > 0, float('nan'), red)"]
    else:
        raise ValueError(f"no generated Triton kernel reduces by {red.op!r}")
    names[red.outputs[0]] = "red"
    lines += ["    offs = rows", "    mask = rmask"]
    for i, v in enumerate(body.inputs):
        if r_views[i] is not None:
            lines.append(f"    r_in{i} = _load_input(in{i}_ptr, 0, offs, mask, meta_r_ptr, "
                         f"{i + 1}, {rank_r}, {not r_views[i].is_contiguous})")
            names[v] = f"r_in{i}"
    for k, node in enumerate(epi):
        names[node.outputs[0]] = f"e{k}"
        expr = elementwise_expr(node.op, [names[v] for v in node.inputs], node, node.outputs[0],
                     "(BLOCK_M,)")
        lines.append(f"    e{k} = {expr}")
    for j, v in enumerate(body.outputs):
        lines.append(f"    tl.store(out{j}_ptr + rows, store_as({names[v]}, out{j}_ptr.dtype."
                     f"element_ty), mask=rmask)")
    params = ([f"out{j}_ptr" for j in range(len(body.outputs))]
              + [f"in{i}_ptr" for i in range(len(body.inputs))]
              + ["meta_s_ptr", "meta_r_ptr", "M", "K", "BLOCK_M: tl.constexpr",
                 "BLOCK_K: tl.constexpr"])
    text = "\n".join(lines)
    name = "fused_red_" + hashlib.sha1((",".join(params) + text).encode()).hexdigest()[:16]
    return f"\n\n@triton.jit\ndef {name}({', '.join(params)}):\n{text}\n", name

