"""``nn`` modules of the activations and losses in compositions.py (PyTorch's names and
constructor arguments); nn.py re-exports them."""
from __future__ import annotations

from . import functional as F
from .module import Module

__all__ = ["LeakyReLU", "ReLU6", "Hardtanh", "ELU", "Softplus", "SiLU", "LogSigmoid",
           "GELU", "Mish", "Hardswish",
           "L1Loss", "SmoothL1Loss", "HuberLoss", "BCELoss", "BCEWithLogitsLoss"]


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
