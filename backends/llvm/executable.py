"""The LLVM executable: validated numpy buffers in, one native call per thread, outputs out."""
from __future__ import annotations

import ctypes
import time

import numpy as np

from irgraph import Graph
from irgraph.errors import RuntimeDataError
from irgraph.ir import all_nodes
from irgraph.ops.debug import NonFiniteError
from irgraph.registry import ops_with

from ..base import (Executable, check_out_buffers, fork_safe_locks, overlaps,
                    raise_as_reference, validate_args)
from . import gemm, jit
from .lowering import ERROR_MESSAGES
from .workers import ThreadChoice, run_entry
from .module import ENTRY, Plan, build_module

# The generated code found bad data (an out-of-range class index, ...): the error every
# backend raises for it (the name this backend used first).
NativeError = RuntimeDataError

# ops whose lowering may record an error in the control block (``Ctx.fail``): the data
# checks of nll_loss, integer pow and the gathers' indices, and the NaN checker
FALLIBLE_OPS = ops_with("fallible")


def _fallible(node) -> bool:
    return any(n.op in FALLIBLE_OPS for n in _all_nodes_of(node))


def _all_nodes_of(node):
    yield node
    for a in node.attrs.values():
        if isinstance(a, Graph):
            yield from all_nodes(a)


def staged_arguments(graph: Graph, plan: Plan) -> frozenset[int]:
    """The arguments written in place whose writes could be followed by an error: a node
    that may fail runs at or after the first in-place write. A call gives those nodes a
    private copy of the argument and copies the result back only once the run succeeded, so
    a failed call leaves the caller's arrays as they were (without it the in-place nodes
    run only while no error is recorded, which suffices)."""
    if not plan.inplace:
        return frozenset()
    writers = {graph.outputs[j] for j in plan.inplace}
    first = next(i for i, n in enumerate(graph.nodes) if any(v in writers for v in n.outputs))
    if any(_fallible(n) for n in graph.nodes[first:]):
        return frozenset(plan.inplace.values())
    return frozenset()


class LLVMExecutable(Executable):
    backend = "llvm"
    # outputs are fresh arrays, the caller's checked ``out`` buffers, copies, or a donated
    # argument written in place (``Plan.inplace``: only its own donation's)
    results_fresh = True

    def __init__(self, graph: Graph, plan: Plan, obj: bytes, *, threads: int, opt: int,
                 cache_key: str, cache_hit: bool, features: str, kernels=(),
                 adaptive: bool = False):
        super().__init__(graph)
        self.plan = plan
        self.threads = threads
        # default thread count: 1 or all, whichever runs faster now (workers.ThreadChoice)
        self.thread_choice = ThreadChoice(threads) if adaptive and threads > 1 else None
        self.opt = opt
        self.cache_key = cache_key
        self.cache_hit = cache_hit
        self._features = features
        # every buffer the native code uses is allocated here, by numpy (a size the machine
        # cannot give is a MemoryError now, never a failed allocation in native code)
        self._arena = np.zeros(max(plan.arena_bytes, 64), np.uint8)
        self._ws = np.zeros(max(plan.workspace_bytes * threads, 64), np.uint8)
        self._ctl = np.zeros(plan.ctl_words(len(graph.nodes)), np.int64)
        # what lowerings derived from constant parameters (``Plan.prep``), each block's
        # ready flag first; ``_prep_with``: the arrays it was derived from
        self._prep = np.zeros(max(plan.prep_bytes, 64), np.uint8)
        self._prep_flags = np.array(plan.prep_flags, np.int64) // 8
        self._prep_with: list | None = None
        with jit.phase("load"):
            self._loaded = jit.Loaded(obj, ENTRY, opt, [gemm.runtime_object(), *kernels])
        self._profiled_s = 0.0
        fork_safe_locks(self, "_lock")
        self._staged = staged_arguments(self.graph, plan)
        # the executable's own buffers (never resized) and the previous call's arguments
        self._own_ptrs = [self._arena.ctypes.data, self._ctl.ctypes.data, self._ws.ctypes.data,
                          self._prep.ctypes.data]
        self._last_args: tuple[list, list[int]] = ([], [])
        self._last_hits: tuple[list[int], np.ndarray | None] = ([], None)
        self._arg_nbytes = np.array([v.type.nbytes for v in graph.arguments], np.int64)
        self._ir: str | None = None
        # the last clean call, for ``_repeat`` (None: the next call takes the full path)
        self._memo: _Memo | None = None
        # every donation is written in place: a call's results need no copying back
        self._all_inplace = dict(graph.donations) == dict(plan.inplace)

    # ---------------------------------------------------------------- running
    def __call__(self, *args) -> list[np.ndarray]:
        memo = self._memo
        if memo is not None:
            outs = self._repeat(memo, args)
            if outs is not None:
                return outs if self._all_inplace else self.apply_donations(args, outs)
        given = validate_args(self.graph, args)
        outs = self.run(given, remember=all(g is a for g, a in zip(given, args)))
        return self.apply_donations(args, outs)

    def run(self, args: list[np.ndarray], out: list[np.ndarray | None] | None = None,
            remember: bool = False) -> list[np.ndarray]:
        """Run on validated ``args``; ``out`` optionally gives output buffers the native code
        writes directly (C-contiguous, aligned, writable arrays of the outputs' types that
        share no byte with an argument or another output; None: a fresh array). Nothing
        the caller passed is written when the run fails. ``remember``: ``args`` are the
        caller's own arrays, which a clean call (no private copy, fresh outputs) keeps for
        ``_repeat``."""
        g = self.graph
        given = args
        outs: list[np.ndarray | None] = [None] * len(g.outputs)
        addr = self._addresses(args)
        args = self._own_inplace_args(args, addr)
        remember = (remember and not self.plan.profile and not self._staged
                    and all(a is v for a, v in zip(args, given)))
        for j, v in enumerate(g.outputs):
            if j in self.plan.inplace:
                outs[j] = args[self.plan.inplace[j]]
                continue
            if j in self.plan.copies:
                continue
            o = out[j] if out is not None else None
            outs[j] = o if o is not None else np.empty(v.type.shape, v.type.np_dtype)
        ptrs = [p if a is v else a.ctypes.data for a, v, p in zip(args, given, addr)]
        ptrs += [o.ctypes.data if o is not None and j not in self.plan.inplace else 0
                 for j, o in enumerate(outs)]
        with self._lock:
            ptrs += self._own_ptrs
            table = (ctypes.c_void_p * len(ptrs))(*ptrs)
            code, node = self._native(table, args)
            self._memo = _Memo(self, given, table) if remember and not code else None
        if code:
            self._raise(code, node, given)
        return self._copies(args, outs)

    def _native(self, table, args) -> tuple[int, int]:
        """One native call on ``table`` (the lock held) for ``args``: the control block
        reset, the prepared weights dropped if they came from other arrays, the call (timed
        when profiling), its (error code, node)."""
        if self.plan.prep_args:
            self._check_prepared(args)
        self._ctl[:4] = 0                # (profile counters accumulate over runs)
        if self.plan.tasks:
            self._ctl[self.plan.task_base:] = 0  # the tasks' claim and done counters
        if self.plan.profile:
            t0 = time.perf_counter()
            self._call(table)
            self._profiled_s += time.perf_counter() - t0
        else:
            self._call(table)
        return int(self._ctl[0]), int(self._ctl[1])

    def _check_prepared(self, args) -> None:
        """The prepared blocks (``Plan.prep``) hold what was derived from the arrays of an
        earlier call at ``Plan.prep_args`` (``constant_params``: their values do not
        change): other arrays there clear every ready flag, so the native code derives
        it again. The arrays are held, so no other array can take their addresses."""
        held = self._prep_with
        if held is not None and all(args[i] is h for i, h in zip(self.plan.prep_args, held)):
            return
        self._prep.view(np.int64)[self._prep_flags] = 0
        self._prep_with = [args[i] for i in self.plan.prep_args]

    def _copies(self, args, outs: list) -> list[np.ndarray]:
        """``outs`` with the outputs that are copies of an argument or an earlier output."""
        for j, (kind, k) in self.plan.copies.items():
            outs[j] = (args[k] if kind == "arg" else outs[k]).copy()
        return outs

    def _repeat(self, memo: "_Memo", args, out=None) -> list[np.ndarray] | None:
        """The results of a call whose arguments are mostly the previous clean call's very
        arrays (a training step's parameters and optimizer state, an inference's weights),
        with none of ``validate_args``' and ``run``'s per-argument work for those: each is
        checked to still have its shape, dtype and strides (the attributes numpy lets one
        set on an array; its data address cannot change while the memo holds it, and numpy
        refuses to resize it) and, where written in place, to be writable. Any other
        argument is checked as ``validate_args`` checks it and must share no byte with an
        argument written in place. ``out`` (``call_into``'s checked buffers): every output
        is fresh and each buffer is written where it stands (C-contiguous, aligned, sharing
        no byte with an argument or another buffer). None where the full path must run (a
        different array in a written argument, an argument to convert or copy, an overlap,
        an output buffer to write aside), which then raises what it raises."""
        with self._lock:
            if self._memo is not memo or len(args) != len(memo.objs):
                return None
            objs, guards, table = memo.objs, memo.guards, memo.table
            changed = []
            for i, a in enumerate(args):
                if a is objs[i]:
                    shape, dtype, strides = guards[i]
                    if a.shape != shape or a.dtype is not dtype or a.strides != strides:
                        return None
                    if memo.writes[i] and not a.flags.writeable:
                        return None
                else:
                    changed.append(i)
            params = self.graph.arguments
            spans = memo.spans
            new = {}
            for i in changed:
                a, t = args[i], params[i].type
                if (memo.writes[i] or type(a) is not np.ndarray or a.dtype != t.np_dtype
                        or a.shape != t.shape or not (a.flags.c_contiguous
                                                       and a.flags.aligned)):
                    return None
                lo = a.ctypes.data
                hi = lo + a.nbytes
                if a.nbytes and _meets(lo, hi, memo.written_spans):
                    return None
                new[i] = (lo, hi)
            if out is not None:
                if len(memo.fresh) != len(out):
                    return None
                taken = [new.get(i, spans[i]) for i in range(len(args))]
                for o in out:
                    if not (o.flags.c_contiguous and o.flags.aligned and o.flags.writeable):
                        return None
                    lo = o.ctypes.data
                    hi = lo + o.nbytes
                    if o.nbytes and _meets(lo, hi, taken):
                        return None
                    taken.append((lo, hi))
            for i in changed:
                a = args[i]
                objs[i] = a
                guards[i] = (a.shape, a.dtype, a.strides)
                spans[i] = new[i]
                table[i] = new[i][0]
            outs: list = [None] * len(self.graph.outputs)
            for j, (shape, dtype) in memo.fresh.items():
                o = outs[j] = np.empty(shape, dtype) if out is None else out[j]
                table[memo.out_slot + j] = o.ctypes.data
            for j, k in self.plan.inplace.items():
                outs[j] = args[k]
            code, node = self._native(table, args)
            if code:
                self._memo = None
        if code:
            self._raise(code, node, list(args))
        return self._copies(args, outs)

    def _addresses(self, args: list[np.ndarray]) -> list[int]:
        """Each argument's data address. An array passed again (the very object of the
        previous call, which this executable still references, so numpy refuses to resize
        it and its buffer cannot have moved) reuses the address read then: a training
        step's parameters and optimizer state cost no ``ctypes`` read per call."""
        last, known = self._last_args
        if len(last) == len(args):
            addr = [p if a is b else a.ctypes.data for a, b, p in zip(args, last, known)]
        else:
            addr = [a.ctypes.data for a in args]
        self._last_args = (list(args), addr)      # one assignment: a pair never torn
        return addr

    def _own_inplace_args(self, args: list[np.ndarray], addr: list[int]
                          ) -> list[np.ndarray]:
        """An argument an output is written into must be writable and share no byte with
        another argument, and must not be written before a check that may still fail
        (``staged_arguments``); else a private copy takes its place (the donation then
        copies the result into the caller's array after the run). ``addr``: the
        arguments' data addresses (C-contiguous arrays: validated)."""
        if not self.plan.inplace:
            return args
        args = list(args)
        # the byte ranges depend only on the addresses (validated arguments have the
        # graph's shapes and dtypes, so each position's size is fixed): the overlap test of
        # the previous call's addresses is reused (a training step passes the same arrays)
        seen, hits0 = self._last_hits
        if seen != addr:
            lo = np.array(addr, np.int64)
            hi = lo + self._arg_nbytes
            hits0 = (lo[:, None] < hi[None, :]) & (lo[None, :] < hi[:, None]) & (lo < hi)[None, :]
            np.fill_diagonal(hits0, False)
            self._last_hits = (list(addr), hits0)
        hits, shared = None, None
        for i in self.plan.inplace.values():
            a = args[i]
            flags = a.flags
            if i in self._staged or not (flags.writeable and flags.c_contiguous
                                         and flags.aligned):
                copy = True
            else:
                if shared is None:
                    shared = hits0.any(axis=1) if hits is None else hits.any(axis=1)
                copy = bool(shared[i])
            if copy:
                args[i] = np.array(a, copy=True)
                if hits is None:
                    hits = hits0.copy()
                hits[:, i] = hits[i, :] = False      # the copy shares nothing
                shared = hits.any(axis=1)
        return args

    def call_into(self, out: list[np.ndarray], *args) -> list[np.ndarray]:
        """``Executable.call_into``: the results in the given output arrays. An output the
        native code can write where it stands (C-contiguous, aligned, sharing no byte with
        an argument or another output) is computed there; any other is computed aside and
        copied, so overlapping buffers give what numpy's ``out=`` gives. The declared
        donations still update their arguments in place."""
        out = check_out_buffers(self.graph, out)
        memo = self._memo
        if memo is not None and self._repeat(memo, args, out) is not None:
            return out
        given = validate_args(self.graph, args)
        direct = self._direct_outputs(out, [*args, *given])
        res = self.apply_donations(args, self.run(
            given, direct, remember=all(g is a for g, a in zip(given, args))))
        res = [r.copy() if any(o is not r and np.may_share_memory(o, r) for o in out) else r
               for r in res]
        for o, r in zip(out, res):
            if o is not r:
                np.copyto(o, r)
        return out

    def _direct_outputs(self, out: list[np.ndarray], args) -> list[np.ndarray | None]:
        """Per output, the caller's buffer when the native code may write it directly."""
        # byte ranges (np.may_share_memory's test), outputs first, compared all at once
        hits = overlaps(out, [*out, *args])
        direct: list[np.ndarray | None] = []
        for j, o in enumerate(out):
            ok = (j not in self.plan.inplace and j not in self.plan.copies
                  and o.flags.c_contiguous and o.flags.aligned and o.flags.writeable)
            if ok and o.size:
                ok = int(hits[j].sum()) == 1        # only itself (its own column)
            direct.append(o if ok else None)
        return direct

    def _call(self, table) -> None:
        # a graph of small nodes only never splits work: one thread, no pool round trip
        fn, n = self._loaded.fn, self.threads if self.plan.parallel else 1
        if n == 1:
            fn(table, 0, 1)
            return
        run_entry(fn, table, n, self.thread_choice)

    def _raise(self, code: int, node_index: int, args) -> None:
        """The native code found bad data in a run on ``args`` (the caller's arrays, still
        as they were): raise what the reference raises on them, the same class and text
        (recomputed on this error path only), else a message from the error code."""
        node = self.graph.nodes[node_index] if 0 <= node_index < len(self.graph.nodes) else None
        loc = f" (from {node.loc})" if node is not None and node.loc else ""
        if code == 4:
            a = node.attrs if node is not None else {}
            fallback: Exception = NonFiniteError(
                f"first non-finite value: op {a.get('checked_op')!r} {a.get('source', '')}"
                f"\n  node: {a.get('node')}")
        else:
            what = ERROR_MESSAGES.get(code, f"error {code}")
            where = f"while running {node!r}{loc}: " if node is not None else ""
            fallback = RuntimeDataError(f"{where}{what}")
        raise_as_reference(self.graph, args, fallback)

    # ---------------------------------------------------------------- inspection
    def profile(self, top: int | None = None) -> list[dict]:
        """Where the time went over all runs so far (compiled with ``profile=True``): one row
        per node, slowest first, with its op, cycles (every thread's, the wait before the
        node included), share of the total and milliseconds (the native calls' wall time
        split by cycle share)."""
        if not self.plan.profile:
            raise RuntimeError("llvm backend: compile with profile=True to profile nodes")
        cyc = self._ctl[4:4 + len(self.graph.nodes)].astype(np.float64)
        total = cyc.sum() or 1.0
        rows = [{"index": i, "op": n.op, "node": n, "cycles": int(cyc[i]),
                 "share": cyc[i] / total, "ms": 1e3 * self._profiled_s * cyc[i] / total}
                for i, n in enumerate(self.graph.nodes) if cyc[i] > 0]
        rows.sort(key=lambda r: -r["cycles"])
        return rows[:top] if top is not None else rows

    def profile_by_op(self) -> list[tuple[str, int, float]]:
        """``profile()`` summed per op: (op, nodes, share), largest share first."""
        acc: dict[str, list] = {}
        for r in self.profile():
            a = acc.setdefault(r["op"], [0, 0.0])
            a[0] += 1
            a[1] += r["share"]
        return sorted(((op, n, s) for op, (n, s) in acc.items()), key=lambda t: -t[2])

    def llvm_ir(self, optimized: bool = False) -> str:
        """The generated LLVM IR as one module (the entry and every kernel it calls, each
        once), as built or after the pipeline of the requested level applied to all of it
        (the compile itself gives small kernels the cheap level: ``module.kernel_opt``)."""
        if self._ir is None:
            triple = jit.host()[0]
            self._ir = str(build_module(self.graph, self.plan, self._features, self.threads,
                                        triple, self.opt))
        return str(jit.optimize(self._ir, self.opt)) if optimized else self._ir

    def assembly(self) -> str:
        """The host assembly of ``llvm_ir(optimized=True)``."""
        return jit.emit_assembly(jit.optimize(self.llvm_ir(), self.opt), self.opt)

    def source(self) -> str:
        return self.llvm_ir()


def _meets(lo: int, hi: int, spans) -> bool:
    """Does the byte range [lo, hi) overlap any of ``spans`` ((lo, hi) pairs)?"""
    return any(a < hi and lo < b for a, b in spans)


class _Memo:
    """A clean call's arguments as ``LLVMExecutable._repeat`` reuses them: the arrays
    (referenced, so numpy refuses to resize them), their shapes, dtypes, strides and byte
    ranges (those written in place apart), and the native call's pointer table."""

    def __init__(self, exe: LLVMExecutable, args: list[np.ndarray], table) -> None:
        g, plan = exe.graph, exe.plan
        self.objs = list(args)
        self.guards = [(a.shape, a.dtype, a.strides) for a in args]
        written = set(plan.inplace.values())
        self.writes = [i in written for i in range(len(args))]
        self.spans = [(a.ctypes.data, a.ctypes.data + a.nbytes) for a in args]
        self.written_spans = [self.spans[i] for i in sorted(written) if args[i].nbytes]
        self.table = table
        self.out_slot = len(args)
        # the outputs made fresh at each call: (shape, dtype) by output index
        self.fresh = {j: (v.type.shape, v.type.np_dtype) for j, v in enumerate(g.outputs)
                      if j not in plan.inplace and j not in plan.copies}
