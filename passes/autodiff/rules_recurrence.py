"""The rolled VJP of ``scan``: back-propagation through time as a reverse-time scan.

The gradient of a scan is another scan, run backwards over the stored states (eq. 10.17-
10.21 with the step's VJP as its body), so the size of the gradient graph does not grow with
the number of steps (as JAX's ``scan`` transpose). Its carry is (dL/dh, the running sum of
dL/dtheta); its sequences are the carries entering each step, the step inputs and dL/dy_t.

Stored states come from the forward node's ``save_every`` outputs (``passes.unroll.
save_states`` sets them, so the forward runs once). ``save_every = k > 1`` keeps every k-th
state: the backward then recomputes each segment of k states from its checkpoint before
running the segment backwards (an outer reverse scan over segments, fig. "recompute mode").
A node without saved states gets a twin that saves them (``merge_scans`` merges the two).
"""
from __future__ import annotations

from dataclasses import dataclass

from irgraph import Graph, TensorType, Value
from irgraph.ops.recurrence import inline, num_steps, split_inputs, step_body

from .core import vjp, vjp_rule


@dataclass
class _Step:
    """A forward step f(carries, slices; theta) and its backward step graph."""
    body: Graph          # the effective step (mask folded in as a slice)
    nc: int              # carries
    ns: int              # slices (sequences, and the mask when masked)
    bwd: Graph           # (gc, gtheta_acc, c_t, s_t, gy_t[, gsaved_t]; theta)
    #                      -> (gc, gtheta_acc, gs_t)
    fc: list[int]        # float carries
    fs: list[int]        # float slices
    fk: list[int]        # float invariants
    fy: list[int]        # float per-step outputs


def _emit(g: Graph, loc, op: str, *inputs: Value, **attrs) -> tuple[Value, ...]:
    return g.add_node(op, inputs, attrs, loc)


def make_step(body: Graph, nc: int, ns: int, saved: bool = False,
              zero_y: frozenset[int] = frozenset()) -> _Step:
    """Build the backward step graph from the step's VJP graph (autodiff of the body).
    ``saved``: it also takes the cotangent of the saved entering carries, added to dL/dh.
    ``zero_y``: per-step outputs whose cotangent is all zeros (outputs the loss never reads,
    such as every hidden state but the last of fig. 10.5): they are no input of the
    backward step, which is simplified without them (no zero sequence is stored or read)."""
    args, outs = body.arguments, body.outputs
    fc = [i for i in range(nc) if args[i].type.is_float]
    fs = [i for i in range(ns) if args[nc + i].type.is_float]
    fk = [i for i in range(len(args) - nc - ns) if args[nc + ns + i].type.is_float]
    fy = [i for i in range(len(outs) - nc) if outs[nc + i].type.is_float]
    wrt = [args[i] for i in fc] + [args[nc + i] for i in fs] + [args[nc + ns + i] for i in fk]
    of = [i for i in fc] + [nc + i for i in fy]
    v = vjp(body, [a.name for a in wrt], of)
    b = Graph(body.name + "_bwd")
    gc = [b.add_input(b.fresh_name("g_" + args[i].name), args[i].type) for i in fc]
    gk = [b.add_input(b.fresh_name("gsum_" + args[nc + ns + i].name),
                      args[nc + ns + i].type) for i in fk]
    ct = [b.add_input(b.fresh_name(a.name), a.type) for a in args[:nc + ns]]
    gy = [b.op("full", shape=outs[nc + i].shape, value=0.0, dtype=outs[nc + i].dtype)
          if i in zero_y else
          b.add_input(b.fresh_name("g_" + outs[nc + i].name), outs[nc + i].type) for i in fy]
    gsv = [b.add_input(b.fresh_name("gsaved_" + args[i].name), args[i].type)
           for i in fc] if saved else []
    theta = [b.add_param(b.fresh_name(a.name), a.type) for a in args[nc + ns:]]
    fwd_args = dict(zip(args, ct + theta))
    n_in = len(body.inputs)
    bound = [fwd_args[a] for a in body.inputs] + gc + gy + [fwd_args[a] for a in body.params]
    assert len(bound) == len(v.arguments) and n_in + len(of) == len(v.inputs)
    res = inline(b, v, bound)[len(outs):]
    g_c, g_s, g_k = res[:len(fc)], res[len(fc):len(fc) + len(fs)], res[len(fc) + len(fs):]
    acc = [b.op("add", s, d) for s, d in zip(gk, g_k)]
    g_c = [b.op("add", c, d) for c, d in zip(g_c, gsv)] if saved else g_c
    b.set_outputs(list(g_c) + acc + list(g_s))
    if zero_y:
        from irgraph.passes.simplify import simplify     # x + 0 -> x, and what no output needs
        b = simplify(b)
    return _Step(body, nc, ns, b, fc, fs, fk, fy)


def forward_saving(g: Graph, loc, st: _Step, init, seqs, consts, length: int) -> list[Value]:
    """A forward scan that keeps every entering carry; returns the stacked carries."""
    outs = _emit(g, loc, "scan", *init, *seqs, *consts, body=st.body, num_carry=st.nc,
                 num_seq=len(seqs), length=length, save_every=1)
    return list(outs[len(outs) - st.nc:])


def backward_scan(g: Graph, loc, st: _Step, ginit, states, slices, gys, consts, length: int):
    """Run the backward step over one stretch, last step first: returns (carry, g_slices)."""
    seqs = list(states) + list(slices) + list(gys)
    outs = _emit(g, loc, "scan", *ginit, *seqs, *consts, body=st.bwd,
                 num_carry=len(ginit), num_seq=len(seqs), reverse=True, length=length)
    return list(outs[:len(ginit)]), list(outs[len(ginit):])


def _take(g: Graph, loc, x: Value, start: int, stop: int, keep_axis: bool = True) -> Value:
    r = x.type.rank
    (y,) = _emit(g, loc, "slice", x, starts=(start,) + (0,) * (r - 1),
                 stops=(stop,) + x.shape[1:], steps=(1,) * r)
    if not keep_axis:
        (y,) = _emit(g, loc, "reshape", y, shape=x.shape[1:])
    return y


def _flip(g: Graph, loc, x: Value) -> Value:
    r, n = x.type.rank, x.shape[0]
    (y,) = _emit(g, loc, "slice", x, starts=(n - 1,) + (0,) * (r - 1),
                 stops=(-n - 1,) + x.shape[1:], steps=(-1,) + (1,) * (r - 1))
    return y


def _reshape(g: Graph, loc, x: Value, shape) -> Value:
    return x if x.shape == tuple(shape) else _emit(g, loc, "reshape", x, shape=tuple(shape))[0]


def _segments_body(st: _Step, k: int, ginit_types, seq_types, consts) -> Graph:
    """Outer body of recompute mode: recompute k states from a checkpoint, then go back."""
    b = Graph(st.body.name + "_segment")
    ginit = [b.add_input(b.fresh_name("g"), t) for t in ginit_types]
    ck = [b.add_input(b.fresh_name("ckpt"), st.body.arguments[i].type) for i in range(st.nc)]
    seqs = [b.add_input(b.fresh_name("seg"), t) for t in seq_types]
    theta = [b.add_param(b.fresh_name(c.name), c.type) for c in consts]
    slices, gys = seqs[:st.ns], seqs[st.ns:]
    states = forward_saving(b, None, st, ck, slices, theta, k)
    carry, gs = backward_scan(b, None, st, ginit, states, slices, gys, theta, k)
    b.set_outputs(carry + gs)
    return b


def backward_checkpointed(g: Graph, loc, st: _Step, ginit, ckpts, slices, gys, consts,
                          steps: int, k: int):
    """BPTT keeping every k-th state: a partial last segment, then a reverse scan over the
    full segments, each recomputing its k states (compute for memory)."""
    n, r = divmod(steps, k)
    carry, parts = list(ginit), []
    if r:
        ck = [_take(g, loc, c, n, n + 1, keep_axis=False) for c in ckpts]
        sl = [_take(g, loc, s, n * k, steps) for s in slices]
        gy = [_take(g, loc, s, n * k, steps) for s in gys]
        states = forward_saving(g, loc, st, ck, sl, consts, r)
        carry, parts = backward_scan(g, loc, st, carry, states, sl, gy, consts, r)
    if n:
        segs = [_reshape(g, loc, _take(g, loc, s, 0, n * k), (n, k) + s.shape[1:])
                for s in list(slices) + list(gys)]
        cks = [_take(g, loc, c, 0, n) for c in ckpts]
        body = _segments_body(st, k, [c.type for c in carry],
                              [TensorType(s.shape[1:], s.dtype) for s in segs], consts)
        outs = _emit(g, loc, "scan", *carry, *cks, *segs, *consts, body=body,
                     num_carry=len(carry), num_seq=len(cks) + len(segs), reverse=True)
        carry = list(outs[:len(carry)])
        full = [_reshape(g, loc, s, (n * k,) + s.shape[2:]) for s in outs[len(carry):]]
        parts = full if not parts else [
            _emit(g, loc, "concat", a, b, axis=0)[0] for a, b in zip(full, parts)]
    return carry, parts


def _is_zero(v: Value) -> bool:
    return v.node is not None and v.node.op == "full" and v.node.attrs["value"] == 0.0


def _per_step(g: Graph, loc, v: Value, k: int, steps: int) -> Value:
    """Cotangents of every k-th saved state spread over the steps (zeros between)."""
    if k == 1:
        return v
    m, rest = v.shape[0], v.shape[1:]
    x = _reshape(g, loc, v, (m, 1) + rest)
    (x,) = _emit(g, loc, "pad", x, pads=(0, 0, 0, k - 1) + (0, 0) * len(rest))
    return _take(g, loc, _reshape(g, loc, x, (m * k,) + rest), 0, steps)


@vjp_rule("scan")
def _scan_vjp(e, node, xs, ys, gs):
    attrs = node.attrs
    g, loc = e.graph, e.loc
    nc, every = attrs["num_carry"], attrs["save_every"]
    carries, seqs, mask, consts = split_inputs(xs, attrs)
    steps = num_steps([x.type for x in xs], attrs)
    slices = seqs + ([mask] if mask is not None else [])
    body = step_body(attrs)
    n_y = len(body.outputs) - nc
    g_saved = [gs[nc + n_y + i] for i in range(nc)
               if every and body.arguments[i].type.is_float]
    saved_ct = every > 0 and not all(_is_zero(v) for v in g_saved)
    zero_y = frozenset(i for i in range(n_y) if _is_zero(gs[nc + i]))
    st = make_step(body, nc, len(slices), saved_ct, zero_y)
    if not st.fc and not st.fk and not st.fs:
        return [None] * len(xs)
    if steps == 0:
        return ([gs[i] if i in st.fc else None for i in range(nc)] + [
            e.zeros_like(s) if s.type.is_float else None for s in slices]
            + [e.zeros_like(c) if c.type.is_float else None for c in consts])
    # work in processing order: a reverse scan is a forward scan over flipped sequences
    flip = attrs["reverse"]
    order = (lambda v: _flip(g, loc, v)) if flip else (lambda v: v)
    p_slices = [order(s) for s in slices]
    p_gys = [order(gs[nc + i]) for i in st.fy if i not in zero_y]
    if saved_ct:
        p_gys += [_per_step(g, loc, v, every, steps) for v in g_saved]
    ginit = [gs[i] for i in st.fc] + [e.zeros_like(consts[i]) for i in st.fk]
    k = every if every else 1
    saved = list(ys[nc + n_y:])
    if not every:   # the node's own twin that keeps its states (passes.unroll.merge_scans
        #             then lets the forward run once)
        twin = _emit(g, loc, "scan", *xs, **{**attrs, "save_every": 1})
        saved = list(twin[len(twin) - nc:])
    if k == 1:
        carry, g_sl = backward_scan(g, loc, st, ginit, saved, p_slices, p_gys, consts, steps)
    else:
        carry, g_sl = backward_checkpointed(g, loc, st, ginit, saved, p_slices, p_gys, consts,
                                            steps, k)
    g_c, g_k = carry[:len(st.fc)], carry[len(st.fc):]
    g_s = {i: order(v) for i, v in zip(st.fs, g_sl)}
    res: list = [None] * len(xs)
    for j, i in enumerate(st.fc):
        res[i] = g_c[j]
    for i, v in g_s.items():
        if i < len(seqs):
            res[nc + i] = v
    base = nc + len(slices)
    for j, i in enumerate(st.fk):
        res[base + i] = g_k[j]
    return res
