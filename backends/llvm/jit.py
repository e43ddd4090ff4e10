"""JIT for the host CPU through llvmlite.binding, and the on-disk cache of object code.

A graph compiles to an entry function and kernels (module.py: one per distinct node code;
driver.py builds them and hands them here: this module only compiles, caches and loads).
The kernels that carry the work (GEMM, convolutions, recurrences, loops over many elements)
are modules of their own at the requested level (-O3: loop and SLP vectorization); the
small ones are compiled at the cheap level (``optimize``: level 0) in one module with the
entry. The modules are compiled by several threads at once (``KernelStream``: each kernel
as soon as it is built, beside the Python that builds the rest) to object
code for the host (its triple, CPU and features), then loaded together into an MCJIT
engine, the entry last.

Object code is cached on disk (``backends/cache.py``: HMAC-checked entries in a private
folder, ``$IRGRAPH_CACHE_DIR/llvm``, default ``~/.cache/irgraph/llvm``), in two kinds of
entry, both keyed with the target, llvmlite/LLVM and the source of every package that shapes
the generated code:

* a kernel's object, under its symbol (a hash of its IR and level): shared by every graph
  that runs the same code, so a new model made of known layers compiles mostly from cache;
* a graph's entry object (with its cheap kernels), under the graph's canonical text
  (``canonical_text``: no graph or value names, no source locations: renaming values or
  editing lines above a model still hits) and the options. A hit loads it and the kernels
  it calls, and builds no IR.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import re
import sys
import threading
import time
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import llvmlite
import llvmlite.binding as llvm

from .. import cache as disk_cache

CACHE_VERSION = "irgraph-llvm-5"
_CACHE = disk_cache.DiskCache("llvm", ".o")


@lru_cache(maxsize=None)
def _init() -> None:
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    for lib in ("m", "c"):
        path = _c_library(lib)
        if path:
            llvm.load_library_permanently(path)


def _c_library(name: str) -> str | None:
    """The C library ``name`` ("m", "c") for LLVM to resolve symbols in: glibc's soname
    where it loads (``ctypes.util.find_library`` runs ``ldconfig`` in a subprocess: a
    tenth of a second each, in every process's first compile), else what that finds."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(f"lib{name}.so.6")
            return f"lib{name}.so.6"
        except OSError:
            pass
    return ctypes.util.find_library(name)


@lru_cache(maxsize=None)
def host() -> tuple[str, str, str]:
    """(triple, cpu name, feature string) of this machine."""
    _init()
    return llvm.get_process_triple(), llvm.get_host_cpu_name(), \
        llvm.get_host_cpu_features().flatten()


@lru_cache(maxsize=4)
def target_machine(opt: int = 3):
    """The shared machine for optimizing and emitting (never handed to an engine)."""
    return new_target_machine(opt)


def new_target_machine(opt: int = 3):
    _init()
    triple, cpu, features = host()
    target = llvm.Target.from_triple(triple)
    return target.create_target_machine(cpu=cpu, features=features, opt=opt,
                                        reloc="default", codemodel="jitdefault", jit=True)


def cache_dir() -> Path:
    """The folder of cached objects: ``$IRGRAPH_CACHE_DIR/llvm``."""
    return _CACHE.folder()


def clear_cache() -> int:
    """Delete every cached object; returns how many were removed."""
    return _CACHE.clear()


def code_version() -> str:
    """The package version and source of irgraph, passes and backends (all of it shapes the
    generated code): an upgrade or an edited pass never reuses old objects."""
    return hashlib.sha256(f"{CACHE_VERSION}\0{disk_cache.source_hash()}".encode()).hexdigest()


def cache_key(graph_text: str, options: dict) -> str:
    triple, cpu, features = host()
    opts = ";".join(f"{k}={options[k]!r}" for k in sorted(options))
    llvm_version = ".".join(map(str, llvm.llvm_version_info))
    blob = "\n".join([code_version(), llvmlite.__version__, llvm_version, triple, cpu,
                      features, opts, graph_text])
    return hashlib.sha256(blob.encode()).hexdigest()


def cache_load(key: str) -> bytes | None:
    """The object cached under ``key``, HMAC-checked before anything hands it to LLVM; None
    when absent, refused or damaged (deleted)."""
    return _CACHE.load(key)


def cache_store(key: str, obj: bytes) -> None:
    _CACHE.store(key, obj)


def cache_store_many(items) -> None:
    """Store every (key, object) of ``items`` in one batch: one flush to the disk."""
    _CACHE.store_many(items)


def _with_vector_width(text: str, features: str) -> str:
    """LLVM prefers 256-bit vectors even on AVX-512 unless a function asks for 512."""
    if "+avx512f" not in features:
        return text
    return re.sub(r"^(define [^\n{]*?)(\s*\{?)$", r'\1 "prefer-vector-width"="512"\2',
                  text, flags=re.M)


def optimize(ir_text: str, opt: int = 3):
    """Parse, verify and optimize; returns the llvmlite ModuleRef. Level 0 is a cheap
    pipeline (SROA, instcombine, simplifycfg; machine code by fast instruction selection),
    1-3 LLVM's -O pipelines with loop and SLP vectorization."""
    _init()
    _, _, features = host()
    mod = llvm.parse_assembly(_with_vector_width(ir_text, features))
    mod.verify()
    tm = target_machine(opt)
    mod.triple = tm.triple
    mod.data_layout = str(tm.target_data)
    mpm, pb = _pipeline(tm, opt)
    try:
        mpm.run(mod, pb)
    finally:
        _dispose_pass_manager(mpm)
    return mod


def _pipeline(tm, opt: int):
    """(module pass manager, pass builder) of level ``opt``: 0 is the cheap pipeline
    (registers for stack slots, local cleanups), 1-3 LLVM's -O pipelines with loop and SLP
    vectorization."""
    if opt == 0:
        pb = llvm.create_pass_builder(tm, llvm.create_pipeline_tuning_options(speed_level=0))
        mpm = llvm.create_new_module_pass_manager()
        mpm.add_sroa_pass()
        mpm.add_instruction_combine_pass()
        mpm.add_simplify_cfg_pass()
        return mpm, pb
    pto = llvm.create_pipeline_tuning_options(speed_level=opt)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    pto.loop_unrolling = False
    pb = llvm.create_pass_builder(tm, pto)
    return pb.getModulePassManager(), pb


def _dispose_pass_manager(mpm) -> None:
    """Free a module pass manager now. llvmlite's ModulePassManager inherits the no-op
    ``ObjectRef._dispose`` ahead of its own, so without this every compile leaks its whole
    pass pipeline (~85 KB)."""
    from llvmlite.binding import ffi
    from llvmlite.binding.newpassmanagers import NewPassManager
    if type(mpm)._dispose is ffi.ObjectRef._dispose and hasattr(NewPassManager, "_dispose"):
        NewPassManager._dispose(mpm)
        mpm.detach()
    else:
        mpm.close()


def emit_object(mod, opt: int = 3) -> bytes:
    return target_machine(opt).emit_object(mod)


def emit_assembly(mod, opt: int = 3) -> str:
    return target_machine(opt).emit_assembly(mod)


def compiled_module(name: str, make) -> bytes:
    """Object code of the module ``make(triple)`` builds (runtime code that depends only on
    the target), compiled once and cached on disk under ``name``."""
    triple, _, _ = host()
    key = cache_key(name, {})
    obj = cache_load(key)
    if obj is None:
        obj = emit_object(optimize(str(make(triple))))
        cache_store(key, obj)
    return obj


class Loaded:
    """Object code (after the objects ``kernels``: the GEMM runtime's and the graph's
    kernels) loaded into its own MCJIT engine; keeps the engine alive with the function
    (``symbol``; None: look symbols up in ``engine``). ``obj`` is handed to LLVM last."""

    def __init__(self, obj: bytes, symbol: str | None, opt: int = 3, kernels=()):
        _init()
        # an engine owns its target machine: give it a fresh one
        self.engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""),
                                                 new_target_machine(opt))
        for k in kernels:
            self.engine.add_object_file(llvm.ObjectFileRef.from_data(k))
        self.engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
        self.engine.finalize_object()
        if symbol is None:
            return
        addr = self.engine.get_function_address(symbol)
        if not addr:
            raise RuntimeError(f"llvm backend: symbol {symbol!r} missing from the object code")
        proto = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)
        self.fn = proto(addr)


# ------------------------------------------------------------------ canonical graph text
def canonical_text(graph, sizes: bool = True) -> str:
    """The graph as far as it shapes the generated code: the text form without the graph's
    name, value names (numbered in order of definition), or source locations (comments);
    without ``sizes``, each type of rank > 0 as its dtype and ``[*]`` (``generic_node``)."""
    names: dict = {}

    def name(v) -> str:
        if v not in names:
            names[v] = f"%{len(names)}"
        return names[v]
    t = str if sizes else _sizeless
    decl = lambda vs: ", ".join(f"{name(v)}: {t(v.type)}" for v in vs)  # noqa: E731
    lines = [f"graph({decl(graph.inputs)}) params({decl(graph.params)}) {{"]
    for n in graph.nodes:
        args = ", ".join(name(v) for v in n.inputs)
        lines.append(f"{decl(n.outputs)} = {n.op}({args}){_attrs(n, sizes)}")
    if graph.donations:
        lines.append("donate(" + ", ".join(f"{o}->{a}" for o, a in sorted(
            graph.donations.items())) + ")")
    lines.append("return " + ", ".join(name(v) for v in graph.outputs) + "\n}")
    return "\n".join(lines)


def canonical_node(node) -> str:
    """One node without names or location: op, operand and result types, attributes."""
    ins = ", ".join(str(v.type) for v in node.inputs)
    outs = ", ".join(str(v.type) for v in node.outputs)
    return f"{outs} = {node.op}({ins}){_attrs(node)}"


def generic_node(node) -> str:
    """A node whose kernel serves every size (module.size_generic) without its sizes: op,
    operand and result dtypes (rank 0 kept), attributes (a region's body likewise)."""
    ins = ", ".join(_sizeless(v.type) for v in node.inputs)
    outs = ", ".join(_sizeless(v.type) for v in node.outputs)
    return f"{outs} = {node.op}({ins}){_attrs(node, sizes=False)}"


def _sizeless(t) -> str:
    return str(t) if t.rank == 0 else f"{t.dtype}[*]"


def _attrs(node, sizes: bool = True) -> str:
    if not node.attrs:
        return ""
    return " {" + ", ".join(f"{k}={_attr(v, sizes)}"
                            for k, v in sorted(node.attrs.items())) + "}"


def _attr(v, sizes: bool = True) -> str:
    from irgraph import Graph
    from irgraph.printer import format_attr
    if isinstance(v, Graph):
        return canonical_text(v, sizes)
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(_attr(x, sizes) for x in v) + "]"
    return format_attr(v, "")


# ------------------------------------------------------------------ counters and phases
_STATS = {"graph_hits": 0, "graph_misses": 0, "kernels_compiled": 0, "kernels_loaded": 0,
          "kernels_shared": 0}
_PHASES: dict[str, float] = {}


def stats() -> dict[str, int]:
    """Counters since the last ``reset_stats``: graphs served from the disk cache
    (``graph_hits``) or built (``graph_misses``); kernels compiled, loaded from the disk
    cache, and node calls that shared a kernel another node of the same build made."""
    return dict(_STATS)


def phase_times() -> dict[str, float]:
    """Seconds spent per compile phase since the last ``reset_stats``: ``ir_build`` (IR from
    the graph; with several compile threads, their work starts during it), ``llvm_opt``
    (parse, verify, optimization passes) and ``codegen`` (machine code) of modules compiled
    in this thread, ``llvm`` (with several compile threads: the wait for their modules
    after the IR was built), ``cache`` (disk reads and writes), ``load`` (linking into an
    engine)."""
    return dict(_PHASES)


def count(name: str, n: int = 1) -> None:
    """Add ``n`` to the counter ``name`` of ``stats``."""
    _STATS[name] += n


def reset_stats() -> None:
    for k in _STATS:
        _STATS[k] = 0
    _PHASES.clear()


@contextmanager
def phase(name: str):
    t = time.perf_counter()
    try:
        yield
    finally:
        _PHASES[name] = _PHASES.get(name, 0.0) + time.perf_counter() - t


# ------------------------------------------------------------------ compiling modules
ENTRY_OPT = 0       # the entry only calls kernels: the cheap level (with the cheap kernels)
_KERNEL_SYMBOL = re.compile(rb"irk_[0-9a-f]{40}")
CHEAP_SYMBOL = b"irc_"


def kernel_key(symbol: str) -> str:
    """The cache key of a kernel's object (its symbol hashes its IR and level)."""
    return cache_key(f"kernel {symbol}", {})


def compile_text(text: str, opt: int) -> bytes:
    """Object code of one module's IR text at level ``opt``."""
    with phase("llvm_opt"):
        mod = optimize(text, opt)
    with phase("codegen"):
        return emit_object(mod, opt)


COMPILE_THREADS: int | None = None    # threads compiling modules at once (None: CPU count)


def _unlocked(name: str):
    """libllvmlite's function ``name`` without llvmlite's process-wide lock (which would
    serialize the threads). Only for work on objects no other thread touches."""
    from llvmlite.binding import ffi
    fn = getattr(ffi.lib, name)
    return getattr(fn, "_cfn", fn)


_THREAD = threading.local()


def _compile_isolated(text: str, opt: int) -> bytes:
    """``compile_text`` in a fresh LLVM context with this thread's target machine."""
    from llvmlite.binding import ffi
    _init()
    machines = _THREAD.__dict__.setdefault("machines", {})
    tm = machines.get(opt) or machines.setdefault(opt, new_target_machine(opt))
    context = llvm.create_context()
    try:
        mod = llvm.parse_assembly(_with_vector_width(text, host()[2]), context)
        try:
            mod.verify()
            mod.triple = tm.triple
            mod.data_layout = str(tm.target_data)
            mpm, pb = _pipeline(tm, opt)
            try:
                _unlocked("LLVMPY_RunNewModulePassManager")(mpm, mod, pb)
            finally:
                _dispose_pass_manager(mpm)
            with ffi.OutputString() as err:
                buf = _unlocked("LLVMPY_TargetMachineEmitToMemory")(tm, mod, 1, err)
                if not buf:
                    raise RuntimeError(f"llvm backend: code generation failed: {err}")
            try:
                return ctypes.string_at(ffi.lib.LLVMPY_GetBufferStart(buf),
                                        ffi.lib.LLVMPY_GetBufferSize(buf))
            finally:
                ffi.lib.LLVMPY_DisposeMemoryBuffer(buf)
        finally:
            mod.close()
    finally:
        context.close()


def signature_key(signature: str) -> str:
    """The cache key of the symbol of the kernel built for a node signature
    (``module.node_signature``: everything its lowering reads): a graph not seen before
    names the kernels of its known nodes without building their code."""
    return cache_key(f"signature {signature}", {})


class KernelStream:
    """The kernels of one build, compiled while the IR builder goes on: each kernel of its
    own module (level > 0; the others are compiled within the entry's) is looked up in the
    disk cache as soon as it is built, and if absent handed to a pool of ``COMPILE_THREADS``
    threads (default: the CPU count) right away (``_compile_isolated``), so that LLVM runs
    beside the Python that builds the rest. One thread: compiled here, in ``finish``."""

    def __init__(self, use_cache: bool):
        self.use_cache = use_cache
        n = max(1, COMPILE_THREADS or os.cpu_count() or 1)
        self.pool = _LargestFirst(n) if n > 1 else None
        self.loaded: list[bytes] = []
        self.jobs: list = []            # (kernel, future or None)
        self.symbols: set[str] = set()  # kernels loaded or being compiled
        self.load = _CACHE.reader()     # (folders and secret checked once per compile)

    def known(self, signature: str) -> str | None:
        """The symbol of the kernel compiled before for ``signature``, its object (and those
        of the kernels it calls) loaded from the cache; None when not known or one object
        is gone (the kernel is then built)."""
        with phase("cache"):
            got = self.load(signature_key(signature))
            head = got.split(b"\n") if got is not None else []
            if len(head) != 2 or not _KERNEL_SYMBOL.fullmatch(head[0]):
                return None
            found: dict[bytes, bytes] = {}
            todo = [head[0]]
            while todo:
                sym = todo.pop()
                if sym in found or sym.decode() in self.symbols:
                    continue
                kobj = self.load(kernel_key(sym.decode()))
                if kobj is None or CHEAP_SYMBOL in kobj:   # (cheap kernels live in entries)
                    return None
                found[sym] = kobj
                todo += _KERNEL_SYMBOL.findall(kobj)
        for sym, kobj in found.items():
            self.symbols.add(sym.decode())
            self.loaded.append(kobj)
        _STATS["kernels_loaded"] += len(found)
        return head[0].decode()

    def add(self, k) -> None:
        if k.opt == 0 or k.symbol in self.symbols:
            return
        self.symbols.add(k.symbol)
        if self.use_cache:
            with phase("cache"):
                kobj = self.load(kernel_key(k.symbol))
            if kobj is not None:
                _STATS["kernels_loaded"] += 1
                self.loaded.append(kobj)
                return
        fut = self.pool.submit(k.text, k.opt) if self.pool else None
        self.jobs.append((k, fut))

    def finish(self, entry_text: str, entry_opt: int):
        """(entry object, every kernel object, [(kernel, object) compiled here])."""
        if self.pool is None:
            made = [(k, compile_text(k.text, k.opt)) for k, _ in self.jobs]
            return compile_text(entry_text, entry_opt), self.loaded + [o for _, o in made], made
        t0 = time.perf_counter()
        entry = self.pool.submit(entry_text, entry_opt)
        made = [(k, fut.result()) for k, fut in self.jobs]
        obj = entry.result()
        _PHASES["llvm"] = _PHASES.get("llvm", 0.0) + time.perf_counter() - t0
        return obj, self.loaded + [o for _, o in made], made

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


class _LargestFirst:
    """``n`` threads compiling modules (``_compile_isolated``), the largest waiting text
    first: a big kernel built late does not wait behind small ones and end the compile
    alone (the entry, submitted last, is usually the largest)."""

    def __init__(self, n: int):
        import heapq
        import itertools
        from concurrent.futures import Future
        self._heapq, self._future, self._order = heapq, Future, itertools.count()
        self._heap: list = []           # (-len(text), order, text, opt, future)
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, daemon=True,
                                          name=f"irgraph-llvm-compile-{i}") for i in range(n)]
        for t in self._threads:
            t.start()

    def submit(self, text: str, opt: int):
        fut = self._future()
        with self._cond:
            self._heapq.heappush(self._heap, (-len(text), next(self._order), text, opt, fut))
            self._cond.notify()
        return fut

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._heap and not self._closed:
                    self._cond.wait()
                if not self._heap:          # closed and nothing left
                    return
                *_, text, opt, fut = self._heapq.heappop(self._heap)
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(_compile_isolated(text, opt))
            except BaseException as e:      # handed to whoever waits on the result
                fut.set_exception(e)

    def close(self) -> None:
        """Cancel what has not started, let the running compiles end, join the threads."""
        with self._cond:
            self._closed = True
            for *_, fut in self._heap:
                fut.cancel()
            self._heap.clear()
            self._cond.notify_all()
        for t in self._threads:
            t.join()


def cached_kernels(obj: bytes) -> list[bytes] | None:
    """The cached objects of every kernel ``obj`` calls (and they call: scan bodies), read
    from the symbols it references; None when one is missing (evicted, damaged)."""
    found: dict[bytes, bytes] = {}
    todo = sorted(set(_KERNEL_SYMBOL.findall(obj)))
    while todo:
        got = _CACHE.load_many(kernel_key(sym.decode()) for sym in todo)
        for sym in todo:
            kobj = got[kernel_key(sym.decode())]
            if kobj is None:
                return None
            found[sym] = kobj
        todo = sorted({s for sym in todo for s in _KERNEL_SYMBOL.findall(found[sym])}
                      - set(found))
    return [found[s] for s in sorted(found)]
