"""2-D max pooling forward on the LLVM backend as running maxima of output rows
(backends/llvm/ops_pool.py, ``_row_pool``), held to the reference backend bit for bit:
overlapping windows (3x3 stride 2, ResNet's stem), padding on some sides only, dilation,
ceil_mode's partial last windows, strides that differ per axis, windows wholly outside the
interior on narrow inputs; inputs with NaNs, infinities and signed zeros (the first maximum
in row-major window order wins, a NaN over any number), both float types, 1 and 2 threads."""
from __future__ import annotations

import numpy as np
import pytest

import irgraph.backends as backends
from irgraph import Graph, TensorType


def _pool(xs, dtype, **attrs):
    g = Graph("pool")
    x = g.add_input("x", TensorType(xs, dtype))
    g.set_outputs(g.add_node("max_pool", [x], attrs))
    return g


# (x shape, kernel, stride, padding, dilation, ceil_mode)
CASES = [
    ((2, 3, 16, 16), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), False),   # ResNet's stem pool
    ((1, 2, 9, 11), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), True),     # partial last windows
    ((3, 1, 7, 13), (2, 3), (1, 2), (0, 1, 1, 0), (1, 1), False),    # one-sided padding
    ((1, 2, 12, 12), (3, 2), (2, 3), (2, 1, 0, 1), (2, 3), False),   # dilation
    ((2, 2, 5, 3), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), False),     # no interior column
    ((1, 1, 4, 40), (1, 5), (1, 1), (0, 0, 0, 0), (1, 1), False),    # no padding at all
]


def _special(rng, xs, dtype):
    x = rng.standard_normal(xs).astype(dtype)
    flat = x.reshape(-1)
    n = flat.size
    picks = rng.permutation(n)
    flat[picks[: n // 20]] = np.nan
    flat[picks[n // 20: n // 10]] = np.inf
    flat[picks[n // 10: n // 7]] = -np.inf
    flat[picks[n // 7: n // 5]] = 0.0
    flat[picks[n // 5: n // 4]] = -0.0
    return x


@pytest.mark.parametrize("dtype,threads", [("float32", 2), ("float64", 1)])
@pytest.mark.parametrize("xs,kernel,stride,padding,dilation,ceil", CASES)
def test_row_max_pool_matches_reference(xs, kernel, stride, padding, dilation, ceil, dtype,
                                        threads):
    g = _pool(xs, dtype, kernel_size=kernel, stride=stride, padding=padding,
              dilation=dilation, ceil_mode=ceil)
    rng = np.random.default_rng(sum(xs) + sum(kernel))
    exe = backends.compile(g, "llvm", threads=threads, cache=False)
    ref = backends.compile(g, "reference")
    for x in (rng.standard_normal(xs).astype(dtype), _special(rng, xs, dtype)):
        want, got = ref(x)[0], exe(x)[0]
        np.testing.assert_array_equal(got, want)                      # NaNs where they are
        assert np.array_equal(np.signbit(got), np.signbit(want))      # and which zero
