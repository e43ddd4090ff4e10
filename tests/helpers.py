"""Helpers the test modules share (one place: test modules never import each other).

* ``guarded``/``run_guarded``: run a native executable on buffers fenced by guard regions.
* ``run_with_plan``: the reference interpreter with every value stored where a memory plan
  puts it.
* ``elman_graph``/``numpy_elman``/``elman_args``: the Elman-network scan of fig. 10.2, its
  plain numpy loop and arguments for it.
* ``build``: a graph of one node of an op over a sample case's inputs.
"""
from __future__ import annotations

import numpy as np

from irgraph import Graph, TensorType
from irgraph.interpreter import run_node
from tests.samples import Case
from tests.samples.recurrence import elman

F64 = "float64"


# ---------------------------------------------------------------- guarded native runs
GUARD = 64                       # elements of guard region on each side


def guarded(a: np.ndarray, fill) -> tuple[np.ndarray, np.ndarray]:
    """A copy of ``a`` living inside a larger buffer whose ends hold ``fill``."""
    big = np.full(a.size + 2 * GUARD, fill, a.dtype)
    view = big[GUARD:GUARD + a.size].reshape(a.shape)
    view[...] = a
    return big, view


def run_guarded(exe, args):
    """Run with NaN-guarded inputs and sentinel-guarded outputs; assert no guard changed."""
    gin = [guarded(a, np.nan if a.dtype.kind == "f" else 0) for a in args]
    outs = []
    for v in exe.graph.outputs:
        t = v.type
        outs.append(guarded(np.zeros(t.shape, t.np_dtype), 77))
    res = exe.call_into([o[1] for o in outs], *[v for _, v in gin])
    for big, _ in outs:
        assert np.all(big[:GUARD] == 77) and np.all(big[-GUARD:] == 77), "wrote outside"
    for (big, view), a in zip(gin, args):
        np.testing.assert_array_equal(view, a)          # inputs never written
    return res


# ---------------------------------------------------------------- memory plans
def run_with_plan(g: Graph, plan, args):
    """A reference interpreter whose values live where ``plan`` puts them (one arena, the
    argument buffers); returns (outputs, argument buffers after the run)."""
    arena = np.zeros(max(plan.arena_bytes, 1), np.uint8)
    bufs = [np.array(a, copy=True) for a in args]

    def place(v):
        b = plan.buffers[v.name]
        raw = (bufs[b.arg].reshape(-1).view(np.uint8) if b.kind == "argument"
               else arena[b.offset:])
        return raw[:v.type.nbytes].view(v.type.np_dtype).reshape(v.shape)

    where = {v: (lambda a=a: a) for v, a in zip(g.arguments, bufs)}
    for node in g.nodes:
        with np.errstate(all="ignore"):
            outs = run_node(node, [where[v]().copy() for v in node.inputs])
        for v, a in zip(node.outputs, outs):
            place(v)[...] = a
            where[v] = (lambda v=v: place(v))
    return [where[v]().copy() for v in g.outputs], bufs


# ---------------------------------------------------------------- the Elman scan
def elman_graph(steps=4, b=2, h=3, d=2, cell=None, **attrs) -> Graph:
    """A scan over ``steps`` of ``cell`` (default: ``elman``): carry h0 (b, h), sequence xs
    (steps, b, d), an optional bool mask (``masked=True``), parameters W (h, h) and U (d, h)."""
    g = Graph("rnn")
    h0 = g.add_input("h0", TensorType((b, h), F64))
    xs = g.add_input("xs", TensorType((steps, b, d), F64))
    extra = [g.add_input("mask", TensorType((steps, b), "bool"))] if attrs.get("masked") else []
    w = g.add_param("W", TensorType((h, h), F64))
    u = g.add_param("U", TensorType((d, h), F64))
    outs = g.add_node("scan", [h0, xs, *extra, w, u],
                      dict(body=(cell or elman)(b, h, d), num_carry=1, num_seq=1, **attrs))
    g.set_outputs(outs)
    return g


def numpy_elman(h0, xs, w, u, reverse=False, mask=None):
    h, ys = h0, np.zeros(xs.shape[:2] + (h0.shape[1],))
    for t in (reversed(range(len(xs))) if reverse else range(len(xs))):
        new = np.tanh(h @ w + xs[t] @ u)
        keep = np.ones(len(h0), bool) if mask is None else mask[t]
        h = np.where(keep[:, None], new, h)
        ys[t] = np.where(keep[:, None], new, 0.0)
    return h, ys


def elman_args(seed=0, steps=4, masked=False):
    r = np.random.default_rng(seed)
    a = [r.standard_normal((2, 3)), r.standard_normal((steps, 2, 2))]
    if masked:
        a.append(r.random((steps, 2)) > 0.4)
    return a + [r.standard_normal((3, 3)), r.standard_normal((2, 3))]


# ---------------------------------------------------------------- one-node graphs
def build(op: str, case: Case) -> Graph:
    """A graph holding one node of ``op`` over the case's inputs."""
    g = Graph(f"one_{op}")
    xs = [g.add_input(f"x{i}", TensorType.of(a)) for i, a in enumerate(case.inputs)]
    outs = g.add_node(op, xs, case.attrs)
    g.set_outputs(outs)
    return g


# ---------------------------------------------------------------- convolutions on LLVM
def assert_conv_like_reference(g: Graph, xs, ws, dtype: str, threads: int) -> None:
    """``g(x, w)`` on LLVM (uncached, ``threads``) equals the reference backend's within a
    bound that scales with the sum of the products' magnitudes (LLVM sums in another
    order): 1e-6 of it in float32, 1e-14 in float64; x and w drawn from a seed of the shapes."""
    import irgraph.backends as backends
    rng = np.random.default_rng(sum(xs) + sum(ws))
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal(ws).astype(dtype)
    want = backends.compile(g, "reference")(x, w)[0]
    got = backends.compile(g, "llvm", threads=threads, cache=False)(x, w)[0]
    scale = backends.compile(g, "reference")(np.abs(x), np.abs(w))[0]
    tol = 1e-6 if dtype == "float32" else 1e-14
    assert np.all(np.abs(got - want) <= tol * scale + tol), np.abs(got - want).max()
