"""Edge cases of PyTorch conformance, on every backend, against torch: negative pads, dims on
0-d tensors and negative dims (one rule, ``wrap_dim``), zero-size tensors, torch arguments
(alpha, dtype, weight, rounding modes, unbatched losses, positional unbiased) and
non-contiguous numpy inputs. Values and, where differentiable, gradients."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import irgraph.frontend as fe
from irgraph.frontend import F
from irgraph.ops.core import normalize_axes, wrap_dim

BACKENDS = ["reference", "llvm", "triton"]


class _Torch:
    """torch's namespace seen as ``F``: torch.nn.functional first, then torch."""

    def __getattr__(self, name):
        return getattr(TF, name, None) or getattr(torch, name)


TORCH = _Torch()


def _spec(a: np.ndarray) -> fe.TensorSpec:
    return fe.TensorSpec(a.shape, a.dtype.name)


def _flat(out):
    return [o for x in out for o in _flat(x)] if isinstance(out, (tuple, list)) else [out]


def check(fn, backend, *inputs, rtol=1e-5, atol=1e-6, grad=True):
    """``fn(ns, *tensors)`` compiled for ``backend`` equals it run by torch (values, shapes,
    dtypes); with ``grad``, so does the gradient of the sum of its float outputs by the
    float inputs."""
    got = _flat(fe.compile(lambda *ts: fn(F, *ts), *map(_spec, inputs), backend=backend)(
        *inputs))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # torch warns on var's zero degrees of freedom
        ts = [torch.from_numpy(np.array(a)).requires_grad_(a.dtype.kind == "f")
              for a in inputs]
        want = _flat(fn(TORCH, *ts))
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        g = np.asarray(g)
        assert g.shape == tuple(w.shape), (i, g.shape, tuple(w.shape))
        assert g.dtype == np.dtype(str(w.dtype).replace("torch.", "")), (i, g.dtype, w.dtype)
        np.testing.assert_allclose(g, w.detach().numpy(), rtol=rtol, atol=atol,
                                   equal_nan=True, err_msg=f"output {i}")
    if not grad:
        return
    wrt = tuple(i for i, a in enumerate(inputs) if a.dtype.kind == "f")

    def total(ns, *xs):
        outs = [o for o in _flat(fn(ns, *xs)) if o.dtype in ("float32", "float64",
                                                             torch.float32, torch.float64)]
        s = outs[0].sum()
        for o in outs[1:]:
            s = s + o.sum()
        return s
    gs = fe.grad(lambda *xs: total(F, *xs), *map(_spec, inputs), wrt=wrt, backend=backend)(
        *inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        total(TORCH, *ts).backward()
    for k, i in enumerate(wrt):
        np.testing.assert_allclose(gs[k], ts[i].grad.numpy(), rtol=rtol, atol=atol,
                                   err_msg=f"gradient of input {i}")


def const(ns, a: np.ndarray):
    """A constant (no gradient) in ``ns``'s terms."""
    return torch.from_numpy(a) if ns is TORCH else a


def data(*shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ---------------------------------------------------------------- negative pads
def test_circular_pad_crops_before_it_wraps_by_hand():
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    y = fe.compile(lambda t: F.pad(t, (-1, 1, -2, 1), mode="circular"), _spec(x))(x)
    # rows 2, 3 kept and row 2 wrapped after them; columns 1..3 kept and column 1 wrapped
    np.testing.assert_array_equal(y[0, 0], [[9, 10, 11, 9], [13, 14, 15, 13], [9, 10, 11, 9]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_negative_pads_match_torch_in_every_mode(backend):
    x = np.arange(40, dtype=np.float32).reshape(1, 2, 4, 5)

    def f(ns, t):
        modes = ("circular", "reflect", "replicate", "constant")
        return (tuple(ns.pad(t, p, mode=m) for m in modes
                      for p in ((-1, 1, -2, 1), (2, -1, -1, 3), (-2, -1, 0, -3)))
                + tuple(ns.pad(t[0], p, mode=m) for m in modes for p in ((-1, 3), (3, -2))))
    check(f, backend, x)


# ---------------------------------------------------------------- dims: one rule
def test_wrap_dim_is_torchs_rule():
    assert [wrap_dim(d, 0) for d in (-1, 0)] == [0, 0]
    assert [wrap_dim(d, 3) for d in (-3, -1, 0, 2)] == [0, 2, 0, 2]
    assert normalize_axes((0,), 0) == normalize_axes((-1,), 0) == ()
    assert normalize_axes((-1, 0, 2), 3) == (0, 2)
    for d, rank in ((1, 0), (-2, 0), (3, 3), (-4, 3)):
        with pytest.raises(IndexError, match=rf"\[{-max(rank, 1)}, {max(rank, 1) - 1}\], "
                                             rf"but got {d}\) for a tensor of rank {rank}"):
            wrap_dim(d, rank)


@pytest.mark.parametrize("fn", [
    lambda t: F.sum(t, 1), lambda t: F.mean(t, -2), lambda t: F.amax(t, 1),
    lambda t: F.max(t, 1), lambda t: F.argmax(t, -2), lambda t: F.softmax(t, 1),
    lambda t: F.log_softmax(t, -2), lambda t: F.logsumexp(t, 1), lambda t: F.var(t, 1),
    lambda t: F.min(t, -2), lambda t: F.std(t, (0, 1))])
def test_dims_out_of_range_of_a_scalar_are_index_errors(fn):
    with pytest.raises(IndexError, match=r"range of \[-1, 0\], but got (1|-2)"):
        fe.trace(fn, fe.TensorSpec(()))


def _reductions(ns, t, d):
    """Every reduction-like function over dim ``d`` (int) of ``t``."""
    mx, mn = ns.max(t, d), ns.min(t, d, keepdim=True)
    return (ns.sum(t, d), ns.sum(t, d, keepdim=True), ns.mean(t, d), ns.amax(t, d),
            ns.amin(t, d, keepdim=True), mx[0], mx[1], mn[0], mn[1], ns.argmax(t, d),
            ns.argmin(t, d, keepdim=True), ns.logsumexp(t, d), ns.softmax(t, d),
            ns.log_softmax(t, d), ns.var(t, d), ns.std(t, d, False, True),
            t.sum(d), t.mean(d, keepdim=True), t.softmax(d), t.logsumexp(d))


@pytest.mark.parametrize("backend", BACKENDS)
def test_reductions_of_a_scalar_along_dims_0_and_minus_1_match_torch(backend):
    x = np.array(1.25, np.float32)
    check(lambda ns, t: _reductions(ns, t, 0) + _reductions(ns, t * 3, -1), backend, x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_reductions_along_negative_dims_match_torch(backend):
    x = data(2, 3, 4)
    check(lambda ns, t: (_reductions(ns, t, -2)
                         + (ns.max(t, -3)[1], ns.softmax(t, -3), ns.logsumexp(t, -1),
                            ns.sum(t, (-1, 0)), ns.mean(t, (0, -2), keepdim=True),
                            ns.amax(t, (-1, -2)), ns.var(t, (-1, 0), keepdim=True),
                            ns.std(t, (2, -2)))), backend, x, rtol=2e-5, atol=1e-5)


# ---------------------------------------------------------------- special values
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_softmax_of_nan_and_infinite_rows_matches_torch(backend, dtype):
    """A NaN anywhere in a row, +inf (alone or twice), -inf entries, a row of -inf only,
    values near the float range: every softmax and log_softmax result as torch's (NaN where
    it gives NaN), along the contiguous axis (rows of 4 and of 37: whole vectors and a
    tail) and across it."""
    nan, inf = np.nan, np.inf
    rows = [[1, 2, 3, 4], [nan, 1, 2, 3], [inf, 1, 2, 3], [-inf, 1, 2, 3], [-inf] * 4,
            [inf, inf, 1, 2], [nan, inf, -inf, 0], [3e38, -3e38, 0, 5], [-0.0, 0.0, 2, 1]]
    x = np.array(rows, dtype)
    wide = data(5, 37, dtype=dtype)
    wide[1, 30], wide[2, 3], wide[3, :] = nan, inf, -inf

    def f(ns, x, w):
        return (ns.softmax(x, 1), ns.log_softmax(x, 1), ns.softmax(x, 0),
                ns.log_softmax(x, 0), ns.softmax(w, 1), ns.log_softmax(w, -1))
    check(f, backend, x, wide, grad=False)


# ---------------------------------------------------------------- zero-size tensors
@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batches_and_empty_axes_match_torch(backend):
    x, e, s1, s3 = data(0, 4), data(3, 0), data(0, 2, 6), data(0, 2, 4, 4, 4)

    def f(ns, x, e, s1, s3):
        return (ns.softmax(e, 1), ns.log_softmax(e, -1), ns.softmax(x, 1),
                ns.sum(x, 0), ns.mean(x, 0), ns.sum(e, 1), ns.logsumexp(x, 0),
                ns.var(x, 0), ns.amax(x, 1), ns.argmax(x, 1),
                ns.avg_pool1d(s1, 2), ns.adaptive_avg_pool1d(s1, 4),
                ns.max_pool1d(s1, 2), ns.avg_pool3d(s3, 2), ns.adaptive_avg_pool3d(s3, 2),
                ns.adaptive_max_pool3d(s3, 3), ns.unfold(s3[:, :, 0], 2, padding=1))
    check(f, backend, x, e, s1, s3, grad=False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_layers_and_their_gradients_match_torch(backend):
    x, w, lin, s1 = data(0, 2, 5, 5), data(3, 2, 3, 3), data(3, 4), data(0, 2, 6)

    def f(ns, x, w, lin, s1):
        y = ns.conv2d(x, w, padding=1)
        return (y, ns.avg_pool2d(y, 2), ns.max_pool2d(x * lin[0, 0], 2),
                ns.adaptive_avg_pool1d(s1 * lin[1, 1], 3),
                ns.linear(ns.flatten(x, 1)[:, :4], lin),
                ns.cross_entropy(ns.linear(s1[:, 0, :4], lin), ns.argmax(s1[:, 1, :3], 1),
                                 reduction="sum"))
    check(f, backend, x, w, lin, s1)


def test_max_over_an_empty_dim_is_an_index_error_as_torch():
    for fn in (lambda t: F.amax(t, 0), lambda t: F.max(t, 0), lambda t: F.argmin(t, 0),
               lambda t: F.amin(t)):
        with pytest.raises(IndexError, match="dim 0 .* shape \\(0, 3\\)|is empty"):
            fe.trace(fn, fe.TensorSpec((0, 3)))


# ---------------------------------------------------------------- torch arguments
@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_arguments_match_torch(backend):
    x, y, p, t = data(3, 5), data(3, 5, seed=1), data(3, 5, seed=2), data(5, seed=3)
    prob = 1 / (1 + np.exp(-p))
    w = np.linspace(0.5, 2.0, 5).astype(np.float32)
    target = (y > 0).astype(np.float32)
    cls = np.array(3, np.int64)

    def f(ns, x, y, prob, target, t, cls):
        f64 = ns.float64 if ns is TORCH else "float64"
        wc = const(ns, w)       # torch's BCE weights take no gradient
        return (ns.add(x, y, alpha=2.5), ns.sub(x, y, alpha=-0.5), x.add(y, alpha=3),
                ns.softmax(x, 1, dtype=f64), ns.log_softmax(x, 0, dtype=f64),
                ns.binary_cross_entropy(prob, target, weight=wc),
                ns.binary_cross_entropy(prob, target, const(ns, np.tile(w, (3, 1))),
                                        reduction="sum"),
                ns.binary_cross_entropy_with_logits(x, target, weight=wc, pos_weight=wc * 2,
                                                    reduction="none"),
                ns.nll_loss(ns.log_softmax(t, 0), cls), ns.cross_entropy(t, cls),
                ns.cross_entropy(t, cls, weight=wc, reduction="none", label_smoothing=0.1),
                ns.cross_entropy(t, ns.softmax(t * 2, 0)),
                ns.var(x, 1, False), ns.std(x, 0, True, True), ns.var(x, False),
                ns.std(x, True), ns.var(x, 1, correction=2), x.var(0, False, True),
                x.float(memory_format=ns.preserve_format if ns is TORCH else None).sum(),
                x.double(memory_format=None).sum(), (x > 0).long(memory_format=None),
                x.int(memory_format=None), (x > 0).bool(memory_format=None))
    check(f, backend, x, y, prob, target, t, cls, rtol=2e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pooling_windows_of_minus_infinity_and_of_zeros_match_torch(backend):
    """Max pooling: a window whose input values are all -inf takes its first input
    position, not its padding's (left padding, dilation 2), for the index and the
    gradient. LP pooling (section 9.3's L2 pooling and p = 1, 3): a window of zeros passes
    no gradient back, as torch's (z^(1/p) has an infinite slope at 0)."""
    x = np.array([[[-np.inf, -np.inf, 5.0, 0.0, -np.inf, -np.inf]]])
    z = np.zeros((1, 2, 4, 4))
    z[0, 0, 0, 0], z[0, 1, 2:, 2:] = 1.5, [[0.5, -2.0], [1.0, 3.0]]

    def f(ns, x, z):
        y, i = ns.max_pool1d(x, 2, 1, 1, 2, return_indices=True)
        return (y, i, ns.lp_pool2d(z, 2.0, 2), ns.lp_pool2d(z, 1.0, 2),
                ns.lp_pool2d(z, 3.0, (2, 1), (2, 1)))
    check(f, backend, x, z, rtol=1e-12, atol=1e-12)


def test_max_pool_padding_follows_torchs_rule_with_dilation():
    """torch allows at most half the kernel as given, dilated or not (the IR itself, as ONNX,
    allows half the dilated window)."""
    x = fe.tensor(data(1, 1, 9))
    with pytest.raises(ValueError, match=r"max_pool1d: padding \[2, 2\] must be at most half "
                                         r"of the kernel size \[3\]"):
        F.max_pool1d(x, 3, 1, 2, 2)
    with pytest.raises(RuntimeError):
        TF.max_pool1d(torch.from_numpy(data(1, 1, 9)), 3, 1, 2, 2)
    assert F.max_pool1d(x, 3, 1, 1, 2).shape == TF.max_pool1d(
        torch.from_numpy(data(1, 1, 9)), 3, 1, 1, 2).shape == (1, 1, 7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_logsumexp_argmin_and_bce_with_logits_at_their_extremes_match_torch(backend):
    """logsumexp of a row of -inf is -inf and of a row holding +inf is +inf (not inf - inf);
    argmin and min of integers find INT_MIN (-INT_MIN wraps); BCE with logits has torch's
    gradient sigmoid(x) - t to the last bits in the tails (1 - (1 - 2e-9) is 0 in float32)
    and at x = 0, with and without pos_weight."""
    x = np.array([[-np.inf, -np.inf, -np.inf], [np.inf, 1.0, 2.0], [1.0, 2.0, -3.0]])
    check(lambda ns, x: (ns.logsumexp(x, 1), ns.logsumexp(x, 0, True)), backend, x,
          rtol=1e-12, atol=0, grad=False)
    check(lambda ns, x: ns.logsumexp(x, 1), backend, x[2:], rtol=1e-12, atol=0)
    for dt in (np.int64, np.int32):
        lo = np.iinfo(dt).min
        i = np.array([[3, lo, 0, lo], [lo, 5, 7, 0]], dt)
        check(lambda ns, i: (ns.argmin(i, 1), ns.min(i, 1)[0], ns.min(i, 1)[1], ns.argmin(i)),
              backend, i, grad=False)
    xs = np.array([-30.0, -20.0, -3.0, -0.5, 0.0, 0.5, 3.0, 20.0, 30.0])
    ts = np.array([0.0, 0.0, 0.3, 1.0, 0.0, 0.7, 1.0, 1.0, 1.0])
    pw = np.array([2.5])
    check(lambda ns, x, t: (ns.binary_cross_entropy_with_logits(x, t, reduction="none"),
                            ns.binary_cross_entropy_with_logits(
                                x, t, pos_weight=const(ns, pw), reduction="sum")),
          backend, xs, ts, rtol=1e-12, atol=2e-15)   # (torch's value at -30 is 1% off)
    for dt in (np.float32, np.float64):     # the gradient itself, relative to the last bits
        x, t = xs.astype(dt), ts.astype(dt)
        got = fe.grad(lambda x, t: F.binary_cross_entropy_with_logits(x, t, reduction="sum"),
                      _spec(x), _spec(t), wrt=0, backend=backend)(x, t)
        # torch's formula sigmoid(x) - t, worked out where it does not cancel (torch's own
        # cancels to 0 at x = 20, t = 1 in float32, and is 1e-3 off at 30 in float64)
        def sig(v):
            e = np.exp(-np.abs(v))
            return np.where(v < 0, e / (1 + e), 1 / (1 + e))
        want = np.where(ts == 1, -sig(-xs), sig(xs) - ts)
        np.testing.assert_allclose(got, want.astype(dt), rtol=8 * np.finfo(dt).eps, atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_pow_at_its_special_values_and_large_results_matches_torch(backend, dtype):
    """pow(1, nan) = pow(nan, 0) = 1, a -0.0 base keeps its sign through odd negative
    exponents, negative bases with integral exponents, and large results to a few ulps
    (Triton builds pow from exp and log: in float32 that alone was 3e-6 off)."""
    x = np.array([-0.0, 0.0, -0.0, -2.0, 1.0, np.nan, np.inf, -np.inf, 29.9, 97.1, 11.3,
                  -3.5, 0.7, 2.0, -8.0], dtype)
    y = np.array([-1.0, -3.0, -2.0, 3.0, np.nan, 0.0, -2.0, 3.0, 13.0, 9.0, 9.0, 2.0, 0.5,
                  -0.5, 1 / 3], dtype)
    check(lambda ns, x, y: ns.pow(x, y), backend, x, y,
          rtol=(4 if dtype == np.float32 else 64) * np.finfo(dtype).eps, atol=0, grad=False)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_tanh_to_a_few_ulps_in_either_dtype(backend, dtype):
    """tanh, whose Triton form is built from exp (no libdevice off the GPU): within 4 ulps
    of torch's across [-3, 3], at 0.2 (where a truncated series left float64 1e-9 off), in
    the saturated tails and at +-inf and NaN."""
    x = np.concatenate([[0, 1e-30, 1e-8, 0.1, 0.19, 0.2, 0.25, 9, 20, 400, np.inf, -np.inf,
                         np.nan], np.linspace(-3, 3, 301)]).astype(dtype)
    check(lambda ns, x: ns.tanh(x), backend, x, rtol=4 * np.finfo(dtype).eps, atol=0,
          grad=False)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_log1p_expm1_and_the_tails_built_on_them_match_torch(backend, dtype):
    """log1p and expm1 keep their last bits near 0 (1 + 1e-9 rounds to 1 in float32), and
    so do the tails of softplus, logsigmoid, BCE with logits and elu, which torch computes
    with them: values to a few ulps, down to 2e-9 where the plain forms give 0."""
    x = np.array([-30, -20, -10, -1, -0.5, -1e-3, -1e-5, -1e-9, 0, 1e-9, 1e-5, 1e-3, 0.3,
                  0.49, 0.5, 0.51, 2, 20, 30, np.inf, -np.inf, np.nan], dtype)
    ones = np.ones_like(x)

    def tails(ns, x, ones):
        return (ns.log1p(ns.abs(x)), ns.log1p(ns.abs(x) * -0.5), ns.expm1(x), x.expm1(),
                x.abs().log1p(), ns.softplus(x), ns.softplus(x, 2.0, 30.0), ns.logsigmoid(x),
                # (finite logits: torch's BCE gives NaN at -inf, an artefact of its form)
                ns.binary_cross_entropy_with_logits(x[:-3], ones[:-3], reduction="none"),
                ns.elu(x),
                ns.mish(x))
    eps = np.finfo(dtype).eps
    check(tails, backend, x, ones, rtol=8 * eps, atol=0, grad=False)
    # gradients where torch's own are exact (its expm1' = expm1(x) + 1 and sigmoid(x) - t
    # cancel in the tails)
    y = np.array([-3, -1, -0.5, -1e-3, -1e-7, 0, 1e-7, 1e-3, 0.3, 0.5, 0.7, 3], dtype)
    check(tails, backend, y, np.ones_like(y), rtol=64 * eps, atol=64 * eps)


@pytest.mark.parametrize("backend", BACKENDS)
def test_activation_gradients_at_their_kinks_match_torch(backend):
    """Inputs exactly at the kinks take torch's side: relu6 and hardtanh pass no gradient
    at their bounds (clamp does), hardswish 0 at -3 and 1 at 3, elu alpha at 0, leaky_relu
    the slope at 0; a NaN passes hardtanh's and elu's gradient on, as torch's."""
    x = np.array([-4.0, -3.0, -1.0, -0.5, 0.0, -0.0, 0.5, 1.0, 3.0, 6.0, 7.0])
    nan = np.append(x, np.nan)

    def f(ns, x, nan):
        return (ns.relu6(nan), ns.hardtanh(nan), ns.hardtanh(nan, -0.5, 3.0),
                ns.elu(nan, 2.0), ns.elu(nan), ns.hardswish(x), ns.leaky_relu(nan, 0.2),
                ns.clamp(x, -1.0, 1.0), ns.relu(x))
    check(f, backend, x, nan, rtol=1e-12, atol=0)
    # a NaN bound gives NaN and no gradient (a number, or an element of a tensor bound)
    b = np.where(np.arange(x.size) % 3 == 0, np.nan, 0.5)
    check(lambda ns, x: (ns.clamp(x, min=float("nan")), ns.clamp(x, max=float("nan")),
                         ns.clamp(x, min=const(ns, b)), ns.clamp(x, max=const(ns, b))),
          backend, x, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="min_val .* cannot be greater than max_val"):
        F.hardtanh(fe.tensor(x), 1.0, -1.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_rows_whose_mask_hides_every_key_match_torch(backend):
    """scaled_dot_product_attention: a query row that may see no key (a bool mask's row of
    False, a float mask's row of -inf) gives 0 and passes no gradient, as torch's safe
    softmax; the other rows as before."""
    q, k, v = data(2, 4, 5, dtype=np.float64), data(2, 3, 5, seed=1, dtype=np.float64), \
        data(2, 3, 2, seed=2, dtype=np.float64)
    keep = np.array([[True, False, True], [False, False, False], [True, True, True],
                     [False, False, False]])
    add_ = np.where(keep, 0.5, -np.inf)

    def f(ns, q, k, v):
        return (ns.scaled_dot_product_attention(q, k, v, attn_mask=const(ns, keep)),
                ns.scaled_dot_product_attention(q, k, v, attn_mask=const(ns, add_)),
                ns.scaled_dot_product_attention(q, k, v, attn_mask=const(ns, keep[:, :1])))
    check(f, backend, q, k, v, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bce_of_saturated_probabilities_has_a_finite_gradient(backend):
    """binary_cross_entropy at p = 0 or 1 (a float32 sigmoid past 17 is 1): torch's loss,
    with each log clamped at -100, and a finite gradient, the clamped loss's own derivative
    worked out by hand: -(1 - t) log(1 - p) has slope (1 - t) / (1 - p) = 1 at p = 0, t = 0;
    -t max(log p, -100) is flat below e^-100, so p = 0, t = 1 gives 0; mirrored at p = 1
    (torch clamps its denominator p (1 - p) at 1e-12 instead: 0 and -1e12 there)."""
    p = np.array([0.0, 0.0, 1.0, 1.0, 0.25])
    t = np.array([0.0, 1.0, 0.0, 1.0, 1.0])
    spec = _spec(p)
    val, gp = fe.value_and_grad(lambda p, t: F.binary_cross_entropy(p, t, reduction="sum"),
                                spec, spec, wrt=0, backend=backend)(p, t)
    want = TF.binary_cross_entropy(torch.from_numpy(p), torch.from_numpy(t), reduction="sum")
    assert float(val) == pytest.approx(want.item(), rel=1e-12)
    np.testing.assert_allclose(gp, [1.0, 0.0, 0.0, -1.0, -4.0], rtol=1e-12, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_python_ints_past_int32_wrap_into_an_int32_tensor_as_torch(backend):
    i = np.array([4, 0, -7], np.int32)
    check(lambda ns, i: (i + 3_000_000_000, i * (2**32 + 3), i - 2**31), backend, i,
          grad=False)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_low_precision_compositions_compute_in_float32_as_torch(backend, dtype):
    """Norms, var/std and composed activations of float16/bfloat16 tensors compute in
    float32 and round once, as torch's: squares of values near 300 pass float16's 65504
    (layer norm gave all zeros), and a bfloat16 mean near 100 (spacing 0.5) must not be
    rounded before it is subtracted."""
    import ml_dtypes
    np_dt = np.float16 if dtype == "float16" else ml_dtypes.bfloat16
    torch_dt = getattr(torch, dtype)
    r = np.random.default_rng(0)
    x = (r.standard_normal((4, 16)) * (200 if dtype == "float16" else 3)
         + (0 if dtype == "float16" else 100)).astype(np_dt)
    w, b = r.standard_normal(16).astype(np_dt), r.standard_normal(16).astype(np_dt)

    def f(x, w, b, ns):
        return (ns.layer_norm(x, (16,), w, b), ns.rms_norm(x, (16,), w),
                ns.group_norm(x.reshape(4, 4, 4), 2), ns.std(x, 1), ns.var(x / 64, 1),
                ns.hardswish(x), ns.gelu(x / 64), ns.mish(x / 64), ns.softplus(x / 64),
                ns.elu(x / -64), ns.silu(x))
    got = fe.compile(lambda x, w, b: f(x, w, b, F), *(fe.TensorSpec(a.shape, dtype)
                                                     for a in (x, w, b)), backend=backend)(
        x, w, b)
    want = f(*(torch.from_numpy(a.astype(np.float32)).to(torch_dt) for a in (x, w, b)),
             TORCH)
    tol = 2 * float(np.finfo(np_dt).eps)
    for i, (g, t) in enumerate(zip(got, want)):
        assert g.dtype == np_dt, (i, g.dtype)
        t = t.float().numpy()
        np.testing.assert_allclose(np.asarray(g, np.float32), t, rtol=tol,
                                   atol=tol * np.abs(t).max(), err_msg=f"output {i}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_numpy_class_weights_take_the_logits_float64(backend):
    """A float64 numpy array of class weights beside float64 logits stays float64 (the
    constant rule makes a lone float64 array float32; here the input gives the dtype):
    torch's sums to 1e-15, not the 3e-8 of weights rounded to float32."""
    x = data(4, 3, dtype=np.float64)
    cls = np.array([0, 1, 2, 1], np.int64)
    w = np.array([0.1, 0.7, 0.3])
    probs = np.exp(x) / np.exp(x).sum(1, keepdims=True)

    def f(ns, x, cls, probs):
        wc = const(ns, w)
        return (ns.cross_entropy(x, cls, weight=wc, reduction="sum"),
                ns.cross_entropy(x, cls, weight=wc, label_smoothing=0.1),
                ns.cross_entropy(x, probs, weight=wc, reduction="sum"),
                ns.nll_loss(x, cls, weight=wc))
    check(f, backend, x, cls, probs, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_mean_over_no_counted_targets_is_nan_with_zero_gradient_as_torch(backend):
    """Every target ``ignore_index``: the mean cross entropy (eq. 10.12-10.14 averaged over
    the targets that count) is 0/0 = NaN, and torch passes no gradient back, with class
    weights and label smoothing as without."""
    x = data(2, 3, dtype=np.float64)
    cls = np.array([-100, -100], np.int64)
    w = np.array([1.0, 2.0, 0.5])

    def f(ns, x, cls):
        return (ns.cross_entropy(x, cls), ns.cross_entropy(x, cls, weight=const(ns, w)),
                ns.cross_entropy(x, cls, label_smoothing=0.1),
                ns.cross_entropy(x, cls, weight=const(ns, w), label_smoothing=0.2))
    check(f, backend, x, cls)
    # and where some count, the same mean as torch's
    check(f, backend, x, np.array([2, -100], np.int64))
    # masked logits (-inf) of other classes and of an ignored row: a finite weighted loss
    x = np.array([[0.5, -np.inf, 1.0], [2.0, 0.1, -np.inf], [-np.inf, 0.3, 0.2]])
    check(lambda ns, x, cls: (ns.cross_entropy(x, cls, weight=const(ns, w)),
                              ns.nll_loss(ns.log_softmax(x, 1), cls, weight=const(ns, w),
                                          reduction="none")),
          backend, x, np.array([0, 1, -100], np.int64))


@pytest.mark.parametrize("backend", BACKENDS)
def test_rounded_division_matches_torch_bit_for_bit(backend):
    a = np.array([7, -7, 7.5, -7.5, 1, 0, -0.0, np.inf, -3e30, 5, -0.3, 0.3, 1e-30, np.nan,
                  4, -np.inf, 2.5e9, 0.7], np.float32)
    b = np.array([2, 2, -2, -2, 0.1, 3, 3, 2, 7, 0, 2, -2, -1e30, 1, np.inf, 3, 0.3, -0.1],
                 np.float32)
    ai = np.array([7, -7, 7, -7, 0, 6, -1, 9], np.int64)
    bi = np.array([2, 2, -2, -2, 3, -3, 5, 3], np.int64)

    def f(ns, a, b, ai, bi):
        return (ns.div(a, b, rounding_mode="floor"), ns.div(a, b, rounding_mode="trunc"),
                ns.floor_divide(a, b), a // b, ns.div(ai, bi, rounding_mode="trunc"),
                ns.div(ai, bi, rounding_mode="floor"), ai // bi)
    exe = fe.compile(lambda *ts: f(F, *ts), *map(_spec, (a, b, ai, bi)), backend=backend)
    got = exe(a, b, ai, bi)
    want = f(TORCH, *map(torch.from_numpy, (a, b, ai, bi)))
    for g, w in zip(got, want):
        w = w.numpy()
        assert g.dtype == w.dtype
        np.testing.assert_array_equal(g, w)
        signed = ~np.isnan(w)
        np.testing.assert_array_equal(np.signbit(g[signed]), np.signbit(w[signed]))  # -0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_rounded_division_has_zero_gradient_as_torch(backend):
    a, b = data(6), data(6, seed=1)
    check(lambda ns, a, b: (ns.div(a, b, rounding_mode="floor") * a,
                            ns.div(a, b, rounding_mode="trunc") * b), backend, a, b)


def test_argument_errors_are_clear():
    spec = fe.TensorSpec((3,), "int64")
    with pytest.raises(TypeError, match="alpha must not be a floating point number"):
        fe.trace(lambda t: F.add(t, t, alpha=0.5), spec)
    with pytest.raises(ValueError, match="rounding_mode .* 'round'"):
        fe.trace(lambda t: F.div(t, t, rounding_mode="round"), spec)
    with pytest.raises(ValueError, match=r"weight of shape \(4,\) .* shape \(3,\)"):
        fe.trace(lambda a: F.binary_cross_entropy(a, a, weight=np.ones(4, np.float32)),
                 fe.TensorSpec((3,)))
    with pytest.raises(ValueError, match="unbatched input of shape"):
        fe.trace(lambda a, b: F.nll_loss(a, b), fe.TensorSpec((3,)), spec)


# ---------------------------------------------------------------- non-contiguous inputs
@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_numpy_inputs(backend):
    base = data(6, 8)
    exe = fe.compile(lambda t: (F.softmax(t * 2, 0), t.sum(-1)), fe.TensorSpec((4, 3)),
                     backend=backend)
    for view in (base[:3, ::2].T, base[::-1, ::-3][:4], base[:4, :3].copy(order="F")):
        assert view.shape == (4, 3)
        ref = torch.from_numpy(np.ascontiguousarray(view))
        got = exe(view)
        np.testing.assert_allclose(got[0], torch.softmax(ref * 2, 0).numpy(), rtol=1e-6)
        np.testing.assert_allclose(got[1], ref.sum(-1).numpy(), rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_hardtanh_and_relu6_of_integers_keep_the_dtype_as_torch(dtype, backend):
    """On an integer tensor torch takes hardtanh's bounds in its dtype (-1.5 -> -1, 2.7 ->
    2): the result stays integer."""
    x = np.array([-3, -1, 0, 2, 3, 7], dtype)
    t = torch.from_numpy(x)
    got = fe.compile(lambda a: (F.hardtanh(a), F.hardtanh(a, -1.5, 2.7), F.relu6(a)),
                     fe.TensorSpec(x.shape, dtype), backend=backend)(x)
    for g, w in zip(got, (TF.hardtanh(t), TF.hardtanh(t, -1.5, 2.7), TF.relu6(t))):
        assert g.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(g, w.numpy())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_integer_pow_with_negative_exponents_as_torch(dtype, backend):
    """An integer tensor exponent's negative elements give torch's integer results: 1 for a
    base of 1, +-1 for -1 by the exponent's parity, 0 otherwise (0 too); the others wrap as
    they do in torch. A negative Python integer exponent is an error, as torch's."""
    base = np.array([2, -1, 1, 2, 0, -1, 5, -3, 7, 3], dtype)
    exp = np.array([3, -3, -2, -1, -4, -6, 0, 5, 30, 40], dtype)
    want = torch.pow(torch.from_numpy(base), torch.from_numpy(exp)).numpy()
    spec = fe.TensorSpec(base.shape, dtype)
    got = fe.compile(lambda a, c: (a ** c, 2 ** c), spec, spec, backend=backend)(base, exp)
    np.testing.assert_array_equal(got[0], want)
    np.testing.assert_array_equal(got[1], torch.pow(2, torch.from_numpy(exp)).numpy())
    with pytest.raises(ValueError, match="negative integer powers"):
        fe.compile(lambda a: a ** -2, spec, backend=backend)
