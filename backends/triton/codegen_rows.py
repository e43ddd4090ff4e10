"""Code generation for ``fused`` regions of kind ``rows`` (passes/layer_regions.py: the
backward of a normalization, reading the forward region's exported intermediates): ONE
Triton kernel per region, a program taking ``ROWS`` rows of the region's full shape seen as
(R, N).

A row reduction (``sum``/``mean`` over the trailing axes, keepdims) has a level: one more
than the deepest reduction its operand depends on. The kernel sweeps each row once per level,
in blocks of ``BLOCK`` elements, recomputing the elementwise values over the row from the
operands and accumulating that level's reductions; the values per row follow each sweep; a
last sweep computes and stores the results over the row. No full-size temporary is written.

    rows(%d, %r, %gy) {%0 = mul(%gy, %r); %1 = mul(%0, %d); %2 = mean(%1) {keepdims};
                       %3 = mul(%d, %2); %4 = sub(%0, %3); return %4}
    ->  sweep 1: acc0 += d * (gy * r)          (level 1: %2 = sum(acc0) / N)
        sweep 2: store(gy * r - d * %2)
"""
from __future__ import annotations

import hashlib
from math import prod

import torch

from irgraph import Graph, Value
from irgraph.passes.layer_regions import row_class, row_member, trailing_axes

from .codegen import elementwise_expr, lift_constants, load_kernel
from .runtime import cdiv, empty, next_pow2, to_device

FLOATS = ("float32", "float64")
MAX_BLOCK = 1024
TILE = 4096


def _geometry(body: Graph) -> tuple[tuple[int, ...], int] | None:
    """(full shape, trailing axes) of a rows body: its reductions agree on them."""
    found = set()
    for n in body.nodes:
        if n.op in ("sum", "mean"):
            k = trailing_axes(n)
            if k is None:
                return None
            found.add((tuple(n.inputs[0].shape), k))
    return next(iter(found)) if len(found) == 1 else None


def supports_rows(body: Graph) -> bool:
    """Every node computes per row of one full shape (``row_member``), over float32/float64,
    with non-empty rows; every operand is full, one per row, along the row or a scalar."""
    body, _ = lift_constants(body)
    geo = _geometry(body)
    if geo is None:
        return False
    full, k = geo
    if prod(full) == 0:
        return False
    for n in body.nodes:
        if n.op != "full" and not row_member(n, full, k):
            return False
        if any(v.dtype not in FLOATS for v in n.outputs):
            return False
    return all(row_class(v.shape, full, k) is not None for v in body.inputs) and \
        all(row_class(v.shape, full, k) in ("full", "row") for v in body.outputs)


def _levels(body: Graph) -> dict[Value, int]:
    """Each value's level: the deepest row reduction it depends on."""
    level: dict[Value, int] = {v: 0 for v in body.inputs}
    for n in body.nodes:
        base = max((level[v] for v in n.inputs), default=0)
        level[n.outputs[0]] = base + 1 if n.op in ("sum", "mean") else base
    return level


class FusedRows:
    """A planned launch of the generated kernel of one rows region."""

    def __init__(self, body: Graph, device):
        body, consts = lift_constants(body)
        self.consts = [to_device(c, v.dtype, device)
                       for c, v in zip(consts, body.inputs[len(body.inputs) - len(consts):])]
        full, k = _geometry(body)
        self.full, r = full, len(full)
        self.n = prod(full[r - k:])
        self.rows = prod(full[:r - k])
        self.classes = [row_class(v.shape, full, k) for v in body.inputs]
        self.trail = full[r - k:]
        self.block = max(16, min(next_pow2(self.n), MAX_BLOCK))
        self.rows_per = max(1, min(64, TILE // self.block))
        self.source, name = render_rows(body, full, k, self.classes)
        self.kernel = load_kernel(self.source, name)
        self.out_types = [v.type for v in body.outputs]
        self.device = device

    def _operand(self, t: torch.Tensor, cls: str) -> torch.Tensor:
        if cls == "trail":
            k = len(self.trail)
            return t.reshape(t.shape[max(0, t.dim() - k):]).expand(self.trail).contiguous()
        return t.contiguous()

    def __call__(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        outs = [empty(t.shape, t.dtype, self.device) for t in self.out_types]
        if self.rows == 0:
            return outs
        ins = [self._operand(t, c) for t, c in zip(list(xs) + self.consts, self.classes)]
        self.kernel[(cdiv(self.rows, self.rows_per),)](
            *outs, *ins, self.rows, self.n, ROWS=self.rows_per, BLOCK=self.block,
            num_warps=4 if self.rows_per * self.block <= 2048 else 8)
        return outs


def render_rows(body: Graph, full, k: int, classes: list[str]) -> tuple[str, str]:
    """The kernel's source and name."""
    level = _levels(body)
    row_valued = {v for n in body.nodes for v in n.outputs
                  if row_class(v.shape, full, k) != "full"}
    row_valued |= {v for v, c in zip(body.inputs, classes) if c != "full"}
    reds = [n for n in body.nodes if n.op in ("sum", "mean")]
    depth = max(level[n.outputs[0]] for n in reds)
    acc_ty = {"float32": "tl.float32", "float64": "tl.float64"}
    names: dict[Value, str] = {}
    lines = ["    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)",
             "    live = (rows < R)[:, None]",
             "    first = rows.to(tl.int64)[:, None] * N",
             "    cols0 = tl.arange(0, BLOCK)"]
    for i, (v, c) in enumerate(zip(body.inputs, classes)):       # values per row: loaded once
        if c == "row":
            lines.append(f"    in{i} = tl.load(in{i}_ptr + rows[:, None], mask=live, other=0)")
            names[v] = f"in{i}"
        elif c == "scalar":
            lines.append(f"    in{i} = tl.load(in{i}_ptr)")
            names[v] = f"in{i}"
    done: set[Value] = set(names)

    def row_nodes(upto: int, indent: str):
        for j, n in enumerate(body.nodes):
            out = n.outputs[0]
            if out in done or out not in row_valued or level[out] > upto \
                    or n.op in ("sum", "mean"):
                continue
            if not all(v in done for v in n.inputs):
                continue
            tile = "(1, 1)" if n.op == "full" else "(ROWS, 1)"
            names[out] = f"w{j}"
            lines.append(f"{indent}w{j} = "
                         f"{elementwise_expr(n.op, [names[v] for v in n.inputs], n, out, tile)}")
            done.add(out)

    def sweep(upto: int) -> dict[Value, str]:
        """The loop over a row's blocks with every value over the row of level < ``upto``
        (the block's names, local to the loop)."""
        local = dict(names)
        lines.append("    for start in range(0, N, BLOCK):")
        lines.append("        cols = start + cols0")
        lines.append("        mask = live & (cols < N)[None, :]")
        lines.append("        offs = first + cols[None, :]")
        for i, (v, c) in enumerate(zip(body.inputs, classes)):
            if c == "full":
                lines.append(f"        f{i} = tl.load(in{i}_ptr + offs, mask=mask, other=0)")
                local[v] = f"f{i}"
            elif c == "trail":
                lines.append(f"        f{i} = tl.load(in{i}_ptr + cols[None, :], "
                             "mask=(cols < N)[None, :], other=0)")
                local[v] = f"f{i}"
        for j, n in enumerate(body.nodes):
            out = n.outputs[0]
            if out in row_valued or n.op in ("sum", "mean") or level[out] >= upto:
                continue
            local[out] = f"e{j}"
            expr = elementwise_expr(n.op, [local[v] for v in n.inputs], n, out,
                                    "(ROWS, BLOCK)")
            lines.append(f"        e{j} = {expr}")
        return local

    row_nodes(0, "    ")
    for lvl in range(1, depth + 1):
        now = [n for n in reds if level[n.outputs[0]] == lvl]
        for n in now:
            lines.append(f"    acc{body.nodes.index(n)} = tl.zeros((ROWS, BLOCK), "
                         f"{acc_ty[n.outputs[0].dtype]})")
        local = sweep(lvl)
        for n in now:
            j = body.nodes.index(n)
            lines.append(f"        acc{j} += tl.where(mask, {local[n.inputs[0]]}, 0)")
        for n in now:
            j = body.nodes.index(n)
            out = n.outputs[0]
            div = " / N" if n.op == "mean" else ""
            lines.append(f"    w{j} = (tl.sum(acc{j}, axis=1, keep_dims=True){div})"
                         f".to({acc_ty[out.dtype]})")
            names[out] = f"w{j}"
            done.add(out)
        row_nodes(lvl, "    ")
    full_outs = [(j, v) for j, v in enumerate(body.outputs) if v not in row_valued]
    if full_outs:
        local = sweep(depth + 1)
        for j, v in full_outs:
            lines.append(f"        tl.store(out{j}_ptr + offs, store_as(tl.broadcast_to("
                         f"{local[v]}, (ROWS, BLOCK)), out{j}_ptr.dtype.element_ty), mask=mask)")
    for j, v in enumerate(body.outputs):
        if v in row_valued:
            lines.append(f"    tl.store(out{j}_ptr + rows[:, None], store_as(tl.broadcast_to("
                         f"{names[v]}, (ROWS, 1)), out{j}_ptr.dtype.element_ty), mask=live)")
    params = ([f"out{j}_ptr" for j in range(len(body.outputs))]
              + [f"in{i}_ptr" for i in range(len(body.inputs))]
              + ["R", "N", "ROWS: tl.constexpr", "BLOCK: tl.constexpr"])
    text = "\n".join(lines)
    name = "fused_rows_" + hashlib.sha1((",".join(params) + text).encode()).hexdigest()[:16]
    return f"\n\n@triton.jit\ndef {name}({', '.join(params)}):\n{text}\n", name
