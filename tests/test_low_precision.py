"""float16 and bfloat16: types, text, checkpoints, promotion, reference kernels against
PyTorch's CPU results (float32 compute, one round-to-nearest-even per result), gradients
against float64 finite differences, and the LLVM backend against the reference on every
float-typed op's samples."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch

import irgraph.backends as backends
from irgraph import Graph, TensorType, parse, serialize
from irgraph.interpreter import interpret
from irgraph.passes.autodiff import vjp
from tests.samples import low_precision_samples

LOW = ["float16", "bfloat16"]
TORCH = {"float16": torch.float16, "bfloat16": torch.bfloat16}
EPS = {"float16": 2.0 ** -10, "bfloat16": 2.0 ** -7}     # spacing of the numbers in [1, 2)


def bits(a: np.ndarray) -> np.ndarray:
    return np.asarray(a).view(np.uint16)


def to_torch(a: np.ndarray) -> torch.Tensor:
    dt = a.dtype.name
    return torch.from_numpy(a.astype(np.float32)).to(TORCH[dt])


def from_torch(t: torch.Tensor, dtype: str) -> np.ndarray:
    return t.float().numpy().astype(dtype)


def rand(shape, dtype, seed, low=-2.0, high=2.0):
    return np.random.default_rng(seed).uniform(low, high, shape).astype(np.float32).astype(dtype)


def one_op(op, dtypes_shapes, **attrs) -> Graph:
    g = Graph(op)
    xs = [g.add_input(f"x{i}", TensorType(s, d)) for i, (d, s) in enumerate(dtypes_shapes)]
    g.set_outputs([g.op(op, *xs, **attrs)])
    return g


# ---------------------------------------------------------------- types, text, files
def test_names_and_sizes():
    assert TensorType((2, 3), "bf16").dtype == "bfloat16"
    assert TensorType((2, 3), "f16").dtype == "float16"
    assert str(TensorType((4,), "bfloat16")) == "bf16[4]"
    assert TensorType((4, 4), "bfloat16").nbytes == 32
    assert TensorType((4, 4), np.float16).nbytes == 32
    with pytest.raises(TypeError, match="unsupported dtype"):
        TensorType((1,), "float8")


def test_text_round_trip_and_constant_arrays():
    g = Graph("g")
    x = g.add_input("x", TensorType((3,), "bf16"))
    c = g.op("constant", value=np.array([0.1, -3.0, 1e30], ml_dtypes.bfloat16))
    h = g.op("cast", g.op("add", x, c), dtype="float16")
    g.set_outputs([h])
    text = str(g)
    assert "bf16[3]" in text and "f16[3]" in text and 'dtype="float16"' in text
    g2 = parse(text)
    assert g2 == g
    assert bits(g2.nodes[0].attrs["value"]).tolist() == bits(c.node.attrs["value"]).tolist()


def test_checkpoint_keeps_bfloat16_bits(tmp_path):
    g = Graph("g")
    w = g.add_param("w", TensorType((2, 3), "bf16"))
    v = g.add_param("v", TensorType((2,), "f16"))
    g.set_outputs([g.op("neg", w), g.op("neg", v)])
    wv = np.array([[1.0, -2.5, np.inf], [3e38, -0.0, 1e-40]], ml_dtypes.bfloat16)
    vv = np.array([65504.0, 6e-8], np.float16)
    serialize.save(tmp_path, g, {"w": wv, "v": vv})
    manifest = (tmp_path / "manifest.json").read_text()
    assert '"bfloat16"' in manifest and '"float16"' in manifest
    g2, weights = serialize.load(tmp_path)
    assert g2 == g
    assert weights["w"].dtype == wv.dtype and bits(weights["w"]).tolist() == bits(wv).tolist()
    assert weights["v"].dtype == np.float16 and bits(weights["v"]).tolist() == bits(vv).tolist()
    # the stored member is plain uint16 words: numpy reads it without any pickle
    npz = next(tmp_path.glob("weights-*.npz"))
    with np.load(npz, allow_pickle=False) as z:
        assert z["w"].dtype == np.uint16 and z["w"].tolist() == bits(wv).tolist()


def test_round_to_nearest_even_worked_by_hand():
    # bf16 keeps 8 significand bits: 1 + 2^-8 is halfway between 1 and 1 + 2^-7 -> even (1);
    # 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6 -> even (1 + 2^-6)
    x = np.array([1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -8 + 2 ** -20], np.float32)
    g = one_op("cast", [("float32", (3,))], dtype="bfloat16")
    for backend in ("reference", "llvm"):
        (out,) = backends.compile(g, backend)(x)
        assert out.astype(np.float32).tolist() == [1.0, 1 + 2 ** -6, 1 + 2 ** -7], backend


def test_frontend_promotion_as_pytorch():
    from irgraph.frontend import TensorSpec, trace
    from irgraph.frontend import functional as F

    cases = [("float16", "bfloat16", "float32"), ("bfloat16", "float32", "float32"),
             ("float16", "float64", "float64"), ("int32", "bfloat16", "bfloat16"),
             ("int64", "float16", "float16"), ("bfloat16", "bfloat16", "bfloat16")]
    for a, b, want in cases:
        g = trace(lambda x, y: x + y, TensorSpec((2,), a), TensorSpec((2,), b))
        assert g.outputs[0].dtype == want, (a, b)
        assert torch.promote_types(getattr(torch, a), getattr(torch, b)) == getattr(torch, want)
    # Python scalars do not promote a 16-bit tensor
    g = trace(lambda x: F.relu(x * 2.5 + 1), TensorSpec((2,), "bfloat16"))
    assert g.outputs[0].dtype == "bfloat16"


# ---------------------------------------------------------------- reference vs PyTorch
EXACT = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div,
         "maximum": torch.maximum, "neg": torch.neg, "relu": torch.relu, "abs": torch.abs,
         "square": torch.square, "sqrt": torch.sqrt}
NEAR = {"exp": torch.exp, "log": torch.log, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
        "rsqrt": torch.rsqrt}


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("op", sorted(EXACT))
def test_elementwise_bit_exact_vs_torch(op, dtype):
    unary = op in ("neg", "relu", "abs", "square", "sqrt")
    low = 0.0 if op == "sqrt" else -4.0
    xs = [rand((257,), dtype, 1, low, 4.0)] + ([] if unary else [rand((257,), dtype, 2)])
    if op == "div":
        xs[1] = np.where(np.abs(xs[1].astype(np.float32)) < 0.1, 0.5, xs[1]).astype(dtype)
    g = one_op(op, [(dtype, x.shape) for x in xs])
    (got,) = interpret(g, xs)
    want = from_torch(EXACT[op](*map(to_torch, xs)), dtype)
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(bits(got), bits(want))


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("op", sorted(NEAR))
def test_transcendental_within_one_unit_vs_torch(op, dtype):
    x = rand((257,), dtype, 3, 0.05 if op in ("log", "rsqrt") else -4.0, 4.0)
    (got,) = interpret(one_op(op, [(dtype, x.shape)]), [x])
    want = from_torch(EXACT.get(op, NEAR[op])(to_torch(x)), dtype)
    # float32 libraries differ by an ulp of float32: at most one 16-bit rounding flips
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    assert np.all(diff <= EPS[dtype] * np.abs(want.astype(np.float64)) + 1e-30)
    assert np.mean(bits(got) == bits(want)) > 0.97


@pytest.mark.parametrize("dtype", LOW)
def test_accumulating_ops_vs_torch(dtype):
    """float32 accumulation: the error is that of one final rounding plus float32 sums. Every
    op below in ONE graph (one LLVM compile)."""
    eps = EPS[dtype]
    a, b = rand((17, 130), dtype, 4), rand((130, 9), dtype, 5)
    x, w = rand((2, 3, 7, 7), dtype, 6), rand((4, 3, 3, 3), dtype, 7)
    checks = [
        ("matmul", [a, b], {}, lambda A, B: A @ B),
        ("sum", [a], dict(axis=1), lambda A: A.sum(1)),
        ("mean", [a], dict(axis=0), lambda A: A.mean(0)),
        ("softmax", [a], dict(axis=1), lambda A: A.softmax(1)),
        ("log_softmax", [a], dict(axis=1), lambda A: A.log_softmax(1)),
        ("conv", [x, w], dict(stride=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1)),
         lambda X, W: torch.nn.functional.conv2d(X, W, padding=1)),
    ]
    g, args = Graph(f"accumulating_{dtype}"), []
    outs = []
    for k, (op, xs, attrs, _) in enumerate(checks):
        vs = [g.add_input(f"{op}{i}", TensorType(v.shape, dtype)) for i, v in enumerate(xs)]
        outs.append(g.op(op, *vs, **attrs))
        args += xs
    g.set_outputs(outs)
    results = {be: backends.compile(g, be)(*args) for be in ("reference", "llvm")}
    for k, (op, xs, _, fn) in enumerate(checks):
        want = fn(*map(to_torch, xs)).float().numpy()
        exact = fn(*[torch.from_numpy(v.astype(np.float64)) for v in xs]).numpy()
        scale = np.abs(exact).max()
        for backend, res in results.items():
            got = res[k]
            assert got.dtype == np.dtype(dtype), (op, backend)
            got = got.astype(np.float64)
            # one rounding of the float32 result: half a unit; float32 sums: far below it
            np.testing.assert_allclose(got, exact, rtol=eps, atol=eps * 1e-3 * scale,
                                       err_msg=f"{op} on {backend} vs float64")
            np.testing.assert_allclose(got, want, rtol=2 * eps, atol=eps * 1e-3 * scale,
                                       err_msg=f"{op} on {backend} vs torch")


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize("dtype", LOW)
def test_gradient_vs_float64_finite_differences(dtype):
    """L = sum(tanh(x @ w) * c): the bf16/f16 VJP (reference kernels) against central
    differences of the float64 function at the same (rounded) point; each stored
    intermediate is rounded once, so the error is a few units of the dtype's epsilon relative
    to the gradient's size. LLVM's VJP against the reference's."""
    x, w, c = rand((5, 8), dtype, 8), rand((8, 3), dtype, 9), rand((5, 3), dtype, 10)
    g = Graph("loss")
    xv, wv = g.add_input("x", TensorType(x.shape, dtype)), g.add_input("w", TensorType(w.shape, dtype))
    cv = g.add_input("c", TensorType(c.shape, dtype))
    g.set_outputs([g.op("sum", g.op("mul", g.op("tanh", g.op("matmul", xv, wv)), cv))])
    vg = vjp(g, wrt=["x", "w"], of=[0])
    one = np.array(1.0, dtype=dtype)

    def f64(x, w):
        return float(np.sum(np.tanh(x @ w) * c.astype(np.float64)))

    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    ref = backends.compile(vg, "reference")(x, w, c, one)
    # LLVM: the reference's gradients (both round each stored intermediate once; their
    # float32 sums differ in order, so a rounding may flip: one unit of the gradient's size)
    llvm = backends.compile(vg, "llvm", threads=2)(x, w, c, one)
    for r, got in zip(ref[1:], llvm[1:]):
        r64 = r.astype(np.float64)
        np.testing.assert_allclose(got.astype(np.float64), r64, rtol=0,
                                   atol=2 * EPS[dtype] * np.abs(r64).max())
    for backend in ("reference",):
        _, gx, gw = ref
        for got, base, k in ((gx, x64, 0), (gw, w64, 1)):
            fd = np.zeros_like(base)
            for idx in np.ndindex(base.shape):
                p, m = base.copy(), base.copy()
                p[idx] += 1e-6
                m[idx] -= 1e-6
                args_p = (p, w64) if k == 0 else (x64, p)
                args_m = (m, w64) if k == 0 else (x64, m)
                fd[idx] = (f64(*args_p) - f64(*args_m)) / 2e-6
            tol = 8 * EPS[dtype] * np.abs(fd).max()
            np.testing.assert_allclose(got.astype(np.float64), fd, atol=tol, rtol=0,
                                       err_msg=f"{backend}: gradient {k} in {dtype}")


# ---------------------------------------------------------------- every op, LLVM vs reference
def _all_ops_graph(dtypes):
    """One graph holding the first sample of every float-typed op in each of ``dtypes`` (one
    compile)."""
    g, args = Graph("every_op"), []
    outs, sampled = [], []          # sampled: (op, dtype) of each output
    for dtype in dtypes:
        for op, cases in sorted(low_precision_samples(dtype).items()):
            case = cases[0]
            try:
                backends.compile(one_op_case(op, case), "reference")(*case.inputs)
            except Exception:
                continue                    # a sample of an error case
            xs = [g.add_input(f"{dtype}_{op}_{i}", TensorType.of(a))
                  for i, a in enumerate(case.inputs)]
            res = g.add_node(op, xs, case.attrs)
            outs += list(res)
            sampled += [(op, dtype)] * len(res)
            args += list(case.inputs)
    g.set_outputs(outs)
    return g, args, sampled


def one_op_case(op, case):
    g = Graph(op)
    xs = [g.add_input(f"x{i}", TensorType.of(a)) for i, a in enumerate(case.inputs)]
    g.set_outputs(g.add_node(op, xs, case.attrs))
    return g


def test_llvm_matches_reference_on_every_op():
    """Both dtypes' samples in one graph: one compile."""
    g, args, sampled = _all_ops_graph(LOW)
    for dtype in LOW:
        assert len({op for op, d in sampled if d == dtype}) > 60
    want = backends.compile(g, "reference")(*args)
    got = backends.compile(g, "llvm", threads=2)(*args)
    for v, (_, dtype), e, r in zip(g.outputs, sampled, want, got):
        assert r.dtype == e.dtype, v.node.op
        if e.dtype.name in LOW:
            e64, r64 = e.astype(np.float64), r.astype(np.float64)
            # both compute in float32 and round once: equal, or one unit apart where float32
            # libraries differ in the last float32 bit near a rounding boundary
            np.testing.assert_allclose(r64, e64, rtol=EPS[dtype], equal_nan=True,
                                       atol=EPS[dtype] * 1e-3 * max(1.0, np.nanmax(np.abs(e64),
                                                                              initial=0)),
                                       err_msg=f"{v.node.op} in {dtype}")
        else:
            np.testing.assert_array_equal(r, e, err_msg=f"{v.node.op} in {dtype}")


# ---------------------------------------------------------------- LLVM bfloat16 GEMM
def _gemm_graph(dtype="bfloat16"):
    """bf16 products (the same graph in float64 for the exact values): odd K, N not a multiple of the 32-column strip, M not of the 12-row
    tile, a batch, transposed operands (A read by 16-bit loads), a vector operand."""
    g, args = Graph("bf16_gemm"), []
    rng = np.random.default_rng(11)

    def arg(name, shape):
        args.append(rng.uniform(-2, 2, shape).astype(np.float32).astype("bfloat16"))
        return g.add_input(name, TensorType(shape, dtype))
    a, b = arg("a", (37, 129)), arg("b", (129, 70))
    c, d = arg("c", (2, 13, 64)), arg("d", (64, 33))
    e, v = arg("e", (31, 25)), arg("v", (25,))
    g.set_outputs([g.op("matmul", a, b), g.op("matmul", c, d),
                   g.op("matmul", g.op("transpose", b, perm=(1, 0)), g.op("transpose", a,
                                                                            perm=(1, 0))),
                   g.op("matmul", e, v), g.op("matmul", v, g.op("transpose", e, perm=(1, 0)))])
    return g, args


def _check_gemm(g, args, got):
    """Against float64: one rounding (half a unit of bf16) of a float32 sum of K exact
    products (K float32 roundings); against the reference: mostly the same bits."""
    want = backends.compile(g, "reference")(*args)
    g64 = backends.compile(_gemm_graph("float64")[0], "reference")
    exact = g64(*[a.astype(np.float64) for a in args])
    mags = g64(*[np.abs(a.astype(np.float64)) for a in args])
    for k, (o, w, x, m) in enumerate(zip(got, want, exact, mags)):
        node = g.outputs[k].node
        assert o.dtype == w.dtype == np.dtype("bfloat16")
        K = node.inputs[0].shape[-1]
        bound = 2.0 ** -8 * np.abs(x) + (1 + 2.0 ** -8) * K * 2.0 ** -24 * m
        assert np.all(np.abs(o.astype(np.float64) - x) <= bound), k
        assert np.mean(bits(o) == bits(w)) > 0.9, k


def test_bf16_gemm_uses_vdpbf16ps_where_the_host_has_it():
    from irgraph.backends.llvm import gemm_bf16, jit
    g, args = _gemm_graph()
    has = gemm_bf16.supported(jit.host()[2])
    assert has == ("+avx512bf16" in jit.host()[2].split(",")
                   and "+avx512f" in jit.host()[2].split(","))
    assert all(gemm_bf16.native(n) == has for n in g.nodes if n.op == "matmul")
    exe = backends.compile(g, "llvm", threads=2)
    assert ("vdpbf16ps" in exe.assembly()) == has
    _check_gemm(g, args, exe(*args))


def test_bf16_gemm_falls_back_to_widening_without_the_feature(monkeypatch):
    from irgraph.backends.llvm import gemm_bf16
    monkeypatch.setattr(gemm_bf16, "ENABLED", False)
    g, args = _gemm_graph()
    assert not any(gemm_bf16.native(n) for n in g.nodes)
    exe = backends.compile(g, "llvm", threads=2)
    assert "vdpbf16ps" not in exe.assembly()
    _check_gemm(g, args, exe(*args))


def test_bf16_gemm_rule():
    from irgraph.backends.llvm import gemm_bf16
    assert gemm_bf16.supported("+avx512f,+avx512bf16,+avx2")
    assert not gemm_bf16.supported("+avx512f,-avx512bf16")
    assert not gemm_bf16.supported("+avx512bf16,-avx512f")
    g = Graph("rule")
    long = g.op("matmul", g.add_input("a", TensorType((2, gemm_bf16.KMAX + 1), "bfloat16")),
                g.add_input("b", TensorType((gemm_bf16.KMAX + 1, 2), "bfloat16")))
    f16 = g.op("matmul", g.add_input("c", TensorType((2, 3), "float16")),
               g.add_input("d", TensorType((3, 2), "float16")))
    g.set_outputs([long, f16])
    assert not gemm_bf16.native(long.node) and not gemm_bf16.native(f16.node)


@pytest.mark.parametrize("backend", ["reference", "llvm"])
def test_float64_to_16_bit_cast_rounds_through_float32_as_torch(backend):
    """torch converts float64 to a 16-bit float through float32 (two roundings): values just
    above a 16-bit tie land on the tie in float32 and then round to even."""
    import torch
    g = Graph("cast64")
    x = g.add_input("x", TensorType((6,), "float64"))
    g.set_outputs([g.op("cast", x, dtype="bfloat16"), g.op("cast", x, dtype="float16")])
    a = np.array([1 + 2 ** -8 + 2 ** -30, 1 + 2 ** -11 + 2 ** -40, -3.3e38, 65519.99,
                  -(1 + 3 * 2 ** -9 + 2 ** -35), 2.0 ** -140], np.float64)
    bf, f16 = backends.compile(g, backend)(a)
    t = torch.from_numpy(a)
    np.testing.assert_array_equal(bf.view(np.uint16),
                                  t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16))
    np.testing.assert_array_equal(f16.view(np.uint16),
                                  t.to(torch.float16).view(torch.int16).numpy().view(np.uint16))


@pytest.mark.parametrize("backend", ["reference", "llvm"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_python_floats_norms_and_products_of_16_bit_tensors_as_torch(dtype, backend):
    """torch's opmath: a Python float meets a 16-bit tensor in float32 and the result is
    rounded once (x * 1e-8 is not 0; number / x is the reciprocal times the number);
    norms, prod and cumprod accumulate in float32 (8 x 300^2 overflows float16)."""
    import torch
    x = np.array([1000.0, 65000.0, 3.0, 0.5], np.float32).astype(dtype)
    t = torch.tensor(x.astype(np.float32)).to(getattr(torch, dtype))
    fns = (lambda a: a * 1e-8, lambda a: a * 0.1, lambda a: 7.1 / a, lambda a: a + 0.3,
           lambda a: a - 1e-3, lambda a: a // 0.3,
           # Python ints too; remainder, fmod, pow and s // x round the number first
           lambda a: a * 257, lambda a: a / 100000, lambda a: 100000 / a, lambda a: a % 0.1,
           lambda a: a % 1e-8, lambda a: torch_fmod(a, 0.3), lambda a: a ** 1e-8,
           lambda a: 1e-8 // a, lambda a: div_trunc(a, 0.7))
    import irgraph.frontend as fe
    from irgraph.frontend import F

    def torch_fmod(a, s):
        return F.fmod(a, s) if isinstance(a, fe.Tensor) else torch.fmod(a, s)

    def div_trunc(a, s):
        return (F.div(a, s, rounding_mode="trunc") if isinstance(a, fe.Tensor)
                else torch.div(a, s, rounding_mode="trunc"))
    got = fe.compile(lambda a: tuple(f(a) for f in fns), fe.TensorSpec((4,), dtype),
                     backend=backend)(x)
    for k, (g, f) in enumerate(zip(got, fns)):
        np.testing.assert_array_equal(g.astype(np.float32), f(t).float().numpy(),
                                      err_msg=f"function {k}")
    y = np.full(8, 300.0, np.float32).astype(dtype)
    p = np.full(200, 1.046875 if dtype == "bfloat16" else 1.0498, np.float32).astype(dtype)
    ty = torch.tensor(y.astype(np.float32)).to(getattr(torch, dtype))
    tp = torch.tensor(p.astype(np.float32)).to(getattr(torch, dtype))
    outs = fe.compile(lambda a, b: (F.vector_norm(a), F.normalize(a, dim=0), F.cumprod(b, 0)),
                      fe.TensorSpec((8,), dtype), fe.TensorSpec((200,), dtype),
                      backend=backend)(y, p)
    np.testing.assert_array_equal(outs[0].astype(np.float32),
                                  torch.linalg.vector_norm(ty).float().numpy())
    np.testing.assert_array_equal(outs[1].astype(np.float32),
                                  torch.nn.functional.normalize(ty, dim=0).float().numpy())
    np.testing.assert_allclose(outs[2].astype(np.float32),
                               torch.cumprod(tp, 0).float().numpy(), rtol=1e-2)
