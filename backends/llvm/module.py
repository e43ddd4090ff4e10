"""From a graph to ONE LLVM module with ONE entry function.

    void entry(i8** args, i64 tid, i64 nthreads)

``args`` holds, in order: the graph's arguments (inputs then parameters), its outputs, the
arena (intermediates), the control block (i64: error code, error node, barrier count,
barrier generation, per-node cycles when profiling, then two counters per task), the
per-thread packing scratch and the prepared-weights buffer (``Plan.prep``: what lowerings
derive from constant parameters, kept from one call to the next). Every thread runs the
entry. With several threads the top-level
nodes run as TASKS, in order (``claim_tasks``): a parallel node is ``claim_shares`` shares,
each run by whichever thread claims it first (an atomic counter; the lowering sees the share
index as ``ctx.tid`` of that many); a run of nodes too small to split is one share; a node
whose lowering meets (``Lowering.meets``: barriers between its phases, per-thread scratch)
is run by all threads at once, as before. A thread waits before a task until every share of
the task before it is done (so, by induction, every earlier node: the arena's reuse of
freed blocks is safe), spinning, then sleeping on the futex; the thread that completes a
task's last share wakes the sleepers. A descheduled thread holding no share stalls nobody:
the others claim its shares, and it finds them claimed when it comes back. Which thread
runs a share changes nothing in the results.

The plan (buffer layout) is pure Python and cheap, so a cache hit needs no IR at all.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from llvmlite import ir

from irgraph import Graph, IRError, Value
from irgraph.ir import all_nodes
from irgraph.liveness import last_reads

from .builder import (I64, PTR, STORAGE, VOID, Buf, broadcast_strides, coalesce, i64, row_strides)
from .gemm_tiling import workspace_bytes
from .elementwise import RUNTIME_DIMS
from .jit import canonical_node, generic_node
from .lowering import (PREPARES, SCRATCH, Ctx, get_lowering, load_ptr, prep_stride,
                       reads_same_index)
from . import workers
from .workers import worth_parallel

ALIGN = 64
ENTRY = "irgraph_entry"


@dataclass
class Plan:
    """Where each value lives: ("arg", i), ("out", j) or ("arena", byte offset)."""
    slots: dict[Value, tuple[str, int]] = field(default_factory=dict)
    arena_bytes: int = 0
    # output j that is a copy of an argument ("arg", i) or of an earlier output ("out", k)
    copies: dict[int, tuple[str, int]] = field(default_factory=dict)
    # node index -> arena offset of the scratch it needs while it runs
    scratch: dict[int, int] = field(default_factory=dict)
    workspace_bytes: int = 0
    # (matmul index, operand index) -> the value a folded transpose would have read
    views: dict[tuple[int, int], Value] = field(default_factory=dict)
    skip: set[int] = field(default_factory=set)     # transposes nobody needs to run
    # matmul index -> the transpose of its result it writes instead (C^T = B^T A^T)
    t_out: dict[int, Value] = field(default_factory=dict)
    # donated output j -> argument i: the output is written into the argument's buffer
    inplace: dict[int, int] = field(default_factory=dict)
    # reshape output -> the value whose buffer it shares (the reshape is not run)
    alias: dict[Value, Value] = field(default_factory=dict)
    parallel: bool = False        # some node splits its work across threads
    profile: bool = False         # each thread adds its cycles in top-level node i to ctl[4 + i]
    # the top-level nodes as tasks when several threads run them (``claim_tasks``)
    tasks: list["Task"] = field(default_factory=list)
    task_base: int = 4            # ctl index of the first task's counters
    # node index -> offset of its prepared-weights block (``lowering.PREPARES``) in the
    # executable's prepared buffer (``prep_bytes``), kept across calls; ``prep_args``: the
    # argument positions those blocks are derived from (a new array there: prepare again)
    prep: dict[int, int] = field(default_factory=dict)
    prep_bytes: int = 0
    prep_args: tuple[int, ...] = ()
    prep_flags: list[int] = field(default_factory=list)   # byte offsets of every region's state

    def ctl_words(self, n_nodes: int) -> int:
        """The control block's length (i64 words) for a graph of ``n_nodes`` nodes."""
        return self.task_base + sum(t.words for t in self.tasks) if self.tasks else (
            4 + (n_nodes if self.profile else 0))

    def task_offset(self, t: int) -> int:
        """ctl index of task ``t``'s counters."""
        return self.task_base + sum(x.words for x in self.tasks[:t])


TASK_WORDS = 16       # per task: claim counter at +0, done counter at +8 (own cache lines)
SHARES_PER_THREAD = 2  # a claimed node's shares per thread (GEMMs: 1, see claim_shares)


def claim_shares(node, max_threads: int) -> int:
    """How many shares a claimed node is cut into, fixed at compile time (the results do
    not depend on which threads, or how many, run them): ``SHARES_PER_THREAD`` per thread,
    so a thread that finishes early takes over work; one per thread for a GEMM, each of
    whose shares packs the whole left operand again (also a region whose anchor, its
    first node, is one: a convolution with its epilogue)."""
    gemm = node.op in _GEMM_OPS or (node.op == "fused" and node.attrs["body"].nodes
                                    and node.attrs["body"].nodes[0].op in _GEMM_OPS)
    return max_threads * (1 if gemm else SHARES_PER_THREAD)


@dataclass
class Task:
    """Top-level nodes run as one unit: ``kind`` "one" (one share: nodes too small to
    split, run in order by one thread), "shares" (a parallel node cut into ``shares``
    claimed shares), "all" (a node every thread runs at once: its lowering meets) or
    "steps" (a node every thread enters whose lowering claims the work of each of its steps
    itself, ``STEPPED``: its counters follow the task's own, ``words`` in all; the thread
    that ends its last step marks the task done)."""
    kind: str
    nodes: list[int]
    shares: int = 1
    words: int = 16


# op -> the number of claim/done counter pairs (``TASK_WORDS`` each, after the task's own)
# the lowering of such a node claims its steps' work with (``claim_step``), as a function
# of (node, max_threads, features); 0: it meets as an "all" task
STEPPED: dict = {}


def claim_tasks(nodes, skip, max_threads: int, features: str = "") -> list[Task]:
    """The nodes (but ``skip``) as tasks, in order: consecutive small nodes make one task
    (``features``: the CPU's, some lowerings' forms depend on them)."""
    tasks: list[Task] = []
    for i, node in enumerate(nodes):
        if i in skip:
            continue
        if runs_parallel(node):
            stepped = STEPPED.get(node.op)
            pairs = stepped(node, max_threads, features) if stepped is not None else 0
            if pairs:
                tasks.append(Task("steps", [i], words=TASK_WORDS * (1 + pairs)))
            elif get_lowering(node).meets_for(node, max_threads, features):
                tasks.append(Task("all", [i]))
            else:
                tasks.append(Task("shares", [i], claim_shares(node, max_threads)))
        elif tasks and tasks[-1].kind == "one":
            tasks[-1].nodes.append(i)
        else:
            tasks.append(Task("one", [i]))
    return tasks


def _round(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


class _Arena:
    """Best-fit allocator over one byte range; freed blocks are reused (liveness-based)."""

    def __init__(self):
        self.free: list[tuple[int, int]] = []      # (offset, size)
        self.top = 0

    def alloc(self, size: int) -> int:
        size = _round(max(size, 1))
        fits = [(s, o) for o, s in self.free if s >= size]
        if fits:
            s, o = min(fits)
            self.free.remove((o, s))
            if s > size:
                self.free.append((o + size, s - size))
            return o
        o, self.top = self.top, self.top + size
        return o

    def release(self, offset: int, size: int) -> None:
        self.free.append((offset, _round(max(size, 1))))
        self.free.sort()
        merged: list[tuple[int, int]] = []
        for o, s in self.free:
            if merged and merged[-1][0] + merged[-1][1] == o:
                merged[-1] = (merged[-1][0], merged[-1][1] + s)
            else:
                merged.append((o, s))
        self.free = merged


def plan(graph: Graph, features: str, threads: int, constant=frozenset()) -> Plan:
    """Buffer layout: graph outputs get their own buffers, intermediates share one arena
    (a block is reused once its value's last reader has run), node scratch likewise.
    ``constant``: the argument positions whose values the caller keeps from call to call
    (``_prepared``)."""
    p = Plan()
    for i, v in enumerate(graph.arguments):
        p.slots[v] = ("arg", i)
    produced = {v for n in graph.nodes for v in n.outputs}
    for j, v in enumerate(graph.outputs):
        if v in p.slots:
            p.copies[j] = p.slots[v]
        elif v in produced:
            p.slots[v] = ("out", j)
    last = last_reads(graph)
    p.views, p.skip = _folded_transposes(graph.nodes, p)
    p.t_out = _transposed_products(graph.nodes, p)
    for (i, _), src in p.views.items():          # a folded operand is read by the matmul
        last[src] = max(last.get(src, i), i)
    p.alias = _reshape_aliases(graph, p)
    for out, root in p.alias.items():            # a view keeps its root's buffer alive
        last[root] = max(last.get(root, -1), last.get(out, -1))
    p.inplace = _inplace_donations(graph, p, last)
    for j, i in p.inplace.items():
        p.slots[graph.outputs[j]] = ("arg", i)
    arena = _Arena()
    dying: dict[int, list[Value]] = {}
    for i, node in enumerate(graph.nodes):
        if i in p.t_out:            # the transpose's buffer, taken when the matmul runs
            t, (m,) = p.t_out[i], node.outputs
            if t not in p.slots:
                p.slots[t] = ("arena", arena.alloc(t.type.nbytes))
                dying.setdefault(max(last.get(t, i), i), []).append(t)
            p.slots[m] = p.slots[t]
        for v in node.outputs:
            if v in p.alias:
                p.slots[v] = p.slots[p.alias[v]]
            elif v not in p.slots:
                p.slots[v] = ("arena", arena.alloc(v.type.nbytes))
                dying.setdefault(max(last.get(v, i), i), []).append(v)
        rule = SCRATCH.get(node.op)
        if rule is not None:
            size = rule(node, threads, features)
            p.scratch[i] = arena.alloc(size)
            arena.release(p.scratch[i], size)     # free again once the node has run
        for v in dying.pop(i, ()):
            arena.release(p.slots[v][1], v.type.nbytes)
    p.arena_bytes = _round(arena.top)
    _prepared(graph, p, constant, features, threads)
    p.parallel = any(runs_parallel(n) for i, n in enumerate(graph.nodes) if i not in p.skip)
    if any(n.op in _GEMM_OPS for n in all_nodes(graph)):
        p.workspace_bytes = workspace_bytes(features)
    return p


def _prepared(graph: Graph, p: Plan, constant, features: str, threads: int) -> None:
    """The nodes whose lowering derives data from one operand alone (``PREPARES``) where
    that operand is a constant argument: each gets a block of the prepared buffer, which
    its first call fills and the next calls read."""
    top = 0
    used = set()
    for i, node in enumerate(graph.nodes):
        rule = PREPARES.get(node.op)
        got = rule(node, threads, features) if rule is not None and i not in p.skip else None
        if got is None:
            continue
        k, regions, size = got
        slot = p.slots.get(node.inputs[k])
        if slot is None or slot[0] != "arg" or slot[1] not in constant:
            continue
        p.prep[i] = top
        p.prep_flags += [top + r * prep_stride(size) for r in range(regions)]
        top += _round(regions * prep_stride(size))
        used.add(slot[1])
    p.prep_bytes = top
    p.prep_args = tuple(sorted(used))


def plan_top(graph: Graph, features: str, threads: int, profile: bool = False,
             constant=frozenset()) -> Plan:
    """``plan`` of a graph the executable runs (its top level): with several threads, its
    nodes as tasks (``claim_tasks``), their counters after the profile's in the control
    block; ``constant`` as ``plan``'s."""
    p = plan(graph, features, threads, constant)
    p.profile = profile
    if p.parallel and threads > 1:
        p.tasks = claim_tasks(graph.nodes, p.skip, threads, features)
        p.task_base = 4 + (len(graph.nodes) if profile else 0)
    return p


_GEMM_OPS = {"matmul", "matmul_f32", "conv", "conv_fft", "conv_input_grad", "conv_kernel_grad"}


def build_module(graph: Graph, p: Plan, features: str, max_threads: int,
                 triple: str = "", opt: int = 3, on_kernel=None, known=None) -> "Program":
    """The entry function in a module of its own, and every kernel it calls (one per
    distinct node code, see ``_node_function``) in modules of their own; ``on_kernel(k)``
    is called with each new ``Kernel`` as soon as it is built (its compile can start while
    the rest of the IR is being built); ``known(signature)`` may name the symbol of a kernel
    compiled before for that node signature (its code is then not built: it is not in
    ``Program.kernels``)."""
    prog = Program(triple, opt)
    prog.on_kernel = on_kernel
    prog.known = known
    module = ir.Module(name="irgraph_entry")
    module.triple = triple
    prog.entry = module
    fnty = ir.FunctionType(VOID, [ir.PointerType(PTR), I64, I64])
    fn = ir.Function(module, fnty, ENTRY)
    args, tid, nthreads = fn.args
    args.name, tid.name, nthreads.name = "args", "tid", "nthreads"
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    n_args, n_outs = len(graph.arguments), len(graph.outputs)
    base = n_args + n_outs
    arena = load_ptr(b, args, base)
    ctl = b.bitcast(load_ptr(b, args, base + 1), ir.PointerType(I64))
    ws = load_ptr(b, args, base + 2)
    ctx = Ctx(module, fn, b, tid, nthreads, ctl, ws, p.workspace_bytes, max_threads, features)
    ctx.program = prog
    if p.prep:
        ctx.prep_base = load_ptr(b, args, base + 3)
    arg_ptrs = [load_ptr(b, args, i) for i in range(n_args)]
    out_ptrs = [load_ptr(b, args, n_args + j) for j in range(n_outs)]
    emit_graph(ctx, graph, p, arg_ptrs, out_ptrs, arena, copy_outputs=False)
    b.ret_void()
    return prog


@dataclass
class Kernel:
    """One kernel function: its symbol (a hash of its code and optimization level), the text
    of the module that defines it, that level, and the op it was made for."""
    symbol: str
    text: str
    opt: int
    op: str


class Program:
    """What a graph compiles to: the entry module and the kernels it (and they) call, each
    kernel defined once however many nodes run its code."""

    def __init__(self, triple: str, opt: int):
        self.triple = triple
        self.opt = opt
        self.entry: ir.Module | None = None
        self.kernels: dict[str, Kernel] = {}
        self.memo: dict[str, str] = {}        # node signature -> kernel symbol
        self.calls = 0                        # kernel calls emitted (nodes lowered)
        self.on_kernel = None                 # called with each new Kernel
        self.known = None                     # node signature -> symbol compiled before
        self.signatures: dict[str, str] = {}  # symbol -> the node signature that built it

    def entry_text(self, inline: bool = False) -> str:
        """The entry module's text; with ``inline``, with every kernel of the cheap level
        (``CHEAP_PREFIX``) defined in it too: those compile as one module with the entry
        and live in the graph's cache entry (a disk entry each would cost more than
        compiling them)."""
        if not inline:
            return str(self.entry)
        return self._combined([k for k in self.kernels.values() if k.opt == 0])

    def __str__(self) -> str:
        """All of it as ONE module's text (inspection: ``llvm_ir()``)."""
        return self._combined(list(self.kernels.values()))

    def _combined(self, kernels: list[Kernel]) -> str:
        """The entry and ``kernels`` as one module's text: the kernels' private helpers
        renamed apart, each declaration once, none of a function defined here."""
        parts = _metadata_apart([str(self.entry)]
                                + [_local_names_apart(k.symbol, k.text) for k in kernels])
        defined = {m.group(1) for t in parts for m in _DEFINE.finditer(t)}
        seen: set[str] = set()
        lines: list[str] = []
        for i, text in enumerate(parts):
            for line in text.splitlines():
                if i and line.startswith(("; ModuleID", "target ", "source_filename")):
                    continue
                if line.startswith("declare "):
                    m = _DECLARE.match(line)
                    if line in seen or (m and m.group(1) in defined):
                        continue
                    seen.add(line)
                lines.append(line)
        return "\n".join(lines) + "\n"


_DEFINE = re.compile(r'^define [^@\n]*@"([^"]+)"', re.M)
_DECLARE = re.compile(r'^declare [^@\n]*@"([^"]+)"')


_METADATA_ID = re.compile(r"!(\d+)\b")
# a quoted token: a constant's bytes (c"..."), a quoted name or a metadata string; LLVM writes
# a quote inside one as \22, so a token never holds one
_QUOTED = re.compile(r'("[^"]*")')


def _metadata_apart(parts: list[str]) -> list[str]:
    """The parts with their numbered metadata (``!0 = !{...}``, each module counting from
    0) shifted apart, so that one module's text can hold them all. Only outside quoted
    tokens: a constant table's bytes may read ``!1`` (0x21 then a digit), and renumbering
    them would change the constant's values, or its length."""
    out, base = [], 0
    for text in parts:
        pieces = _QUOTED.split(text)          # odd positions: the quoted tokens
        ids = [int(m) for p in pieces[::2] for m in _METADATA_ID.findall(p)]
        if base and ids:
            text = "".join(p if i % 2 else
                           _METADATA_ID.sub(lambda m: f"!{int(m.group(1)) + base}", p)
                           for i, p in enumerate(pieces))
        out.append(text)
        base += max(ids, default=-1) + 1
    return out


def _local_names_apart(symbol: str, text: str) -> str:
    """``text`` with its private globals and internal functions prefixed by ``symbol``."""
    names = set(re.findall(r'^@"([^"]+)" = private ', text, re.M))
    names |= set(re.findall(r'^define internal [^@\n]*@"([^"]+)"', text, re.M))
    for name in sorted(names, key=len, reverse=True):
        text = text.replace(f'@"{name}"', f'@"{symbol}.{name}"')
    return text


def emit_graph(ctx: Ctx, graph: Graph, p: Plan, arg_ptrs, out_ptrs, arena,
               copy_outputs: bool = True, index_offset: int = 0, swapped=()) -> None:
    """Emit ``graph``'s nodes with its values in the given buffers (a subgraph body runs
    through this too). With ``copy_outputs``, outputs that are arguments or repeated values
    are copied into their buffers here (the top level lets the executable do it).
    ``swapped``: the argument Bufs, where some hold their tensor's last two axes swapped."""
    bufs = buffers(ctx, p, arg_ptrs, out_ptrs, arena)
    swapped_inputs(bufs, graph, swapped)
    emit_nodes(ctx, graph.nodes, bufs, p, arena, index_offset,
               profile=p.profile and index_offset == 0 and not copy_outputs)
    if copy_outputs:
        copy_outputs_of(ctx, graph, p, bufs, out_ptrs)


def buffers(ctx: Ctx, p: Plan, arg_ptrs, out_ptrs, arena) -> dict[Value, Buf]:
    """The buffer of every value of a planned graph."""
    b = ctx.b
    bufs: dict[Value, Buf] = {}
    for v, (kind, k) in p.slots.items():
        raw = (b.gep(arena, [i64(k)], inbounds=True) if kind == "arena"
               else arg_ptrs[k] if kind == "arg" else out_ptrs[k])
        bufs[v] = Buf(b.bitcast(raw, ir.PointerType(STORAGE[v.dtype]), name="v"), v.type)
    return bufs


def copy_outputs_of(ctx: Ctx, graph: Graph, p: Plan, bufs, out_ptrs) -> None:
    """Outputs that are arguments or repeated values, copied into their own buffers."""
    b = ctx.b
    if p.copies:
        from .elementwise import copy_strided
        from .builder import row_strides
        for j, (kind, k) in p.copies.items():
            v = graph.outputs[j]
            dst = Buf(b.bitcast(out_ptrs[j], ir.PointerType(STORAGE[v.dtype])), v.type)
            src = bufs[graph.arguments[k]] if kind == "arg" else Buf(
                b.bitcast(out_ptrs[k], ir.PointerType(STORAGE[v.dtype])), v.type)
            st = row_strides(v.shape)
            copy_strided(ctx, dst, src, v.shape, st, st)
        ctx.barrier()


def emit_nodes(ctx: Ctx, nodes, bufs: dict[Value, Buf], p: Plan, arena,
               index_offset: int = 0, profile: bool = False) -> None:
    """Emit each node's lowering in order: the top level of a plan with tasks as claimed
    tasks (``_emit_tasks``), else with barriers only where threads must meet. With
    ``profile``, every thread adds the cycles from the end of one node to the end of the
    next (waits included) to ``ctl[4 + i]``."""
    clock = _cycle_counter(ctx) if profile else None
    if p.tasks and index_offset == 0 and ctx.module is ctx.program.entry:
        _emit_tasks(ctx, nodes, bufs, p, arena, clock)
        return
    b = ctx.b
    pending = False        # work done by thread 0 alone since the last barrier
    for i, node in enumerate(nodes):
        if i in p.skip:
            continue
        if clock is not None:
            clock.start()
        low = get_lowering(node)
        ctx.node_index = index_offset + i if index_offset >= 0 else ctx.node_index
        if runs_parallel(node):
            if pending:
                ctx.barrier()
            emit_node(ctx, p, i, node, low, bufs, arena)
            ctx.barrier()
            pending = False
        else:
            with ctx.thread0():
                emit_node(ctx, p, i, node, low, bufs, arena)
            pending = True
        if clock is not None:
            clock.stop(i)
    if pending:
        ctx.barrier()


def emit_node(ctx: Ctx, p: Plan, i: int, node, low, bufs, arena, claimed: bool = False
               ) -> None:
    """The call of node ``i``'s kernel on its buffers."""
    b = ctx.b
    ctx.node_scratch = (b.gep(arena, [i64(p.scratch[i])], inbounds=True)
                        if i in p.scratch else None)
    ctx.prep = (b.gep(ctx.prep_base, [i64(p.prep[i])], inbounds=True)
                if i in p.prep and ctx.prep_base is not None else None)
    ins, outs = node_bufs(p, i, node, bufs)
    ctx.claimed = claimed
    try:
        _guarded_node(ctx, p, node, low, ins, outs)
    finally:
        ctx.claimed = False
        ctx.prep = None


def node_bufs(p: Plan, i: int, node, bufs) -> tuple[list[Buf], list[Buf]]:
    """Node ``i``'s input and output buffers (folded transposes read with swapped axes)."""
    views = p.views
    ins = [Buf(bufs[views[i, k]].ptr, v.type, swapped=True) if (i, k) in views
           else bufs[v] for k, v in enumerate(node.inputs)]
    outs = [Buf(bufs[v].ptr, v.type, swapped=i in p.t_out) for v in node.outputs]
    return ins, outs


def _emit_tasks(ctx: Ctx, nodes, bufs, p: Plan, arena, clock) -> None:
    """The top level as claimed tasks (see the module docstring): before task t a thread
    waits until task t-1 is done; then it claims shares of t until none is left (a task
    of "one" share: whoever comes first runs it; "all": every thread runs its part)."""
    b, fn = ctx.b, ctx.fn
    tid, nthreads = ctx.tid, ctx.nthreads
    wait_fn, done_fn = workers.task_fns(ctx.module)
    prev = None                     # (done counter, shares) of the task before
    for t, task in enumerate(p.tasks):
        claim = b.gep(ctx.ctl, [i64(p.task_offset(t))])
        done = b.gep(ctx.ctl, [i64(p.task_offset(t) + 8)])
        if clock is not None:
            clock.start()
        if prev is not None:
            b.call(wait_fn, [prev[0], prev[1]])
        first = task.nodes[0]
        if task.kind == "steps":            # the lowering marks the task done itself
            ctx.node_index = first
            ctx.counters = claim
            try:
                emit_node(ctx, p, first, nodes[first], get_lowering(nodes[first]), bufs,
                           arena)
            finally:
                ctx.counters = None
            count = i64(1)
        elif task.kind == "all":
            ctx.node_index = first
            emit_node(ctx, p, first, nodes[first], get_lowering(nodes[first]), bufs, arena)
            b.call(done_fn, [done, nthreads])
            count = nthreads
        elif task.kind == "one":
            got = b.atomic_rmw("add", claim, i64(1), "monotonic")
            with b.if_then(b.icmp_signed("==", got, i64(0))):
                ctx.tid, ctx.nthreads, ctx.single = i64(0), i64(1), True
                try:
                    for i in task.nodes:
                        ctx.node_index = i
                        emit_node(ctx, p, i, nodes[i], get_lowering(nodes[i]), bufs, arena)
                        if clock is not None and i != task.nodes[-1]:
                            clock.stop(i)
                finally:
                    ctx.tid, ctx.nthreads, ctx.single = tid, nthreads, False
                b.call(done_fn, [done, i64(1)])
            count = i64(1)
        else:
            shares = task.shares
            top = fn.append_basic_block(f"task{t}.claim")
            body = fn.append_basic_block(f"task{t}.share")
            out = fn.append_basic_block(f"task{t}.end")
            b.branch(top)
            b.position_at_end(top)
            v = b.atomic_rmw("add", claim, i64(1), "monotonic")
            b.cbranch(b.icmp_signed("<", v, i64(shares)), body, out)
            b.position_at_end(body)
            ctx.tid, ctx.nthreads = v, i64(shares)
            try:
                ctx.node_index = first
                emit_node(ctx, p, first, nodes[first], get_lowering(nodes[first]), bufs,
                           arena, claimed=True)
            finally:
                ctx.tid, ctx.nthreads = tid, nthreads
            b.call(done_fn, [done, i64(shares)])
            b.branch(top)
            b.position_at_end(out)
            count = i64(shares)
        if clock is not None:
            clock.stop(task.nodes[-1])
        prev = (done, count)


def claim_step(ctx: Ctx, counters, pair: int, step, shares, run, after=None):
    """Emit one task of step ``step`` (i64) of a loop every thread runs (a ``STEPPED``
    lowering): its claim and done counters are pair ``pair`` at ``counters`` (i64*) and
    count on over the steps, so step s owns claims [s n, (s + 1) n) and is done when the
    done counter reaches (s + 1) n, with no reset inside a call. ``shares`` an int n:
    claim shares one at a time (compare-and-swap: a thread that fell behind finds the
    step's shares taken and goes on without waiting for anyone), calling ``run(k)`` with
    ``ctx.tid``, ``ctx.nthreads`` share k of n (n = 1: one thread, ``ctx.single``);
    ``shares`` "all": every thread calls ``run(None)`` (a lowering that meets). ``after``:
    the (done counter, count) pairs to wait for first (``step_done``, or what a task of
    the same step returned). Returns the (done counter, count) the step's next task waits
    for."""
    b, fn = ctx.b, ctx.fn
    wait_fn, done_fn = workers.task_fns(ctx.module)
    claim = b.gep(counters, [i64(TASK_WORDS * pair)])
    done = b.gep(counters, [i64(TASK_WORDS * pair + 8)])
    for w in after or ():
        b.call(wait_fn, list(w))
    if shares == "all":
        run(None)
        target = b.mul(b.add(step, i64(1)), ctx.nthreads)
        b.call(done_fn, [done, target])
        return done, target
    lo = b.mul(step, i64(shares))
    hi = b.add(lo, i64(shares))
    top = fn.append_basic_block(f"step{pair}.claim")
    take = fn.append_basic_block(f"step{pair}.take")
    body = fn.append_basic_block(f"step{pair}.share")
    out = fn.append_basic_block(f"step{pair}.end")
    b.branch(top)
    b.position_at_end(top)
    v = b.load_atomic(claim, "monotonic", 8)
    b.cbranch(b.icmp_signed("<", v, hi), take, out)
    b.position_at_end(take)
    got = b.cmpxchg(claim, v, b.add(v, i64(1)), "monotonic", "monotonic")
    b.cbranch(b.extract_value(got, 1), body, top)
    b.position_at_end(body)
    saved = ctx.tid, ctx.nthreads, ctx.single
    ctx.tid, ctx.nthreads = b.sub(v, lo), i64(shares)
    ctx.single = ctx.single or shares == 1
    try:
        run(ctx.tid)
    finally:
        ctx.tid, ctx.nthreads, ctx.single = saved
    b.call(done_fn, [done, hi])
    b.branch(top)
    b.position_at_end(out)
    return done, hi


def step_done(ctx: Ctx, counters, pair: int, steps, shares) -> tuple:
    """The (done counter, count) of ``claim_step``'s task ``pair`` once ``steps`` (i64)
    steps of it are done (emitted where ``ctx.b`` is: a wait outside the step's block)."""
    b = ctx.b
    n = ctx.nthreads if shares == "all" else i64(shares)
    return b.gep(counters, [i64(TASK_WORDS * pair + 8)]), b.mul(steps, n)


class _cycle_counter:
    """Per-node cycle counts for ``profile=True`` (``llvm.readcyclecounter``, every
    thread)."""

    def __init__(self, ctx: Ctx):
        self.ctx = ctx
        name = "llvm.readcyclecounter"
        m = ctx.module
        self.fn = m.globals.get(name) or ir.Function(m, ir.FunctionType(I64, []), name)
        self.t0 = None                  # a stack slot: stop() may run in a branch

    def start(self) -> None:
        if self.t0 is None:
            self.t0 = self.ctx.alloca(I64, "clock")
            self.ctx.b.store(self.ctx.b.call(self.fn, []), self.t0)

    def stop(self, i: int) -> None:
        """Every thread adds the cycles since its last stop to node i's counter (atomically):
        a node run by whichever thread claimed it is counted, whichever that was."""
        b = self.ctx.b
        t1 = b.call(self.fn, [])
        slot = b.gep(self.ctx.ctl, [i64(4 + i)])
        b.atomic_rmw("add", slot, b.sub(t1, b.load(self.t0)), "monotonic")
        b.store(t1, self.t0)


def _guarded_node(ctx: Ctx, p: Plan, node, low, ins, outs) -> None:
    """A node writing into an argument's buffer (in-place donation) runs only while no error
    is recorded: a failed step leaves the caller's arrays as they were (barriers come before
    every parallel node, so all threads read the same flag)."""
    if not any(p.slots.get(v, ("",))[0] == "arg" for v in node.outputs):
        _node_function(ctx, node, low, ins, outs)
        return
    b = ctx.b
    ok = b.icmp_signed("==", b.load(b.gep(ctx.ctl, [i64(0)])), i64(0))
    with b.if_then(ok):
        _node_function(ctx, node, low, ins, outs)


SMALL = 2048       # elements: below this a node's code is optimized for size


def _is_small(node) -> bool:
    work = sum(v.type.size for v in list(node.inputs) + list(node.outputs))
    return work < SMALL and not any(isinstance(a, Graph) for a in node.attrs.values())


def runs_parallel(node) -> bool:
    """Does ``node`` split its work across threads (else thread 0 runs it alone)?"""
    return (get_lowering(node).parallel and not _is_small(node) and not _is_serial(node)
            and worth_parallel(node))


def _folded_transposes(nodes, p: Plan):
    """matmul operands made by a transpose of the last two axes read the transpose's
    operand with swapped strides instead; a transpose only matmuls read is not run.
    Returns ({(node index, operand index): source value}, indices of skipped nodes)."""
    index = {n: i for i, n in enumerate(nodes)}
    users: dict[Value, list[tuple[int, int]]] = {}
    for i, n in enumerate(nodes):
        for k, v in enumerate(n.inputs):
            users.setdefault(v, []).append((i, k))
    views: dict[tuple[int, int], Value] = {}
    skip: set[int] = set()
    for t in nodes:
        if t.op != "transpose" or t.inputs[0].type.rank < 2:
            continue
        r = t.inputs[0].type.rank
        if tuple(t.attrs["perm"]) != tuple(range(r - 2)) + (r - 1, r - 2):
            continue
        out = t.outputs[0]
        uses = users.get(out, [])
        mm = [(i, k) for i, k in uses if (nodes[i].op == "matmul" or _anchor_operand(
              nodes[i], k)) and nodes[i].inputs[k].type.rank >= 2
              and out.dtype in ("float32", "float64")]
        for use in mm:
            views[use] = t.inputs[0]
        if uses and len(mm) == len(uses) and p.slots.get(out, ("arena",))[0] == "arena":
            skip.add(index[t])
    return views, skip


def _anchor_operand(node, k: int) -> bool:
    """Is input ``k`` of a fused epilogue region read only by the region's matmul (so the
    region can take it with swapped strides, as a plain matmul would)?"""
    if node.op != "fused" or node.attrs["kind"] != "epilogue":
        return False
    body = node.attrs["body"]
    v = body.inputs[k]
    readers = [n for n in body.nodes if v in n.inputs]
    return (len(readers) == 1 and readers[0].op == "matmul" and v not in body.outputs
            and all(x.type.rank >= 2 for x in readers[0].inputs))


def swapped_inputs(bufs: dict, graph: Graph, ins) -> None:
    """Body inputs that arrive with swapped strides (``_anchor_operand``) keep that flag."""
    for v, x in zip(graph.inputs, ins):
        if x.swapped:
            bufs[v] = Buf(bufs[v].ptr, v.type, swapped=True)


def _reshape_aliases(graph: Graph, p: Plan) -> dict[Value, Value]:
    """A reshape (row-major data unchanged) that is not a graph output shares its operand's
    buffer instead of copying it: {reshape output: root value}; those reshapes join
    ``p.skip``."""
    outs = set(graph.outputs)
    alias: dict[Value, Value] = {}
    for i, node in enumerate(graph.nodes):
        if node.op != "reshape" or i in p.skip or node.outputs[0] in outs:
            continue
        (src,), (out,) = node.inputs, node.outputs
        alias[out] = alias.get(src, src)
        p.skip.add(i)
    return alias


def _inplace_donations(graph: Graph, p: Plan, last: dict[Value, int]) -> dict[int, int]:
    """Donated outputs that can be written straight into their argument's buffer (no copy
    after the run): nothing reads the argument after the output's node, and that node
    reads it, if at all, element for element (an optimizer update)."""
    index = {n: i for i, n in enumerate(graph.nodes)}
    found: dict[int, int] = {}
    for j, a in graph.donations.items():
        v, arg = graph.outputs[j], graph.arguments[a]
        node = v.node
        if (p.slots.get(v) != ("out", j) or node not in index or v.type != arg.type
                or ("arg", a) in p.copies.values() or a in found.values()):
            continue
        i = index[node]
        if last.get(arg, -1) > i:         # (a folded transpose's read counts in ``last``)
            continue
        if arg in node.inputs and (not reads_same_index(node) or any(
                x is arg and x.type != o.type for x in node.inputs for o in node.outputs)):
            continue
        if any(p.alias.get(x) is arg for x in node.inputs):     # a reshaped view of it
            continue
        found[j] = a
    return found


def _transposed_products(nodes, p: Plan) -> dict[int, Value]:
    """A float matmul whose result only a transpose of the last two axes reads (a weight
    gradient x^T @ g turned back into W's layout) writes that transpose itself: the GEMM
    computes B^T A^T, the transpose is not run. Returns {matmul index: transposed value}."""
    index = {n: i for i, n in enumerate(nodes)}
    users: dict[Value, list[int]] = {}
    for i, n in enumerate(nodes):
        for v in n.inputs:
            users.setdefault(v, []).append(i)
    found: dict[int, Value] = {}
    for j, t in enumerate(nodes):
        if t.op != "transpose" or j in p.skip:
            continue
        m = t.inputs[0]
        r = m.type.rank
        mm = m.node
        if (mm is None or mm.op != "matmul" or mm not in index or r < 2
                or tuple(t.attrs["perm"]) != tuple(range(r - 2)) + (r - 1, r - 2)
                or m.dtype not in ("float32", "float64") or users.get(m) != [j]
                or p.slots.get(m, ("arena",))[0] != "arena"
                or any(x.type.rank < 2 for x in mm.inputs)):
            continue
        found[index[mm]] = t.outputs[0]
        p.skip.add(j)
    return found


SERIAL_FLOPS = 4_000_000     # a scan whose step costs less runs on one thread: no barriers


def _is_serial(node) -> bool:
    """A recurrence with little work per step: its per-step barriers would cost more than
    the second thread saves."""
    if node.op != "scan":
        return False
    body = node.attrs["body"]
    flops = sum(n.opdef.cost([v.type for v in n.inputs], [v.type for v in n.outputs],
                             n.attrs).flops for n in body.nodes)
    return flops < SERIAL_FLOPS


def _node_function(ctx: Ctx, node, low, ins: list[Buf], outs: list[Buf]) -> None:
    """Call the kernel that runs ``node``: a function of its own, in a module of its own,
    whose buffer pointers are ``noalias`` (no value shares bytes with another live value),
    so loops vectorize without runtime overlap checks and each kernel is optimized, compiled
    and cached on its own. Its code depends on the node's structure only (op, attributes,
    types, which operands share a buffer; the node's index is an argument), so nodes with
    the same structure (the steps of an unrolled recurrence, repeated layers) call ONE
    kernel, built once: a signature of the node finds it before any IR is made."""
    ptrs: list[ir.Value] = []
    for buf in ins + outs:
        if not any(buf.ptr is q for q in ptrs):
            ptrs.append(buf.ptr)
    pattern = [next(i for i, q in enumerate(ptrs) if q is buf.ptr) for buf in ins + outs]
    node_index = ctx.node_index if isinstance(ctx.node_index, ir.Value) else i64(ctx.node_index)
    extra = [ctx.tid, ctx.nthreads, ctx.ctl, ctx.scratch(),
             ctx.node_scratch if ctx.node_scratch is not None else ir.Constant(PTR, None),
             node_index, ctx.worker]
    stepped = ctx.counters is not None
    if stepped:                         # a node claiming its steps' work: its counters
        extra.append(ctx.counters)
    prepared = ctx.prep is not None
    if prepared:                        # its prepared-weights block
        extra.append(ctx.prep)
    prog: Program = ctx.program
    # (a kernel of the cheap level is compiled with the entry: sharing it saves nothing)
    cheap = ctx.module is prog.entry and kernel_opt(node, prog.opt) == 0
    layout = None if cheap else size_generic(node, ins, outs)
    generic = layout is not None
    if generic:                         # the dimensions are arguments: any size
        dims, reads = layout
        extra += [i64(d) for d in dims]
        ins, outs = _generic_bufs(ins, reads[len(outs):]), _generic_bufs(outs, reads)
        if ctx.single:                  # one code for all threads or one: thread 0 of 1
            extra[0], extra[1] = i64(0), i64(1)
    fnty = ir.FunctionType(VOID, [q.type for q in ptrs] + [v.type for v in extra])
    sig = (node_signature(node, ins, outs, pattern, ctx, generic)
           + f"\nstepped={stepped} prepared={prepared}")
    symbol = prog.memo.get(sig)
    if symbol is None and prog.known is not None:
        symbol = prog.known(sig)
    if symbol is None:
        symbol = _emit_kernel(ctx, node, low, ins, outs, ptrs, pattern, fnty)
        prog.signatures.setdefault(symbol, sig)
    prog.memo[sig] = symbol
    prog.calls += 1
    fn = ctx.module.globals.get(symbol) or ir.Function(ctx.module, fnty, symbol)
    ctx.b.call(fn, ptrs + extra)


KERNEL_PLACEHOLDER = "irgraph.kernel"
KERNEL_PREFIX = "irk_"      # a kernel compiled, and cached, in a module of its own
CHEAP_PREFIX = "irc_"       # a kernel of the cheap level: compiled within the entry's module


def node_signature(node, ins: list[Buf], outs: list[Buf], pattern, ctx: Ctx,
                   generic: bool = False) -> str:
    """Everything a lowering reads, as text: the node without names or location (its
    subgraphs likewise), its buffers' types and layouts, which share a pointer, and what
    the context fixes (one thread or all, scratch, per-thread workspace, CPU, and the level
    of a kernel the entry calls). A size-generic node (``size_generic``) shows its op,
    attributes and the generic buffers only: its kernel serves every size."""
    bufs = ";".join(f"{x.type}{'T' if x.swapped else ''}" for x in ins + outs)
    level = kernel_opt(node, -1) if ctx.module is ctx.program.entry else "callee"
    return "\n".join([generic_node(node) if generic else canonical_node(node), bufs,
                      ",".join(map(str, pattern)),
                      f"single={ctx.single and not generic} "
                      f"scratch={ctx.node_scratch is not None} "
                      f"ws={ctx.workspace_per_thread} threads={ctx.max_threads} "
                      f"small={_is_small(node)} level={level}", ctx.features])


def size_generic(node, ins: list[Buf], outs: list[Buf]):
    """The layout of ``node``'s kernel when one kernel serves every size, else None: its
    lowering is size-generic (``Lowering.size_generic``), its outputs share one shape of at
    least one element, no buffer is read with swapped axes, and the coalesced loop nest
    over the output (``builder.coalesce``; each input broadcast into it) has at most
    ``len(RUNTIME_DIMS)`` dimensions. The layout: (those dimensions, per output then input
    which of them it walks); the kernel takes the dimensions as arguments. A lowering may
    give its own layout instead (``Lowering.size_generic``: reductions, batch norm)."""
    own = get_lowering(node).generic_for(node) if outs else None
    if not own:
        return None
    if own is not True:                 # the lowering's own layout
        dims, reads = own
        if (not 1 <= len(dims) <= len(RUNTIME_DIMS) or min(dims) < 1
                or any(x.swapped for x in ins + outs) or len(reads) != len(ins) + len(outs)):
            return None
        return tuple(dims), [tuple(r) for r in reads]
    shape = outs[0].shape
    if (not shape or outs[0].type.size == 0 or any(o.shape != shape for o in outs)
            or any(x.swapped for x in ins + outs)):
        return None
    strides = [row_strides(shape)] * len(outs) + [broadcast_strides(x.shape, shape)
                                                  for x in ins]
    dims, cstrides = coalesce(shape, strides)
    if not 1 <= len(dims) <= len(RUNTIME_DIMS):
        return None
    return dims, [tuple(st != 0 for st in s) for s in cstrides]


def _generic_bufs(bufs: list[Buf], reads) -> list[Buf]:
    """The buffers as a size-generic kernel's lowering sees them: rank 0 kept, every other
    one over ``RUNTIME_DIMS`` where it walks a dimension and 1 where it broadcasts
    (``elementwise`` loops over the dimension arguments instead)."""
    from irgraph import TensorType
    return [x if x.type.rank == 0 else Buf(x.ptr, TensorType(
        tuple(d if r else 1 for d, r in zip(RUNTIME_DIMS, walk)), x.dtype))
        for x, walk in zip(bufs, reads)]


def _emit_kernel(ctx: Ctx, node, low, ins, outs, ptrs, pattern, fnty) -> str:
    """Build the kernel of ``node`` in a new module; returns its symbol, a prefix (its kind)
    and a hash of its code and optimization level (equal code: one symbol, one object)."""
    prog: Program = ctx.program
    module = ir.Module(name="irgraph_kernel")
    module.triple = prog.triple
    fn = ir.Function(module, fnty, KERNEL_PLACEHOLDER)
    if _is_small(node):
        fn.attributes.add("optsize")      # tiny loops: no vector epilogues worth their code
    for k in range(len(ptrs)):
        fn.args[k].add_attribute("noalias")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    tid, nthreads, ctl, ws, scr, index, worker = fn.args[len(ptrs):len(ptrs) + 7]
    child = Ctx(module, fn, b, tid, nthreads, ctl, ws, ctx.workspace_per_thread,
                ctx.max_threads, ctx.features)
    child.program = prog
    child.node_index = index
    child.single = ctx.single
    child.thread = None                        # ``ws`` is this thread's own area
    child.worker = worker
    fixed = len(ptrs) + 7
    if ctx.counters is not None:   # a stepped node's counters (STEPPED)
        child.counters = fn.args[fixed]
        fixed += 1
    if ctx.prep is not None:       # a prepared node's block (PREPARES)
        child.prep = fn.args[fixed]
        fixed += 1
    if len(fn.args) > fixed:                   # a size-generic kernel: its dimensions
        child.runtime_dims = tuple(fn.args[fixed:])
        child.single = False                   # (one thread calls it as thread 0 of 1)
    child.node_scratch = scr if ctx.node_scratch is not None else None
    low.fn(child, node, [Buf(fn.args[pattern[k]], x.type, x.swapped) for k, x in enumerate(ins)],
           [Buf(fn.args[pattern[len(ins) + k]], o.type, o.swapped) for k, o in enumerate(outs)])
    if ctx.claimed and child.met:
        raise IRError(f"llvm lowering of {node.op!r} meets (ctx.barrier() or per-thread "
                      f"node scratch) but runs as claimed shares: declare it with "
                      f"lowering(..., meets=...); node {node!r}")
    b.ret_void()
    text = str(module)
    # a kernel called from another one (a scan's step body) may run many times a call
    level = kernel_opt(node, prog.opt) if ctx.module is prog.entry else prog.opt
    if ctx.module is prog.entry and level > 0 and not has_loop(text):
        level = 0           # straight-line code (a call into the GEMM runtime): nothing to tune
    prefix = CHEAP_PREFIX if level == 0 else KERNEL_PREFIX
    symbol = prefix + hashlib.sha256(f"{level}\0{text}".encode()).hexdigest()[:40]
    if symbol not in prog.kernels:
        prog.kernels[symbol] = Kernel(symbol, text.replace(f'@"{KERNEL_PLACEHOLDER}"',
                                                           f'@"{symbol}"'), level, node.op)
        if prog.on_kernel is not None:
            prog.on_kernel(prog.kernels[symbol])
    return symbol


# kernels touching fewer elements get the cheap level (0): their -O3 compile costs
# milliseconds, their run microseconds
CHEAP_WORK = 4096
HEAVY_OPS = frozenset({"matmul", "matmul_f32", "conv", "conv_fft", "conv_input_grad", "conv_kernel_grad",
                       "scan", "fused", "locally_connected", "tiled_conv"})


_LABEL = re.compile(r'^"?([^"\s]+?)"?:')
_TARGET = re.compile(r'label %"?([^",\s]+)"?')


def has_loop(text: str) -> bool:
    """Does some function of the module ``text`` loop: a branch to its own block or to one
    printed before it (a cycle of blocks has such an edge, whatever their order)?"""
    seen: set[str] = set()
    for line in text.splitlines():
        if line.startswith("define "):
            seen = set()
        elif (m := _LABEL.match(line)) is not None:
            seen.add(m.group(1))
        elif "label %" in line and any(t in seen for t in _TARGET.findall(line)):
            return True
    return False


def kernel_opt(node, opt: int) -> int:
    """The optimization level of ``node``'s kernel (a node of the graph's top level: one
    run per call): the requested one for loops that carry the work (GEMM, convolutions,
    recurrences, fused regions, loops over many elements or many flops per element), the
    cheap level 0 (``jit.optimize``) for small ones. The work is the elements moved plus
    the registry's flops beyond one per output element: a classifier's log_softmax over
    128 x 10 (2560 elements, 7 flops each) gets the vectorizing level, one thread, best
    of 2000 calls, less the call itself: 15 -> 5.4 us; exp over 1280 elements 5.6 -> 0.9."""
    if node.op in HEAVY_OPS:
        return opt
    work = sum(v.type.size for v in list(node.inputs) + list(node.outputs))
    if work < CHEAP_WORK:
        outs = [v.type for v in node.outputs]
        flops = node.opdef.cost([v.type for v in node.inputs], outs, node.attrs).flops
        work += max(0, flops - sum(t.size for t in outs))
    return opt if work >= CHEAP_WORK else 0
