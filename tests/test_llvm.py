"""The LLVM backend's own behaviour: memory safety at awkward sizes (guard regions), NaN/Inf
and integer semantics as numpy's, matmul against numpy, threads, the disk cache, inspection,
and errors that name what is wrong."""
from __future__ import annotations

import re

import numpy as np
import pytest

import irgraph.backends as backends
from irgraph.backends import llvm
from irgraph.backends.llvm import NativeError
from irgraph import Graph, IRError, TensorType
from tests.helpers import run_guarded

SIZES = [1, 2, 3, 7, 8, 9, 13, 16, 17, 31, 33]   # 1, primes, around the vector widths


def one(op, *types, **attrs) -> Graph:
    g = Graph(op)
    xs = [g.add_input(f"x{i}", t) for i, t in enumerate(types)]
    g.set_outputs(g.add_node(op, xs, attrs))
    return g


RNG = np.random.default_rng(0)


@pytest.mark.parametrize("n", SIZES)
def test_elementwise_reduce_and_broadcast_stay_in_bounds(n):
    """Inputs with NaN guards (a stray read would poison a result), outputs with sentinel
    guards (a stray write would change them)."""
    g = Graph("ew")
    x = g.add_input("x", TensorType((3, n)))
    b = g.add_input("b", TensorType((n,)))
    y = g.op("relu", g.op("add", g.op("mul", x, x), b))
    g.set_outputs([y, g.op("sum", y, axis=(1,)), g.op("max", y, axis=(0,)),
                   g.op("transpose", y, perm=(1, 0)), g.op("softmax", y, axis=0)])
    exe = backends.compile(g, "llvm", threads=2)
    xa, ba = RNG.standard_normal((3, n)).astype(np.float32), RNG.standard_normal(n).astype(
        np.float32)
    got = run_guarded(exe, [xa, ba])
    ya = np.maximum(xa * xa + ba, 0)
    e = np.exp(ya - ya.max(0))
    for r, want in zip(got, [ya, ya.sum(1), ya.max(0), ya.T, e / e.sum(0)]):
        np.testing.assert_allclose(r, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (1, 7, 1), (3, 5, 7), (13, 17, 31), (7, 1, 33),
                                   (33, 29, 17), (1, 300, 19), (97, 260, 5)])
def test_matmul_matches_numpy_at_awkward_sizes(m, k, n):
    """Packed GEMM edges: partial MR x NR tiles, K past one KC block, guarded buffers."""
    exe = backends.compile(one("matmul", TensorType((m, k)), TensorType((k, n))), "llvm",
                           threads=2)
    a = RNG.standard_normal((m, k)).astype(np.float32)
    b = RNG.standard_normal((k, n)).astype(np.float32)
    (c,) = run_guarded(exe, [a, b])
    np.testing.assert_allclose(c, a @ b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sa,sb", [((4,), (4, 3)), ((2, 3, 4), (4,)), ((2, 1, 3, 5), (4, 5, 2)),
                                   ((5,), (5,)), ((3, 7, 13, 9), (9, 11)), ((1, 5, 4), (4, 6))])
@pytest.mark.parametrize("dtype", ["float32", "float64", "int64"])
def test_batched_and_vector_matmul_numpy_rules(sa, sb, dtype):
    exe = backends.compile(one("matmul", TensorType(sa, dtype), TensorType(sb, dtype)), "llvm")
    a = (RNG.standard_normal(sa) * 4).astype(dtype)
    b = (RNG.standard_normal(sb) * 4).astype(dtype)
    (c,) = exe(a, b)
    np.testing.assert_allclose(c, np.matmul(a, b), rtol=1e-5, atol=1e-5)


def test_large_matmul_threads_agree():
    g = one("matmul", TensorType((130, 300)), TensorType((300, 70)))
    a = RNG.standard_normal((130, 300)).astype(np.float32)
    b = RNG.standard_normal((300, 70)).astype(np.float32)
    c1 = backends.compile(g, "llvm", threads=1)(a, b)[0]
    c2 = backends.compile(g, "llvm", threads=2)(a, b)[0]
    np.testing.assert_allclose(c1, a @ b, rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(c1, c2)     # same blocking, same sums, split differently


SPECIAL = np.array([np.nan, -np.inf, np.inf, -0.0, 0.0, 1.5, -2.0, np.nan], np.float32)


@pytest.mark.parametrize("op,fn", [("maximum", np.maximum), ("minimum", np.minimum)])
def test_maximum_minimum_propagate_nan_like_numpy(op, fn):
    x = SPECIAL
    y = np.roll(SPECIAL, 3)
    (got,) = backends.compile(one(op, TensorType((8,)), TensorType((8,))), "llvm")(x, y)
    np.testing.assert_array_equal(got, fn(x, y))


def test_relu_max_argmax_softmax_with_nan_like_numpy():
    g = Graph("nan")
    x = g.add_input("x", TensorType((2, 8)))
    g.set_outputs([g.op("relu", x), g.op("max", x, axis=(1,)), g.op("min", x, axis=(1,)),
                   g.op("argmax", x, axis=1), g.op("softmax", x, axis=1),
                   g.op("sum", x, axis=(1,))])
    a = np.stack([SPECIAL, np.array([1, 3, -1, 3, 0, 2, 3, 1], np.float32)])
    relu, mx, mn, am, sm, s = backends.compile(g, "llvm")(a)
    np.testing.assert_array_equal(relu, np.maximum(a, 0))
    np.testing.assert_array_equal(mx, a.max(1))
    np.testing.assert_array_equal(mn, a.min(1))
    np.testing.assert_array_equal(am, a.argmax(1))           # first NaN / first maximum
    assert np.all(np.isnan(sm[0])) and np.isnan(s[0])
    e = np.exp(a[1] - a[1].max())
    np.testing.assert_allclose(sm[1], e / e.sum(), rtol=1e-6)


def test_inf_arithmetic_like_numpy():
    g = Graph("inf")
    x = g.add_input("x", TensorType((8,)))
    g.set_outputs([g.op(op, x) for op in ("exp", "log", "sqrt", "tanh", "sigmoid", "rsqrt",
                                          "abs", "sign")])
    with np.errstate(all="ignore"):
        want = [np.exp(SPECIAL), np.log(SPECIAL), np.sqrt(SPECIAL), np.tanh(SPECIAL),
                1 / (1 + np.exp(-SPECIAL.astype(np.float64))), 1 / np.sqrt(SPECIAL),
                np.abs(SPECIAL), np.sign(SPECIAL)]
    for got, w in zip(backends.compile(g, "llvm")(SPECIAL), want):
        np.testing.assert_allclose(got, w.astype(np.float32), rtol=1e-6, equal_nan=True)


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_integer_division_and_power_like_numpy(dtype):
    info = np.iinfo(dtype)
    x = np.array([7, -7, 7, -7, 0, 5, info.min, info.min, 3, -9], dtype)
    y = np.array([2, 2, -2, -2, 3, 0, -1, 1, 0, 4], dtype)
    g = Graph("idiv")
    a, b = g.add_input("a", TensorType((10,), dtype)), g.add_input("b", TensorType((10,), dtype))
    g.set_outputs([g.op("div", a, b), g.op("pow", a, g.op("abs", b))])
    q, p = backends.compile(g, "llvm")(x, y)
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(q, np.floor_divide(x, y))
        np.testing.assert_array_equal(p, np.power(x, np.abs(y)))


def test_bad_class_index_is_an_error_naming_the_node():
    exe = backends.compile(one("nll_loss", TensorType((2, 3)), TensorType((2,), "int64")),
                           "llvm")
    with pytest.raises(NativeError, match=r"nll_loss.*%x0"):
        exe(np.zeros((2, 3), np.float32), np.array([0, 3]))


def test_check_finite_raises_the_reference_error():
    from irgraph.ops.debug import NonFiniteError
    g = Graph("chk")
    x = g.add_input("x", TensorType((3,)))
    y = g.op("log", x)
    g.set_outputs([g.op("check_finite", y, x, checked_op="log", node="%1 = log(%x)",
                        names=("x",))])
    exe = backends.compile(g, "llvm")
    np.testing.assert_allclose(exe(np.ones(3, np.float32))[0], 0)
    with pytest.raises(NonFiniteError, match="log"):
        exe(np.array([1, 0, 2], np.float32))


def test_wrong_inputs_are_rejected_before_native_code():
    exe = backends.compile(one("add", TensorType((2, 3)), TensorType((2, 3))), "llvm")
    ok = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"%x1 has shape \(3, 2\)"):
        exe(ok, np.zeros((3, 2), np.float32))
    with pytest.raises(TypeError, match="%x0 has dtype float64"):
        exe(np.zeros((2, 3)), ok)
    with pytest.raises(TypeError, match="takes 2 arguments"):
        exe(ok)
    strided = np.zeros((2, 6), np.float32)[:, ::2]        # non-contiguous: copied, not misread
    strided[:] = 1
    np.testing.assert_array_equal(exe(strided, ok)[0], 1)


def test_op_without_lowering_is_a_compile_error_naming_it(monkeypatch):
    monkeypatch.delitem(llvm.LOWERINGS, "tanh")
    with pytest.raises(IRError, match="cannot compile op 'tanh'"):
        backends.compile(one("tanh", TensorType((2,))), "llvm", cache=False)


def test_unknown_option_is_an_error():
    with pytest.raises(TypeError, match="unknown option"):
        backends.compile(one("neg", TensorType((2,))), "llvm", fast=True)


def test_disk_cache_hit_and_new_shape_compiles_anew(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IRGRAPH_CACHE_DIR", str(tmp_path))
    g = one("add", TensorType((5,)), TensorType((5,)))
    first = backends.compile(g, "llvm", verbose=True)
    assert not first.cache_hit and "cache miss" in capsys.readouterr().out
    again = backends.compile(one("add", TensorType((5,)), TensorType((5,))), "llvm",
                             verbose=True)
    assert again.cache_hit and "cache hit" in capsys.readouterr().out
    x = np.arange(5, dtype=np.float32)
    np.testing.assert_array_equal(again(x, x)[0], 2 * x)
    other = backends.compile(one("add", TensorType((6,)), TensorType((6,))), "llvm",
                             verbose=True)
    assert not other.cache_hit and "compiled anew" in capsys.readouterr().out
    assert llvm.clear_cache() >= 2
    assert not backends.compile(g, "llvm").cache_hit


def test_cache_key_includes_options(tmp_path, monkeypatch):
    monkeypatch.setenv("IRGRAPH_CACHE_DIR", str(tmp_path))
    g = one("neg", TensorType((4,)))
    assert not backends.compile(g, "llvm", threads=1).cache_hit
    assert not backends.compile(g, "llvm", threads=2).cache_hit
    assert backends.compile(g, "llvm", threads=2).cache_hit


@pytest.mark.parametrize("shape", [(64, 6, 7, 9), (3, 1, 5, 70), (129, 70), (2, 3, 1, 4, 5)])
@pytest.mark.parametrize("op,dtype", [("sum", "float32"), ("mean", "float64"),
                                      ("max", "float32"), ("min", "int64")])
def test_reductions_over_every_axis_set_like_numpy(shape, op, dtype):
    """Every subset of axes (runs of reduced and kept axes in any order: batch-norm's
    (0, 2, 3), a bias gradient's (0,), a loss's all) on 1 and 2 threads, NaN included."""
    import itertools
    a = (RNG.standard_normal(shape) * 10).astype(dtype)
    if dtype == "float32":
        a.flat[RNG.integers(a.size)] = np.nan
    rank = len(shape)
    for k in range(1, rank + 1):
        for axes in itertools.combinations(range(rank), k):
            keep = bool(len(axes) % 2)
            want = getattr(np, op)(a, axis=axes, keepdims=keep)
            g = one(op, TensorType(shape, dtype), axis=axes, keepdims=keep)
            for threads in (1, 2):
                got = run_guarded(backends.compile(g, "llvm", threads=threads), [a])[0]
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4,
                                           err_msg=f"{op}{axes} threads={threads}")


@pytest.mark.parametrize("width", [1, 2, 3, 5, 8, 9, 14, 17])
@pytest.mark.parametrize("kernel,dtype", [((2, 2), "float32"), ((2, 2), "float64"),
                                          ((3, 3), "float32"), ((2,), "float32"),
                                          ((2, 2, 2), "float32")])
def test_tiling_max_pool_and_gradient_like_the_reference(width, kernel, dtype):
    """Windows that tile x (kernel == stride): the vector path (pairs along the last axis,
    a last overlapping vector instead of a scalar tail) and the scalar one, with ties (the
    first maximum gets the gradient) and NaN (it wins), against the reference backend."""
    d = len(kernel)
    spatial = tuple(k * (width if i == d - 1 else 2) for i, k in enumerate(kernel))
    shape = (2, 3) + spatial
    x = np.round(RNG.standard_normal(shape) * 2).astype(dtype)      # many ties
    x.flat[RNG.integers(x.size, size=3)] = np.nan
    attrs = dict(kernel_size=kernel, stride=kernel, padding=(0,) * (2 * d), dilation=(1,) * d,
                 ceil_mode=False)
    fwd = one("max_pool", TensorType(shape, dtype), **attrs)
    out_t = fwd.outputs[0].type
    gy = RNG.standard_normal(out_t.shape).astype(dtype)
    grad = one("max_pool_grad", TensorType(shape, dtype), out_t, **attrs)
    for g, args in ((fwd, [x]), (grad, [x, gy])):
        want = backends.compile(g, "reference")(*args)[0]
        for threads in (1, 2):
            got = run_guarded(backends.compile(g, "llvm", threads=threads), args)[0]
            np.testing.assert_array_equal(got, want)


def test_profile_script_reports_a_training_step(tmp_path):
    """bench/profile_llvm.py (a script, run as a user would) profiles a compiled MLP
    training step: a per-node table of the slowest nodes, then the share of each op. Which
    node is slowest depends on the machine's load, so only the table's consistency is
    checked: rows in order, shares summing to the whole, every op of the step present."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "bench" / "profile_llvm.py"), "mlp",
                          "--steps", "5", "--top", "3"], capture_output=True, text=True,
                         cwd=tmp_path, timeout=300, check=True).stdout
    head = re.search(r"ms per step over 5 steps, (\d+) nodes", out)
    assert head, out
    n_nodes = int(head.group(1))
    table = out.split("node\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert len(table) == 3
    node_shares = [float(row.split("%")[0]) for row in table]
    assert node_shares == sorted(node_shares, reverse=True) and min(node_shares) >= 0
    by_op = [row.split() for row in out.split("op\n", 1)[1].strip().splitlines()]
    ops = {r[2]: (float(r[0].rstrip("%")), int(r[1])) for r in by_op}
    assert {"matmul", "fused", "relu", "log_softmax"} <= set(ops)
    # 3 layers: 2 + 3 + 3 GEMMs; each Adam update one region with its weight decay
    # (fuse_updates)
    assert ops["matmul"][1] == 8 and ops["fused"][1] == 6 and "adam_update" not in ops
    assert sum(n for _, n in ops.values()) <= n_nodes
    assert abs(sum(s for s, _ in ops.values()) - 100.0) < 0.1 * len(ops) + 0.05


def test_profile_counts_cycles_per_node():
    """profile=True: every node that ran has cycles, counts accumulate over calls, and the
    shares and milliseconds are consistent (no assertion on which node is slower: that
    depends on the machine's load)."""
    g = Graph("p")
    x = g.add_input("x", TensorType((256, 256)))
    s = g.add_input("s", TensorType((4,)))
    g.set_outputs([g.op("matmul", x, x), g.op("add", s, s)])
    exe = backends.compile(g, "llvm", threads=2, profile=True)
    a = RNG.standard_normal((256, 256)).astype(np.float32)
    for _ in range(3):
        out = exe(a, np.ones(4, np.float32))
    np.testing.assert_allclose(out[0], a @ a, rtol=1e-4, atol=1e-3)
    rows = exe.profile()
    assert sorted(r["op"] for r in rows) == ["add", "matmul"]
    assert all(r["cycles"] > 0 for r in rows)
    assert [r["cycles"] for r in rows] == sorted((r["cycles"] for r in rows), reverse=True)
    assert abs(sum(r["share"] for r in rows) - 1) < 1e-9
    assert all(r["ms"] >= 0 for r in rows)
    before = {r["op"]: r["cycles"] for r in rows}
    exe(a, np.ones(4, np.float32))
    after = {r["op"]: r["cycles"] for r in exe.profile()}
    assert all(after[op] > before[op] for op in before)
    assert sorted(exe.profile_by_op()) == sorted(
        (r["op"], 1, r["share"]) for r in exe.profile())
    with pytest.raises(RuntimeError, match="profile=True"):
        backends.compile(g, "llvm").profile()


def test_inspection_shows_llvm_ir_and_assembly():
    exe = backends.compile(one("matmul", TensorType((8, 8)), TensorType((8, 8))), "llvm")
    ir_text = exe.llvm_ir()
    assert "define void @\"irgraph_entry\"" in ir_text and "irgraph_gemm_float32" in ir_text
    assert "irgraph_entry" in exe.assembly()
    assert "vector.body" in backends.compile(
        one("add", TensorType((64,)), TensorType((64,))), "llvm").llvm_ir(optimized=True)


def test_donated_outputs_update_arguments_in_place():
    g = Graph("step")
    w = g.add_param("w", TensorType((3,)))
    gr = g.add_input("g", TensorType((3,)))
    lr = g.add_input("lr", TensorType(()))
    g.set_outputs([g.op("sgd_update", w, gr, lr)])
    g.donations = {0: 2}
    exe = backends.compile(g, "llvm")
    wa = np.ones(3, np.float32)
    out = exe(np.full(3, 2, np.float32), np.float32(0.5), wa)
    assert out[0] is wa
    np.testing.assert_array_equal(wa, 0)


def test_reshapes_share_their_operand_buffer_safely():
    """A reshape that is not a graph output is not run: it reads its operand's buffer (whose
    lifetime then covers the view's readers). A donated update of an argument whose
    reshaped view is still read later, or read by the update itself, is not done in place
    (the view would see new values); a reshape that is a graph output is a copy."""
    g = Graph("views")
    w = g.add_param("w", TensorType((4, 6)))
    gr = g.add_input("g", TensorType((4, 6)))
    lr = g.add_input("lr", TensorType(()))
    wv = g.op("reshape", g.op("reshape", w, shape=(24,)), shape=(6, 4))    # a view of w
    h = g.op("exp", g.op("reshape", gr, shape=(2, 12)))
    new_w = g.op("sgd_update", w, gr, lr)
    late = g.op("mul", wv, g.op("reshape", h, shape=(6, 4)))              # reads w's view
    g.set_outputs([new_w, late, g.op("reshape", h, shape=(24,))])
    g.donations = {0: 2}
    exe = backends.compile(g, "llvm", threads=2)
    assert sum(n.op == "reshape" for n in g.nodes) == 5 and len(exe.plan.skip) == 4
    assert exe.plan.inplace == {}
    wa = RNG.standard_normal((4, 6)).astype(np.float32)
    ga = RNG.standard_normal((4, 6)).astype(np.float32)
    w0 = wa.copy()
    got = exe(ga, np.float32(0.5), wa)
    np.testing.assert_allclose(got[0], w0 - 0.5 * ga, rtol=1e-6)
    np.testing.assert_allclose(wa, w0 - 0.5 * ga, rtol=1e-6)        # donated: updated
    np.testing.assert_allclose(got[1], w0.reshape(6, 4) * np.exp(ga).reshape(6, 4), rtol=1e-5)
    np.testing.assert_allclose(got[2], np.exp(ga).ravel(), rtol=1e-5)
    # the update reads a view of the very buffer it would overwrite: not in place either
    g2 = Graph("self_view")
    w2 = g2.add_param("w", TensorType((4, 6)))
    lr2 = g2.add_input("lr", TensorType(()))
    view = g2.op("reshape", g2.op("reshape", w2, shape=(24,)), shape=(4, 6))
    g2.set_outputs([g2.op("sgd_update", w2, g2.op("neg", view), lr2),
                    g2.op("sgd_update", w2, view, lr2)])
    g2.donations = {1: 1}
    exe2 = backends.compile(g2, "llvm", threads=1)
    assert exe2.plan.inplace == {}
    wb = wa.copy()
    a, c = exe2(np.float32(0.5), wb)
    np.testing.assert_allclose(a, 1.5 * wa, rtol=1e-6)
    np.testing.assert_allclose(c, 0.5 * wa, rtol=1e-6)


def test_outputs_that_are_arguments_or_repeated_are_copies():
    g = Graph("pass")
    x = g.add_input("x", TensorType((3,)))
    y = g.op("neg", x)
    g.set_outputs([x, y, y])
    xa = np.arange(3, dtype=np.float32)
    a, b, c = backends.compile(g, "llvm")(xa)
    assert a is not xa and b is not c
    np.testing.assert_array_equal(a, xa)
    np.testing.assert_array_equal(c, -xa)


@pytest.mark.parametrize("name", ["cnn_train", "rnn_train"])
def test_every_lowering_split_across_threads(name, monkeypatch):
    """Tiny nodes normally run on one thread; here every node (and every scan step) is split
    across 3 threads with barriers between nodes, as stored and with fused regions, and
    must still match the reference."""
    from irgraph.backends.llvm import module, workers
    from tests.golden import load
    monkeypatch.setattr(module, "SMALL", 0)
    monkeypatch.setattr(module, "SERIAL_FLOPS", 0)
    monkeypatch.setattr(workers, "PARALLEL_FLOPS", 0)
    monkeypatch.setattr(workers, "PARALLEL_BYTES", 0)
    from irgraph.passes.manager import PassManager
    graph, args, expect = load(name)
    for g in (graph, PassManager(["simplify", "fuse"]).run(graph)):
        got = backends.compile(g, "llvm", threads=3, cache=False)(*[a.copy() for a in args])
        for r, e in zip(got, expect):
            np.testing.assert_allclose(r, e, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("stride,padding,dilation,groups", [
    ((1, 1), (1, 1, 1, 1), (1, 1), 1), ((2, 1), (0, 2, 1, 0), (1, 2), 2),
    ((1, 3), (2, 2, 0, 1), (2, 1), 1), ((1, 1), (0, 0, 0, 0), (1, 1), 4)])
@pytest.mark.parametrize("path", ["dots", "gemm"])
def test_conv2d_and_its_gradients_match_torch(stride, padding, dilation, groups, path,
                                              monkeypatch):
    """conv (eq. 9.6-9.8) and, through the VJP graph, conv_kernel_grad (eq. 9.11) and
    conv_input_grad (eq. 9.12-9.13) against torch.nn.functional.conv2d and autograd;
    odd sizes, asymmetric padding (applied to torch's input with F.pad). The gradients of
    small convolutions use dot products / row updates, of big ones the GEMM: both run."""
    import torch
    from irgraph.backends.llvm import ops_conv
    from irgraph.passes.autodiff import vjp
    if path == "gemm":
        monkeypatch.setattr(ops_conv, "DOT_LIMIT", 0)
        monkeypatch.setattr(ops_conv, "AXPY_LIMIT", 0)
    else:
        monkeypatch.setattr(ops_conv, "AXPY_LIMIT", 10 ** 6)
    x = RNG.standard_normal((3, 4, 7, 9)).astype(np.float32)
    w = RNG.standard_normal((8, 4 // groups, 3, 2)).astype(np.float32)
    g = one("conv", TensorType(x.shape), TensorType(w.shape), stride=stride, padding=padding,
            dilation=dilation, groups=groups)
    vg = vjp(g)
    ct = RNG.standard_normal(g.outputs[0].shape).astype(np.float32)
    y, dx, dw = backends.compile(vg, "llvm", threads=2, cache=False)(x, w, ct)
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)
    xp = torch.nn.functional.pad(tx, (padding[2], padding[3], padding[0], padding[1]))
    ty = torch.nn.functional.conv2d(xp, tw, stride=stride, dilation=dilation, groups=groups)
    ty.backward(torch.tensor(ct))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dw, tw.grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dims,padding,dilation,groups,dtype,threads", [
    ((11,), (2, 1), (1,), 1, "float32", 2),
    ((6, 9), (0, 0, 0, 0), (1, 1), 1, "float32", 2),
    ((7, 5), (2, 1, 1, 0), (1, 1), 2, "float64", 1),
    ((9, 8), (1, 3, 0, 2), (2, 1), 1, "float32", 2),       # padding > dilation * (k - 1)
    ((8, 9), (0, 0, 0, 0), (1, 2), 2, "float64", 2),
    ((5, 4, 6), (1, 0, 1, 1, 0, 1), (1, 1, 2), 2, "float32", 2)])
def test_direct_stride1_conv_and_gradients_match_torch(dims, padding, dilation, groups, dtype,
                                                        threads):
    """Stride-1 convolutions take the direct grid path (conv; its input gradient as a
    flipped convolution of gy, or gy scattered on the forward grid when that grid is much
    smaller: valid convolutions, padding wider than the kernel; its kernel gradient as
    shifted dot products): 1-, 2- and 3-D, groups, dilation, asymmetric padding, float64,
    inside guarded buffers, against torch and autograd."""
    import torch
    from irgraph.passes.autodiff import vjp
    d = len(dims)
    kernel = (3, 2, 3)[:d]
    x = RNG.standard_normal((3, 4) + dims).astype(dtype)
    w = RNG.standard_normal((6, 4 // groups) + kernel).astype(dtype)
    g = one("conv", TensorType(x.shape, dtype), TensorType(w.shape, dtype), stride=(1,) * d,
            padding=padding, dilation=dilation, groups=groups)
    vg = vjp(g)
    ct = RNG.standard_normal(g.outputs[0].shape).astype(dtype)
    y, dx, dw = run_guarded(backends.compile(vg, "llvm", threads=threads), [x, w, ct])
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)
    pads = [p for ax in reversed(range(d)) for p in (padding[2 * ax], padding[2 * ax + 1])]
    conv = (torch.nn.functional.conv1d, torch.nn.functional.conv2d,
            torch.nn.functional.conv3d)[d - 1]
    ty = conv(torch.nn.functional.pad(tx, pads), tw, dilation=dilation, groups=groups)
    ty.backward(torch.tensor(ct))
    tol = 1e-4 if dtype == "float32" else 1e-10
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(dw, tw.grad.numpy(), rtol=tol, atol=tol)


def _random_conv_geometries(n: int, seed: int = 5):
    """Seeded conv geometries, stride 1 in two of three (the direct paths), batch 1 to 3."""
    rng = np.random.default_rng(seed)
    for k in range(n):
        d = int(rng.integers(1, 4))
        groups = int(rng.choice([1, 2]))
        c, o = groups * int(rng.integers(1, 4)), groups * int(rng.integers(1, 8))
        kern = tuple(int(v) for v in rng.integers(1, 5, d))
        dil = tuple(int(v) for v in rng.integers(1, 3, d))
        st = (1,) * d if k % 3 else tuple(int(v) for v in rng.integers(1, 3, d))
        pad = tuple(int(v) for v in rng.integers(0, 4, 2 * d))
        size = tuple(int(dl * (kk - 1) + 1 + rng.integers(0, 9)) for kk, dl in zip(kern, dil))
        yield (int(rng.integers(1, 4)), c) + size, (o, c // groups) + kern, st, pad, dil, groups


@pytest.mark.parametrize("xs,ws,stride,padding,dilation,groups",
                         list(_random_conv_geometries(30)))
def test_random_conv_geometries_and_gradients_match_the_reference(xs, ws, stride, padding,
                                                                  dilation, groups):
    """conv, conv_input_grad and conv_kernel_grad (through the VJP graph) on whichever path
    each geometry takes (direct grid, flipped or scattered input gradient, im2col + GEMM,
    dot products, row updates), on 2 threads inside guarded buffers, against the
    reference backend."""
    from irgraph.passes.autodiff import vjp
    x = RNG.standard_normal(xs).astype(np.float32)
    w = RNG.standard_normal(ws).astype(np.float32)
    g = one("conv", TensorType(xs), TensorType(ws), stride=stride, padding=padding,
            dilation=dilation, groups=groups)
    vg = vjp(g)
    ct = RNG.standard_normal(g.outputs[0].shape).astype(np.float32)
    want = backends.compile(vg, "reference")(x, w, ct)
    got = run_guarded(backends.compile(vg, "llvm", threads=2), [x, w, ct])
    for name, a, e in zip(("y", "dx", "dw"), got, want):
        np.testing.assert_allclose(a, e, rtol=2e-4, atol=2e-4, err_msg=name)


def test_pools_and_batch_norm_match_torch():
    """max_pool (first maximum, ceil_mode), avg_pool (count_include_pad) and training-mode
    batch_norm (eq. 8.35-8.36, PyTorch's running-statistics update) against torch."""
    import torch
    x = RNG.standard_normal((2, 3, 9, 7)).astype(np.float32)
    g = Graph("pools")
    xv = g.add_input("x", TensorType(x.shape))
    gamma, beta, rm, rv = (g.add_param(n, TensorType((3,))) for n in ("g", "b", "rm", "rv"))
    mp = g.op("max_pool", xv, kernel_size=(3, 2), stride=(2, 2), padding=(1, 1, 0, 1),
              dilation=(1, 1), ceil_mode=True)
    ap = g.op("avg_pool", xv, kernel_size=(3, 3), stride=(2, 1), padding=(1, 1, 1, 1),
              ceil_mode=False, count_include_pad=True)
    y, nm, nv = g.op("batch_norm", xv, gamma, beta, rm, rv, training=True, eps=1e-5,
                     momentum=0.1)
    g.set_outputs([mp, ap, y, nm, nv])
    params = [RNG.standard_normal(3).astype(np.float32) for _ in range(3)] + [
        np.abs(RNG.standard_normal(3)).astype(np.float32)]
    got = backends.compile(g, "llvm", threads=2)(x, *params)
    tx = torch.tensor(x)
    want_mp = torch.nn.functional.max_pool2d(
        torch.nn.functional.pad(tx, (0, 1, 1, 1), value=-float("inf")), (3, 2), (2, 2),
        ceil_mode=True)
    want_ap = torch.nn.functional.avg_pool2d(tx, 3, (2, 1), padding=1)
    trm, trv = torch.tensor(params[2]), torch.tensor(params[3])
    want_y = torch.nn.functional.batch_norm(tx, trm, trv, torch.tensor(params[0]),
                                            torch.tensor(params[1]), training=True)
    np.testing.assert_allclose(got[1], want_ap.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[2], want_y.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[3], trm.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[4], trv.numpy(), rtol=1e-5, atol=1e-6)
    assert got[0].shape == tuple(want_mp.shape)
    np.testing.assert_array_equal(got[0], want_mp.numpy())


def test_transposed_matmul_operands_are_read_in_place():
    """x @ W^T and batched A^T @ B: the transpose is folded into the GEMM's strides (and not
    run when only matmuls read it); a transpose another op also reads still runs."""
    g = Graph("tmm")
    x, w = g.add_input("x", TensorType((5, 7))), g.add_input("w", TensorType((3, 7)))
    a, bb = g.add_input("a", TensorType((2, 4, 5))), g.add_input("b", TensorType((2, 4, 6)))
    wt = g.op("transpose", w, perm=(1, 0))
    at = g.op("transpose", a, perm=(0, 2, 1))
    g.set_outputs([g.op("matmul", x, wt), g.op("matmul", at, bb), g.op("neg", wt)])
    exe = backends.compile(g, "llvm", threads=2)
    assert len(exe.plan.skip) == 1 and len(exe.plan.views) == 2
    xa, wa, aa, ba = (RNG.standard_normal(s).astype(np.float32)
                      for s in ((5, 7), (3, 7), (2, 4, 5), (2, 4, 6)))
    y, z, n = run_guarded(exe, [xa, wa, aa, ba])
    np.testing.assert_allclose(y, xa @ wa.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(z, aa.transpose(0, 2, 1) @ ba, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(n, -wa.T)


def test_fused_epilogue_regions_read_transposed_operands_in_place():
    """After the fusion pass, x @ W^T + b -> relu is one epilogue region: W^T still reaches
    the GEMM as swapped strides (the transpose is not run), on 1 and 2 threads; a transpose
    another region also reads still runs for that one."""
    from irgraph.passes.fusion import fuse
    g = Graph("fmm")
    x, w = g.add_input("x", TensorType((9, 7))), g.add_input("w", TensorType((13, 7)))
    bias = g.add_input("b", TensorType((13,)))
    wt = g.op("transpose", w, perm=(1, 0))
    h = g.op("relu", g.op("add", g.op("matmul", x, wt), bias))
    v = g.add_input("v", TensorType((7, 7)))
    vt = g.op("transpose", v, perm=(1, 0))
    k = g.op("add", g.op("matmul", x, vt), g.op("sum", vt, axis=(0,)))
    g.set_outputs([h, k])
    fg = fuse(g)
    assert [n.op for n in fg.nodes].count("fused") == 2
    xa, wa, ba, va = (RNG.standard_normal(s).astype(np.float32)
                      for s in ((9, 7), (13, 7), (13,), (7, 7)))
    for threads in (1, 2):
        exe = backends.compile(fg, "llvm", threads=threads)
        assert len(exe.plan.skip) == 1 and len(exe.plan.views) == 2
        got_h, got_k = run_guarded(exe, [xa, wa, ba, va])
        np.testing.assert_allclose(got_h, np.maximum(xa @ wa.T + ba, 0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got_k, xa @ va.T + va.T.sum(0), rtol=1e-5, atol=1e-5)


def test_avx512_hosts_ask_for_512_bit_vectors():
    """LLVM prefers 256-bit vectors unless a function says otherwise: on an AVX-512 host every
    function of the module gets "prefer-vector-width"="512" (and the IR still parses)."""
    import llvmlite.binding as lb
    from irgraph.backends.llvm import jit
    text = backends.compile(one("add", TensorType((4,)), TensorType((4,))), "llvm").llvm_ir()
    wide = jit._with_vector_width(text, "+sse2,+avx2,+avx512f")
    defines = [ln for ln in wide.splitlines() if ln.startswith("define")]
    assert defines and all('"prefer-vector-width"="512"' in ln for ln in defines)
    lb.parse_assembly(wide).verify()
    assert jit._with_vector_width(text, "+avx2,-avx512f") == text


@pytest.mark.parametrize("dtype", ["int32", "int64", "bool", "float64"])
def test_cast_of_special_floats_like_numpy(dtype):
    x = np.array([np.nan, np.inf, -np.inf, 3e38, -3e38, 2.7, -2.7, -0.0, 0.5], np.float32)
    (got,) = backends.compile(one("cast", TensorType((9,)), dtype=dtype), "llvm")(x)
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(got, x.astype(dtype))


def test_empty_tensors_like_numpy():
    """Zero-sized axes: nothing is read or written out of bounds, sums are 0, means NaN,
    a product with an empty contraction is zeros."""
    g = Graph("empty")
    x = g.add_input("x", TensorType((3, 0)))
    a, b = g.add_input("a", TensorType((2, 0))), g.add_input("b", TensorType((0, 4)))
    g.set_outputs([g.op("exp", x), g.op("sum", x, axis=(1,)), g.op("mean", x, axis=(1,)),
                   g.op("matmul", a, b), g.op("transpose", x, perm=(1, 0))])
    xa, aa, ba = np.zeros((3, 0), np.float32), np.zeros((2, 0), np.float32), np.zeros(
        (0, 4), np.float32)
    e, s, m, p, t = run_guarded(backends.compile(g, "llvm", threads=2), [xa, aa, ba])
    assert e.shape == (3, 0) and t.shape == (0, 3)
    np.testing.assert_array_equal(s, np.zeros(3))
    assert np.all(np.isnan(m))
    np.testing.assert_array_equal(p, np.zeros((2, 4)))


def test_one_executable_called_from_several_python_threads():
    """Runs share the executable's arena and control block: they are serialized, so
    concurrent callers each get their own correct result."""
    from concurrent.futures import ThreadPoolExecutor
    exe = backends.compile(one("matmul", TensorType((40, 50)), TensorType((50, 60))), "llvm",
                           threads=2)
    pairs = [(RNG.standard_normal((40, 50)).astype(np.float32),
              RNG.standard_normal((50, 60)).astype(np.float32)) for _ in range(8)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda ab: exe(*ab)[0], pairs * 3))
    for (a, b), c in zip(pairs * 3, results):
        np.testing.assert_allclose(c, a @ b, rtol=1e-4, atol=1e-4)


def test_native_workers_across_executables_threads_sleep_and_fork(monkeypatch):
    """Threads 1..n-1 run on native workers shared by every executable: several executables
    called at once from Python threads, a run after the workers went to sleep (futex), and
    a run in a forked child (which must start workers of its own) all give right answers."""
    import os
    import select
    import time
    from concurrent.futures import ThreadPoolExecutor
    from irgraph.backends.llvm import workers
    monkeypatch.setattr(workers, "PARALLEL_FLOPS", 0)     # small: split all the same
    exes = [backends.compile(one("matmul", TensorType((m, 64)), TensorType((64, 48))), "llvm",
                             threads=2, cache=False) for m in (30, 31, 32)]
    assert all(e.plan.parallel for e in exes)
    b = RNG.standard_normal((64, 48)).astype(np.float32)
    xs = [RNG.standard_normal((e.graph.inputs[0].shape)).astype(np.float32) for e in exes]
    with ThreadPoolExecutor(3) as pool:
        got = list(pool.map(lambda k: exes[k % 3](xs[k % 3], b)[0], range(30)))
    for k, c in enumerate(got):
        np.testing.assert_allclose(c, xs[k % 3] @ b, rtol=1e-4, atol=1e-4)
    time.sleep(0.05)                      # past the spin: the workers sleep in futex
    np.testing.assert_allclose(exes[0](xs[0], b)[0], xs[0] @ b, rtol=1e-4, atol=1e-4)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                           # the child: only this thread survived the fork
        try:
            os.write(w, exes[1](xs[1], b)[0].tobytes())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while select.select([r], [], [], 60)[0]:     # (a hung child fails the test, not CI)
        chunk = os.read(r, 1 << 16)
        if not chunk:
            break
        data += chunk
    os.close(r)
    os.kill(pid, 9) if not data else None
    os.waitpid(pid, 0)
    got = np.frombuffer(data, np.float32).reshape(xs[1].shape[0], 48)
    np.testing.assert_allclose(got, xs[1] @ b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["mlp", "cnn", "rnn", "cnn_train", "rnn_train"])
def test_golden_models_stay_inside_guarded_buffers(name):
    """Every op of the golden models (conv, batch norm, pools, scan, their gradients, Adam)
    with NaN-guarded inputs and sentinel-guarded outputs (donations stripped so that inputs
    stay read-only)."""
    from tests.golden import load
    graph, args, expect = load(name)
    graph.donations = {}
    got = run_guarded(backends.compile(graph, "llvm", threads=2), args)
    for r, e in zip(got, expect):
        np.testing.assert_allclose(r, e, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n", [1, 5, 11])
def test_conv_pool_scan_at_odd_sizes_stay_in_bounds(n):
    g = Graph("odd")
    x = g.add_input("x", TensorType((2, 3, n, n + 2)))
    w = g.add_input("w", TensorType((5, 3, 3, 2)))
    y = g.op("conv", x, w, stride=(1, 1), padding=(1, 1, 1, 0), dilation=(1, 1), groups=1)
    p = g.op("max_pool", y, kernel_size=(2, 2), stride=(1, 2), padding=(1, 1, 0, 1),
             dilation=(1, 1), ceil_mode=True)
    a = g.op("adaptive_avg_pool", y, output_size=(2, 3))
    g.set_outputs([y, p, a])
    xa = RNG.standard_normal((2, 3, n, n + 2)).astype(np.float32)
    wa = RNG.standard_normal((5, 3, 3, 2)).astype(np.float32)
    exe = backends.compile(g, "llvm", threads=2)
    got = run_guarded(exe, [xa, wa])
    want = backends.compile(g, "reference")(xa, wa)
    for r, e in zip(got, want):
        np.testing.assert_allclose(r, e, rtol=1e-5, atol=1e-5)


def test_metadata_renumbering_leaves_constant_bytes_alone():
    """Combining modules shifts each one's numbered metadata apart, but never inside a
    quoted token: a float32 table whose bytes read ``!1`` (0xe8 0x21 0x31 0x3f) keeps its
    values and length."""
    from irgraph.backends.llvm.module import _metadata_apart
    first = '!0 = !{!"a"}\n'
    second = ('@t = private constant [4 x i8] c"\\E8!1?"\n@"n!2" = global i8 0\n'
              'br label %l, !llvm.loop !1\n!1 = distinct !{!1, !0}\n!0 = !{!"b!3"}\n')
    _, got = _metadata_apart([first, second])
    assert 'c"\\E8!1?"' in got and '@"n!2"' in got and '!{!"b!3"}' in got
    assert "!llvm.loop !2" in got and "!2 = distinct !{!2, !1}" in got and "!1 = !{" in got


def test_a_constant_whose_bytes_read_like_metadata_compiles_exactly():
    """End to end: bicubic interpolation's weight tables (float32 constants, one of whose
    values is stored as 0xe8 0x21 0x31 0x3f) beside kernels with loop metadata: the LLVM
    result is the reference's (before, the renumbering changed that weight: 7e-3 off)."""
    import irgraph.frontend as fe
    x = np.random.default_rng(0).standard_normal((2, 3, 3, 7)).astype(np.float32)

    def f(a):
        return fe.F.interpolate(a, scale_factor=(1.3, 1.1), mode="bicubic")
    spec = fe.TensorSpec(x.shape, "float32")
    np.testing.assert_allclose(fe.compile(f, spec, backend="llvm")(x),
                               fe.compile(f, spec, backend="reference")(x), rtol=1e-5,
                               atol=1e-6)
