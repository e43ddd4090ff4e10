"""What a compiled function depends on in the modules it traced, and recompiling when that
changes, as torch.compile's guards do: ``model.eval()``, ``layer.requires_grad_(False)``,
``model.double()`` or a replaced layer after ``compile`` / ``compile_train`` take effect at
the next call instead of being silently ignored.

Checking is cheap: every change that could matter (a module's ``training`` flag, a
registration, a parameter's ``requires_grad``, a parameter array of another shape or dtype)
bumps one counter (``bump``); a guard recomputes its snapshot only when the counter moved.
"""
from __future__ import annotations

from typing import Callable

_VERSION = [0]


def bump() -> None:
    """Something a compiled graph may depend on changed somewhere."""
    _VERSION[0] += 1


def module_state(model, params: dict | None = None) -> tuple:
    """What a graph traced from ``model`` depends on: each submodule (by identity) and its
    train/eval mode, each parameter and buffer (name, identity, ``requires_grad``, shape,
    dtype). Without a module (a plain function), the traced ``params`` (name -> Parameter)."""
    if callable(getattr(model, "named_modules", None)):     # a Module (module.py imports us)
        modules = tuple((id(m), m.training) for m in model.modules())
        named = model.named_parameters(buffers=True)
    else:
        modules = ()
        named = (params or {}).items()
    return modules, tuple((n, id(p), p.requires_grad, p.data.shape, p.data.dtype.str)
                          for n, p in named)


class Guard:
    """Whether ``module_state`` changed since the build (or the last rebuild)."""

    def __init__(self, model, params: dict | None = None):
        self.model, self.params = model, params
        self.version = _VERSION[0]
        self.state = module_state(model, params)

    def changed(self) -> bool:
        if _VERSION[0] == self.version:
            return False
        self.version = _VERSION[0]
        now = module_state(self.model, self.params)
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
