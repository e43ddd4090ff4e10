"""``nn`` modules of the activations and losses in compositions.py (PyTorch's names and
constructor arguments); nn.py re-exports them."""
from __future__ import annotations

import numpy as np

from . import functional as F
from .module import Module, Parameter

__all__ = ["LeakyReLU", "ReLU6", "Hardtanh", "ELU", "Softplus", "SiLU", "LogSigmoid",
           "GELU", "Mish", "Hardswish", "Hardsigmoid", "SELU", "CELU", "Softsign", "Softmin",
           "Softmax2d", "GLU", "Hardshrink", "Softshrink", "Tanhshrink", "Threshold", "PReLU",
           "RReLU",
           "L1Loss", "SmoothL1Loss", "HuberLoss", "BCELoss", "BCEWithLogitsLoss", "KLDivLoss",
           "PoissonNLLLoss", "GaussianNLLLoss", "MarginRankingLoss", "HingeEmbeddingLoss",
           "SoftMarginLoss", "CosineEmbeddingLoss", "TripletMarginLoss",
           "MultiLabelSoftMarginLoss", "MultiMarginLoss", "CTCLoss",
           "CosineSimilarity", "PairwiseDistance", "PixelShuffle", "PixelUnshuffle",
           "ChannelShuffle", "Upsample", "UpsamplingNearest2d", "UpsamplingBilinear2d",
           "Dropout1d", "Dropout2d", "Dropout3d", "Fold", "Unfold",
           "ZeroPad1d", "ZeroPad2d", "ZeroPad3d", "ConstantPad1d", "ConstantPad2d",
           "ConstantPad3d", "ReflectionPad1d", "ReflectionPad2d", "ReflectionPad3d",
           "ReplicationPad1d", "ReplicationPad2d", "ReplicationPad3d", "CircularPad1d",
           "CircularPad2d", "CircularPad3d", "LocalResponseNorm", "MaxUnpool1d",
           "MaxUnpool2d", "MaxUnpool3d", "Bilinear"]


class _Fn(Module):
    """A module that calls ``fn`` with the keyword arguments given to its constructor."""
    fn = staticmethod(lambda x: x)
    defaults: dict = {}
    is_loss = False

    def __init__(self, *args, **kwargs):
        super().__init__()
        names = list(self.defaults)
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__} takes at most {len(names)} positional "
                            f"arguments ({', '.join(names)})")
        unknown = set(kwargs) - set(names)
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected arguments {sorted(unknown)}")
        self.kwargs = {**self.defaults, **dict(zip(names, args)), **kwargs}
        for k, v in self.kwargs.items():     # torch's attributes: loss.reduction, ...
            object.__setattr__(self, k, v)

    def forward(self, *xs):
        # ``inplace`` is accepted for PyTorch compatibility; traced code is functional. The
        # arguments are read from the attributes, so setting one (``loss.reduction =
        # "none"``) takes effect, as on a torch module
        kwargs = {k: getattr(self, k) for k in self.kwargs if k != "inplace"}
        return type(self).fn(*xs, **kwargs)

    def extra_repr(self) -> str:
        """torch's form: the function's arguments, ``inplace`` only when set, nothing for
        losses (their ``reduction`` and options are not printed)."""
        if self.is_loss:
            return ""
        return ", ".join(f"{k}={getattr(self, k)!r}" for k in self.kwargs
                         if k != "inplace" or getattr(self, k))


def _module(name: str, fn, **defaults):
    return type(name, (_Fn,), {"fn": staticmethod(fn), "defaults": defaults,
                               "is_loss": name.endswith("Loss"),
                               "__doc__": f"Module form of ``F.{fn.__name__}``."})


LeakyReLU = _module("LeakyReLU", F.leaky_relu, negative_slope=0.01, inplace=False)
ReLU6 = _module("ReLU6", F.relu6, inplace=False)
Hardtanh = _module("Hardtanh", F.hardtanh, min_val=-1.0, max_val=1.0, inplace=False)
ELU = _module("ELU", F.elu, alpha=1.0, inplace=False)
Softplus = _module("Softplus", F.softplus, beta=1.0, threshold=20.0)
SiLU = _module("SiLU", F.silu, inplace=False)
LogSigmoid = _module("LogSigmoid", F.logsigmoid)
GELU = _module("GELU", F.gelu, approximate="none")
Mish = _module("Mish", F.mish, inplace=False)
Hardswish = _module("Hardswish", F.hardswish, inplace=False)
L1Loss = _module("L1Loss", F.l1_loss, reduction="mean")
SmoothL1Loss = _module("SmoothL1Loss", F.smooth_l1_loss, reduction="mean", beta=1.0)
HuberLoss = _module("HuberLoss", F.huber_loss, reduction="mean", delta=1.0)
BCELoss = _module("BCELoss", F.binary_cross_entropy, weight=None, size_average=None,
                  reduce=None, reduction="mean")
BCEWithLogitsLoss = _module("BCEWithLogitsLoss", F.binary_cross_entropy_with_logits,
                            weight=None, size_average=None, reduce=None, reduction="mean",
                            pos_weight=None)

Hardsigmoid = _module("Hardsigmoid", F.hardsigmoid, inplace=False)
SELU = _module("SELU", F.selu, inplace=False)
CELU = _module("CELU", F.celu, alpha=1.0, inplace=False)
Softsign = _module("Softsign", F.softsign)
Softmin = _module("Softmin", F.softmin, dim=None)
GLU = _module("GLU", F.glu, dim=-1)
Hardshrink = _module("Hardshrink", F.hardshrink, lambd=0.5)
Softshrink = _module("Softshrink", F.softshrink, lambd=0.5)
Tanhshrink = _module("Tanhshrink", F.tanhshrink)
Threshold = _module("Threshold", F.threshold, threshold=None, value=None, inplace=False)
CTCLoss = _module("CTCLoss", F.ctc_loss, blank=0, reduction="mean", zero_infinity=False)
KLDivLoss = _module("KLDivLoss", F.kl_div, size_average=None, reduce=None, reduction="mean",
                    log_target=False)
PoissonNLLLoss = _module("PoissonNLLLoss", F.poisson_nll_loss, log_input=True, full=False,
                         size_average=None, eps=1e-8, reduce=None, reduction="mean")
GaussianNLLLoss = _module("GaussianNLLLoss", F.gaussian_nll_loss, full=False, eps=1e-6,
                          reduction="mean")
MarginRankingLoss = _module("MarginRankingLoss", F.margin_ranking_loss, margin=0.0,
                            size_average=None, reduce=None, reduction="mean")
HingeEmbeddingLoss = _module("HingeEmbeddingLoss", F.hinge_embedding_loss, margin=1.0,
                             size_average=None, reduce=None, reduction="mean")
SoftMarginLoss = _module("SoftMarginLoss", F.soft_margin_loss, size_average=None, reduce=None,
                         reduction="mean")
CosineEmbeddingLoss = _module("CosineEmbeddingLoss", F.cosine_embedding_loss, margin=0.0,
                              size_average=None, reduce=None, reduction="mean")
TripletMarginLoss = _module("TripletMarginLoss", F.triplet_margin_loss, margin=1.0, p=2.0,
                            eps=1e-6, swap=False, size_average=None, reduce=None,
                            reduction="mean")
MultiLabelSoftMarginLoss = _module("MultiLabelSoftMarginLoss", F.multilabel_soft_margin_loss,
                                   weight=None, size_average=None, reduce=None,
                                   reduction="mean")
MultiMarginLoss = _module("MultiMarginLoss", F.multi_margin_loss, p=1, margin=1.0, weight=None,
                          size_average=None, reduce=None, reduction="mean")
CosineSimilarity = _module("CosineSimilarity", F.cosine_similarity, dim=1, eps=1e-8)
PairwiseDistance = _module("PairwiseDistance", F.pairwise_distance, p=2.0, eps=1e-6,
                           keepdim=False)
PixelShuffle = _module("PixelShuffle", F.pixel_shuffle, upscale_factor=None)
PixelUnshuffle = _module("PixelUnshuffle", F.pixel_unshuffle, downscale_factor=None)
ChannelShuffle = _module("ChannelShuffle", F.channel_shuffle, groups=None)
Upsample = _module("Upsample", F.interpolate, size=None, scale_factor=None, mode="nearest",
                   align_corners=None, recompute_scale_factor=None)
UpsamplingNearest2d = _module("UpsamplingNearest2d", F.upsample_nearest, size=None,
                              scale_factor=None)
UpsamplingBilinear2d = _module("UpsamplingBilinear2d", F.upsample_bilinear, size=None,
                               scale_factor=None)
Fold = _module("Fold", F.fold, output_size=None, kernel_size=None, dilation=1, padding=0,
               stride=1)
Unfold = _module("Unfold", F.unfold, kernel_size=None, dilation=1, padding=0, stride=1)


class Softmax2d(Module):
    """``softmax`` over the channels of (N, C, H, W) or (C, H, W): dimension -3."""

    def forward(self, x):
        x = F.as_tensor(x)
        if x.ndim not in (3, 4):
            raise ValueError(f"Softmax2d: expected a 3-D or 4-D input, got shape "
                             f"{list(x.shape)}")
        return F.softmax(x, -3)


class PReLU(Module):
    """``torch.nn.PReLU``: ``num_parameters`` learned slopes (1, or one per channel), each
    starting at ``init``."""

    def __init__(self, num_parameters: int = 1, init: float = 0.25, device=None, dtype=None):
        super().__init__()
        self.num_parameters = int(num_parameters)
        self.init = float(init)
        self.weight = Parameter(np.full((self.num_parameters,), self.init,
                                        np.dtype(dtype or "float32")))

    def forward(self, x):
        return F.prelu(x, self.weight)

    def extra_repr(self):
        return f"num_parameters={self.num_parameters}"


class RReLU(Module):
    """``torch.nn.RReLU``: random slopes in [lower, upper) in training mode, their mean in
    eval mode (``F.rrelu``)."""

    def __init__(self, lower: float = 1 / 8, upper: float = 1 / 3, inplace: bool = False):
        super().__init__()
        self.lower, self.upper, self.inplace = float(lower), float(upper), inplace

    def forward(self, x):
        return F.rrelu(x, self.lower, self.upper, self.training)

    def extra_repr(self):
        return f"lower={self.lower}, upper={self.upper}"


class _ChannelDropout(Module):
    fn = staticmethod(F.dropout2d)

    def __init__(self, p: float = 0.5, inplace: bool = False):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p!r}")
        self.p, self.inplace = float(p), inplace

    def forward(self, x):
        return type(self).fn(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}, inplace={self.inplace}"


Dropout1d = type("Dropout1d", (_ChannelDropout,), {"fn": staticmethod(F.dropout1d)})
Dropout2d = type("Dropout2d", (_ChannelDropout,), {"fn": staticmethod(F.dropout2d)})
Dropout3d = type("Dropout3d", (_ChannelDropout,), {"fn": staticmethod(F.dropout3d)})


class _Pad(Module):
    """The padding modules: ``F.pad`` of the last ``dims`` axes with ``mode``; ``padding``
    an int (every side) or one (before, after) pair per axis, last axis first."""
    dims, mode = 2, "constant"

    def __init__(self, padding, value: float = 0.0):
        super().__init__()
        n = 2 * self.dims
        pads = (int(padding),) * n if isinstance(padding, (int, np.integer)) else \
            tuple(int(p) for p in padding)
        if len(pads) != n:
            raise ValueError(f"{type(self).__name__}: padding must be an int or {n} ints, got "
                             f"{padding!r}")
        self.padding, self.value = pads, float(value)

    def forward(self, x):
        x = F.as_tensor(x)
        if x.ndim not in (self.dims + 1, self.dims + 2):
            raise ValueError(f"{type(self).__name__}: expected a {self.dims + 1}-D "
                             f"(unbatched) or {self.dims + 2}-D input, got shape "
                             f"{list(x.shape)}")
        return F.pad(x, self.padding, self.mode, self.value)

    def extra_repr(self):
        return f"{self.padding}" + (f", value={self.value}" if self.mode == "constant" else "")


def _pad_module(name: str, dims: int, mode: str, constant: bool):
    attrs = {"dims": dims, "mode": mode, "__doc__": f"``F.pad`` of the last {dims} axes, "
                                                     f"mode {mode!r}."}
    if not constant:
        attrs["__init__"] = lambda self, padding: _Pad.__init__(self, padding)
    return type(name, (_Pad,), attrs)


ZeroPad1d, ZeroPad2d, ZeroPad3d = (
    _pad_module(f"ZeroPad{d}d", d, "constant", False) for d in (1, 2, 3))
ConstantPad1d, ConstantPad2d, ConstantPad3d = (
    _pad_module(f"ConstantPad{d}d", d, "constant", True) for d in (1, 2, 3))
ReflectionPad1d, ReflectionPad2d, ReflectionPad3d = (
    _pad_module(f"ReflectionPad{d}d", d, "reflect", False) for d in (1, 2, 3))
ReplicationPad1d, ReplicationPad2d, ReplicationPad3d = (
    _pad_module(f"ReplicationPad{d}d", d, "replicate", False) for d in (1, 2, 3))
CircularPad1d, CircularPad2d, CircularPad3d = (
    _pad_module(f"CircularPad{d}d", d, "circular", False) for d in (1, 2, 3))


LocalResponseNorm = _module("LocalResponseNorm", F.local_response_norm, size=None, alpha=1e-4,
                            beta=0.75, k=1.0)


class _MaxUnpoolNd(Module):
    fn = staticmethod(F.max_unpool2d)

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding = padding

    def forward(self, input, indices, output_size=None):
        return type(self).fn(input, indices, self.kernel_size, self.stride, self.padding,
                             output_size)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxUnpool1d(_MaxUnpoolNd):
    fn = staticmethod(F.max_unpool1d)


class MaxUnpool2d(_MaxUnpoolNd):
    fn = staticmethod(F.max_unpool2d)


class MaxUnpool3d(_MaxUnpoolNd):
    fn = staticmethod(F.max_unpool3d)


class Bilinear(Module):
    """``y = x1^T A x2 + b``: weight (out, in1, in2), bias (out); torch's initialization
    U(-1/sqrt(in1), 1/sqrt(in1)) for both."""

    def __init__(self, in1_features: int, in2_features: int, out_features: int,
                 bias: bool = True):
        super().__init__()
        from .random import rng
        self.in1_features, self.in2_features = in1_features, in2_features
        self.out_features = out_features
        k = 1 / np.sqrt(in1_features)
        self.weight = Parameter(rng().uniform(-k, k, (out_features, in1_features,
                                                      in2_features)).astype(np.float32))
        self.bias = Parameter(rng().uniform(-k, k, (out_features,)).astype(np.float32)) \
            if bias else None

    def forward(self, input1, input2):
        return F.bilinear(input1, input2, self.weight, self.bias)

    def extra_repr(self):
        return (f"in1_features={self.in1_features}, in2_features={self.in2_features}, "
                f"out_features={self.out_features}, bias={self.bias is not None}")
