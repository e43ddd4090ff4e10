"""irgraph: the IR of the irgraph compiler (types, values, nodes, graphs, the op registry,
text printer and parser, verifier, serialization, graph views)."""
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
