"""Initializers (section 8.4): bounds and variances from the text's formulas, torch's gains."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import irgraph.frontend as fe
from irgraph.frontend import init, nn


def gen(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_uniform_fan_in_bounds_and_variance_section_8_4():
    """U(-1/sqrt(m), 1/sqrt(m)): |w| < 1/sqrt(m), variance (1/sqrt(m))^2 / 3."""
    w = np.empty((400, 250), np.float32)
    init.uniform_fan_in_(w, generator=gen())
    b = 1 / math.sqrt(250)
    assert np.abs(w).max() <= b and np.abs(w).max() > 0.99 * b
    assert w.var() == pytest.approx(b * b / 3, rel=0.02)
    assert abs(w.mean()) < 0.01 * b


def test_xavier_uniform_eq_8_23():
    """W_ij ~ U(-sqrt(6/(m+n)), sqrt(6/(m+n))): variance 2/(m+n)."""
    w = np.empty((300, 500))
    init.xavier_uniform_(w, generator=gen(1))
    m, n = 500, 300
    bound = math.sqrt(6 / (m + n))
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    assert w.var() == pytest.approx(2 / (m + n), rel=0.02)


def test_xavier_and_kaiming_normal_variances_match_torch_formulas():
    w = np.empty((256, 128, 3))
    init.xavier_normal_(w, gain=2.0, generator=gen(2))
    fan_in, fan_out = 128 * 3, 256 * 3
    assert w.std() == pytest.approx(2.0 * math.sqrt(2 / (fan_in + fan_out)), rel=0.02)
    init.kaiming_normal_(w, nonlinearity="relu", generator=gen(3))
    assert w.std() == pytest.approx(math.sqrt(2 / fan_in), rel=0.02)
    init.kaiming_uniform_(w, a=math.sqrt(5), generator=gen(4))
    # torch's Linear/Conv default: kaiming_uniform_(a=sqrt(5)) is U(-1/sqrt(fan_in), ...)
    assert np.abs(w).max() <= 1 / math.sqrt(fan_in) + 1e-12
    assert init.calculate_fan_in_and_fan_out(w) == (fan_in, fan_out)


@pytest.mark.parametrize("name,param", [("linear", None), ("tanh", None), ("relu", None),
                                        ("leaky_relu", 0.2), ("sigmoid", None), ("selu", None)])
def test_calculate_gain_matches_torch(name, param):
    assert init.calculate_gain(name, param) == pytest.approx(
        torch.nn.init.calculate_gain(name, param))


@pytest.mark.parametrize("shape", [(6, 6), (4, 9), (9, 4), (5, 2, 3)])
def test_orthogonal_saxe_with_gain(shape):
    w = np.empty(shape)
    init.orthogonal_(w, gain=1.7, generator=gen(5))
    flat = w.reshape(shape[0], -1)
    small = min(flat.shape)
    gram = flat @ flat.T if flat.shape[0] <= flat.shape[1] else flat.T @ flat
    np.testing.assert_allclose(gram, 1.7 ** 2 * np.eye(small), atol=1e-12)


def test_sparse_exactly_k_nonzeros_per_unit_martens():
    w = np.empty((20, 50), np.float32)
    init.sparse_(w, k=15, std=0.5, generator=gen(6))
    assert all(np.count_nonzero(row) == 15 for row in w)
    nz = w[w != 0]
    assert nz.std() == pytest.approx(0.5, rel=0.1)


def test_sparse_torch_form_zeros_per_column():
    w = np.empty((10, 30))
    init.sparse_(w, sparsity=0.25, generator=gen(7))
    assert all(np.count_nonzero(col == 0) == math.ceil(0.25 * 10) for col in w.T)


def test_bias_rules_section_8_4():
    b = nn.Parameter(np.ones(5, np.float32))
    init.zeros_(b)
    assert not b.data.any()
    init.constant_(b, 0.1)                     # a ReLU unit's bias
    np.testing.assert_array_equal(b.data, np.float32(0.1))
    c = np.array([0.5, 0.3, 0.15, 0.05])
    out = init.softmax_bias_(np.zeros(4), c)
    softmax = np.exp(out) / np.exp(out).sum()
    np.testing.assert_allclose(softmax, c, rtol=1e-12)


def test_seeded_and_reproducible():
    fe.manual_seed(3)
    a = init.xavier_uniform_(np.empty((4, 5)))
    fe.manual_seed(3)
    b = init.xavier_uniform_(np.empty((4, 5)))
    np.testing.assert_array_equal(a, b)


def test_fills_parameters_in_place_and_returns_them():
    layer = nn.Linear(3, 4)
    data = layer.weight.data
    assert init.orthogonal_(layer.weight, generator=gen(8)) is layer.weight
    assert layer.weight.data is data
    np.testing.assert_allclose(data.T @ data, np.eye(3), atol=1e-6)   # (4, 3): columns


def test_bad_input_errors():
    with pytest.raises(ValueError, match="rank >= 2"):
        init.xavier_uniform_(np.empty(5))
    with pytest.raises(TypeError, match="float"):
        init.zeros_(np.empty(3, np.int64))
    with pytest.raises(ValueError, match="exactly one"):
        init.sparse_(np.empty((3, 3)))
    with pytest.raises(ValueError, match="k=5"):
        init.sparse_(np.empty((3, 3)), k=5)
    with pytest.raises(ValueError, match="nonlinearity"):
        init.calculate_gain("swish")


def test_initialize_a_whole_model():
    fe.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    init.initialize_(model, init.orthogonal_, lambda b: init.constant_(b, 0.1),
                     generator=gen(9))
    for layer in (model[0], model[2]):
        w = layer.weight.data.astype(np.float64)
        np.testing.assert_allclose(w @ w.T, np.eye(w.shape[0]), atol=1e-6)   # rows <= cols
        np.testing.assert_array_equal(layer.bias.data, np.float32(0.1))
    a = init.initialize_(nn.Linear(5, 5), generator=gen(1)).weight.data.copy()
    b = init.initialize_(nn.Linear(5, 5), generator=gen(1)).weight.data
    np.testing.assert_array_equal(a, b)
    assert np.abs(a).max() <= np.sqrt(6 / 10)                               # eq. 8.23


def test_gains_of_every_torch_nonlinearity_and_bfloat16_arrays():
    """calculate_gain names torch's every nonlinearity (the transposed convolutions too),
    and initializers fill bfloat16 arrays as float ones; a bfloat16 numpy array is taken
    as a tensor (its buffer attribute ``.data`` raises for that dtype)."""
    import ml_dtypes
    import torch
    for name in ("linear", "sigmoid", "tanh", "relu", "selu", "conv1d", "conv2d",
                 "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"):
        assert fe.init.calculate_gain(name) == pytest.approx(torch.nn.init.calculate_gain(name))
    a = np.zeros((64, 32), ml_dtypes.bfloat16)
    fe.init.xavier_uniform_(a)
    bound = np.sqrt(6 / (64 + 32))
    assert a.dtype == ml_dtypes.bfloat16 and 0 < np.abs(a.astype(np.float32)).max() <= bound
    y = fe.F.relu(a - 0.5)
    assert np.asarray(y.numpy()).dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(np.asarray(y.numpy(), np.float32),
                                  np.maximum(a.astype(np.float32) - 0.5, 0).astype(
                                      ml_dtypes.bfloat16).astype(np.float32))


def test_trunc_normal_stays_in_bounds_with_the_truncated_moments():
    """N(0.5, 1) truncated to [-0.5, 2]: every value inside, mean and variance those of the
    truncated normal (worked out from the standard normal's pdf and cdf)."""
    w = np.empty((400, 500))
    init.trunc_normal_(w, mean=0.5, std=1.0, a=-0.5, b=2.0, generator=gen(3))
    assert w.min() >= -0.5 and w.max() <= 2.0
    al, be = -1.0, 1.5                                  # the bounds in std units

    def pdf(x):
        return math.exp(-x * x / 2) / math.sqrt(2 * math.pi)

    def cdf(x):
        return (1 + math.erf(x / math.sqrt(2))) / 2
    z = cdf(be) - cdf(al)
    mean = 0.5 + (pdf(al) - pdf(be)) / z
    var = 1 + (al * pdf(al) - be * pdf(be)) / z - ((pdf(al) - pdf(be)) / z) ** 2
    assert w.mean() == pytest.approx(mean, abs=0.01)
    assert w.var() == pytest.approx(var, rel=0.02)
    with pytest.raises(ValueError, match="a < b"):
        init.trunc_normal_(w, a=1.0, b=1.0)


@pytest.mark.parametrize("shape,groups", [((5, 3, 3), 1), ((6, 4, 3, 5), 2), ((4, 4, 1, 3, 3), 4),
                                          ((3, 6, 3, 3), 1)])
def test_dirac_and_eye_equal_torch(shape, groups):
    ours = np.full(shape, 7.0, np.float32)
    init.dirac_(ours, groups=groups)
    theirs = torch.full(shape, 7.0)
    torch.nn.init.dirac_(theirs, groups=groups)
    np.testing.assert_array_equal(ours, theirs.numpy())
    m = np.full((3, 5), 2.0, np.float32)
    np.testing.assert_array_equal(init.eye_(m), torch.nn.init.eye_(torch.full((3, 5), 2.0)))
    with pytest.raises(ValueError, match="2 dimensions"):
        init.eye_(np.zeros((2, 2, 2), np.float32))
    with pytest.raises(ValueError, match="divisible by groups"):
        init.dirac_(np.zeros((5, 3, 3), np.float32), groups=2)


def test_zero_element_weights_are_left_alone_and_gains_refuse_what_torch_refuses():
    for fn in (init.kaiming_uniform_, init.kaiming_normal_, init.orthogonal_):
        w = np.zeros((3, 0), np.float32)
        assert fn(w) is w
    for bad in (lambda: init.calculate_gain("identity"),
                lambda: init.calculate_gain("leaky_relu", True)):
        with pytest.raises(ValueError):
            bad()
    for bad in (lambda: torch.nn.init.calculate_gain("identity"),
                lambda: torch.nn.init.calculate_gain("leaky_relu", True)):
        with pytest.raises(ValueError):
            bad()
