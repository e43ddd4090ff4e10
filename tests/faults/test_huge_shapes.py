"""Shape bounds: ``TensorType`` refuses a dimension past 2**48 and a shape spanning more than
2**48 bytes (with Python ints: no int64 product wraps), so the parser, the builder's type rules,
tracing and load all refuse them; big-but-legal shapes never reach native code with a buffer
that cannot exist."""
from __future__ import annotations

import numpy as np
import pytest

import irgraph.backends as backends
import irgraph.frontend as fe
import irgraph
from irgraph.frontend.tracing import TensorSpec
from irgraph import Graph, IRError, ParseError, TensorType, VerificationError

# 4611686018427387905 * 4 = 2**64 + 4: an int64 product of this shape wraps to 4
WRAPS_TO_4 = (4611686018427387905, 4)


# ------------------------------------------------------------------ TensorType
def test_a_shape_whose_int64_product_wraps_is_refused():
    with pytest.raises(ValueError, match=r"dimension 4611686018427387905 \(axis 0\) of shape "
                                         r"\(4611686018427387905, 4\) is over the limit of "
                                         r"2\*\*48 = 281474976710656"):
        TensorType(WRAPS_TO_4)


def test_the_byte_bound_is_exact():
    t = TensorType((2 ** 23, 2 ** 23), "float32")          # 2**46 elements of 4 bytes
    assert (t.size, t.nbytes) == (2 ** 46, 2 ** 48)
    assert type(t.size) is int and type(t.nbytes) is int
    # one more row: 2**23 * (2**23 + 1) * 4 = 2**48 + 2**25 bytes
    with pytest.raises(ValueError, match=r"spans 281475010265088 bytes .* over the limit of "
                                         r"2\*\*48 = 281474976710656 bytes"):
        TensorType((2 ** 23 + 1, 2 ** 23), "float32")
    assert TensorType((2 ** 48,), "bool").size == 2 ** 48
    with pytest.raises(ValueError, match=r"dimension 281474976710657 \(axis 0\)"):
        TensorType((2 ** 48 + 1,), "bool")
    wide = TensorType((2 ** 46,), "int32")                   # 2**48 bytes
    with pytest.raises(ValueError, match=r"spans 562949953421312 bytes"):   # 2**49
        wide.with_dtype("float64")


def test_zero_size_dimensions_stay_legal_and_negative_ones_are_refused():
    assert TensorType((0, 5)).size == 0 and TensorType((3, 0)).nbytes == 0
    assert TensorType((0, 2 ** 48), "bool").shape == (0, 2 ** 48)
    # numpy refuses this one too: its strides would overflow (0 counts as 1)
    with pytest.raises(ValueError, match=r"spans 4835703278458516698824704 bytes "
                                         r"\(.*0 counted as 1\)"):
        TensorType((0, 2 ** 40, 2 ** 40), "float32")         # 2**80 * 4 = 2**82
    with pytest.raises(ValueError, match=r"negative dimension -3 \(axis 1\) in shape \(2, -3\)"):
        TensorType((2, -3))


def test_rank_and_dimension_kinds_are_checked():
    assert TensorType((1,) * 64).rank == 64
    with pytest.raises(ValueError, match=r"rank 65, over the limit of 64"):
        TensorType((1,) * 65)
    with pytest.raises(TypeError, match=r"dimension 1 of shape \(2, 1\.5\) is 1\.5, not an int"):
        TensorType((2, 1.5))
    assert TensorType((np.int64(3), np.int32(2))).shape == (3, 2)


# ------------------------------------------------------------------ every path that builds types
def test_type_rules_refuse_outputs_past_the_bound_naming_the_op():
    g = Graph("g")
    a = g.add_input("a", TensorType((2 ** 24, 1)))
    b = g.add_input("b", TensorType((1, 2 ** 24)))
    # (2**24, 2**24) float32 = 2**50 bytes
    with pytest.raises(IRError, match=r"op 'matmul' cannot take .* spans 1125899906842624 "
                                      r"bytes"):
        g.op("matmul", a, b)
    with pytest.raises(IRError, match=r"op 'full' cannot take .*over the limit"):
        g.op("full", shape=WRAPS_TO_4, value=1.0)


def test_the_verifier_reports_a_type_changed_in_place():
    g = Graph("g")
    x = g.add_input("x", TensorType((2,)))
    y = g.op("neg", x)
    g.set_outputs([y])
    object.__setattr__(x.type, "shape", WRAPS_TO_4)      # what TensorType itself refuses
    with pytest.raises(VerificationError, match=r"value %x has a bad type: dimension "
                                                r"4611686018427387905"):
        irgraph.verify(g)
    x.type = "f32[2]"
    with pytest.raises(VerificationError, match=r"value %x has type 'f32\[2\]', not a "
                                                r"TensorType"):
        irgraph.verify(g)


def test_tracing_refuses_absurd_input_and_intermediate_shapes():
    with pytest.raises(ValueError, match=r"dimension 1125899906842624 \(axis 0\).*over the "
                                         r"limit"):
        fe.trace(lambda x: x + 1.0, TensorSpec((2 ** 50,)))
    with pytest.raises(ValueError, match=r"over the limit"):
        fe.trace(lambda x: x + 1.0, TensorSpec(WRAPS_TO_4))

    def outer(x):
        return x[:, None] * x[None, :]                  # (2**24, 2**24) float32
    with pytest.raises(IRError, match=r"op 'mul' cannot take .*over the limit"):
        fe.trace(outer, TensorSpec((2 ** 24,)))


def test_load_refuses_a_saved_graph_whose_text_declares_a_huge_shape(tmp_path):
    """A graph file from elsewhere may declare any shape: here the type is changed in place
    (what TensorType refuses) before saving, so the file is written by ``save`` itself."""
    g = Graph("m")
    x = g.add_input("x", TensorType((3, 5)))
    g.set_outputs([x])
    object.__setattr__(x.type, "shape", WRAPS_TO_4)
    irgraph.save(tmp_path, g, {})
    with pytest.raises((IRError, ValueError), match=r"line 1, column 13: bad type "
                                                    r"f32\[4611686018427387905, 4\]: "
                                                    r"dimension .*over the limit") as info:
        irgraph.load(tmp_path)
    assert isinstance(info.value, ParseError) or isinstance(info.value.__cause__, ParseError)


# ------------------------------------------------------------------ big but legal
def test_a_big_but_legal_graph_compiles_and_its_call_is_refused_before_native_code():
    """f32[2**40] (4 TiB) is a legal type; no numpy buffer of that size exists here, so a
    call is refused by the argument checks and the native code never runs."""
    t = TensorType((2 ** 40,))
    assert t.nbytes == 2 ** 42
    g = Graph("big")
    x = g.add_input("x", t)
    g.set_outputs([g.op("relu", x)])
    assert irgraph.parse(str(g)) == g
    for backend in ("reference", "llvm"):
        exe = backends.compile(g, backend)
        with pytest.raises(ValueError, match=r"argument %x has shape \(4,\), expected "
                                             r"\(1099511627776,\)"):
            exe(np.zeros(4, np.float32))
        with pytest.raises(TypeError, match=r"argument %x has dtype float64"):
            exe(np.zeros(4))


@pytest.mark.parametrize("attrs", [{"shape": (2 ** 63,)}, {"shape": (-(2 ** 63) - 1,)}])
def test_builders_refuse_integer_attributes_outside_int64(attrs):
    """The text format and native code hold integer attributes as int64: a builder refuses
    what the parser would refuse, naming the op and the attribute."""
    g = Graph("attrs")
    x = g.add_input("x", TensorType((4,)))
    with pytest.raises(IRError, match=r"reshape.*shape=.*outside the int64 range"):
        g.op("reshape", x, **attrs)
