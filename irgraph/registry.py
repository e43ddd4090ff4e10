"""The op registry: one entry defines one op.

An entry holds the op's attribute specification (validation and defaults), its
type rule, its numpy reference kernel, its cost and its traits (the facts passes
and backends ask about an op: ``TRAITS`` lists them; ``ops_with("elementwise")``
is the set of ops with a trait). Every op-name set a pass or backend needs is
derived from the traits, never written out by hand. Passes and backends keep
their own tables keyed by op name (gradient rules, lowerings); this module
imports none of them.

    @register_op("relu", attrs={}, cost=elementwise_cost(1), traits={"elementwise"})
    def relu(x): ...                      # the reference kernel
    @relu.type_rule
    def _(x): return x                    # TensorType in, TensorType(s) out
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .types import TensorType, canonical_dtype

REQUIRED = object()


class IRError(Exception):
    """An error in the construction or checking of an IR graph."""


@dataclass(frozen=True)
class Attr:
    """Specification of one attribute: a normalizing validator and a default."""
    check: Callable[[Any], Any]
    default: Any = REQUIRED
    doc: str = ""


@dataclass(frozen=True)
class Cost:
    flops: int
    bytes: int


CostFn = Callable[[list[TensorType], list[TensorType], dict], Cost]

# The facts an op may declare. Each op says which hold for it (``traits=`` of ``register_op``,
# an empty set when none does); tests/test_registry.py checks every op declares its traits.
TRAITS = {
    "elementwise": "result element i reads only operand elements at i after broadcasting "
                   "(fusion groups these into one loop)",
    "float_only": "the type rule rejects integer and bool operands",
    "reduction": "reduces the axes of its `axis`/`keepdims` attributes by an accumulation "
                 "(sum, mean, max, min)",
    "view": "the result is the operand's bytes, reinterpreted (no copy)",
    "inplace": "the result may overwrite a same-shaped operand that dies at the node: each "
               "operand element is read before the result element at that index is written",
    "commutative": "its two operands may be swapped",
    "constant": "no inputs: its value is fixed by its attributes (constant folding evaluates it)",
    "effect": "has an effect beyond its outputs (never folded, merged or removed)",
    "random": "a draw from the counter-based generator (a pure function of key and counter)",
    "fallible": "may find bad data at run time (an out-of-range index, a non-finite "
                "value) and raise",
    "autocast_low": "under mixed precision (passes/autocast.py) runs on 16-bit operands: the "
                    "matrix products and convolutions",
    "autocast_float32": "under mixed precision runs in float32, its 16-bit operands cast up "
                        "(reductions, softmax, exp/log/pow, losses, norms)",
}


def default_cost(ins: list[TensorType], outs: list[TensorType], attrs: dict) -> Cost:
    """One flop per output element; every input and output moved once."""
    return Cost(sum(t.size for t in outs), sum(t.nbytes for t in ins + outs))


def elementwise_cost(flops_per_element: int) -> CostFn:
    def cost(ins, outs, attrs):
        return Cost(flops_per_element * sum(t.size for t in outs),
                    sum(t.nbytes for t in ins + outs))
    return cost


_INFERRED_MAX = 4096       # remembered type-rule results per op


class _Unkeyed(Exception):
    pass


def _rule_key(in_types, attrs: dict):
    """A key equal only for equal type-rule arguments: TensorTypes, and attributes of plain
    values (each with its exact Python type, floats by their bits); None when some input or
    attribute has no such key (arrays, subgraphs: the rule is run)."""
    try:
        if not all(type(t) is TensorType for t in in_types):
            return None
        return tuple(in_types), tuple((k, _attr_key(v)) for k, v in attrs.items())
    except _Unkeyed:
        return None


def _attr_key(v):
    t = type(v)
    if v is None or t in (bool, int, str):
        return t, v
    if t is float:
        return t, v.hex()
    if t is tuple:
        return t, tuple(_attr_key(x) for x in v)
    raise _Unkeyed


@dataclass
class OpDef:
    name: str
    kernel: Callable[..., Any]
    attrs: dict[str, Attr] = field(default_factory=dict)
    num_inputs: int | None = None          # None: variadic
    cost_fn: CostFn = default_cost
    differentiable: bool = True
    nondiff_reason: str = ""
    has_subgraph: bool = False
    doc: str = ""
    traits: frozenset[str] | None = None   # None: not declared (tests reject it)
    _type_rule: Callable[..., Any] | None = None
    # (input types, attributes) -> output types of the type rule (a pure function): every
    # pass copies every node and the verifier checks each again, with the same types
    _inferred: dict = field(default_factory=dict, repr=False, compare=False)

    # -- decorators used right under the kernel's definition
    def type_rule(self, fn):
        self._type_rule = fn
        return fn

    # -- the API used by the builder, verifier, interpreter and passes
    def check_attrs(self, attrs: dict, where: str = "") -> dict:
        unknown = set(attrs) - set(self.attrs)
        if unknown:
            raise IRError(f"{where}op {self.name!r} got unknown attribute(s) {sorted(unknown)}; "
                          f"it takes {sorted(self.attrs)}")
        out = {}
        for key, spec in self.attrs.items():
            if key in attrs:
                try:
                    out[key] = spec.check(attrs[key])
                except (TypeError, ValueError) as e:
                    raise IRError(f"{where}op {self.name!r}: bad attribute {key}="
                                  f"{attrs[key]!r}: {e}") from None
            elif spec.default is REQUIRED:
                raise IRError(f"{where}op {self.name!r} needs attribute {key!r}")
            else:
                out[key] = spec.default
        return out

    def infer(self, in_types: list[TensorType], attrs: dict) -> list[TensorType]:
        if self.num_inputs is not None and len(in_types) != self.num_inputs:
            raise IRError(f"op {self.name!r} takes {self.num_inputs} input(s), "
                          f"got {len(in_types)}")
        if self._type_rule is None:
            raise IRError(f"op {self.name!r} has no type rule")
        rule = self._type_rule
        key = _rule_key(in_types, attrs)
        known = self._inferred.get(key) if key is not None else None
        if known is not None and known[0] is rule:          # (a rule replaced: run the new)
            return list(known[1])
        try:
            res = rule(*in_types, **attrs)
        except IRError:
            raise
        except (TypeError, ValueError, IndexError) as e:
            types = ", ".join(map(str, in_types))
            raise IRError(f"op {self.name!r} cannot take ({types}): {e}") from None
        out = list(res) if isinstance(res, (tuple, list)) else [res]
        if key is not None and all(isinstance(t, TensorType) for t in out):
            if len(self._inferred) >= _INFERRED_MAX:
                self._inferred.clear()
            self._inferred[key] = (rule, tuple(out))
        return out

    def run(self, arrays: list[np.ndarray], attrs: dict) -> list[np.ndarray]:
        res = self.kernel(*arrays, **attrs)
        return list(res) if isinstance(res, (tuple, list)) else [res]

    def cost(self, in_types, out_types, attrs) -> Cost:
        return self.cost_fn(list(in_types), list(out_types), attrs)

    def has(self, trait: str) -> bool:
        """Whether the op has ``trait`` (one of ``TRAITS``)."""
        _check_trait(trait)
        return trait in (self.traits or ())


_REGISTRY: dict[str, OpDef] = {}


def register_op(name: str, *, attrs: dict[str, Attr] | None = None,
                num_inputs: int | None = -1, cost: CostFn = default_cost,
                differentiable: bool = True, nondiff_reason: str = "",
                has_subgraph: bool = False, traits=None):
    """Decorator: register ``fn`` as the reference kernel of a new op.

    ``num_inputs=-1`` (default) takes the arity from the kernel's positional
    parameters; ``None`` makes the op variadic. ``traits``: the names from ``TRAITS``
    that hold for the op (an empty set when none does).
    """
    if not differentiable and not nondiff_reason:
        raise ValueError(f"op {name!r}: a non-differentiable op must say why")
    if traits is not None:
        if isinstance(traits, str):
            raise TypeError(f"op {name!r}: traits must be a set of names, got the string "
                            f"{traits!r}")
        traits = frozenset(traits)
        unknown = sorted(t for t in traits if t not in TRAITS)
        if unknown:
            raise ValueError(f"op {name!r}: unknown trait(s) {unknown}; the traits are "
                             f"{sorted(TRAITS)}")

    def deco(fn):
        if name in _REGISTRY:
            raise ValueError(f"op {name!r} registered twice")
        n = num_inputs
        if n == -1:
            import inspect
            params = inspect.signature(fn).parameters.values()
            if any(p.kind == p.VAR_POSITIONAL for p in params):
                n = None
            else:
                n = sum(1 for p in params if p.kind == p.POSITIONAL_OR_KEYWORD)
        op = OpDef(name, fn, dict(attrs or {}), n, cost, differentiable, nondiff_reason,
                   has_subgraph, (fn.__doc__ or "").strip(), traits)
        _REGISTRY[name] = op
        return op
    return deco


def get_op(name: str) -> OpDef:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise IRError(f"unknown op {name!r}") from None


def all_ops() -> dict[str, OpDef]:
    return dict(_REGISTRY)


def _check_trait(trait: str) -> None:
    if trait not in TRAITS:
        raise ValueError(f"unknown trait {trait!r}; the traits are {sorted(TRAITS)}")


def ops_with(*traits: str) -> frozenset[str]:
    """The names of the registered ops that have every one of ``traits``."""
    for t in traits:
        _check_trait(t)
    want = set(traits)
    return frozenset(n for n, op in _REGISTRY.items() if want <= (op.traits or frozenset()))


# ---------------------------------------------------------------- attribute checks
_I64 = (-(1 << 63), (1 << 63) - 1)


def a_int(v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError("expected an int")
    return _in_int64(int(v))


def _in_int64(v: int) -> int:
    """Integer attributes are int64 in the text format and in native code."""
    if not _I64[0] <= v <= _I64[1]:
        raise ValueError(f"integer {v} is outside the int64 range")
    return v


def a_float(v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError("expected a number")
    return float(v)


def a_bool(v) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError("expected a bool")
    return bool(v)


def a_str(v) -> str:
    if not isinstance(v, str):
        raise TypeError("expected a string")
    return v


def a_ints(v) -> tuple[int, ...]:
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return (int(v),)
    return tuple(a_int(x) for x in v)


def a_optional(check):
    def f(v):
        return None if v is None else check(v)
    return f


def a_choice(*choices):
    def f(v):
        if v not in choices:
            raise ValueError(f"expected one of {choices}")
        return v
    return f


def a_dtype(v) -> str:
    return canonical_dtype(v)


def a_any(v):
    """Any printable value: numbers, strings, bools, None and nested tuples of them."""
    if isinstance(v, (list, tuple)):
        return tuple(a_any(x) for x in v)
    if isinstance(v, int) and not isinstance(v, bool):
        return _in_int64(v)
    if v is None or isinstance(v, (bool, float, str)):
        return v
    if isinstance(v, np.generic):
        return a_any(v.item())
    raise TypeError(f"unprintable attribute value of type {type(v).__name__}")


def a_array(v) -> np.ndarray:
    arr = np.array(v)
    arr.setflags(write=False)
    return arr


class GraphBase:
    """The base class of ``ir.Graph``: how the attribute check below and the printer recognize
    a graph attribute (a subgraph) without importing ir.py, which builds on this module."""
    __slots__ = ()


def a_graph(v):
    if not isinstance(v, GraphBase):
        raise TypeError("expected a Graph")
    return v
