"""Native worker threads that run an executable's entry on threads 1..n-1.

A Python thread pool costs a futex wake plus a GIL hand-off per call (~100 us here); these
workers wait in native code instead: each spins on its slot for a while after a run (the
next run of a training loop finds it awake, ~1 us to start), then sleeps in ``futex``
until posted to (elsewhere than Linux it polls every ``POLL_US``). One slot per worker (i64[8]):

    [0] generation (bumped to post work)   [1] generation done   [2] entry   [3] args table
    [4] tid   [5] nthreads   [6] stop   [7] sleeping   [8] caller sleeping
    [9] the last generation started or cancelled   [10] the last generation the caller
    has finished (its whole run: thread 0's part and every join)   [11] the CPU thread 0
    ran on when it posted   [12] the address of the allowed-CPU mask   [13] its bytes (0:
    no moving)

A worker woken on the CPU thread 0 is running on (Linux places a woken thread beside its
waker when it judges their caches shared: after an idle spell it often does, and then the
two threads take turns on one core for milliseconds, the spinning one slowing the other)
moves itself to another allowed CPU before it runs (``sched_setaffinity`` without that
CPU, then the whole mask again, so the scheduler stays free to move it later).

``irgraph_worker(slot)`` is the worker's whole life (called once from a daemon Python thread,
through ctypes, so the GIL is released); ``irgraph_post`` fills a slot and wakes its worker
if it sleeps; ``irgraph_wait`` spins until a posted run is done. ``irgraph_run`` is one run
from the caller's side, in ONE native call: post to workers 1..n-1, run thread 0, then, per
worker, cancel its run if it has not started (the entry's work is claimed, module.py: the
others did its share) or wait for it. Nothing can come between posting and waiting (a
Python exception or KeyboardInterrupt only arrives once the call returns), so workers never
wait for a thread 0 that will not come. Every executable shares the workers (one run at a
time holds them). ``task_fns`` emits the entry's waits for a task's shares (spin, then
futex) and ``barrier_fn`` the barrier of lowerings that meet.
"""
from __future__ import annotations

import atexit
import ctypes
import os
import random
import sys
import threading
import time

import numpy as np
from llvmlite import ir

from ..base import fork_safe_locks
from . import jit
from .builder import I32, I64, PTR, VOID, cpu_relax, for_range, i64

# Spin budgets. A sleeping thread costs a futex wake and, on a virtual machine, the
# vCPU's own wake-up (often 50-500 us): inside a run of many small nodes (MobileNetV2 at
# batch 1, two threads) 100 us budgets let one sleep set off others, and the median run
# took 1.5-2x the best; with 1 ms at barriers and task waits, and the workers' budget
# counted from the end of the caller's whole run, it stays within about 1.2x. A thread
# whose partner is descheduled (another process on its core) still gives the core back
# after 1 ms.
WORKER_SPIN_NS = 300_000   # a worker spins this long after a run (the caller's whole run,
                           # not only its own part) before it sleeps
HOLD_CAP_NS = 2_000_000    # ... but a caller descheduled longer than this is not waited for
JOIN_SPIN_NS = 100_000     # thread 0 spins this long for a worker to finish, then sleeps
BARRIER_SPIN_NS = 1_000_000  # a thread early at a barrier spins this long, then sleeps
TASK_SPIN_NS = 1_000_000   # a thread waiting for a task's last shares spins this long
SLEEP_CAP_NS = 1_000_000   # a futex sleep wakes after this at the latest (re-checks)
CLOCK_EVERY = 64           # spin rounds between two clock readings
FUTEX_WAIT, FUTEX_WAKE = 128, 129       # the _PRIVATE variants
SYS_FUTEX = {"x86_64": 202, "aarch64": 98}
SYS_GETCPU = {"x86_64": 309, "aarch64": 168}
SYS_SETAFFINITY = {"x86_64": 203, "aarch64": 122}
MASK_BYTES = 128          # a cpu_set_t: CPUs 0..1023
CLOCK_MONOTONIC = {"linux": 1, "darwin": 6, "apple": 6}
SLOT = 16
POLL_US = 200             # where there is no futex, a sleeping thread looks this often
LOW32 = 0xFFFFFFFF
SLEEPER = 1 << 32         # barrier generation word: bit 32 says someone sleeps on it


def _futex_number(triple: str) -> int | None:
    if "linux" not in triple:
        return None
    return next((n for arch, n in SYS_FUTEX.items() if triple.startswith(arch)), None)


class _Native:
    """Helpers emitting the waiting primitives into a module: the wall clock, futex wait and
    wake (a poll elsewhere than Linux) and a spin-then-sleep loop."""

    def __init__(self, m: ir.Module):
        self.m = m
        triple = m.triple or ""
        self.nr = _futex_number(triple)
        linux = "linux" in triple
        self.getcpu_nr = next((n for a, n in SYS_GETCPU.items() if linux and
                               triple.startswith(a)), None)
        self.affinity_nr = next((n for a, n in SYS_SETAFFINITY.items() if linux and
                                 triple.startswith(a)), None)
        self.clock_id = next((v for k, v in CLOCK_MONOTONIC.items() if k in triple), 1)
        ts = ir.LiteralStructType([I64, I64])
        self.ts_t = ts
        self.clock = _extern(m, "clock_gettime", I32, [I32, ir.PointerType(ts)])
        self.syscall = _extern(m, "syscall", I64, [I64], var_arg=True)
        self.usleep = _extern(m, "usleep", I32, [I32])

    def now_ns(self, b: ir.IRBuilder, ts) -> ir.Value:
        b.call(self.clock, [ir.Constant(I32, self.clock_id), ts])
        sec = b.load(b.gep(ts, [ir.Constant(I32, 0), ir.Constant(I32, 0)]))
        nsec = b.load(b.gep(ts, [ir.Constant(I32, 0), ir.Constant(I32, 1)]))
        return b.add(b.mul(sec, i64(1_000_000_000)), nsec)

    def wait(self, b: ir.IRBuilder, word, expected, cap) -> None:
        """Sleep while the low 32 bits of ``*word`` equal ``expected`` (at most ``cap``, a
        timespec*): futex on Linux, a short poll elsewhere."""
        if self.nr is None:
            b.call(self.usleep, [ir.Constant(I32, POLL_US)])
            return
        b.call(self.syscall, [i64(self.nr), b.bitcast(word, PTR), i64(FUTEX_WAIT),
                              b.and_(expected, i64(LOW32)), b.bitcast(cap, PTR)])

    def cpu(self, b: ir.IRBuilder, slot) -> ir.Value:
        """The CPU this thread runs on (-1 where unknown); ``slot`` an i32 stack slot."""
        if self.getcpu_nr is None:
            return i64(-1)
        b.store(ir.Constant(I32, -1), slot)
        b.call(self.syscall, [i64(self.getcpu_nr), b.bitcast(slot, PTR),
                              ir.Constant(PTR, None), ir.Constant(PTR, None)])
        return b.sext(b.load(slot), I64)

    def move_off(self, b: ir.IRBuilder, cpu, mask, nbytes, cpu_slot,
                 buf) -> None:
        """If this thread runs on ``cpu``, move it to another CPU of the allowed ``mask``
        (``nbytes`` bytes; 0: never): the mask without ``cpu``, then the whole mask."""
        if self.affinity_nr is None or self.getcpu_nr is None:
            return
        usable = b.and_(b.icmp_signed(">", nbytes, i64(0)),
                        b.icmp_signed(">=", cpu, i64(0)))
        usable = b.and_(usable, b.icmp_signed("<", cpu, i64(8 * MASK_BYTES)))
        with b.if_then(usable, likely=False):
            here = self.cpu(b, cpu_slot)
            with b.if_then(b.icmp_signed("==", here, cpu), likely=False):
                src = b.inttoptr(mask, ir.PointerType(I64))
                for k in range(MASK_BYTES // 8):
                    b.store(b.load(b.gep(src, [i64(k)])), b.gep(buf, [i64(k)]))
                word = b.gep(buf, [b.sdiv(cpu, i64(64))])
                bit = b.shl(i64(1), b.srem(cpu, i64(64)))
                b.store(b.and_(b.load(word), b.xor(bit, i64(-1))), word)
                b.call(self.syscall, [i64(self.affinity_nr), i64(0), nbytes,
                                      b.bitcast(buf, PTR)])
                b.call(self.syscall, [i64(self.affinity_nr), i64(0), nbytes,
                                      b.bitcast(src, PTR)])

    def wake(self, b: ir.IRBuilder, word) -> None:
        if self.nr is not None:
            b.call(self.syscall, [i64(self.nr), b.bitcast(word, PTR), i64(FUTEX_WAKE),
                                  i64(0x7FFFFFFF), ir.Constant(PTR, None)])

    def spin_then_sleep(self, fn: ir.Function, b: ir.IRBuilder, ready, budget_ns: int,
                        sleep, hold=None) -> None:
        """Emit: spin (``pause``) until ``ready(b)`` (an i1) holds; after ``budget_ns`` of
        wall-clock time (read every ``CLOCK_EVERY`` rounds), call ``sleep(b)`` between two
        tests instead. ``hold(b)`` (an i1): while it holds, for at most ``HOLD_CAP_NS``, the
        budget has not started (the clock restarts). ``b`` ends positioned after the
        loop."""
        ts, k, t0, h0 = _allocas(fn, b, [self.ts_t, I64, I64, I64])
        b.store(i64(0), k)
        b.store(i64(-1), t0)
        b.store(i64(-1), h0)
        test = fn.append_basic_block("w.test")
        spin = fn.append_basic_block("w.spin")
        clock = fn.append_basic_block("w.clock")
        slp = fn.append_basic_block("w.sleep")
        done = fn.append_basic_block("w.done")
        b.branch(test)
        b.position_at_end(test)
        b.cbranch(ready(b), done, spin)
        b.position_at_end(spin)
        n = b.add(b.load(k), i64(1))
        b.store(n, k)
        cpu_relax(b, self.m)
        b.cbranch(b.icmp_signed("==", b.and_(n, i64(CLOCK_EVERY - 1)), i64(0)), clock, test)
        b.position_at_end(clock)
        now = self.now_ns(b, ts)
        first = b.icmp_signed("<", b.load(t0), i64(0))
        if hold is not None:
            with b.if_then(b.icmp_signed("<", b.load(h0), i64(0))):
                b.store(now, h0)
            held = b.icmp_signed("<", b.sub(now, b.load(h0)), i64(HOLD_CAP_NS))
            first = b.or_(first, b.and_(held, hold(b)))
        with b.if_then(first):
            b.store(now, t0)
        late = b.icmp_signed(">", b.sub(now, b.load(t0)), i64(budget_ns))
        b.cbranch(late, slp, test)
        b.position_at_end(slp)
        sleep(b)
        b.cbranch(ready(b), done, slp)
        b.position_at_end(done)

    def cap(self, fn: ir.Function, b: ir.IRBuilder):
        """A timespec of ``SLEEP_CAP_NS`` (stored where ``b`` is)."""
        (cap,) = _allocas(fn, b, [self.ts_t])
        b.store(ir.Constant(self.ts_t, [i64(SLEEP_CAP_NS // 10**9),
                                        i64(SLEEP_CAP_NS % 10**9)]), cap)
        return cap


def _allocas(fn: ir.Function, b: ir.IRBuilder, types) -> list:
    """Stack slots at the start of ``fn``'s entry block; ``b`` stays at the end of its block
    (llvmlite builders anchor by index, so ``b`` is positioned again)."""
    entry = fn.entry_basic_block
    eb = ir.IRBuilder(entry)
    eb.position_at_start(entry)
    slots = [eb.alloca(t) for t in types]
    b.position_at_end(b.block)
    return slots


PARALLEL_FLOPS = 1_000_000      # a node below both runs on thread 0 alone: splitting it
PARALLEL_BYTES = 512 * 1024     # would cost more (a barrier, a cold core) than it saves


def worth_parallel(node) -> bool:
    """Is ``node``'s work (the registry's cost: flops and bytes moved) large enough to split
    across threads? Recurrences are judged per step by their own rule."""
    if node.op == "scan":
        return True
    c = node.opdef.cost([v.type for v in node.inputs], [v.type for v in node.outputs],
                        node.attrs)
    return c.flops >= PARALLEL_FLOPS or c.bytes >= PARALLEL_BYTES


def _extern(m: ir.Module, name: str, ret, args, var_arg: bool = False) -> ir.Function:
    fn = m.globals.get(name)
    return fn if fn is not None else ir.Function(
        m, ir.FunctionType(ret, args, var_arg=var_arg), name)


def workers_module(triple: str) -> ir.Module:
    """Slot words (i64[SLOT]): [0] generation (bumped to post work)  [1] generation done
    [2] entry  [3] args table  [4] tid  [5] nthreads  [6] stop  [7] worker sleeping
    [8] caller sleeping on [1]  [9] the last generation started or cancelled  [10] the
    last generation whose caller's run is over."""
    m = ir.Module(name="irgraph_workers")
    m.triple = triple
    nat = _Native(m)
    slotp = ir.PointerType(I64)
    entry_t = ir.FunctionType(VOID, [PTR, I64, I64])

    def at(b, slot, k):
        return b.gep(slot, [i64(k)])

    # ---- post(slot, entry, table, tid, n) -> the generation posted
    post = ir.Function(m, ir.FunctionType(I64, [slotp, I64, I64, I64, I64]), "irgraph_post")
    slot, fn, table, tid, n = post.args
    b = ir.IRBuilder(post.append_basic_block("entry"))
    for k, v in ((2, fn), (3, table), (4, tid), (5, n)):
        b.store(v, at(b, slot, k))
    gen = b.add(b.atomic_rmw("add", at(b, slot, 0), i64(1), "seq_cst"), i64(1))
    asleep = b.load_atomic(at(b, slot, 7), "seq_cst", 8)
    with b.if_then(b.icmp_signed("!=", asleep, i64(0))):
        nat.wake(b, at(b, slot, 0))
    b.ret(gen)

    # ---- wait(slot, gen): until the worker has finished generation gen (spin, then sleep
    # on the done word: a descheduled worker gets the core back)
    wait = ir.Function(m, ir.FunctionType(VOID, [slotp, I64]), "irgraph_wait")
    slot, gen = wait.args
    b = ir.IRBuilder(wait.append_basic_block("entry"))
    cap = nat.cap(wait, b)

    def finished(b):
        return b.icmp_signed("==", b.load_atomic(at(b, slot, 1), "seq_cst", 8), gen)

    def doze(b):
        b.store_atomic(i64(1), at(b, slot, 8), "seq_cst", 8)
        got = b.load_atomic(at(b, slot, 1), "seq_cst", 8)
        with b.if_then(b.icmp_signed("!=", got, gen)):
            nat.wait(b, at(b, slot, 1), got, cap)
        b.store_atomic(i64(0), at(b, slot, 8), "seq_cst", 8)
    nat.spin_then_sleep(wait, b, finished, JOIN_SPIN_NS, doze)
    b.ret_void()

    # ---- claim(slot, gen) -> whether this call, not another, took generation gen (the
    # worker when it starts a run, the caller when it cancels one not yet started): the
    # first to move word 9 to gen. Generations only grow, so a word 9 at gen or past it
    # means gen was taken: a worker that read gen, then lingered (descheduled) while the
    # caller cancelled gen and a later run too, must not take gen over the later one
    # (it would run the entry and table of that later run, whose arrays may be freed)
    claim = ir.Function(m, ir.FunctionType(ir.IntType(1), [slotp, I64]), "irgraph_claim_run")
    slot, gen = claim.args
    b = ir.IRBuilder(claim.append_basic_block("entry"))
    again = claim.append_basic_block("again")
    b.branch(again)
    b.position_at_end(again)
    cur = b.load_atomic(at(b, slot, 9), "seq_cst", 8)
    with b.if_then(b.icmp_signed(">=", cur, gen), likely=False):
        b.ret(ir.Constant(ir.IntType(1), 0))
    pair = b.cmpxchg(at(b, slot, 9), cur, gen, "seq_cst", "seq_cst")
    won = claim.append_basic_block("won")
    b.cbranch(b.extract_value(pair, 1), won, again)
    b.position_at_end(won)
    b.ret(ir.Constant(ir.IntType(1), 1))

    # ---- run(slots, entry, table, n): post tids 1..n-1, run tid 0 here, wait for the
    # workers that started
    run_fn = ir.Function(m, ir.FunctionType(VOID, [ir.PointerType(slotp), I64, I64, I64]),
                         "irgraph_run")
    slots, fn, table, n = run_fn.args
    b = ir.IRBuilder(run_fn.append_basic_block("entry"))
    (cpu_slot,) = _allocas(run_fn, b, [I32])
    here = nat.cpu(b, cpu_slot)
    with for_range(b, 1, n, "cpu") as t:
        b.store(here, at(b, b.load(b.gep(slots, [b.sub(t, i64(1))])), 11))
    with for_range(b, 1, n, "post") as t:
        b.call(post, [b.load(b.gep(slots, [b.sub(t, i64(1))])), fn, table, t, n])
    b.call(b.inttoptr(fn, ir.PointerType(entry_t)), [b.inttoptr(table, PTR), i64(0), n])
    with for_range(b, 1, n, "join") as t:
        s = b.load(b.gep(slots, [b.sub(t, i64(1))]))
        g = b.load_atomic(at(b, s, 0), "acquire", 8)
        # a worker that has not started yet never will: its shares were claimed by others
        with b.if_then(b.not_(b.call(claim, [s, g]))):
            b.call(wait, [s, g])
    with for_range(b, 1, n, "over") as t:       # the workers' spin budgets start now
        s = b.load(b.gep(slots, [b.sub(t, i64(1))]))
        b.store_atomic(b.load_atomic(at(b, s, 0), "acquire", 8), at(b, s, 10), "release", 8)
    b.ret_void()

    # ---- worker(slot): spin, sleep, run, forever (until stop)
    work = ir.Function(m, ir.FunctionType(VOID, [slotp]), "irgraph_worker")
    (slot,) = work.args
    b = ir.IRBuilder(work.append_basic_block("entry"))
    cap = nat.cap(work, b)
    seen, cpu_slot, mask_buf = _allocas(work, b, [I64, I32,
                                                  ir.ArrayType(I64, MASK_BYTES // 8)])
    mask_buf = b.bitcast(mask_buf, ir.PointerType(I64))
    b.store(i64(0), seen)        # a fresh slot: work posted before this thread runs counts
    top = work.append_basic_block("top")
    b.branch(top)
    b.position_at_end(top)

    def posted(b):
        return b.icmp_signed("!=", b.load_atomic(at(b, slot, 0), "acquire", 8), b.load(seen))

    def sleep(b):    # announce, re-check, then wait on the generation word
        b.store_atomic(i64(1), at(b, slot, 7), "seq_cst", 8)
        g = b.load_atomic(at(b, slot, 0), "seq_cst", 8)
        with b.if_then(b.icmp_signed("==", g, b.load(seen))):
            nat.wait(b, at(b, slot, 0), b.load(seen), cap)
        b.store_atomic(i64(0), at(b, slot, 7), "seq_cst", 8)
    def running(b):  # the caller's run is not over: a thread 0 still at work comes back
        return b.icmp_signed("!=", b.load_atomic(at(b, slot, 10), "acquire", 8),
                             b.load(seen))
    nat.spin_then_sleep(work, b, posted, WORKER_SPIN_NS, sleep, hold=running)
    # run the posted entry, then report it done (waking thread 0 if it sleeps)
    g = b.load_atomic(at(b, slot, 0), "acquire", 8)
    b.store(g, seen)
    stop = b.icmp_signed("!=", b.load(at(b, slot, 6)), i64(0))
    quit_, go = work.append_basic_block("quit"), work.append_basic_block("go")
    b.cbranch(stop, quit_, go)
    b.position_at_end(go)
    nat.move_off(b, b.load(at(b, slot, 11)), b.load(at(b, slot, 12)),
                 b.load(at(b, slot, 13)), cpu_slot, mask_buf)
    with b.if_then(b.call(claim, [slot, g])):      # (else the caller cancelled it)
        entry = b.inttoptr(b.load(at(b, slot, 2)), ir.PointerType(entry_t))
        b.call(entry, [b.inttoptr(b.load(at(b, slot, 3)), PTR), b.load(at(b, slot, 4)),
                       b.load(at(b, slot, 5))])
        _report_done(b, nat, at(b, slot, 1), g, at(b, slot, 8))
    b.branch(top)
    b.position_at_end(quit_)
    _report_done(b, nat, at(b, slot, 1), g, at(b, slot, 8))
    b.ret_void()
    return m


def _report_done(b, nat: _Native, done_p, g, waiter_p) -> None:
    b.store_atomic(g, done_p, "seq_cst", 8)
    with b.if_then(b.icmp_signed("!=", b.load_atomic(waiter_p, "seq_cst", 8), i64(0))):
        nat.wake(b, done_p)


def barrier_fn(module: ir.Module) -> ir.Function:
    """``irgraph.barrier(ctl, n)``: all ``n`` threads meet, counting arrivals in ctl[2] and
    the generation in the low 32 bits of ctl[3]. A waiter spins (``pause``) for
    ``BARRIER_SPIN_NS`` of wall-clock time (the others are usually microseconds away), then
    sets bit 32 of ctl[3] and sleeps on it in ``futex`` (a descheduled thread gets the core
    back instead of fighting spinners); the last to arrive bumps the generation and clears
    that bit in one compare-exchange, and wakes the sleepers if it was set (both on one
    word, so no wake-up is lost)."""
    name = "irgraph.barrier"
    if name in module.globals:
        return module.globals[name]
    fn = ir.Function(module, ir.FunctionType(VOID, [ir.PointerType(I64), I64]), name)
    fn.linkage = "internal"
    nat = _Native(module)
    ctl, n = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    cap = nat.cap(fn, b)
    count, gen_p = b.gep(ctl, [i64(2)]), b.gep(ctl, [i64(3)])
    gen = b.and_(b.load_atomic(gen_p, "acquire", 8), i64(LOW32))
    arrived = b.atomic_rmw("add", count, i64(1), "acq_rel")
    with b.if_else(b.icmp_signed("==", arrived, b.sub(n, i64(1)))) as (last, other):
        with last:
            b.store_atomic(i64(0), count, "monotonic", 8)
            cas = fn.append_basic_block("release.cas")
            b.branch(cas)
            b.position_at_end(cas)
            old = b.load_atomic(gen_p, "seq_cst", 8)
            new = b.and_(b.add(b.and_(old, i64(LOW32)), i64(1)), i64(LOW32))
            pair = b.cmpxchg(gen_p, old, new, "seq_cst", "seq_cst")
            ok = b.extract_value(pair, 1)
            wake = fn.append_basic_block("release.wake")
            b.cbranch(ok, wake, cas)
            b.position_at_end(wake)
            with b.if_then(b.icmp_signed("!=", b.and_(old, i64(SLEEPER)), i64(0))):
                nat.wake(b, gen_p)
        with other:
            def released(b):
                now = b.and_(b.load_atomic(gen_p, "acquire", 8), i64(LOW32))
                return b.icmp_signed("!=", now, gen)

            def sleep(b):
                old = b.atomic_rmw("or", gen_p, i64(SLEEPER), "seq_cst")
                with b.if_then(b.icmp_signed("==", b.and_(old, i64(LOW32)), gen)):
                    nat.wait(b, gen_p, gen, cap)
            nat.spin_then_sleep(fn, b, released, BARRIER_SPIN_NS, sleep)
    b.ret_void()
    return fn


def task_fns(module: ir.Module) -> tuple[ir.Function, ir.Function]:
    """``irgraph.task_wait(done, n)`` and ``irgraph.task_done(done, n)`` in ``module``: a
    task's done counter (low 32 bits of ``*done``) counts its finished shares, ``n`` in
    all. ``task_done`` adds one (release); the thread that adds the ``n``-th wakes the
    sleepers if bit 32 says there are some. ``task_wait`` returns once at least ``n`` are
    done (acquire; a counter that a loop's steps share, ``module.claim_step``, goes on
    past it): it spins (``pause``) for ``TASK_SPIN_NS`` of wall-clock time, then sets bit
    32 and sleeps on the word in ``futex`` (both on one word: no wake-up is lost)."""
    name_w, name_d = "irgraph.task_wait", "irgraph.task_done"
    if name_w in module.globals:
        return module.globals[name_w], module.globals[name_d]
    fnty = ir.FunctionType(VOID, [ir.PointerType(I64), I64])
    nat = _Native(module)

    done = ir.Function(module, fnty, name_d)
    done.linkage = "internal"
    word, n = done.args
    b = ir.IRBuilder(done.append_basic_block("entry"))
    old = b.atomic_rmw("add", word, i64(1), "acq_rel")
    last = b.icmp_signed("==", b.and_(b.add(old, i64(1)), i64(LOW32)), n)
    with b.if_then(b.and_(last, b.icmp_signed("!=", b.and_(old, i64(SLEEPER)), i64(0)))):
        nat.wake(b, word)
    b.ret_void()

    wait = ir.Function(module, fnty, name_w)
    wait.linkage = "internal"
    word, n = wait.args
    b = ir.IRBuilder(wait.append_basic_block("entry"))
    cap = nat.cap(wait, b)

    def finished(b):
        return b.icmp_unsigned(">=", b.and_(b.load_atomic(word, "acquire", 8), i64(LOW32)),
                               n)

    def sleep(b):
        old = b.atomic_rmw("or", word, i64(SLEEPER), "seq_cst")
        with b.if_then(b.icmp_unsigned("<", b.and_(old, i64(LOW32)), n)):
            nat.wait(b, word, old, cap)
    nat.spin_then_sleep(wait, b, finished, TASK_SPIN_NS, sleep)
    b.ret_void()
    return wait, done


class Workers:
    """The process's native workers (started on demand, recreated after a fork)."""

    def __init__(self):
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
        self._threads: list[threading.Thread] = []
        self._slot_table = (ctypes.c_void_p * 1)()
        self._pid = os.getpid()
        self._mask = _allowed_mask()

    def _ensure(self, k: int) -> None:
        if self._pid != os.getpid():         # a forked child has no worker threads
            self._slots, self._threads, self._pid = [], [], os.getpid()
        if len(self._slots) >= k:
            return
        while len(self._slots) < k:
            slot = np.zeros(SLOT, np.int64)
            slot[11] = -1
            if self._mask is not None:
                slot[12], slot[13] = self._mask.ctypes.data, MASK_BYTES
            self._slots.append(slot)
            t = threading.Thread(target=self._worker, args=(slot.ctypes.data,), daemon=True,
                                 name=f"irgraph-llvm-worker-{len(self._slots)}")
            t.start()
            self._threads.append(t)
        self._slot_table = (ctypes.c_void_p * len(self._slots))(
            *[s.ctypes.data for s in self._slots])

    def run(self, entry_addr: int, table, n: int) -> None:
        """Run the entry on ``n`` threads: thread 0 is the caller, workers run tids 1..n-1
        (one native call: see ``irgraph_run``)."""
        with self.lock:
            self._ensure(n - 1)
            self._run(ctypes.addressof(self._slot_table), entry_addr,
                      ctypes.cast(table, ctypes.c_void_p).value, n)


    def stop(self, timeout: float = 5.0) -> None:
        """Stop and join the worker threads (at interpreter exit: a worker must not be left
        inside JIT code or reading its slot while the interpreter frees them)."""
        if not self.lock.acquire(timeout=timeout):
            return
        try:
            if self._pid != os.getpid():
                return
            for s in self._slots:
                s[6] = 1                                  # the stop word, read after a post
            for s in self._slots:
                self._post(s.ctypes.data, 0, 0, 0, 0)
            for t in self._threads:
                t.join(timeout)
            self._slots, self._threads = [], []
        finally:
            self.lock.release()


def run_entry(fn, table, n: int, choice: ThreadChoice | None) -> None:
    """Run an executable's entry ``fn`` (a ctypes function) on ``n`` threads, or, with a
    ``choice``, on the thread count it picks (timing the call for it)."""
    if choice is None:
        m = n
    else:
        m = choice.pick()
        t0 = time.perf_counter()
    if m == 1:
        fn(table, 0, 1)
    else:
        workers().run(ctypes.cast(fn, ctypes.c_void_p).value, table, m)
    if choice is not None:
        choice.record(m, time.perf_counter() - t0)


class ThreadChoice:
    """Which thread count runs an executable's next call: 1 or all of them, whichever has
    the lower median call time NOW. Each call's native time is recorded. The current choice
    runs; every ``period`` calls or so the other count runs ``SETTLE + WINDOW`` calls in a
    row (a probe), and the median of its last ``WINDOW`` calls is set against the median of
    the current count's last ``WINDOW`` calls, made just before the probe: the choice moves
    when the probe's is lower by ``MARGIN`` (10%), and lower by as much also than the median
    of the current count's last ``LONG`` calls, of which there must be ``MOVE_AFTER`` at
    least (about three blocks of a library run in blocks beside us: one window slowed by a
    neighbour's spinning pool does not move the choice, a lasting slowdown does; nor do a
    process's first calls, which meet its neighbours' start). A probe ends as soon as its outcome is
    known (more than half its window below that median, or half or more not, or its first
    judged call ``CLEAR`` slower). The first ``SETTLE`` calls of a run of several threads
    (the first call of a run of one) are not judged: several threads started while one
    thread ran pay the wake-up of workers asleep on their futexes and of an idle core, and
    find their caches cold (a recurrent training step on two threads right after
    one-thread calls: 13.5, 11.7, 10.8, then 7.2 ms), costs the current choice does not pay
    from one call to the next.

    Medians of consecutive calls, not best calls: a count whose calls are sometimes fast
    and often slow (two threads when a neighbouring process or thread pool takes a core for
    part of the time) must not win on its fast calls alone, and two windows of consecutive
    calls meet a slowdown that recurs every few calls (a thread pool run in blocks beside
    us) alike. A losing probe doubles the period (up to ``PROBE_MAX``, drawn with a random part so the probes do not lock onto
    a cycle of the load), so a losing option costs at most (``SETTLE + WINDOW``) /
    ``PROBE_MAX`` of the calls. ``SLOW_RUN`` calls in a row of several threads much slower than their
    recent median (another process, or numpy's or torch's thread pool in this process, took
    a core; one slow call is noise) bring the next probe forward. So threads that lose their cores do
    not hold up every step, and a slowdown never outlives what caused it by more than
    ``PROBE_MAX`` calls."""
    WINDOW = 5
    SETTLE = 2            # the first calls of a run of several threads, not judged
    LONG = 15             # the current count's calls a winning probe must also beat
    # and of which a move needs at least this many (two windows: an MLP step beside jax and
    # torch, all threads slow for its first calls only, moved to one thread on its first
    # window and stayed some 40 calls, 1.2-1.3x the fixed count's median; three windows
    # kept a LeNet step beside a busy process on two threads 22 calls at 1.6x)
    MOVE_AFTER = 10
    PROBE_MIN = 16
    PROBE_MAX = 128
    SUDDEN = 1.5          # a call this much slower than its recent median is slow
    # a move needs the probe at least this much faster (a count within 10% of the other is
    # as good; two windows of a noisy stretch differ by that much and more)
    MARGIN = 0.1
    SLOW_RUN = 3          # so many slow calls in a row: probe soon
    # a probe's first judged call this much slower than the current median ends it, lost:
    # a losing probe then costs the settling call and that one, not SETTLE + WINDOW / 2
    # (one thread's MLP step 3.8 ms against two threads' 2.2)
    CLEAR = 0.3

    def __init__(self, threads: int):
        self.options = (threads, 1)
        self.current = threads
        self.history: dict[int, list[float]] = {1: [], threads: []}   # last LONG judged
        self.fresh = 0                    # judged calls of the current count since a probe
        self.period = self.PROBE_MIN
        self.countdown = 0
        self.slow = 0
        self.last: int | None = None      # the previous call's count
        self.run = 0                      # calls of that count in a row
        self.probe: list[float] | None = None   # a probe's judged calls so far
        self.rng = random.Random(threads)

    def _other(self) -> int:
        return self.options[1] if self.current == self.options[0] else self.options[0]

    def _wait(self, calls: int) -> None:
        self.countdown = calls + self.rng.randrange(calls // 2 + 1)

    def _window(self) -> list[float]:
        """The current count's judged calls since the last probe, the last WINDOW of them."""
        return self.history[self.current][-min(self.fresh, self.WINDOW):] if self.fresh else []

    def pick(self) -> int:
        if self.fresh < self.WINDOW:      # first, a window of the current count
            return self.current
        if self.probe is not None or self.countdown <= 0:
            return self._other()
        return self.current

    def record(self, n: int, seconds: float) -> None:
        self.run = self.run + 1 if n == self.last else 1
        self.last = n
        settling = self.run <= (self.SETTLE if n > 1 else 1)
        cur = self.current
        if n == cur:
            if settling:
                self.countdown -= 1
                return
            window = self._window()
            before = _median(window) if window else seconds
            hist = self.history[n]
            hist.append(seconds)
            del hist[:-self.LONG]
            self.fresh += 1
            self.countdown -= 1
            # slow calls on one thread: the core is contended, and more threads only add
            # to it; slow calls on several: a thread lost its core, one thread may do better
            self.slow = self.slow + 1 if n > 1 and seconds > self.SUDDEN * before else 0
            if self.slow >= self.SLOW_RUN:
                self.countdown, self.slow = min(self.countdown, 1), 0
            return
        if self.probe is None:
            self.probe = []
        if settling:
            return
        self.probe.append(seconds)
        # the probe's median is below the current median once more than half its window
        # is, and cannot be once half or more is not: decided as soon as either holds
        now = _median(self._window())
        bar = now * (1 - self.MARGIN)
        below = sum(t < bar for t in self.probe)
        half = self.WINDOW // 2 + 1
        # a first judged call far slower than the current median is a loss at once (no
        # count is that much slower by chance often enough to matter: at worst the next
        # probe comes a period later, or sooner when calls turn slow)
        clear_loss = len(self.probe) == 1 and seconds > now * (1 + self.CLEAR)
        if not clear_loss and below < half and len(self.probe) - below < half:
            return
        hist = self.history[cur]
        # a move needs MOVE_AFTER calls of the current count to set the probe against: the
        # first calls of a process meet its neighbours' start (thread pools still
        # spinning after their own first calls, compiles) and are no measure of it
        lasting = (len(hist) >= self.MOVE_AFTER
                   and _median(self.probe) < _median(hist) * (1 - self.MARGIN))
        self.probe, self.slow, probe = None, 0, self.probe
        self.fresh = 0                    # the next probe's window: calls after this one
        if below >= half and not lasting:  # a window's win: look again after the next one
            self.countdown = 0
            return
        if below >= half:                 # move
            self.history[n] = []
            self.current, self.period = n, self.PROBE_MIN
        elif _median(probe) < now * (1 + self.MARGIN):
            # within the margin either way: a close call, so look again as soon as ever (a
            # probe of a count at most 10% slower costs little; a long wait on a count
            # that became the faster one would cost every call of the wait)
            self.period = self.PROBE_MIN
        else:
            self.period = min(2 * self.period, self.PROBE_MAX)
        self._wait(self.period)


def _allowed_mask() -> np.ndarray | None:
    """The CPUs this process may run on as a cpu_set_t (``MASK_BYTES``), None where a
    worker has nowhere to move (one CPU, CPUs past the mask, no affinity call)."""
    try:
        cpus = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return None
    if len(cpus) < 2 or max(cpus) >= 8 * MASK_BYTES:
        return None
    mask = np.zeros(MASK_BYTES, np.uint8)
    for c in cpus:
        mask[c // 8] |= 1 << (c % 8)
    return mask


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2]


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


@atexit.register
def _stop_workers() -> None:
    for w in _made:
        w.stop()


def _after_fork_in_child() -> None:
    """Only the forking thread lives on in a child: no workers (the locks, like every lock
    of ``fork_safe_locks``, are fresh in the child). Start afresh."""
    for w in _made:
        w._slots, w._threads, w._pid = [], [], os.getpid()


os.register_at_fork(after_in_child=_after_fork_in_child)
