"""Layer regions: attention and normalization compositions as ``fused`` nodes a backend can
run with one dedicated kernel.

The frontend writes ``F.scaled_dot_product_attention`` and the layer, group and instance
norms as compositions of core ops (``frontend/functional_norm.py``). Two patterns become
``fused`` regions whose body is exactly the matched nodes (so the reference, which
interprets the body, is unchanged):

* ``kind="attention"``: ``matmul(softmax(where(keep, add(matmul(mul(q, scale),
  transpose(k)), additive), -inf)), v)``, the ``mul``, ``add`` and ``where`` optional;
  ``keep`` made of ``ge(iota(axis 0), iota(axis 1))`` is the causal mask (copied into the
  body). q, k and v share their batch dims; every intermediate has no other user.
* ``kind="normalize"``: ``mean`` over trailing axes (keepdims), ``sub``, ``mul(d, d)``,
  ``mean``, ``add(eps)``, ``rsqrt``, ``mul``, then optionally ``mul(weight)`` and
  ``add(bias)`` of the normalized shape. Intermediates read outside (a training graph's
  backward reads ``d`` and the reciprocal deviation) become further results of the region.
  Without the centering (``mul(x, x)``, ``mean``, ``add(eps)``, ``rsqrt``, ``mul(x, r)``,
  then the affine) it is an RMS norm (``centered=False``: no ``mean`` or ``d`` role).

``attention_spec(body)`` and ``normalize_spec(body)`` read a region's body back for the
backends; both patterns are matched by the same functions on the whole graph and on a body.
Backends call ``layer_regions`` when they compile; the passes ``fuse_attention`` and
``fuse_norm`` run them in a pipeline.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

from irgraph import Graph, GraphRewriter, Node, Value
from irgraph.registry import ops_with

from .analysis import priority_order
from .manager import register_pass
from .simplify import dce

FLOATS = ("float32", "float64", "float16", "bfloat16")


def _scalar_full(v: Value) -> float | None:
    """The value of a scalar ``full`` constant, else None."""
    n = v.node
    if n is None or n.op != "full" or v.type.size != 1:
        return None
    return float(n.attrs["value"])


def _is_causal(keep: Value) -> bool:
    """``ge(iota(axis=0), iota(axis=1))`` over (L, S): key j visible to query i iff j <= i."""
    n = keep.node
    if n is None or n.op != "ge" or keep.type.rank != 2:
        return False
    a, b = (x.node for x in n.inputs)
    return (a is not None and b is not None and a.op == "iota" == b.op
            and a.attrs["axis"] == 0 and b.attrs["axis"] == 1
            and tuple(a.attrs["shape"]) == tuple(b.attrs["shape"]) == keep.type.shape)


@dataclass
class AttentionSpec:
    """A matched attention: operands, options and the nodes it covers (in graph order)."""
    q: Value
    k: Value
    v: Value
    out: Value
    scale: float
    keep: Value | None = None          # bool, True = attend (None when causal)
    additive: Value | None = None
    causal: bool = False
    members: list[Node] = field(default_factory=list)
    constants: list[Value] = field(default_factory=list)    # copied, not moved

    @property
    def operands(self) -> list[Value]:
        return [x for x in (self.q, self.k, self.v, self.keep, self.additive) if x is not None]


def match_attention(sm: Node, users: dict[Value, list[Node]], outputs: set[Value]
                    ) -> AttentionSpec | None:
    """The attention whose softmax is ``sm``, or None."""
    def only_use(v: Value, node: Node) -> bool:
        return v not in outputs and users.get(v, []) == [node]

    x = sm.outputs[0]
    if sm.op != "softmax" or x.type.dtype not in FLOATS or x.type.rank < 2 \
            or sm.attrs["axis"] % x.type.rank != x.type.rank - 1:
        return None
    mm2 = users.get(x, [])
    if len(mm2) != 1 or mm2[0].op != "matmul" or mm2[0].inputs[0] is not x \
            or mm2[0].inputs[1] is x:
        return None
    mm2 = mm2[0]
    members, constants = [sm, mm2], []
    keep = additive = None
    causal = False
    s = sm.inputs[0]
    if not only_use(s, sm):
        return None
    n = s.node
    if n is not None and n.op == "where" and _scalar_full(n.inputs[2]) == float("-inf") \
            and n.inputs[0].type.dtype == "bool" and n.inputs[1].type == s.type:
        keep, s = n.inputs[0], n.inputs[1]
        members.append(n)
        constants.append(n.inputs[2])
        if not only_use(s, n):
            return None
        if _is_causal(keep):
            causal = True
            constants.append(keep)
            keep = None
        n = s.node
    if n is not None and n.op == "add":
        a, b = n.inputs
        mm = a if a.node is not None and a.node.op == "matmul" and a.type == s.type else b
        other = b if mm is a else a
        if mm.node is None or mm.node.op != "matmul" or mm.type != s.type \
                or other.type.dtype != s.type.dtype or mm is other:
            return None
        additive, s = other, mm
        members.append(n)
        if not only_use(s, n):
            return None
        n = s.node
    if n is None or n.op != "matmul":
        return None
    mm1 = n
    members.append(mm1)
    qs, kt = mm1.inputs
    t = kt.node
    if t is None or t.op != "transpose" or not only_use(kt, mm1) or qs is kt:
        return None
    r = kt.type.rank
    if tuple(t.attrs["perm"]) != tuple(range(r - 2)) + (r - 1, r - 2):
        return None
    members.append(t)
    k = t.inputs[0]
    q, scale = qs, 1.0
    if qs.node is not None and qs.node.op == "mul" and only_use(qs, mm1):
        a, b = qs.node.inputs
        for lhs, rhs in ((a, b), (b, a)):
            c = _scalar_full(rhs)
            if c is not None and lhs.type == qs.type:
                q, scale = lhs, c
                members.append(qs.node)
                constants.append(rhs)
                break
    v = mm2.inputs[1]
    batch = q.type.shape[:-2]
    if q.type.rank < 2 or not (k.type.shape[:-2] == v.type.shape[:-2] == batch) \
            or len({q.type.dtype, k.type.dtype, v.type.dtype}) != 1:
        return None
    for m in (keep, additive):
        if m is not None and m.type.rank > x.type.rank:
            return None
    spec = AttentionSpec(q, k, v, mm2.outputs[0], scale, keep, additive, causal)
    spec.constants = constants
    spec.members = members
    return spec


@dataclass
class NormalizeSpec:
    """A matched normalization over the trailing ``axes`` of ``x``."""
    x: Value
    axes: int                                   # how many trailing axes
    eps: float
    weight: Value | None = None
    bias: Value | None = None
    centered: bool = True                       # False: an RMS norm (x not less its mean)
    roles: dict[str, Value] = field(default_factory=dict)   # mean, d, sq, var, vare, r, y...
    members: list[Node] = field(default_factory=list)
    constants: list[Value] = field(default_factory=list)

    @property
    def operands(self) -> list[Value]:
        return [x for x in (self.x, self.weight, self.bias) if x is not None]

    @property
    def out(self) -> Value:
        return self.roles.get("yb", self.roles.get("yw", self.roles["y"]))


def trailing_axes(node: Node) -> int | None:
    """How many trailing axes a keepdims ``mean`` or ``sum`` reduces, or None."""
    if node.op not in ("mean", "sum") or not node.attrs.get("keepdims"):
        return None
    r = node.inputs[0].type.rank
    axis = node.attrs["axis"]
    axes = list(range(r)) if axis is None else sorted({a % r for a in axis}) if r else []
    k = len(axes)
    return k if k and axes == list(range(r - k, r)) else None


def reduced_axes(node: Node) -> tuple[int, ...] | None:
    """The axes (sorted) a keepdims ``mean`` or ``sum`` reduces, or None."""
    if node.op not in ("mean", "sum") or not node.attrs.get("keepdims"):
        return None
    r = node.inputs[0].type.rank
    axis = node.attrs["axis"]
    axes = tuple(range(r)) if axis is None else tuple(sorted({a % r for a in axis})) if r \
        else ()
    return axes or None


def _axes(full: tuple[int, ...], k) -> tuple[int, ...]:
    """A region's reduced axes: ``k`` itself, or (an int) the last ``k`` axes of ``full``."""
    return tuple(range(len(full) - k, len(full))) if isinstance(k, int) else tuple(k)


def row_layout(full: tuple[int, ...], k) -> tuple[int, int, int] | None:
    """(outer, rows, inner) of a region over ``full`` reducing the axes ``k`` (an int: the
    last k), its kept axes one block: element e = (o, i) of row r sits at flat offset
    (o * rows + r) * inner + i. None when the kept axes are not contiguous."""
    red = _axes(full, k)
    kept = [i for i in range(len(full)) if i not in red]
    if not kept:
        return 1, 1, prod(full)
    lo, hi = kept[0], kept[-1] + 1
    if kept != list(range(lo, hi)):
        return None
    return prod(full[:lo]), prod(full[lo:hi]), prod(full[hi:])


def match_normalize(m: Node, users: dict[Value, list[Node]]) -> NormalizeSpec | None:
    """The normalization whose first ``mean`` is ``m`` (of x, or of ``x * x`` in an RMS
    norm), or None."""
    k = trailing_axes(m) if m.op == "mean" else None
    x = m.inputs[0]
    if k is None or x.type.dtype not in FLOATS:
        return None
    mean = m.outputs[0]

    def one(v: Value, op: str, pred=lambda n: True) -> Node | None:
        hits = {id(n): n for n in users.get(v, []) if n.op == op and pred(n)}
        return next(iter(hits.values())) if len(hits) == 1 else None

    sub = one(mean, "sub", lambda n: list(n.inputs) == [x, mean])
    p = x.node
    if sub is None and p is not None and p.op == "mul" and p.inputs[0] is p.inputs[1] \
            and p.inputs[0].type == x.type:
        sq, var, sub, d = p, m, None, p.inputs[0]           # an RMS norm of d
    elif sub is None:
        return None
    else:
        d = sub.outputs[0]
        sq = one(d, "mul", lambda n: n.inputs[0] is d and n.inputs[1] is d)
        if sq is None:
            return None
        var = one(sq.outputs[0], "mean", lambda n: trailing_axes(n) == k)
        if var is None:
            return None
    add = one(var.outputs[0], "add", lambda n: _scalar_full(n.inputs[1]) is not None)
    if add is None:
        return None
    rs = one(add.outputs[0], "rsqrt")
    if rs is None:
        return None
    r = rs.outputs[0]
    y = one(r, "mul", lambda n: set(n.inputs) == {d, r})
    if y is None or y.outputs[0].type != d.type:
        return None
    if sub is None:
        spec = NormalizeSpec(d, k, _scalar_full(add.inputs[1]), centered=False)
        spec.roles = {"sq": x, "var": mean, "vare": add.outputs[0], "r": r,
                      "y": y.outputs[0]}
        spec.members = [sq, m, add, rs, y]
        x = d
    else:
        spec = NormalizeSpec(x, k, _scalar_full(add.inputs[1]))
        spec.roles = {"mean": mean, "d": d, "sq": sq.outputs[0], "var": var.outputs[0],
                      "vare": add.outputs[0], "r": r, "y": y.outputs[0]}
        spec.members = [m, sub, sq, var, add, rs, y]
    spec.constants = [add.inputs[1]]
    trail = x.type.shape[x.type.rank - k:]
    cur = y.outputs[0]

    def affine(n: Node, op: str, cur: Value) -> Value | None:
        """The weight or bias ``n`` applies to ``cur``, or None."""
        if n.op != op or cur not in n.inputs:
            return None
        other = n.inputs[1] if n.inputs[0] is cur else n.inputs[0]
        if other is cur or other.type.shape != trail or other.type.dtype != x.type.dtype \
                or n.outputs[0].type != x.type:
            return None
        return other

    # (other readers of y, as a training graph's weight gradient, make it a further result)
    for op, role in (("mul", "yw"), ("add", "yb")):
        hits = [n for n in users.get(cur, []) if affine(n, op, cur) is not None]
        if len(hits) != 1:
            break
        n = hits[0]
        other = affine(n, op, cur)
        if op == "mul":
            spec.weight = other
        else:
            spec.bias = other
        spec.roles[role] = n.outputs[0]
        spec.members.append(n)
        cur = n.outputs[0]
    return spec


def _copy_constant(body: Graph, v: Value, env: dict[Value, Value]) -> Value:
    """Copy the constant ``v`` (full, iota and ops of them) into ``body``."""
    if v in env:
        return env[v]
    node = v.node
    ins = [_copy_constant(body, x, env) for x in node.inputs]
    outs = body.add_node(node.op, ins, node.attrs, node.loc)
    env.update(zip(node.outputs, outs))
    return env[v]


def region_body(g: Graph, members: list[Node], operands: list[Value], constants: list[Value],
                results: list[Value], name: str) -> Graph:
    """A region's body: ``operands`` as its inputs, ``constants`` copied in, ``members`` in
    graph order, ``results`` as its outputs."""
    body = Graph(name)
    env: dict[Value, Value] = {}
    for v in operands:
        env[v] = body.add_input(body.fresh_name(v.name), v.type)
    for c in constants:
        _copy_constant(body, c, env)
    order = {id(n): i for i, n in enumerate(g.nodes)}
    for node in sorted(members, key=lambda n: order[id(n)]):
        outs = body.add_node(node.op, [env[v] for v in node.inputs], node.attrs, node.loc)
        env.update(zip(node.outputs, outs))
    body.set_outputs([env[v] for v in results])
    return body


def replace_regions(g: Graph,
                    regions: list[tuple[list[Node], list[Value], list[Value], Graph, str]]
                    ) -> Graph:
    """Each region's fused node replaces its members at the last member's place."""
    if not regions:
        return g
    last = {id(max(members, key=lambda n: g.nodes.index(n))): r
            for r in regions for members in [r[0]]}
    inside = {id(n) for r in regions for n in r[0]}
    rw = GraphRewriter(g)
    for node in g.nodes:
        if id(node) in last:
            members, operands, results, body, kind = last[id(node)]
            outs = rw.dst.add_node("fused", [rw[v] for v in operands],
                                   {"body": body, "kind": kind}, node.loc)
            for old, new in zip(results, outs):
                rw.replace(old, new)
        elif id(node) not in inside:
            rw.copy_node(node)
    return dce(rw.finish())


@register_pass("fuse_attention")
def fuse_attention(g: Graph) -> Graph:
    """Attention compositions (softmax(q k^T * scale + mask) v) as ``fused`` nodes of kind
    ``attention``."""
    users, outputs = g.users(), set(g.outputs)
    regions, taken = [], set()
    for node in g.nodes:
        if node.op != "softmax":
            continue
        spec = match_attention(node, users, outputs)
        if spec is None or any(id(n) in taken for n in spec.members):
            continue
        taken.update(id(n) for n in spec.members)
        body = region_body(g, spec.members, spec.operands, spec.constants, [spec.out],
                           f"attention_{len(regions)}")
        regions.append((spec.members, spec.operands, [spec.out], body, "attention"))
    return replace_regions(g, regions)


@register_pass("fuse_norm")
def fuse_norm(g: Graph) -> Graph:
    """Normalizations over trailing axes (layer, group, instance norm) as ``fused`` nodes of
    kind ``normalize``; intermediates read elsewhere become further results."""
    users, outputs = g.users(), set(g.outputs)
    pos = {id(n): i for i, n in enumerate(g.nodes)}
    regions, taken = [], set()
    for node in g.nodes:
        spec = match_normalize(node, users) if node.op == "mean" else None
        if spec is None or any(id(n) in taken for n in spec.members):
            continue
        member_ids = {id(n) for n in spec.members}
        end = max(pos[id(n)] for n in spec.members)
        results, ok = [spec.out], True
        for role, v in spec.roles.items():
            outside = [n for n in users.get(v, []) if id(n) not in member_ids]
            if v is spec.out:
                continue
            if outside or v in outputs:
                # a read elsewhere must come after the region's place (the last member)
                ok = ok and all(pos[id(n)] > end for n in outside)
                results.append(v)
        if not ok:
            continue
        taken.update(member_ids)
        body = region_body(g, spec.members, spec.operands, spec.constants, results,
                           f"normalize_{len(regions)}")
        regions.append((spec.members, spec.operands, results, body, "normalize"))
    return replace_regions(g, regions)


def layer_regions(g: Graph) -> Graph:
    """Every pattern (what the native backends run when they compile)."""
    return fuse_norm_grad(fuse_norm(fuse_attention(g)))


def attention_spec(body: Graph) -> AttentionSpec | None:
    """A ``fused`` attention body read back: its operands are body inputs."""
    sm = [n for n in body.nodes if n.op == "softmax"]
    if len(sm) != 1 or len(body.outputs) != 1:
        return None
    spec = match_attention(sm[0], body.users(), set())
    if spec is None or spec.out is not body.outputs[0] \
            or not all(v in body.inputs for v in spec.operands):
        return None
    return spec


def normalize_spec(body: Graph) -> NormalizeSpec | None:
    """A ``fused`` normalize body read back (operands are body inputs)."""
    ms = [n for n in body.nodes if n.op == "mean"]
    if not ms:
        return None
    spec = match_normalize(ms[0], body.users())
    if spec is None or not all(v in body.inputs for v in spec.operands):
        return None
    roles = set(spec.roles.values())
    if any(v not in roles for v in body.outputs):
        return None
    return spec


# ---------------------------------------------------------------- row regions
def row_class(shape: tuple[int, ...], full: tuple[int, ...], k) -> str | None:
    """How a value of ``shape`` sits in a row region over ``full`` whose rows' elements are
    its axes ``k`` (an int: the last k; a tuple: those axes, as batch norm's all but the
    channel): ``full``, ``row`` (one per row, keepdims), ``trail`` (broadcast over the
    rows: a weight), ``scalar``, or None."""
    r, red = len(full), _axes(full, k)
    row = tuple(1 if i in red else n for i, n in enumerate(full))
    if tuple(shape) == tuple(full):
        return "full"
    if tuple(shape) == row:
        return "row"
    if len(shape) > r:
        return None
    padded = (1,) * (r - len(shape)) + tuple(shape)
    if all(d == 1 for d in padded):
        return "scalar"
    if padded == row:
        return "row"
    if all(d == 1 or i in red and d == n for i, (d, n) in enumerate(zip(padded, full))):
        return "trail"
    return None


_ROW_OPS = ops_with("elementwise") - ops_with("random") - ops_with("effect")


def row_member(node: Node, full: tuple[int, ...], k) -> bool:
    """Whether ``node`` computes per row of a region over ``full``: an elementwise op with a
    full or row result (a row result reads no full value), a row's ``sum``/``mean`` (keepdims,
    over the axes ``k``, as ``row_class``) of a full value, or a row broadcast to full."""
    if len(node.outputs) != 1:
        return False
    out = row_class(node.outputs[0].shape, full, k)
    ins = [row_class(v.shape, full, k) for v in node.inputs]
    if node.op in ("sum", "mean"):
        return out == "row" and ins == ["full"] and reduced_axes(node) == _axes(full, k)
    if node.op not in _ROW_OPS or out not in ("full", "row") or None in ins:
        return False
    if node.op == "broadcast_to":
        return ins == ["row"] and out == "full"
    return out == "full" or "full" not in ins


def _reaches(g: Graph, members: set[int], users: dict[Value, list[Node]]) -> bool:
    """Whether a path leaves the node set ``members`` and comes back (ids of nodes)."""
    stack = [u for n in g.nodes if id(n) in members for v in n.outputs
             for u in users.get(v, []) if id(u) not in members]
    seen: set[int] = set()
    while stack:
        n = stack.pop()
        if id(n) in members:
            return True
        if id(n) in seen:
            continue
        seen.add(id(n))
        stack.extend(u for v in n.outputs for u in users.get(v, []))
    return False


def _reorder(g: Graph, groups: list[list[Node]]) -> list[list[Node]]:
    """Units (each group, every other node alone) in a topological order close to the
    original: a group takes its last member's place, a node reading a group's result waits
    for it."""
    pos = {id(n): i for i, n in enumerate(g.nodes)}
    unit_of: dict[int, int] = {}
    units: list[list[Node]] = []
    for grp in groups:
        for n in grp:
            unit_of[id(n)] = len(units)
        units.append(sorted(grp, key=lambda n: pos[id(n)]))
    for n in g.nodes:
        if id(n) not in unit_of:
            unit_of[id(n)] = len(units)
            units.append([n])
    producer = {v: unit_of[id(n)] for n in g.nodes for v in n.outputs}
    deps = [set() for _ in units]
    for u, members in enumerate(units):
        for n in members:
            deps[u].update(producer[v] for v in n.inputs if v in producer)
        deps[u].discard(u)
    key = [max(pos[id(n)] for n in members) for members in units]
    return [units[u] for u in priority_order(key, deps, "row regions")]


def row_levels(body: Graph) -> dict[Value, int]:
    """Each value's level in a rows body: the deepest chain of row reductions it depends on
    (a backend sweeps each row once per level, then once for the results)."""
    level: dict[Value, int] = {v: 0 for v in body.inputs}
    for n in body.nodes:
        top = max((level[v] for v in n.inputs), default=0)
        for v in n.outputs:
            level[v] = top + 1 if n.op in ("sum", "mean") else top
    return level


_MAX_TERMS = 16


def _flatten_once(body: Graph, full: tuple[int, ...], k: int) -> Graph | None:
    """``body`` with each row reduction of level L >= 2 whose operand is linear in the row
    values, its terms full values of level <= L - 2 (a normalization's backward: ``sum(g r +
    c d)`` with ``c`` a row value of level 1) written as ``sum(g r) + c sum(d)``: one level (one
    sweep) fewer, the same terms summed (so the same error bound). A square of a row-dependent
    value is not expanded (its moments would cancel). None when no reduction changes."""
    level = row_levels(body)
    rw = GraphRewriter(body)
    changed = False

    def lin(v: Value, target: int):
        """v as [(sign, coefficients, term)]: coefficients per row (new values), the term a
        full value of level <= target (new) or None (one); None if v is not of that form."""
        cls = row_class(v.shape, full, k)
        if cls in ("row", "scalar"):
            return [(1.0, (rw[v],), None)]
        if level[v] <= target:
            return [(1.0, (), rw[v])]
        n = v.node
        if n is None:
            return None
        if n.op == "broadcast_to":
            return lin(n.inputs[0], target)
        if n.op == "neg":
            inner = lin(n.inputs[0], target)
            return None if inner is None else [(-sg, c, t) for sg, c, t in inner]
        if n.op in ("add", "sub"):
            a, b = lin(n.inputs[0], target), lin(n.inputs[1], target)
            if a is None or b is None:
                return None
            sign = 1.0 if n.op == "add" else -1.0
            out = a + [(sign * sg, c, t) for sg, c, t in b]
        elif n.op == "mul":
            a, b = lin(n.inputs[0], target), lin(n.inputs[1], target)
            if a is None or b is None or len(a) * len(b) > _MAX_TERMS:
                return None
            if any(c for _, c, _ in a) and any(c for _, c, _ in b):
                # a product of two row-dependent parts (sum((x - m)^2) -> sum(x^2) - ...):
                # expanding it would trade the exact deviations for cancelling moments
                return None
            out = []
            for sa, ca, ta in a:
                for sb, cb, tb in b:
                    t = ta if tb is None else tb if ta is None else \
                        rw.emit("mul", ta, tb, loc=n.loc)
                    out.append((sa * sb, ca + cb, t))
        else:
            return None
        return out if len(out) <= _MAX_TERMS else None

    for node in body.nodes:
        lvl = level[node.outputs[0]]
        terms = lin(node.inputs[0], lvl - 2) if node.op in ("sum", "mean") and lvl >= 2 \
            else None
        if terms is None:
            rw.copy_node(node)
            continue
        changed = True
        out_t = node.outputs[0].type
        merged: dict[tuple, list] = {}             # equal products: their signs add up
        for sign, coefs, t in terms:
            key = (tuple(sorted(id(c) for c in coefs)), id(t))
            merged.setdefault(key, [0.0, coefs, t])[0] += sign
        reduced: dict[int, Value] = {}
        total = None
        for sign, coefs, t in merged.values():
            if sign == 0:
                continue
            if id(t) not in reduced:
                reduced[id(t)] = (rw.dst.add_node(node.op, [t], node.attrs, node.loc)[0]
                                  if t is not None else
                                  rw.emit("full", shape=(), value=float(
                                      node.inputs[0].type.size // out_t.size
                                      if node.op == "sum" else 1), dtype=out_t.dtype))
            part = reduced[id(t)]
            for c in coefs:
                part = rw.emit("mul", c, part, loc=node.loc)
            if abs(sign) != 1:
                part = rw.emit("mul", part, rw.emit("full", shape=(), value=abs(sign),
                                                    dtype=out_t.dtype), loc=node.loc)
                sign = 1.0 if sign > 0 else -1.0
            if total is None:
                total = part if sign > 0 else rw.emit("neg", part, loc=node.loc)
            else:
                total = rw.emit("add" if sign > 0 else "sub", total, part, loc=node.loc)
        if total is None:                          # the products cancel
            total = rw.emit("full", shape=out_t.shape, value=0.0, dtype=out_t.dtype)
        if total.type.shape != out_t.shape:
            total = rw.emit("broadcast_to", total, shape=out_t.shape)
        rw.replace(node.outputs[0], total)
    return dce(rw.finish()) if changed else None


def flatten_row_sums(body: Graph) -> Graph:
    """A rows body with as few levels of row reductions as sums of products allow (see
    ``_flatten_once``): a layer norm's backward in two sweeps per row (its two row sums in
    one, then the result) instead of three. Rounding differs from the body's order only by
    that distribution."""
    reds = [n for n in body.nodes if n.op in ("sum", "mean")]
    if not reds or reduced_axes(reds[0]) is None:
        return body
    full, k = tuple(reds[0].inputs[0].shape), reduced_axes(reds[0])
    for _ in range(8):
        flat = _flatten_once(body, full, k)
        if flat is None:
            break
        body = flat
    return body


# a per-channel region's elements run in contiguous stretches of at least this many (the
# trailing axes after the channel): shorter ones (a batch norm of (N, C) features) stay
# node by node
CHANNEL_RUN = 8


def _grow_rows(stack: list[Node], members: dict[int, Node], users: dict[Value, list[Node]],
               full: tuple[int, ...], red: tuple[int, ...], taken: set[int]) -> None:
    """Add to ``members`` the nodes of ``stack`` and, transitively, their users that compute
    per row over ``red`` of ``full`` (``row_member``) and no other region has taken."""
    while stack:
        n = stack.pop()
        if id(n) in members or id(n) in taken or not row_member(n, full, red):
            continue
        members[id(n)] = n
        stack.extend(u for v in n.outputs for u in users.get(v, []))


def _grow_channels(seed: Node, users: dict[Value, list[Node]], full: tuple[int, ...],
                   red: tuple[int, ...], taken: set[int]) -> dict[int, Node]:
    """The region of per-row nodes around a statistic over the axes ``red`` (a batch norm's
    backward recomputing its mean and deviation): grown along results, and into the
    producers of its operands whose full-size results nothing outside reads (the incoming
    gradient's own elementwise steps), so that no full-size temporary is left between the
    region and what it reads."""
    members: dict[int, Node] = {}
    stack = [seed]
    while stack:
        _grow_rows(stack, members, users, full, red, taken)
        for n in list(members.values()):
            for v in n.inputs:
                p = v.node
                if p is None or id(p) in members or id(p) in taken or len(p.outputs) != 1 \
                        or not row_member(p, full, red):
                    continue
                out = p.outputs[0]
                if row_class(out.shape, full, red) == "row" or all(
                        id(u) in members for u in users.get(out, [])):
                    stack.append(p)
    return members


@register_pass("fuse_norm_grad")
def fuse_norm_grad(g: Graph) -> Graph:
    """The nodes that read a ``normalize`` region's exported intermediates (a training
    graph's backward of the normalization: products with ``x - mean`` and the reciprocal
    deviation, row sums, broadcasts) and compute per row of the same shape, grown along
    their results, as ``fused`` nodes of kind ``rows``: a backend evaluates such a region
    in one pass per level of row reductions plus one, without full-size temporaries."""
    users, outputs = g.users(), set(g.outputs)
    taken: set[int] = set()
    groups = []
    for node in g.nodes:
        if node.op != "fused" or node.attrs["kind"] != "normalize":
            continue
        spec = normalize_spec(node.attrs["body"])
        if spec is None:
            continue
        full, k = spec.x.type.shape, spec.axes
        members: dict[int, Node] = {}
        _grow_rows([u for v in node.outputs[1:] for u in users.get(v, [])], members, users,
                   full, k, taken)
        if len(members) < 2 or _reaches(g, set(members), users):
            continue
        taken.update(members)
        groups.append(list(members.values()))
    for node in g.nodes:                # per-channel statistics: batch norm's backward
        red = reduced_axes(node)
        if red is None or trailing_axes(node) is not None or id(node) in taken \
                or node.inputs[0].type.dtype not in FLOATS:
            continue
        full = tuple(node.inputs[0].shape)
        layout = row_layout(full, red)
        if layout is None or layout[2] < CHANNEL_RUN or not row_member(node, full, red):
            continue
        members = _grow_channels(node, users, full, red, taken)
        if len(members) < 2 or _reaches(g, set(members), users):
            continue
        taken.update(members)
        groups.append(list(members.values()))
    if not groups:
        return g
    rw = GraphRewriter(g)
    grouped = {id(n) for grp in groups for n in grp}
    count = 0
    for unit in _reorder(g, groups):
        if len(unit) == 1 and id(unit[0]) not in grouped:
            rw.copy_node(unit[0])
            continue
        ids = {id(n) for n in unit}
        made = {v for n in unit for v in n.outputs}
        operands = list(dict.fromkeys(v for n in unit for v in n.inputs if v not in made))
        results = [v for n in unit for v in n.outputs
                   if v in outputs or any(id(u) not in ids for u in users.get(v, []))]
        consts = [v for v in operands if v.node is not None and v.node.op == "full"
                  and v.type.size == 1]
        operands = [v for v in operands if v not in consts]
        body = flatten_row_sums(region_body(g, unit, operands, consts, results, f"rows_{count}"))
        count += 1
        outs = rw.dst.add_node("fused", [rw[v] for v in operands],
                               {"body": body, "kind": "rows"}, unit[-1].loc)
        for old, new in zip(results, outs):
            rw.replace(old, new)
    return dce(rw.finish())
