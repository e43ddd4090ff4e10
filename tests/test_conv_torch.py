"""Convolution against torch.nn.functional: forward and gradients (torch.autograd) over a grid
of irregular shapes, strides (also larger than the kernel), per-side and string paddings,
dilations and groups, in 1-, 2- and 3-D (eq. 9.6-9.8, section 9.5)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import irgraph.frontend as fe
from irgraph.frontend import F, nn
from tests._conv_testing import compare, rand

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same'")

# (x shape, w shape, stride, padding, dilation, groups)
CONV = [
    ((2, 3, 17), (5, 3, 4), 3, 2, 2, 1),
    ((1, 4, 11), (4, 1, 3), 1, "same", 1, 4),
    ((2, 3, 7, 11), (4, 3, 3, 2), 1, 0, 1, 1),
    ((1, 4, 13, 7), (6, 2, 3, 3), (2, 3), (1, 2), (2, 1), 2),
    ((2, 6, 5, 5), (6, 1, 2, 2), 3, 1, 1, 6),
    ((1, 2, 9, 8), (3, 2, 4, 3), 1, "same", (1, 2), 1),
    ((1, 2, 5, 7), (2, 2, 3, 3), 1, "valid", 1, 1),
    ((1, 2, 5, 6, 7), (4, 1, 2, 3, 2), (1, 2, 3), (1, 0, 1), 1, 2),
    ((2, 1, 4, 4, 3), (2, 1, 3, 2, 3), 1, "same", 1, 1),
]


@pytest.mark.parametrize("xs,ws,stride,padding,dilation,groups", CONV)
def test_conv_matches_torch_forward_and_gradients(xs, ws, stride, padding, dilation, groups):
    d = len(xs) - 2
    ours = getattr(F, f"conv{d}d")
    theirs = getattr(TF, f"conv{d}d")
    bias = rand(ws[0], seed=3)
    compare(lambda x, w, b: ours(x, w, b, stride, padding, dilation, groups),
            lambda x, w, b: theirs(x, w, b, stride, padding, dilation, groups),
            [rand(*xs, seed=1), rand(*ws, seed=2), bias])


@pytest.mark.parametrize("d", [1, 2, 3])
def test_full_padding_is_k_minus_1_each_side_section_9_5(d):
    """'full' gives width m+k-1 (section 9.5): torch's padding = dilation*(k-1)."""
    x, w = rand(1, 2, *([5] * d), seed=4), rand(3, 2, *range(2, 2 + d), seed=5)
    pad = tuple(2 * (k - 1) for k in w.shape[2:])
    compare(lambda x, w: F.conv(x, w, padding="full", dilation=2),
            lambda x, w: getattr(TF, f"conv{d}d")(x, w, padding=pad, dilation=2), [x, w])


def test_widths_valid_same_full_section_9_5():
    """m=9, k=4: valid m-k+1=6, same m=9, full m+k-1=12."""
    x, w = rand(1, 1, 9, seed=0), rand(1, 1, 4, seed=1)
    widths = [fe.trace(lambda x: F.conv1d(x, w, padding=p), fe.TensorSpec(x.shape, "float64"))
              .outputs[0].shape[-1] for p in ("valid", "same", "full")]
    assert widths == [6, 9, 12]


def test_same_with_even_kernel_pads_extra_on_the_right_as_torch():
    x, w = rand(1, 1, 6, 7, seed=2), rand(1, 1, 2, 4, seed=3)
    compare(lambda x, w: F.conv2d(x, w, padding="same"),
            lambda x, w: TF.conv2d(TF.pad(x, (1, 2, 0, 1)), w), [x, w])


def test_per_side_padding_matches_explicit_zero_pad():
    x, w = rand(2, 2, 6, 5, seed=4), rand(3, 2, 3, 2, seed=5)
    compare(lambda x, w: F.conv2d(x, w, stride=(2, 1), padding=(0, 2, 3, 1)),
            lambda x, w: TF.conv2d(TF.pad(x, (3, 1, 0, 2)), w, stride=(2, 1)), [x, w])


def test_unbatched_input_as_torch():
    x, w = rand(3, 8, seed=6), rand(2, 3, 3, seed=7)
    compare(lambda x, w: F.conv1d(x, w, padding=1), lambda x, w: TF.conv1d(x, w, padding=1),
            [x, w])


# (x shape, w shape (Cin, Cout/g, *k), stride, padding, output_padding, groups, dilation)
TRANSPOSED = [
    ((2, 2, 7), (2, 3, 4), 3, 2, 2, 1, 1),
    ((2, 3, 4, 5), (3, 4, 3, 2), (2, 3), (1, 0), (1, 2), 1, 1),
    ((1, 4, 5, 3), (4, 3, 3, 3), 2, 1, 0, 2, 2),
    ((1, 2, 4, 4), (2, 2, 3, 3), 1, 0, 1, 1, 2),     # output_padding >= stride, < dilation
    ((1, 2, 3, 4, 2), (2, 2, 2, 3, 2), (2, 1, 2), 0, (1, 0, 1), 1, 1),
]


@pytest.mark.parametrize("xs,ws,stride,padding,output_padding,groups,dilation", TRANSPOSED)
def test_conv_transpose_matches_torch(xs, ws, stride, padding, output_padding, groups,
                                      dilation):
    d = len(xs) - 2
    ours = getattr(F, f"conv_transpose{d}d")
    theirs = getattr(TF, f"conv_transpose{d}d")
    b = rand(ws[1] * groups, seed=9)
    compare(lambda x, w, b: ours(x, w, b, stride, padding, output_padding, groups, dilation),
            lambda x, w, b: theirs(x, w, b, stride, padding, output_padding, groups, dilation),
            [rand(*xs, seed=1), rand(*ws, seed=2), b])


def test_conv_transpose_output_size_picks_among_sizes_with_the_same_conv_output():
    """Inputs 7, 8 and 9 all give 4 outputs under stride 2, kernel 3, padding 1 (section
    9.5's warning): the transposed convolution must be told which one."""
    torch.manual_seed(0)
    fe.manual_seed(0)
    ours = nn.ConvTranspose2d(2, 3, 3, stride=3, padding=1)
    theirs = torch.nn.ConvTranspose2d(2, 3, 3, stride=3, padding=1).double()
    with torch.no_grad():
        theirs.weight.copy_(torch.tensor(ours.weight.data))
        theirs.bias.copy_(torch.tensor(ours.bias.data))
    x = rand(1, 2, 4, 4, seed=3)
    for size in [(10, 10), (11, 12), (12, 11)]:
        f = fe.compile(lambda x: ours(x, output_size=size), fe.TensorSpec(x.shape, "float32"))
        want = theirs(torch.tensor(x), output_size=size).detach().numpy()
        got = f(x.astype(np.float32))
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="not in the range"):
        fe.trace(lambda x: ours(x, output_size=(13, 10)), fe.TensorSpec(x.shape))


@pytest.mark.parametrize("k,dilation,padding,stride", [((2, 3), 1, 0, 1), ((3, 2), (2, 1),
                                                                              (1, 2), (2, 3))])
def test_unfold_and_fold_match_torch(k, dilation, padding, stride):
    x = rand(2, 3, 7, 8, seed=1)
    compare(lambda x: F.unfold(x, k, dilation, padding, stride),
            lambda x: TF.unfold(x, k, dilation, padding, stride), [x])
    cols = TF.unfold(torch.tensor(x), k, dilation, padding, stride).numpy()
    compare(lambda c: F.fold(c, (7, 8), k, dilation, padding, stride),
            lambda c: TF.fold(c, (7, 8), k, dilation, padding, stride), [cols])


@pytest.mark.parametrize("cls,tcls,xs,kw", [
    (nn.Conv1d, torch.nn.Conv1d, (2, 4, 9), dict(kernel_size=3, stride=2, padding=1)),
    (nn.Conv2d, torch.nn.Conv2d, (2, 4, 7, 6), dict(kernel_size=(3, 2), dilation=2, groups=2)),
    (nn.Conv2d, torch.nn.Conv2d, (1, 4, 5, 6), dict(kernel_size=3, padding=2,
                                                     padding_mode="reflect")),
    (nn.Conv2d, torch.nn.Conv2d, (1, 4, 5, 6), dict(kernel_size=3, padding=1,
                                                     padding_mode="circular", bias=False)),
    (nn.Conv3d, torch.nn.Conv3d, (1, 4, 4, 5, 3), dict(kernel_size=2, padding="same")),
    (nn.ConvTranspose1d, torch.nn.ConvTranspose1d, (2, 4, 5), dict(kernel_size=3, stride=2)),
    (nn.ConvTranspose3d, torch.nn.ConvTranspose3d, (1, 4, 2, 3, 2),
     dict(kernel_size=2, stride=2, output_padding=1)),
])
def test_layers_match_torch_modules_and_default_init(cls, tcls, xs, kw):
    fe.manual_seed(1)
    ours = cls(4, 6, **kw)
    theirs = tcls(4, 6, **kw)
    assert ours.weight.shape == tuple(theirs.weight.shape)
    bound = 1 / np.sqrt(np.prod(theirs.weight.shape[1:]))     # kaiming_uniform(a=sqrt(5))
    assert np.abs(ours.weight.data).max() <= bound
    assert np.abs(ours.weight.data).max() > 0.8 * bound
    with torch.no_grad():
        theirs.weight.copy_(torch.tensor(ours.weight.data))
        if theirs.bias is not None:
            theirs.bias.copy_(torch.tensor(ours.bias.data))
    x = rand(*xs, seed=2, dtype=np.float32)
    got = fe.compile(ours, fe.TensorSpec(xs))(x)
    np.testing.assert_allclose(got, theirs(torch.tensor(x)).detach().numpy(), rtol=1e-4,
                               atol=1e-5)


def test_bad_channels_error_names_the_op_and_the_users_line():
    w = rand(3, 5, 3, dtype=np.float32)
    with pytest.raises(Exception) as err:
        fe.trace(lambda x: F.conv1d(x, w), fe.TensorSpec((1, 4, 9)))
    msg = str(err.value)
    assert "conv" in msg and "test_conv_torch.py" in msg and "input channels" in msg


def test_same_padding_with_stride_is_refused_as_torch():
    with pytest.raises(ValueError, match="strided"):
        fe.trace(lambda x: F.conv1d(x, rand(1, 1, 3, dtype=np.float32), stride=2,
                                    padding="same"), fe.TensorSpec((1, 1, 9)))


def _random_conv_configs(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        d = int(rng.integers(1, 4))
        groups = int(rng.choice([1, 2, 3]))
        c, o = groups * int(rng.integers(1, 3)), groups * int(rng.integers(1, 3))
        k = tuple(int(v) for v in rng.integers(1, 4, d))
        dil = tuple(int(v) for v in rng.integers(1, 3, d))
        st = tuple(int(v) for v in rng.integers(1, 4, d))
        pad = tuple(int(v) for v in rng.integers(0, 3, d))
        size = tuple(int(dl * (kk - 1) + 1 + rng.integers(0, 5)) for kk, dl in zip(k, dil))
        yield (int(rng.integers(1, 3)), c) + size, (o, c // groups) + k, st, pad, dil, groups


@pytest.mark.parametrize("xs,ws,stride,padding,dilation,groups", list(_random_conv_configs(24)))
def test_random_conv_and_transpose_configurations_match_torch(xs, ws, stride, padding,
                                                             dilation, groups):
    d = len(xs) - 2
    x, w = rand(*xs, seed=1), rand(*ws, seed=2)
    compare(lambda x, w: F.conv(x, w, None, stride, padding, dilation, groups),
            lambda x, w: getattr(TF, f"conv{d}d")(x, w, None, stride, padding, dilation,
                                                  groups), [x, w])
    # the transposed convolution of the conv's output, weight read as (C_in, C_out/g, *k)
    wt = rand(ws[0], ws[1], *ws[2:], seed=3)
    y = TF.__dict__[f"conv{d}d"](torch.tensor(x), torch.tensor(w), None, stride, padding,
                                 dilation, groups)
    op = tuple(min(s, q) - 1 for s, q in zip(stride, dilation))
    size = [(n - 1) * s - 2 * p + q * (kk - 1) + o + 1 for n, s, p, q, kk, o in
            zip(y.shape[2:], stride, padding, dilation, ws[2:], op)]
    if min(size) < 1:           # torch refuses too; so must we, clearly
        with pytest.raises(ValueError, match="too small"):
            fe.trace(lambda y: F.conv_transpose(y, wt, None, stride, padding, op, groups,
                                                dilation), fe.TensorSpec(tuple(y.shape)))
        return
    compare(lambda y, wt: F.conv_transpose(y, wt, None, stride, padding, op, groups, dilation),
            lambda y, wt: getattr(TF, f"conv_transpose{d}d")(y, wt, None, stride, padding, op,
                                                             groups, dilation),
            [y.numpy(), wt])
