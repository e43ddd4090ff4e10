"""Memory planning: liveness, buffer reuse, in-place updates and the peak bytes of a graph.

``plan_memory(graph) -> MemoryPlan`` gives every node output a place:

* ``arena``: bytes ``[offset, offset + size)`` of one arena of ``plan.arena_bytes`` bytes
  that the executable allocates once; values whose lifetimes do not overlap share bytes.
* ``argument``: the buffer of argument ``arg`` (inputs then parameters): a donated output
  (parameter and optimizer-state updates of a training step) written in place, or a view of
  an argument (a ``reshape`` of it).

Several values share one *storage* where that is safe: a ``reshape`` is a view of its
operand, and an elementwise op (``INPLACE_OPS``, ``fused`` of kind elementwise) writes over
an operand of the same shape and element size that dies at that node. In place assumes a
kernel reads an element of every operand before writing the result element at that index
(what an elementwise loop does). Live intervals are node indices; a value lives from the node
that makes it to the last node that reads it (graph outputs to the end). Storages are placed
greedily by size (largest first, at the lowest offset free for its lifetime), aligned to
``alignment`` bytes. ``peak_live_bytes`` is the most bytes live at once, a lower bound of the
arena. See docs/architecture.md for how a backend uses the plan.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from irgraph import Graph, Node, Value
from irgraph.liveness import last_reads, live_intervals
from irgraph.registry import ops_with

# elementwise ops whose result may overwrite a same-shaped operand that dies at the node
INPLACE_OPS = ops_with("inplace")
# ops whose result is the same bytes as their operand (a view)
VIEW_OPS = ops_with("view")
DEFAULT_ALIGNMENT = 64


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


@dataclass
class Storage:
    """Bytes that one or more values occupy in turn."""
    sid: int
    nbytes: int
    start: int                      # node index of the first write
    end: int                        # node index of the last read (len(nodes) = past the end)
    values: list[str] = field(default_factory=list)
    arg: int | None = None          # argument buffer (inputs then params), not the arena
    offset: int = -1                # byte offset in the arena


@dataclass(frozen=True)
class Buffer:
    """Where one value lives."""
    value: str
    kind: str                       # "arena" | "argument"
    offset: int                     # arena byte offset (-1 for an argument buffer)
    nbytes: int                     # the value's own bytes
    storage: int                    # storage id; equal ids share bytes
    arg: int | None = None          # argument index for kind "argument"
    reuses: str | None = None       # the value whose bytes it takes over (in place / view)


@dataclass
class MemoryPlan:
    graph_name: str
    alignment: int
    buffers: dict[str, Buffer]
    storages: list[Storage]
    arena_bytes: int
    peak_live_bytes: int
    naive_bytes: int                # one buffer per value, no reuse
    live: dict[str, tuple[int, int]]   # value -> (first node, last node)
    inplace: list[tuple[int, str, str]]    # (node index, result, operand it overwrites)

    def offset(self, name: str) -> int:
        return self.buffers[name].offset

    def check(self) -> None:
        """Raise AssertionError if two storages live at once overlap in the arena."""
        placed = [s for s in self.storages if s.arg is None]
        for i, a in enumerate(placed):
            assert a.offset % self.alignment == 0 and a.offset + a.nbytes <= self.arena_bytes
            for b in placed[i + 1:]:
                if a.start <= b.end and b.start <= a.end:
                    assert (a.offset + _align(a.nbytes, self.alignment) <= b.offset
                            or b.offset + _align(b.nbytes, self.alignment) <= a.offset), \
                        f"storages {a.values} and {b.values} overlap while both live"

    def report(self) -> str:
        return (f"memory plan of {self.graph_name}: arena {self.arena_bytes} B "
                f"(peak live {self.peak_live_bytes} B, without reuse {self.naive_bytes} B), "
                f"{len(self.storages)} storages for {len(self.buffers)} values, "
                f"{len(self.inplace)} in place")


def liveness(g: Graph) -> dict[Value, tuple[int, int]]:
    """(defining node, last reading node) of each node output; graph outputs live to the end
    (``irgraph.liveness.live_intervals``)."""
    return live_intervals(g)


def _inplace_ok(node: Node) -> bool:
    if node.op == "fused":
        return node.attrs["kind"] == "elementwise"
    return node.op in INPLACE_OPS


class _Planner:
    def __init__(self, g: Graph, alignment: int):
        self.g, self.alignment = g, alignment
        self.live = liveness(g)
        self.arg_index = {v: i for i, v in enumerate(g.arguments)}
        # last node reading each argument
        self.arg_last: dict[Value, int] = {v: i for v, i in last_reads(g).items()
                                           if v in self.arg_index}
        for v in g.outputs:             # an argument returned as it was is read at the end
            if v in self.arg_index:
                self.arg_last[v] = len(g.nodes)
        self.storage_of: dict[Value, Storage] = {}
        self.storages: list[Storage] = []
        self.reuses: dict[Value, Value] = {}
        self.inplace: list[tuple[int, str, str]] = []
        self.donated = {g.outputs[o]: a for o, a in g.donations.items()
                        if g.outputs[o] not in self.arg_index}

    def run(self) -> None:
        for i, node in enumerate(self.g.nodes):
            taken: set[int] = set()
            for v in node.outputs:
                self._place(i, node, v, taken)

    def _new(self, v: Value, arg: int | None = None) -> Storage:
        s = Storage(len(self.storages), v.type.nbytes, *self.live[v], [v.name], arg)
        self.storages.append(s)
        self.storage_of[v] = s
        return s

    def _join(self, v: Value, s: Storage, src: Value) -> None:
        s.values.append(v.name)
        s.end = max(s.end, self.live[v][1])
        self.storage_of[v] = s
        self.reuses[v] = src

    def _place(self, i: int, node: Node, v: Value, taken: set[int]) -> None:
        if v in self.donated and self._donation_ok(i, node, v):
            self._new(v, self.donated[v])
            return
        if node.op in VIEW_OPS:
            src = node.inputs[0]
            if src in self.arg_index:
                s = self._new(v, self.arg_index[src])
                self.reuses[v] = src
            else:
                self._join(v, self.storage_of[src], src)
            return
        if _inplace_ok(node):
            for x in node.inputs:
                s = self.storage_of.get(x)
                if (s is not None and s.arg is None and s.sid not in taken and s.end == i
                        and x.shape == v.shape and x.type.np_dtype.itemsize
                        == v.type.np_dtype.itemsize):
                    taken.add(s.sid)
                    self._join(v, s, x)
                    self.inplace.append((i, v.name, x.name))
                    return
        self._new(v)

    def _donation_ok(self, i: int, node: Node, v: Value) -> bool:
        """Write ``v`` straight into its donated argument: nothing reads the argument later,
        and this node reads it only elementwise."""
        a = self.donated[v]
        arg = self.g.arguments[a]
        if self.arg_last.get(arg, -1) > i or any(s.arg == a and s.end > i for s in self.storages):
            return False        # the old value (or a view of it) is still read later
        return arg not in node.inputs or (_inplace_ok(node) and arg.shape == v.shape)


def _assign_offsets(storages: list[Storage], alignment: int) -> int:
    """Greedy by size: biggest storage first, at the lowest offset free over its lifetime."""
    placed: list[Storage] = []
    top = 0
    for s in sorted((s for s in storages if s.arg is None), key=lambda s: (-s.nbytes, s.sid)):
        size = _align(s.nbytes, alignment)
        busy = sorted((p.offset, p.offset + _align(p.nbytes, alignment)) for p in placed
                      if p.start <= s.end and s.start <= p.end)
        offset = 0
        for lo, hi in busy:
            if offset + size <= lo:
                break
            offset = max(offset, hi)
        s.offset = offset
        top = max(top, offset + size)
        placed.append(s)
    return top


def _peak(storages: list[Storage], n: int, alignment: int) -> int:
    best = 0
    for i in range(n + 1):
        best = max(best, sum(_align(s.nbytes, alignment) for s in storages
                             if s.arg is None and s.start <= i <= s.end))
    return best


def plan_memory(g: Graph, alignment: int = DEFAULT_ALIGNMENT) -> MemoryPlan:
    """Liveness, buffer reuse and offsets for the node outputs of ``g`` (see module doc)."""
    if alignment < 1 or alignment & (alignment - 1):
        raise ValueError(f"alignment must be a power of two, got {alignment}")
    p = _Planner(g, alignment)
    p.run()
    arena = _assign_offsets(p.storages, alignment)
    buffers = {}
    for v, s in p.storage_of.items():
        src = p.reuses.get(v)
        buffers[v.name] = Buffer(v.name, "argument" if s.arg is not None else "arena",
                                 s.offset if s.arg is None else -1, v.type.nbytes, s.sid,
                                 s.arg, src.name if src is not None else None)
    naive = sum(_align(v.type.nbytes, alignment) for v in p.storage_of)
    return MemoryPlan(g.name, alignment, buffers, p.storages, arena,
                      _peak(p.storages, len(g.nodes), alignment), naive,
                      {v.name: t for v, t in p.live.items()}, p.inplace)
