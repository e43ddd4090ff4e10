"""Backends: ``get_backend(name).compile(graph, **options) -> Executable``."""
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


def compile(graph, backend: str = "reference", **options):
    return get_backend(backend).compile(graph, **options)
