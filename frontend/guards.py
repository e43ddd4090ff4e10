"""What a compiled function depends on in the modules it traced, and recompiling when that
changes, as torch.compile's guards do: ``model.eval()``, ``layer.requires_grad_(False)``,
``model.double()``, a replaced layer or a layer's setting (``LeakyReLU.negative_slope``,
``Dropout.p``, ``LayerNorm.eps``) after ``compile`` / ``compile_train`` take effect at the
next call instead of being silently ignored; for a plain function, the modules it called
while tracing and the plain values it reads from its closure and globals (``scale`` in
``lambda x: x * scale``).

Checking is cheap: every change to a module that could matter (any attribute set on it, a
registration, a parameter's ``requires_grad``, a parameter array of another shape or
dtype) bumps one counter (``bump``); a guard recomputes the modules' snapshot only when the
counter moved. A function's closure and globals (which change without a bump) are
compared at every call: a tuple of its few free values.
"""
from __future__ import annotations

import types

import numpy as np

from typing import Callable

_VERSION = [0]


def bump() -> None:
    """Something a compiled graph may depend on changed somewhere."""
    _VERSION[0] += 1


_OTHER = object()
# a module's own bookkeeping, not settings a forward reads
_BOOKKEEPING = frozenset({"_parameters", "_buffers", "_modules", "_non_persistent", "training"})


def _plain(v):
    """A comparable stand-in for a setting: numbers and strings by value (their repr, so a
    NaN equals itself), tuples and lists of them, functions by identity; ``_OTHER`` for
    anything else (arrays, modules: watched otherwise or baked as constants)."""
    if v is None or isinstance(v, (bool, int, float, complex, str, bytes, np.generic)):
        return (type(v).__name__, repr(v))
    if isinstance(v, (tuple, list)):
        items = tuple(_plain(x) for x in v)
        return _OTHER if any(x is _OTHER for x in items) else (type(v).__name__, items)
    if isinstance(v, (types.FunctionType, types.BuiltinFunctionType, types.MethodType)):
        return ("fn", id(v))
    return _OTHER


def _settings(module) -> tuple:
    """A module's plain attributes (``_plain``), the settings its forward may read."""
    out = []
    for k, v in module.__dict__.items():
        if k not in _BOOKKEEPING:
            p = _plain(v)
            if p is not _OTHER:
                out.append((k, p))
    return tuple(out)


def module_state(model, params: dict | None = None, modules=()) -> tuple:
    """What a graph traced from ``model`` depends on: each submodule (by identity), its
    train/eval mode and settings, each parameter and buffer (name, identity,
    ``requires_grad``, shape, dtype). Without a module (a plain function), the ``modules``
    it called and the traced ``params`` (name -> Parameter)."""
    if callable(getattr(model, "named_modules", None)):     # a Module (module.py imports us)
        modules = list(model.modules())
        named = model.named_parameters(buffers=True)
    else:
        named = (params or {}).items()
    return (tuple((id(m), m.training, _settings(m)) for m in modules),
            tuple((n, id(p), p.requires_grad, p.data.shape, p.data.dtype.str)
                  for n, p in named))


def free_values(fn) -> tuple:
    """The plain values a function reads from its closure cells and its globals (by name),
    as ``_plain`` gives them; () for anything else."""
    code = getattr(fn, "__code__", None)
    if code is None:
        return ()
    out = []
    for name, cell in zip(code.co_freevars, getattr(fn, "__closure__", None) or ()):
        try:
            v = cell.cell_contents
        except ValueError:                  # an empty cell
            continue
        p = _plain(v)
        if p is not _OTHER and p[0] != "fn":
            out.append((name, p))
    g = getattr(fn, "__globals__", {})
    for name in code.co_names:
        if name in g:
            p = _plain(g[name])
            if p is not _OTHER and p[0] != "fn":
                out.append((name, p))
    return tuple(out)


class Guard:
    """Whether ``module_state`` (or, for a function, its ``free_values``) changed since the
    build (or the last rebuild)."""

    def __init__(self, model, params: dict | None = None, modules: dict | None = None):
        self.model, self.params = model, params
        self.modules = list((modules or {}).values())     # the tracer's id -> module
        self.version = _VERSION[0]
        self.state = module_state(model, params, self.modules)
        self.free = free_values(model)

    def changed(self) -> bool:
        free = free_values(self.model) if self.free else ()
        if free != self.free:
            self.free = free
            self.version = _VERSION[0]
            self.state = module_state(self.model, self.params, self.modules)
            return True
        if _VERSION[0] == self.version:
            return False
        self.version = _VERSION[0]
        now = module_state(self.model, self.params, self.modules)
        if now == self.state:
            return False
        self.state = now
        return True


def rebuild_if_changed(obj, rebuild: Callable, keep=(), force: bool = False) -> None:
    """Before a call of a compiled ``obj`` (its ``_guard``, ``_rebuild``): when what it traced
    changed (or ``force``), compile again and take the new build's attributes, keeping those
    in ``keep`` (state that lives across the rebuild)."""
    guard = obj.__dict__.get("_guard")
    if guard is None or not (force or guard.changed()):
        return
    fresh = rebuild()
    kept = {k: obj.__dict__[k] for k in keep if k in obj.__dict__}
    obj.__dict__.update({k: v for k, v in fresh.__dict__.items() if k != "_guard"})
    obj.__dict__.update(kept)
    guard.params = getattr(obj, "params", guard.params)
    new = fresh.__dict__.get("_guard")
    if new is not None:             # what the new trace called and read
        guard.modules, guard.state, guard.free = new.modules, new.state, new.free
