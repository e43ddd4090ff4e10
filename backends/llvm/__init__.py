"""The LLVM CPU backend: the whole graph as ONE native function, JIT-compiled with llvmlite.

    exe = backends.compile(graph, "llvm", threads=2, verbose=True)
    outs = exe(*args)              # inputs then params, validated before the native call
    exe.llvm_ir(); exe.assembly()

Options: ``threads`` (default: the CPU count), ``opt`` (LLVM optimization level, 3),
``cache`` (use the on-disk object cache, True), ``verbose`` (say whether a compile was
served from the cache), ``profile`` (count each node's CPU cycles: ``exe.profile()``).
Lowerings live in per-family modules, registered in
``lowering.LOWERINGS``; an op without one is a compile-time error naming it.
"""
from __future__ import annotations

import logging
import os
import time

from irgraph import Graph, verify
from irgraph.passes.layer_regions import layer_regions
from irgraph.passes.low_precision import widen_low_precision
from irgraph.passes.scan_accumulate import fold_batched_matmul_sums, hoist_scan_accumulators
from irgraph.passes.scan_reuse import reuse_forward_outputs

from . import jit
from .executable import LLVMExecutable, NativeError
from .jit import cache_dir, clear_cache
from .lowering import LOWERINGS, UNLOWERABLE, get_lowering
from .module import Program, build_module, plan
from . import ops_core, ops_reduce, ops_shape, gemm  # noqa: F401  (register lowerings)
from . import ops_optim, ops_recurrence, ops_pool, ops_conv, ops_norm  # noqa: F401
from . import ops_attention, ops_gather, ops_random  # noqa: F401
from . import gemm_bf16

log = logging.getLogger("irgraph.backends.llvm")
_OPTIONS = {"threads", "opt", "cache", "verbose", "profile"}
STATS = {"compiles": 0, "cache_hits": 0}


def _check_lowerable(graph: Graph) -> None:
    from .module import _all_nodes
    for node in _all_nodes(graph):
        get_lowering(node)


def _scan_rewrites(graph: Graph) -> Graph:
    """BPTT without recomputing forward outputs, its weight-gradient sums (in scans, and of
    batched products over steps) as one GEMM each."""
    new = fold_batched_matmul_sums(hoist_scan_accumulators(reuse_forward_outputs(graph)))
    return graph if new is graph else verify(new)


def _prepare(graph: Graph, threads: int, profile: bool = False):
    """(graph as compiled, its plan, the host's CPU features)."""
    graph = verify(graph)
    graph = widen_low_precision(graph, keep=gemm_bf16.native)     # float16/bfloat16
    graph = _scan_rewrites(graph)
    graph = layer_regions(graph)      # attention and normalization regions
    _check_lowerable(graph)
    features = jit.host()[2]
    p = plan(graph, features, threads)
    p.profile = profile
    return graph, p, features


def program(graph: Graph, threads: int = 2, opt: int = 3) -> Program:
    """What compiling ``graph`` builds before LLVM runs: the entry module and its kernels
    (``Program.kernels``: one per distinct node code; ``Program.calls``: nodes lowered)."""
    graph, p, features = _prepare(graph, threads)
    return build_module(graph, p, features, threads, jit.host()[0], opt)


def compile(graph: Graph, **options) -> LLVMExecutable:
    """Compile ``graph`` for this CPU (served from the disk cache when it was seen before)."""
    unknown = set(options) - _OPTIONS
    if unknown:
        raise TypeError(f"llvm backend: unknown option(s) {sorted(unknown)}; "
                        f"it takes {sorted(_OPTIONS)}")
    threads = int(options.get("threads") or os.cpu_count() or 1)
    if threads < 1:
        raise ValueError(f"llvm backend: threads must be >= 1, got {threads}")
    opt = int(options.get("opt", 3))
    use_cache = bool(options.get("cache", True))
    verbose = bool(options.get("verbose", False))
    profile = bool(options.get("profile", False))
    graph, p, features = _prepare(graph, threads, profile)
    t0 = time.perf_counter()
    obj, kernels, key, hit = jit.compile_graph(graph, p, features, threads, opt, profile,
                                               use_cache)
    STATS["compiles"] += 1
    STATS["cache_hits"] += hit
    shapes = ", ".join(str(v.type) for v in graph.inputs)
    msg = (f"llvm: graph {graph.name!r} ({shapes}): "
           f"{'cache hit' if hit else 'compiled anew (cache miss)'} in "
           f"{time.perf_counter() - t0:.3f}s, key {key[:12]}")
    log.info(msg)
    if verbose:
        print(msg)
    return LLVMExecutable(graph, p, obj, threads=threads, opt=opt, cache_key=key,
                          cache_hit=hit, features=features,
                          adaptive=not options.get("threads"), kernels=kernels)


__all__ = ["compile", "program", "clear_cache", "cache_dir", "LLVMExecutable", "NativeError",
           "LOWERINGS", "UNLOWERABLE", "STATS"]
