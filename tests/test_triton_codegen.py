"""Generated Triton kernels for ``fused`` elementwise regions (backends/triton/codegen.py):
a whole region is ONE kernel whose intermediates never touch memory; results match the
reference backend (kernels in Triton's interpreter on the CPU)."""
from __future__ import annotations

import numpy as np

import irgraph.backends as backends
from irgraph.backends.triton import codegen
from irgraph import Graph, TensorType
from irgraph.passes.fusion import fuse

RNG = np.random.default_rng(0)


def region_graph() -> Graph:
    """Broadcasting operands, a comparison, where, casts, integer floor division."""
    g = Graph("ew")
    x = g.add_input("x", TensorType((3, 5)))
    b = g.add_input("b", TensorType((5,)))
    k = g.add_input("k", TensorType((3, 1), "int64"))
    y = g.op("tanh", g.op("mul", g.op("add", x, b), x))
    pos = g.op("gt", y, g.op("full", shape=(), value=0.1, dtype="float32"))
    z = g.op("where", pos, g.op("sigmoid", y), g.op("neg", g.op("square", y)))
    q = g.op("div", g.op("broadcast_to", k, shape=(3, 5)),
             g.op("full", shape=(), value=-2.0, dtype="int64"))
    g.set_outputs([z, g.op("add", g.op("cast", q, dtype="float32"), z)])
    return g


def args():
    return [RNG.standard_normal((3, 5)).astype(np.float32),
            RNG.standard_normal(5).astype(np.float32),
            np.array([[-3], [4], [7]], np.int64)]


def test_elementwise_regions_are_generated_kernels_matching_reference():
    g = fuse(region_graph())
    fused = [n for n in g.nodes if n.op == "fused"]
    assert fused and all(n.attrs["kind"] == "elementwise" for n in fused)
    assert all(codegen.supports(n.attrs["body"]) for n in fused)
    exe = backends.compile(g, "triton")
    assert [nodes[0].op for nodes, _ in exe.plan.steps] == ["fused"] * len(fused)
    assert len(exe.ctx.notes) == len(fused)
    assert "@triton.jit" in exe.source() and "_unary(" in exe.source()
    a = args()
    want = backends.compile(region_graph(), "reference")(*a)
    for w, o in zip(want, exe(*a)):
        np.testing.assert_allclose(o, w, rtol=1e-6, atol=1e-7)


def test_other_region_kinds_run_their_body_kernels():
    """Reduction and epilogue regions fall back to their body's kernels, same results."""
    g = Graph("mm")
    x, w = g.add_input("x", TensorType((4, 3))), g.add_input("w", TensorType((3, 2)))
    b = g.add_input("b", TensorType((2,)))
    h = g.op("relu", g.op("add", g.op("matmul", x, w), b))
    g.set_outputs([g.op("sum", g.op("mul", h, h), axis=(1,))])
    fused = fuse(g)
    assert {n.attrs["kind"] for n in fused.nodes if n.op == "fused"} - {"elementwise"}
    a = [RNG.standard_normal(s).astype(np.float32) for s in ((4, 3), (3, 2), (2,))]
    np.testing.assert_allclose(backends.compile(fused, "triton")(*a)[0],
                               backends.compile(g, "reference")(*a)[0], rtol=1e-5)


def test_generated_source_is_cached_by_content():
    body = [n for n in fuse(region_graph()).nodes if n.op == "fused"][0].attrs["body"]
    src1, name1 = codegen.render(body, [True, True, True], 2)
    src2, name2 = codegen.render(body, [True, True, True], 2)
    assert (src1, name1) == (src2, name2)
    kernel = codegen.load_kernel(src1, name1)
    assert (codegen.cache_dir() / f"{name1}.py").read_text().endswith(src1)
    assert codegen.load_kernel(src2, name2).fn.__name__ == kernel.fn.__name__ == name1


def test_matmul_epilogue_region_is_one_generated_kernel():
    """Linear layer + bias + relu + residual: the matmul tile gets its epilogue before the
    single store; a small constant in the body travels as a kernel operand."""
    g = Graph("lin")
    x, w = g.add_input("x", TensorType((5, 7))), g.add_input("w", TensorType((7, 3)))
    b, r = g.add_input("b", TensorType((3,))), g.add_input("r", TensorType((5, 3)))
    c = g.op("constant", value=np.array([0.5, -1.0, 2.0], np.float32))
    h = g.op("relu", g.op("add", g.op("matmul", x, w), b))
    half = g.op("full", shape=(), value=0.5, dtype="float32")
    g.set_outputs([g.op("add", g.op("mul", g.op("mul", h, c), half), r)])
    fused = fuse(g)
    kinds = [n.attrs["kind"] for n in fused.nodes if n.op == "fused"]
    assert kinds == ["epilogue"]
    exe = backends.compile(fused, "triton")
    assert "matmul_tile(" in exe.source() and len(exe.ctx.notes) == 1
    a = [RNG.standard_normal(s).astype(np.float32) for s in ((5, 7), (7, 3), (3,), (5, 3))]
    np.testing.assert_allclose(exe(*a)[0], backends.compile(g, "reference")(*a)[0],
                               rtol=1e-5, atol=1e-6)


def test_batched_matmul_epilogue_with_broadcast_operand():
    g = Graph("bmm")
    x, w = g.add_input("x", TensorType((2, 4, 3))), g.add_input("w", TensorType((3, 6)))
    s = g.add_input("s", TensorType((2, 1, 6)))
    g.set_outputs([g.op("tanh", g.op("mul", g.op("matmul", x, w), s))])
    fused = fuse(g)
    exe = backends.compile(fused, "triton")
    a = [RNG.standard_normal(sh).astype(np.float32) for sh in ((2, 4, 3), (3, 6), (2, 1, 6))]
    np.testing.assert_allclose(exe(*a)[0], backends.compile(g, "reference")(*a)[0],
                               rtol=1e-5, atol=1e-6)
    assert len(exe.ctx.notes) == sum(n.op == "fused" for n in fused.nodes)


def _reduction_graph(op: str, keepdims: bool) -> Graph:
    """exp(x * s) reduced over the middle axis, then log and an epilogue operand."""
    g = Graph("red")
    x, s = g.add_input("x", TensorType((3, 4, 5))), g.add_input("s", TensorType((4, 1)))
    rshape = (3, 1, 5) if keepdims else (3, 5)
    c = g.add_input("c", TensorType(rshape[-1:]))
    r = g.op(op, g.op("exp", g.op("mul", x, s)), axis=(1,), keepdims=keepdims)
    g.set_outputs([g.op("add", g.op("log", r), c)])
    return g


def test_reduction_regions_are_one_generated_kernel():
    """Prologue, the reduction over a middle axis (no operand copied) and the epilogue in
    one kernel; max propagates a NaN as numpy does."""
    for op, keepdims in (("sum", True), ("mean", False), ("max", False), ("min", True)):
        g = _reduction_graph(op, keepdims)
        fused = fuse(g)
        assert [n.attrs["kind"] for n in fused.nodes if n.op == "fused"] == ["reduction"]
        exe = backends.compile(fused, "triton")
        assert len(exe.ctx.notes) == 1 and "tl.program_id" in exe.ctx.notes[0]
        a = [RNG.standard_normal(t.shape).astype(np.float32) for t in
             (v.type for v in g.inputs)]
        if op == "max":
            a[0][1, 2, 3] = np.nan
        np.testing.assert_allclose(exe(*a)[0], backends.compile(g, "reference")(*a)[0],
                                   rtol=1e-5, atol=1e-6, equal_nan=True, err_msg=op)


def test_conv_bias_relu_region_is_one_generated_kernel():
    """Conv (groups, stride, padding) + per-channel bias + relu + residual: the implicit-GEMM
    tile takes its epilogue before the one store (eq. 9.8 then the activation)."""
    g = Graph("convblock")
    x, w = g.add_input("x", TensorType((2, 4, 7, 6))), g.add_input("w", TensorType((6, 2, 3, 3)))
    b, r = g.add_input("b", TensorType((6, 1, 1))), g.add_input("r", TensorType((2, 6, 4, 3)))
    y = g.op("conv", x, w, stride=(2, 2), padding=(1, 1, 1, 1), dilation=(1, 1), groups=2)
    g.set_outputs([g.op("add", g.op("relu", g.op("add", y, b)), r)])
    fused = fuse(g)
    assert [n.attrs["kind"] for n in fused.nodes if n.op == "fused"] == ["epilogue"]
    exe = backends.compile(fused, "triton")
    assert "conv_fwd_tile(" in exe.source() and len(exe.ctx.notes) == 1
    a = [RNG.standard_normal(v.shape).astype(np.float32) for v in g.inputs]
    np.testing.assert_allclose(exe(*a)[0], backends.compile(g, "reference")(*a)[0],
                               rtol=1e-5, atol=1e-5)
