"""Native worker threads that run an executable's entry on threads 1..n-1.

A Python thread pool costs a futex wake plus a GIL hand-off per call (~100 us here); these
workers wait in native code instead: each spins on its slot for a while after a run (the
next run of a training loop finds it awake, ~1 us to start), then sleeps in ``futex``
until posted to (elsewhere than Linux it polls every ``POLL_US``). One slot per worker (i64[8]):

    [0] generation (bumped to post work)   [1] generation done   [2] entry   [3] args table
    [4] tid   [5] nthreads   [6] stop   [7] sleeping

``irgraph_worker(slot)`` is the worker's whole life (called once from a daemon Python thread,
through ctypes, so the GIL is released); ``irgraph_post`` fills a slot and wakes its worker
if it sleeps; ``irgraph_wait`` spins until a posted run is done. ``irgraph_run`` is one run
from the caller's side, in ONE native call: post to workers 1..n-1, run thread 0, wait for
them all. Nothing can come between posting and waiting (a Python exception or
KeyboardInterrupt only arrives once the call returns), so workers never wait at a barrier
for a thread 0 that will not come. Every executable shares the workers (one run at a time
holds them).
"""
from __future__ import annotations

import ctypes
import os
import sys
import threading

import numpy as np
from llvmlite import ir

from ..base import fork_safe_locks
from .builder import I32, I64, PTR, VOID, cpu_relax, for_range, i64

SPIN = 1 << 12            # pause iterations before sleeping (~0.1-0.2 ms)
FUTEX_WAIT, FUTEX_WAKE = 128, 129       # the _PRIVATE variants
SYS_FUTEX = {"x86_64": 202, "aarch64": 98}
SLOT = 8
POLL_US = 200             # where there is no futex, a sleeping worker looks this often


def _futex_number(triple: str) -> int | None:
    if "linux" not in triple:
        return None
    return next((n for arch, n in SYS_FUTEX.items() if triple.startswith(arch)), None)


def workers_module(triple: str) -> ir.Module:
    m = ir.Module(name="irgraph_workers")
    m.triple = triple
    slotp = ir.PointerType(I64)
    entry_t = ir.FunctionType(VOID, [PTR, I64, I64])
    syscall = ir.Function(m, ir.FunctionType(I64, [I64], var_arg=True), "syscall")
    usleep = ir.Function(m, ir.FunctionType(I32, [I32]), "usleep")
    nr = _futex_number(triple)

    def at(b, slot, k):
        return b.gep(slot, [i64(k)])

    def relax(b):
        cpu_relax(b, m)

    def futex(b, slot, op, val):
        if nr is None:              # no futex (not Linux): poll every POLL_US instead
            if op == FUTEX_WAIT:
                b.call(usleep, [ir.Constant(I32, POLL_US)])
            return
        b.call(syscall, [i64(nr), b.bitcast(slot, PTR), i64(op), val, ir.Constant(PTR, None)])

    # ---- post(slot, entry, table, tid, n) -> the generation posted
    post = ir.Function(m, ir.FunctionType(I64, [slotp, I64, I64, I64, I64]), "irgraph_post")
    slot, fn, table, tid, n = post.args
    b = ir.IRBuilder(post.append_basic_block("entry"))
    for k, v in ((2, fn), (3, table), (4, tid), (5, n)):
        b.store(v, at(b, slot, k))
    gen = b.add(b.atomic_rmw("add", at(b, slot, 0), i64(1), "seq_cst"), i64(1))
    asleep = b.load_atomic(at(b, slot, 7), "seq_cst", 8)
    with b.if_then(b.icmp_signed("!=", asleep, i64(0))):
        futex(b, slot, FUTEX_WAKE, i64(1))
    b.ret(gen)

    # ---- wait(slot, gen): until the worker has finished generation gen
    wait = ir.Function(m, ir.FunctionType(VOID, [slotp, I64]), "irgraph_wait")
    slot, gen = wait.args
    b = ir.IRBuilder(wait.append_basic_block("entry"))
    loop, done = wait.append_basic_block("loop"), wait.append_basic_block("done")
    b.branch(loop)
    b.position_at_end(loop)
    got = b.load_atomic(at(b, slot, 1), "acquire", 8)
    with b.if_then(b.icmp_signed("!=", got, gen)):
        relax(b)
    b.cbranch(b.icmp_signed("==", got, gen), done, loop)
    b.position_at_end(done)
    b.ret_void()

    # ---- run(slots, entry, table, n): post tids 1..n-1, run tid 0 here, wait for all
    run_fn = ir.Function(m, ir.FunctionType(VOID, [ir.PointerType(slotp), I64, I64, I64]),
                         "irgraph_run")
    slots, fn, table, n = run_fn.args
    b = ir.IRBuilder(run_fn.append_basic_block("entry"))
    with for_range(b, 1, n, "post") as t:
        b.call(post, [b.load(b.gep(slots, [b.sub(t, i64(1))])), fn, table, t, n])
    b.call(b.inttoptr(fn, ir.PointerType(entry_t)), [b.inttoptr(table, PTR), i64(0), n])
    with for_range(b, 1, n, "join") as t:
        s = b.load(b.gep(slots, [b.sub(t, i64(1))]))
        b.call(wait, [s, b.load_atomic(at(b, s, 0), "acquire", 8)])
    b.ret_void()

    # ---- worker(slot): spin, sleep, run, forever (until stop)
    work = ir.Function(m, ir.FunctionType(VOID, [slotp]), "irgraph_worker")
    (slot,) = work.args
    b = ir.IRBuilder(work.append_basic_block("entry"))
    seen = b.alloca(I64, name="seen")
    found = b.alloca(I64, name="found")
    b.store(i64(0), seen)        # a fresh slot: work posted before this thread runs counts
    top = work.append_basic_block("top")
    run = work.append_basic_block("run")
    sleep = work.append_basic_block("sleep")
    b.branch(top)
    b.position_at_end(top)
    b.store(i64(0), found)
    spin_end = work.append_basic_block("spin.end")
    with for_range(b, 0, SPIN, "spin") as _:
        g = b.load_atomic(at(b, slot, 0), "acquire", 8)
        new = b.icmp_signed("!=", g, b.load(seen))
        with b.if_else(new) as (yes, no):
            with yes:
                b.store(i64(1), found)
                b.branch(spin_end)
                b.position_at_end(b.append_basic_block("dead"))
            with no:
                relax(b)
    b.branch(spin_end)
    b.position_at_end(spin_end)
    b.cbranch(b.icmp_signed("!=", b.load(found), i64(0)), run, sleep)
    # sleep: announce, re-check, then wait on the generation word
    b.position_at_end(sleep)
    b.store_atomic(i64(1), at(b, slot, 7), "seq_cst", 8)
    g = b.load_atomic(at(b, slot, 0), "seq_cst", 8)
    with b.if_then(b.icmp_signed("==", g, b.load(seen))):
        futex(b, slot, FUTEX_WAIT, b.and_(b.load(seen), i64(0xFFFFFFFF)))
    b.store_atomic(i64(0), at(b, slot, 7), "seq_cst", 8)
    b.branch(top)
    # run the posted entry, then report it done
    b.position_at_end(run)
    g = b.load_atomic(at(b, slot, 0), "acquire", 8)
    b.store(g, seen)
    stop = b.icmp_signed("!=", b.load(at(b, slot, 6)), i64(0))
    quit_, go = work.append_basic_block("quit"), work.append_basic_block("go")
    b.cbranch(stop, quit_, go)
    b.position_at_end(go)
    entry = b.inttoptr(b.load(at(b, slot, 2)), ir.PointerType(entry_t))
    b.call(entry, [b.inttoptr(b.load(at(b, slot, 3)), PTR), b.load(at(b, slot, 4)),
                   b.load(at(b, slot, 5))])
    b.store_atomic(g, at(b, slot, 1), "release", 8)
    b.branch(top)
    b.position_at_end(quit_)
    b.store_atomic(g, at(b, slot, 1), "release", 8)
    b.ret_void()
    return m


class Workers:
    """The process's native workers (started on demand, recreated after a fork)."""

    def __init__(self):
        from . import jit
        fork_safe_locks(self, "lock")
        self._loaded = jit.Loaded(jit.compiled_module("irgraph workers", workers_module),
                                  None)
        addr = self._loaded.engine.get_function_address
        self._post = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
                                      ctypes.c_int64, ctypes.c_int64, ctypes.c_int64)(
            addr("irgraph_post"))
        self._wait = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)(
            addr("irgraph_wait"))
        self._worker = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(addr("irgraph_worker"))
        self._run = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                     ctypes.c_int64)(addr("irgraph_run"))
        self._slots: list[np.ndarray] = []
        self._slot_table = (ctypes.c_void_p * 1)()
        self._pid = os.getpid()

    def _ensure(self, k: int) -> None:
        if self._pid != os.getpid():         # a forked child has no worker threads
            self._slots, self._pid = [], os.getpid()
        if len(self._slots) >= k:
            return
        while len(self._slots) < k:
            slot = np.zeros(SLOT, np.int64)
            self._slots.append(slot)
            threading.Thread(target=self._worker, args=(slot.ctypes.data,), daemon=True,
                             name=f"irgraph-llvm-worker-{len(self._slots)}").start()
        self._slot_table = (ctypes.c_void_p * len(self._slots))(
            *[s.ctypes.data for s in self._slots])

    def run(self, entry_addr: int, table, n: int) -> None:
        """Run the entry on ``n`` threads: thread 0 is the caller, workers run tids 1..n-1
        (one native call: see ``irgraph_run``)."""
        with self.lock:
            self._ensure(n - 1)
            self._run(ctypes.addressof(self._slot_table), entry_addr,
                      ctypes.cast(table, ctypes.c_void_p).value, n)


_made: list[Workers] = []
fork_safe_locks(sys.modules[__name__], "_made_lock")


def workers() -> Workers:
    """The one Workers of this process (made under a lock: its engine holds the code the
    worker threads run, so a second one must never exist and be freed)."""
    if not _made:
        with _made_lock:
            if not _made:
                _made.append(Workers())
    return _made[0]


def _after_fork_in_child() -> None:
    """Only the forking thread lives on in a child: no workers (the locks, like every lock
    of ``fork_safe_locks``, are fresh in the child). Start afresh."""
    for w in _made:
        w._slots, w._pid = [], os.getpid()


os.register_at_fork(after_in_child=_after_fork_in_child)
