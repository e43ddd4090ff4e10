"""``frontend.nn`` layers of chapter 9 and section 8.7.1, with ``torch.nn``'s constructors,
attribute names and default initialization (re-exported by nn.py).

Convolution weights and biases start as PyTorch's: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in
= (C/groups) * prod(kernel) (kaiming_uniform with a = sqrt(5)). Batch norm starts with gamma 1,
beta 0, running mean 0 and running variance 1.
"""
from __future__ import annotations

import math

import numpy as np

from . import functional as F
from irgraph.ops.conv_geometry import out_shape

from . import functional_conv as FC
from . import functional_pool as FP
from .functional_index import padding_index
from .module import Module, Parameter
from .random import rng

__all__ = ["Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d",
           "ConvTranspose3d", "LocallyConnected1d", "LocallyConnected2d", "TiledConv2d",
           "MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d",
           "LPPool1d", "LPPool2d", "LPPool3d", "AdaptiveAvgPool1d", "AdaptiveAvgPool2d",
           "AdaptiveAvgPool3d", "AdaptiveMaxPool1d", "AdaptiveMaxPool2d", "AdaptiveMaxPool3d",
           "GlobalAvgPool", "Maxout", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
           "Dropout", "Embedding"]

_PAD_MODES = {"reflect": "reflect", "replicate": "replicate", "circular": "circular"}


def _uniform(shape, fan_in: int) -> Parameter:
    k = 1 / math.sqrt(fan_in) if fan_in else 0.0
    return Parameter(rng().uniform(-k, k, shape).astype(np.float32))


def _tup(v, d: int) -> tuple[int, ...]:
    return (int(v),) * d if isinstance(v, (int, np.integer)) else tuple(v)


# ---------------------------------------------------------------- convolutions
def _conv_repr(m) -> str:
    """torch's text for a convolution layer: arguments that differ from the defaults."""
    d = m.dim

    def tup(v):
        return v if isinstance(v, str) else _tup(v, d)
    text = (f"{m.in_channels}, {m.out_channels}, kernel_size={m.kernel_size}, "
            f"stride={m.stride}")
    if tup(m.padding) != (0,) * d:
        text += f", padding={tup(m.padding)}"
    if m.dilation != (1,) * d:
        text += f", dilation={m.dilation}"
    if tup(getattr(m, "output_padding", 0)) != (0,) * d:
        text += f", output_padding={tup(m.output_padding)}"
    if m.groups != 1:
        text += f", groups={m.groups}"
    if m.bias is None:
        text += ", bias=False"
    if getattr(m, "padding_mode", "zeros") != "zeros":
        text += f", padding_mode={m.padding_mode}"
    return text


class _ConvNd(Module):
    dim = 2

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros"):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and "
                             f"out_channels={out_channels}")
        if padding_mode != "zeros" and padding_mode not in _PAD_MODES:
            raise ValueError(f"padding_mode must be 'zeros', 'reflect', 'replicate' or "
                             f"'circular', got {padding_mode!r}")
        d = self.dim
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride = _tup(kernel_size, d), _tup(stride, d)
        self.dilation = _tup(dilation, d)
        self.padding, self.padding_mode = padding, padding_mode
        shape = (out_channels, in_channels // groups) + self.kernel_size
        fan_in = (in_channels // groups) * math.prod(self.kernel_size)
        self.weight = _uniform(shape, fan_in)
        self.bias = _uniform((out_channels,), fan_in) if bias else None

    def forward(self, x):
        if self.padding_mode == "zeros":
            return FC.conv(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                          self.groups, dim=self.dim)
        # padding other than zeros: pad explicitly, then a valid convolution (as PyTorch)
        pads = FC.conv_padding(self.padding, self.dim, self.kernel_size, self.dilation,
                            self.stride)
        x = F.as_tensor(x)
        lead = (0, 0) * (x.ndim - self.dim)
        x = x.tracer.emit("pad", x, pads=lead + pads, mode=_PAD_MODES[self.padding_mode])
        return FC.conv(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups,
                      dim=self.dim)

    def extra_repr(self) -> str:
        return _conv_repr(self)


class Conv1d(_ConvNd):
    dim = 1


class Conv2d(_ConvNd):
    dim = 2


class Conv3d(_ConvNd):
    dim = 3


class _ConvTransposeNd(Module):
    dim = 2

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 output_padding=0, groups: int = 1, bias: bool = True, dilation=1):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and "
                             f"out_channels={out_channels}")
        d = self.dim
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride = _tup(kernel_size, d), _tup(stride, d)
        self.padding, self.output_padding = padding, output_padding
        self.dilation = _tup(dilation, d)
        # PyTorch computes fan_in from weight.size(1) * prod(kernel) for transposed convs
        fan_in = (out_channels // groups) * math.prod(self.kernel_size)
        self.weight = _uniform((in_channels, out_channels // groups) + self.kernel_size, fan_in)
        self.bias = _uniform((out_channels,), fan_in) if bias else None

    def forward(self, x, output_size=None):
        return FC.conv_transpose(x, self.weight, self.bias, self.stride, self.padding,
                                self.output_padding, self.groups, self.dilation,
                                output_size=output_size, dim=self.dim)

    def extra_repr(self) -> str:
        return _conv_repr(self)


class ConvTranspose1d(_ConvTransposeNd):
    dim = 1


class ConvTranspose2d(_ConvTransposeNd):
    dim = 2


class ConvTranspose3d(_ConvTransposeNd):
    dim = 3


class _LocallyConnectedNd(Module):
    """Unshared convolution (eq. 9.9). The input's spatial size fixes the number of output
    locations, so it is a constructor argument; the bias is per output location."""
    dim = 2

    def __init__(self, in_channels: int, out_channels: int, input_size, kernel_size, stride=1,
                 padding=0, dilation=1, bias: bool = True):
        super().__init__()
        d = self.dim
        self.kernel_size, self.stride = _tup(kernel_size, d), _tup(stride, d)
        self.dilation, self.padding = _tup(dilation, d), padding
        pads = FC.conv_padding(padding, d, self.kernel_size, self.dilation, self.stride)
        self.output_size = out_shape(_tup(input_size, d), self.kernel_size, self.stride, pads,
                                     self.dilation)
        fan_in = in_channels * math.prod(self.kernel_size)
        self.weight = _uniform((out_channels,) + self.output_size + (in_channels,)
                               + self.kernel_size, fan_in)
        self.bias = _uniform((out_channels,) + self.output_size, fan_in) if bias else None

    def forward(self, x):
        return F.locally_connected(x, self.weight, self.bias, self.stride, self.padding,
                                   self.dilation)


class LocallyConnected1d(_LocallyConnectedNd):
    dim = 1


class LocallyConnected2d(_LocallyConnectedNd):
    dim = 2


class TiledConv2d(Module):
    """Tiled convolution (eq. 9.10): ``tiles`` kernels per direction, cycled through; the bias
    is per tile (O, *tiles)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, tiles, stride=1,
                 padding=0, dilation=1, bias: bool = True):
        super().__init__()
        self.kernel_size, self.tiles = _tup(kernel_size, 2), _tup(tiles, 2)
        self.stride, self.padding, self.dilation = stride, padding, dilation
        fan_in = in_channels * math.prod(self.kernel_size)
        self.weight = _uniform((out_channels, in_channels) + self.kernel_size + self.tiles,
                               fan_in)
        self.bias = _uniform((out_channels,) + self.tiles, fan_in) if bias else None

    def forward(self, x):
        return F.tiled_conv(x, self.weight, self.bias, self.stride, self.padding, self.dilation)


# ---------------------------------------------------------------- pooling
class _MaxPoolNd(Module):
    dim = 2

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1,
                 return_indices: bool = False, ceil_mode: bool = False):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.return_indices, self.ceil_mode = dilation, return_indices, ceil_mode

    def forward(self, x):
        return FP.max_pool(x, self.kernel_size, self.stride, self.padding, self.dilation,
                          self.ceil_mode, self.return_indices, dim=self.dim)

    def extra_repr(self) -> str:
        stride = self.kernel_size if self.stride is None else self.stride
        return (f"kernel_size={self.kernel_size}, stride={stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


class MaxPool1d(_MaxPoolNd):
    dim = 1


class MaxPool2d(_MaxPoolNd):
    dim = 2


class MaxPool3d(_MaxPoolNd):
    dim = 3


class _AvgPoolNd(Module):
    dim = 2

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
                 count_include_pad: bool = True, divisor_override=None):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad
        self.divisor_override = divisor_override

    def forward(self, x):
        return FP.avg_pool(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                          self.count_include_pad, self.divisor_override, dim=self.dim)

    def extra_repr(self) -> str:
        stride = self.kernel_size if self.stride is None else self.stride
        return f"kernel_size={self.kernel_size}, stride={stride}, padding={self.padding}"


class AvgPool1d(_AvgPoolNd):
    dim = 1


class AvgPool2d(_AvgPoolNd):
    dim = 2


class AvgPool3d(_AvgPoolNd):
    dim = 3


class _LPPoolNd(Module):
    dim = 2

    def __init__(self, norm_type: float, kernel_size, stride=None, ceil_mode: bool = False):
        super().__init__()
        self.norm_type, self.kernel_size = norm_type, kernel_size
        self.stride, self.ceil_mode = stride, ceil_mode

    def forward(self, x):
        return FP.lp_pool(x, self.norm_type, self.kernel_size, self.stride, self.ceil_mode,
                         dim=self.dim)


class LPPool1d(_LPPoolNd):
    dim = 1


class LPPool2d(_LPPoolNd):
    dim = 2


class LPPool3d(_LPPoolNd):
    dim = 3


class _AdaptivePoolNd(Module):
    dim = 2
    kind = "avg"

    def __init__(self, output_size, return_indices: bool = False):
        super().__init__()
        self.output_size, self.return_indices = output_size, return_indices

    def forward(self, x):
        fn = getattr(F, f"adaptive_{self.kind}_pool{self.dim}d")
        if self.kind == "max":
            return fn(x, self.output_size, self.return_indices)
        return fn(x, self.output_size)


def _adaptive(name: str, kind: str, dim: int):
    doc = f"``F.adaptive_{kind}_pool{dim}d`` as a module (fig. 9.11 centre)."
    return type(name, (_AdaptivePoolNd,), {"dim": dim, "kind": kind, "__doc__": doc})


AdaptiveAvgPool1d = _adaptive("AdaptiveAvgPool1d", "avg", 1)
AdaptiveAvgPool2d = _adaptive("AdaptiveAvgPool2d", "avg", 2)
AdaptiveAvgPool3d = _adaptive("AdaptiveAvgPool3d", "avg", 3)
AdaptiveMaxPool1d = _adaptive("AdaptiveMaxPool1d", "max", 1)
AdaptiveMaxPool2d = _adaptive("AdaptiveMaxPool2d", "max", 2)
AdaptiveMaxPool3d = _adaptive("AdaptiveMaxPool3d", "max", 3)


class GlobalAvgPool(Module):
    """Average over all positions (fig. 9.11 right): (N, C, *S) -> (N, C)."""

    def __init__(self, keepdim: bool = False):
        super().__init__()
        self.keepdim = keepdim

    def forward(self, x):
        return F.global_avg_pool(x, self.keepdim)


class Maxout(Module):
    """Max over groups of ``pool_size`` consecutive channels (fig. 9.9)."""

    def __init__(self, pool_size: int, dim: int = 1):
        super().__init__()
        self.pool_size, self.dim = pool_size, dim

    def forward(self, x):
        return F.maxout(x, self.pool_size, self.dim)


# ---------------------------------------------------------------- batch normalization
class _BatchNorm(Module):
    ranks: tuple[int, ...] = (2, 3)

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, *, bias: bool = True):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.weight = Parameter(np.ones(num_features, np.float32)) if affine else None
        # torch's bias=False: an affine scale without a shift
        self.bias = Parameter(np.zeros(num_features, np.float32)) if affine and bias else None
        if track_running_stats:
            self.register_buffer("running_mean", np.zeros(num_features, np.float32))
            self.register_buffer("running_var", np.ones(num_features, np.float32))
            self.register_buffer("num_batches_tracked", np.zeros((), np.int64))
        else:                   # torch's placeholders: None, in no state dict
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                self.register_buffer(name, None)

    def forward(self, x):
        x = F.as_tensor(x)
        if x.ndim not in self.ranks:
            raise ValueError(f"{type(self).__name__} expects {' or '.join(map(str, self.ranks))}"
                             f"-D input, got shape {x.shape}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}({self.num_features}) got {x.shape[1]} "
                             f"channels (input shape {x.shape})")
        stats = self.track_running_stats
        use_batch = self.training or not stats
        if not (stats and self.training):
            return F.batch_norm(x, self.running_mean if stats else None,
                                self.running_var if stats else None, self.weight, self.bias,
                                use_batch, 0.1 if self.momentum is None else self.momentum,
                                self.eps)
        # training with running statistics: PyTorch counts the batches, and momentum=None
        # makes the running averages cumulative (factor 1 / batches seen so far)
        tracer = x.tracer
        count = F.add(F.as_tensor(self.num_batches_tracked, x), 1)
        tracer.update_state(self.num_batches_tracked, count)
        if self.momentum is not None:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                True, self.momentum, self.eps)
        y, mean, var = FP.batch_norm_stats(x, self.running_mean, self.running_var,
                                           self.weight, self.bias, self.eps)
        factor = F.div(1.0, F.cast(count, x.dtype))
        for buf, stat in ((self.running_mean, mean), (self.running_var, var)):
            old = F.as_tensor(buf, x)
            tracer.update_state(buf, F.add(old, F.mul(F.sub(stat, old), factor)))
        return y

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, bias={self.bias is not None}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    ranks = (2, 3)


class BatchNorm2d(_BatchNorm):
    ranks = (4,)


class BatchNorm3d(_BatchNorm):
    ranks = (5,)


# ---------------------------------------------------------------- dropout, embeddings
class Dropout(Module):
    """``torch.nn.Dropout``: ``F.dropout`` in training mode, the identity in eval mode. Draws
    from the default generator (``fe.manual_seed``) or ``generator=``."""

    def __init__(self, p: float = 0.5, inplace: bool = False, generator=None):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p!r}")
        self.p, self.inplace, self.generator = float(p), inplace, generator

    def forward(self, x):
        return F.dropout(x, self.p, self.training, generator=self.generator)

    def extra_repr(self):
        return f"p={self.p}, inplace={self.inplace}"


class Embedding(Module):
    """``torch.nn.Embedding``: weight (num_embeddings, embedding_dim) drawn from N(0, 1), the
    ``padding_idx`` row zero and never updated by gradients. ``max_norm`` is refused."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 max_norm=None, norm_type: float = 2.0, scale_grad_by_freq: bool = False,
                 sparse: bool = False, _weight=None, _freeze: bool = False):
        super().__init__()
        if max_norm is not None:
            raise NotImplementedError("Embedding: max_norm (renormalizing rows in place while "
                                      "looking them up) is not supported; leave max_norm=None")
        if scale_grad_by_freq or sparse:
            raise NotImplementedError("Embedding: scale_grad_by_freq and sparse gradients are "
                                      "not supported")
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        if padding_idx is not None:
            padding_idx = padding_index(padding_idx, num_embeddings)
        self.padding_idx = padding_idx
        if _weight is None:
            w = rng().standard_normal((num_embeddings, embedding_dim)).astype(np.float32)
            if padding_idx is not None:
                w[padding_idx] = 0
        else:
            w = np.array(_weight, dtype=np.float32 if np.asarray(_weight).dtype != np.float64
                         else np.float64)
            if w.shape != (num_embeddings, embedding_dim):
                raise ValueError(f"Embedding: _weight has shape {w.shape}, expected "
                                 f"{(num_embeddings, embedding_dim)}")
        self.weight = Parameter(w, requires_grad=not _freeze)

    @classmethod
    def from_pretrained(cls, embeddings, freeze: bool = True, padding_idx: int | None = None,
                        **kwargs) -> "Embedding":
        w = np.asarray(embeddings)
        if w.ndim != 2:
            raise ValueError(f"Embedding.from_pretrained needs a 2-D array, got shape {w.shape}")
        return cls(w.shape[0], w.shape[1], padding_idx, _weight=w, _freeze=freeze, **kwargs)

    def forward(self, input):
        return F.embedding(input, self.weight, self.padding_idx)

    def extra_repr(self):
        pad = f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}"


class EmbeddingBag(Module):
    """``torch.nn.EmbeddingBag``: the sum, mean or max of bags of rows of ``weight``
    (N(0, 1), the ``padding_idx`` row zero); forward(input, offsets, per_sample_weights)
    as ``F.embedding_bag``. ``max_norm`` is refused."""

    def __init__(self, num_embeddings: int, embedding_dim: int, max_norm=None,
                 norm_type: float = 2.0, scale_grad_by_freq: bool = False, mode: str = "mean",
                 sparse: bool = False, _weight=None, include_last_offset: bool = False,
                 padding_idx: int | None = None):
        super().__init__()
        if max_norm is not None or scale_grad_by_freq or sparse:
            raise NotImplementedError("EmbeddingBag: max_norm, scale_grad_by_freq and sparse "
                                      "gradients are not supported")
        if mode not in ("sum", "mean", "max"):
            raise ValueError(f"EmbeddingBag: mode must be 'sum', 'mean' or 'max', got {mode!r}")
        table = Embedding(num_embeddings, embedding_dim, padding_idx, _weight=_weight)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.mode, self.include_last_offset = mode, include_last_offset
        self.padding_idx = table.padding_idx
        self.weight = table.weight

    @classmethod
    def from_pretrained(cls, embeddings, freeze: bool = True, max_norm=None,
                        norm_type: float = 2.0, scale_grad_by_freq: bool = False,
                        mode: str = "mean", sparse: bool = False,
                        include_last_offset: bool = False,
                        padding_idx: int | None = None) -> "EmbeddingBag":
        w = np.asarray(embeddings)
        if w.ndim != 2:
            raise ValueError(f"EmbeddingBag.from_pretrained needs a 2-D array, got shape "
                             f"{w.shape}")
        bag = cls(w.shape[0], w.shape[1], max_norm, norm_type, scale_grad_by_freq, mode,
                  sparse, _weight=w, include_last_offset=include_last_offset,
                  padding_idx=padding_idx)
        bag.weight.requires_grad = not freeze
        return bag

    def forward(self, input, offsets=None, per_sample_weights=None):
        return F.embedding_bag(input, self.weight, offsets, mode=self.mode,
                               per_sample_weights=per_sample_weights,
                               include_last_offset=self.include_last_offset,
                               padding_idx=self.padding_idx)

    def extra_repr(self) -> str:
        pad = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"{self.num_embeddings}, {self.embedding_dim}, mode='{self.mode}'{pad}"
