"""JIT for the host CPU through llvmlite.binding, and the on-disk object cache.

IR text -> parse, verify -> new pass manager at -O3 with loop and SLP vectorization ->
object code for the host (its triple, CPU and features) -> loaded into an MCJIT engine.
Object code is cached on disk (``backends/cache.py``: HMAC-checked entries in a private
folder, ``$IRGRAPH_CACHE_DIR/llvm``, default ``~/.cache/irgraph/llvm``), keyed by the graph's
canonical text, the options, the target, llvmlite/LLVM and the source of every package that
shapes the generated code.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import re
from functools import lru_cache
from pathlib import Path

import llvmlite
import llvmlite.binding as llvm

from .. import cache as disk_cache

CACHE_VERSION = "irgraph-llvm-4"
_CACHE = disk_cache.DiskCache("llvm", ".o")


@lru_cache(maxsize=None)
def _init() -> None:
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    for lib in ("m", "c"):
        path = ctypes.util.find_library(lib)
        if path:
            llvm.load_library_permanently(path)


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


def _with_vector_width(text: str, features: str) -> str:
    """LLVM prefers 256-bit vectors even on AVX-512 unless a function asks for 512."""
    if "+avx512f" not in features:
        return text
    return re.sub(r"^(define [^\n{]*?)(\s*\{?)$", r'\1 "prefer-vector-width"="512"\2',
                  text, flags=re.M)


def optimize(ir_text: str, opt: int = 3):
    """Parse, verify and optimize; returns the llvmlite ModuleRef."""
    _init()
    _, _, features = host()
    mod = llvm.parse_assembly(_with_vector_width(ir_text, features))
    mod.verify()
    tm = target_machine(opt)
    mod.triple = tm.triple
    mod.data_layout = str(tm.target_data)
    if opt > 0:
        pto = llvm.create_pipeline_tuning_options(speed_level=opt)
        pto.loop_vectorization = True
        pto.slp_vectorization = True
        pto.loop_unrolling = False
        pb = llvm.create_pass_builder(tm, pto)
        mpm = pb.getModulePassManager()
        try:
            mpm.run(mod, pb)
        finally:
            _dispose_pass_manager(mpm)
    return mod


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


@lru_cache(maxsize=None)
def runtime_object() -> bytes:
    """The shared kernels (GEMM) for this CPU, compiled once and cached on disk."""
    from .gemm import runtime_module
    features = host()[2]
    return compiled_module("irgraph runtime", lambda triple: runtime_module(features, triple))


class Loaded:
    """Object code (plus the runtime kernels) loaded into its own MCJIT engine; keeps the
    engine alive with the function (``symbol``; None: look symbols up in ``engine``)."""

    def __init__(self, obj: bytes, symbol: str | None, opt: int = 3):
        _init()
        # an engine owns its target machine: give it a fresh one
        self.engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""),
                                                 new_target_machine(opt))
        if symbol is not None:
            self.engine.add_object_file(llvm.ObjectFileRef.from_data(runtime_object()))
        self.engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
        self.engine.finalize_object()
        if symbol is None:
            return
        addr = self.engine.get_function_address(symbol)
        if not addr:
            raise RuntimeError(f"llvm backend: symbol {symbol!r} missing from the object code")
        proto = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)
        self.fn = proto(addr)
