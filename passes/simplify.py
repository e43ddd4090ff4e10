"""Simplification: constant folding, algebraic identities, CSE and DCE, and ``simplify``,
which repeats them until nothing changes."""
from __future__ import annotations

import numpy as np

from irgraph import Graph, GraphRewriter, Node, Value
from irgraph.interpreter import ExecutionError, run_node

from .analysis import COMMUTATIVE, CONST_SOURCES, EFFECT_OPS, attrs_key, const_array
from .identities import Site, rules_for
from .manager import register_pass

# constant folding evaluates a node only when no operand or result is larger than this
FOLD_EVAL_LIMIT = 1 << 20
# a folded result that is not a splat becomes a ``constant`` only up to this many elements
# (its values are printed in the IR text)
FOLD_ARRAY_LIMIT = 1024


# ---------------------------------------------------------------- constant folding
def _splat_value(arr: np.ndarray) -> float | None:
    """The single value of a splat array as a float that round-trips exactly, else None."""
    if arr.size == 0:
        return 0.0
    first = arr.flat[0]
    same = np.array_equal(arr, np.full_like(arr, first), equal_nan=arr.dtype.kind == "f")
    if not same or (arr.dtype.kind == "f" and np.any(np.signbit(arr) != np.signbit(first))):
        return None
    value = float(first.item())
    return value if value == first.item() or value != value else None


def _as_const_node(rw: GraphRewriter, arr: np.ndarray, v: Value, loc: str | None):
    """A ``full`` for a splat (any size), a ``constant`` for a small array, else None."""
    value = _splat_value(arr)
    if value is not None:
        return rw.emit("full", loc=loc, shape=v.shape, value=value, dtype=v.dtype)
    if arr.size <= FOLD_ARRAY_LIMIT:
        return rw.emit("constant", loc=loc, value=arr)
    return None


def _foldable(node: Node, ins: list[Value]) -> bool:
    if not node.inputs or node.op in EFFECT_OPS or node.op in CONST_SOURCES:
        return False
    if not all(v.node is not None and v.node.op in CONST_SOURCES for v in ins):
        return False
    sizes = [v.type.size for v in ins] + [v.type.size for v in node.outputs]
    return max(sizes) <= FOLD_EVAL_LIMIT


@register_pass("constant_fold")
def constant_fold(g: Graph) -> Graph:
    """Evaluate nodes whose operands are all constants with the registry's reference kernels.

    Before::

        %0: f32[] = full() {dtype="float32", shape=[], value=2.0}
        %1: f32[] = full() {dtype="float32", shape=[], value=3.0}
        %2: f32[] = mul(%0, %1)
        %3: f32[4] = add(%x, %2)

    After (``%0``, ``%1`` are now dead; DCE removes them)::

        %4: f32[] = full() {dtype="float32", shape=[], value=6.0}
        %3: f32[4] = add(%x, %4)

    A splat result becomes ``full``; another result becomes ``constant`` while it has at most
    FOLD_ARRAY_LIMIT elements. A kernel that fails (e.g. an index out of range) is left for
    run time, where its error names the user's line.
    """
    if not any(_foldable(node, list(node.inputs)) for node in g.nodes):
        return g                                    # nothing to fold: no copy
    rw = GraphRewriter(g)
    for node in g.nodes:
        ins = [rw[v] for v in node.inputs]
        if not _foldable(node, ins):
            rw.copy_node(node)
            continue
        try:
            arrays = run_node(node, [const_array(v) for v in ins])
        except ExecutionError:
            rw.copy_node(node)
            continue
        news = [_as_const_node(rw, a, v, node.loc) for a, v in zip(arrays, node.outputs)]
        if any(n is None for n in news):
            rw.copy_node(node)
            continue
        for old, new in zip(node.outputs, news):
            rw.replace(old, new)
    return rw.finish()


# ---------------------------------------------------------------- algebraic identities
@register_pass("algebraic")
def algebraic(g: Graph) -> Graph:
    """Apply the identity table of ``passes/identities.py`` (``x*1 -> x``, double transpose,
    reshape chains, ...).

    Before::

        %0: f32[3,2] = transpose(%x) {perm=[1, 0]}
        %1: f32[2,3] = transpose(%0) {perm=[1, 0]}
        %2: f32[2,3] = neg(%1)
        %3: f32[2,3] = neg(%2)
        return %3

    After (the transposes and negations are dead; DCE removes them)::

        return %x
    """
    if not any(_matches(node) for node in g.nodes if len(node.outputs) == 1):
        return g
    rw = GraphRewriter(g)
    for node in g.nodes:
        new = _rewrite(rw, node) if len(node.outputs) == 1 else None
        if new is None:
            rw.copy_node(node)
        else:
            rw.replace(node.outputs[0], new)
    return rw.finish()


class _Matched(Exception):
    pass


def _matches(node: Node) -> bool:
    """Whether a rule applies to ``node`` as it is (a dry run: emitting means it matched).
    If none applies anywhere, none applies while rewriting either."""
    def emit(op, *inputs, **attrs):
        raise _Matched

    site = Site(node.op, node.inputs, node.attrs, node.outputs[0].type, emit)
    try:
        return any(rule(site) is not None for rule in rules_for(node.op))
    except _Matched:
        return True


def _rewrite(rw: GraphRewriter, node: Node) -> Value | None:
    out = node.outputs[0].type

    def emit(op, *inputs, **attrs):
        return rw.emit(op, *inputs, loc=node.loc, **attrs)

    site = Site(node.op, tuple(rw[v] for v in node.inputs), node.attrs, out, emit)
    for rule in rules_for(node.op):
        new = rule(site)
        if new is not None:
            if new.type != out:
                raise AssertionError(f"identity rule {rule.__name__} replaced {node!r} by a "
                                     f"value of type {new.type}")
            return new
    return None


# ---------------------------------------------------------------- CSE and DCE
def _cse_key(node: Node, ins) -> tuple:
    ids = [id(v) for v in ins]
    if node.op in COMMUTATIVE:
        ids.sort()
    return (node.op, tuple(ids), attrs_key(node.attrs))


@register_pass("cse")
def cse(g: Graph) -> Graph:
    """Common-subexpression elimination: a node equal to an earlier one (same op, operands and
    attributes; operands of commutative ops in either order) reuses its outputs.

    Before::

        %0: f32[4] = exp(%x)
        %1: f32[4] = exp(%x)
        %2: f32[4] = add(%0, %1)

    After::

        %0: f32[4] = exp(%x)
        %2: f32[4] = add(%0, %0)
    """
    keys = [_cse_key(node, node.inputs) for node in g.nodes if node.op not in EFFECT_OPS]
    if len(set(keys)) == len(keys):
        return g            # no two nodes alike, so no merge can make others alike either
    rw = GraphRewriter(g)
    seen: dict[tuple, tuple[Value, ...]] = {}
    for node in g.nodes:
        key = _cse_key(node, [rw[v] for v in node.inputs])
        if node.op not in EFFECT_OPS and key in seen:
            for old, new in zip(node.outputs, seen[key]):
                rw.replace(old, new)
        else:
            seen[key] = rw.copy_node(node)
    return rw.finish()


def live_nodes(g: Graph) -> set[int]:
    """Indices of the nodes the outputs (or an effect) depend on."""
    needed = set(g.outputs)
    live: set[int] = set()
    for i in range(len(g.nodes) - 1, -1, -1):
        node = g.nodes[i]
        if node.op in EFFECT_OPS or any(v in needed for v in node.outputs):
            live.add(i)
            needed.update(node.inputs)
    return live


@register_pass("dce")
def dce(g: Graph) -> Graph:
    """Dead-code elimination: drop nodes no output depends on (inputs and parameters stay, so
    the signature does not change).

    Before::

        %0: f32[4] = exp(%x)
        %1: f32[4] = tanh(%x)
        return %0

    After::

        %0: f32[4] = exp(%x)
        return %0
    """
    live = live_nodes(g)
    if len(live) == len(g.nodes):
        return g
    rw = GraphRewriter(g)
    for i, node in enumerate(g.nodes):
        if i in live:
            rw.copy_node(node)
    return rw.finish()


@register_pass("simplify")
def simplify(g: Graph, max_rounds: int = 8) -> Graph:
    """constant_fold, algebraic, cse, dce, repeated until the graph stops changing.

    Before::

        %0: f32[] = full() {dtype="float32", shape=[], value=1.0}
        %1: f32[4] = mul(%x, %0)
        %2: f32[4] = exp(%1)
        %3: f32[4] = exp(%x)
        %4: f32[4] = add(%2, %3)
        return %4

    After::

        %2: f32[4] = exp(%x)
        %4: f32[4] = add(%2, %2)
        return %4
    """
    for _ in range(max_rounds):
        new = dce(cse(algebraic(constant_fold(g))))
        if new is g:            # every pass gives its input back when it changes nothing
            break
        g = new
    return g


@register_pass("simplify_subgraphs")
def simplify_subgraphs(g: Graph) -> Graph:
    """``simplify`` inside the subgraphs of nodes (a ``scan`` step, a ``fused`` region), then
    on the graph; the bodies keep their signatures, so the nodes keep their types.

    Before::

        %0: f32[2,3], %1: f32[4,2,3] = scan(%h0, %xs) {body=graph cell(%h, %x) {
            %2 = mul(%h, 1.0); %3 = neg(%x); %4 = neg(%3); %5 = add(%2, %4); %6 = tanh(%5)
            return %6, %6 }, ...}

    After::

        %0: f32[2,3], %1: f32[4,2,3] = scan(%h0, %xs) {body=graph cell(%h, %x) {
            %5 = add(%h, %x); %6 = tanh(%5)
            return %6, %6 }, ...}
    """
    if not any(isinstance(a, Graph) for n in g.nodes for a in n.attrs.values()):
        return simplify(g)
    rw = GraphRewriter(g)
    for node in g.nodes:
        attrs = {k: simplify_subgraphs(a) if isinstance(a, Graph) else a
                 for k, a in node.attrs.items()}
        rw.copy_node(node, attrs)
    return simplify(rw.finish())
