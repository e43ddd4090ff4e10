"""The Triton backend's kernel table: op name -> lowering.

A lowering runs once, when a graph is compiled, and returns a *step*: a closure that takes
the node's input tensors (on the device) and returns its output tensors, launching Triton
kernels with metadata prepared in advance. An op with no entry here is a compile-time
``UnsupportedOpError`` naming the op and the node.

    @lowering("relu")
    def _(node, ctx):            # node: irgraph Node, ctx: LowerContext
        return lambda xs: [...]  # the step
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from irgraph import Node

Step = Callable[[list[torch.Tensor]], list[torch.Tensor]]
Lowering = Callable[[Node, "LowerContext"], Step]

KERNELS: dict[str, Lowering] = {}
# ops whose nodes the plan gathers into one multi-tensor launch: op -> lowering of a node
# list, whose step takes all the nodes' inputs concatenated and returns all their outputs
GroupLowering = Callable[[list[Node], "LowerContext"], Step]
GROUP_KERNELS: dict[str, GroupLowering] = {}


class UnsupportedOpError(NotImplementedError):
    """The graph uses an op (or a dtype of an op) the Triton backend has no kernel for."""


@dataclass
class LowerContext:
    """What a lowering may use: the device, compile options and a way to lower a body graph."""
    device: torch.device
    allow_tf32: bool = False
    lower_graph: Callable | None = None       # Graph -> callable(list[Tensor]) -> list[Tensor]
    notes: list[str] = field(default_factory=list)   # generated kernel sources, for source()
    # node -> output indices the lowering may write into its matching input's buffer (an
    # update whose argument is donated and read by nobody after it)
    inplace: dict[Node, set[int]] = field(default_factory=dict)

    @property
    def input_precision(self) -> str:
        return "tf32" if self.allow_tf32 else "ieee"


def lowering(*ops: str):
    """Register the decorated function as the lowering of each op in ``ops``."""
    def deco(fn: Lowering) -> Lowering:
        for op in ops:
            if op in KERNELS:
                raise ValueError(f"triton lowering for {op!r} registered twice")
            KERNELS[op] = fn
        return fn
    return deco


def group_lowering(*ops: str):
    """Register a lowering of a list of same-kind nodes (multi-tensor kernels); a single node
    of these ops is lowered as a group of one."""
    def deco(fn: GroupLowering) -> GroupLowering:
        for op in ops:
            GROUP_KERNELS[op] = fn
            lowering(op)(lambda node, ctx, fn=fn: fn([node], ctx))
        return fn
    return deco


def group_key(node: Node) -> tuple:
    """Nodes with equal keys can share one multi-tensor launch."""
    attrs = tuple(sorted((k, repr(v)) for k, v in node.attrs.items()))
    return (node.op, attrs, node.inputs[0].type.dtype)


def unsupported(node: Node, why: str) -> UnsupportedOpError:
    loc = f" (from {node.loc})" if node.loc else ""
    return UnsupportedOpError(f"triton backend: {why}\n  at node: {node!r}{loc}")


MAX_ELEMENTS = 2**31 - 1        # kernels index with 32-bit offsets within a launch


def lower_node(node: Node, ctx: LowerContext) -> Step:
    fn = KERNELS.get(node.op)
    if fn is None:
        raise unsupported(node, f"no Triton kernel for op {node.op!r}")
    for v in list(node.inputs) + list(node.outputs):
        if v.type.size > MAX_ELEMENTS:
            raise unsupported(node, f"%{v.name}: {v.type} has more than 2**31 - 1 elements "
                                    f"(32-bit indexing); split the tensor")
    return fn(node, ctx)
