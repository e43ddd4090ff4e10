"""Counter-based random numbers: Philox-4x32-10 (Salmon, Moraes, Dror, Shaw 2011).

A draw is a pure function of a key, a counter and the element's position, so every backend
and every thread count gives the same bits (docs/random.md):

    bits = random_bits(key, counter) {shape, stream}           -> i32[shape]
    u    = random_uniform(key, counter) {shape, stream, dtype}  -> [0, 1)
    z    = random_normal(key, counter) {shape, stream, dtype}   -> N(0, 1) (Box-Muller)

``key`` and ``counter`` are rank-0 int64 tensors (their two's-complement bits: a 64-bit
key, a 64-bit counter). Element ``i`` of the flattened output is word ``i % 4`` of the Philox
block computed from

    counter words (c0, c1, c2, c3) = (i // 4, stream, lo32(counter), hi32(counter))
    key words     (k0, k1)         = (lo32(key), hi32(key))

``stream`` (an attribute, < 2**32) tells apart the draws of one graph that share a key and
counter; a training step advances ``counter`` by one per call. Words to numbers:

* uniform float32: ``(w >> 8) * 2**-24`` (24 bits, [0, 1)); float64: ``w * 2**-32``.
* normal: words (w0, w1) of a block give z0, z1 and (w2, w3) give z2, z3 by Box-Muller,
  ``u1 = ((w_even >> 8) + 1) * 2**-24`` (in (0, 1]), ``u2 = (w_odd >> 8) * 2**-24``,
  ``r = sqrt(-2 log u1)``, ``z_even = r cos(2 pi u2)``, ``z_odd = r sin(2 pi u2)``, computed
  in float64 and rounded to the output dtype.

The module's ``philox4x32`` (numpy uint64 arithmetic) is the one definition of the rounds;
the backends write the same rounds over 32-bit words.
"""
from __future__ import annotations

import numpy as np

from ..registry import Attr, Cost, a_choice, a_int, a_ints, register_op
from ..types import TensorType

# Philox-4x32 constants (Random123): multipliers and Weyl key increments
PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
ROUNDS = 10
MASK32 = 0xFFFFFFFF
MAX_BLOCKS = 1 << 32                 # c0 = block index is one 32-bit word


def philox4x32(c0, c1, c2, c3, k0, k1, rounds: int = ROUNDS):
    """Philox-4x32-``rounds`` of counter words ``c*`` under key words ``k*`` (integers or
    integer arrays, each < 2**32); returns the four output words as uint64 arrays."""
    c0, c1, c2, c3, k0, k1 = (np.asarray(v, np.uint64) & np.uint64(MASK32)
                              for v in (c0, c1, c2, c3, k0, k1))
    m0, m1, mask = np.uint64(PHILOX_M0), np.uint64(PHILOX_M1), np.uint64(MASK32)
    w0, w1, s32 = np.uint64(PHILOX_W0), np.uint64(PHILOX_W1), np.uint64(32)
    for r in range(rounds):
        if r:
            k0 = (k0 + w0) & mask
            k1 = (k1 + w1) & mask
        p0 = m0 * c0                 # < 2**64: exact in uint64
        p1 = m1 * c2
        c0, c1, c2, c3 = ((p1 >> s32) ^ c1 ^ k0, p1 & mask, (p0 >> s32) ^ c3 ^ k1, p0 & mask)
    return c0, c1, c2, c3


def _words(key, counter, size: int, stream: int) -> np.ndarray:
    """The first ``size`` output words (uint64 holding 32 bits) of the draw, in element order."""
    k = int(np.asarray(key).astype(np.int64)) & ((1 << 64) - 1)
    c = int(np.asarray(counter).astype(np.int64)) & ((1 << 64) - 1)
    blocks = -(-size // 4)
    j = np.arange(blocks, dtype=np.uint64)
    out = philox4x32(j, stream, c & MASK32, c >> 32, k & MASK32, k >> 32)
    return np.stack(out, axis=1).reshape(-1)[:size]


def uniform_from_words(w: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "float32":
        return ((w >> np.uint64(8)).astype(np.float32) * np.float32(2.0 ** -24))
    return w.astype(np.float64) * 2.0 ** -32


def normal_from_words(w: np.ndarray, dtype: str) -> np.ndarray:
    """Box-Muller over word pairs (w[2m], w[2m+1]); an odd tail uses the next word of its
    block, as the backends do (``w`` holds whole blocks)."""
    w = w.reshape(-1, 2)
    u1 = ((w[:, 0] >> np.uint64(8)).astype(np.float64) + 1.0) * 2.0 ** -24
    u2 = (w[:, 1] >> np.uint64(8)).astype(np.float64) * 2.0 ** -24
    r = np.sqrt(-2.0 * np.log(u1))
    theta = 2.0 * np.pi * u2
    return np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1).reshape(-1).astype(dtype)


_NONDIFF = dict(differentiable=False,
                nondiff_reason="a random draw: its inputs are an integer key and counter, "
                               "so there is nothing to differentiate")


def _attrs(with_dtype: bool) -> dict:
    a = {"shape": Attr(a_ints, doc="the output shape"),
         "stream": Attr(_a_stream, 0, "tells apart draws sharing a key and counter")}
    if with_dtype:
        a["dtype"] = Attr(a_choice("float32", "float64"), "float32")
    return a


def _a_stream(v) -> int:
    v = a_int(v)
    if not 0 <= v <= MASK32:
        raise ValueError(f"stream {v} is outside [0, 2**32)")
    return v


def _cost(words_per_element: int):
    def cost(i, o, a):
        n = o[0].size
        return Cost(n * 40 // 4 * words_per_element, o[0].nbytes + 16)
    return cost


def _rule(out_dtype):
    def rule(key, counter, *, shape, stream, dtype=None):
        for name, t in (("key", key), ("counter", counter)):
            if t.shape != () or t.dtype != "int64":
                raise ValueError(f"the {name} must be a rank-0 int64 tensor, got {t}")
        t = TensorType(shape, out_dtype or dtype)
        if -(-t.size // 4) > MAX_BLOCKS:
            raise ValueError(f"{t} has more than 2**34 elements (the block index is one "
                             f"32-bit word)")
        return t
    return rule


@register_op("random_bits", traits={"random"}, attrs=_attrs(False), cost=_cost(1), **_NONDIFF)
def random_bits(key, counter, *, shape, stream):
    """32 random bits per element (int32, two's complement of the Philox word)."""
    size = int(np.prod(shape, dtype=np.int64))
    return _words(key, counter, size, stream).astype(np.uint32).view(np.int32).reshape(shape)


random_bits.type_rule(_rule("int32"))


@register_op("random_uniform", traits={"random"}, attrs=_attrs(True), cost=_cost(2), **_NONDIFF)
def random_uniform(key, counter, *, shape, stream, dtype):
    """Uniform on [0, 1): float32 from the word's top 24 bits, float64 from all 32."""
    size = int(np.prod(shape, dtype=np.int64))
    return uniform_from_words(_words(key, counter, size, stream), dtype).reshape(shape)


random_uniform.type_rule(_rule(None))


@register_op("random_normal", traits={"random"}, attrs=_attrs(True), cost=_cost(12), **_NONDIFF)
def random_normal(key, counter, *, shape, stream, dtype):
    """Standard normal by Box-Muller over the words' pairs (float64 arithmetic)."""
    size = int(np.prod(shape, dtype=np.int64))
    w = _words(key, counter, -(-size // 4) * 4, stream)
    return normal_from_words(w, dtype)[:size].reshape(shape)


random_normal.type_rule(_rule(None))
