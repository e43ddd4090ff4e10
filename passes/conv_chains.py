"""Convolution chains: a depthwise convolution region with the pointwise (1x1) convolution
region that makes its input and the one that reads its output, as ONE ``fused`` node of
kind ``conv_chain`` (MobileNet's inverted-residual block: expand 1x1 -> depthwise 3x3 ->
project 1x1, each with its bias, ReLU6 and residual add).

A backend can then run the chain band by band (rows of the last output with the rows each
link needs), the expanded intermediates never leaving the cache. The body holds the links
themselves (each an ``epilogue`` region of ``fuse``, or a bare ``conv``), in order, so a
backend without a lowering of its own for the kind runs them one after the other.

A link is a ``conv`` on 4-D float32/float64 NCHW values, followed inside its region only by
elementwise ops over its output shape (operands broadcast into it: bias, clip, a residual
add of a value from outside the chain); the region makes one value. Its convolution is

* pointwise: 1x1 kernel, stride 1, no padding, one group;
* depthwise: one input channel per group, as many groups as channels in and out (any
  stride, padding and dilation).

The chain is ``[pointwise] depthwise [pointwise]`` with at least two links; each
intermediate is read only by the next link's convolution, as its input (not a graph output,
not read by anything else). ``chain_links`` is the one rule: the pass forms exactly the
chains it accepts, and backends read a body back with it; a backend's own pass may keep
fewer (``form_conv_chains``' ``keep``: the LLVM backend's ``llvm_conv_chains``, only the
chains it runs band by band).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from irgraph import Graph, Node, Value
from irgraph.registry import ops_with

from .layer_regions import region_body, replace_regions
from .manager import register_pass

ELEMENTWISE = ops_with("elementwise")
CONSTANTS = ("full",)           # scalar constants ``fuse`` copies into a region
DTYPES = ("float32", "float64")


@dataclass
class Link:
    """One link of a chain: ``node`` (a ``conv``, or the ``fused`` epilogue region around
    ``conv``), ``tail`` (the region's nodes after the convolution), ``result`` (the value
    of ``node``'s region it makes: the conv's output for a bare conv), ``kind`` ("pointwise"
    or "depthwise"), ``binding`` (each value ``conv`` and ``tail`` read from outside the
    region -> the operand of ``node`` it stands for)."""
    node: Node
    conv: Node
    tail: list[Node]
    result: Value
    kind: str
    binding: dict[Value, Value]

    @property
    def out(self) -> Value:
        return self.node.outputs[0]

    @property
    def x(self) -> Value:
        """The operand of ``node`` the convolution reads as its input."""
        return self.binding[self.conv.inputs[0]]


def conv_kind(conv: Node) -> str | None:
    """"pointwise", "depthwise" or None (see the module docstring)."""
    if conv.op != "conv" or len(conv.inputs) != 2:
        return None
    x, w = conv.inputs
    y = conv.outputs[0]
    if (x.type.rank != 4 or w.type.rank != 4 or x.type.dtype not in DTYPES
            or w.type.dtype != x.type.dtype or y.type.dtype != x.type.dtype):
        return None
    a = conv.attrs
    C, O, G = x.shape[1], w.shape[0], a["groups"]
    if (G == 1 and tuple(w.shape[2:]) == (1, 1) and tuple(a["stride"]) == (1, 1)
            and not any(a["padding"])):
        return "pointwise"
    if G > 1 and G == C == O and w.shape[1] == 1:
        return "depthwise"
    return None


def _broadcasts(shape, into) -> bool:
    return len(shape) <= len(into) and all(d in (1, e) for d, e in zip(shape[::-1], into[::-1]))


def as_link(node: Node) -> Link | None:
    """``node`` as a link of a chain, or None."""
    if node.op == "conv":
        kind = conv_kind(node)
        return None if kind is None else Link(node, node, [], node.outputs[0], kind,
                                              {v: v for v in node.inputs})
    if node.op != "fused" or node.attrs["kind"] != "epilogue" or len(node.outputs) != 1:
        return None
    body = node.attrs["body"]
    if not body.nodes or len(body.outputs) != 1:
        return None
    conv, tail = body.nodes[0], body.nodes[1:]
    kind = conv_kind(conv)
    if kind is None:
        return None
    y = conv.outputs[0]
    shape = y.shape
    for n in tail:
        if len(n.outputs) != 1:
            return None
        if n.op in CONSTANTS and not n.inputs and n.outputs[0].type.size == 1:
            continue
        if n.op not in ELEMENTWISE or any(not _broadcasts(v.shape, shape)
                                          for v in list(n.inputs) + list(n.outputs)):
            return None
    result = body.outputs[0]
    if result.type != y.type or (tail and result is not tail[-1].outputs[0]):
        return None
    binding = dict(zip(body.inputs, node.inputs))
    if conv.inputs[0] not in binding or conv.inputs[1] not in binding:
        return None
    return Link(node, conv, tail, result, kind, binding)


def _reads_only_as_input(link: Link, v: Value) -> bool:
    """Does ``link`` read ``v`` only as its convolution's input?"""
    inner = [u for u, outer in link.binding.items() if outer is v]
    return len(inner) == 1 and inner[0] is link.conv.inputs[0] and not any(
        inner[0] in n.inputs for n in link.tail) and link.conv.inputs[1] is not inner[0] and \
        (link.node is link.conv or inner[0] not in link.node.attrs["body"].outputs)


def _joined(a: Link, b: Link, users: dict[Value, list[Node]], outputs: set[Value]) -> bool:
    """May ``a``'s result stay inside a chain as ``b``'s input?"""
    v = a.out
    return (v not in outputs and users.get(v, []) == [b.node] and b.x is v
            and _reads_only_as_input(b, v))


def chain_links(nodes: list[Node], users: dict[Value, list[Node]] | None = None,
                outputs: set[Value] | None = None) -> list[Link] | None:
    """``nodes`` (in order) as the links of a chain, or None where they are not one (the
    module docstring's rule). ``users`` and ``outputs``: of the graph holding them (by
    default the nodes' own: a body read back)."""
    links = [as_link(n) for n in nodes]
    if len(links) < 2 or any(k is None for k in links):
        return None
    kinds = [k.kind for k in links]
    if kinds not in (["pointwise", "depthwise"], ["depthwise", "pointwise"],
                     ["pointwise", "depthwise", "pointwise"]):
        return None
    if users is None:
        users = {}
        for n in nodes:
            for v in n.inputs:
                users.setdefault(v, []).append(n)
    outputs = outputs or set()
    if not all(_joined(a, b, users, outputs) for a, b in zip(links, links[1:])):
        return None
    return links


def body_links(body: Graph) -> list[Link] | None:
    """The links of a ``conv_chain`` body (its nodes, its one output the last link's), or
    None."""
    links = chain_links(list(body.nodes), body.users(), set())
    if links is None or list(body.outputs) != [links[-1].out]:
        return None
    return links


@register_pass("fuse_conv_chains")
def fuse_conv_chains(g: Graph) -> Graph:
    """Each chain of convolution regions ``[pointwise] depthwise [pointwise]`` (after
    ``fuse``; see the module docstring) as one ``fused`` node of kind ``conv_chain``.

    Before::

        %e = fused(%x, %w1, %b1) {kind="epilogue"}        # 1x1 expand, bias, ReLU6
        %d = fused(%e, %w2, %b2) {kind="epilogue"}        # depthwise 3x3, bias, ReLU6
        %y = fused(%d, %w3, %b3, %x) {kind="epilogue"}    # 1x1 project, bias, + %x

    After::

        %y = fused(%x, %w1, %b1, %w2, %b2, %w3, %b3) {kind="conv_chain", body=graph
                conv_chain_0(...) { the three regions above; return %y }}
    """
    return form_conv_chains(g)


def form_conv_chains(g: Graph, keep: Callable[[list[Link]], bool] | None = None) -> Graph:
    """``fuse_conv_chains``, forming only the chains whose links ``keep`` accepts (a
    backend's test of where running them as one pays)."""
    users, outputs = g.users(), set(g.outputs)
    taken: set[int] = set()
    regions = []
    for node in g.nodes:
        dw = as_link(node)
        if dw is None or dw.kind != "depthwise" or id(node) in taken:
            continue
        members = [node]
        pre = dw.x.node
        if pre is not None and id(pre) not in taken and \
                chain_links([pre, node], users, outputs) is not None:
            members.insert(0, pre)
        post = users.get(dw.out, [])
        if len(post) == 1 and id(post[0]) not in taken and \
                chain_links(members + post, users, outputs) is not None:
            members.append(post[0])
        if len(members) < 2 or (keep is not None and
                                not keep(chain_links(members, users, outputs))):
            continue
        taken.update(id(n) for n in members)
        inside = {v for n in members for v in n.outputs}
        operands = list(dict.fromkeys(v for n in members for v in n.inputs if v not in inside))
        result = members[-1].outputs[0]
        body = region_body(g, members, operands, [], [result], f"conv_chain_{len(regions)}")
        regions.append((members, operands, [result], body, "conv_chain"))
    return replace_regions(g, regions)
