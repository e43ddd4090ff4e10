"""The lowering table and the context every lowering gets.

A lowering has one signature, ``fn(ctx, node, ins, outs)``: it emits code at ``ctx.b`` that
reads the input buffers and writes the output buffers of ``node``. It is registered under
its op name(s) with ``@lowering("op", parallel=...)``:

* ``parallel=True``: every thread runs it and the lowering splits its outermost loop with
  ``ctx.split`` (threads never write the same element);
* ``parallel=False``: only thread 0 runs it.

A parallel node's share ``[lo, hi)`` comes from ``ctx.split``: the entry runs it either as
claimed shares (``ctx.tid`` is then a share index of ``ctx.nthreads`` shares, each share run
by whichever thread claims it, see module.py) or, where the lowering MEETS (calls
``ctx.barrier()`` between phases, or keeps per-thread areas in the node's arena scratch
indexed by ``ctx.tid``), on every thread at once with ``ctx.tid`` the thread's id. Declare
that with ``meets=`` (True, or a test of (node, threads, features)); by default an op meets when it has a
scratch rule (``SCRATCH``). A share never meets: the kernel's build checks it.

Ops that truly cannot be lowered go into ``UNLOWERABLE`` with the reason (the registry-wide
test accepts only those).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

from llvmlite import ir

from irgraph import IRError, Node

from . import workers
from .builder import i64

# error codes set in the control block; the executable turns them into exceptions
ERROR_MESSAGES = {
    1: "a class index (target) is outside [0, C)",
    3: "an index is out of range",
    4: "a value is NaN or infinite",
}


@dataclass(frozen=True)
class Lowering:
    fn: Callable
    parallel: bool
    # reads the tensors' shapes only through ``elementwise``: a node whose operands all have
    # the output's shape or rank 0 runs a kernel shared by every size (module.size_generic);
    # a function of the node where that holds for some nodes of the op only, or returning
    # the kernel's own layout (dimensions, per output then input which of them it walks),
    # the lowering then reading its sizes from ``Ctx.runtime_dims``
    size_generic: "bool | Callable" = False
    # all threads must run the node at once (see the module docstring): True, False, a test
    # of (node, threads, features), or None (the op has a scratch rule)
    meets: "bool | Callable | None" = None

    def meets_for(self, node: Node, threads: int = 1, features: str = "") -> bool:
        """Whether ``node`` meets when compiled for ``threads`` threads on ``features`` (a
        test given as ``meets`` is called with all three)."""
        m = self.meets
        if m is None:
            return node.op in SCRATCH
        return bool(m(node, threads, features)) if callable(m) else bool(m)

    def generic_for(self, node: Node):
        """False, True (``node``'s kernel serves every size: the elementwise layout) or the
        lowering's own layout (``size_generic``)."""
        sg = self.size_generic
        return sg(node) if callable(sg) else sg


LOWERINGS: dict[str, Lowering] = {}
UNLOWERABLE: dict[str, str] = {}
# op -> fn(node, threads, features) -> bytes of arena scratch the node needs while it runs
SCRATCH: dict[str, Callable] = {}
# ops whose lowering reads element i of each same-shaped tensor input only to write element i
# of the outputs: an output may then live in such an input's buffer (in-place donation)
SAME_INDEX: set[str] = set()
# more such nodes, by a test of the node (a fused region lowered as one loop nest)
SAME_INDEX_RULES: list[Callable] = []


def reads_same_index(node) -> bool:
    """Whether ``node`` reads element i of its same-shaped inputs only to write element i of
    its outputs (``SAME_INDEX``, ``SAME_INDEX_RULES``)."""
    return node.op in SAME_INDEX or any(rule(node) for rule in SAME_INDEX_RULES)


# fused-region kind -> fn(ctx, node, ins, outs) -> bool: a dedicated lowering of regions of
# that kind (passes/layer_regions.py), False when it declines a body (then the region's
# nodes are lowered one by one); FUSED_KIND_SCRATCH: its scratch rule, as SCRATCH's;
# FUSED_KIND_MEETS: fn(node, threads, features) -> bool | None, whether the kind's lowering
# meets (``Lowering.meets``) for a body it takes, None for a body it declines
FUSED_KINDS: dict[str, Callable] = {}
FUSED_KIND_SCRATCH: dict[str, Callable] = {}
FUSED_KIND_MEETS: dict[str, Callable] = {}


def fused_kind(kind: str, scratch_rule: Callable | None = None,
               meets_rule: Callable | None = None):
    """Register the decorated function as the lowering of ``fused`` regions of ``kind``."""
    def deco(fn):
        FUSED_KINDS[kind] = fn
        if scratch_rule is not None:
            FUSED_KIND_SCRATCH[kind] = scratch_rule
        if meets_rule is not None:
            FUSED_KIND_MEETS[kind] = meets_rule
        return fn
    return deco


def kind_takes(node, threads: int, features: str) -> bool:
    """Whether a ``fused`` region's kind lowering takes it (its meets rule answers for it):
    the region then needs only the kind's own scratch, not its body's arena, so that
    lowering must not decline it later (``kind_declines``)."""
    rule = FUSED_KIND_MEETS.get(node.attrs["kind"])
    return rule is not None and rule(node, threads, features) is not None


def kind_declines(node, ins, outs) -> bool:
    """A kind lowering's check of operands read with swapped axes: it declines them, but
    only a region ``kind_takes`` reserved no body arena for, so one it took reaching here
    with one is a planner fault, raised rather than run node by node in memory the plan
    never reserved (folded transposes reach matmuls only: a convolution region has
    none)."""
    if not any(t.swapped for t in list(ins) + list(outs)):
        return False
    raise AssertionError(f"llvm backend: a {node.attrs['kind']} region its lowering takes "
                         f"has an operand with swapped axes")


# op -> rule(node, threads, features) -> (input position, regions, bytes) | None: the
# node's lowering derives data from that input alone (Winograd's transformed weights, the
# GEMM's packed weights), which it keeps across calls in ``Ctx.prep`` when the input is a
# parameter the caller holds constant (the ``constant_params`` option): ``regions`` blocks
# of ``bytes`` (their first i64 a state, 0 when empty), ``prep_stride`` apart; None:
# nothing to prepare
PREPARES: dict[str, Callable] = {}
PREP_HEADER = 64      # bytes before a prepared block's data: its ready flag (i64)


def prep_stride(nbytes: int) -> int:
    """The distance between two regions of ``nbytes`` in a node's prepared block."""
    return -(-nbytes // 64) * 64


def _rule_of(table: dict, what: str):
    """A decorator factory registering the decorated function as ``what`` of ``ops``."""
    def register(*ops: str):
        def deco(fn):
            for op in ops:
                table[op] = fn
            return fn
        return deco
    register.__doc__ = f"Register the decorated function as the {what} of ``ops``."
    return register


scratch = _rule_of(SCRATCH, "scratch-size rule")
prepares = _rule_of(PREPARES, "prepared-weights rule")


def lowering(*ops: str, parallel: bool = False, size_generic: "bool | Callable" = False,
             meets: "bool | Callable | None" = None):
    """Register the decorated function as the lowering of ``ops``; ``size_generic``: it
    reads sizes only through ``elementwise.elementwise`` / ``elementwise.loop_dims`` (for
    every node, or for the nodes a function of the node accepts; see ``Lowering``);
    ``meets``: a parallel lowering whose threads must all run the node at once (see the
    module docstring)."""
    def deco(fn):
        for op in ops:
            if op in LOWERINGS:
                raise ValueError(f"LLVM lowering for {op!r} registered twice")
            LOWERINGS[op] = Lowering(fn, parallel, size_generic, meets)
        return fn
    return deco


def get_lowering(node: Node) -> Lowering:
    low = LOWERINGS.get(node.op)
    if low is None:
        why = UNLOWERABLE.get(node.op, "no lowering is registered for it")
        loc = f" (from {node.loc})" if node.loc else ""
        raise IRError(f"the llvm backend cannot compile op {node.op!r}: {why}; node {node!r}{loc}")
    return low


class Ctx:
    """Where a lowering emits code: builder, module, thread id/count, error flag, scratch."""

    def __init__(self, module: ir.Module, fn: ir.Function, b: ir.IRBuilder, tid: ir.Value,
                 nthreads: ir.Value, ctl: ir.Value, workspace: ir.Value | None,
                 workspace_per_thread: int, max_threads: int, features: str = ""):
        self.module = module
        self.features = features          # host CPU features (vector widths, tiling)
        self.fn = fn
        self.b = b
        self.tid = tid
        self.nthreads = nthreads
        self.ctl = ctl                    # i64*: [error code, error node, barrier count, gen]
        self.workspace = workspace        # i8*: max_threads scratch areas for packing
        self.workspace_per_thread = workspace_per_thread
        self.max_threads = max_threads
        self.node_index: int | ir.Value = 0   # the running node's index (a kernel's argument)
        self.program = None       # module.Program: the kernels built so far
        self._node_scratch: ir.Value | None = None  # i8*: the current node's arena scratch
        # i8*: the current node's prepared-weights block (``PREPARES``), else None: an i64
        # ready flag, then (from byte PREP_HEADER) what the lowering derived from its
        # constant weights on the first call, kept for the next calls
        self.prep: ir.Value | None = None
        self.prep_base: ir.Value | None = None      # i8*: the executable's prepared block
        # the real thread's id where ``workspace`` holds every thread's area (the entry),
        # None where it is this thread's own area already (a kernel: its caller offsets it)
        self.thread: ir.Value | None = tid
        # the real thread's id, never a share's (a kernel's argument): ``thread_scratch``
        self.worker: ir.Value = tid
        self.met = False          # the lowering called barrier() or read node_scratch
        self.claimed = False      # the node being emitted runs as claimed shares
        # i64*: the counters of a node that claims its steps' work (module.STEPPED), else None
        self.counters: ir.Value | None = None
        self.barrier_fn: ir.Function | None = None
        self.single = False       # inside thread0(): one thread does everything
        # a size-generic kernel's dimensions (i64 arguments), else None
        self.runtime_dims: tuple[ir.Value, ...] | None = None
        self._last_barrier = None  # (block, instruction count) just after the last barrier
        self._entry_block = fn.entry_basic_block

    @property
    def node_scratch(self) -> ir.Value | None:
        """The current node's arena scratch (i8*), None if it has none."""
        if self._node_scratch is not None:
            self.met = True
        return self._node_scratch

    @node_scratch.setter
    def node_scratch(self, value: ir.Value | None) -> None:
        self._node_scratch = value

    # ---------------------------------------------------------------- helpers
    def intrinsic(self, name: str, types: list[ir.Type], ret: ir.Type | None = None,
                  args: list[ir.Type] | None = None) -> ir.Function:
        if ret is None:
            return self.module.declare_intrinsic(name, types)
        fnty = ir.FunctionType(ret, args if args is not None else types)
        return self.module.declare_intrinsic(name, types, fnty)

    def extern(self, name: str, ret: ir.Type, args: list[ir.Type]) -> ir.Function:
        """A C function resolved at load time (libm, libc)."""
        fn = self.module.globals.get(name)
        if fn is None:
            fn = ir.Function(self.module, ir.FunctionType(ret, args), name)
        return fn

    def alloca(self, ty: ir.Type, name: str = "") -> ir.Value:
        """A stack slot in the entry block (so mem2reg promotes it)."""
        saved = self.b.block
        b = ir.IRBuilder(self._entry_block)
        b.position_at_start(self._entry_block)
        slot = b.alloca(ty, name=name)
        self.b.position_at_end(saved)
        return slot

    def split(self, n: int | ir.Value) -> tuple[ir.Value, ir.Value]:
        """This thread's share [lo, hi) of range(n) (all of it inside ``thread0``); ``n`` a
        constant or an i64 value."""
        b = self.b
        n = i64(n) if isinstance(n, int) else n
        if self.single:
            return i64(0), n
        lo = b.sdiv(b.mul(n, self.tid), self.nthreads)
        hi = b.sdiv(b.mul(n, b.add(self.tid, i64(1))), self.nthreads)
        return lo, hi

    @contextmanager
    def thread0(self):
        """Code only thread 0 runs; splits inside it cover whole ranges, barriers vanish."""
        if self.single:
            yield
            return
        self.single = True
        try:
            with self.b.if_then(self.b.icmp_signed("==", self.tid, i64(0))):
                yield
        finally:
            self.single = False

    def barrier(self) -> None:
        """All threads meet here (a no-op with one thread); call from parallel lowerings only,
        where every thread reaches it the same number of times. A barrier right after
        another (nothing emitted between them) is dropped: the threads already met."""
        if self.single:
            return
        self.met = True
        b = self.b
        if self._last_barrier == (b.block, len(b.block.instructions)):
            return
        if self.barrier_fn is None:
            self.barrier_fn = workers.barrier_fn(self.module)
        with b.if_then(b.icmp_signed(">", self.nthreads, i64(1))):
            b.call(self.barrier_fn, [self.ctl, self.nthreads])
        self._last_barrier = (b.block, len(b.block.instructions))

    def global_array(self, name: str, data) -> ir.Value:
        """A private constant table (numpy array) in the module; returns a typed pointer."""
        import numpy as np
        from .builder import STORAGE
        data = np.ascontiguousarray(data)
        elem = STORAGE[data.dtype.name]
        arr = ir.ArrayType(elem, max(data.size, 1))
        gv = ir.GlobalVariable(self.module, arr, name=self.module.get_unique_name(name))
        gv.global_constant = True
        gv.linkage = "private"
        vals = data.ravel().tolist() or [0]
        gv.initializer = ir.Constant(arr, [ir.Constant(elem, v) for v in vals])
        return self.b.bitcast(gv, ir.PointerType(elem))

    def fail(self, code: int) -> None:
        """Record error ``code`` for the current node; the executable raises after the run."""
        b = self.b
        b.store(i64(code), b.gep(self.ctl, [i64(0)]))
        index = self.node_index
        b.store(index if isinstance(index, ir.Value) else i64(index), b.gep(self.ctl, [i64(1)]))

    def scratch(self) -> ir.Value:
        """This thread's packing scratch area (i8*): by the real thread, never by a share
        (a thread runs one share at a time)."""
        if self.thread is None:
            return self.workspace
        off = self.b.mul(self.thread, i64(self.workspace_per_thread))
        return self.b.gep(self.workspace, [off], inbounds=True)

    def thread_scratch(self, nbytes: int, offset: "int | ir.Value" = 0) -> ir.Value:
        """This thread's area of ``nbytes`` (i8*) at ``offset`` in the node's scratch, whose
        rule reserves one per thread: by the real thread (``worker``), so a share may use
        it (a thread runs one share at a time; it does not make the lowering meet), the
        first one inside ``thread0`` or a one-thread task. Partial results that threads
        leave for each other (summed after a barrier) index areas by ``tid`` instead."""
        b = self.b
        who = i64(0) if self.single else self.worker
        off = b.mul(who, i64(nbytes))
        if not (isinstance(offset, int) and offset == 0):
            off = b.add(off, offset if isinstance(offset, ir.Value) else i64(offset))
        return b.gep(self._node_scratch, [off])


def load_ptr(b: ir.IRBuilder, args: ir.Value, index: int) -> ir.Value:
    return b.load(b.gep(args, [i64(index)], inbounds=True), name=f"arg{index}")

