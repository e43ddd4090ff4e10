"""A helper for passes that build a new graph from an old one, node by node."""
from __future__ import annotations

from typing import Sequence

from .ir import Graph, Node, Value


class GraphRewriter:
    """Copies ``src`` into a fresh graph; ``env`` maps old values to new ones.

    Passes call ``copy_node`` for nodes they keep, ``emit`` for new nodes, ``replace`` to map
    an old value onto a new one, then ``finish`` (outputs and donations are carried over).
    """

    def __init__(self, src: Graph, name: str | None = None, keep_params: bool = True):
        self.src = src
        self.dst = Graph(name or src.name)
        self.env: dict[Value, Value] = {}
        for v in src.inputs:
            self.env[v] = self.dst.add_input(v.name, v.type)
        if keep_params:
            for v in src.params:
                self.env[v] = self.dst.add_param(v.name, v.type)
        # reserve every old node-output name so that generated names never collide with them;
        # copy_node hands a reserved name back to the copy of its node
        self._reserved = {v.name for v in src.values() if v not in self.env}
        self.dst._names |= self._reserved

    def __getitem__(self, v: Value) -> Value:
        return self.env[v]

    def replace(self, old: Value, new: Value) -> None:
        self.env[old] = new

    def emit(self, op: str, *inputs: Value, loc: str | None = None, **attrs):
        return self.dst.op(op, *inputs, loc=loc, **attrs)

    def copy_node(self, node: Node, attrs: dict | None = None) -> tuple[Value, ...]:
        names = []
        for v in node.outputs:
            if v.name in self._reserved:
                self._reserved.discard(v.name)
                self.dst._names.discard(v.name)
                names.append(v.name)
            else:
                names.append(None)
        outs = self.dst.add_node(node.op, [self.env[v] for v in node.inputs],
                                 node.attrs if attrs is None else attrs, node.loc, names)
        for old, new in zip(node.outputs, outs):
            self.env[old] = new
        return outs

    def finish(self, outputs: Sequence[Value] | None = None) -> Graph:
        if outputs is None:
            outputs = [self.env[v] for v in self.src.outputs]
            self.dst.donations = dict(self.src.donations)
        self.dst.set_outputs(outputs)
        # release names reserved but never used, so the graph prints and re-parses the same
        self.dst._names = {v.name for v in self.dst.values()}
        return self.dst
