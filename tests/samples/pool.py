"""Sample inputs of the pooling ops (irgraph/ops/pool.py): ceil-mode edge windows, padding,
dilation, stride > window, 1-3 spatial axes, adaptive regions that overlap."""
from __future__ import annotations

import numpy as np

from irgraph.ops.conv_geometry import out_shape

from . import Case, rand

_MAX = [
    ((2, 2, 7), dict(kernel_size=(3,), stride=(2,), padding=(1, 1), dilation=(1,),
                     ceil_mode=True)),
    ((1, 2, 5, 7), dict(kernel_size=(2, 3), stride=(3, 2), padding=(1, 1, 0, 0),
                        dilation=(1, 2), ceil_mode=True)),
    ((1, 1, 3, 4, 5), dict(kernel_size=(2, 2, 2), stride=(1, 2, 2), padding=(0, 0, 1, 1, 0, 0),
                           dilation=(1, 1, 1), ceil_mode=False)),
]
_AVG = [
    ((2, 2, 7), dict(kernel_size=(3,), stride=(2,), padding=(1, 1), ceil_mode=True,
                     count_include_pad=True)),
    ((1, 2, 5, 7), dict(kernel_size=(2, 3), stride=(3, 2), padding=(1, 1, 1, 1),
                        ceil_mode=True, count_include_pad=False)),
    ((1, 2, 4, 5), dict(kernel_size=(3, 2), stride=(1, 2), padding=(0, 0, 1, 1),
                        ceil_mode=False, divisor_override=5)),
]
_ADAPTIVE = [((2, 2, 7), (3,)), ((1, 2, 5, 7), (2, 4)), ((1, 1, 3, 5, 4), (2, 3, 3))]


def _perm(*shape, seed):
    """Distinct values (no ties: finite differences stay away from kinks)."""
    n = int(np.prod(shape))
    return (np.random.default_rng(seed).permutation(n).reshape(shape) / n - 0.5).astype(
        np.float32)


def _max_out(xs, a):
    return xs[:2] + out_shape(xs[2:], a["kernel_size"], a["stride"], a["padding"],
                              a["dilation"], a["ceil_mode"])


def _avg_out(xs, a):
    return xs[:2] + out_shape(xs[2:], a["kernel_size"], a["stride"], a["padding"],
                              (1,) * len(xs[2:]), a["ceil_mode"])


SAMPLES = {
    "max_pool": [Case([_perm(*xs, seed=i)], a, note="fig. 9.10 ceil mode" if a["ceil_mode"]
                      else "") for i, (xs, a) in enumerate(_MAX)],
    "max_pool_grad": [Case([_perm(*xs, seed=i), rand(*_max_out(xs, a), seed=9)], a)
                      for i, (xs, a) in enumerate(_MAX)],
    "max_pool_select": [Case([_perm(*xs, seed=i), rand(*xs, seed=8)], a)
                        for i, (xs, a) in enumerate(_MAX)],
    "avg_pool": [Case([rand(*xs, seed=i)], a) for i, (xs, a) in enumerate(_AVG)],
    "avg_pool_grad": [Case([rand(*_avg_out(xs, a), seed=i)], dict(a, input_size=xs[2:]))
                      for i, (xs, a) in enumerate(_AVG)],
    "adaptive_max_pool": [Case([_perm(*xs, seed=i)], {"output_size": o})
                          for i, (xs, o) in enumerate(_ADAPTIVE)],
    "adaptive_max_pool_grad": [Case([_perm(*xs, seed=i), rand(*(xs[:2] + o), seed=7)],
                                    {"output_size": o}) for i, (xs, o) in enumerate(_ADAPTIVE)],
    "adaptive_max_pool_select": [Case([_perm(*xs, seed=i), rand(*xs, seed=6)],
                                      {"output_size": o})
                                 for i, (xs, o) in enumerate(_ADAPTIVE)],
    "adaptive_avg_pool": [Case([rand(*xs, seed=i)], {"output_size": o}, note="fig. 9.11")
                          for i, (xs, o) in enumerate(_ADAPTIVE)],
    "adaptive_avg_pool_grad": [Case([rand(*(xs[:2] + o), seed=i)],
                                    {"output_size": o, "input_size": xs[2:]})
                               for i, (xs, o) in enumerate(_ADAPTIVE)],
}
