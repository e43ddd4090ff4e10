"""Reads the text form back into a Graph: ``parse(str(g)) == g``.

Any text gives either a graph that prints back to itself or a ``ParseError`` (an ``IRError``)
starting with ``line L, column C:``; never another exception class. Limits: ``MAX_DEPTH``
levels of nested subgraphs and brackets, integers within int64 (checked on the digits before
any conversion), numbers at most ``MAX_NUMBER_CHARS`` characters, ASCII digits only; type
bounds are ``TensorType``'s (irgraph/types.py).
"""
from __future__ import annotations

import json
import math
import re

import numpy as np

from .ir import Graph, Value
from .registry import IRError
from .types import SHORT_TO_DTYPE, TensorType

MAX_DEPTH = 64             # nested graphs and brackets ('[' of tuples and arrays) together
MAX_NUMBER_CHARS = 100     # a float literal's text (repr gives at most 24)
INT_MIN, INT_MAX = -2 ** 63, 2 ** 63 - 1

_TOKEN = re.compile(r"""
    (?P<ws>[ \t\r]+)
  | (?P<comment>\#[^\n]*)
  | (?P<nl>\n)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<value>%[A-Za-z0-9_.]+)
  | (?P<arrow>->)
  | (?P<number>-?(?:[0-9]+\.[0-9]*(?:[eE][-+]?[0-9]+)?|[0-9]+[eE][-+]?[0-9]+
                   |\.[0-9]+(?:[eE][-+]?[0-9]+)?|[0-9]+|inf\b|nan\b))
  | (?P<name>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<punct>[()\[\]{}<>,:=])
""", re.VERBOSE | re.ASCII)
_INT = re.compile(r"-?[0-9]+", re.ASCII)


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
        self.depth = 0
        # where each node, graph and donation list was read: errors found after parsing
        # (by the verifier) are reported there
        self.where: dict = {}

    def enter(self, at) -> None:
        """One more level of nesting (a graph or a bracket) starting at ``at``."""
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ParseError(f"line {at}: nesting deeper than {MAX_DEPTH} levels of graphs "
                             f"and brackets")

    def leave(self) -> None:
        self.depth -= 1

    def last(self) -> _Pos:
        """The position of the last token read (of the first one before any is read)."""
        return self.toks[max(self.i - 1, 0)][2]

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
        if kind != "number" or not _INT.fullmatch(val):
            raise ParseError(f"line {line}: expected an integer, found {_show(kind, val)}")
        return _to_int(val, line)


    def accept(self, text: str) -> bool:
        if self.peek()[1] == text:
            self.next()
            return True
        return False


def _to_int(val: str, at) -> int:
    """An integer token within int64; the digits are counted before any conversion."""
    digits = val.lstrip("-").lstrip("0")
    n = int(digits) if 0 < len(digits) <= 19 else 0
    n = -n if val.startswith("-") else n
    if len(digits) > 19 or not INT_MIN <= n <= INT_MAX:
        shown = val if len(val) <= 30 else f"{val[:12]}...{val[-6:]} ({len(digits)} digits)"
        raise ParseError(f"line {at}: integer {shown} is out of the int64 range")
    return n


def parse(text: str) -> Graph:
    """Parse one graph written by ``str(graph)``; the graph is verified.

    Raises ``ParseError`` (an ``IRError``) starting with ``line L, column C:`` on any bad text,
    including nodes the registry or the verifier refuses."""
    if not isinstance(text, str):
        raise TypeError(f"parse takes the text of a graph (a str), got {type(text).__name__}")
    toks = _Tokens(text)
    try:
        g = _parse_graph(toks)
        if toks.peek()[0] != "eof":
            raise ParseError(f"line {toks.peek()[2]}: text after the end of the graph")
    except ParseError:
        raise
    except Exception as e:  # noqa: BLE001  (any other failure still names the line)
        raise ParseError(f"line {toks.last()}: {_describe(e)}") from None
    from .verifier import VerificationError, verify
    try:
        verify(g)
    except VerificationError as e:
        where = toks.where
        at = (where.get(id(e.node)) or where.get(("donate", id(e.graph)))
              or where.get(id(e.graph)) or toks.last())
        raise ParseError(f"line {at}: {e}") from None
    except Exception as e:  # noqa: BLE001
        raise ParseError(f"line {toks.last()}: {_describe(e)}") from None
    return g


def _describe(e: Exception) -> str:
    return str(e) if isinstance(e, IRError) else f"{type(e).__name__}: {e}"


def _parse_type(toks: _Tokens) -> TensorType:
    kind, val, line = toks.next()
    if kind != "name" or val not in SHORT_TO_DTYPE:
        raise ParseError(f"line {line}: expected a type like f32[2,3], found {_show(kind, val)}")
    toks.expect("[")
    dims = []
    while not toks.accept("]"):
        dims.append(toks.integer())
        if not toks.accept(","):
            toks.expect("]")
            break
    try:
        return TensorType(tuple(dims), SHORT_TO_DTYPE[val])
    except (TypeError, ValueError) as e:
        raise ParseError(f"line {line}: bad type {val}{list(dims)}: {e}") from None


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
    at = toks.peek()[2]
    toks.expect("graph")
    toks.enter(at)
    kind, name, line = toks.next()
    if kind not in ("name", "number"):
        raise ParseError(f"line {line}: expected the graph's name, found {_show(kind, name)}")
    g = Graph(name)
    toks.where[id(g)] = at
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
            toks.leave()
            return g
        if val == "donate":
            toks.next()
            toks.where.setdefault(("donate", id(g)), line)
            toks.expect("(")
            while not toks.accept(")"):
                o_at = toks.peek()[2]
                o = toks.integer()
                toks.expect("->")
                a = toks.integer()
                if o in g.donations:
                    raise ParseError(f"line {o_at}: output {o} is donated twice "
                                     f"({o}->{g.donations[o]} and {o}->{a})")
                g.donations[o] = a
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
            if key in attrs:
                raise ParseError(f"line {line}: attribute {key!r} is given twice")
            attrs[key] = _parse_attr(toks)
            toks.accept(",")
    loc = None
    if toks.peek(skip_nl=False)[0] == "comment":
        loc = toks.next(skip_nl=False)[1]
    try:
        outs = g.add_node(op, args, attrs, loc, names, types)
    except Exception as e:  # noqa: BLE001  (a type rule may raise anything on odd attributes)
        raise ParseError(f"line {op_line}: {_describe(e)}") from None
    toks.where[id(g.nodes[-1])] = op_line
    for v in outs:
        env[v.name] = v


def _parse_attr(toks: _Tokens):
    kind, val, line = toks.peek()
    if val == "graph" and kind == "name":
        return _parse_graph(toks)
    if val == "array" and kind == "name":
        toks.next()
        toks.expect("<")
        t = _parse_type(toks)
        toks.expect(">")
        if toks.peek()[1] != "[":
            raise ParseError(f"line {toks.peek()[2]}: expected '[' and the values of "
                             f"array<{t}>, found {_show(*toks.peek()[:2])}")
        flat = _parse_attr(toks)
        if len(flat) != t.size:
            raise ParseError(f"line {line}: array<{t}> needs a list of {t.size} numbers")
        return _make_array(flat, t, line)
    if val == "[" and kind == "punct":
        toks.next()
        toks.enter(line)
        items = []
        while not toks.accept("]"):
            items.append(_parse_attr(toks))
            toks.accept(",")
        toks.leave()
        return tuple(items)
    toks.next()
    if kind == "string":
        try:
            return json.loads(val)
        except ValueError as e:
            raise ParseError(f"line {line}: bad string {val}: {e}") from None
    if kind == "number":
        return _number(val, line)
    if val in ("true", "false") and kind == "name":
        return val == "true"
    if val == "none" and kind == "name":
        return None
    raise ParseError(f"line {line}: bad attribute value {_show(kind, val)}")


def _number(val: str, at) -> int | float:
    """An int (within int64) or a float; a finite literal too big for a float64 is refused."""
    if _INT.fullmatch(val):
        return _to_int(val, at)
    if len(val) > MAX_NUMBER_CHARS:
        raise ParseError(f"line {at}: number literal of {len(val)} characters (at most "
                         f"{MAX_NUMBER_CHARS})")
    x = float(val)
    if math.isinf(x) and val.lstrip("-") != "inf":
        raise ParseError(f"line {at}: {val} is out of the float64 range (write inf or -inf)")
    return x


def _make_array(flat: tuple, t: TensorType, at) -> np.ndarray:
    """The read-only array of ``array<t>[flat]``: each element a scalar of t's kind (bools for
    bool, ints within the dtype's range for integers, numbers within the dtype's range for
    floats)."""
    bad = f"line {at}: bad array<{t}> values"
    for x in flat:
        if t.dtype == "bool":
            ok, want = isinstance(x, bool), "a bool (true or false)"
        elif t.is_float:
            ok, want = isinstance(x, (int, float)) and not isinstance(x, bool), "a number"
        else:
            info = np.iinfo(t.np_dtype)
            ok = isinstance(x, int) and not isinstance(x, bool) and info.min <= x <= info.max
            want = f"an {t.dtype} (an integer in [{info.min}, {info.max}])"
        if not ok:
            raise ParseError(f"{bad}: {_show_attr(x)} is not {want}")
    with np.errstate(over="ignore"):
        arr = np.array(flat, dtype=t.np_dtype).reshape(t.shape)
    if t.is_float:
        flat_arr = arr.reshape(-1)
        for k, x in enumerate(flat):
            if math.isinf(flat_arr[k]) and not math.isinf(x):
                raise ParseError(f"{bad}: {x} is out of the {t.dtype} range")
    arr.setflags(write=False)
    return arr


def _show_attr(x) -> str:
    from .ir import Graph
    if isinstance(x, Graph):
        return f"graph {x.name}"
    text = repr(x)
    return text if len(text) <= 40 else text[:37] + "..."
