"""bfloat16 convolution on AVX-512 BF16 (LLVM) and on 16-bit ``tl.dot`` operands (Triton,
its interpreter here), and ``matmul_f32`` (16-bit operands, float32 result, no rounding).

Bounds: a 16-bit result is the float32 sum of R exact products (R float32 roundings, each
at most 2^-24 of the running sum of magnitudes) rounded once (half a unit: 2^-8 relative for
bfloat16, 2^-11 for float16); a float32 result skips the last rounding. torch's CPU bf16
convolution obeys the same bound, so ours and torch's differ by at most twice it."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch

import irgraph.backends as backends
from irgraph import Graph, TensorType

HALF_UNIT = {"bfloat16": 2.0 ** -8, "float16": 2.0 ** -11, "float32": 0.0}
TORCH = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def rand(shape, dtype, seed):
    """Values exact in ``dtype`` (away from subnormals, which vdpbf16ps flushes)."""
    a = np.random.default_rng(seed).uniform(-2, 2, shape).astype(np.float32)
    return a.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)


def bound(exact, mags, terms: int, dtype: str):
    """|got - exact| allowed: float32 sums of ``terms`` products, then one rounding."""
    sums = terms * 2.0 ** -24 * mags
    return HALF_UNIT[dtype] * (np.abs(exact) + sums) + sums


# (N, C, O, spatial, kernel, stride, padding, dilation, groups): strides, asymmetric
# padding, groups, dilation, a 1x1 kernel (no im2col), a batch smaller than the threads
# (each image's GEMM split), 1-D and 3-D, an odd reduction (a half pair of K)
CONVS = [
    (2, 4, 6, (9, 9), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (1, 6, 4, (8, 7), (3, 3), (2, 2), (0, 1, 1, 0), (1, 1), 2),
    (3, 8, 40, (7, 7), (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    (2, 8, 8, (10, 10), (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 4),
    (1, 3, 5, (11, 6), (2, 3), (3, 1), (1, 0, 0, 2), (1, 2), 1),
    (2, 5, 7, (13,), (4,), (2,), (1, 2), (1,), 1),
    (2, 2, 4, (4, 5, 3), (2, 2, 2), (1, 2, 1), (1, 1, 0, 0, 1, 1), (1, 1, 1), 2),
]


def conv_graph(cases, dtype):
    """One graph of the convolutions ``cases`` (one compile); its arguments, x then w per
    case."""
    g, args, outs = Graph("conv16"), [], []
    for j, (n, c, o, sp, k, s, p, d, groups) in enumerate(cases):
        x = g.add_input(f"x{j}", TensorType((n, c) + sp, dtype))
        w = g.add_input(f"w{j}", TensorType((o, c // groups) + k, dtype))
        outs.append(g.op("conv", x, w, stride=s, padding=p, dilation=d, groups=groups))
        args += [rand((n, c) + sp, dtype, 2 * j + 1), rand((o, c // groups) + k, dtype, 2 * j)]
    g.set_outputs(outs)
    return g, args


def exact_conv(case, args):
    """(exact values, sums of magnitudes) in float64, through the reference."""
    g64 = backends.compile(conv_graph([case], "float64")[0], "reference")
    wide = [a.astype(np.float64) for a in args]
    return g64(*wide)[0], g64(*[np.abs(a) for a in wide])[0]


def torch_conv(case, args, dtype):
    n, c, o, sp, k, s, p, d, groups = case
    x, w = (torch.from_numpy(a.astype(np.float32)).to(TORCH[dtype]) for a in args)
    pad = [p[i] for ax in reversed(range(len(sp))) for i in (2 * ax, 2 * ax + 1)]
    conv = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d,
            3: torch.nn.functional.conv3d}[len(sp)]
    return conv(torch.nn.functional.pad(x, pad), w, stride=s, dilation=d,
                groups=groups).float().numpy()


def check_conv(case, args, got, dtype, against_torch=True):
    n, c, o, sp, k, s, p, d, groups = case
    terms = c // groups * int(np.prod(k))
    exact, mags = exact_conv(case, args)
    assert got.dtype == np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    err = bound(exact, mags, terms, dtype)
    assert np.all(np.abs(got.astype(np.float64) - exact) <= err)
    if against_torch:
        want = torch_conv(case, args, dtype)
        assert np.all(np.abs(got.astype(np.float64) - want) <= 2 * err)


# ---------------------------------------------------------------- LLVM: vdpbf16ps
def test_llvm_bf16_conv_vs_torch():
    from irgraph.backends.llvm import gemm_bf16, jit
    g, args = conv_graph(CONVS, "bfloat16")
    has = gemm_bf16.supported(jit.host()[2])
    assert all(gemm_bf16.native(v.node) == has for v in g.outputs)
    exe = backends.compile(g, "llvm", threads=2)
    assert ("vdpbf16ps" in exe.assembly()) == has
    for j, got in enumerate(exe(*args)):
        check_conv(CONVS[j], args[2 * j:2 * j + 2], got, "bfloat16")


def test_llvm_bf16_conv_fallback_without_the_feature(monkeypatch):
    """The feature forced off: widened to float32 between casts, within the same bound of
    the exact values as the reference's results."""
    from irgraph.backends.llvm import gemm_bf16
    monkeypatch.setattr(gemm_bf16, "ENABLED", False)
    g, args = conv_graph(CONVS[:2], "bfloat16")
    assert not any(gemm_bf16.native(v.node) for v in g.outputs)
    exe = backends.compile(g, "llvm", threads=2)
    assert "vdpbf16ps" not in exe.assembly()
    ref = backends.compile(g, "reference")(*args)
    for j, got in enumerate(exe(*args)):
        check_conv(CONVS[j], args[2 * j:2 * j + 2], got, "bfloat16", against_torch=False)
        check_conv(CONVS[j], args[2 * j:2 * j + 2], ref[j], "bfloat16", against_torch=False)


def test_bf16_conv_rule():
    """Kept native: a bf16 conv whose reduction C/groups * prod(kernel) fits KMAX."""
    from irgraph.backends.llvm import gemm_bf16
    g = Graph("rule")
    kmax = gemm_bf16.KMAX
    x = g.add_input("x", TensorType((1, kmax // 9 + 1, 4, 4), "bfloat16"))
    w = g.add_input("w", TensorType((2, kmax // 9 + 1, 3, 3), "bfloat16"))
    h = g.add_input("h", TensorType((1, 4, 4, 4), "float16"))
    k = g.add_input("k", TensorType((2, 4, 3, 3), "float16"))
    long = g.op("conv", x, w, stride=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1))
    f16 = g.op("conv", h, k, stride=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1))
    g.set_outputs([long, f16])
    assert gemm_bf16.contraction(long.node) == (kmax // 9 + 1) * 9 > kmax
    assert not gemm_bf16.native(long.node) and not gemm_bf16.native(f16.node)


# ---------------------------------------------------------------- Triton: 16-bit tl.dot
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("i", [1, 5, 6])        # small grids: the interpreter runs them
def test_triton_16_bit_conv_vs_torch(dtype, i):
    from irgraph.backends.triton.executable import native_low_precision
    g, args = conv_graph([CONVS[i]], dtype)
    assert native_low_precision(g.outputs[0].node)
    exe = backends.compile(g, "triton", output="numpy")
    assert not any(n.op == "cast" for n in exe.graph.nodes)     # no widening around it
    check_conv(CONVS[i], args, exe(*args)[0], dtype)


def grads_graph(cases, dtype):
    """The input and kernel gradients (conv_input_grad, conv_kernel_grad) of ``cases`` in
    one graph; its arguments (x, w, gy per case) and each result's number of products."""
    g, args, outs, terms = Graph("grads"), [], [], []
    for j, (n, c, o, sp, k, s, p, d, groups) in enumerate(cases):
        x_shape, w_shape = (n, c) + sp, (o, c // groups) + k
        out = conv_graph([cases[j]], "float64")[0].outputs[0].shape
        a = dict(stride=s, padding=p, dilation=d, groups=groups)
        x, w = g.add_input(f"x{j}", TensorType(x_shape, dtype)), g.add_input(
            f"w{j}", TensorType(w_shape, dtype))
        gy = g.add_input(f"gy{j}", TensorType(out, dtype))
        outs += [g.op("conv_input_grad", w, gy, input_size=sp, **a),
                 g.op("conv_kernel_grad", x, gy, kernel_size=k, **a)]
        args += [rand(x_shape, dtype, 3 * j + 3), rand(w_shape, dtype, 3 * j + 4),
                 rand(out, dtype, 3 * j + 5)]
        terms += [o // groups * int(np.prod(k)), n * int(np.prod(out[2:]))]
    g.set_outputs(outs)
    return g, args, terms


def check_grads(cases, dtype, got):
    """Each gradient within the bound of its float64 value (float32 sums, one rounding)."""
    g64, args, terms = grads_graph(cases, "float64")
    args = grads_graph(cases, dtype)[1]
    ref = backends.compile(g64, "reference")
    wide = [a.astype(np.float64) for a in args]
    exact, mags = ref(*wide), ref(*[np.abs(a) for a in wide])
    for o, e, m, r in zip(got, exact, mags, terms):
        assert o.dtype == args[0].dtype
        assert np.all(np.abs(o.astype(np.float64) - e) <= bound(e, m, r, dtype))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_triton_16_bit_conv_gradients(dtype):
    """On 16-bit operands, no widening: each the float32 sum of its products, rounded once."""
    g, args, _ = grads_graph(CONVS[1:2], dtype)
    exe = backends.compile(g, "triton", output="numpy")
    assert not any(n.op == "cast" for n in exe.graph.nodes)
    check_grads(CONVS[1:2], dtype, exe(*args))


@pytest.mark.parametrize("enabled", [True, False])
def test_llvm_bf16_conv_gradients(monkeypatch, enabled):
    """vdpbf16ps where the host has it (float32 sums over images and col2im overlaps,
    one rounding), the widened fallback with the feature forced off."""
    from irgraph.backends.llvm import gemm_bf16, jit
    monkeypatch.setattr(gemm_bf16, "ENABLED", enabled)
    cases = CONVS if enabled else CONVS[:2]
    g, args, _ = grads_graph(cases, "bfloat16")
    has = gemm_bf16.supported(jit.host()[2])
    assert all(gemm_bf16.native(v.node) == has for v in g.outputs)
    exe = backends.compile(g, "llvm", threads=2)
    assert ("vdpbf16ps" in exe.assembly()) == has
    check_grads(cases, "bfloat16", exe(*args))


# ---------------------------------------------------------------- matmul_f32
def mm_graph(dtype):
    """Odd K, N not a multiple of the 32-column strip, a batch, a vector operand."""
    g, args = Graph("mm_f32"), []

    def arg(name, shape):
        args.append(rand(shape, dtype, len(args) + 10))
        return g.add_input(name, TensorType(shape, dtype))
    a, b = arg("a", (13, 129)), arg("b", (129, 45))
    c, d = arg("c", (2, 5, 64), ), arg("d", (64, 33))
    v = arg("v", (64,))
    g.set_outputs([g.op("matmul_f32", a, b), g.op("matmul_f32", c, d),
                   g.op("matmul_f32", v, d)])
    return g, args


def check_mm_f32(g, args, got):
    """Against float64: the float32 sums, not rounded to 16 bits (so many results are not
    16-bit numbers)."""
    exact = [np.matmul(*(args[i].astype(np.float64) for i in pair))
             for pair in ((0, 1), (2, 3), (4, 3))]
    mags = [np.matmul(*(np.abs(args[i].astype(np.float64)) for i in pair))
            for pair in ((0, 1), (2, 3), (4, 3))]
    for o, e, m, node in zip(got, exact, mags, [v.node for v in g.outputs]):
        assert o.dtype == np.float32
        K = node.inputs[0].shape[-1]
        assert np.all(np.abs(o.astype(np.float64) - e) <= bound(e, m, K, "float32"))
        low = o.astype(g.inputs[0].type.np_dtype).astype(np.float32)
        assert np.mean(low != o) > 0.5


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("backend", ["reference", "llvm", "triton"])
def test_matmul_f32_vs_float64(backend, dtype):
    g, args = mm_graph(dtype)
    opts = {"llvm": dict(threads=2), "triton": dict(output="numpy")}.get(backend, {})
    exe = backends.compile(g, backend, **opts)
    if backend == "llvm":
        from irgraph.backends.llvm import gemm_bf16, jit
        has = dtype == "bfloat16" and gemm_bf16.supported(jit.host()[2])
        assert ("vdpbf16ps" in exe.assembly()) == has
    check_mm_f32(g, args, exe(*args))


def test_matmul_f32_llvm_fallback_without_the_feature(monkeypatch):
    from irgraph.backends.llvm import gemm_bf16
    monkeypatch.setattr(gemm_bf16, "ENABLED", False)
    g, args = mm_graph("bfloat16")
    exe = backends.compile(g, "llvm", threads=2)
    assert "vdpbf16ps" not in exe.assembly()
    check_mm_f32(g, args, exe(*args))


def test_matmul_f32_type_rule_and_gradient():
    """bf16 @ bf16 -> f32; other operand dtypes named in the error. The VJP: float32
    products of the float32 cotangent with the widened operand, rounded once to bf16."""
    from irgraph import IRError
    from irgraph.interpreter import interpret
    from irgraph.passes.autodiff import vjp
    g = Graph("bad")
    with pytest.raises(IRError, match="matmul_f32.*float64"):
        g.op("matmul_f32", g.add_input("a", TensorType((2, 3), "float64")),
             g.add_input("b", TensorType((3, 2), "float64")))
    with pytest.raises(IRError, match="dtypes differ"):
        g.op("matmul_f32", g.add_input("c", TensorType((2, 3), "bfloat16")),
             g.add_input("d", TensorType((3, 2), "float16")))
    g = Graph("grad")
    a = g.add_input("a", TensorType((2, 4, 7), "bfloat16"))
    b = g.add_input("b", TensorType((7, 5), "bfloat16"))
    g.set_outputs([g.op("matmul_f32", a, b)])
    vg = vjp(g, wrt=["a", "b"], of=[0])
    av, bv = rand((2, 4, 7), "bfloat16", 20), rand((7, 5), "bfloat16", 21)
    ct = np.random.default_rng(22).standard_normal((2, 4, 5)).astype(np.float32)
    _, ga, gb = interpret(vg, [av, bv, ct])
    A, B, C = av.astype(np.float64), bv.astype(np.float64), ct.astype(np.float64)
    for got, e, m, terms in [(ga, C @ B.T, np.abs(C) @ np.abs(B.T), 5),
                             (gb, np.einsum("nij,nik->jk", A, C),
                              np.einsum("nij,nik->jk", np.abs(A), np.abs(C)), 8)]:
        assert got.dtype == np.dtype(ml_dtypes.bfloat16)
        assert np.all(np.abs(got.astype(np.float64) - e) <= bound(e, m, terms, "bfloat16"))


def test_frontend_matmul_out_dtype():
    """``F.matmul(a, b, out_dtype="float32")`` on bf16 tensors traces ``matmul_f32``; the
    same dtype is a plain matmul; other requests are refused with the dtypes named."""
    import irgraph.frontend as fe
    from irgraph.frontend import F, TensorSpec
    g = fe.trace(lambda a, b: F.matmul(a, b, out_dtype="float32"),
                 TensorSpec((3, 64), "bfloat16"), TensorSpec((64, 5), "bfloat16"))
    assert [n.op for n in g.nodes] == ["matmul_f32"] and g.outputs[0].dtype == "float32"
    g = fe.trace(lambda a, b: F.matmul(a, b, out_dtype="bfloat16"),
                 TensorSpec((3, 4), "bfloat16"), TensorSpec((4, 5), "bfloat16"))
    assert [n.op for n in g.nodes] == ["matmul"] and g.outputs[0].dtype == "bfloat16"
    with pytest.raises(TypeError, match="out_dtype.*float32 operands"):
        fe.trace(lambda a, b: F.matmul(a, b, out_dtype="float64"),
                 TensorSpec((3, 4)), TensorSpec((4, 5)))
