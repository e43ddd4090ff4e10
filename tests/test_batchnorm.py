"""Batch normalization (section 8.7.1): eq. 8.35-8.37 by hand, torch.nn.functional.batch_norm
and torch.nn.BatchNorm* (forward, gradients through the batch statistics, running averages,
inference mode), and the property the text derives: the gradient has no component that only
shifts a unit's mean or scales its spread."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import irgraph.frontend as fe
import irgraph
from irgraph.frontend import F, nn
from irgraph.interpreter import interpret
from irgraph.passes.autodiff import grad, vjp
from tests._conv_testing import compare, ours, rand


def bn_op(x, gamma, beta, rm, rv, **attrs):
    op = irgraph.get_op("batch_norm")
    return op.run([x, gamma, beta, rm, rv], op.check_attrs(attrs))


def test_training_normalizes_with_eq_8_35_to_8_37():
    """mu = mean over the minibatch (8.36), sigma = sqrt(delta + mean((H - mu)^2)) (8.37),
    H' = (H - mu) / sigma (8.35); then gamma H' + beta."""
    H = rand(6, 3, seed=1)
    gamma, beta, delta = rand(3, seed=2), rand(3, seed=3), 1e-3
    mu = H.sum(axis=0) / 6
    sigma = np.sqrt(delta + ((H - mu) ** 2).sum(axis=0) / 6)
    y, new_mean, new_var = bn_op(H, gamma, beta, np.zeros(3), np.ones(3), training=True,
                                 eps=delta, momentum=0.25)
    np.testing.assert_allclose(y, gamma * (H - mu) / sigma + beta, rtol=1e-12)
    # running averages as PyTorch: unbiased variance in the estimate
    np.testing.assert_allclose(new_mean, 0.25 * mu, rtol=1e-12)
    np.testing.assert_allclose(new_var, 0.75 + 0.25 * H.var(axis=0, ddof=1), rtol=1e-12)


def test_per_channel_statistics_are_shared_over_all_positions():
    x = rand(2, 3, 4, 5, seed=4)
    y = bn_op(x, np.ones(3), np.zeros(3), np.zeros(3), np.ones(3), training=True, eps=0.0)[0]
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1, rtol=1e-10)


@pytest.mark.parametrize("xs", [(5, 3), (4, 3, 7), (2, 3, 4, 5), (2, 3, 2, 3, 2)])
@pytest.mark.parametrize("training", [True, False])
def test_functional_batch_norm_matches_torch(xs, training):
    x, w, b = rand(*xs, seed=5), rand(3, seed=6), rand(3, seed=7)
    rm, rv = rand(3, seed=8), np.abs(rand(3, seed=9)) + 0.5
    compare(lambda x, w, b: F.batch_norm(x, rm, rv, w, b, training, 0.2, 1e-4),
            lambda x, w, b: TF.batch_norm(x, torch.tensor(rm), torch.tensor(rv), w, b,
                                          training, 0.2, 1e-4), [x, w, b])


def test_gradient_has_no_component_that_only_shifts_mean_or_scale_section_8_7_1():
    """Whatever the loss downstream, dL/dx of each channel is orthogonal to the all-ones
    direction (a shift of the unit's mean) and to x - mu (a change of its scale). (With
    delta > 0 the scale direction keeps a component of relative size delta / var, so the
    check uses delta = 0.)"""
    x = rand(8, 4, 3, seed=10) * 3 + 2
    w, b = rand(4, seed=11), rand(4, seed=12)
    _, (dx, dw, db), ct = ours(lambda x, w, b: F.batch_norm(x, None, None, w, b, True, eps=0.0),
                         [x, w, b])
    mu = x.mean(axis=(0, 2), keepdims=True)
    np.testing.assert_allclose((dx).sum(axis=(0, 2)), 0, atol=1e-10)
    np.testing.assert_allclose((dx * (x - mu)).sum(axis=(0, 2)), 0, atol=1e-10)
    assert np.abs(dx).max() > 1e-2                  # and yet the gradient is not zero
    # for contrast, inference mode (fixed statistics) has such components
    _, (dx_eval, _, _), _ = ours(lambda x, w, b: F.batch_norm(x, np.zeros(4), np.ones(4), w, b),
                                 [x, w, b], ct)
    assert np.abs(dx_eval.sum(axis=(0, 2))).max() > 1e-2


def test_second_order_through_the_batch_statistics_matches_torch():
    x, w, v = rand(4, 3, 2, seed=13), rand(3, seed=14), rand(4, 3, 2, seed=15)
    specs = [fe.TensorSpec(x.shape, "float64"), fe.TensorSpec(w.shape, "float64")]
    g1 = grad(fe.trace(lambda x, w: F.sum(F.square(F.batch_norm(x, None, None, w, None, True))
                                          * F.tanh(x)), *specs), wrt=["x"])
    outs = interpret(vjp(g1, wrt=["x", "w"]), [x, w, v])
    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    y = TF.batch_norm(xt, None, None, wt, None, True)
    (gx,) = torch.autograd.grad(((y ** 2) * torch.tanh(xt)).sum(), xt, create_graph=True)
    hx, hw = torch.autograd.grad((gx * torch.tensor(v)).sum(), [xt, wt])
    np.testing.assert_allclose(outs[0], gx.detach().numpy(), rtol=1e-9)
    np.testing.assert_allclose(outs[1], hx.numpy(), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(outs[2], hw.numpy(), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("cls,tcls,xs", [(nn.BatchNorm1d, torch.nn.BatchNorm1d, (6, 4)),
                                         (nn.BatchNorm1d, torch.nn.BatchNorm1d, (3, 4, 5)),
                                         (nn.BatchNorm2d, torch.nn.BatchNorm2d, (2, 4, 3, 5)),
                                         (nn.BatchNorm3d, torch.nn.BatchNorm3d, (2, 4, 2, 3, 2))])
@pytest.mark.parametrize("momentum,backend", [(0.3, "reference"), (None, "reference"),
                                              (None, "llvm"), (None, "triton")])
def test_module_training_updates_running_averages_and_eval_uses_them(cls, tcls, xs, momentum,
                                                                     backend):
    """r' = (1 - m) r + m stat, or with momentum=None the cumulative average (m = 1 / the
    batches seen, counted in num_batches_tracked as torch), then eval uses r."""
    ours_m, theirs = cls(4, momentum=momentum), tcls(4, momentum=momentum)
    with torch.no_grad():
        theirs.weight.copy_(torch.linspace(0.5, 2, 4))
        theirs.bias.copy_(torch.linspace(-1, 1, 4))
    ours_m.weight.data[:] = theirs.weight.detach().numpy()
    ours_m.bias.data[:] = theirs.bias.detach().numpy()
    step = fe.compile(ours_m, fe.TensorSpec(xs), backend=backend)
    for seed in range(3):
        x = (rand(*xs, seed=seed) * 2 + 1).astype(np.float32)
        np.testing.assert_allclose(step(x), theirs(torch.tensor(x)).detach().numpy(),
                                   rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(ours_m.running_mean.data, theirs.running_mean.numpy(),
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ours_m.running_var.data, theirs.running_var.numpy(),
                                   rtol=1e-5, atol=1e-6)
        assert ours_m.num_batches_tracked.data == theirs.num_batches_tracked.item()
    ours_m.eval()
    theirs.eval()
    infer = fe.compile(ours_m, fe.TensorSpec(xs), backend=backend)
    x = rand(*xs, seed=9).astype(np.float32)
    before = ours_m.running_mean.data.copy()
    np.testing.assert_allclose(infer(x), theirs(torch.tensor(x)).detach().numpy(), rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_array_equal(ours_m.running_mean.data, before)


@pytest.mark.parametrize("kw", [dict(affine=False), dict(track_running_stats=False),
                                dict(eps=0.1)])
def test_module_options_match_torch(kw):
    ours_m, theirs = nn.BatchNorm2d(3, **kw).eval(), torch.nn.BatchNorm2d(3, **kw).eval()
    x = rand(2, 3, 4, 4, seed=3).astype(np.float32)
    np.testing.assert_allclose(fe.compile(ours_m, fe.TensorSpec(x.shape))(x),
                               theirs(torch.tensor(x)).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_batch_norm_errors_are_clear():
    with pytest.raises(ValueError, match="4-D input"):
        fe.trace(nn.BatchNorm2d(3), fe.TensorSpec((2, 3)))
    with pytest.raises(ValueError, match="channels"):
        fe.trace(nn.BatchNorm1d(3), fe.TensorSpec((2, 4)))
    with pytest.raises(Exception, match="more than one value per channel"):
        fe.trace(nn.BatchNorm1d(3), fe.TensorSpec((1, 3)))


@pytest.mark.parametrize("backend", ["reference", "llvm", "triton"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_16_bit_input_with_float32_parameters_as_torch(dtype, backend):
    """torch's mixed batch norm (what autocast gives a BatchNorm layer): a 16-bit input
    beside float32 weight, bias and running statistics normalizes in float32 (eq. 8.35-8.37),
    keeps the statistics in float32 and rounds y once to the input's dtype; the gradient of
    the input comes back in its dtype, those of the parameters in float32."""
    import ml_dtypes
    tdt = getattr(torch, dtype)
    ours_m, theirs = nn.BatchNorm2d(3), torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        theirs.weight.copy_(torch.tensor([0.5, 1.5, -2.0]))
        theirs.bias.copy_(torch.tensor([0.25, -1.0, 3.0]))
    ours_m.weight.data[:] = theirs.weight.detach().numpy()
    ours_m.bias.data[:] = theirs.bias.detach().numpy()
    x32 = (rand(4, 3, 5, 5, seed=1) * 3 + 40).astype(np.float32)   # a mean far from 0
    xt = torch.tensor(x32).to(tdt).requires_grad_()
    x = xt.detach().float().numpy().astype(getattr(ml_dtypes, dtype) if dtype == "bfloat16"
                                           else np.float16)
    gy = rand(4, 3, 5, 5, seed=2).astype(np.float32)
    want = theirs(xt)
    assert want.dtype == tdt
    want.backward(torch.tensor(gy).to(tdt))

    y = fe.compile(ours_m, fe.TensorSpec(x.shape, dtype), backend=backend)(x)
    assert str(y.dtype) == dtype
    np.testing.assert_allclose(y.astype(np.float32), want.detach().float().numpy(), atol=0.02)
    np.testing.assert_allclose(ours_m.running_mean.data, theirs.running_mean.numpy(),
                               rtol=1e-6)
    assert ours_m.running_mean.data.dtype == np.float32

    def loss(x):
        return (ours_m(x).float() * gy).sum()
    grads = fe.grad(loss, fe.TensorSpec(x.shape, dtype), model=ours_m, backend=backend)(x)
    for name in ("weight", "bias"):
        assert grads[name].dtype == np.float32
        np.testing.assert_allclose(grads[name], getattr(theirs, name).grad.numpy(), rtol=0.02,
                                   atol=0.05)
