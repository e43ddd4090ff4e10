"""Lowerings of the ops that hold a graph or watch one: ``scan`` (recurrence, the body run in
a native loop over time steps), ``fused`` regions (an elementwise region is ONE loop nest)
and ``check_finite`` (the NaN/Inf check)."""
from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir

from irgraph import Graph
from irgraph.ops.recurrence import split_inputs, step_body
from irgraph.registry import ops_with

from .builder import Buf, broadcast_strides, for_range, i64, prod, row_strides
from .elementwise import copy_strided, elementwise
from .lowering import (FUSED_KIND_MEETS, FUSED_KIND_SCRATCH, FUSED_KINDS, SAME_INDEX_RULES,
                       get_lowering, kind_takes, lowering, scratch)
from .module import (ALIGN, SHARES_PER_THREAD, STEPPED, Task, buffers, claim_step,
                     claim_tasks, copy_outputs_of, emit_graph, emit_node, emit_nodes,
                     node_bufs, plan, step_done, swapped_inputs)
from .ops_core import SCALAR
from . import scalar as sc

# ---------------------------------------------------------------- check_finite


@lowering("check_finite", parallel=True)
def _check_finite(ctx, node, ins, outs):
    """Copy x; any NaN or infinity sets error 4 (the executable raises NonFiniteError)."""
    x = ins[0]
    b = ctx.b

    def fn(vs):
        v = vs[0]
        if x.dtype in sc.FLOATS:
            finite = b.fcmp_ordered("<", sc.call(ctx, "fabs", v), sc.const(x.dtype, "inf"))
            with b.if_then(b.not_(finite), likely=False):
                ctx.fail(4)
        return v
    elementwise(ctx, outs[:1], ins[:1], fn)


# ---------------------------------------------------------------- graph bodies


def _ptr(b, buf: Buf, offset_elems) -> ir.Value:
    return b.bitcast(b.gep(buf.ptr, [offset_elems]), ir.PointerType(ir.IntType(8)))


def _scan_layout(node, threads: int, features: str):
    # the step body as the pass pipeline left it: fused (fuse_scan_bodies, one of the
    # backend's PASSES), its mask folded in
    body = step_body(node.attrs)
    bp = plan(body, features, threads)
    nc = node.attrs["num_carry"]
    temps, off = [], bp.arena_bytes
    for v in body.outputs[:nc]:
        temps.append(off)
        off += -(-max(v.type.nbytes, 1) // ALIGN) * ALIGN
    return body, bp, temps, off


@scratch("scan")
def _scan_scratch(node, threads, features) -> int:
    return _scan_layout(node, threads, features)[3]


def _step_args(b, p, steps: int, reverse: bool, c_out, pong, seqs, mask, consts, ys):
    """Step p's buffers: the carries it reads (``cur``, ping-pong between the node's carry
    outputs and the scratch ``pong``), the body's arguments (those carries, the slices
    t of the sequences and the mask, the constants) and its results (the other side of
    the ping-pong, the slices t of the per-step outputs); t = p, or steps - 1 - p."""
    i8p = ir.PointerType(ir.IntType(8))
    t = b.sub(i64(steps - 1), p) if reverse else p
    odd = b.trunc(p, ir.IntType(1))
    cur = [Buf(b.select(odd, q.ptr, c.ptr), c.type) for c, q in zip(c_out, pong)]
    nxt = [b.bitcast(b.select(odd, c.ptr, q.ptr), i8p) for c, q in zip(c_out, pong)]
    args = [b.bitcast(c.ptr, i8p) for c in cur]
    args += [_ptr(b, s, b.mul(t, i64(prod(s.shape[1:])))) for s in seqs]
    if mask is not None:
        args.append(_ptr(b, mask, b.mul(t, i64(prod(mask.shape[1:])))))
    args += [b.bitcast(c.ptr, i8p) for c in consts]
    res = nxt + [_ptr(b, y, b.mul(t, i64(prod(y.shape[1:])))) for y in ys]
    return cur, args, res


@lowering("scan", parallel=True)
def _scan(ctx, node, ins, outs):
    """Carries ping-pong between the node's carry outputs and scratch: an even step reads
    the outputs and writes the scratch, an odd step the other way round, so no step copies
    its carries (one copy at the end when the step count is odd). Each step the body reads
    the sequence slices in place and writes y_t into its output slot."""
    a = node.attrs
    body, bp, temps, _ = _scan_layout(node, ctx.max_threads, ctx.features)
    nc = a["num_carry"]
    carries, seqs, mask, consts = split_inputs(ins, a)
    steps = node.outputs[nc].shape[0] if len(node.outputs) > nc else _steps(node)
    n_y = len(body.outputs) - nc
    c_out, ys, saved = outs[:nc], outs[nc:nc + n_y], outs[nc + n_y:]
    b = ctx.b
    base = ctx.node_scratch
    every = a["save_every"]
    pong = [Buf(b.bitcast(b.gep(base, [i64(o)]), ir.PointerType(c.elem)), c.type)
            for o, c in zip(temps, c_out)]
    counters, ctx.counters = ctx.counters, None
    if counters is not None:
        _claimed_scan(ctx, node, body, bp, counters, steps, carries, seqs, mask, consts,
                      c_out, ys, saved, pong)
        return
    for src, dst in zip(carries, c_out):
        _copy(ctx, dst, src)
    ctx.barrier()
    with for_range(b, 0, steps, "step") as p:
        cur, args, res = _step_args(b, p, steps, a["reverse"], c_out, pong, seqs, mask,
                                    consts, ys)
        if every:
            _save(ctx, p, every, cur, saved)
        emit_graph(ctx, body, bp, args, res, base, copy_outputs=True, index_offset=-1)
        ctx.barrier()
    if steps % 2:                              # the last step wrote the scratch side
        for dst, src in zip(c_out, pong):
            _copy(ctx, dst, src)
        ctx.barrier()


@dataclass
class _StepTask:
    """A task of a claimed scan's step: ``role`` "save" (the carries), "nodes" (body nodes
    ``task.nodes``; of the region ``region``'s body when set), "tail" (that region's
    elementwise tail as one loop nest) or "copies" (the outputs of the body, or of the
    region, that are copies)."""
    task: Task
    role: str
    region: int | None = None


def _flat_region(node, threads: int, features: str) -> int | None:
    """Where the elementwise tail of a step's ``fused`` region starts (its node count if
    it has none) when the step runs the region's parts as tasks of its own (``_fused``'s
    nodes before the tail, then the tail nest, then copies: the region would meet between
    them): a region of no kind with a lowering of its own (or an epilogue that is not a
    convolution's) that is not one nest. None otherwise."""
    from .ops_conv import epilogue_conv
    if node.op != "fused" or _nest_shape(node):
        return None
    kind, body = node.attrs["kind"], node.attrs["body"]
    if kind in FUSED_KINDS and not (kind == "epilogue"
                                    and epilogue_conv(body, threads, features) is None):
        return None
    if kind == "reduction":
        return None
    k = _tail_start(body)
    return len(body.nodes) if k is None else k


def _step_tasks(node, body: Graph, bp, threads: int, features: str) -> list[_StepTask]:
    """The tasks of one step of a claimed scan: the save of the carries (one share, on
    steps the schedule saves), the body's nodes as top-level tasks are (``claim_tasks``; a
    scan inside meets; a region that would meet between its parts as those parts,
    ``_flat_region``), the copies of its outputs (one share)."""
    tasks = [_StepTask(Task("one", []), "save")] if node.attrs["save_every"] else []
    for t in claim_tasks(body.nodes, bp.skip, threads, features):
        i = t.nodes[0]
        k = _flat_region(body.nodes[i], threads, features) if t.kind == "all" else None
        if k is None:
            tasks.append(_StepTask(Task("all", t.nodes) if t.kind == "steps" else t, "nodes"))
            continue
        region = body.nodes[i].attrs["body"]
        rp = plan(region, features, threads)
        for r in claim_tasks(region.nodes[:k], rp.skip, threads, features):
            tasks.append(_StepTask(Task("all", r.nodes) if r.kind == "steps" else r,
                                   "nodes", i))
        if k < len(region.nodes):
            tasks.append(_StepTask(Task("shares", [], threads * SHARES_PER_THREAD), "tail",
                                   i))
        if rp.copies:
            tasks.append(_StepTask(Task("one", []), "copies", i))
    if bp.copies:
        tasks.append(_StepTask(Task("one", []), "copies"))
    return tasks


def _scan_tasks(node, threads: int, features: str) -> list[_StepTask]:
    """``_step_tasks`` of the scan's body."""
    body, bp, _, _ = _scan_layout(node, threads, features)
    return _step_tasks(node, body, bp, threads, features)


def _scan_pairs(node, threads: int, features: str) -> int:
    """Counter pairs of a claimed scan (``module.STEPPED``): the initial carries' copy and
    one per task of a step (the last step's end uses the task's own pair)."""
    return 1 + len(_scan_tasks(node, threads, features))


STEPPED["scan"] = _scan_pairs


def _claimed_scan(ctx, node, body, bp, counters, steps, carries, seqs, mask, consts, c_out,
                  ys, saved, pong) -> None:
    """The scan on threads that claim each step's work (``module.claim_step``): no
    barrier; a thread that fell behind finds the step's shares taken and catches up. The
    copy of the initial carries, then per step its tasks (``_step_tasks``), then, once the
    last step is done, the copy of the carries an odd step count leaves in the scratch; the
    thread that makes that last copy marks the node's task done (pair 0)."""
    a = node.attrs
    b = ctx.b
    every = a["save_every"]
    base = ctx.node_scratch
    tasks = _scan_tasks(node, ctx.max_threads, ctx.features)

    def init(_):
        for src, dst in zip(carries, c_out):
            _copy(ctx, dst, src)
    claim_step(ctx, counters, 1, i64(0), 1, init)
    last = len(tasks) + 1                      # the pair of a step's last task
    kinds = [t.task.shares if t.task.kind == "shares" else "all" if t.task.kind == "all"
             else 1 for t in tasks]

    def ended(n):            # (done counter, count) pairs: the carries copied, n steps done
        return [step_done(ctx, counters, 1, i64(1), 1),
                step_done(ctx, counters, last, n, kinds[-1])]
    with for_range(b, 0, steps, "step") as p:
        cur, args, res = _step_args(b, p, steps, a["reverse"], c_out, pong, seqs, mask,
                                    consts, ys)
        bufs = buffers(ctx, bp, args, res, base)
        swapped_inputs(bufs, body, ())
        regions = {t.region: _region_bufs(ctx, body, bp, bufs, base, t.region)
                   for t in tasks if t.region is not None}
        after = ended(p)
        for k, st in enumerate(tasks):
            if st.role == "save":
                run = lambda _: _save(ctx, p, every, cur, saved)            # noqa: E731
            elif st.region is None:
                run = (_body_task(ctx, body, bp, bufs, base, st.task) if st.role == "nodes"
                       else lambda _: copy_outputs_of(ctx, body, bp, bufs, res))  # noqa: E731
            else:
                run = _region_task(ctx, st, *regions[st.region])
            after = [claim_step(ctx, counters, 2 + k, p, kinds[k], run, after)]

    def finish(_):
        if steps % 2:                          # the last step wrote the scratch side
            for dst, src in zip(c_out, pong):
                _copy(ctx, dst, src)
    claim_step(ctx, counters, 0, i64(0), 1, finish, ended(i64(steps)))


def _body_task(ctx, body, bp, bufs, base, task):
    """The code of one of a claimed scan's body tasks (``run`` of ``claim_step``)."""
    def run(share):
        for i in task.nodes:
            node = body.nodes[i]
            emit_node(ctx, bp, i, node, get_lowering(node), bufs, base,
                      claimed=task.kind == "shares")
    return run


def _region_bufs(ctx, body, bp, bufs, base, i: int):
    """(region body, its plan, its values' buffers, its scratch, its output pointers) of
    the step body's region node ``i`` (as ``_fused`` sets them up)."""
    b = ctx.b
    node = body.nodes[i]
    region = node.attrs["body"]
    rp = plan(region, ctx.features, ctx.max_threads)
    ins, outs = node_bufs(bp, i, node, bufs)
    scr = b.gep(base, [i64(bp.scratch[i])], inbounds=True) if i in bp.scratch else None
    p8 = ir.PointerType(ir.IntType(8))
    res = [b.bitcast(o.ptr, p8) for o in outs]
    rbufs = buffers(ctx, rp, [b.bitcast(x.ptr, p8) for x in ins], res, scr)
    swapped_inputs(rbufs, region, ins)
    return region, rp, rbufs, scr, res


def _region_task(ctx, st: _StepTask, region, rp, rbufs, scr, res):
    """The code of a part of a step's region (``_flat_region``)."""
    def run(share):
        if st.role == "nodes":
            for j in st.task.nodes:
                node = region.nodes[j]
                emit_node(ctx, rp, j, node, get_lowering(node), rbufs, scr,
                          claimed=st.task.kind == "shares")
        elif st.role == "tail":
            tail = region.nodes[_tail_start(region):]
            made = {v for n in tail for v in n.outputs}
            sources = list(dict.fromkeys(v for n in tail for v in n.inputs if v not in made))
            results = [v for v in dict.fromkeys(region.outputs) if v in made]
            _one_loop_nest(ctx, _Region(tail), sources, results,
                           [rbufs[v] for v in sources], [rbufs[v] for v in results])
        else:
            copy_outputs_of(ctx, region, rp, rbufs, res)
    return run


def _steps(node) -> int:
    from irgraph.ops.recurrence import num_steps
    return num_steps([v.type for v in node.inputs], node.attrs)


def _copy(ctx, dst: Buf, src: Buf) -> None:
    st = row_strides(dst.shape)
    copy_strided(ctx, dst, src, dst.shape, st, st)


def _save(ctx, p, every: int, c_out, saved) -> None:
    b = ctx.b
    with b.if_then(b.icmp_signed("==", b.srem(p, i64(every)), i64(0))):
        slot = b.sdiv(p, i64(every))
        for c, s in zip(c_out, saved):
            size = prod(c.shape)
            dst = Buf(b.gep(s.ptr, [b.mul(slot, i64(size))]), c.type)
            _copy(ctx, dst, c)
    ctx.barrier()


# ---------------------------------------------------------------- fused regions


def _loop_fusable(body: Graph, nodes) -> tuple[int, ...] | None:
    """The common output shape when ``nodes`` can run as one elementwise loop nest."""
    if not nodes or not body.outputs:
        return None
    shape = body.outputs[0].shape
    for n in nodes:
        if n.op not in SCALAR:
            return None
        for v in list(n.inputs) + list(n.outputs):
            try:
                if tuple(_bshape(v.shape, shape)) != tuple(shape):
                    return None
            except ValueError:
                return None
    return shape


def _bshape(a, b):
    import numpy as np
    return np.broadcast_shapes(a, b)


@scratch("fused")
def _fused_scratch(node, threads, features) -> int:
    """A region its kind's lowering takes needs that lowering's scratch alone (a
    conv_chain's bands, not the expanded tensors of its body run node by node: MobileNetV2
    at batch 8, an arena of 247 MB -> 20 MB); any other, its body's arena as well."""
    own = FUSED_KIND_SCRATCH.get(node.attrs["kind"])
    extra = own(node, threads, features) if own is not None else 0
    if kind_takes(node, threads, features):
        return extra
    return max(plan(node.attrs["body"], features, threads).arena_bytes, extra)


def _nest_shape(node) -> bool:
    """Whether ``_fused`` runs the region as one loop nest over its outputs' shape."""
    body = node.attrs["body"]
    shape = _loop_fusable(body, body.nodes)
    return shape is not None and all(o.shape == tuple(shape) for o in node.outputs)


def _one_nest(node) -> bool:
    """A region run as one loop nest loads each element's operands before it stores its
    results, so a result may overwrite an operand of its shape (an optimizer update with
    the elementwise nodes making its gradient: passes.fusion's ``fuse_updates``)."""
    return (node.op == "fused" and node.attrs["kind"] not in FUSED_KINDS
            and _nest_shape(node))


SAME_INDEX_RULES.append(_one_nest)


def _generic_region(node) -> bool:
    """A region run as one loop nest (no kind with a lowering of its own): its code reads
    its sizes only through that nest, so one kernel serves every size (``size_generic``;
    e.g. the optimizer update of each parameter)."""
    return node.attrs["kind"] not in FUSED_KINDS and _nest_shape(node)


def _region_meets(node, threads: int, features: str) -> bool:
    """All threads must run the region at once unless it is one loop nest (its other forms
    meet between their parts and keep intermediates in the node's scratch) or its kind's
    own lowering takes it and says it does not meet (``FUSED_KIND_MEETS``)."""
    own = FUSED_KIND_MEETS.get(node.attrs["kind"])
    meets = own(node, threads, features) if own is not None else None
    return not _generic_region(node) if meets is None else meets


@lowering("fused", parallel=True, size_generic=_generic_region, meets=_region_meets)
def _fused(ctx, node, ins, outs):
    """Elementwise regions: one loop nest. Otherwise the longest elementwise tail (an
    epilogue: bias, activation, residual) becomes one loop nest after the nodes before it
    (the anchor: matmul, conv, a reduction) are lowered one by one. Kinds with a lowering
    of their own (``FUSED_KINDS``: attention, normalize) use it when it takes the body."""
    special = FUSED_KINDS.get(node.attrs["kind"])
    if special is not None and special(ctx, node, ins, outs):
        return
    body = node.attrs["body"]
    if _nest_shape(node):
        _one_loop_nest(ctx, body, body.inputs, body.outputs, ins, outs)
        return
    bp = plan(body, ctx.features, ctx.max_threads)
    p8 = ir.PointerType(ir.IntType(8))
    b = ctx.b
    args = [b.bitcast(x.ptr, p8) for x in ins]
    res = [b.bitcast(o.ptr, p8) for o in outs]
    if node.attrs["kind"] == "reduction" and _reduction_region(ctx, body, args, res):
        return
    k = _tail_start(body)
    if k is None:
        emit_graph(ctx, body, bp, args, res, ctx.node_scratch, index_offset=-1, swapped=ins)
        return
    bufs = buffers(ctx, bp, args, res, ctx.node_scratch)
    swapped_inputs(bufs, body, ins)
    emit_nodes(ctx, body.nodes[:k], bufs, bp, ctx.node_scratch, -1)
    _tail_nest(ctx, body, body.nodes[k:], bufs)
    copy_outputs_of(ctx, body, bp, bufs, res)


def _tail_nest(ctx, body: Graph, tail, bufs) -> None:
    """The elementwise ``tail`` of a region's body as one loop nest over its own sources,
    storing the body outputs it makes."""
    made = {v for n in tail for v in n.outputs}
    sources = list(dict.fromkeys(v for n in tail for v in n.inputs if v not in made))
    results = [v for v in dict.fromkeys(body.outputs) if v in made]
    _one_loop_nest(ctx, _Region(tail), sources, results, [bufs[v] for v in sources],
                   [bufs[v] for v in results])
    ctx.barrier()


# the ops a reduction region reduces by (fusion's regions are built on the same query)
REDUCE_OPS = ops_with("reduction")


def _reduction_region(ctx, body: Graph, args, res) -> bool:
    """prologue (elementwise over S) -> one reduction -> epilogue (elementwise) as two loop
    nests: the reduction loop computes the prologue per element it reads (the S-shaped
    value never exists), then one nest applies the epilogue. False if the body is not of
    that form (the caller lowers it otherwise)."""
    nodes = body.nodes
    r = next((i for i, n in enumerate(nodes) if n.op in REDUCE_OPS), None)
    if r is None or r == 0:
        return False
    red, pro, tail = nodes[r], nodes[:r], nodes[r + 1:]
    shape = red.inputs[0].shape
    made = {v for n in pro for v in n.outputs}
    written = [v for v in dict.fromkeys(body.outputs) if v in made]    # S-shaped results
    if (any(n.op not in SCALAR for n in pro + tail) or not _broadcasts(pro, shape)
            or red.inputs[0] not in made or any(v.shape != shape for v in written)
            or not {v for n in tail for v in n.inputs} & made <= set(written)):
        return False
    if tail and not _broadcasts(tail, red.outputs[0].shape):
        return False
    bp = plan(body, ctx.features, ctx.max_threads)
    bufs = buffers(ctx, bp, args, res, ctx.node_scratch)
    sources = list(dict.fromkeys(v for n in pro for v in n.inputs if v not in made))
    x = red.inputs[0]
    if x not in written and any(v.shape != shape for v in sources):
        # evaluating a broadcasting prologue per element read would cost an index
        # decomposition per element: one vector nest writes the reduced value instead
        written = written + [x]
    if written:            # results of shape S: one nest writes them all
        _one_loop_nest(ctx, _Region(pro), sources, written, [bufs[v] for v in sources],
                       [bufs[v] for v in written])
        ctx.barrier()
    src = bufs[x] if x in written else _Computed(ctx, pro, x, sources,
                                                 [bufs[v] for v in sources])
    get_lowering(red).fn(ctx, red, [src], [bufs[red.outputs[0]]])
    ctx.barrier()
    if tail:
        _tail_nest(ctx, body, tail, bufs)
    copy_outputs_of(ctx, body, bp, bufs, res)
    return True


class _Computed(Buf):
    """A tensor no buffer holds: ``load`` evaluates the prologue nodes at that element."""

    def __init__(self, ctx, nodes, value, sources, bufs):
        super().__init__(None, value.type)
        self.ctx, self.nodes, self.value = ctx, nodes, value
        self.sources, self.bufs = sources, bufs
        self.strides = [broadcast_strides(v.shape, value.shape) for v in sources]
        self.own = row_strides(value.shape)

    def load(self, b, offset):
        idx, rest = [], offset
        for st in self.own:                       # flat offset -> index of each axis
            idx.append(b.sdiv(rest, i64(st)) if st > 1 else rest)
            rest = b.srem(rest, i64(st)) if st > 1 else i64(0)
        env = {}
        for v, buf, st in zip(self.sources, self.bufs, self.strides):
            if v.shape == self.value.shape:
                off = offset
            else:
                off = i64(0)
                for i, s in zip(idx, st):
                    off = b.add(off, b.mul(i, i64(s))) if s else off
            env[v] = buf.load(b, off)
        for n in self.nodes:
            env[n.outputs[0]] = SCALAR[n.op](self.ctx, n, [env[v] for v in n.inputs])
        return env[self.value]


class _Region:
    """A run of body nodes seen as a loop-nest body (nodes only)."""

    def __init__(self, nodes):
        self.nodes = list(nodes)


def _tail_start(body: Graph) -> int | None:
    """Index where the longest loop-fusable run of nodes ending the body starts, when that
    run has at least 2 nodes and makes every body output it computes at one shape."""
    nodes = body.nodes
    best = None
    for k in range(len(nodes) - 1, -1, -1):
        tail = nodes[k:]
        made = {v for n in tail for v in n.outputs}
        outs = [v for v in body.outputs if v in made]
        if not outs or len({v.shape for v in outs}) != 1:
            break
        if any(n.op not in SCALAR for n in tail) or not _broadcasts(tail, outs[0].shape):
            break
        best = k
    return best if best is not None and len(nodes) - best >= 2 and best > 0 else None


def _broadcasts(nodes, shape) -> bool:
    try:
        return all(tuple(_bshape(v.shape, shape)) == tuple(shape)
                   for n in nodes for v in list(n.inputs) + list(n.outputs))
    except ValueError:
        return False


def _one_loop_nest(ctx, body, sources, results, ins, outs) -> None:
    """Every node of ``body`` computed per element of the output shape, reading the values
    ``sources`` (buffers ``ins``) and storing ``results`` (buffers ``outs``): no
    intermediate buffers."""
    shape = outs[0].shape
    strides = [row_strides(shape)] * len(outs) + [broadcast_strides(x.shape, shape)
                                                  for x in ins]
    from .builder import strided_nest
    from .elementwise import loop_dims
    cshape, cstrides = loop_dims(ctx, shape, strides)
    b = ctx.b

    def step(offs):
        env = {v: x.load(b, o) for v, x, o in zip(sources, ins, offs[len(outs):])}
        for n in body.nodes:
            r = SCALAR[n.op](ctx, n, [env[v] for v in n.inputs])
            env.update(zip(n.outputs, r) if len(n.outputs) > 1 else [(n.outputs[0], r)])
        for o, off, v in zip(outs, offs, results):
            o.store(b, off, env[v])
    if not cshape:
        with ctx.thread0():
            step([i64(0)] * len(strides))
        return
    with strided_nest(b, cshape, cstrides, outer=ctx.split(cshape[0])) as offs:
        step(offs)

