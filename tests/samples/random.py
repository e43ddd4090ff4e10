"""Sample inputs of the Philox random-number ops (irgraph/ops/random.py): rank-0 int64 key
and counter; shapes that fill whole Philox blocks of four words and shapes that end inside
one, keys and counters with high bits set (negative int64)."""
from __future__ import annotations

import numpy as np

from . import Case


def _kc(key: int, counter: int) -> list[np.ndarray]:
    return [np.asarray(key, np.int64), np.asarray(counter, np.int64)]


def _cases(with_dtype: bool) -> list[Case]:
    out = [
        Case(_kc(0, 0), {"shape": (8,)}, nondiff=(0, 1),
             note="key 0, counter 0: the first block is the Random123 known answer"),
        Case(_kc(1234, 7), {"shape": (3, 5), "stream": 2}, nondiff=(0, 1),
             note="15 elements: the last block is cut short"),
        Case(_kc(-1, -5), {"shape": (2, 1, 3), "stream": 2 ** 32 - 1}, nondiff=(0, 1),
             note="all key and counter words with high bits set"),
        Case(_kc(42, 0), {"shape": ()}, nondiff=(0, 1), note="a scalar draw"),
    ]
    if with_dtype:
        out.append(Case(_kc(99, 3), {"shape": (4, 3), "dtype": "float64"}, nondiff=(0, 1)))
    return out


SAMPLES = {
    "random_bits": _cases(False),
    "random_uniform": _cases(True),
    "random_normal": _cases(True),
}
