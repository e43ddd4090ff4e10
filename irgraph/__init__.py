"""irgraph: the IR of the irgraph compiler (types, values, nodes, graphs, the op registry,
text printer and parser, verifier, serialization, graph views), and the one import of its users.

The layers above the IR are subpackages: ``irgraph.passes``, ``irgraph.backends`` and
``irgraph.frontend`` (the folders ``passes/``, ``backends/`` and ``frontend/`` of the source tree).
The DSL's names are also reachable from here, loaded on first use so that importing the IR alone
stays light and the layering holds (the IR never imports the frontend at import time)::

    import irgraph as ig
    model = ig.nn.Sequential(ig.nn.Linear(4, 2), ig.nn.ReLU())
    exe = ig.compile(model, ig.TensorSpec((8, 4)), backend="llvm")
"""
import importlib as _importlib
import os as _os

# From a source checkout (tests, examples run in place) the three layer folders sit beside this
# one; an install maps them under this package (pyproject.toml's package-dir), so only the
# checkout needs the search path extended. pyproject.toml marks the checkout: an installed
# irgraph never looks at site-packages' own folders of those names.
_SOURCE_ROOT = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_SOURCE_ROOT, "pyproject.toml")) \
        and _os.path.isfile(_os.path.join(_SOURCE_ROOT, "frontend", "__init__.py")):
    __path__.append(_SOURCE_ROOT)
from . import ops  # noqa: F401  (registers the ops)
from .ir import Graph, Node, Value
from .parser import ParseError, parse
from .registry import Attr, Cost, IRError, OpDef, all_ops, get_op, register_op
from .rewrite import GraphRewriter
from .checkpoint import CheckpointError
from .serialize import load, save
from .types import DTYPES, TensorType
from .verifier import VerificationError, verify

__all__ = ["Graph", "Node", "Value", "parse", "ParseError", "Attr", "Cost", "IRError", "OpDef",
           "all_ops", "get_op", "register_op", "GraphRewriter", "load", "save", "CheckpointError",
           "DTYPES", "TensorType", "VerificationError", "verify"]


_LAYERS = ("passes", "backends", "frontend")


def __getattr__(name: str):
    """The facade: ``irgraph.compile``, ``irgraph.nn``, ``irgraph.F``, ``irgraph.optim`` and every
    other name of ``irgraph.frontend.__all__``, imported on first use."""
    if name.startswith("_") or name in _LAYERS:
        raise AttributeError(f"module 'irgraph' has no attribute {name!r}")
    frontend = _importlib.import_module("irgraph.frontend")
    if name in getattr(frontend, "__all__", ()):
        return getattr(frontend, name)
    raise AttributeError(f"module 'irgraph' has no attribute {name!r}")


def __dir__():
    frontend = _importlib.import_module("irgraph.frontend")
    return sorted(set(globals()) | set(frontend.__all__))
