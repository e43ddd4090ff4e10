"""Normalization layers and activations against torch: LayerNorm, GroupNorm, InstanceNorm1d/2d,
RMSNorm and the GELU (both forms), SiLU, Mish, Hardswish, LogSigmoid modules, on seeded random
configurations; values and gradients (inputs and parameters) of one graph per backend and
dtype; instance norm's running statistics; the fused LLVM form of layer norm."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import irgraph.frontend as fe
from irgraph.frontend import F, nn
from irgraph.passes.fusion import fuse

from _torch_twins import check


def random_config(seed: int) -> dict:
    r = np.random.default_rng(seed)
    b = lambda: bool(r.integers(2))                          # noqa: E731
    return dict(seed=seed, ln_shape=[(8,), (6, 8)][r.integers(2)], ln_affine=b(), ln_bias=b(),
                ln_eps=float(r.choice([1e-5, 1e-3])), groups=int(r.choice([1, 2, 3, 6])),
                gn_affine=b(), in_affine=b(), rms_shape=[(8,), (6, 8)][r.integers(2)],
                rms_eps=[None, 1e-6][r.integers(2)], rms_affine=b(),
                scale=float(r.choice([1.0, 3.0])))


def test_the_seeded_configurations_cover_every_option():
    cfgs = [random_config(s) for s in SEEDS]
    for key in ("ln_affine", "ln_bias", "gn_affine", "in_affine", "rms_affine"):
        assert {c[key] for c in cfgs} == {False, True}, key
    assert {c["rms_eps"] for c in cfgs} == {None, 1e-6}
    assert {c["ln_shape"] for c in cfgs} == {(8,), (6, 8)}


SEEDS = [0, 2, 5, 9]


def build(nnm, cfg):
    """The same zoo from ``fe.nn`` or ``torch.nn`` (same names, arguments and order)."""
    class Zoo(nnm.Module):
        def __init__(self):
            super().__init__()
            self.ln = nnm.LayerNorm(cfg["ln_shape"], eps=cfg["ln_eps"],
                                    elementwise_affine=cfg["ln_affine"], bias=cfg["ln_bias"])
            self.gn = nnm.GroupNorm(cfg["groups"], 6, affine=cfg["gn_affine"])
            if not cfg.get("small"):
                self.in1 = nnm.InstanceNorm1d(6, affine=cfg["in_affine"])
                self.in2 = nnm.InstanceNorm2d(6, affine=not cfg["in_affine"])
            self.rms = nnm.RMSNorm(cfg["rms_shape"], eps=cfg["rms_eps"],
                                   elementwise_affine=cfg["rms_affine"])
            acts = [nnm.GELU(), nnm.GELU(approximate="tanh"), nnm.SiLU(), nnm.Mish(),
                    nnm.Hardswish(), nnm.LogSigmoid()]
            self.acts = nnm.ModuleList(acts[:2] if cfg.get("small") else acts)

        def forward(self, x, img, seq):
            outs = (self.ln(x), self.gn(img), self.rms(x))
            if not cfg.get("small"):
                outs += (self.in1(seq), self.in2(img))
            return outs + tuple(a(x * cfg["scale"]) for a in self.acts)
    return Zoo()


def zoo(cfg):
    fe.manual_seed(cfg["seed"])
    ours = build(nn, cfg)
    r = np.random.default_rng(50 + cfg["seed"])
    for p in ours.parameters():                  # not the ones/zeros of the initialization
        p.data = (p.data + r.standard_normal(p.data.shape) * 0.5).astype(np.float32)
    inputs = [r.standard_normal(s) * 2 + 0.5 for s in ((4, 6, 8), (2, 6, 5, 4), (3, 6, 7))]
    return ours, build(torch.nn, cfg), inputs


@pytest.mark.parametrize("seed", SEEDS)
def test_norms_and_activations_match_torch_float64_reference(seed):
    ours, twin, inputs = zoo(random_config(seed))
    check(ours, twin, inputs, "reference", np.float64, rtol=1e-9, atol=1e-10)


def small(seed: int) -> dict:
    """Where compiling dominates (LLVM): layer, group and RMS norm and both GELUs (the
    instance norms and other activations are the same ops, tested on the reference)."""
    return dict(random_config(seed), small=True)


def test_norms_and_activations_match_torch_float64_llvm():
    ours, twin, inputs = zoo(small(9))
    check(ours, twin, inputs, "llvm", np.float64, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("backend", ["reference", "llvm", "triton"])
def test_norms_and_activations_match_torch_float32_every_backend(backend):
    ours, twin, inputs = zoo(small(5) if backend == "llvm" else random_config(5))
    check(ours, twin, inputs, backend, np.float32, rtol=2e-4, atol=2e-5)


def test_functional_forms_match_torch():
    """F.layer_norm / group_norm / rms_norm / instance_norm / gelu with explicit weights."""
    r = np.random.default_rng(7)
    x = r.standard_normal((3, 4, 5))
    w, b, c = r.standard_normal(5), r.standard_normal(5), r.standard_normal(4)

    def fn(x):
        return (F.layer_norm(x, 5, w, b, 1e-4), F.group_norm(x, 2, c, c * 2),
                F.rms_norm(x, [4, 5], np.ones((4, 5)) * 2), F.instance_norm(x, weight=c),
                F.gelu(x, approximate="tanh"), F.erf(x))
    got = fe.compile(fn, fe.TensorSpec(x.shape, "float64"), backend="reference")(x)
    T = torch.from_numpy
    tf = torch.nn.functional
    want = (tf.layer_norm(T(x), (5,), T(w), T(b), 1e-4), tf.group_norm(T(x), 2, T(c), T(c) * 2),
            tf.rms_norm(T(x), [4, 5], torch.ones(4, 5, dtype=torch.float64) * 2),
            tf.instance_norm(T(x), weight=T(c)), tf.gelu(T(x), approximate="tanh"),
            torch.erf(T(x)))
    for k, (a, t) in enumerate(zip(got, want)):
        np.testing.assert_allclose(a, t.numpy(), rtol=1e-10, atol=1e-12, err_msg=str(k))


@pytest.mark.parametrize("affine", [False, True])
def test_instance_norm_running_statistics_as_torch(affine):
    """track_running_stats: training updates the running mean/variance (momentum 0.3); eval
    normalizes with them. torch keeps ``num_batches_tracked`` (its norm base class's buffer)
    but never counts it for instance norm: it stays 0."""
    fe.manual_seed(0)
    ours = nn.InstanceNorm2d(3, momentum=0.3, affine=affine, track_running_stats=True)
    twin = torch.nn.InstanceNorm2d(3, momentum=0.3, affine=affine, track_running_stats=True)
    r = np.random.default_rng(3)
    step = fe.compile(ours, fe.TensorSpec((2, 3, 4, 5)), backend="reference")
    for _ in range(2):
        x = (r.standard_normal((2, 3, 4, 5)) * 2 + 1).astype(np.float32)
        got = step(x)
        want = twin(torch.from_numpy(x))
        np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-4, atol=1e-5)
    for name in ("running_mean", "running_var"):
        np.testing.assert_allclose(getattr(ours, name).data, getattr(twin, name).numpy(),
                                   rtol=1e-5, err_msg=name)
    assert int(ours.num_batches_tracked.data) == int(twin.num_batches_tracked) == 0
    ours.eval()
    twin.eval()
    x = r.standard_normal((3, 4, 5)).astype(np.float32)          # unbatched
    got = fe.compile(ours, fe.TensorSpec(x.shape), backend="reference")(x)
    np.testing.assert_allclose(got, twin(torch.from_numpy(x)).detach().numpy(), rtol=1e-4,
                               atol=1e-5)


@pytest.mark.parametrize("backend", ["reference", "llvm", "triton"])
@pytest.mark.parametrize("cls", ["InstanceNorm2d", "GroupNorm", "LayerNorm"])
def test_norms_of_a_bfloat16_input_with_float32_parameters_as_torch(cls, backend):
    """A bfloat16 input beside a norm layer's float32 affine parameters (and running
    statistics): y stays bfloat16, computed in float32 and rounded once, as torch's; the
    running statistics stay float32."""
    import ml_dtypes
    args = {"InstanceNorm2d": ((4,), dict(affine=True, track_running_stats=True)),
            "GroupNorm": ((2, 4), {}), "LayerNorm": (([5, 5],), {})}[cls]
    ours, twin = getattr(nn, cls)(*args[0], **args[1]), getattr(torch.nn, cls)(*args[0], **args[1])
    with torch.no_grad():
        for name, p in twin.named_parameters():
            p.copy_(torch.linspace(-1.5, 2.0, p.numel()).reshape(p.shape))
            getattr(ours, name).data[...] = p.numpy()
    x = (np.random.default_rng(1).standard_normal((2, 4, 5, 5)) * 3 + 40).astype(
        ml_dtypes.bfloat16)
    got = fe.compile(ours, fe.TensorSpec(x.shape, "bfloat16"), backend=backend)(x)
    want = twin(torch.from_numpy(x.astype(np.float32)).bfloat16())
    assert str(got.dtype) == "bfloat16"
    np.testing.assert_allclose(got.astype(np.float32), want.detach().float().numpy(),
                               atol=0.02)
    for name, buf in twin.named_buffers():
        if buf.is_floating_point():
            assert getattr(ours, name).data.dtype == np.float32
            np.testing.assert_allclose(getattr(ours, name).data, buf.numpy(), rtol=1e-5)


def test_bad_arguments_name_what_is_wrong():
    with pytest.raises(ValueError, match=r"num_groups \(4\) must divide num_channels \(6\)"):
        nn.GroupNorm(4, 6)
    ln = nn.LayerNorm((3, 4))
    with pytest.raises(ValueError, match=r"normalized_shape \[3, 4\] must be the trailing dims"):
        fe.trace(ln, fe.TensorSpec((2, 4, 3)))
    with pytest.raises(ValueError, match="approximate must be 'none' or 'tanh'"):
        fe.trace(lambda x: F.gelu(x, approximate="fast"), fe.TensorSpec((2,)))
    with pytest.raises(ValueError, match=r"InstanceNorm2d expects 3-D \(unbatched\) or 4-D"):
        fe.trace(nn.InstanceNorm2d(3), fe.TensorSpec((2, 3)))


def test_layer_norm_is_statistics_regions_and_one_output_region():
    """The composed layer norm fuses into three passes over x: the mean, one reduction
    region (deviations, variance, rsqrt) and one elementwise region (scale, affine map);
    docs/layers.md has the measurement that keeps it composed."""
    ln = nn.LayerNorm(16)
    g = fuse(fe.trace(ln, fe.TensorSpec((8, 16))))
    assert [n.op for n in g.nodes] == ["mean", "fused", "fused"]
    assert [n.attrs["kind"] for n in g.nodes[1:]] == ["reduction", "elementwise"]
