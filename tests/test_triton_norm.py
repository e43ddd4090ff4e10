"""The Triton row-normalization kernel (backends/triton/kernels/row_norm.py) for ``normalize``
regions and the generated kernel of their backward's ``rows`` regions, in the interpreter:
layer, group and RMS norm against torch (values, and gradients through the regions' exported
intermediates), odd row lengths, rows longer than one block,
rows with a large mean, and float16/bfloat16 rows with float32 statistics rounded once."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import irgraph.backends as backends
from irgraph import Graph, TensorType
import irgraph.frontend as fe
from irgraph.backends.triton import codegen_rows
from irgraph.backends.triton.kernels import row_norm
from irgraph.frontend import nn
from irgraph.interpreter import interpret
from irgraph.passes.layer_regions import (flatten_row_sums, fuse_norm, fuse_norm_grad,
                                          normalize_spec, row_levels)

R = np.random.default_rng(11)
NOTE = "row normalization"


def _layer_norm(norm):
    ln, t = nn.LayerNorm(norm), torch.nn.LayerNorm(norm)
    ln.weight.data[...] = R.standard_normal(norm)
    ln.bias.data[...] = R.standard_normal(norm)
    with torch.no_grad():
        t.weight.copy_(torch.from_numpy(ln.weight.data))
        t.bias.copy_(torch.from_numpy(ln.bias.data))
    return ln, t


# (x shape, normalized shape, longest block): odd lengths, two axes, rows over several blocks
CASES = [((3, 5, 37), (37,), None), ((4, 3, 7), (3, 7), None), ((5, 203), (203,), 64),
         ((2, 1001), (1001,), 256)]
IDS = [f"{'x'.join(map(str, c[0]))}-block{c[2]}" for c in CASES]


@pytest.mark.parametrize("shape,norm,block", CASES, ids=IDS)
def test_layer_norm_kernel_matches_torch(shape, norm, block, monkeypatch):
    if block:
        monkeypatch.setattr(row_norm, "MAX_BLOCK", block)
        assert row_norm.tiles(int(np.prod(norm)))[1] == block < np.prod(norm)
    ln, t = _layer_norm(norm)
    x = (R.standard_normal(shape) * 3 + 100).astype(np.float32)    # a large mean
    exe = backends.compile(fe.trace(ln, fe.TensorSpec(shape)), "triton")
    assert NOTE in exe.source()
    (got,) = exe(x, ln.weight.data, ln.bias.data)
    want = t(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape,norm,block", CASES[::2], ids=IDS[::2])
def test_layer_norm_gradients_match_torch(shape, norm, block, monkeypatch):
    """The backward reads the region's exports (x - mean, the reciprocal deviation) in a
    rows region: one generated kernel sweeping each row once per level of its sums."""
    if block:
        monkeypatch.setattr(row_norm, "MAX_BLOCK", block)
        monkeypatch.setattr(codegen_rows, "MAX_BLOCK", block)
    ln, t = _layer_norm(norm)
    x = (R.standard_normal(shape) * 2 - 30).astype(np.float32)
    gy = R.standard_normal(shape).astype(np.float32)
    step = fe.value_and_grad(lambda a, b: (ln(a) * b).sum(), fe.TensorSpec(shape),
                             fe.TensorSpec(shape), model=ln, wrt=["a", "weight", "bias"],
                             backend="triton")
    value, grads = step(x, gy)
    fused = [n for n in step.graph.nodes if n.op == "fused"]
    assert [n.attrs["kind"] for n in fused].count("normalize") == 1
    assert len(next(n for n in fused if n.attrs["kind"] == "normalize").outputs) > 1
    assert "rows" in [n.attrs["kind"] for n in fused]
    assert "def fused_rows_" in step.executable.source()
    tx = torch.from_numpy(x).requires_grad_()
    loss = (t(tx) * torch.from_numpy(gy)).sum()
    loss.backward()
    np.testing.assert_allclose(value, loss.item(), rtol=1e-5, atol=1e-4)
    for name, want in (("a", tx.grad), ("weight", t.weight.grad), ("bias", t.bias.grad)):
        want = want.numpy()
        np.testing.assert_allclose(grads[name], want, rtol=1e-4,
                                   atol=1e-5 * np.abs(want).max(), err_msg=name)


def test_group_norm_kernel_and_gradient_match_torch(monkeypatch):
    """Group norm: a region without its own affine (the channel weight follows it), rows of
    C/G channels times the positions, over two blocks."""
    monkeypatch.setattr(row_norm, "MAX_BLOCK", 16)
    monkeypatch.setattr(codegen_rows, "MAX_BLOCK", 16)
    gn = nn.GroupNorm(2, 6)
    gn.weight.data[...] = R.standard_normal(6)
    x = R.standard_normal((3, 6, 7)).astype(np.float32)
    gy = R.standard_normal(x.shape).astype(np.float32)
    exe = backends.compile(fe.trace(gn, fe.TensorSpec(x.shape)), "triton")
    assert NOTE in exe.source()
    tx = torch.from_numpy(x).requires_grad_()
    tw = torch.from_numpy(gn.weight.data.copy()).requires_grad_()
    ty = torch.nn.functional.group_norm(tx, 2, tw)
    (got,) = exe(x, gn.weight.data, gn.bias.data)
    np.testing.assert_allclose(got, ty.detach().numpy(), rtol=1e-5, atol=1e-5)
    step = fe.grad(lambda a, b: (gn(a) * b).sum(), fe.TensorSpec(x.shape),
                   fe.TensorSpec(x.shape), model=gn, wrt=["a", "weight"], backend="triton")
    grads = step(x, gy)
    assert "def fused_rows_" in step.executable.source()
    (ty * torch.from_numpy(gy)).sum().backward()
    np.testing.assert_allclose(grads["a"], tx.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grads["weight"], tw.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_statistics_keep_their_digits_under_a_large_mean(monkeypatch):
    """Rows of 1e4 + small noise over four blocks (variance 1e-2, about a float32 unit of
    1e4 squared times 1e4): x - mean and the variance to float32 accuracy of the deviations,
    checked against float64."""
    monkeypatch.setattr(row_norm, "MAX_BLOCK", 32)
    x = (1e4 + R.standard_normal((3, 100)) * 0.1).astype(np.float32)
    exe = backends.compile(fe.trace(lambda a: fe.F.layer_norm(a, (100,)),
                                    fe.TensorSpec(x.shape)), "triton")
    (got,) = exe(x)
    x64 = x.astype(np.float64)
    d = x64 - x64.mean(axis=1, keepdims=True)
    want = d / np.sqrt((d * d).mean(axis=1, keepdims=True) + 1e-5)
    # the float32 mean itself is 1e4 within half a unit (5e-4, 5e-3 deviations): the kernel
    # subtracts a row's shift and the mean's offset from it instead
    np.testing.assert_allclose(got, want, atol=2e-5)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16_bit_rows_take_float32_statistics_and_round_once(dtype):
    import ml_dtypes
    np_dt = np.float16 if dtype == "float16" else ml_dtypes.bfloat16
    mant = 10 if dtype == "float16" else 7
    shape, norm = (6, 45), (45,)
    ln = nn.LayerNorm(norm)
    x = (R.standard_normal(shape) + 4).astype(np.float32).astype(np_dt)
    w = R.standard_normal(norm).astype(np.float32).astype(np_dt)
    b = R.standard_normal(norm).astype(np.float32).astype(np_dt)
    g = fe.trace(lambda a, ww, bb: fe.F.layer_norm(a, norm, ww, bb), fe.TensorSpec(shape, dtype),
                 fe.TensorSpec(norm, dtype), fe.TensorSpec(norm, dtype))
    exe = backends.compile(g, "triton")
    assert NOTE in exe.source()
    # the composition widens the 16-bit input once and rounds its result once (as torch's
    # opmath): one normalize region between the two casts
    fused = [n for n in exe.graph.nodes if n.op == "fused"]
    assert len(fused) == 1 and fused[0].outputs[0].type.dtype == "float32"
    (got,) = exe(x, w, b)
    assert got.dtype == np.dtype(np_dt)
    t = [torch.from_numpy(a.astype(np.float64)) for a in (x, w, b)]
    want = torch.nn.functional.layer_norm(t[0], norm, t[1], t[2]).numpy()
    ulp = 2.0 ** (np.floor(np.log2(np.maximum(np.abs(want), 2.0 ** -14))) - mant)
    # one rounding (half a unit) plus the float32 statistics' error
    assert np.all(np.abs(got.astype(np.float64) - want) <= ulp / 2 + 1e-5)
    del ln


@pytest.mark.parametrize("shape,block", [((4, 37), None), ((3, 203), 64)])
def test_rms_norm_forms_a_region_and_matches_torch(shape, block, monkeypatch):
    """F.rms_norm (no centering) as a normalize region: values and gradients."""
    if block:
        monkeypatch.setattr(row_norm, "MAX_BLOCK", block)
    norm = shape[-1:]
    rms = nn.RMSNorm(norm, eps=1e-6)
    rms.weight.data[...] = R.standard_normal(norm)
    x = (R.standard_normal(shape) + 2).astype(np.float32)
    gy = R.standard_normal(shape).astype(np.float32)
    g = fe.trace(rms, fe.TensorSpec(shape))
    fused = fuse_norm(g)
    assert [n.op for n in fused.nodes] == ["fused"]
    assert not normalize_spec(fused.nodes[0].attrs["body"]).centered
    exe = backends.compile(g, "triton")
    assert "RMS row normalization" in exe.source()
    tx = torch.from_numpy(x).requires_grad_()
    tw = torch.from_numpy(rms.weight.data.copy()).requires_grad_()
    ty = torch.nn.functional.rms_norm(tx, norm, tw, eps=1e-6)
    (got,) = exe(x, rms.weight.data)
    np.testing.assert_allclose(got, ty.detach().numpy(), rtol=1e-5, atol=1e-5)
    step = fe.grad(lambda a, b: (rms(a) * b).sum(), fe.TensorSpec(shape), fe.TensorSpec(shape),
                   model=rms, wrt=["a", "weight"], backend="triton")
    grads = step(x, gy)
    (ty * torch.from_numpy(gy)).sum().backward()
    np.testing.assert_allclose(grads["a"], tx.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grads["weight"], tw.grad.numpy(), rtol=1e-4, atol=1e-5)
    # the reference and the LLVM backend (which runs an RMS region's nodes) agree
    for backend in ("reference", "llvm"):
        (other,) = backends.compile(fused, backend)(x, rms.weight.data)
        np.testing.assert_allclose(other, got, rtol=1e-5, atol=1e-5, err_msg=backend)


@pytest.mark.parametrize("backend", ["triton", "llvm"])
def test_layer_norm_backward_is_two_sweeps_per_row(backend, monkeypatch):
    """The rows region of a layer norm's backward has one level of row sums (both sums in
    one sweep, then the result): sum(g r + c d) is taken as sum(g r) + c sum(d). Gradients
    against torch, rows over several blocks, a large mean."""
    monkeypatch.setattr(codegen_rows, "MAX_BLOCK", 32)
    shape, norm = (6, 101), (101,)
    ln, t = _layer_norm(norm)
    x = (R.standard_normal(shape) * 0.5 + 50).astype(np.float32)
    gy = R.standard_normal(shape).astype(np.float32)
    opts = {"threads": 2, "cache": False} if backend == "llvm" else {}
    step = fe.grad(lambda a, b: (ln(a) * b).sum(), fe.TensorSpec(shape), fe.TensorSpec(shape),
                   model=ln, wrt=["a", "weight", "bias"], backend=backend,
                   pipeline=["default", fuse_norm, fuse_norm_grad], **opts)
    rows = [n.attrs["body"] for n in step.graph.nodes
            if n.op == "fused" and n.attrs["kind"] == "rows"]
    assert len(rows) == 1 and max(row_levels(rows[0]).values()) == 1
    if backend == "triton":
        assert step.executable.source().count("for start in range(0, N, BLOCK)") == 2
    grads = step(x, gy)
    tx = torch.from_numpy(x).requires_grad_()
    (t(tx) * torch.from_numpy(gy)).sum().backward()
    for name, want in (("a", tx.grad), ("weight", t.weight.grad), ("bias", t.bias.grad)):
        want = want.numpy()
        np.testing.assert_allclose(grads[name], want, rtol=1e-4,
                                   atol=1e-4 * np.abs(want).max(), err_msg=name)


def test_float64_layer_norm_and_instance_norm_match_torch():
    """float64 rows keep float64 statistics (to 1e-12 of torch's float64); an instance norm
    is a region over the positions of each channel."""
    x = R.standard_normal((2, 3, 9, 5)) * 4 + 7
    exe = backends.compile(fe.trace(lambda a: fe.F.layer_norm(a, (9, 5)),
                                    fe.TensorSpec(x.shape, "float64")), "triton")
    assert NOTE in exe.source()
    want = torch.nn.functional.layer_norm(torch.from_numpy(x), (9, 5)).numpy()
    np.testing.assert_allclose(exe(x)[0], want, rtol=1e-12, atol=1e-12)
    x32 = x.astype(np.float32)
    exe = backends.compile(fe.trace(lambda a: fe.F.instance_norm(a), fe.TensorSpec(x.shape)),
                           "triton")
    assert NOTE in exe.source()
    want = torch.nn.functional.instance_norm(torch.from_numpy(x32)).numpy()
    np.testing.assert_allclose(exe(x32)[0], want, rtol=1e-5, atol=1e-5)


def test_rows_kernel_with_row_results_and_broadcast_weights(monkeypatch):
    """A rows region written by hand: rows of (4, 5) elements over blocks of 8, an operand
    along the row broadcast over one of its axes, a scalar constant, two levels of sums (a
    region given as it is: three sweeps) and a result per row: the generated kernel against
    the reference interpreter of the same region."""
    monkeypatch.setattr(codegen_rows, "MAX_BLOCK", 8)
    body, args = _two_level_body()
    assert codegen_rows.supports_rows(body)
    assert max(row_levels(body).values()) == 2
    g = Graph("outer")
    ins = [g.add_input(v.name, v.type) for v in body.inputs]
    g.set_outputs(list(g.op("fused", *ins, body=body, kind="rows")))
    exe = backends.compile(g, "triton")
    assert exe.source().count("for start in range(0, N, BLOCK)") == 3
    got = exe(*args)
    want = backends.compile(g, "reference")(*args)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_flattened_row_sums_keep_the_values():
    """The second-level mean of (t - u) d (u per row) becomes mean(t d) - u mean(d) (one
    level; values by the reference interpreter); a mean of (t - u)^2 (not expanded into
    cancelling moments) or through exp is left as it is."""
    body, args = _two_level_body("linear")
    flat = flatten_row_sums(body)
    assert max(row_levels(flat).values()) == 1
    for a, b in zip(interpret(flat, args), interpret(body, args)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for form in ("square", "exp"):
        body, args = _two_level_body(form)
        assert max(row_levels(flatten_row_sums(body)).values()) == 2, form


def _two_level_body(form: str = "square"):
    body = Graph("rows_by_hand")
    d = body.add_input("d", TensorType((3, 4, 5)))
    r = body.add_input("r", TensorType((3, 1, 1)))
    w = body.add_input("w", TensorType((4, 1)))
    t = body.op("mul", d, w)
    s = body.op("sum", t, axis=(1, 2), keepdims=True)
    u = body.op("mul", s, r)
    e = body.op("sub", t, body.op("broadcast_to", u, shape=(3, 4, 5)))
    sq = body.op("mul", e, d if form == "linear" else e)
    s2 = body.op("mean", body.op("exp", sq) if form == "exp" else sq, axis=(1, 2),
                 keepdims=True)
    out = body.op("mul", e, body.op("add", s2, body.op("full", shape=(), value=0.5,
                                                        dtype="float32")))
    body.set_outputs([out, s2])
    rng = np.random.default_rng(5)
    return body, [rng.standard_normal(v.shape).astype(np.float32) for v in body.inputs]
