"""Back-propagation through time: unrolling, stored states, truncation, recompute mode.

``unroll`` unfolds a ``scan`` of tau steps into tau copies of its body (eq. 10.1-10.7); each
parameter stays ONE value used by every copy, so reverse-mode autodiff of the unrolled graph
sums each parameter's gradient over time: that is BPTT (eq. 10.17-10.28).

Before (a scan of 3 steps)::

    %hT: f32[2,4], %hs: f32[3,2,4] = scan(%h0, %xs, %W) {body=graph cell(...) {...}, ...}

After ``unroll``::

    %0: f32[1,2,3] = slice(%xs) {...}             # x(1)
    %1: f32[2,3] = reshape(%0) {...}
    %2: f32[2,4] = matmul(%h0, %W) ...            # h(1) = f(h(0), x(1); W)
    ...                                           # h(2), h(3): the same %W each time
    %9: f32[3,2,4] = concat(%a, %b, %c) {axis=0}  # the stacked outputs

The rolled alternative keeps the scan and lets autodiff emit a reverse-time scan
(passes/autodiff/rules_recurrence.py): its size does not grow with tau. ``bptt`` builds a whole
value-and-gradient graph and picks: unrolled up to ``threshold`` steps, rolled above.

* ``save_states(g, every=k)``: the forward scan keeps every k-th state for the backward pass
  (k = 1: all tau states, O(tau) memory; k > 1: O(tau/k) + O(k), the rest recomputed).
* ``truncate(g, k)``: truncated BPTT; gradients flow back through at most k steps (a chunk),
  while the state is carried forward across chunks.
* ``stored_state_bytes(g)``: bytes of the states the forward keeps for the backward pass.
"""
from __future__ import annotations

from typing import Sequence

from irgraph import Graph, GraphRewriter, Node, TensorType, Value, verify
from irgraph.ops.recurrence import inline, num_steps, split_inputs, step_body

from .autodiff import value_and_grad
from .manager import register_pass

# bptt: scans longer than this stay rolled. An unrolled step is code of its own (its slices,
# its gradient sums), so compile time grows with the length: past a few steps the rolled
# loop, whose code is the same for any length, compiles faster.
DEFAULT_THRESHOLD = 8


def scan_length(node: Node) -> int:
    return num_steps([v.type for v in node.inputs], node.attrs)


# ---------------------------------------------------------------- unroll
def _index(g: Graph, x: Value, t: int, loc) -> Value:
    r = x.type.rank
    s = g.op("slice", x, starts=(t,) + (0,) * (r - 1), stops=(t + 1,) + x.shape[1:],
             steps=(1,) * r, loc=loc)
    return g.op("reshape", s, shape=x.shape[1:], loc=loc)


def _stack(g: Graph, items: Sequence[Value], t: TensorType, loc) -> Value:
    if not items:
        return g.op("full", shape=(0,) + t.shape, value=0.0, dtype=t.dtype, loc=loc)
    rows = [g.op("reshape", v, shape=(1,) + v.shape, loc=loc) for v in items]
    return rows[0] if len(rows) == 1 else g.op("concat", *rows, axis=0, loc=loc)


def unroll_node(g: Graph, node: Node, inputs: Sequence[Value]) -> list[Value]:
    """Emit tau copies of the scan's body into ``g``; return values for the node's outputs."""
    attrs, loc = node.attrs, node.loc
    body = unroll(step_body(attrs))
    nc = attrs["num_carry"]
    carries, seqs, mask, consts = split_inputs(list(inputs), attrs)
    slices = seqs + ([mask] if mask is not None else [])
    steps = num_steps([v.type for v in inputs], attrs)
    every = attrs["save_every"]
    ys: list = [None] * steps
    saved: list = []
    order = range(steps - 1, -1, -1) if attrs["reverse"] else range(steps)
    for p, t in enumerate(order):
        if every and p % every == 0:
            saved.append(carries)
        outs = inline(g, body, list(carries) + [_index(g, s, t, loc) for s in slices] + consts,
                      loc)
        carries, ys[t] = outs[:nc], outs[nc:]
    y_types = [v.type for v in body.outputs[nc:]]
    stacked = [_stack(g, [y[i] for y in ys], ty, loc) for i, ty in enumerate(y_types)]
    kept = ([_stack(g, [s[i] for s in saved], inputs[i].type, loc) for i in range(nc)]
            if every else [])
    return list(carries) + stacked + kept


def unroll(g: Graph, max_length: int | None = None) -> Graph:
    """Replace each scan of at most ``max_length`` steps (None: every scan) by its unfolded
    DAG (eq. 10.1-10.7). Longer scans stay rolled (their bodies are still unrolled)."""
    def fn(rw: GraphRewriter, node: Node):
        if max_length is not None and scan_length(node) > max_length:
            return None
        return unroll_node(rw.dst, node, [rw[v] for v in node.inputs])
    return _map_scans(g, fn)


def _map_scans(g: Graph, fn) -> Graph:
    """Copy ``g`` with every scan (innermost bodies first) passed to ``fn(rw, node)``, which
    returns the values replacing the node's outputs, or None to keep the node."""
    if not any(n.op == "scan" for n in g.nodes):
        return g
    rw = GraphRewriter(g)
    for node in g.nodes:
        if node.op != "scan":
            rw.copy_node(node)
            continue
        body = _map_scans(node.attrs["body"], fn)
        work = node if body is node.attrs["body"] else _with_attrs(node, body=body)
        outs = fn(rw, work)
        if outs is None:
            outs = rw.dst.add_node(work.op, [rw[v] for v in work.inputs], work.attrs, work.loc)
        for old, new in zip(node.outputs, outs):
            rw.replace(old, new)
    return verify(rw.finish())


def _with_attrs(node: Node, **attrs) -> Node:
    """A detached copy of ``node`` with changed attributes and the same outputs."""
    new = Node(node.op, node.inputs, {**node.attrs, **attrs}, node.loc)
    new.outputs = node.outputs
    return new


# ---------------------------------------------------------------- stored states
def save_states(g: Graph, every: int = 1) -> Graph:
    """Make every scan keep every ``every``-th entering state as an extra output, for the rolled
    backward pass (``every`` > 1: checkpoints, the rest recomputed). Outputs keep their
    meaning; the new ones come after them."""
    if every < 1:
        raise ValueError(f"save_states: every must be >= 1, got {every}")

    def fn(rw: GraphRewriter, node: Node):
        if node.attrs["save_every"] == every:
            return None
        outs = rw.dst.add_node("scan", [rw[v] for v in node.inputs],
                               {**node.attrs, "save_every": every}, node.loc)
        return list(outs)
    return _map_scans(g, fn)


def stored_state_bytes(g: Graph) -> int:
    """Bytes of the states scans keep for a backward pass (their ``save_every`` outputs);
    a nested scan's states count once (they live for one run of the enclosing body)."""
    total = 0
    for node in g.nodes:
        if node.op != "scan":
            continue
        nc = node.attrs["num_carry"]
        if node.attrs["save_every"]:
            total += sum(v.type.nbytes for v in node.outputs[len(node.outputs) - nc:])
        total += stored_state_bytes(node.attrs["body"])
    return total


def merge_scans(g: Graph) -> Graph:
    """A scan and a later twin that differs only by keeping its states (what the VJP rule
    emits for a scan differentiated without ``save_states``) become one: the twin moves up to
    the first one's place, so the forward runs once."""
    def key(node: Node):
        attrs = {k: v for k, v in node.attrs.items() if k != "save_every"}
        return (tuple(id(v) for v in node.inputs), str(Node("scan", node.inputs, attrs)))
    savers = {}
    for node in g.nodes:
        if node.op == "scan" and node.attrs["save_every"]:
            savers.setdefault(key(node), node)
    pairs = {id(n): savers[key(n)] for n in g.nodes if n.op == "scan"
             and not n.attrs["save_every"] and key(n) in savers}
    if not pairs:
        return g
    rw, moved = GraphRewriter(g), set()
    for node in g.nodes:
        if id(node) in moved:
            continue
        twin = pairs.get(id(node))
        if twin is None:
            rw.copy_node(node)
            continue
        outs = rw.copy_node(twin) if id(twin) not in moved else [rw[v] for v in twin.outputs]
        moved.add(id(twin))
        for old, new in zip(node.outputs, outs):
            rw.replace(old, new)
    return verify(rw.finish())


# ---------------------------------------------------------------- truncated BPTT
def truncate(g: Graph, k: int) -> Graph:
    """Truncated BPTT: split each scan longer than ``k`` into chunks of ``k`` steps; the state
    passes from chunk to chunk through ``stop_gradient``, so gradients flow back at most
    ``k`` steps while the forward values are unchanged. The chunks are an outer scan (a
    last partial chunk is its own scan), so the graph stays rolled."""
    if k < 1:
        raise ValueError(f"truncate: k must be >= 1, got {k}")

    def fn(rw: GraphRewriter, node: Node):
        if scan_length(node) <= k:
            return None
        return _chunked(rw.dst, node, [rw[v] for v in node.inputs], k)
    return _map_scans(g, fn)


def _chunked(g: Graph, node: Node, inputs: list[Value], k: int) -> list[Value]:
    attrs, loc = node.attrs, node.loc
    nc = attrs["num_carry"]
    steps = num_steps([v.type for v in inputs], attrs)
    carries, seqs, mask, consts = split_inputs(inputs, attrs)
    slices = seqs + ([mask] if mask is not None else [])
    step = step_body(attrs)
    n, r = divmod(steps, k)
    rev = attrs["reverse"]
    # positions of the full chunks and of the partial one, in processing order
    full = (r, steps) if rev else (0, n * k)
    part = (0, r) if rev else (n * k, steps)
    inner = {"num_carry": nc, "num_seq": len(slices), "reverse": rev, "length": None}
    chunk_body = _chunk_body(step, nc, [s.type for s in slices], consts, k, inner)
    segs = [g.op("reshape", _slice(g, s, *full, loc), shape=(n, k) + s.shape[1:], loc=loc)
            for s in slices]
    outs = g.add_node("scan", carries + segs + consts,
                      {**inner, "body": chunk_body, "num_seq": len(segs), "length": n}, loc)
    carries = list(outs[:nc])
    ys = [g.op("reshape", y, shape=(n * k,) + y.shape[2:], loc=loc) for y in outs[nc:]]
    if r:
        sg = [g.op("stop_gradient", c, loc=loc) for c in carries]
        tail = g.add_node("scan", sg + [_slice(g, s, *part, loc) for s in slices] + consts,
                          {**inner, "body": step, "length": r}, loc)
        carries = list(tail[:nc])
        ys = [g.op("concat", *((t, y) if rev else (y, t)), axis=0, loc=loc)
              for y, t in zip(ys, tail[nc:])]
    saved = []
    if attrs["save_every"]:  # states were asked for: recompute them with an untruncated scan
        again = g.add_node("scan", inputs, dict(attrs), loc)
        saved = list(again[len(again) - nc:])
    return carries + ys + saved


def _slice(g: Graph, x: Value, start: int, stop: int, loc) -> Value:
    r = x.type.rank
    return g.op("slice", x, starts=(start,) + (0,) * (r - 1), stops=(stop,) + x.shape[1:],
                steps=(1,) * r, loc=loc)


def _chunk_body(step: Graph, nc: int, slice_types, consts, k: int, inner: dict) -> Graph:
    """One chunk: cut the gradient of the entering state, then run k steps."""
    b = Graph(step.name + "_chunk")
    cs = [b.add_input(v.name, v.type) for v in step.arguments[:nc]]
    segs = [b.add_input(b.fresh_name("chunk"), TensorType((k,) + t.shape[1:], t.dtype))
            for t in slice_types]
    theta = [b.add_param(b.fresh_name(c.name), c.type) for c in consts]
    cut = [b.op("stop_gradient", c) for c in cs]
    outs = b.add_node("scan", cut + segs + theta, {**inner, "body": step, "length": k})
    b.set_outputs(list(outs))
    return b


# ---------------------------------------------------------------- the BPTT pipeline
def prepare_bptt(g: Graph, *, mode: str = "auto", threshold: int = DEFAULT_THRESHOLD,
                 checkpoint: int = 1, truncate_k: int | None = None) -> Graph:
    """What BPTT does to a graph before autodiff: truncation, unrolling (``mode``: "auto"
    unrolls scans of at most ``threshold`` steps), and saved states for the rolled scans
    (every ``checkpoint``-th kept), so their backward pass reuses the forward's states."""
    if mode not in ("auto", "unrolled", "rolled"):
        raise ValueError(f"bptt: mode must be 'auto', 'unrolled' or 'rolled', got {mode!r}")
    if truncate_k is not None:
        g = truncate(g, truncate_k)
    if mode != "rolled":
        g = unroll(g, None if mode == "unrolled" else threshold)
    return save_states(g, checkpoint)


def bptt(g: Graph, wrt: Sequence[str] | None = None, of: int = 0, *, mode: str = "auto",
         threshold: int = DEFAULT_THRESHOLD, checkpoint: int = 1,
         truncate_k: int | None = None) -> Graph:
    """Value-and-gradient graph of ``g`` by back-propagation through time.

    ``mode``: ``"unrolled"`` (every scan unfolded, eq. 10.1-10.7), ``"rolled"`` (reverse-time
    scans), ``"auto"`` (unrolled up to ``threshold`` steps, rolled above). ``checkpoint``: keep
    every k-th state (rolled scans). ``truncate_k``: truncated BPTT through k steps."""
    g = prepare_bptt(g, mode=mode, threshold=threshold, checkpoint=checkpoint,
                     truncate_k=truncate_k)
    return value_and_grad(g, wrt, of)


@register_pass("unroll")
def unroll_all(g: Graph) -> Graph:
    """Unfold every scan into its DAG (eq. 10.1-10.7)."""
    return unroll(g)


@register_pass("unroll_short")
def unroll_short(g: Graph) -> Graph:
    """Unfold scans of at most DEFAULT_THRESHOLD steps; longer ones stay rolled."""
    return unroll(g, DEFAULT_THRESHOLD)


@register_pass("bptt")
def prepare_bptt_default(g: Graph) -> Graph:
    """Before autodiff: unroll short scans, keep the states of long (rolled) ones."""
    return prepare_bptt(g)


@register_pass("merge_scans")
def merge_scan_twins(g: Graph) -> Graph:
    """After autodiff: run each forward scan once (see ``merge_scans``)."""
    return merge_scans(g)


@register_pass("save_states")
def save_all_states(g: Graph) -> Graph:
    """Make every scan keep its states for a rolled backward pass."""
    return save_states(g)
