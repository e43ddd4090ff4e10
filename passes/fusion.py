"""Fusion: group ops into ``fused`` regions a backend compiles as one loop nest or kernel.

Regions (the ``kind`` attribute of the ``fused`` node):

* ``elementwise``: a connected group of elementwise ops with one output shape (the loop nest);
  operands may broadcast into it.
* ``reduction``: elementwise ops over a shape S, then one reduction of an S-shaped value
  (``sum``/``mean``/``max``/``min``), then elementwise ops over the reduced shape (the
  reduction's epilogue). A reduction of an operand starts such a region too.
* ``epilogue``: an anchor (``matmul``, ``conv``, transposed convolution) and the elementwise
  ops over its output shape that follow it (bias, activation, residual add).

Scalar ``full`` constants a region reads are copied into its body. A node joins a region
only if no path leaves the region and comes back (the regions stay a DAG), so the fused
graph is scheduled by a topological sort of regions. See docs/architecture.md for the format.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from irgraph import Graph, GraphRewriter, Node, Value
from irgraph.ops.recurrence import inline
from irgraph.registry import ops_with

from .analysis import priority_order
from .manager import register_pass
from .simplify import dce

ELEMENTWISE = ops_with("elementwise")
REDUCTIONS = ops_with("reduction")
ANCHORS = frozenset({"matmul", "conv", "conv_input_grad"})
# constants copied into a body rather than passed in (at most this many elements)
INLINE_CONST_LIMIT = 64


@dataclass
class Region:
    rid: int
    kind: str                       # elementwise | reduction | epilogue | single
    shape: tuple[int, ...]          # the shape elementwise members iterate over
    members: list[int] = field(default_factory=list)
    reduced: bool = False           # a reduction region past its reduction
    inputs: set[Value] = field(default_factory=set)


class _Grouper:
    """Assigns every node to a region, in topological order."""

    def __init__(self, g: Graph):
        self.g = g
        self.regions: list[Region] = []
        self.region_of: dict[Value, Region] = {}    # node outputs -> their region
        self.post: set[Value] = set()               # values made after a region's reduction

    def run(self) -> list[Region]:
        for i, node in enumerate(self.g.nodes):
            region = self._place(i, node)
            for v in node.inputs:
                if self.region_of.get(v) is not region:
                    region.inputs.add(v)
            for v in node.outputs:
                self.region_of[v] = region
        return self.regions

    def _new(self, kind: str, shape, i: int, reduced: bool = False) -> Region:
        r = Region(len(self.regions), kind, tuple(shape), [i], reduced)
        self.regions.append(r)
        return r

    def _place(self, i: int, node: Node) -> Region:
        out = node.outputs[0] if len(node.outputs) == 1 else None
        if out is None or node.op not in ELEMENTWISE | REDUCTIONS | ANCHORS:
            return self._new("single", (), i)
        if node.op in ANCHORS:
            return self._new("epilogue", out.shape, i)
        for r in self._candidates(node):
            if self._fits(r, node, out) and not self._cycle(r, node):
                r.members.append(i)
                if node.op in REDUCTIONS:
                    r.kind, r.reduced, r.shape = "reduction", True, out.shape
                if r.reduced:
                    self.post.add(out)
                return r
        if node.op in REDUCTIONS:
            self.post.add(out)
            return self._new("reduction", out.shape, i, reduced=True)
        return self._new("elementwise", out.shape, i)

    def _candidates(self, node: Node) -> list[Region]:
        seen, out = set(), []
        for v in node.inputs:
            r = self.region_of.get(v)
            if r is not None and r.kind != "single" and r.rid not in seen:
                seen.add(r.rid)
                out.append(r)
        return out

    def _fits(self, r: Region, node: Node, out: Value) -> bool:
        from_r = [v for v in node.inputs if self.region_of.get(v) is r]
        if node.op in REDUCTIONS:
            # one reduction per region, of a value of the region's loop shape
            return (r.kind == "elementwise" and len(from_r) == 1
                    and from_r[0].shape == r.shape)
        if out.shape != r.shape:
            return False
        # past the reduction, only reduced values can be read inside the region
        return not r.reduced or all(v in self.post for v in from_r)

    def _cycle(self, r: Region, node: Node) -> bool:
        """Would adding ``node`` to ``r`` close a loop r -> outside -> node?"""
        stack = [self.region_of[v] for v in node.inputs
                 if v in self.region_of and self.region_of[v] is not r]
        seen: set[int] = set()
        while stack:
            q = stack.pop()
            if q is r:
                return True
            if q.rid in seen:
                continue
            seen.add(q.rid)
            stack.extend(self.region_of[v] for v in q.inputs if v in self.region_of)
        return False


def _schedule(regions: list[Region], region_of: dict[Value, Region]) -> list[Region]:
    """Regions in a topological order, earliest original position first."""
    assert all(r.rid == i for i, r in enumerate(regions))
    deps = [{region_of[v].rid for v in r.inputs if v in region_of} for r in regions]
    return [regions[i] for i in priority_order([r.members[0] for r in regions], deps,
                                               "fusion regions")]


def _inlinable(v: Value) -> bool:
    node = v.node
    return node is not None and node.op in ("full", "constant") and \
        v.type.size <= INLINE_CONST_LIMIT


def _build_body(g: Graph, r: Region, used_outside: set[Value],
                name: str) -> tuple[Graph, list[Value], list[Value]]:
    """The region's body graph, its operands and its results (values of ``g``)."""
    body = Graph(name)
    env: dict[Value, Value] = {}
    operands: list[Value] = []
    nodes = [g.nodes[i] for i in r.members]
    for node in nodes:
        for v in node.inputs:
            if v in env:
                continue
            if _inlinable(v):
                (env[v],) = body.add_node(v.node.op, [], v.node.attrs, v.node.loc)
            else:
                env[v] = body.add_input(body.fresh_name(v.name), v.type)
                operands.append(v)
        outs = body.add_node(node.op, [env[v] for v in node.inputs], node.attrs, node.loc)
        env.update(zip(node.outputs, outs))
    results = [v for node in nodes for v in node.outputs if v in used_outside]
    body.set_outputs([env[v] for v in results])
    return body, operands, results


@register_pass("fuse")
def fuse(g: Graph) -> Graph:
    """Group elementwise chains, reductions with their epilogues, and matmul/convolution with
    their elementwise epilogues into ``fused`` nodes.

    Before::

        %0: f32[8,4] = matmul(%x, %w)
        %1: f32[8,4] = add(%0, %b)
        %2: f32[8,4] = relu(%1)
        return %2

    After::

        %3: f32[8,4] = fused(%x, %w, %b) {kind="epilogue", body=graph fused_0(%x: f32[8,16],
                %w: f32[16,4], %b: f32[4]) {
            %0: f32[8,4] = matmul(%x, %w)
            %1: f32[8,4] = add(%0, %b)
            %2: f32[8,4] = relu(%1)
            return %2
          }}
        return %3
    """
    grouper = _Grouper(g)
    regions = grouper.run()
    used_outside: set[Value] = set(g.outputs)
    for r in regions:
        used_outside.update(r.inputs)
    rw = GraphRewriter(g)
    count = 0
    for r in _schedule(regions, grouper.region_of):
        live = any(v in used_outside for i in r.members for v in g.nodes[i].outputs)
        if r.kind == "single" or len(r.members) < 2 or not live:
            for i in r.members:
                rw.copy_node(g.nodes[i])
            continue
        body, operands, results = _build_body(g, r, used_outside, f"fused_{count}")
        count += 1
        loc = g.nodes[r.members[-1]].loc
        outs = rw.dst.add_node("fused", [rw[v] for v in operands],
                               {"body": body, "kind": r.kind}, loc)
        for old, new in zip(results, outs):
            rw.replace(old, new)
    return dce(rw.finish())


@register_pass("fuse_scan_bodies")
def fuse_scan_bodies(g: Graph) -> Graph:
    """Fuse the step body of every scan (``fuse``, scans nested in bodies first), for a
    backend that lowers a scan as a loop over its body: fewer passes over memory and fewer
    thread barriers per step. A masked scan's mask is folded into its body
    (``ops.recurrence.step_body``): the scan becomes an unmasked one over one more sequence,
    the mask, whose slice ``mask_t`` the body reads after the other slices.

    Before::

        %hT: f32[2,4], %hs: f32[5,2,4] = scan(%h0, %xs, %W) {body=graph cell(...) {
            %0: f32[2,4] = matmul(%h, %W)
            %1: f32[2,4] = add(%0, %x)
            %2: f32[2,4] = tanh(%1)
            return %2, %2 }, num_carry=1, num_seq=1, ...}

    After::

        %hT: f32[2,4], %hs: f32[5,2,4] = scan(%h0, %xs, %W) {body=graph cell(...) {
            %3: f32[2,4] = fused(%h, %W, %x) {kind="epilogue", body=...}
            return %3, %3 }, num_carry=1, num_seq=1, ...}
    """
    from irgraph.ops.recurrence import step_body
    if not any(n.op == "scan" for n in g.nodes):
        return g
    rw = GraphRewriter(g)
    for node in g.nodes:
        if node.op != "scan":
            rw.copy_node(node)
            continue
        a = node.attrs
        body = fuse(fuse_scan_bodies(step_body(a)))
        rw.copy_node(node, dict(a, body=body, masked=False,
                                num_seq=a["num_seq"] + (1 if a["masked"] else 0)))
    return rw.finish()


def _update_ops() -> set[str]:
    from .train import UPDATE_RULES
    return {op for op, _, _ in UPDATE_RULES.values() if op}


def _unfused_for_updates(g: Graph) -> Graph:
    """``g`` with each elementwise ``fused`` region whose outputs one optimizer update each
    reads (a weight-decay chain the ``fuse`` pass grouped before the backend's passes ran)
    put back as its body's nodes, for ``update_regions`` to take into the update's own
    loop."""
    updates = _update_ops()
    users = g.users()
    outputs = set(g.outputs)

    def feeds_updates(node: Node) -> bool:       # one update reads each of its outputs
        return (node.op == "fused" and node.attrs.get("kind") == "elementwise"
                and all(v not in outputs and len(users[v]) == 1
                        and users[v][0].op in updates for v in node.outputs))
    if not any(feeds_updates(n) for n in g.nodes):
        return g
    rw = GraphRewriter(g)
    for node in g.nodes:
        if not feeds_updates(node):
            rw.copy_node(node)
            continue
        outs = inline(rw.dst, node.attrs["body"], [rw[v] for v in node.inputs], node.loc)
        for old, new in zip(node.outputs, outs):
            rw.replace(old, new)
    return rw.finish()


def update_regions(g: Graph) -> dict[int, list[int]]:
    """``fuse_updates``' regions: each optimizer update's index -> its members in order
    (the update and the elementwise nodes making its gradient only for it), for updates
    with at least one such node."""
    updates = _update_ops()
    users = g.users()
    outputs = set(g.outputs)
    index = {n: i for i, n in enumerate(g.nodes)}
    regions: dict[int, list[int]] = {}
    taken: set[int] = set()
    for i, node in enumerate(g.nodes):
        if node.op not in updates:
            continue
        shape = node.inputs[0].shape
        members, inside = {i}, {node}
        todo = [v for v in node.inputs if v.node is not None]
        while todo:
            v = todo.pop()
            p = v.node
            if (p in inside or p.op not in ELEMENTWISE or len(p.outputs) != 1
                    or index[p] in taken or v.shape != shape or v in outputs
                    or any(u not in inside for u in users[v])
                    or any(x.shape != shape and x.type.rank != 0 for x in p.inputs)):
                continue
            members.add(index[p])
            inside.add(p)
            todo.extend(x for x in p.inputs if x.node is not None)
        if len(members) > 1:
            regions[i] = sorted(members)
            taken.update(members)
    return regions


@register_pass("fuse_updates")
def fuse_updates(g: Graph) -> Graph:
    """Each optimizer update (``passes.train.UPDATE_RULES``' ops) with the elementwise nodes
    that make its gradient only for it (L2 weight decay ``g + wd p``, a gradient scale) as
    ONE ``fused`` region of kind ``elementwise``: one pass over the parameter and its state
    instead of one more per node, for a backend that runs such a region as one loop nest
    (each element's operands loaded before its results are stored, so the update still
    writes the donated parameter in place). A node joins when every reader of its output
    is already in the region and each of its operands has the parameter's shape or rank 0.

    Before::

        %0: f32[4,3] = mul(%wd, %w)
        %1: f32[4,3] = add(%g, %0)
        %2: f32[4,3] = sgd_update(%w, %1, %lr)

    After::

        %2: f32[4,3] = fused(%wd, %w, %g, %lr) {kind="elementwise", body=graph fused_u0(...) {
            %0 = mul(%wd, %w)   %1 = add(%g, %0)   %2 = sgd_update(%w, %1, %lr) }}
    """
    g = _unfused_for_updates(g)
    regions = update_regions(g)
    taken = {i for members in regions.values() for i in members}
    if not regions:
        return g
    rw = GraphRewriter(g)
    for i, node in enumerate(g.nodes):
        if i in taken and i not in regions:
            continue                             # emitted with its update
        if i not in regions:
            rw.copy_node(node)
            continue
        r = Region(len(regions), "elementwise", node.inputs[0].shape, regions[i])
        body, operands, results = _build_body(g, r, set(node.outputs), f"fused_u{i}")
        outs = rw.dst.add_node("fused", [rw[v] for v in operands],
                               {"body": body, "kind": "elementwise"}, node.loc)
        for old, new in zip(results, outs):
            rw.replace(old, new)
    return rw.finish()
