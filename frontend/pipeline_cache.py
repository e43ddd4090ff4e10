"""The on-disk cache of the pass pipeline's result (``compile_graph``, backends that declare
``CACHES_PIPELINE``): a graph compiled before skips its passes.

Key: sha256 of the source hash of the code that shapes the result (``backends.cache
.source_hash``: the packages the passes live in), the backend, the pipeline kind, the pass
names, and the graph entering the PassManager: its location-free text
(``canonical_text``: no graph or value names), the names of its arguments and parameters
(the executable's interface) and the source location of every node, nested graphs included
(what error messages of the compiled graph point at). Value: the text of the optimized
graph (``irgraph.parse`` reads it back; no pickle), under the cache's HMAC-checked entry
format (``backends/cache.py``: a damaged entry is deleted with a ``CacheWarning`` and the
passes run anew). The cache is bypassed when a pass is not part of the hashed source (a
function handed to the pipeline, a pass registered by user code), when the backend's
``cache`` option is False, when ``print_after`` asks for the IR between passes, and for a
graph whose passes cost less than reading their result back (``pays``).
"""
from __future__ import annotations

import hashlib
import warnings
from functools import lru_cache
from pathlib import Path

from irgraph import Graph, IRError, parse
from irgraph.backends import cache as disk_cache
from irgraph.passes.manager import Pass, all_passes

_CACHE = disk_cache.DiskCache("pipeline", ".ir")
_HEADER = "irgraph-pipeline v1\n"


@lru_cache(maxsize=None)
def _hashed(fn) -> bool:
    """Whether ``fn``'s code is part of ``source_hash`` (a file under its roots)."""
    code = getattr(fn, "__code__", None)
    if code is None:
        return False
    path = Path(code.co_filename).resolve()
    return any(path.is_relative_to(r.resolve()) for r in disk_cache.source_roots())


def cacheable(passes: list[Pass]) -> bool:
    """Every pass is a registered one whose code the source hash covers."""
    registered = all_passes()
    return all(registered.get(p.name) is p and _hashed(p.fn) for p in passes)


def pays(graph: Graph) -> bool:
    """Whether reading the result back is cheaper than running the passes: for a graph with
    a recurrence (a ``scan``: the BPTT passes and the step body's fusion do the most work
    per node), reading the result back takes about 60% of the passes' time; for a graph
    without one it takes more than they do (``bench/bench_compile.py``: the cached compile
    of the LSTM step 54 -> 43 ms, of the MLP and the LeNet step 4-5 ms slower), so those
    are neither stored nor looked up."""
    return any(n.op == "scan" for n in graph.nodes)


def _locations(g: Graph, out: list) -> list:
    for n in g.nodes:
        out.append(n.loc or "")
        for a in n.attrs.values():
            if isinstance(a, Graph):
                out.append("{")
                _locations(a, out)
                out.append("}")
    return out


def key(graph: Graph, passes: list[Pass], backend: str, kind: str) -> str:
    """The entry key of ``graph`` put through ``passes`` for ``backend``."""
    from irgraph.backends.llvm.jit import canonical_text
    names = [v.name for v in graph.arguments]
    blob = "\0".join([_HEADER, disk_cache.source_hash(), backend, kind,
                      ",".join(p.name for p in passes), ",".join(names),
                      "\n".join(_locations(graph, [])), canonical_text(graph)])
    return hashlib.sha256(blob.encode()).hexdigest()


def load(k: str, name: str) -> Graph | None:
    """The optimized graph stored under ``k`` (named ``name``, the source graph's name), or
    None when absent or unreadable (an unreadable entry warns and is recomputed)."""
    payload = _CACHE.load(k)
    if payload is None:
        return None
    try:
        text = payload.decode("utf-8")
        if not text.startswith(_HEADER):
            raise IRError("no pipeline-cache header")
        g = parse(text[len(_HEADER):])            # (verified by the parser)
    except (UnicodeDecodeError, IRError) as e:
        warnings.warn(f"pipeline cache entry {k} cannot be read ({e}); running the passes "
                      f"anew", disk_cache.CacheWarning, stacklevel=3)
        return None
    g.name = name
    return g


def store(k: str, graph: Graph) -> None:
    """Write ``graph``'s text under ``k`` (one atomic, synced write)."""
    _CACHE.store(k, (_HEADER + str(graph)).encode("utf-8"))


def clear() -> int:
    """Delete every stored pipeline result; how many were removed."""
    return _CACHE.clear()
