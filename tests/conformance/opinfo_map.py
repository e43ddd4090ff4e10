"""Which of PyTorch's OpInfo entries the frontend implements, and how each is called.

``OPS`` maps an OpInfo name (``name`` or ``name.variant_test_name`` of
``torch.testing._internal.common_methods_invocations.op_db``) to an ``Entry``: the adapter
that calls the frontend as torch calls the op (``fn(input, *args, **kwargs)`` on traced
Tensors) and the tolerance class (harness.TOLERANCES). ``UNSUPPORTED`` is the one table of
samples the frontend does not take, each with its reason; any other sample that fails, fails
the test.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from irgraph.frontend import F


@dataclasses.dataclass(frozen=True)
class Entry:
    fn: Callable
    tol: str = "exact"        # "exact" (elementwise) or "accum" (sums in another order)


def _method(name: str) -> Callable:
    return lambda x, *args, **kwargs: getattr(x, name)(*args, **kwargs)


def _f(name: str, tol: str = "exact") -> Entry:
    return Entry(getattr(F, name), tol)


OPS: dict[str, Entry] = {}
for _n in ("abs", "neg", "exp", "log", "sqrt", "rsqrt", "tanh", "sigmoid", "sign", "square",
           "add", "sub", "mul", "pow", "maximum", "minimum", "eq", "ne", "lt", "le", "gt",
           "ge", "logical_and", "logical_or", "clamp", "clamp_min", "clamp_max",
           "floor_divide"):
    OPS[_n] = _f(_n)
OPS["div.no_rounding_mode"] = _f("div")
OPS["div.floor_rounding"] = _f("div")
OPS["true_divide"] = _f("div")
OPS["max.binary"] = _f("max")
OPS["min.binary"] = _f("min")
OPS["where"] = Entry(lambda x, cond, other: F.where(cond, x, other))
for _n in ("__radd__", "__rsub__", "__rmul__", "__rdiv__", "__rpow__"):
    OPS[_n] = Entry(_method(_n.replace("rdiv", "rtruediv")))
OPS["__rmatmul__"] = Entry(_method("__rmatmul__"), "accum")
OPS["__getitem__"] = Entry(_method("__getitem__"))
for _n in ("sum", "mean", "amax", "amin", "argmax", "argmin", "var", "std", "logsumexp",
           "softmax", "log_softmax", "matmul"):
    OPS[_n] = _f(_n, "accum")
OPS["var.unbiased"] = _f("var", "accum")
OPS["std.unbiased"] = _f("std", "accum")
OPS["softmax.with_dtype"] = _f("softmax", "accum")
OPS["log_softmax.with_dtype"] = _f("log_softmax", "accum")
for _n in ("max", "min"):
    OPS[f"{_n}.reduction_with_dim"] = _f(_n, "accum")
    OPS[f"{_n}.reduction_no_dim"] = _f(_n, "accum")
OPS["mm"] = _f("matmul", "accum")
OPS["bmm"] = _f("matmul", "accum")
for _n in ("reshape", "flatten", "permute", "transpose", "broadcast_to", "unsqueeze", "squeeze",
           "cat", "stack", "clone"):
    OPS[_n] = _f(_n)
OPS["squeeze.multiple"] = _f("squeeze")
for _n in ("view", "expand", "contiguous", "float", "double", "long", "bool", "int"):
    OPS[_n] = Entry(_method(_n))
OPS["T"] = Entry(lambda x: x.T)
OPS["nn.functional.linear"] = _f("linear", "accum")
for _mode in ("constant", "reflect", "replicate", "circular"):
    OPS[f"nn.functional.pad.{_mode}"] = _f("pad")
for _n in ("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
           "conv_transpose3d", "unfold", "avg_pool1d", "avg_pool2d", "avg_pool3d",
           "max_pool1d", "max_pool2d", "max_pool3d", "adaptive_avg_pool1d",
           "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
           "adaptive_max_pool2d", "adaptive_max_pool3d", "batch_norm", "l1_loss",
           "smooth_l1_loss", "huber_loss", "mse_loss", "binary_cross_entropy",
           "binary_cross_entropy_with_logits", "cross_entropy", "nll_loss"):
    OPS[f"nn.functional.{_n}"] = _f(_n, "accum")
OPS["nn.functional.batch_norm.without_cudnn"] = _f("batch_norm", "accum")
for _n in ("elu", "leaky_relu", "hardtanh", "relu", "relu6", "softplus", "silu", "logsigmoid"):
    OPS[f"nn.functional.{_n}"] = _f(_n)
for _n in ("gelu", "mish", "hardswish", "hardsigmoid", "selu", "celu", "softsign", "glu",
           "hardshrink", "softshrink", "tanhshrink", "threshold", "prelu", "softmin",
           "pixel_shuffle", "pixel_unshuffle", "channel_shuffle"):
    OPS[f"nn.functional.{_n}"] = _f(_n)
for _n in ("kl_div", "poisson_nll_loss", "gaussian_nll_loss", "margin_ranking_loss",
           "hinge_embedding_loss", "soft_margin_loss", "cosine_embedding_loss",
           "triplet_margin_loss", "multilabel_soft_margin_loss", "multi_margin_loss",
           "normalize", "cosine_similarity", "pairwise_distance", "layer_norm", "group_norm",
           "instance_norm", "local_response_norm", "rms_norm"):
    if hasattr(F, _n):
        OPS[f"nn.functional.{_n}"] = _f(_n, "accum")
for _mode in ("nearest", "nearest-exact", "linear", "bilinear", "bicubic", "trilinear",
              "area"):
    OPS[f"nn.functional.interpolate.{_mode}"] = _f("interpolate", "accum")
OPS["nn.functional.upsample_nearest"] = _f("upsample_nearest")
OPS["nn.functional.upsample_bilinear"] = _f("upsample_bilinear", "accum")
for _n in ("flip", "fliplr", "flipud", "roll", "tril", "triu", "isnan", "isinf", "isfinite",
           "nan_to_num", "floor", "ceil", "trunc", "round", "frac", "logical_not",
           "logical_xor", "masked_fill", "split", "chunk", "unbind", "narrow",
           "movedim", "tile", "all", "any", "unflatten"):
    OPS[_n] = _f(_n)
OPS["round.decimals_0"] = _f("round")
OPS["round.decimals_3"] = _f("round")
OPS["round.decimals_neg_3"] = _f("round")
OPS["split.list_args"] = _f("split")
OPS["repeat"] = Entry(_method("repeat"))
OPS["repeat_interleave"] = _f("repeat_interleave")
for _n in ("cumsum", "cumprod", "prod"):
    OPS[_n] = _f(_n, "accum")
OPS["einsum"] = Entry(lambda tensors, equation: F.einsum(equation, tensors), "accum")
OPS["norm"] = _f("norm", "accum")
for _n in ("sort", "argsort", "topk", "msort", "kthvalue"):
    OPS[_n] = _f(_n)
OPS["fmod"] = _f("fmod")
OPS["remainder"] = _f("remainder")
OPS["div.trunc_rounding"] = _f("div")
OPS["__rmod__"] = Entry(_method("__rmod__"))


@dataclasses.dataclass(frozen=True)
class Unsupported:
    op: str
    reason: str
    when: Callable = lambda s: True          # the torch SampleInput -> bool
    backends: tuple = ("reference", "llvm", "triton")


KNOWN = "known: being fixed"

# The samples the frontend does not support, with the reason. One table: a sample that
# fails and is not listed here fails the test.
UNSUPPORTED: list[Unsupported] = [
    Unsupported("__getitem__", "reading through a boolean mask: the result's shape depends "
                "on the values", lambda s: _mask_index(s.args[0])),
    Unsupported("nn.functional.batch_norm", "a 1-D input: the frontend takes (N, C, ...) only "
                "(torch's sample is an empty tensor of shape (0,))", lambda s: s.input.ndim == 1),
    Unsupported("nn.functional.batch_norm.without_cudnn", "as nn.functional.batch_norm",
                lambda s: s.input.ndim == 1),
    Unsupported("narrow", "a tensor start: the slice must be known when tracing",
                lambda s: isinstance(s.args[1], torch.Tensor)),
    Unsupported("repeat_interleave", "a tensor of counts: the output's size would depend on "
                "the data", lambda s: isinstance(s.kwargs.get("repeats", s.args[0] if s.args
                                                               else None), torch.Tensor)),
    Unsupported("einsum", "a repeated index within one operand (a diagonal)",
                lambda s: _diagonal_einsum(s.args[0])),
    Unsupported("nn.functional.layer_norm", "one normalized element in float32: its exact "
                "gradient is 0, torch's kernel leaves rounding residue (1.2e-4)",
                lambda s: s.input.dtype == torch.float32 and _numel(s.args[0]) == 1
                and s.input.numel() > 0),
]


def _numel(shape) -> int:
    n = 1
    for d in (shape if isinstance(shape, (tuple, list, torch.Size)) else (shape,)):
        n *= int(d)
    return n


def _diagonal_einsum(equation: str) -> bool:
    lhs = equation.replace(" ", "").split("->")[0]
    return any(len(set(t.replace("...", ""))) != len(t.replace("...", ""))
               for t in lhs.split(","))


def _mask_index(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


def unsupported(op: str, sample, backend: str) -> str | None:
    """The reason ``sample`` of ``op`` is not supported on ``backend``, or None."""
    for u in UNSUPPORTED:
        if u.op == op and backend in u.backends and u.when(sample):
            return u.reason
    return None
