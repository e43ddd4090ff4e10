"""``frontend.nn``: modules with registered, named parameters, as in ``torch.nn``."""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Iterator

import numpy as np

from . import functional as F
from .random import rng


class Parameter:
    """A named weight: a numpy array (``.data``) that becomes a graph parameter when traced."""

    def __init__(self, data, requires_grad: bool = True):
        self.data = np.asarray(data, order="C")   # no copy when already C-ordered; 0-d stays 0-d
        if self.data.dtype == np.float64 and not isinstance(data, np.ndarray):
            self.data = self.data.astype(np.float32)
        self.requires_grad = requires_grad

    @property
    def shape(self):
        return self.data.shape

    def numpy(self) -> np.ndarray:
        return self.data

    def __repr__(self) -> str:
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"

    # Parameters take part in traced arithmetic like tensors
    def _t(self):
        return F.as_tensor(self)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._t(), name)


for _op in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__",
            "__rtruediv__", "__matmul__", "__rmatmul__", "__neg__", "__pow__", "__getitem__"):
    setattr(Parameter, _op, (lambda name: lambda self, *a: getattr(self._t(), name)(*a))(_op))
Parameter.T = property(lambda self: self._t().T)


class Module:
    """Base class of models: parameters and submodules are registered on assignment."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"call Module.__init__() in {type(self).__name__}.__init__ "
                                 f"before assigning {name!r}")
        for d in (self._parameters, self._modules, self._buffers):
            d.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        d = self.__dict__
        for table in ("_parameters", "_modules", "_buffers"):
            if table in d and name in d[table]:
                return d[table][name]
        raise AttributeError(f"{type(self).__name__!r} has no attribute {name!r}")

    def register_buffer(self, name: str, value) -> None:
        """A non-trained state array (e.g. batch norm's running mean), traced as a parameter."""
        self._buffers[name] = value if isinstance(value, Parameter) else Parameter(
            value, requires_grad=False)

    def named_parameters(self, prefix: str = "", buffers: bool = False
                         ) -> Iterator[tuple[str, Parameter]]:
        seen = set()
        for name, p in self._named(prefix, buffers):
            if id(p) not in seen:
                seen.add(id(p))
                yield name, p

    def _named(self, prefix, buffers):
        for name, p in self._parameters.items():
            yield prefix + name, p
        if buffers:
            for name, p in self._buffers.items():
                yield prefix + name, p
        for name, m in self._modules.items():
            yield from m._named(f"{prefix}{name}.", buffers)

    def parameters(self) -> Iterator[Parameter]:
        return (p for _, p in self.named_parameters())

    def named_buffers(self, prefix: str = ""):
        for name, p in self.named_parameters(prefix, buffers=True):
            if not p.requires_grad:
                yield name, p

    def children(self):
        return iter(self._modules.values())

    def modules(self):
        yield self
        for m in self._modules.values():
            yield from m.modules()

    def state_dict(self) -> dict[str, np.ndarray]:
        return {n: p.data.copy() for n, p in self.named_parameters(buffers=True)}

    def load_state_dict(self, state: dict) -> None:
        own = dict(self.named_parameters(buffers=True))
        missing, extra = set(own) - set(state), set(state) - set(own)
        if missing or extra:
            raise KeyError(f"load_state_dict: missing {sorted(missing)}, unexpected {sorted(extra)}")
        for n, p in own.items():
            a = np.asarray(state[n])
            if a.shape != p.data.shape:
                raise ValueError(f"load_state_dict: {n} has shape {a.shape}, "
                                 f"expected {p.data.shape}")
            np.copyto(p.data, a.astype(p.data.dtype))

    def train(self, mode: bool = True) -> "Module":
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def forward(self, *args):
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, m in self._modules.items():
            lines.append(f"  ({name}): " + repr(m).replace("\n", "\n  "))
        return lines[0] + ")" if len(lines) == 1 else "\n".join(lines) + "\n)"


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

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}"


class Sequential(Module):
    """Layers applied in order, named ``"0"``, ``"1"``, ... or by an ``OrderedDict``'s keys."""

    def __init__(self, *layers: Module):
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], dict):
            for name, layer in layers[0].items():
                setattr(self, name, layer)
            return
        for i, layer in enumerate(layers):
            setattr(self, str(i), layer)

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]

    def __len__(self) -> int:
        return len(self._modules)

    def forward(self, x):
        for layer in self._modules.values():
            x = layer(x)
        return x


def _activation(name: str, fn):
    def __init__(self, inplace: bool = False):
        """``inplace`` is accepted for PyTorch compatibility; traced code is functional."""
        Module.__init__(self)
    cls = type(name, (Module,), {"__init__": __init__, "forward": lambda self, x: fn(x),
                                 "__doc__": f"Module form of ``F.{fn.__name__}``."})
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


class LogSoftmax(Softmax):
    def forward(self, x):
        return F.log_softmax(x, self.dim)


class Flatten(Module):
    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        return F.flatten(x, self.start_dim, self.end_dim)


class Identity(Module):
    def forward(self, x):
        return x


class CrossEntropyLoss(Module):
    """``F.cross_entropy`` (eq. 10.11-10.14) with PyTorch's ``ignore_index`` and reductions."""

    def __init__(self, weight=None, size_average=None, ignore_index: int = -100, reduce=None,
                 reduction: str = "mean", label_smoothing: float = 0.0):
        super().__init__()
        self.weight, reduction = F._loss_args(weight, size_average, reduce, reduction)
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


# recurrent layers and the networks of chapter 10 (frontend/rnn.py)
from .rnn import (RNN, OutputRecurrentNet, RecurrentConvNet, RNNLanguageModel,  # noqa: E402
                  RNNSequenceModel, SequenceClassifier)
from .rnn_gated import GRU, LSTM, GRUCell, LSTMCell, RNNCell  # noqa: E402,F401

# convolution, pooling and batch-norm layers of chapter 9 and section 8.7.1 (frontend/layers.py)
from .layers import *  # noqa: E402,F401,F403

# activations and losses composed of core ops (frontend/composite_modules.py)
from .composite_modules import *  # noqa: E402,F401,F403
