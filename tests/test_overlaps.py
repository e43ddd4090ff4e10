"""The vectorised byte-overlap test the executables use on every call (``backends.base.
overlaps``) answers what ``np.may_share_memory`` answers for every pair, and an LLVM
executable that reuses the data addresses of arguments passed again still reads new data."""
import numpy as np
from hypothesis import given, strategies as st

import irgraph.backends as backends
from irgraph import Graph, TensorType
from irgraph.backends.base import overlaps


def _views(buf: np.ndarray, picks) -> list[np.ndarray]:
    out = []
    for start, stop, step, kind in picks:
        v = buf[start:stop:step]
        if kind == 1 and v.size % 2 == 0 and v.size:
            v = v.reshape(2, -1)
        elif kind == 2 and v.ndim == 1 and v.size >= 4:
            v = v.reshape(-1, 2)[:, 1] if v.size % 2 == 0 else v[::2]
        out.append(v)
    return out


@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40), st.integers(1, 3),
                          st.integers(0, 2)), min_size=1, max_size=8))
def test_overlaps_matches_may_share_memory(picks):
    buf = np.arange(40, dtype=np.float32)
    other = np.zeros(7)
    xs = _views(buf, picks) + [other, np.float32(1.0), other[:0]]
    want = np.array([[bool(np.may_share_memory(a, b)) for b in xs] for a in xs])
    assert (overlaps(xs) == want).all()
    assert (overlaps(xs[:2], xs) == want[:2]).all()


def test_arguments_passed_again_or_replaced_read_their_data():
    g = Graph("axpy")
    a = g.add_input("a", TensorType((64,)))
    b = g.add_input("b", TensorType((64,)))
    (bb,) = g.add_node("mul", [b, b], {})
    g.set_outputs(g.add_node("add", [a, bb], {}))
    exe = backends.compile(g, "llvm", threads=1)
    r = np.random.default_rng(0)
    x, y = r.standard_normal(64).astype(np.float32), r.standard_normal(64).astype(np.float32)
    for _ in range(3):                         # the same objects, changed in place
        (got,) = exe(x, y)
        np.testing.assert_allclose(got, x + y * y, rtol=1e-6)
        x += 1.0
        y *= 0.5
    x2, y2 = x.copy() * 3, y.copy()            # new objects
    (got,) = exe(x2, y2)
    np.testing.assert_allclose(got, x2 + y2 * y2, rtol=1e-6)
    (got,) = exe(x, y2)                        # one old, one new
    np.testing.assert_allclose(got, x + y2 * y2, rtol=1e-6)
