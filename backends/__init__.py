"""Backends: ``get_backend(name).compile(graph, **options) -> Executable``.

Each backend module has ``PASSES`` (the names of the registered passes it needs, run by the
PassManager), ``build(graph, **options)`` (the executable of a graph that was verified and put
through ``PASSES``) and ``compile(graph, **options)`` (both: ``base.run_backend_passes``, then
``build``)."""
from __future__ import annotations

import importlib

_BACKENDS = {"reference": "irgraph.backends.reference", "llvm": "irgraph.backends.llvm",
             "triton": "irgraph.backends.triton"}


def available() -> list[str]:
    return list(_BACKENDS)


def get_backend(name: str):
    if name not in _BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(_BACKENDS)}")
    return importlib.import_module(_BACKENDS[name])


def compile(graph, backend: str = "reference", *, prepared: bool = False, **options):
    """The executable of ``graph`` on ``backend``. ``prepared``: the graph comes from a
    PassManager that verified it and ran the backend's ``PASSES`` (the compile driver,
    frontend/driver.py), so the backend builds it as it is; otherwise the backend's
    ``compile`` verifies it and runs them first."""
    module = get_backend(backend)
    return module.build(graph, **options) if prepared else module.compile(graph, **options)
