"""Reads the text form back into a Graph: ``parse(str(g)) == g``."""
from __future__ import annotations

import json
import re

import numpy as np

from .ir import Graph, Value
from .registry import IRError
from .types import SHORT_TO_DTYPE, TensorType

_TOKEN = re.compile(r"""
    (?P<ws>[ \t\r]+)
  | (?P<comment>\#[^\n]*)
  | (?P<nl>\n)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<value>%[A-Za-z0-9_.]+)
  | (?P<arrow>->)
  | (?P<number>-?(?:\d+\.\d*(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+|\.\d+(?:[eE][-+]?\d+)?|\d+
                   |inf\b|nan\b))
  | (?P<name>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<punct>[()\[\]{}<>,:=])
""", re.VERBOSE)


class ParseError(IRError):
    """Malformed IR text; the message starts with ``line L, column C:``."""


def _show(kind: str, val: str) -> str:
    return "the end of the text" if kind == "eof" else repr(val)


class _Pos(int):
    """A token's line (an int, so ``tok[2]`` reads as the line) that also knows its column."""
    col: int

    def __new__(cls, line: int, col: int):
        obj = super().__new__(cls, line)
        obj.col = col
        return obj

    def __str__(self) -> str:
        return f"{int(self)}, column {self.col}"


class _Tokens:
    def __init__(self, text: str):
        self.toks: list[tuple[str, str, _Pos]] = []
        line, pos, line_start = 1, 0, 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            at = _Pos(line, pos - line_start + 1)
            if not m:
                raise ParseError(f"line {at}: unexpected character {text[pos]!r}")
            kind = m.lastgroup
            if kind == "nl":
                self.toks.append(("nl", "\n", at))
                line, line_start = line + 1, m.end()
            elif kind == "comment":
                self.toks.append(("comment", m.group()[1:].strip(), at))
            elif kind != "ws":
                self.toks.append((kind, m.group(), at))
            pos = m.end()
        self.toks.append(("eof", "", _Pos(line, pos - line_start + 1)))
        self.i = 0

    def peek(self, skip_nl=True):
        j = self.i
        while skip_nl and self.toks[j][0] in ("nl", "comment"):
            j += 1
        return self.toks[j]

    def next(self, skip_nl=True):
        while skip_nl and self.toks[self.i][0] in ("nl", "comment"):
            self.i += 1
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def expect(self, text: str):
        kind, val, line = self.next()
        if val != text:
            raise ParseError(f"line {line}: expected {text!r}, found {_show(kind, val)}")
        return val

    def integer(self) -> int:
        kind, val, line = self.next()
        if kind != "number" or not val.lstrip("-").isdigit():
            raise ParseError(f"line {line}: expected an integer, found {_show(kind, val)}")
        return int(val)


    def accept(self, text: str) -> bool:
        if self.peek()[1] == text:
            self.next()
            return True
        return False


def parse(text: str) -> Graph:
    """Parse one graph written by ``str(graph)``."""
    toks = _Tokens(text)
    g = _parse_graph(toks)
    if toks.peek()[0] != "eof":
        raise ParseError(f"line {toks.peek()[2]}: text after the end of the graph")
    from .verifier import verify
    verify(g)
    return g


def _parse_type(toks: _Tokens) -> TensorType:
    kind, val, line = toks.next()
    if val not in SHORT_TO_DTYPE:
        raise ParseError(f"line {line}: expected a type like f32[2,3], found {val!r}")
    toks.expect("[")
    dims = []
    while not toks.accept("]"):
        dims.append(toks.integer())
        if dims[-1] < 0:
            raise ParseError(f"line {line}: negative dimension in type {val}{dims}")
        if not toks.accept(","):
            toks.expect("]")
            break
    return TensorType(tuple(dims), SHORT_TO_DTYPE[val])


def _parse_decls(toks: _Tokens) -> list[tuple[str, TensorType]]:
    out = []
    toks.expect("(")
    while not toks.accept(")"):
        kind, val, line = toks.next()
        if kind != "value":
            raise ParseError(f"line {line}: expected %name, found {val!r}")
        toks.expect(":")
        out.append((val[1:], _parse_type(toks)))
        toks.accept(",")
    return out


def _parse_graph(toks: _Tokens) -> Graph:
    toks.expect("graph")
    kind, name, line = toks.next()
    if kind not in ("name", "number"):
        raise ParseError(f"line {line}: expected the graph's name, found {_show(kind, name)}")
    g = Graph(name)
    env: dict[str, Value] = {}
    decl_line = toks.peek()[2]
    try:
        for name, t in _parse_decls(toks):
            env[name] = g.add_input(name, t)
        if toks.accept("params"):
            for name, t in _parse_decls(toks):
                env[name] = g.add_param(name, t)
    except ParseError:
        raise
    except IRError as e:
        raise ParseError(f"line {decl_line}: {e}") from None
    toks.expect("{")
    while True:
        kind, val, line = toks.peek()
        if val == "return":
            toks.next()
            outs = []
            while toks.peek(skip_nl=False)[0] == "value":
                outs.append(_lookup(env, toks.next()))
                if not toks.accept(","):
                    break
            g.set_outputs(outs)
            toks.expect("}")
            return g
        if val == "donate":
            toks.next()
            toks.expect("(")
            while not toks.accept(")"):
                o = toks.integer()
                toks.expect("->")
                g.donations[o] = toks.integer()
                toks.accept(",")
            continue
        if kind == "eof":
            raise ParseError(f"line {line}: the graph ends without 'return' and '}}'")
        _parse_node(toks, g, env)


def _lookup(env, tok) -> Value:
    kind, val, line = tok
    if kind != "value":
        raise ParseError(f"line {line}: expected %name, found {_show(kind, val)}")
    if val[1:] not in env:
        raise ParseError(f"line {line}: use of undefined value {val}")
    return env[val[1:]]


def _parse_node(toks: _Tokens, g: Graph, env: dict[str, Value]) -> None:
    names, types = [], []
    while True:
        kind, val, line = toks.next()
        if kind != "value":
            raise ParseError(f"line {line}: expected %name, found {val!r}")
        toks.expect(":")
        names.append(val[1:])
        types.append(_parse_type(toks))
        if not toks.accept(","):
            break
    toks.expect("=")
    kind, op, op_line = toks.next()
    if kind != "name":
        raise ParseError(f"line {op_line}: expected an op name, found {_show(kind, op)}")
    toks.expect("(")
    args = []
    while not toks.accept(")"):
        args.append(_lookup(env, toks.next()))
        toks.accept(",")
    attrs = {}
    if toks.peek(skip_nl=False)[1] == "{":
        toks.next()
        while not toks.accept("}"):
            kind, key, line = toks.next()
            if kind != "name":
                raise ParseError(f"line {line}: expected an attribute name, found "
                                 f"{_show(kind, key)}")
            toks.expect("=")
            attrs[key] = _parse_attr(toks)
            toks.accept(",")
    loc = None
    if toks.peek(skip_nl=False)[0] == "comment":
        loc = toks.next(skip_nl=False)[1]
    try:
        outs = g.add_node(op, args, attrs, loc, names, types)
    except IRError as e:
        raise ParseError(f"line {op_line}: {e}") from None
    for v in outs:
        env[v.name] = v


def _parse_attr(toks: _Tokens):
    kind, val, line = toks.peek()
    if val == "graph":
        return _parse_graph(toks)
    if val == "array":
        toks.next()
        toks.expect("<")
        t = _parse_type(toks)
        toks.expect(">")
        flat = _parse_attr(toks)
        if not isinstance(flat, tuple) or len(flat) != t.size:
            raise ParseError(f"line {line}: array<{t}> needs a list of {t.size} numbers")
        try:
            arr = np.array(flat, dtype=t.np_dtype).reshape(t.shape)
        except (TypeError, ValueError, OverflowError) as e:
            raise ParseError(f"line {line}: bad array<{t}> values: {e}") from None
        arr.setflags(write=False)
        return arr
    if val == "[":
        toks.next()
        items = []
        while not toks.accept("]"):
            items.append(_parse_attr(toks))
            toks.accept(",")
        return tuple(items)
    toks.next()
    if kind == "string":
        try:
            return json.loads(val)
        except ValueError as e:
            raise ParseError(f"line {line}: bad string {val}: {e}") from None
    if kind == "number":
        if val.lstrip("-") in ("inf", "nan"):
            return float(val)
        return float(val) if any(c in val for c in ".eE") else int(val)
    if val in ("true", "false"):
        return val == "true"
    if val == "none":
        return None
    raise ParseError(f"line {line}: bad attribute value {_show(kind, val)}")
