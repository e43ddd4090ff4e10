"""Pooling (section 9.3) against torch.nn.functional: max, average, Lp and adaptive pooling,
forward and gradients (torch.autograd), with strides larger than the window, padding,
dilation and ceil-mode edge windows (fig. 9.10); global average pooling (fig. 9.11), maxout
(fig. 9.9) and the tie rule of the max-pooling gradient."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import irgraph.frontend as fe
from irgraph.frontend import F, nn
from tests._conv_testing import compare, forward, ours, rand


def distinct(*shape, seed=0):
    """Values without ties, so every backend and torch agree on each window's maximum."""
    n = int(np.prod(shape))
    return np.random.default_rng(seed).permutation(n).reshape(shape) / n - 0.5


MAX = [
    ((2, 3, 11), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ((1, 2, 10), dict(kernel_size=4, stride=5, padding=2, ceil_mode=True)),
    ((1, 2, 13), dict(kernel_size=2, stride=2, dilation=3, ceil_mode=False)),
    ((2, 2, 7, 9), dict(kernel_size=(3, 2), stride=(2, 3), padding=(1, 1), dilation=(1, 2),
                        ceil_mode=True)),
    ((1, 3, 8, 7), dict(kernel_size=2, stride=3, ceil_mode=True)),
    ((1, 1, 5, 5), dict(kernel_size=3, stride=2)),
    ((1, 2, 5, 4, 6), dict(kernel_size=2, stride=(2, 1, 3), padding=(1, 0, 1), ceil_mode=True)),
]


@pytest.mark.parametrize("xs,kw", MAX)
def test_max_pool_matches_torch(xs, kw):
    d = len(xs) - 2
    compare(lambda x: getattr(F, f"max_pool{d}d")(x, **kw),
            lambda x: getattr(TF, f"max_pool{d}d")(x, **kw), [distinct(*xs, seed=1)])


AVG = [
    ((2, 3, 11), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ((1, 2, 10), dict(kernel_size=4, stride=5, padding=2, ceil_mode=True,
                      count_include_pad=False)),
    ((2, 2, 7, 9), dict(kernel_size=(3, 2), stride=(2, 3), padding=(1, 1), ceil_mode=True)),
    ((2, 2, 7, 9), dict(kernel_size=(3, 2), stride=(2, 3), padding=(1, 1), ceil_mode=True,
                        count_include_pad=False)),
    ((1, 3, 8, 7), dict(kernel_size=2, stride=3, ceil_mode=True, divisor_override=3)),
    ((1, 2, 5, 4, 6), dict(kernel_size=(3, 2, 2), stride=(2, 1, 3), padding=(1, 0, 1),
                           ceil_mode=True, count_include_pad=False)),
]


@pytest.mark.parametrize("xs,kw", AVG)
def test_avg_pool_matches_torch(xs, kw):
    d = len(xs) - 2
    compare(lambda x: getattr(F, f"avg_pool{d}d")(x, **kw),
            lambda x: getattr(TF, f"avg_pool{d}d")(x, **kw), [rand(*xs, seed=2)])


@pytest.mark.parametrize("d,p,kw", [(1, 2, dict(kernel_size=3, stride=2)),
                                    (2, 2, dict(kernel_size=(2, 3), ceil_mode=True)),
                                    (2, 3, dict(kernel_size=2, stride=(1, 3), ceil_mode=True)),
                                    (3, 1.5, dict(kernel_size=2))])
def test_lp_pool_matches_torch_definition(d, p, kw):
    """L2 pooling of section 9.3 (p = 2) and PyTorch's general LPPool: edge windows in
    ceil mode are scaled as PyTorch does (average times the full window size)."""
    x = np.abs(rand(2, 2, *([7] * d), seed=3)) + 0.1
    if p == 2:
        x = rand(2, 2, *([7] * d), seed=3)
    compare(lambda x: getattr(F, f"lp_pool{d}d")(x, p, **kw),
            lambda x: getattr(TF, f"lp_pool{d}d")(x, p, **kw), [x], rtol=1e-8)


def test_l2_pool_of_a_full_window_is_the_l2_norm_section_9_3():
    x = rand(1, 1, 6, seed=4)
    y = ours(lambda x: F.lp_pool1d(x, 2, 3), [x])[0]
    np.testing.assert_allclose(y[0, 0], [np.linalg.norm(x[0, 0, :3]),
                                         np.linalg.norm(x[0, 0, 3:])], rtol=1e-12)


@pytest.mark.parametrize("xs,size", [((2, 3, 7), 3), ((2, 3, 5), 8), ((1, 2, 7, 9), (3, 4)),
                                     ((1, 2, 5, 11), (None, 3)), ((1, 2, 6, 5, 7), (2, 3, 4))])
@pytest.mark.parametrize("kind", ["avg", "max"])
def test_adaptive_pooling_matches_torch(xs, size, kind):
    d = len(xs) - 2
    name = f"adaptive_{kind}_pool{d}d"
    compare(lambda x: getattr(F, name)(x, size), lambda x: getattr(TF, name)(x, size),
            [distinct(*xs, seed=5)])


def test_adaptive_max_pool_to_four_quadrants_whatever_the_size_fig_9_11():
    for h, w in [(6, 8), (7, 9), (10, 5)]:
        x = distinct(1, 2, h, w, seed=h)
        y = ours(lambda x: F.adaptive_max_pool2d(x, 2), [x])[0]
        hs = [(0, -(-h // 2)), (h // 2, h)]
        ws = [(0, -(-w // 2)), (w // 2, w)]
        want = [[x[0, :, a:b, c:e].max(axis=(1, 2)) for c, e in ws] for a, b in hs]
        np.testing.assert_allclose(y[0], np.array(want).transpose(2, 0, 1))


def test_global_average_pooling_fig_9_11_right():
    x = rand(2, 3, 5, 7, seed=6)
    compare(lambda x: F.global_avg_pool(x),
            lambda x: TF.adaptive_avg_pool2d(x, 1).flatten(1), [x])


def test_maxout_over_channel_groups_fig_9_9():
    x = distinct(2, 6, 3, 4, seed=7)
    compare(lambda x: F.maxout(x, 3),
            lambda x: x.reshape(2, 2, 3, 3, 4).amax(dim=2), [x])


def test_max_pool_gradient_goes_to_the_first_maximum_in_window_order():
    """Tie rule (documented in irgraph/ops/pool.py): the first maximum in row-major window
    order takes the whole gradient, as PyTorch."""
    x = np.array([[[[1.0, 3.0, 3.0, 2.0], [3.0, 3.0, 0.0, 3.0], [0.0, 0.0, 0.0, 0.0]]]])
    y, (gx,), ct = ours(lambda x: F.max_pool2d(x, (2, 3), stride=1), [x], np.ones((1, 1, 2, 2)))
    np.testing.assert_array_equal(gx[0, 0], [[0, 2, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    xt = torch.tensor(x, requires_grad=True)
    TF.max_pool2d(xt, (2, 3), stride=1).sum().backward()
    np.testing.assert_array_equal(gx, xt.grad.numpy())
    z = np.zeros((1, 1, 5))
    compare(lambda x: F.max_pool1d(x, 3, 1, 1), lambda x: TF.max_pool1d(x, 3, 1, 1), [z])


def test_ceil_mode_output_sizes_match_torch_everywhere():
    """Fig. 9.10's smaller edge region kept, and PyTorch's rule that the last window must
    start inside the input or the left padding, over a sweep of sizes."""
    for size in range(3, 12):
        for k in (2, 3, 4):
            for s in (1, 2, 3, 5):
                for p in range(0, k // 2 + 1):
                    if size + 2 * p < k:
                        continue
                    x = distinct(1, 1, size, seed=size)
                    want = TF.max_pool1d(torch.tensor(x), k, s, p, ceil_mode=True).numpy()
                    got = forward(lambda x: F.max_pool1d(x, k, s, p, ceil_mode=True), x)
                    assert got.shape == want.shape, (size, k, s, p)
                    np.testing.assert_array_equal(got, want)
                    want = TF.avg_pool1d(torch.tensor(x), k, s, p, ceil_mode=True).numpy()
                    got = forward(lambda x: F.avg_pool1d(x, k, s, p, ceil_mode=True), x)
                    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


def test_fig_9_10_pool_width_three_stride_two_keeps_the_smaller_edge_region():
    x = np.array([[[0.1, 1.0, 0.2, 0.1, 0.0, 0.1]]])
    y = ours(lambda x: F.max_pool1d(x, 3, 2, ceil_mode=True), [x])[0]
    np.testing.assert_allclose(y[0, 0], [1.0, 0.2, 0.1])


@pytest.mark.parametrize("cls,tcls,args,kw,xs", [
    (nn.MaxPool2d, torch.nn.MaxPool2d, (3,), dict(stride=2, padding=1, ceil_mode=True),
     (2, 3, 8, 7)),
    (nn.AvgPool1d, torch.nn.AvgPool1d, (2,), dict(count_include_pad=False, padding=1),
     (2, 3, 7)),
    (nn.AvgPool3d, torch.nn.AvgPool3d, (2,), dict(stride=1), (1, 2, 3, 4, 3)),
    (nn.LPPool2d, torch.nn.LPPool2d, (2, 2), {}, (1, 2, 5, 6)),
    (nn.AdaptiveAvgPool2d, torch.nn.AdaptiveAvgPool2d, ((2, 3),), {}, (1, 2, 5, 7)),
    (nn.AdaptiveMaxPool1d, torch.nn.AdaptiveMaxPool1d, (4,), {}, (1, 2, 9)),
    (nn.MaxPool3d, torch.nn.MaxPool3d, (2,), dict(dilation=(1, 2, 1)), (1, 1, 4, 5, 4)),
])
def test_pool_layers_match_torch_modules(cls, tcls, args, kw, xs):
    x = distinct(*xs, seed=8).astype(np.float32)
    got = fe.compile(cls(*args, **kw), fe.TensorSpec(xs))(x)
    np.testing.assert_allclose(got, tcls(*args, **kw)(torch.tensor(x)).numpy(), rtol=1e-5,
                               atol=1e-6)


def test_pool_errors_are_clear():
    with pytest.raises(Exception, match="at most half"):
        fe.trace(lambda x: F.max_pool2d(x, 2, padding=2), fe.TensorSpec((1, 1, 6, 6)))
    with pytest.raises(ValueError, match="expects"):
        fe.trace(lambda x: F.avg_pool2d(x, 2), fe.TensorSpec((6,)))


def _random_pool_configs(n: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        d = int(rng.integers(1, 4))
        k = tuple(int(v) for v in rng.integers(1, 4, d))
        st = tuple(int(v) for v in rng.integers(1, 5, d))
        pad = tuple(int(rng.integers(0, kk // 2 + 1)) for kk in k)
        size = tuple(int(kk + rng.integers(0, 6)) for kk in k)
        yield (1, 2) + size, dict(kernel_size=k, stride=st, padding=pad,
                                  ceil_mode=bool(rng.integers(0, 2)))


@pytest.mark.parametrize("xs,kw", list(_random_pool_configs(20)))
def test_random_pool_configurations_match_torch(xs, kw):
    d = len(xs) - 2
    x = distinct(*xs, seed=3)
    for name, extra in (("max_pool", {}), ("avg_pool", dict(count_include_pad=False)),
                        ("avg_pool", {})):
        fn = f"{name}{d}d"
        compare(lambda x: getattr(F, fn)(x, **kw, **extra),
                lambda x: getattr(TF, fn)(x, **kw, **extra), [x])


@pytest.mark.parametrize("backend", ["reference", "llvm", "triton"])
@pytest.mark.parametrize("xs,kw", MAX[:2] + MAX[3:4] + MAX[6:] + [
    ((2, 3, 9, 11), dict(output_size=(4, 3))), ((1, 2, 10), dict(output_size=3))])
def test_return_indices_match_torch(xs, kw, backend):
    """max_pool{1,2,3}d and adaptive_max_pool with return_indices=True: the values and the
    flat in-plane positions of each maximum (int64) as torch, with ties (the first maximum
    in window order) on every backend; the values still have their gradient."""
    d = len(xs) - 2
    name = ("adaptive_max_pool" if "output_size" in kw else "max_pool") + f"{d}d"
    x = np.round(np.random.default_rng(3).standard_normal(xs) * 2).astype(np.float32)

    def fn(t):
        y, i = getattr(F, name)(t, **kw, return_indices=True)
        return y, i, F.sum(y * y)
    y, idx, _ = fe.compile(fn, fe.TensorSpec(xs), backend=backend)(x)
    ty, ti = getattr(TF, name)(torch.tensor(x), **kw, return_indices=True)
    assert idx.dtype == np.int64
    np.testing.assert_array_equal(y, ty.numpy())
    np.testing.assert_array_equal(idx, ti.numpy())
    g = fe.grad(lambda t: fn(t)[2], fe.TensorSpec(xs), backend=backend)
    tx = torch.tensor(x, requires_grad=True)
    (getattr(TF, name)(tx, **kw, return_indices=True)[0] ** 2).sum().backward()
    np.testing.assert_allclose(g(x), tx.grad.numpy(), rtol=1e-6)
    layer = (nn.AdaptiveMaxPool1d if d == 1 else nn.AdaptiveMaxPool2d) if "output_size" in kw \
        else getattr(nn, f"MaxPool{d}d")
    out = fe.compile(layer(**kw, return_indices=True), fe.TensorSpec(xs), backend=backend)(x)
    np.testing.assert_array_equal(out[1], ti.numpy())
