"""Samples of the core ops (irgraph/ops/core.py): irregular shapes, broadcasting, keepdims,
negative axes, every pad mode, ignore_index, integer and boolean dtypes.

Float inputs keep away from kinks (relu/abs at 0, ties of max/min) so that finite
differences are valid wherever an op is differentiable.
"""
from __future__ import annotations

import numpy as np

from . import Case, positive, rand


def _away_from_zero(*shape, seed=0, dtype=np.float32):
    x = rand(*shape, seed=seed, dtype=dtype)
    return (np.sign(x) * (np.abs(x) + 0.1)).astype(dtype)


def _distinct(*shape, seed=0, dtype=np.float32):
    """Values with no ties (max/min/argmax have a unique winner)."""
    n = int(np.prod(shape))
    vals = np.random.default_rng(seed).permutation(n).astype(dtype) / n - 0.5
    return vals.reshape(shape)


def _ints(*shape, seed=0, low=-5, high=6, dtype=np.int64):
    return np.random.default_rng(seed).integers(low, high, shape).astype(dtype)


def _bools(*shape, seed=0):
    return np.random.default_rng(seed).random(shape) < 0.5


def _unary_cases(kind: str) -> list[Case]:
    make = {"any": rand, "pos": positive, "kink": _away_from_zero}[kind]
    cases = [Case([make(3, 5, seed=1)]), Case([make(seed=2)], note="rank 0"),
             Case([make(2, 1, 3, seed=3, dtype=np.float64)], note="float64")]
    return cases


_INT_UNARY = [Case([_ints(4, 3, seed=4)], note="int64"),
              Case([_ints(5, seed=5, dtype=np.int32)], note="int32")]

SAMPLES: dict[str, list[Case]] = {
    # ------------------------------------------------------------ sources
    "constant": [Case([], {"value": np.arange(6, dtype=np.float32).reshape(2, 3)}),
                 Case([], {"value": np.array(3, np.int64)}, note="rank 0 int"),
                 Case([], {"value": np.array([True, False])}, note="bool"),
                 Case([], {"value": np.zeros((0, 2), np.float64)}, note="empty")],
    "full": [Case([], {"shape": (2, 3), "value": 1.5}),
             Case([], {"shape": (), "value": -np.inf}, note="scalar -inf"),
             Case([], {"shape": (4,), "value": 7.0, "dtype": "int32"}),
             Case([], {"shape": (1, 2), "value": 1e-7, "dtype": "float64"})],
    "iota": [Case([], {"shape": (3, 4), "axis": 1}),
             Case([], {"shape": (2, 3, 2), "axis": 0, "dtype": "float32"})],
    # ------------------------------------------------------------ unary
    "neg": _unary_cases("any") + _INT_UNARY,
    "exp": _unary_cases("any"),
    "log": _unary_cases("pos"),
    "sqrt": _unary_cases("pos"),
    "rsqrt": _unary_cases("pos"),
    "tanh": _unary_cases("any"),
    "sigmoid": _unary_cases("any") + [
        Case([np.array([-100.0, -30.0, 0.0, 30.0, 100.0], np.float32)], note="both tails")],
    "erf": _unary_cases("any") + [
        Case([np.array([-4.5, -0.0, 1e-30, 0.5, 0.9, 3.0, 5.0], np.float32)],
             note="tails, -0.0, both sides of 0.875")],
    "sin": _unary_cases("any") + [
        Case([np.array([0.0, -0.0, 3.14159265, 1e4, -7.5], np.float32)], note="zeros, large")],
    "cos": _unary_cases("any") + [
        Case([np.array([0.0, 1.5707964, -1e4, 7.5], np.float32)], note="zero, large")],
    "relu": _unary_cases("kink") + _INT_UNARY,
    "abs": _unary_cases("kink") + _INT_UNARY,
    "sign": _unary_cases("kink") + _INT_UNARY + [
        Case([np.array([-2.0, 0.0, 3.0], np.float32)], note="sign(0) = 0")],
    "square": _unary_cases("any") + _INT_UNARY,
    "cast": [Case([rand(3, 4)], {"dtype": "float64"}),
             Case([rand(5, dtype=np.float64)], {"dtype": "float32"}),
             Case([np.array([-1.7, -0.2, 0.0, 2.9], np.float32)], {"dtype": "int32"},
                  note="float to int truncates toward zero"),
             Case([_ints(2, 3, seed=6)], {"dtype": "float32"}),
             Case([_bools(4, seed=7)], {"dtype": "int64"}),
             Case([np.array([0.0, 2.0, -1.0], np.float32)], {"dtype": "bool"})],
}


def _binary_cases(kind: str) -> list[Case]:
    a = {"any": rand, "pos": positive}[kind]
    return [Case([a(3, 4, seed=10), a(3, 4, seed=11)], note="same shape"),
            Case([a(2, 1, 4, seed=12), a(3, 1, seed=13)], note="broadcast both ways"),
            Case([a(seed=14), a(2, 3, seed=15)], note="scalar on the left"),
            Case([a(4, 5, seed=16, dtype=np.float64), a(5, seed=17, dtype=np.float64)],
                 note="float64, trailing broadcast")]


def _fmod_pair(a_shape, b_shape, seed, dtype=np.float32):
    """``a = +-(n + f)`` (integer ``n`` in [0, 4], ``f`` in [0.1, 0.4]) and ``b = +-2**j``
    (``j`` in -1, 0, 1): every quotient, broadcast any way, keeps at least 0.05 away from the
    integers where fmod jumps (finite differences stay valid)."""
    sign_a = np.where(_bools(*a_shape, seed=seed), 1.0, -1.0)
    a = sign_a * (_ints(*a_shape, seed=seed, low=0, high=5)
                  + rand(*a_shape, seed=seed, low=0.1, high=0.4, dtype=np.float64))
    sign_b = np.where(_bools(*b_shape, seed=seed + 1), 1.0, -1.0)
    b = sign_b * 2.0 ** _ints(*b_shape, seed=seed + 1, low=-1, high=2)
    return a.astype(dtype), b.astype(dtype)


def _distinct_pair(*shape, seed):
    x = _distinct(*shape, seed=seed)
    return x, (x + np.where(_bools(*shape, seed=seed + 1), 0.05, -0.05)).astype(np.float32)


SAMPLES.update({
    "add": _binary_cases("any") + [Case([_ints(3, seed=18), _ints(2, 3, seed=19)], nondiff=(0, 1))],
    "sub": _binary_cases("any") + [Case([_ints(3, seed=20), _ints(2, 3, seed=21)], nondiff=(0, 1))],
    "mul": _binary_cases("any") + [
        Case([_ints(3, seed=22, dtype=np.int32), _ints(2, 3, seed=23, dtype=np.int32)],
             nondiff=(0, 1))],
    "div": _binary_cases("pos") + [
        Case([rand(3, 4, seed=24), positive(4, seed=25)], note="signed numerator"),
        Case([np.array([7, -7, 7, -7], np.int64), np.array([2, 2, -2, -2], np.int64)],
             nondiff=(0, 1), note="integer division rounds toward -inf, as numpy's //")],
    "pow": [Case([positive(3, 4, seed=26), rand(3, 4, seed=27)]),
            Case([positive(2, 3, seed=28), np.array(2.0, np.float32)], note="square"),
            Case([positive(4, seed=29, dtype=np.float64), rand(3, 1, seed=30, dtype=np.float64)]),
            Case([_ints(4, seed=31, low=0), np.array([0, 1, 2, 3], np.int64)], nondiff=(0, 1))],
    "fmod": [Case(list(_fmod_pair((3, 4), (3, 4), seed=90)), note="mixed signs"),
             Case(list(_fmod_pair((2, 1, 4), (3, 1), seed=92)), note="broadcast both ways"),
             Case(list(_fmod_pair((), (2, 3), seed=94)), note="scalar on the left"),
             Case(list(_fmod_pair((4, 5), (5,), seed=96, dtype=np.float64)), note="float64"),
             Case([np.array([1.0, -1.0, 5.0, -0.0, 0.0, np.inf, 3.0, 3.0, np.nan, 1e30, 1e-30],
                            np.float32),
                   np.array([0.1, 0.1, -2.0, 3.0, -3.0, 2.0, 0.0, np.inf, 1.0, 7.0, -3e-31],
                            np.float32)],
                  nondiff=(0, 1), note="1 % 0.1 is 0.0999..., signed zeros, inf, 0, NaN, "
                                       "huge and tiny")],
    "maximum": [Case(list(_distinct_pair(3, 4, seed=32))),
                Case([_distinct(2, 1, seed=34), _distinct(3, seed=35) + 0.01]),
                Case([_ints(5, seed=36), _ints(5, seed=37)], nondiff=(0, 1))],
    "minimum": [Case(list(_distinct_pair(3, 4, seed=38))),
                Case([_distinct(2, 1, seed=40), _distinct(3, seed=41) + 0.01]),
                Case([_ints(5, seed=42), _ints(5, seed=43)], nondiff=(0, 1))],
})


def _compare_cases(seed: int) -> list[Case]:
    x = _ints(3, 4, seed=seed, low=-2, high=3).astype(np.float32)
    return [Case([x, x[::-1].copy()], note="with ties"),
            Case([x, np.array(0.0, np.float32)], note="against a scalar"),
            Case([_ints(2, 1, seed=seed + 1), _ints(3, seed=seed + 2)], note="int64 broadcast"),
            Case([_bools(4, seed=seed + 3), _bools(4, seed=seed + 4)], note="bool")]


for _i, _op in enumerate(("eq", "ne", "lt", "le", "gt", "ge")):
    SAMPLES[_op] = _compare_cases(100 + 10 * _i)

SAMPLES.update({
    "logical_and": [Case([_bools(3, 4, seed=50), _bools(3, 4, seed=51)]),
                    Case([_bools(2, 1, seed=52), _bools(3, seed=53)], note="broadcast")],
    "logical_or": [Case([_bools(3, 4, seed=54), _bools(3, 4, seed=55)]),
                   Case([_bools(1, 3, seed=56), _bools(2, 1, seed=57)], note="broadcast")],
    "where": [Case([_bools(3, 4, seed=58), rand(3, 4, seed=59), rand(3, 4, seed=60)], nondiff=(0,)),
              Case([_bools(2, 1, 4, seed=61), rand(3, 1, seed=62), rand(4, seed=63)], nondiff=(0,),
                   note="all three broadcast"),
              Case([_bools(4, seed=64), _ints(4, seed=65), _ints(1, seed=66)], nondiff=(0, 1, 2))],
})


def _reduce_cases(make) -> list[Case]:
    return [Case([make(3, 4, 5, seed=70)], note="all axes"),
            Case([make(3, 4, 5, seed=71)], {"axis": (1,)}),
            Case([make(3, 4, 5, seed=72)], {"axis": (-1,), "keepdims": True}, note="negative axis"),
            Case([make(3, 4, 5, seed=73)], {"axis": (0, 2), "keepdims": False}),
            Case([make(2, 3, seed=74, dtype=np.float64)], {"axis": (-2, 1), "keepdims": True}),
            Case([make(seed=75)], note="rank 0")]


SAMPLES.update({
    "sum": _reduce_cases(rand) + [Case([_ints(3, 4, seed=76)], {"axis": (0,)}, nondiff=(0,)),
                                  Case([_ints(3, 4, seed=77, dtype=np.int32)], nondiff=(0,))],
    "mean": _reduce_cases(rand) + [Case([rand(1, 5, seed=78)], {"axis": (0,)})],
    "max": _reduce_cases(_distinct) + [Case([_ints(3, 4, seed=79)], {"axis": (1,)}, nondiff=(0,))],
    "min": _reduce_cases(_distinct) + [Case([_ints(3, 4, seed=80)], {"axis": (1,)}, nondiff=(0,))],
    "argmax": [Case([rand(3, 5, seed=81)], {"axis": 1}),
               Case([rand(2, 3, 4, seed=82)], {"axis": -2, "keepdims": True}),
               Case([np.array([[1, 3, 3], [2, 2, 0]], np.float32)], {"axis": 1},
                    note="ties: the first maximum wins (numpy and PyTorch)"),
               Case([_ints(4, 3, seed=83)], {"axis": 0})],
    "matmul": [Case([rand(3, 4, seed=84), rand(4, 5, seed=85)]),
               Case([rand(2, 3, 4, seed=86), rand(4, 2, seed=87)], note="batch x matrix"),
               Case([rand(2, 1, 3, 4, seed=88), rand(3, 4, 2, seed=89)], note="batch broadcast"),
               Case([rand(4, seed=90), rand(4, 3, seed=91)], note="1-D on the left"),
               Case([rand(2, 3, 4, seed=92), rand(4, seed=93)], note="1-D on the right"),
               Case([rand(5, seed=94, dtype=np.float64), rand(5, seed=95, dtype=np.float64)],
                    note="dot product"),
               Case([_ints(2, 3, seed=96), _ints(3, 2, seed=97)], nondiff=(0, 1))],
    # float32 here; the bf16/f16 variants come from low_precision_samples
    "matmul_f32": [Case([rand(3, 4, seed=98), rand(4, 5, seed=99)]),
                   Case([rand(2, 1, 3, 4, seed=100), rand(3, 4, 2, seed=101)],
                        note="batch broadcast"),
                   Case([rand(4, seed=102), rand(2, 4, 3, seed=103)], note="1-D on the left"),
                   Case([rand(2, 3, 5, seed=104), rand(5, seed=105)], note="1-D on the right")],
})

SAMPLES.update({
    "reshape": [Case([rand(3, 4, seed=120)], {"shape": (2, 6)}),
                Case([rand(2, 3, 4, seed=121)], {"shape": (24,)}),
                Case([rand(1, seed=122)], {"shape": ()}, note="to a scalar"),
                Case([rand(seed=123)], {"shape": (1, 1)}, note="from a scalar"),
                Case([_ints(6, seed=124)], {"shape": (3, 2)})],
    "transpose": [Case([rand(3, 4, seed=125)], {"perm": (1, 0)}),
                  Case([rand(2, 3, 4, seed=126)], {"perm": (2, 0, 1)}),
                  Case([_bools(2, 3, seed=127)], {"perm": (1, 0)})],
    "broadcast_to": [Case([rand(3, 1, seed=128)], {"shape": (2, 3, 4)}),
                     Case([rand(seed=129)], {"shape": (2, 2)}, note="from a scalar"),
                     Case([rand(4, seed=130)], {"shape": (4,)}, note="identity")],
    "concat": [Case([rand(2, 3, seed=131), rand(4, 3, seed=132)], {"axis": 0}),
               Case([rand(2, 1, seed=133), rand(2, 3, seed=134), rand(2, 2, seed=135)],
                    {"axis": -1}, note="three inputs, negative axis"),
               Case([rand(3, seed=136)], {"axis": 0}, note="one input"),
               Case([_ints(2, 2, seed=137), _ints(2, 1, seed=138)], {"axis": 1}, nondiff=(0, 1))],
    "slice": [Case([rand(5, 6, seed=139)], {"starts": (1, 0), "stops": (4, 6), "steps": (1, 2)}),
              Case([rand(5, 6, seed=140)],
                   {"starts": (4, -1), "stops": (-100, 0), "steps": (-1, -2)},
                   note="negative steps (Python slicing: stop below -size means before 0)"),
              Case([rand(4, 3, seed=141)], {"starts": (-3, 0), "stops": (100, 3), "steps": (2, 1)},
                   note="negative start, stop past the end"),
              Case([rand(4, 3, seed=142)], {"starts": (2, 0), "stops": (2, 3), "steps": (1, 1)},
                   note="empty result")],
    "pad": [Case([rand(2, 3, seed=143)], {"pads": (1, 2, 0, 1)}),
            Case([rand(2, 3, seed=144)], {"pads": (0, 0, 2, 1), "value": -1.5}),
            Case([rand(3, 4, seed=145)], {"pads": (1, 2, 3, 1), "mode": "reflect"}),
            Case([rand(3, 4, seed=146)], {"pads": (2, 0, 1, 3), "mode": "replicate"}),
            Case([rand(3, 4, seed=147)], {"pads": (1, 2, 3, 4), "mode": "circular"}),
            Case([_ints(3, seed=148)], {"pads": (1, 1), "value": 7.0}, nondiff=(0,)),
            Case([rand(2, 2, seed=149, dtype=np.float64)], {"pads": (0, 0, 0, 0)},
                 note="no padding")],
    "softmax": [Case([rand(3, 5, seed=150)]),
                Case([rand(2, 3, 4, seed=151)], {"axis": 1}),
                Case([rand(4, 3, seed=152, dtype=np.float64)], {"axis": -2}),
                Case([np.array([[1000.0, 0.0, -1000.0]], np.float32)], note="no overflow")],
    "log_softmax": [Case([rand(3, 5, seed=153)]),
                    Case([rand(2, 3, 4, seed=154)], {"axis": 0}),
                    Case([rand(4, 3, seed=155, dtype=np.float64)], {"axis": -2}),
                    Case([np.array([[1000.0, 0.0, -1000.0]], np.float32)], note="no overflow")],
})


def _logp(*shape, seed):
    x = rand(*shape, seed=seed, low=-2, high=2)
    return (x - np.log(np.exp(x).sum(1, keepdims=True))).astype(np.float32)


SAMPLES.update({
    "nll_loss": [
        Case([_logp(4, 3, seed=160), np.array([0, 2, 1, 2])], nondiff=(1,),
             note="eq. 10.12: mean of -log p(target)"),
        Case([_logp(4, 3, seed=161), np.array([0, 2, -100, 1])], nondiff=(1,),
             note="ignore_index -100 is left out of sum and count"),
        Case([_logp(4, 5, seed=162), np.array([1, 3, 3, 0], np.int32)],
             {"reduction": "sum", "ignore_index": 3}, nondiff=(1,)),
        Case([_logp(2, 3, 4, seed=163), np.array([[0, 1, 2, 1], [2, 2, 0, -100]])],
             {"reduction": "none"}, nondiff=(1,), note="(N, C, d) with spatial targets")],
    "mse_loss": [Case([rand(3, 4, seed=164), rand(3, 4, seed=165)]),
                 Case([rand(5, seed=166), rand(5, seed=167)], {"reduction": "sum"}),
                 Case([rand(2, 3, seed=168, dtype=np.float64), rand(2, 3, seed=169,
                                                                      dtype=np.float64)],
                      {"reduction": "none"})],
})
