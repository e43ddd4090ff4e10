"""The basic layers of ``frontend.nn``: ``Linear``, the activations ``ReLU``, ``Tanh``,
``Sigmoid``, ``Softmax``, ``LogSoftmax``, ``Flatten``, ``Identity`` and the losses
``CrossEntropyLoss``, ``NLLLoss``, ``MSELoss`` (nn.py re-exports them)."""
from __future__ import annotations

import math

import numpy as np

from irgraph.ops.core import wrap_dim

from . import functional as F
from .functional_loss import loss_args
from .module import Module, Parameter
from .random import rng

__all__ = ["Linear", "ReLU", "Tanh", "Sigmoid", "Softmax", "LogSoftmax", "Flatten", "Unflatten",
           "Identity", "CrossEntropyLoss", "NLLLoss", "MSELoss"]


class Linear(Module):
    """``y = x W^T + b``; weight (out_features, in_features), PyTorch's default initialization
    U(-1/sqrt(in), 1/sqrt(in))."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        k = 1 / math.sqrt(in_features)
        self.weight = Parameter(rng().uniform(-k, k, (out_features, in_features)).astype(np.float32))
        self.bias = Parameter(rng().uniform(-k, k, (out_features,)).astype(np.float32)) \
            if bias else None

    def forward(self, input):     # torch's name: Linear()(input=x) works as in torch
        return F.linear(input, self.weight, self.bias)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


def _activation(name: str, fn):
    def __init__(self, inplace: bool = False):
        """``inplace`` is accepted for PyTorch compatibility; traced code is functional."""
        Module.__init__(self)
        self.inplace = inplace
    cls = type(name, (Module,), {"__init__": __init__, "forward": lambda self, x: fn(x),
                                 "__doc__": f"Module form of ``F.{fn.__name__}``.",
                                 "extra_repr": lambda self: "inplace=True" if self.inplace
                                 else ""})
    return cls


ReLU = _activation("ReLU", F.relu)
Tanh = _activation("Tanh", F.tanh)
Sigmoid = _activation("Sigmoid", F.sigmoid)


class Softmax(Module):
    def __init__(self, dim: int = -1):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return F.softmax(x, self.dim)

    def extra_repr(self):
        return f"dim={self.dim}"


class LogSoftmax(Softmax):
    def forward(self, x):
        return F.log_softmax(x, self.dim)


class Flatten(Module):
    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        return F.flatten(x, self.start_dim, self.end_dim)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Unflatten(Module):
    """torch's ``nn.Unflatten(dim, unflattened_size)``: axis ``dim`` becomes the sizes given
    (one of them may be -1), the inverse of ``Flatten``."""

    def __init__(self, dim: int, unflattened_size):
        super().__init__()
        self.dim, self.unflattened_size = dim, tuple(int(d) for d in unflattened_size)

    def forward(self, x):
        x = F.as_tensor(x)
        d = wrap_dim(self.dim, x.ndim)
        return F.reshape(x, x.shape[:d] + self.unflattened_size + x.shape[d + 1:])

    def extra_repr(self):
        return f"dim={self.dim}, unflattened_size={self.unflattened_size}"


class Identity(Module):
    """``x`` unchanged; any constructor arguments are ignored (torch's)."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        return x


class CrossEntropyLoss(Module):
    """``F.cross_entropy`` (eq. 10.11-10.14) with PyTorch's ``ignore_index`` and reductions."""

    def __init__(self, weight=None, size_average=None, ignore_index: int = -100, reduce=None,
                 reduction: str = "mean", label_smoothing: float = 0.0):
        super().__init__()
        self.weight, reduction = loss_args(weight, size_average, reduce, reduction)
        self.reduction, self.ignore_index = reduction, ignore_index
        self.label_smoothing = label_smoothing

    def forward(self, input, target):
        return F.cross_entropy(input, target, self.weight, ignore_index=self.ignore_index,
                               reduction=self.reduction, label_smoothing=self.label_smoothing)


class NLLLoss(CrossEntropyLoss):
    """``F.nll_loss`` of log-probabilities."""

    def forward(self, input, target):
        return F.nll_loss(input, target, self.weight, ignore_index=self.ignore_index,
                          reduction=self.reduction)


class MSELoss(Module):
    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, input, target):
        return F.mse_loss(input, target, self.reduction)
