"""The LLVM backend's inline float32 exp, log, tanh and sigmoid (backends/llvm/vmath.py):
accuracy in ulp against numpy in float64 on a dense sweep of float32 bit patterns plus edge
cases, special values exactly as numpy's, no libm calls left in the loops (they vectorize),
and softmax / log_softmax built on them against PyTorch."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import irgraph.backends as backends
from irgraph import Graph, TensorType

F32_MAX = float(np.finfo(np.float32).max)
EDGES = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 1.1754942e-38, 1.1754944e-38,
         -1.1754944e-38, 88.7228317, 88.72283935546875, 89.0, -87.33654, -87.34, -103.27893,
         -103.97208, -104.0, -150.0, 0.625, -0.625, 0.62499994, 9.0, -9.01, 1e-8, -1e-8,
         0.34657359, -0.34657359, 0.70710677, 0.7071068, 1.0, 2.0, 0.5, F32_MAX, -F32_MAX]
SIGMOID = ("sigmoid", lambda v: 1.0 / (1.0 + np.exp(-v)))
OPS = [("exp", np.exp), ("log", np.log), ("tanh", np.tanh), SIGMOID]


def sweep() -> np.ndarray:
    """Every 997th float32 bit pattern (all signs, binades, denormals, NaNs) and the edges."""
    bits = np.arange(0, 2 ** 32, 997, dtype=np.uint64).astype(np.uint32)
    dense = np.linspace(-20, 20, 200_001, dtype=np.float32)     # where the functions bend
    return np.concatenate([bits.view(np.float32), dense, np.array(EDGES, np.float32)])


X32 = sweep()


def unary(op: str, n: int, dtype: str = "float32") -> Graph:
    g = Graph(op)
    x = g.add_input("x", TensorType((n,), dtype))
    g.set_outputs(g.add_node(op, [x], {}))
    return g


def run(op: str, x: np.ndarray, threads: int = 1):
    exe = backends.compile(unary(op, x.size, str(x.dtype)), "llvm", threads=threads)
    return exe, exe(x)[0]


def ulp_error(got: np.ndarray, exact: np.ndarray, dtype) -> np.ndarray:
    """|got - exact| in units of the last place of ``dtype`` at the exact value (denormal
    spacing below the normal range), for exact values inside the finite range."""
    finfo = np.finfo(dtype)
    mag = np.minimum(np.abs(exact), float(finfo.max)).astype(dtype)
    return np.abs(got.astype(np.float64) - exact) / np.spacing(mag).astype(np.float64)


@pytest.fixture(scope="module", params=OPS, ids=[o[0] for o in OPS])
def f32_result(request):
    op, fn = request.param
    exe, got = run(op, X32)
    with np.errstate(all="ignore"):
        exact = fn(X32.astype(np.float64))
    return op, exe, got, exact


def test_f32_within_4_ulp_of_float64_numpy(f32_result):
    """Cody-Waite exp / mantissa-polynomial log / exp-based tanh and sigmoid: <= 4 ulp."""
    op, _, got, exact = f32_result
    finite = np.isfinite(exact) & (np.abs(exact) <= F32_MAX)
    err = ulp_error(got[finite], exact[finite], np.float32)
    worst = int(np.argmax(err))
    assert err[worst] <= 4.0, (op, X32[finite][worst], got[finite][worst], exact[finite][worst])


def test_f32_special_values_as_numpy(f32_result):
    """NaN where numpy gives NaN, infinities and exact zeros (with their sign) as numpy's."""
    op, _, got, exact = f32_result
    with np.errstate(all="ignore"):
        want = exact.astype(np.float32)                 # numpy's float32 rounding of the truth
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    special = ~np.isfinite(want) | (want == 0)
    np.testing.assert_array_equal(got[special], want[special])
    numbers = special & ~np.isnan(want)
    np.testing.assert_array_equal(np.signbit(got[numbers]), np.signbit(want[numbers]))
    if op != "sigmoid":                                 # NaN bits (sign, payload) as numpy's
        with np.errstate(all="ignore"):
            np32 = getattr(np, op)(X32)
        nan = np.isnan(np32)
        np.testing.assert_array_equal(got[nan].view(np.uint32), np32[nan].view(np.uint32))
    zeros = X32 == 0
    if op in ("exp", "sigmoid"):
        assert np.all(got[zeros] == (1.0 if op == "exp" else 0.5))
    if op == "tanh":
        np.testing.assert_array_equal(np.signbit(got[zeros]), np.signbit(X32[zeros]))


def test_f32_matches_numpy_float32_on_edges():
    """Overflow threshold, denormal results, log of denormals and of +-0, tanh near 0."""
    x = np.array(EDGES, np.float32)
    with np.errstate(all="ignore"):
        for op, fn in (("exp", np.exp), ("log", np.log), ("tanh", np.tanh)):
            got = run(op, x)[1]
            want = fn(x)
            same = (got == want) | (np.isnan(got) & np.isnan(want))
            close = np.abs(got.astype(np.float64) - want) <= 2 * np.spacing(np.abs(want))
            assert np.all(same | close), (op, x[~(same | close)], got[~(same | close)])
    # the largest float32 whose exp is finite, and the next one up
    top = np.array([0x42B17217, 0x42B17218], np.uint32).view(np.float32)    # 88.72283...
    got = run("exp", top)[1]
    assert np.isfinite(got[0]) and got[1] == np.inf
    # smallest denormal result region: exp(-103.27893) ~ 2^-149
    assert run("exp", np.array([-103.27893], np.float32))[1][0] == np.float32(1e-45)


@pytest.mark.parametrize("op", ["exp", "log", "tanh", "sigmoid"])
def test_f32_loops_have_no_libm_calls_and_are_vector_code(op):
    """The loop must vectorize: no call to expf/logf/tanhf, packed single-precision ops."""
    exe, _ = run(op, np.ones(1000, np.float32))
    asm = exe.assembly()
    for name in ("expf", "logf", "tanhf"):
        assert name not in asm, f"{op}: still calls {name}"
    assert "mulps" in asm, f"{op}: no packed float32 multiply in the code"


@pytest.mark.parametrize("op,fn", [("exp", np.exp), ("log", np.log), ("tanh", np.tanh)])
def test_f64_keeps_libm_within_2_ulp(op, fn):
    """float64 stays on the C library; stated bound: 2 ulp of numpy's own float64 (numpy has
    its own SIMD tanh, 2 ulp from glibc's at worst)."""
    r = np.random.default_rng(0)
    x = np.concatenate([r.standard_normal(5000) * 30, np.array(EDGES)])
    got = run(op, x)[1]
    with np.errstate(all="ignore"):
        want = fn(x)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = np.isfinite(want)
    np.testing.assert_array_equal(got[~ok & ~np.isnan(want)], want[~ok & ~np.isnan(want)])
    assert np.all(ulp_error(got[ok], want[ok], np.float64) <= 2.0)


@pytest.mark.parametrize("n", [1, 7, 8, 9, 17, 33])
def test_f32_odd_sizes_and_two_threads(n):
    """Vector remainders and the thread split give the same values as one thread."""
    x = np.linspace(-30, 30, n * 13, dtype=np.float32)
    for op in ("exp", "tanh", "sigmoid"):
        a = run(op, x, threads=1)[1]
        b = run(op, x, threads=2)[1]
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@pytest.mark.parametrize("cols", [1, 7, 20, 23, 28, 31, 37, 44, 47, 1003])
def test_softmax_f32_against_torch(op, cols):
    """softmax / log_softmax use the inline exp and log and a vectorized (reassociated) sum:
    vs torch at row lengths around the vector width, incl. -inf and big logits. Rows of
    20-23, 28-31 and 44-47 floats made LLVM 22's vectorizer abort the process on its max
    reduction (its cost models disagreeing) until that loop asked for its width."""
    r = np.random.default_rng(3)
    x = (r.standard_normal((13, cols)) * 20).astype(np.float32)
    x[0, :5] = -np.inf
    x[1, cols // 2] = 1e30
    x[2] = -1e4
    g = Graph(op)
    v = g.add_input("x", TensorType(x.shape))
    g.set_outputs(g.add_node(op, [v], {"axis": -1}))
    got = backends.compile(g, "llvm", threads=2)(x)[0]
    want = getattr(torch, op)(torch.from_numpy(x), dim=-1).numpy()
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6)


# ---------------------------------------------------------------- erf
ERF_ULP = 1.5       # measured: 1.16 ulp at most (x = -0.92836946) over the sweep below
_erf64 = np.frompyfunc(__import__("math").erf, 1, 1)


def erf64(x: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.asarray(_erf64(x.astype(np.float64)), np.float64)


def test_erf_f32_ulp_against_float64_math_erf():
    """Inline float32 erf (odd polynomial below 0.875, 1 - exp(P(|x|)) above) vs float64
    ``math.erf`` on every 997th bit pattern, a dense grid over [-20, 20] and the edges."""
    _, got = run("erf", X32)
    exact = erf64(X32)
    finite = ~np.isnan(X32)
    err = ulp_error(got[finite], exact[finite], np.float32)
    worst = int(np.argmax(err))
    assert err[worst] <= ERF_ULP, (X32[finite][worst], got[finite][worst], exact[finite][worst])
    assert np.all(np.isnan(got[~finite]))
    edge = np.array([0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45, 4.0, -4.0, 3.92, 100.0], np.float32)
    g = run("erf", edge)[1]
    np.testing.assert_array_equal(g, erf64(edge).astype(np.float32))
    np.testing.assert_array_equal(np.signbit(g), np.signbit(edge))       # erf(-0.0) = -0.0
    # near 0 erf(x) = 2x/sqrt(pi) to float32 precision: the denormals keep their value
    tiny = np.array([1e-40, -3e-39, 1e-20], np.float32)
    np.testing.assert_array_equal(run("erf", tiny)[1], (tiny * np.float64(1.1283791670955126)).astype(np.float32))


def test_erf_loop_is_vector_code_and_f64_uses_libm():
    exe, _ = run("erf", np.ones(1000, np.float32))
    asm = exe.assembly()
    assert "erff" not in asm and "mulps" in asm
    r = np.random.default_rng(1)
    x = np.concatenate([r.standard_normal(3000) * 3, [0.0, -0.0, np.inf, -np.inf, 30.0]])
    got = run("erf", x)[1]
    np.testing.assert_array_equal(np.signbit(got), np.signbit(x))
    assert np.all(ulp_error(got, erf64(x), np.float64) <= 1.0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cols", [1, 6, 17, 23, 31, 47])
def test_softmax_rows_of_many_lengths_compile_and_match_torch(dtype, cols):
    """96 rows (several per thread) of lengths around the vector widths, on both float
    types: the max pass is explicit vectors and a compare-and-select tail, so no loop the
    vectorizer could abort on (or, forced to a width, miscompile into a hang)."""
    r = np.random.default_rng(cols)
    x = r.standard_normal((96, cols)).astype(dtype)
    x[0, cols // 2] = 40.0
    for op in ("softmax", "log_softmax"):
        g = Graph(op)
        v = g.add_input("x", TensorType(x.shape, dtype))
        g.set_outputs(g.add_node(op, [v], {"axis": -1}))
        got = backends.compile(g, "llvm", threads=2)(x)[0]
        want = getattr(torch, op)(torch.from_numpy(x), dim=-1).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5 if dtype == "float32" else 1e-12,
                                   atol=1e-6 if dtype == "float32" else 1e-14)

