"""The Triton backend proven for real GPUs without one: every distinct kernel specialization a
representative set of backend calls launches (golden models, convolution and pooling forward
and backward, matmul and convolution epilogues, every optimizer's fused update, elementwise
regions over every dtype, reductions) is recorded in the interpreter and compiled ahead of
time for sm_90 (H100) and sm_80 (A100) with the tiles a GPU would use
(backends/triton/aot.py). A compile error fails, naming the kernel, its specialization and
the call that launched it; so does a register spill in a hot kernel without an allowlist
entry. Generated kernels over every dtype are also checked against the reference backend."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import irgraph.backends as backends
import irgraph.frontend as fe
from irgraph.backends.triton import aot, codegen
from irgraph.backends.triton.kernels import optim as opt_kernels
from irgraph.backends.triton.runtime import default_device
from irgraph.frontend import nn, optim
from irgraph import Graph, TensorType
from irgraph.passes.fusion import fuse
from tests.golden import NAMES, load

RNG = np.random.default_rng(0)
DTYPES = ("float32", "float64", "int32", "int64", "bool")


# ---------------------------------------------------------------- literals
@pytest.mark.parametrize("value,dtype,text", [
    (-2.0, "int64", "-2"), (7, "int32", "7"), (2 ** 40, "int64", "1099511627776"),
    (1, "bool", "True"), (0.0, "bool", "False"), (0.25, "float32", "0.25"),
    (-3, "float64", "-3.0"), (float("inf"), "float32", "float('inf')"),
    (float("-inf"), "float64", "float('-inf')"), (float("nan"), "float32", "float('nan')")])
def test_literals_are_rendered_by_dtype(value, dtype, text):
    assert codegen.literal(value, dtype) == text


def test_float_literals_round_trip():
    for x in (0.1, 1 / 3, 1e-300, -2.5e38, 5e-324):
        assert float(eval(codegen.literal(x, "float64"))) == x
    x32 = float(np.float32(0.1))
    assert np.float32(eval(codegen.literal(0.1, "float32"))) == np.float32(x32)
    with pytest.raises(ValueError, match="float16"):
        codegen.literal(1, "float16")


# ---------------------------------------------------------------- generated kernels per dtype
def dtype_region(dt: str) -> Graph:
    """An elementwise region over ``dt`` with scalar ``full`` literals of ``dt``: broadcast,
    arithmetic, floor or true division, power, fmod of floats, comparison, where, casts."""
    g = Graph(f"ew_{dt}")
    x, y = g.add_input("x", TensorType((3, 5), dt)), g.add_input("y", TensorType((5,), dt))

    def full(v, d=dt):
        return g.op("full", shape=(), value=v, dtype=d)
    if dt == "bool":
        z = g.op("logical_or", g.op("logical_and", x, full(1)), g.op("ne", y, full(0)))
        w = g.op("where", z, x, g.op("eq", x, y))
        g.set_outputs([w, g.op("cast", w, dtype="int32")])
        return g
    floating = dt.startswith("float")
    c = full(-2.5 if floating else -2)
    big = full(float("inf") if floating else (2 ** 40 if dt == "int64" else 2 ** 20))
    a = g.op("minimum", g.op("add", g.op("mul", x, c), y), big)
    d = g.op("div", a, c)
    p = g.op("pow", g.op("abs", x), full(3))
    w = g.op("where", g.op("gt", a, c), d, g.op("neg", p))
    g.set_outputs([w, g.op("cast", g.op("sign", w), dtype="bool"),
                   g.op("cast", w, dtype="float64" if dt != "float64" else "int64")]
                  + ([g.op("fmod", a, c)] if floating else []))     # libdevice on a GPU
    return g


def dtype_args(dt: str) -> list[np.ndarray]:
    if dt == "bool":
        return [RNG.integers(0, 2, (3, 5)).astype(bool), RNG.integers(0, 2, 5).astype(bool)]
    if dt.startswith("int"):
        return [RNG.integers(-4, 5, (3, 5)).astype(dt), RNG.integers(-9, 10, 5).astype(dt)]
    return [RNG.standard_normal((3, 5)).astype(dt), RNG.standard_normal(5).astype(dt)]


@pytest.mark.parametrize("dt", DTYPES)
def test_generated_elementwise_kernel_over_every_dtype_matches_reference(dt):
    g = fuse(dtype_region(dt))
    fused = [n for n in g.nodes if n.op == "fused"]
    assert fused and all(codegen.supports(n.attrs["body"]) for n in fused)
    exe = backends.compile(g, "triton")
    assert "tl.full(" in exe.source() and len(exe.ctx.notes) == len(fused)
    a = dtype_args(dt)
    want = backends.compile(dtype_region(dt), "reference")(*a)
    for w, o in zip(want, exe(*a)):
        assert o.dtype == w.dtype
        if o.dtype.kind == "f":
            np.testing.assert_allclose(o, w, rtol=1e-6, atol=1e-7)
        else:
            np.testing.assert_array_equal(o, w)


# ---------------------------------------------------------------- the representative calls
def _run_graph(g: Graph, dtype=np.float32, fused: bool = True, **options) -> None:
    a = [RNG.standard_normal(v.shape).astype(dtype) for v in g.inputs]
    backends.compile(fuse(g) if fused else g, "triton", **options)(*a)


def _epilogues() -> None:
    g = Graph("lin")                         # linear + bias + relu + residual, an int literal
    x, w = g.add_input("x", TensorType((5, 7))), g.add_input("w", TensorType((7, 3)))
    b, r = g.add_input("b", TensorType((3,))), g.add_input("r", TensorType((5, 3)))
    three = g.op("cast", g.op("full", shape=(), value=3, dtype="int64"), dtype="float32")
    h = g.op("relu", g.op("add", g.op("matmul", x, w), b))
    g.set_outputs([g.op("add", g.op("mul", h, three), r)])
    _run_graph(g)
    g = Graph("bmm")                         # batched, an operand broadcast over rows
    x, w = g.add_input("x", TensorType((2, 4, 3))), g.add_input("w", TensorType((3, 6)))
    s = g.add_input("s", TensorType((2, 1, 6)))
    g.set_outputs([g.op("tanh", g.op("mul", g.op("matmul", x, w), s))])
    _run_graph(g)
    for dtype in (np.float32, np.float64):   # conv + per-channel bias + relu + residual
        t = np.dtype(dtype).name
        g = Graph("convblock")
        x = g.add_input("x", TensorType((2, 4, 7, 6), t))
        w = g.add_input("w", TensorType((6, 2, 3, 3), t))
        b, r = g.add_input("b", TensorType((6, 1, 1), t)), g.add_input("r", TensorType(
            (2, 6, 4, 3), t))
        y = g.op("conv", x, w, stride=(2, 2), padding=(1, 1, 1, 1), dilation=(1, 1), groups=2)
        g.set_outputs([g.op("add", g.op("relu", g.op("add", y, b)), r)])
        _run_graph(g, dtype)


def _conv_pool() -> None:
    for xs, ws, stride, pad, dil, groups, dtype, tf32 in (
            ((2, 4, 9, 8), (6, 2, 3, 2), (2, 1), (1, 0), (2, 1), 2, np.float32, False),
            ((2, 4, 9, 8), (6, 2, 3, 2), (2, 1), (1, 0), (2, 1), 2, np.float32, True),
            ((1, 2, 5, 4, 6), (4, 2, 2, 3, 2), (1, 2, 1), (1, 0, 1), (1, 1, 1), 1, np.float64,
             False)):
        t = np.dtype(dtype).name
        attrs = dict(stride=stride, padding=tuple(p for q in pad for p in (q, q)),
                     dilation=dil, groups=groups)
        g = Graph("conv")
        x, w = g.add_input("x", TensorType(xs, t)), g.add_input("w", TensorType(ws, t))
        y = g.op("conv", x, w, **attrs)
        gy = g.add_input("gy", TensorType(y.shape, t))
        g.set_outputs([y, g.op("conv_input_grad", w, gy, input_size=xs[2:], **attrs),
                       g.op("conv_kernel_grad", x, gy, kernel_size=ws[2:], **attrs)])
        _run_graph(g, dtype, fused=False, allow_tf32=tf32)
    g = Graph("pool")
    x = g.add_input("x", TensorType((2, 3, 7, 6)))
    mp = dict(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1, 1, 1), dilation=(1, 1),
              ceil_mode=False)
    ap = dict(kernel_size=(2, 2), stride=(2, 2), padding=(0, 0, 0, 0), ceil_mode=True,
              count_include_pad=True, divisor_override=None)
    m, a = g.op("max_pool", x, **mp), g.op("avg_pool", x, **ap)
    gm, ga = g.add_input("gm", TensorType(m.shape)), g.add_input("ga", TensorType(a.shape))
    g.set_outputs([m, a, g.op("max_pool_grad", x, gm, **mp),
                   g.op("avg_pool_grad", ga, input_size=(7, 6), **ap)])
    _run_graph(g, fused=False)


def _reductions() -> None:
    for op in ("sum", "mean", "max", "min"):
        g = Graph("red")
        x, s = g.add_input("x", TensorType((3, 4, 5))), g.add_input("s", TensorType((4, 1)))
        two = g.op("cast", g.op("full", shape=(), value=2, dtype="int32"), dtype="float32")
        r = g.op(op, g.op("exp", g.op("mul", g.op("mul", x, s), two)), axis=(1,))
        g.set_outputs([g.op("log", r)])
        _run_graph(g)


OPTIMIZERS = {
    "sgd": lambda: optim.SGD(lr=optim.LinearDecay(0.1, 0.01, 2)),
    "momentum": lambda: optim.SGD(lr=0.05, momentum=0.9, nesterov=True, convention="torch",
                                  weight_decay=0.01),
    "adagrad": lambda: optim.AdaGrad(lr=0.1),
    "rmsprop": lambda: optim.RMSprop(lr=0.01, momentum=0.5, nesterov=True),
    "adam-clip-norm": lambda: optim.Adam(lr=0.01, clip_grad_norm=0.5),
    "adam-clip-value-polyak": lambda: optim.Adam(lr=0.01, convention="torch",
                                                 clip_grad_value=0.1, polyak=0.9),
}


def _train(opt_fn) -> None:
    """A training step of an MLP (the golden cnn_train covers convolution training)."""
    fe.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    step = fe.compile_train(model, nn.CrossEntropyLoss(), opt_fn(), fe.TensorSpec((4, 5)),
                            fe.TensorSpec((4,), "int64"), backend="triton")
    step(RNG.standard_normal((4, 5)).astype(np.float32), RNG.integers(0, 3, 4).astype(np.int64))


def _fused_adam() -> None:
    dev = default_device()
    sizes = [(3, 5), (1029,), (7,)]
    ps = [torch.randn(s).to(dev) for s in sizes]
    plan = opt_kernels.MultiTensorUpdate("adam_update", [p.numel() for p in ps], "float32",
                                         dev, convention="torch")
    scal = [torch.tensor(v, dtype=torch.float32, device=dev) for v in (0.01, 0.9, 0.99, 1e-8, 1)]
    zeros = [[torch.zeros_like(p) for p in ps] for _ in range(2)]
    plan([ps, [torch.randn_like(p) for p in ps], *zeros], [[v] * len(ps) for v in scal],
         [ps, *zeros])


def _golden(name: str) -> None:
    graph, args, _ = load(name)
    backends.compile(graph, "triton")(*[a.copy() for a in args])


def _dtype(dt: str) -> None:
    backends.compile(fuse(dtype_region(dt)), "triton")(*dtype_args(dt))


def _low_precision(dt: str) -> None:
    """16-bit floats: a matmul on 16-bit operands (float32 accumulation) and with a float32
    result (matmul_f32), the convolution kernels on 16-bit operands (forward, input and
    kernel gradients), the rounding casts and copies around widened ops, an elementwise and
    a reduction region."""
    g = Graph(f"lowp_{dt}")
    x, w = g.add_input("x", TensorType((5, 7), dt)), g.add_input("w", TensorType((7, 3), dt))
    b, y = g.add_input("b", TensorType((3,), dt)), g.add_input("y", TensorType((7,), dt))
    img = g.add_input("img", TensorType((2, 4, 6, 6), dt))
    k = g.add_input("k", TensorType((8, 2, 3, 3), dt))
    gy = g.add_input("gy", TensorType((2, 8, 6, 6), dt))
    conv = dict(stride=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1), groups=2)
    h = g.op("tanh", g.op("add", g.op("matmul", x, w), b))
    g.set_outputs([h, g.op("tanh", g.op("mul", g.op("add", x, y), y)),
                   g.op("sum", g.op("mul", g.op("exp", x), y), axis=1),
                   g.op("transpose", x, perm=(1, 0)), g.op("cast", h, dtype="float32"),
                   g.op("matmul_f32", x, w), g.op("conv", img, k, **conv),
                   g.op("conv_input_grad", k, gy, input_size=(6, 6), **conv),
                   g.op("conv_kernel_grad", img, gy, kernel_size=(3, 3), **conv)])
    a = [RNG.standard_normal(v.shape).astype(np.float32).astype(dt) for v in g.inputs]
    for graph in (g, fuse(g)):
        backends.compile(graph, "triton")(*a)


def _attention() -> None:
    """The flash attention kernel: causal, bool and additive masks and none, head dims 64 and
    128 (the widest tiles), IEEE and TF32 products, float32 and bfloat16 operands."""
    for e, mask, tf32, dt in ((64, "causal", False, "float32"), (128, "bool", False, "float32"),
                              (128, "add", True, "float32"), (64, None, True, "bfloat16")):
        g = Graph(f"attention_{e}")
        q, k, v = (g.add_input(n, TensorType((1, 2, 19, e), dt)) for n in "qkv")
        scores = g.op("matmul", g.op("mul", q, g.op("full", shape=(), value=e ** -0.5,
                                                     dtype=dt)),
                      g.op("transpose", k, perm=(0, 1, 3, 2)))
        if mask == "add":
            scores = g.op("add", scores, g.add_input("m", TensorType((19, 19))))
        elif mask is not None:
            keep = (g.add_input("m", TensorType((1, 1, 19, 19), "bool")) if mask == "bool" else
                    g.op("ge", g.op("iota", shape=(19, 19), axis=0, dtype="int64"),
                         g.op("iota", shape=(19, 19), axis=1, dtype="int64")))
            scores = g.op("where", keep, scores,
                          g.op("full", shape=(), value=float("-inf"), dtype="float32"))
        g.set_outputs([g.op("matmul", g.op("softmax", scores, axis=3), v)])
        a = [RNG.standard_normal(x.shape).astype(np.float32).astype(x.type.np_dtype)
             if x.type.dtype != "bool" else np.ones(x.shape, bool) for x in g.inputs]
        exe = backends.compile(g, "triton", allow_tf32=tf32)
        assert "flash attention" in exe.source()
        exe(*a)


def _row_norm() -> None:
    """The row-normalization kernel: a row over two blocks of the widest tile (float32),
    many short rows per program (bfloat16), and a layer norm's gradient graph whose region
    exports its intermediates to the generated kernel of its backward's rows region."""
    for shape, dt in (((3, 5000), "float32"), ((40, 45), "bfloat16")):
        g = fe.trace(lambda a, w, b: fe.F.layer_norm(a, shape[-1:], w, b),
                     fe.TensorSpec(shape, dt), fe.TensorSpec(shape[-1:], dt),
                     fe.TensorSpec(shape[-1:], dt))
        exe = backends.compile(g, "triton")
        assert "row normalization" in exe.source()
        exe(*[RNG.standard_normal(v.shape).astype(np.float32).astype(v.type.np_dtype)
              for v in g.inputs])
    ln = nn.LayerNorm(37)
    step = fe.grad(lambda a: (ln(a) * a).sum(), fe.TensorSpec((6, 37)), model=ln,
                   wrt=["a", "weight", "bias"], backend="triton")
    step(RNG.standard_normal((6, 37)).astype(np.float32))


CALLS = {**{f"golden {n}": (lambda n=n: _golden(n)) for n in NAMES},
         "conv/pool forward and backward": _conv_pool,
         "matmul and conv epilogues": _epilogues,
         "flash attention": _attention,
         "row normalization": _row_norm,
         "reduction regions": _reductions,
         **{f"train step {k}": (lambda f=f: _train(f)) for k, f in OPTIMIZERS.items()},
         "fused adam": _fused_adam,
         **{f"elementwise region {dt}": (lambda dt=dt: _dtype(dt)) for dt in DTYPES},
         **{f"16-bit floats {dt}": (lambda dt=dt: _low_precision(dt))
            for dt in ("float16", "bfloat16")}}


def record_calls(calls: dict) -> list[aot.Launch]:
    with aot.record() as rec:
        for label, call in calls.items():
            rec.label = f"tests/test_triton_aot.py::{label}"
            call()
    return list(rec.launches.values())


@pytest.fixture(scope="module")
def compiled():
    launches = record_calls(CALLS)
    results = aot.compile_launches(launches)
    print("\n" + aot.table(results))
    return launches, results


def test_gate_covers_the_hot_kernels(compiled):
    launches, results = compiled
    names = {launch.name for launch in launches}
    for kernel in ("conv_fwd_kernel", "conv_input_grad_kernel", "conv_kernel_grad_kernel",
                   "matmul_kernel", "pool_kernel", "multi_tensor_kernel", "elementwise_kernel",
                   "reduce_rows_kernel", "bn_apply_kernel", "attention_kernel",
                   "row_norm_kernel"):
        assert kernel in names, kernel
    for prefix in ("fused_conv_", "fused_mm_", "fused_red_", "fused_rows_"):
        assert any(n.startswith(prefix) for n in names), prefix
    conv = [r for r in results if r.kernel.endswith("conv_fwd_kernel")]
    assert conv and all("BLOCK_M=16" not in r.spec for r in conv)   # GPU tiles, not the
    assert {r.arch for r in results} == set(aot.TARGETS)            # interpreter's


def test_every_launch_compiles_for_sm80_and_sm90(compiled):
    errors = [line for line in aot.failures(compiled[1]) if line.startswith("compile error")]
    assert not errors, "\n".join(errors)


def test_hot_kernels_do_not_spill(compiled):
    spills = [line for line in aot.failures(compiled[1]) if line.startswith("spills")]
    assert not spills, "\n".join(spills)


def test_gate_names_a_kernel_the_compiler_rejects():
    """A float literal for an integer ``tl.full`` runs in the interpreter but does not
    compile: the gate reports it with the kernel and the call that launched it."""
    src = ("\n\n@triton.jit\ndef bad_int_full(out_ptr, BLOCK: tl.constexpr):\n"
           "    offs = tl.arange(0, BLOCK)\n"
           "    tl.store(out_ptr + offs, tl.full((BLOCK,), -2.0, tl.int64))\n")
    kernel = codegen.load_kernel(src, "bad_int_full")
    out = torch.empty(16, dtype=torch.int64)
    with aot.record() as rec:
        rec.label = "a bad literal"
        kernel[(1,)](out, BLOCK=16)
    assert out.tolist() == [-2] * 16                                # the interpreter runs it
    results = aot.compile_launches(rec.launches.values(), jobs=1)
    bad = aot.failures(results)
    assert len(bad) == len(aot.TARGETS)
    for line in bad:
        assert line.startswith("compile error: ") and "bad_int_full" in line
        assert "a bad literal" in line and "*i64" in line


# ---------------------------------------------------------------- bench/gpu_check.sh
def _gpu_check(tmp_path, *args):
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TMPDIR=str(tmp_path))
    before = sorted(os.listdir(root))
    proc = subprocess.run(["bash", str(root / "bench" / "gpu_check.sh"), *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert sorted(os.listdir(root)) == before             # nothing new in the repository
    assert list(tmp_path.iterdir()) == []                  # nor in the working folder
    return proc, root


def test_gpu_check_without_a_gpu_fails_with_a_clear_message(tmp_path):
    proc, _ = _gpu_check(tmp_path)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "gpu_check: no CUDA device" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr and "passed" not in proc.stdout


def test_gpu_check_refuses_an_output_folder_in_the_repository(tmp_path):
    root = Path(__file__).resolve().parent.parent
    proc, _ = _gpu_check(tmp_path, str(root / "gpu_check_out"))
    assert proc.returncode == 2 and "inside the repository" in proc.stderr
