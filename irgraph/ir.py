"""Values, nodes and graphs: the IR's records.

Grammar of the text format (see printer.py / parser.py)::

    graph    := 'graph' NAME '(' args? ')' ['params' '(' args? ')'] '{' line* '}'
    args     := '%'NAME ':' TYPE (',' '%'NAME ':' TYPE)*
    line     := outs '=' OP '(' operands? ')' ['{' attrs '}'] ['#' LOC]
              | 'donate' '(' INT '->' INT (',' INT '->' INT)* ')'
              | 'return' operands?
    outs     := '%'NAME ':' TYPE (',' '%'NAME ':' TYPE)*
    TYPE     := f32|f64|i32|i64|bool '[' dims ']'

SSA: every value is defined once (a graph input, a parameter or a node
output) and used only after its definition.
"""
from __future__ import annotations

import re
from typing import Iterable, Iterator, Sequence

from .printer import format_graph, format_node
from .registry import GraphBase, IRError, get_op
from .types import TensorType

NAME_RE = re.compile(r"^[A-Za-z0-9_.]+$")


class Value:
    """One SSA value. ``node`` is None for graph inputs and parameters."""
    __slots__ = ("name", "type", "node", "index")

    def __init__(self, name: str, type: TensorType, node: "Node | None" = None, index: int = 0):
        self.name = name
        self.type = type
        self.node = node
        self.index = index

    @property
    def shape(self) -> tuple[int, ...]:
        return self.type.shape

    @property
    def dtype(self) -> str:
        return self.type.dtype

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


class Node:
    """One op application: ``outputs = op(inputs) {attrs}``. ``loc`` is the user's source line."""
    __slots__ = ("op", "inputs", "attrs", "outputs", "loc")

    def __init__(self, op: str, inputs: Sequence[Value], attrs: dict, loc: str | None = None):
        self.op = op
        self.inputs = tuple(inputs)
        self.attrs = dict(attrs)
        self.outputs: tuple[Value, ...] = ()
        self.loc = loc

    @property
    def opdef(self):
        return get_op(self.op)

    def __repr__(self) -> str:
        return format_node(self)


class Graph(GraphBase):
    """A static dataflow graph: inputs, named parameters, nodes in topological order, outputs.

    ``donations`` maps an output index to the argument index (inputs then parameters) whose
    buffer that output may overwrite: the in-place updates of a training step.
    """

    def __init__(self, name: str = "main"):
        self.name = name
        self.inputs: list[Value] = []
        self.params: list[Value] = []
        self.nodes: list[Node] = []
        self.outputs: list[Value] = []
        self.donations: dict[int, int] = {}
        self._names: set[str] = set()
        self._counter = 0

    # ------------------------------------------------------------------ building
    def _claim(self, name: str | None) -> str:
        if name is None:
            while str(self._counter) in self._names:
                self._counter += 1
            name = str(self._counter)
            self._counter += 1
        if not NAME_RE.match(name):
            raise IRError(f"bad value name {name!r}: use letters, digits, '_' and '.'")
        if name in self._names:
            raise IRError(f"value name %{name} is defined twice in graph {self.name!r}")
        self._names.add(name)
        return name

    def fresh_name(self, hint: str) -> str:
        name, i = hint, 1
        while name in self._names:
            name, i = f"{hint}_{i}", i + 1
        return name

    def add_input(self, name: str, type: TensorType) -> Value:
        v = Value(self._claim(name), type)
        self.inputs.append(v)
        return v

    def add_param(self, name: str, type: TensorType) -> Value:
        v = Value(self._claim(name), type)
        self.params.append(v)
        return v

    def add_node(self, op: str, inputs: Sequence[Value], attrs: dict | None = None,
                 loc: str | None = None, names: Sequence[str | None] | None = None,
                 out_types: Sequence[TensorType] | None = None) -> tuple[Value, ...]:
        """Append a node; attributes are validated and output types inferred by the registry."""
        opdef = get_op(op)
        where = f"{loc}: " if loc else ""
        for v in inputs:
            if not isinstance(v, Value):
                raise IRError(f"{where}op {op!r}: input {v!r} is not an IR value")
        attrs = opdef.check_attrs(dict(attrs or {}), where)
        try:
            types = opdef.infer([v.type for v in inputs], attrs)
        except IRError as e:
            raise IRError(f"{where}{e}") from None
        if out_types is not None and [str(t) for t in out_types] != [str(t) for t in types]:
            raise IRError(f"{where}op {op!r}: declared types {list(map(str, out_types))} "
                          f"differ from inferred {list(map(str, types))}")
        node = Node(op, inputs, attrs, loc)
        names = list(names) if names is not None else [None] * len(types)
        if len(names) != len(types):
            raise IRError(f"{where}op {op!r} has {len(types)} outputs, {len(names)} names given")
        node.outputs = tuple(Value(self._claim(n), t, node, i)
                             for i, (n, t) in enumerate(zip(names, types)))
        self.nodes.append(node)
        return node.outputs

    def op(self, op: str, *inputs: Value, loc: str | None = None, **attrs):
        """Builder shorthand: one output gives a Value, several give a tuple."""
        outs = self.add_node(op, inputs, attrs, loc)
        return outs[0] if len(outs) == 1 else outs

    def set_outputs(self, values: Iterable[Value]) -> None:
        self.outputs = list(values)

    # ------------------------------------------------------------------ views
    @property
    def arguments(self) -> list[Value]:
        """What an executable is called with: the inputs, then the parameters."""
        return self.inputs + self.params

    def values(self) -> list[Value]:
        out = list(self.arguments)
        for n in self.nodes:
            out.extend(n.outputs)
        return out

    def users(self) -> dict[Value, list[Node]]:
        res: dict[Value, list[Node]] = {v: [] for v in self.values()}
        for n in self.nodes:
            for v in n.inputs:
                res.setdefault(v, []).append(n)
        return res

    def param(self, name: str) -> Value:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(f"graph {self.name!r} has no parameter {name!r}")

    def __str__(self) -> str:
        return format_graph(self)

    def __repr__(self) -> str:
        return str(self)

    def __eq__(self, other) -> bool:
        return isinstance(other, Graph) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def copy(self, name: str | None = None) -> "Graph":
        """A deep copy (new Value/Node objects; equal text)."""
        rw = GraphRewriter(self, name)
        for node in self.nodes:
            rw.copy_node(node)
        return rw.finish()

    def to_networkx(self):
        from .views import to_networkx
        return to_networkx(self)

    def to_dot(self) -> str:
        from .views import to_dot
        return to_dot(self)


def all_nodes(graph: Graph) -> Iterator[Node]:
    """Every node of ``graph`` and of its subgraphs (graph attributes, at any depth), each node
    before the nodes of its subgraphs."""
    for node in graph.nodes:
        yield node
        for a in node.attrs.values():
            if isinstance(a, Graph):
                yield from all_nodes(a)


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
