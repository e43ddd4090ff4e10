"""The LLVM CPU backend: the whole graph as ONE native function, JIT-compiled with llvmlite.

    exe = backends.compile(graph, "llvm", threads=2, verbose=True)
    outs = exe(*args)              # inputs then params, validated before the native call
    exe.llvm_ir(); exe.assembly()

Options: ``threads`` (default: the CPU count), ``opt`` (LLVM optimization level, 3),
``cache`` (use the on-disk object cache, True), ``verbose`` (say whether a compile was
served from the cache), ``profile`` (count each node's CPU cycles: ``exe.profile()``),
``constant_params`` (False; True: the caller passes parameters whose values do not change
from call to call, as an inference session's weights, so what lowerings derive from them
alone, Winograd's transformed weights, is made on the first call and kept; passing other
arrays derives it again, but changing an array's values in place is not seen).
Lowerings live in per-family modules, registered in
``lowering.LOWERINGS``; an op without one is a compile-time error naming it.
"""
from __future__ import annotations

import logging
import os
import time

from irgraph import Graph
from irgraph.ir import all_nodes
from irgraph.passes.conv_chains import form_conv_chains
from irgraph.passes.low_precision import widen_low_precision
from irgraph.passes.manager import register_pass

from ..base import run_backend_passes

from . import driver, jit
from .executable import LLVMExecutable, NativeError
from .jit import cache_dir, clear_cache
from .lowering import LOWERINGS, UNLOWERABLE, get_lowering
from .module import Program, build_module, plan, plan_top
from . import ops_core, ops_reduce, ops_shape, gemm  # noqa: F401  (register lowerings)
from . import ops_optim, ops_recurrence, ops_pool, ops_conv, ops_norm  # noqa: F401
from . import conv_chain  # the conv_chain region kind, its pass's rule (llvm_conv_chains)
from . import ops_attention, ops_gather, ops_random  # noqa: F401
from . import gemm_bf16

log = logging.getLogger("irgraph.backends.llvm")
_OPTIONS = {"threads", "opt", "cache", "verbose", "profile", "constant_params"}
STATS = {"compiles": 0, "cache_hits": 0}


def _check_lowerable(graph: Graph) -> None:
    for node in all_nodes(graph):
        get_lowering(node)


@register_pass("llvm_low_precision")
def llvm_low_precision(graph: Graph) -> Graph:
    """float16/bfloat16 ops computed in float32 between rounding casts, except those this
    backend runs on 16-bit buffers (``gemm_bf16.native``)."""
    return widen_low_precision(graph, keep=gemm_bf16.native)


@register_pass("llvm_conv_chains")
def llvm_conv_chains(graph: Graph) -> Graph:
    """``fuse_conv_chains`` where this backend runs the chain band by band
    (``conv_chain.banded``: intermediates that would not stay in cache)."""
    return form_conv_chains(graph, keep=conv_chain.banded)


# The graph rewrites this backend needs, run by the PassManager after the pipeline (the
# compile driver's, or ``compile``'s own): verified, timed and printable like any pass.
# BPTT without recomputing forward outputs (scan_reuse), weight-gradient sums over steps as
# one GEMM (scan_accumulate), loop-invariant body nodes computed once before the loop
# (scan_invariants), each scan's step body lowered fused (fuse_scan_bodies), each optimizer
# update one loop with the nodes making its gradient (fuse_updates), a fused graph's
# pointwise/depthwise convolution regions run band by band as one chain (llvm_conv_chains).
PASSES = ("llvm_low_precision", "scan_reuse", "scan_accumulate", "scan_invariants",
          "fuse_scan_bodies", "fuse_attention", "fuse_norm", "fuse_norm_grad", "fuse_updates",
          "llvm_conv_chains")
# the compile driver stores the pass pipeline's result in the disk cache (the ``cache``
# option) and, for a graph seen before, reads it back instead of running the passes
CACHES_PIPELINE = True


def _prepare(graph: Graph, threads: int, profile: bool = False, constant_params=False):
    """(its plan, the host's CPU features) of a graph the PASSES were run on; with
    ``constant_params``, its parameters' positions are the plan's constant arguments."""
    _check_lowerable(graph)
    features = jit.host()[2]
    constant = frozenset(range(len(graph.inputs), len(graph.arguments))) if (
        constant_params) else frozenset()
    return plan_top(graph, features, threads, profile, constant), features


def program(graph: Graph, threads: int = 2, opt: int = 3) -> Program:
    """What compiling ``graph`` builds before LLVM runs: the entry module and its kernels
    (``Program.kernels``: one per distinct node code; ``Program.calls``: nodes lowered)."""
    graph = run_backend_passes(graph, PASSES)
    p, features = _prepare(graph, threads)
    return build_module(graph, p, features, threads, jit.host()[0], opt)


def compile(graph: Graph, **options) -> LLVMExecutable:
    """Compile ``graph`` for this CPU (served from the disk cache when it was seen before):
    ``graph`` verified and put through ``PASSES``, then ``build``."""
    _check_options(options)
    return build(run_backend_passes(graph, PASSES), **options)


def _check_options(options: dict) -> None:
    unknown = set(options) - _OPTIONS
    if unknown:
        raise TypeError(f"llvm backend: unknown option(s) {sorted(unknown)}; "
                        f"it takes {sorted(_OPTIONS)}")
    if int(options.get("threads") or os.cpu_count() or 1) < 1:
        raise ValueError(f"llvm backend: threads must be >= 1, got {options['threads']}")


def build(graph: Graph, **options) -> LLVMExecutable:
    """Compile ``graph``, verified and put through ``PASSES`` by the PassManager (the
    compile driver's, or ``compile``'s), to native code; it is not verified again."""
    _check_options(options)
    threads = int(options.get("threads") or os.cpu_count() or 1)
    opt = int(options.get("opt", 3))
    use_cache = bool(options.get("cache", True))
    verbose = bool(options.get("verbose", False))
    profile = bool(options.get("profile", False))
    p, features = _prepare(graph, threads, profile, bool(options.get("constant_params")))
    t0 = time.perf_counter()
    obj, kernels, key, hit = driver.compile_graph(graph, p, features, threads, opt, profile,
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


__all__ = ["compile", "build", "PASSES", "program", "clear_cache", "cache_dir",
           "LLVMExecutable", "NativeError", "LOWERINGS", "UNLOWERABLE", "STATS"]
