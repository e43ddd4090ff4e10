"""Any batch size: compiled functions that re-specialize on new shapes, and compiled
functions and training steps that take a partial batch without compiling again.

``jit(fn)`` (as ``jax.jit``): ``f = jit(model, backend="llvm"); f(x)`` traces and compiles
for the shapes and dtypes of ``x`` on the first call and again for each new combination
(and each new value of a static argument, each new train/eval mode of a module); the
executables sit in an LRU table (``maxsize``) and ``f.cache_info()`` counts hits, compiles
and recompiles. ``warn_after=N`` warns (``RecompileWarning``) when the N-th recompile
happens. Weights are read from the module at every call, as ``compile``'s functions do.

``compile(..., dynamic_batch=True)`` and ``compile_train(..., dynamic_batch=True)``: see
dynamic_batch.py.
"""
from __future__ import annotations

import inspect
import warnings
from collections import OrderedDict
from typing import Any, Callable, NamedTuple

import numpy as np

from .compiler import compile as _compile, refuse_traced
from .dynamic_batch import DynamicBatchFunction, DynamicTrainStep, argument_array, \
    check_dynamic_batch, row_coupling
from .guards import module_state
from .nn import Module
from .tracing import TensorSpec

__all__ = ["jit", "JitFunction", "SpecializationCache", "CacheInfo", "RecompileWarning",
           "DynamicBatchFunction", "DynamicTrainStep", "row_coupling", "check_dynamic_batch"]


class RecompileWarning(UserWarning):
    """A jitted function keeps compiling for new input shapes."""


class CacheInfo(NamedTuple):
    hits: int
    misses: int          # compiles (the first included)
    maxsize: int
    currsize: int
    recompiles: int      # compiles after the first


class SpecializationCache:
    """An LRU table key -> compiled executable, with counts of hits and compiles."""

    def __init__(self, maxsize: int = 32, warn_after: int | None = None, name: str = "f"):
        if isinstance(maxsize, bool) or not isinstance(maxsize, (int, np.integer)) \
                or maxsize < 1:
            raise ValueError(f"maxsize must be an int >= 1, got {maxsize!r}")
        if warn_after is not None and (isinstance(warn_after, bool) or not isinstance(
                warn_after, (int, np.integer)) or warn_after < 1):
            raise ValueError(f"warn_after must be None or an int >= 1, got {warn_after!r}")
        self.maxsize, self.warn_after, self.name = int(maxsize), warn_after, name
        self.table: OrderedDict = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key, build: Callable[[], Any], describe: Callable[[], str] = str):
        """The executable for ``key``, built by ``build()`` when the table has none."""
        if key in self.table:
            self.hits += 1
            self.table.move_to_end(key)
            return self.table[key]
        value = build()                     # a failed build counts nothing
        self.misses += 1
        self.table[key] = value
        if len(self.table) > self.maxsize:
            self.table.popitem(last=False)
        if self.warn_after is not None and self.recompiles == self.warn_after:
            warnings.warn(f"{self.name} was recompiled {self.recompiles} times (now for "
                          f"{describe()}): each new input shape, dtype or static argument "
                          f"compiles anew; pad inputs to a few shapes, or use "
                          f"dynamic_batch=True for a varying batch size", RecompileWarning,
                          stacklevel=4)
        return value

    @property
    def recompiles(self) -> int:
        return max(self.misses - 1, 0)

    def info(self) -> CacheInfo:
        return CacheInfo(self.hits, self.misses, self.maxsize, len(self.table), self.recompiles)

    def clear(self) -> None:
        self.table.clear()


def _module_key(fn) -> tuple:
    """What of a module's state a compiled graph depends on (``guards.module_state``)."""
    return module_state(fn) if isinstance(fn, Module) else ()


class JitFunction:
    """``fn`` compiled once per input signature; see the module docstring."""

    def __init__(self, fn: Callable | Module, build: Callable, static_argnums=(),
                 maxsize: int = 32, warn_after: int | None = None, name: str | None = None):
        self.fn = fn
        self._build = build      # (function of the dynamic arguments, specs) -> executable
        static = (static_argnums,) if isinstance(static_argnums, int) else static_argnums
        self.static_argnums = tuple(sorted(int(i) for i in static))
        if any(i < 0 for i in self.static_argnums):
            raise ValueError(f"static_argnums must be >= 0, got {static_argnums!r}")
        self.name = name or getattr(fn, "__name__", type(fn).__name__)
        self.cache = SpecializationCache(maxsize, warn_after, self.name)

    def _split(self, args) -> tuple[list[np.ndarray], tuple]:
        arrays, statics = [], []
        for i, a in enumerate(args):
            if i in self.static_argnums:
                try:
                    hash(a)
                except TypeError:
                    raise TypeError(f"{self.name}: static argument {i} must be hashable, got "
                                    f"{type(a).__name__}") from None
                statics.append((i, a))
            else:
                arrays.append(argument_array(a, f"{self.name}: argument {i}"))
        missing = [i for i in self.static_argnums if i >= len(args)]
        if missing:
            raise TypeError(f"{self.name}: static_argnums {missing} but only {len(args)} "
                            f"arguments were given")
        return arrays, tuple(statics)

    def _bind(self, statics: tuple, n_args: int) -> Callable:
        """``fn`` as a function of its dynamic arguments only (the static ones bound)."""
        if not statics:
            return self.fn
        fixed = dict(statics)
        fn = self.fn

        def bound(*dynamic):
            it = iter(dynamic)
            return fn(*[fixed[i] if i in fixed else next(it) for i in range(n_args)])
        try:
            params = list(inspect.signature(fn).parameters.values())[:n_args]
            bound.__signature__ = inspect.Signature(
                [p for i, p in enumerate(params) if i not in fixed])
        except (TypeError, ValueError):
            pass
        bound.__name__ = self.name
        return bound

    def specialize(self, *args):
        """The executable for these arguments (compiled now if the table lacks it)."""
        arrays, statics = self._split(args)
        return self._lookup(arrays, statics, len(args))

    def _lookup(self, arrays, statics, n_args):
        specs = tuple(TensorSpec(a.shape, a.dtype.name) for a in arrays)
        key = (tuple((s.shape, s.dtype) for s in specs), statics, _module_key(self.fn))

        def describe():
            shapes = ", ".join(f"{s.dtype}{list(s.shape)}" for s in specs)
            return f"({shapes})" + (f" with static {dict(statics)}" if statics else "")
        return self.cache.get(key, lambda: self._build(self._bind(statics, n_args), specs),
                              describe)

    def __call__(self, *args):
        refuse_traced(args, getattr(self, "__name__", "jit"))
        arrays, statics = self._split(args)
        return self._lookup(arrays, statics, len(args))(*arrays)

    def cache_info(self) -> CacheInfo:
        return self.cache.info()

    def cache_clear(self) -> None:
        self.cache.clear()

    @property
    def recompiles(self) -> int:
        return self.cache.recompiles


def jit(fn: Callable | Module, *, backend: str = "reference", static_argnums=(),
        maxsize: int = 32, warn_after: int | None = None, pipeline=None,
        name: str | None = None, **options) -> JitFunction:
    """``fn`` (a function or module) compiled with ``backend`` for each new input signature
    at call time; static arguments (``static_argnums``) are Python values baked into the
    graph. Returns numpy arrays in ``fn``'s output structure."""
    if isinstance(fn, Module) and static_argnums not in ((), None):
        raise TypeError("jit: static_argnums applies to functions; wrap the module in one")

    def build(f, specs):
        return _compile(f, *specs, backend=backend, pipeline=pipeline, name=name, **options)
    return JitFunction(fn, build, static_argnums or (), maxsize, warn_after, name)
