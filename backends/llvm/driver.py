"""The compile driver of the LLVM backend: a planned graph to object code.

Above both the IR builder (``module.py``) and the machine-code compiler and its cache
(``jit.py``): the graph's entry object and the kernels it calls come from the disk cache
when the graph was compiled before; else ``module.build_module`` builds the IR, handing each
kernel over as soon as it is built to ``jit.KernelStream`` (cache lookup, then the compile
threads), and everything compiled is stored in one batch.
"""
from __future__ import annotations

from . import jit, module


def compile_graph(graph, plan, features: str, threads: int, opt: int, profile: bool,
                  use_cache: bool) -> tuple[bytes, list[bytes], str, bool]:
    """(entry object, kernel objects, cache key, cache hit) of a planned graph: from the
    disk cache when the graph (canonical text and options) was compiled before and its
    kernels are still there; else the IR is built, each kernel not in the cache is
    compiled (and stored), and the entry with the kernels of the cheap level in it."""
    key = jit.cache_key(jit.canonical_text(graph), {"threads": threads, "opt": opt,
                                                    "profile": profile,
                                                    "prepared": sorted(plan.prep.items())})
    if use_cache:
        with jit.phase("cache"):
            obj = jit.cache_load(key)
            kernels = jit.cached_kernels(obj) if obj is not None else None
        if kernels is not None:
            jit.count("graph_hits")
            jit.count("kernels_loaded", len(kernels))
            return obj, kernels, key, True
    jit.count("graph_misses")
    stream = jit.KernelStream(use_cache)
    try:
        with jit.phase("ir_build"):
            prog = module.build_module(graph, plan, features, threads, jit.host()[0], opt,
                                       on_kernel=stream.add,
                                       known=stream.known if use_cache else None)
        jit.count("kernels_shared", prog.calls - len(prog.memo))
        obj, objs, made = stream.finish(prog.entry_text(inline=True), min(opt, jit.ENTRY_OPT))
    finally:
        stream.close()
    jit.count("kernels_compiled",
              len(made) + sum(k.opt == 0 for k in prog.kernels.values()))
    if use_cache:           # one batch: one flush to the disk for the whole compile
        index = [(jit.signature_key(prog.signatures[k.symbol]),
                  f"{k.symbol}\n{k.opt}".encode()) for k in prog.kernels.values()
                 if k.opt > 0 and k.symbol in prog.signatures]
        with jit.phase("cache"):
            jit.cache_store_many([(jit.kernel_key(k.symbol), kobj) for k, kobj in made]
                                 + index + [(key, obj)])
    return obj, objs, key, False
