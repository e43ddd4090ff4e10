"""``GraphRewriter``: how passes build a new graph from an old one, node by node. The class is
defined in ir.py beside ``Graph`` (whose ``copy`` is built on it); this module is its import
path."""
from .ir import GraphRewriter

__all__ = ["GraphRewriter"]
