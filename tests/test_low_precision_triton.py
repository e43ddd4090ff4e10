"""float16 and bfloat16 on the Triton backend (its interpreter here): the store conversion's
round-to-nearest-even against ml_dtypes/numpy over many bit patterns (ties, overflow to inf,
subnormals, NaN payloads), elementwise ops and fused regions bit for bit against the
reference, accumulations (matmul on 16-bit operands, reductions, convolution) within the
float32-sum tolerance, and the 16-bit launches the AOT gate compiles for sm_80/sm_90."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import irgraph.backends as backends
from irgraph.backends.triton.kernels import elementwise as ew
from irgraph.backends.triton.runtime import View, default_device, to_device, to_host
from irgraph import Graph, TensorType
from irgraph.passes.fusion import fuse

LOW = ["float16", "bfloat16"]
EPS = {"float16": 2.0 ** -10, "bfloat16": 2.0 ** -7}
NUMPY = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


def bits(a) -> np.ndarray:
    return np.asarray(a).view(np.uint16)


def rand(shape, dtype, seed, low=-2.0, high=2.0):
    return np.random.default_rng(seed).uniform(low, high, shape).astype(np.float32).astype(dtype)


def patterns() -> np.ndarray:
    """float32 bit patterns: random words, every tie (low half 0x8000) next to an even and an
    odd kept bit, one below and above each tie, the largest finite values (round to inf),
    subnormals, zeros, infinities and NaNs with payloads only in the dropped half."""
    rng = np.random.default_rng(0)
    hi = rng.integers(0, 1 << 16, 4096, dtype=np.uint32)
    ties = (hi << 16) | 0x8000
    special = np.array([0x00000000, 0x80000000, 0x7F7FFFFF, 0xFF7FFFFF, 0x7F7F8000,
                        0x7F7F7FFF, 0x00000001, 0x807FFFFF, 0x00008000, 0x00018000,
                        0x7F800000, 0xFF800000, 0x7F800001, 0xFF800001, 0x7FC00000,
                        0x7F80FFFF, 0x7FFFFFFF, 0xFFFF0001], np.uint32)
    words = np.concatenate([rng.integers(0, 1 << 32, 1 << 14, dtype=np.uint64).astype(np.uint32),
                            ties, ties - 1, ties + 1, special])
    return words.view(np.float32)


def check_rounded(got: np.ndarray, x: np.ndarray, dtype: str) -> None:
    with np.errstate(all="ignore"):
        want = x.astype(NUMPY[dtype])
    nan = np.isnan(x)
    np.testing.assert_array_equal(bits(got)[~nan], bits(want)[~nan])
    g = got[nan].astype(np.float32)
    assert np.isnan(g).all()                                # a NaN stays a NaN ...
    assert (np.signbit(g) == np.signbit(x[nan])).all()      # ... of the same sign


# ---------------------------------------------------------------- the store conversion
@pytest.mark.parametrize("dtype", LOW)
def test_store_rounds_to_nearest_even_as_ml_dtypes(dtype):
    """The one conversion every store makes (elementwise ``store_as``), through the generic
    kernel's ``cast`` and a generated region's store, against ml_dtypes/numpy."""
    x = patterns()
    dev = default_device()
    cast = ew.elementwise("cast", x.shape, dtype, [View.of(x.shape)], ["float32"], dev)
    check_rounded(to_host(cast(to_device(x, "float32", dev))), x, dtype)
    g = Graph("round")
    v = g.add_input("x", TensorType(x.shape, "float32"))
    g.set_outputs([g.op("cast", g.op("neg", v), dtype=dtype)])
    exe = backends.compile(fuse(g), "triton")
    assert len(exe.ctx.notes) == 1 and "_as(" in exe.ctx.notes[0]     # a generated kernel
    check_rounded(exe(x)[0], -x, dtype)


def test_bfloat16_ties_worked_by_hand():
    # 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: to even, 1; 1 + 3 * 2^-8 between
    # 1 + 2^-7 and 1 + 2^-6: to even, 1 + 2^-6; (2 - 2^-8) * 2^127 between the largest
    # bfloat16, (2 - 2^-7) * 2^127 (odd), and 2^128: to even, inf
    x = np.array([1 + 2 ** -8, 1 + 3 * 2 ** -8, -(1 + 2 ** -8), (2 - 2 ** -8) * 2.0 ** 127],
                 np.float32)
    g = Graph("ties")
    g.set_outputs([g.op("cast", g.add_input("x", TensorType((4,), "float32")),
                        dtype="bfloat16")])
    (out,) = backends.compile(g, "triton")(x)
    assert out.astype(np.float32).tolist() == [1.0, 1 + 2 ** -6, -1.0, float("inf")]


def test_float64_to_16_bits_rounds_through_float32_as_torch():
    """float64 -> 16 bits is rounded to float32 first (PyTorch's rule): 1 + 2^-8 + 2^-30 is a
    float32 tie, 1 + 2^-8, which goes to even, 1.0 (one direct rounding would give 1 + 2^-7)."""
    import torch
    x64 = np.array([1 + 2 ** -8 + 2 ** -30, 0.1, -7.3e4, 1e-9, 70000.5, 2.0 ** 24 + 1])
    g = Graph("from64")
    a = g.add_input("a", TensorType((6,), "float64"))
    g.set_outputs([g.op("cast", a, dtype=d) for d in LOW])
    got = backends.compile(g, "triton")(x64)
    for d, o in zip(LOW, got):
        want = torch.from_numpy(x64).to(getattr(torch, d)).view(torch.int16).numpy()
        np.testing.assert_array_equal(bits(o), want.view(np.uint16), err_msg=d)
    assert got[1].astype(np.float32)[0] == 1.0


def test_casts_between_widths_match_reference():
    """ints and float16 -> bfloat16 round once; 16 bits -> float32 is exact (bfloat16
    subnormals too); -0 and subnormals cast to bool as numbers."""
    g = Graph("casts")
    i = g.add_input("i", TensorType((6,), "int64"))
    f = g.add_input("f", TensorType((6,), "float16"))
    s = g.add_input("s", TensorType((6,), "bfloat16"))
    g.set_outputs([g.op("cast", i, dtype="bfloat16"), g.op("cast", i, dtype="float16"),
                   g.op("cast", f, dtype="bfloat16"), g.op("cast", f, dtype="int32"),
                   g.op("cast", f, dtype="float32"), g.op("cast", s, dtype="float32"),
                   g.op("cast", s, dtype="bool"), g.op("cast", s, dtype="float16"),
                   g.op("cast", s, dtype="int64")])
    # bfloat16: the smallest and the largest subnormals, the smallest normal, -0
    sub = np.array([0x0001, 0x8002, 0x007F, 0x0080, 0x8000, 0xC2F7], np.uint16)
    args = [np.array([1, -3, 257, 2 ** 40 + 1, 0, 65535], np.int64),
            np.array([1.5, -2.25, 1000.5, 0.0, 6e-5, -65504.0], np.float16),
            sub.view(ml_dtypes.bfloat16)]
    want = backends.compile(g, "reference")(*args)
    got = backends.compile(g, "triton")(*args)
    for w, o in zip(want, got):
        assert o.dtype == w.dtype
        np.testing.assert_array_equal(np.asarray(o).view(np.uint8), np.asarray(w).view(np.uint8))


# ---------------------------------------------------------------- ops against the reference
EXACT_UNARY = ("neg", "abs", "relu", "square", "sqrt")
EXACT_BINARY = ("add", "sub", "mul", "div", "maximum", "minimum")
NEAR_UNARY = ("exp", "log", "tanh", "sigmoid", "rsqrt", "erf")


def ops_graph(dtype: str):
    """Every elementwise op the kernel implements on 16-bit operands (one broadcast), and
    comparisons, where, layout ops."""
    g = Graph(f"ops_{dtype}")
    x, y = g.add_input("x", TensorType((4, 33), dtype)), g.add_input("y", TensorType((33,), dtype))
    p = g.add_input("p", TensorType((4, 33), dtype))            # positive
    outs, exact = [], []
    for op in EXACT_UNARY + NEAR_UNARY:
        outs.append(g.op(op, p if op in ("sqrt", "log", "rsqrt") else x))
        exact.append(op in EXACT_UNARY)
    for op in EXACT_BINARY:
        outs.append(g.op(op, x, p if op == "div" else y))
        exact.append(True)
    lt = g.op("lt", x, y)
    outs += [lt, g.op("where", lt, x, y), g.op("transpose", x, perm=(1, 0)),
             g.op("reshape", x, shape=(12, 11)), g.op("pow", p, y)]
    exact += [True, True, True, True, False]
    g.set_outputs(outs)
    return g, exact, [rand((4, 33), dtype, 1, -4, 4), rand((33,), dtype, 2, -4, 4),
                      rand((4, 33), dtype, 3, 0.05, 4)]


@pytest.mark.parametrize("dtype", LOW)
def test_elementwise_ops_match_reference(dtype):
    """Exact ops bit for bit; transcendental ones within one unit (the float32 libraries
    differ in the last float32 bit); the generated region gives the same bits as the
    per-op kernels."""
    g, exact, args = ops_graph(dtype)
    want = backends.compile(g, "reference")(*args)
    plain = backends.compile(g, "triton")(*args)
    fused = backends.compile(fuse(g), "triton")(*args)
    for k, (w, o, f) in enumerate(zip(want, plain, fused)):
        op = g.outputs[k].node.op
        assert o.dtype == w.dtype, op
        if exact[k]:
            np.testing.assert_array_equal(np.asarray(o).view(np.uint8),
                                          np.asarray(w).view(np.uint8), err_msg=op)
        else:
            w64, o64 = w.astype(np.float64), o.astype(np.float64)
            np.testing.assert_allclose(o64, w64, rtol=EPS[dtype], atol=1e-30, err_msg=op)
        np.testing.assert_array_equal(np.asarray(f).view(np.uint8),
                                      np.asarray(o).view(np.uint8), err_msg=f"fused {op}")


@pytest.mark.parametrize("dtype", LOW)
def test_accumulations_match_reference(dtype):
    """matmul (16-bit operands kept: float32 accumulation in ``tl.dot``), batched with a
    transposed operand, reductions, softmax, convolution: each result is the float32 sum
    rounded once, so it is within one unit of the reference's (sums in another order)."""
    eps = EPS[dtype]
    g = Graph(f"acc_{dtype}")
    a = g.add_input("a", TensorType((19, 70), dtype))
    b = g.add_input("b", TensorType((70, 9), dtype))
    c = g.add_input("c", TensorType((3, 9, 70), dtype))
    x, w = g.add_input("x", TensorType((2, 3, 7, 7), dtype)), g.add_input("w", TensorType(
        (4, 3, 3, 3), dtype))
    v = g.add_input("v", TensorType((70,), dtype))
    g.set_outputs([g.op("matmul", a, b),
                   g.op("matmul", g.op("transpose", c, perm=(0, 2, 1)), g.op("transpose", b,
                                                                            perm=(1, 0))),
                   g.op("matmul", a, v),
                   g.op("sum", a, axis=1), g.op("mean", a, axis=0),
                   g.op("softmax", a, axis=1),
                   g.op("conv", x, w, stride=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1))])
    args = [rand(t.shape, dtype, i + 10) for i, t in enumerate(v_.type for v_ in g.inputs)]
    exe = backends.compile(g, "triton")
    kept = [n for n in exe.graph.nodes if n.op == "matmul"]
    assert kept and all(n.inputs[0].dtype == dtype for n in kept)     # not widened
    want = backends.compile(g, "reference")(*args)
    for k, (w_, o) in enumerate(zip(want, exe(*args))):
        assert o.dtype == np.dtype(dtype)
        w64, o64 = w_.astype(np.float64), o.astype(np.float64)
        scale = np.abs(w64).max()
        np.testing.assert_allclose(o64, w64, rtol=eps, atol=eps * 1e-3 * scale,
                                   err_msg=g.outputs[k].node.op)
        assert np.mean(bits(o) == bits(w_)) > 0.9


def test_matmul_on_16_bit_operands_vs_float64():
    """The kept matmul against the float64 product of the same (rounded) operands: one
    rounding of a float32 sum (half a unit plus K float32 roundings)."""
    dtype = "bfloat16"
    a, b = rand((33, 130), dtype, 4), rand((130, 17), dtype, 5)
    g = Graph("mm")
    g.set_outputs([g.op("matmul", g.add_input("a", TensorType(a.shape, dtype)),
                        g.add_input("b", TensorType(b.shape, dtype)))])
    (got,) = backends.compile(g, "triton")(a, b)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    bound = (EPS[dtype] / 2) * np.abs(exact) + 130 * 2.0 ** -24 * (
        np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64)))
    assert np.all(np.abs(got.astype(np.float64) - exact) <= bound)


def test_train_step_with_autocast_matches_reference():
    """compile_train(autocast='bf16') on Triton: one SGD step of an MLP gives the reference
    backend's loss and weights (16-bit matmuls, float32 master weights)."""
    import irgraph.frontend as fe
    from irgraph.frontend import nn, optim
    x = np.random.default_rng(0).standard_normal((8, 6)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 3, 8).astype(np.int64)
    res = {}
    for backend in ("reference", "triton"):
        fe.manual_seed(3)
        model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
        step = fe.compile_train(model, nn.CrossEntropyLoss(),
                                optim.SGD(model.parameters(), lr=0.1), fe.TensorSpec(x.shape),
                                fe.TensorSpec(y.shape, "int64"), backend=backend,
                                autocast="bf16")
        loss = step(x, y)
        res[backend] = (loss, [p.data.copy() for p in model.parameters()])
    (l_ref, p_ref), (l_tri, p_tri) = res["reference"], res["triton"]
    assert abs(l_ref - l_tri) <= 2 * EPS["bfloat16"] * abs(l_ref)
    for r, t in zip(p_ref, p_tri):
        np.testing.assert_allclose(np.asarray(t, np.float64), np.asarray(r, np.float64),
                                   rtol=1e-3, atol=1e-4)


# ---------------------------------------------------------------- the AOT gate
def test_aot_gate_records_16_bit_launches():
    """The gate's calls (tests/test_triton_aot.py) launch the 16-bit kernels it compiles for
    sm_80 and sm_90: matmul and the convolutions on 16-bit operands, the rounding casts,
    generated regions."""
    from tests import test_triton_aot as gate
    calls = {k: f for k, f in gate.CALLS.items() if k.startswith("16-bit floats")}
    assert len(calls) == 2
    launches = gate.record_calls(calls)
    for dtype in LOW:
        tensors = {(la.name, a["tensor"]) for la in launches for a in la.args
                   if isinstance(a, dict) and "tensor" in a}
        for kernel in ("matmul_kernel", "elementwise_kernel", "conv_fwd_kernel",
                       "conv_input_grad_kernel", "conv_kernel_grad_kernel"):
            assert (kernel, dtype) in tensors, (kernel, dtype)
        assert any(name.startswith(("fused_", "fused_red_")) for name, t in tensors
                   if t == dtype), dtype
