"""Attention and normalization regions (passes/layer_regions.py) and their kernels: the
Triton flash attention kernel (interpreter) and the LLVM row-block attention against torch's
scaled_dot_product_attention (causal or not, bool and additive masks, sequence lengths that
are no multiple of the blocks, head dims 16/32/64); the LLVM two-pass normalization against
torch's layer and group norm, values and gradients (the backward as a rows region); the pattern left alone where the
attention weights are read elsewhere."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import irgraph.backends as backends
import irgraph.frontend as fe
from irgraph.backends.llvm import ops_attention
from irgraph.frontend import F, nn
from irgraph.passes.layer_regions import (attention_spec, fuse_attention, fuse_norm,
                                          fuse_norm_grad, normalize_spec)

R = np.random.default_rng(7)

# (batch, heads, L, S, E, Ev, causal, mask)
CASES = [(1, 2, 37, 45, 16, 16, False, None), (2, 1, 70, 70, 32, 32, True, None),
         (1, 2, 70, 50, 64, 64, False, "bool"), (1, 2, 33, 81, 16, 32, False, "add"),
         (2, 1, 9, 130, 64, 16, True, None), (1, 3, 66, 20, 32, 64, False, "bool-heads")]
IDS = [f"L{c[2]}-S{c[3]}-E{c[4]}-{'causal' if c[6] else c[7] or 'plain'}" for c in CASES]


def sdpa_case(b, h, l, s, e, ev, causal, mask):
    """(traced graph, arguments, torch's result)."""
    specs = [fe.TensorSpec((b, h, l, e)), fe.TensorSpec((b, h, s, e)),
             fe.TensorSpec((b, h, s, ev))]
    args = [R.standard_normal(x.shape).astype(np.float32) for x in specs]
    if mask in ("bool", "bool-heads"):
        m = R.random((b, 1, l, s) if mask == "bool" else (h, 1, s)) > 0.4
        m[..., 0] = True
        specs.append(fe.TensorSpec(m.shape, "bool"))
        args.append(m)
    elif mask == "add":
        m = R.standard_normal((l, s)).astype(np.float32)
        specs.append(fe.TensorSpec(m.shape))
        args.append(m)

    def f(q, k, v, *m):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=m[0] if m else None,
                                              is_causal=causal)
    g = fe.trace(f, *specs)
    t = [torch.from_numpy(a) for a in args]
    want = torch.nn.functional.scaled_dot_product_attention(
        *t[:3], attn_mask=t[3] if len(t) > 3 else None, is_causal=causal).numpy()
    return g, args, want


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_flash_attention_kernel_matches_torch(case):
    g, args, want = sdpa_case(*case)
    fused = fuse_attention(g)
    spec = attention_spec(_region(fused).attrs["body"])
    assert spec.causal == case[6] and spec.scale == pytest.approx(case[4] ** -0.5)
    exe = backends.compile(fused, "triton")
    assert "flash attention" in exe.source()
    np.testing.assert_allclose(exe(*args)[0], want, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_llvm_row_block_attention_matches_torch(case, monkeypatch):
    monkeypatch.setattr(ops_attention, "MODE", "always")     # row blocks at every length
    g, args, want = sdpa_case(*case)
    fused = fuse_attention(g)
    assert ops_attention.row_blocks(attention_spec(_region(fused).attrs["body"]))
    (got,) = backends.compile(fused, "llvm", threads=2, cache=False)(*args)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6)


def test_a_row_with_no_visible_key_is_zero_as_torch():
    """torch's safe softmax: a query row that sees no key gives 0 (not 0/0 = NaN), on the
    reference and through the fused attention of each backend."""
    g, args, _ = sdpa_case(1, 1, 5, 7, 16, 16, False, "bool")
    args[3][0, 0, 2, :] = False
    t = [torch.from_numpy(a) for a in args]
    want = torch.nn.functional.scaled_dot_product_attention(*t[:3], attn_mask=t[3]).numpy()
    assert (want[0, 0, 2] == 0).all()
    (ref,) = backends.compile(g, "reference")(*args)
    np.testing.assert_allclose(ref, want, rtol=1e-5, atol=2e-6)
    fused = fuse_attention(g)
    _region(fused)
    for backend, opts in (("triton", {}), ("llvm", {"threads": 2})):
        (got,) = backends.compile(fused, backend, **opts)(*args)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6, err_msg=backend)


def _region(g):
    """The one fused attention region of ``g`` (a mask's row test is left around it)."""
    (region,) = [n for n in g.nodes if n.op == "fused"]
    assert region.attrs["kind"] == "attention"
    return region


def test_attention_weights_read_elsewhere_keep_the_composition():
    mha = nn.MultiheadAttention(16, 2, batch_first=True)
    g = fe.trace(lambda x: mha(x, x, x, need_weights=True), fe.TensorSpec((2, 5, 16)))
    assert "fused" not in [n.op for n in fuse_attention(g).nodes]
    g = fe.trace(lambda x: mha(x, x, x, need_weights=False)[0], fe.TensorSpec((2, 5, 16)))
    assert [n.attrs["kind"] for n in fuse_attention(g).nodes if n.op == "fused"] == \
        ["attention"]


@pytest.mark.parametrize("shape,norm", [((3, 5, 37), (37,)), ((4, 3, 7), (3, 7)),
                                        ((2, 1001), (1001,))])
def test_two_pass_layer_norm_matches_torch(shape, norm):
    ln = nn.LayerNorm(norm)
    ln.weight.data[...] = R.standard_normal(norm)
    ln.bias.data[...] = R.standard_normal(norm)
    x = (R.standard_normal(shape) * 3 + 100).astype(np.float32)    # a large mean
    y = torch.nn.functional.layer_norm(torch.from_numpy(x), norm,
                                       torch.from_numpy(ln.weight.data),
                                       torch.from_numpy(ln.bias.data)).numpy()
    g = fe.trace(ln, fe.TensorSpec(shape))
    fused = fuse_norm(g)
    assert [n.op for n in fused.nodes] == ["fused"]
    assert normalize_spec(fused.nodes[0].attrs["body"]).axes == len(norm)
    (got,) = backends.compile(fused, "llvm", threads=2, cache=False)(x, ln.weight.data,
                                                                       ln.bias.data)
    np.testing.assert_allclose(got, y, rtol=1e-5, atol=1e-5)
    # the gradient graph: the forward region exports x - mean and the reciprocal deviation,
    # the backward reads them in a rows region
    gy = R.standard_normal(shape).astype(np.float32)
    t = torch.nn.LayerNorm(norm)
    with torch.no_grad():
        t.weight.copy_(torch.from_numpy(ln.weight.data))
        t.bias.copy_(torch.from_numpy(ln.bias.data))
    tx = torch.from_numpy(x).requires_grad_()
    (t(tx) * torch.from_numpy(gy)).sum().backward()
    step = fe.grad(lambda a, b: (ln(a) * b).sum(), fe.TensorSpec(shape), fe.TensorSpec(shape),
                   model=ln, wrt=["a", "weight", "bias"], backend="llvm",
                   pipeline=["default", fuse_norm, fuse_norm_grad], threads=2, cache=False)
    grads = step(x, gy)
    kinds = [n.attrs["kind"] for n in step.graph.nodes if n.op == "fused"]
    assert kinds == ["normalize", "rows"]
    for name, want in (("a", tx.grad), ("weight", t.weight.grad), ("bias", t.bias.grad)):
        want = want.numpy()
        np.testing.assert_allclose(grads[name], want, rtol=1e-5,
                                   atol=1e-5 * np.abs(want).max(), err_msg=name)


def test_two_pass_group_norm_matches_torch():
    gn = nn.GroupNorm(3, 6)
    x = R.standard_normal((2, 6, 5, 3)).astype(np.float32)
    g = fe.trace(gn, fe.TensorSpec(x.shape))
    fused = fuse_norm(g)
    assert [n.attrs["kind"] for n in fused.nodes if n.op == "fused"] == ["normalize"]
    (got,) = backends.compile(fused, "llvm", threads=2, cache=False)(x, gn.weight.data,
                                                                       gn.bias.data)
    want = torch.nn.functional.group_norm(torch.from_numpy(x), 3).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_group_norm_gradient_through_the_rows_region_matches_torch():
    gn = nn.GroupNorm(2, 6)
    gn.weight.data[...] = R.standard_normal(6)
    x = R.standard_normal((3, 6, 5)).astype(np.float32)
    gy = R.standard_normal(x.shape).astype(np.float32)
    step = fe.grad(lambda a, b: (gn(a) * b).sum(), fe.TensorSpec(x.shape),
                   fe.TensorSpec(x.shape), model=gn, wrt=["a", "weight"], backend="llvm",
                   pipeline=["default", fuse_norm, fuse_norm_grad], threads=2, cache=False)
    grads = step(x, gy)
    assert "rows" in [n.attrs["kind"] for n in step.graph.nodes if n.op == "fused"]
    tx = torch.from_numpy(x).requires_grad_()
    tw = torch.from_numpy(gn.weight.data.copy()).requires_grad_()
    (torch.nn.functional.group_norm(tx, 2, tw) * torch.from_numpy(gy)).sum().backward()
    np.testing.assert_allclose(grads["a"], tx.grad.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grads["weight"], tw.grad.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_flash_attention_takes_16_bit_operands_and_rounds_once(dtype):
    """16-bit q, k, v run in the kernel as they are (float32 accumulation): each result
    within one unit in the last place of the exact attention of the same 16-bit inputs."""
    import ml_dtypes
    rng = np.random.default_rng(16)
    np_dt = np.float16 if dtype == "float16" else ml_dtypes.bfloat16
    mant = 10 if dtype == "float16" else 7
    specs = [fe.TensorSpec((1, 2, 37, 32), dtype), fe.TensorSpec((1, 2, 45, 32), dtype),
             fe.TensorSpec((1, 2, 45, 32), dtype)]
    args = [rng.standard_normal(s.shape).astype(np.float32).astype(np_dt) for s in specs]
    for causal in (False, True):
        g = fe.trace(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
                     *specs)
        exe = backends.compile(g, "triton")
        assert "flash attention" in exe.source()
        (got,) = exe(*args)
        assert got.dtype == np.dtype(np_dt)
        t = [torch.from_numpy(a.astype(np.float64)) for a in args]
        want = torch.nn.functional.scaled_dot_product_attention(*t, is_causal=causal).numpy()
        ulp = 2.0 ** (np.floor(np.log2(np.maximum(np.abs(want), 2.0 ** -14))) - mant)
        # plus the float32 accumulation's error on outputs near 0 (sums of O(1) terms)
        assert np.all(np.abs(got.astype(np.float64) - want) <= ulp + 1e-6), causal
