"""The LLVM executable: validated numpy buffers in, one native call per thread, outputs out."""
from __future__ import annotations

import ctypes
import threading
import time

import numpy as np

from irgraph import Graph

from ..base import Executable
from . import jit
from .lowering import ERROR_MESSAGES
from .module import ENTRY, Plan, build_module


class NativeError(ValueError):
    """The generated code found bad data (an out-of-range class index, ...)."""


class LLVMExecutable(Executable):
    backend = "llvm"

    def __init__(self, graph: Graph, plan: Plan, obj: bytes, *, threads: int, opt: int,
                 cache_key: str, cache_hit: bool, features: str):
        super().__init__(graph)
        self.plan = plan
        self.threads = threads
        self.opt = opt
        self.cache_key = cache_key
        self.cache_hit = cache_hit
        self._features = features
        self._loaded = jit.Loaded(obj, ENTRY, opt)
        self._arena = np.zeros(max(plan.arena_bytes, 64), np.uint8)
        self._ws = np.zeros(max(plan.workspace_bytes * threads, 64), np.uint8)
        self._ctl = np.zeros(4 + (len(graph.nodes) if plan.profile else 0), np.int64)
        self._profiled_s = 0.0
        self._lock = threading.Lock()
        self._ir: str | None = None

    # ---------------------------------------------------------------- running
    def run(self, args: list[np.ndarray], out: list[np.ndarray] | None = None
            ) -> list[np.ndarray]:
        """Run on validated ``args``; ``out`` optionally gives the output buffers (C-contiguous
        arrays of the outputs' types, e.g. views into larger arrays)."""
        g = self.graph
        outs: list[np.ndarray | None] = [None] * len(g.outputs)
        args = self._own_inplace_args(args)
        for j, v in enumerate(g.outputs):
            if j in self.plan.inplace:
                outs[j] = args[self.plan.inplace[j]]
                continue
            if j in self.plan.copies:
                continue
            outs[j] = self._check_out(j, out[j]) if out is not None else np.empty(
                v.type.shape, v.type.np_dtype)
        ptrs = [a.ctypes.data for a in args]
        ptrs += [o.ctypes.data if o is not None and j not in self.plan.inplace else 0
                 for j, o in enumerate(outs)]
        with self._lock:
            self._ctl[:4] = 0                # (profile counters accumulate over runs)
            ptrs += [self._arena.ctypes.data, self._ctl.ctypes.data, self._ws.ctypes.data]
            table = (ctypes.c_void_p * len(ptrs))(*ptrs)
            if self.plan.profile:
                t0 = time.perf_counter()
                self._call(table)
                self._profiled_s += time.perf_counter() - t0
            else:
                self._call(table)
            code, node = int(self._ctl[0]), int(self._ctl[1])
        if code:
            self._raise(code, node, args)
        for j, (kind, k) in self.plan.copies.items():
            outs[j] = (args[k] if kind == "arg" else outs[k]).copy()
        if out is not None:                 # the caller's buffers hold every output
            for j in self.plan.inplace:
                np.copyto(out[j], outs[j])
                outs[j] = out[j]
        return outs

    def _own_inplace_args(self, args: list[np.ndarray]) -> list[np.ndarray]:
        """An argument an output is written into must be writable and share no byte with
        another argument (else a private copy takes its place; the donation then copies)."""
        if not self.plan.inplace:
            return args
        args = list(args)
        spans = [(a.ctypes.data, a.ctypes.data + a.nbytes) for a in args]
        for i in self.plan.inplace.values():
            a = args[i]
            lo, hi = spans[i]
            shared = any(k != i and s < hi and lo < e for k, (s, e) in enumerate(spans))
            if shared or not (a.flags.writeable and a.flags.c_contiguous and a.flags.aligned):
                args[i] = np.array(a, copy=True)
                spans[i] = (0, 0)
        return args

    def call_into(self, out: list[np.ndarray], *args) -> list[np.ndarray]:
        """Like calling the executable, but writing into the given output arrays."""
        if len(out) != len(self.graph.outputs):
            raise TypeError(f"{len(self.graph.outputs)} output buffers needed, got {len(out)}")
        from ..base import validate_args
        res = self.run(validate_args(self.graph, args), out)
        for j in self.plan.copies:
            np.copyto(out[j], res[j])
        return self.apply_donations(args, list(out))

    def _check_out(self, j: int, a) -> np.ndarray:
        t = self.graph.outputs[j].type
        if not isinstance(a, np.ndarray) or a.dtype != t.np_dtype or a.shape != t.shape:
            raise TypeError(f"output buffer {j} must be a numpy array of type {t}")
        if not (a.flags.c_contiguous and a.flags.writeable and a.flags.aligned):
            raise ValueError(f"output buffer {j} must be writable, aligned and C-contiguous")
        return a

    def _call(self, table) -> None:
        # a graph of small nodes only never splits work: one thread, no pool round trip
        fn, n = self._loaded.fn, self.threads if self.plan.parallel else 1
        if n == 1:
            fn(table, 0, 1)
            return
        from .workers import workers
        workers().run(ctypes.cast(fn, ctypes.c_void_p).value, table, n,
                      lambda: fn(table, 0, n))

    def _raise(self, code: int, node_index: int, args) -> None:
        node = self.graph.nodes[node_index] if 0 <= node_index < len(self.graph.nodes) else None
        if code == 4:
            self._raise_non_finite(node, args)
        what = ERROR_MESSAGES.get(code, f"error {code}")
        where = f" in {node!r}" if node is not None else ""
        loc = f" (from {node.loc})" if node is not None and node.loc else ""
        raise NativeError(f"llvm backend: {what}{where}{loc}")

    def _raise_non_finite(self, node, args) -> None:
        """The NaN checker fired: the error names the node and its operands' ranges, the
        same text the reference gives (recomputed on this error path only)."""
        from irgraph.interpreter import ExecutionError, interpret
        from irgraph.ops.debug import NonFiniteError
        try:
            interpret(self.graph, args)
        except NonFiniteError:
            raise
        except ExecutionError as e:
            if isinstance(e.__cause__, NonFiniteError):
                raise e.__cause__ from None
        a = node.attrs if node is not None else {}
        raise NonFiniteError(f"first non-finite value: op {a.get('checked_op')!r} "
                             f"{a.get('source', '')}\n  node: {a.get('node')}")

    # ---------------------------------------------------------------- inspection
    def profile(self, top: int | None = None) -> list[dict]:
        """Where the time went over all runs so far (compiled with ``profile=True``): one row
        per node, slowest first, with its op, cycles, share of the total and milliseconds
        (the native calls' wall time split by cycle share; parallel nodes include their
        barrier)."""
        if not self.plan.profile:
            raise RuntimeError("llvm backend: compile with profile=True to profile nodes")
        cyc = self._ctl[4:].astype(np.float64)
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
        """The generated LLVM IR (as built, or after the -O3 pipeline)."""
        if self._ir is None:
            triple = jit.host()[0]
            self._ir = str(build_module(self.graph, self.plan, self._features, self.threads,
                                        triple))
        return str(jit.optimize(self._ir, self.opt)) if optimized else self._ir

    def assembly(self) -> str:
        """The host assembly of the whole module."""
        return jit.emit_assembly(jit.optimize(self.llvm_ir(), self.opt), self.opt)

    def source(self) -> str:
        return self.llvm_ir()
