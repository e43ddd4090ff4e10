"""PyTorch conformance on torch's per-module samples (ModuleInfo, common_modules.module_db).

For each ModuleInfo whose class the frontend has under torch's name (``MODULES``): each
sample's module is built with the same constructor arguments, torch's parameters and
buffers are copied in through ``load_state_dict``, and the forward outputs, the gradients
with respect to the inputs and to every trainable parameter are compared with torch, in
training and evaluation mode where they differ. ``UNSUPPORTED`` is the one table of samples
the frontend does not take.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import numpy as np
import torch

from irgraph.frontend import F, nn

from . import harness as H

# torch's module names the frontend implements with the same constructor and forward
MODULES = [
    "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d", "AdaptiveMaxPool1d",
    "AdaptiveMaxPool2d", "AdaptiveMaxPool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d",
    "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "Conv1d", "Conv2d", "Conv3d",
    "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "ELU", "L1Loss", "SmoothL1Loss",
    "Linear", "LPPool1d", "LPPool2d", "LPPool3d", "MaxPool1d", "MaxPool2d", "MaxPool3d",
    "MSELoss", "NLLLoss", "HuberLoss", "BCELoss", "BCEWithLogitsLoss", "CrossEntropyLoss",
    "Hardtanh", "ReLU", "LeakyReLU", "ReLU6", "Sigmoid", "LogSigmoid", "SiLU", "Softmax",
    "LogSoftmax", "Softplus", "Tanh", "RNN",
    "CELU", "CircularPad1d", "CircularPad2d", "CircularPad3d", "ConstantPad1d", "ConstantPad2d",
    "ConstantPad3d", "CosineEmbeddingLoss", "GELU", "GLU", "GaussianNLLLoss", "GroupNorm",
    "Hardshrink", "Hardswish", "HingeEmbeddingLoss", "KLDivLoss", "LayerNorm",
    "MarginRankingLoss", "Mish", "MultiLabelSoftMarginLoss", "MultiMarginLoss", "PReLU",
    "PoissonNLLLoss", "ReflectionPad1d", "ReflectionPad2d", "ReflectionPad3d",
    "ReplicationPad1d", "ReplicationPad2d", "ReplicationPad3d", "SELU", "SoftMarginLoss",
    "Softmax2d", "Softmin", "Softshrink", "Softsign", "Tanhshrink", "Threshold", "ZeroPad1d",
    "ZeroPad2d", "ZeroPad3d", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d",
    "Embedding", "RMSNorm", "GRUCell", "LSTMCell", "RNNCell", "GRU", "LSTM", "Bilinear",
    "LocalResponseNorm", "MultiheadAttention", "TransformerEncoderLayer", "TransformerEncoder",
    "TransformerDecoderLayer", "Transformer",
]


@dataclasses.dataclass(frozen=True)
class Unsupported:
    module: str
    reason: str
    when: Callable = lambda s: True          # the ModuleSample -> bool
    backends: tuple = ("reference", "llvm", "triton")


KNOWN = "known: being fixed"


def _empty_train(s) -> bool:
    return s.training and s.forward.args[0].shape[0] == 0

# The samples the frontend does not support, with the reason. One table: a sample that
# fails and is not listed here fails the test.
UNSUPPORTED: list[Unsupported] = [
    Unsupported("BatchNorm1d", "an empty batch in training mode: the batch_norm op refuses "
                "batch statistics of no values (torch returns an empty result)", _empty_train),
    Unsupported("BatchNorm2d", "as BatchNorm1d", _empty_train),
    Unsupported("BatchNorm3d", "as BatchNorm1d", _empty_train),
    Unsupported("KLDivLoss", "negative target probabilities: the loss is NaN there, and "
                "torch's gradients are NaN where ours are finite",
                lambda s: not s.ctor.kwargs.get("log_target", False) and _negative_target(s)),
]


def _negative_target(s) -> bool:
    target = s.forward.args[1]
    return bool((target < 0).any())


def unsupported(module: str, sample, backend: str) -> str | None:
    for u in UNSUPPORTED:
        if u.module == module and backend in u.backends and u.when(sample):
            return u.reason
    return None


@dataclasses.dataclass
class ModuleSample:
    """What an ``Unsupported.when`` sees: torch's ModuleInput and the mode."""
    module_input: object
    training: bool

    @property
    def ctor(self):
        return self.module_input.constructor_input

    @property
    def forward(self):
        return self.module_input.forward_input


@functools.lru_cache(maxsize=None)
def module_db_by_name() -> dict:
    from torch.testing._internal.common_modules import module_db
    return {m.module_cls.__name__: m for m in module_db}


def _call_module(m, *args, **kwargs):
    return m(*args, **kwargs)


def samples(name: str, dtype: str) -> list[H.Prepared]:
    """torch's samples of module ``name`` in each mode (seeded), ready for both sides."""
    info = module_db_by_name()[name]
    modes = (True, False) if info.train_and_eval_differ else (True,)
    rng = np.random.default_rng(0)
    out: list[H.Prepared] = []
    for training in modes:
        torch.manual_seed(0)
        inputs = info.module_inputs_func(info, device="cpu", dtype=H.TORCH_DTYPES[dtype],
                                         requires_grad=True, training=training)
        for mi in inputs:
            out.append(_prepare(len(out), name, info, mi, training, dtype, rng))
    return out


def _prepare(index: int, name: str, info, mi, training: bool, dtype: str,
             rng: np.random.Generator) -> H.Prepared:
    ctor, fwd = mi.constructor_input, mi.forward_input
    torch.manual_seed(index)
    theirs = info.module_cls(*ctor.args, **ctor.kwargs).to(H.TORCH_DTYPES[dtype])
    theirs.train(training)
    state = {k: v.detach().numpy().copy() for k, v in theirs.state_dict().items()}
    sample = ModuleSample(mi, training)
    desc = (f"{'train' if training else 'eval'} {name}{_args(ctor)} on {_args(fwd)}")

    def torch_fn(args, **kwargs):
        return theirs(*args, **kwargs)
    fake = _FakeSample(tuple(fwd.args), (), dict(fwd.kwargs))
    p = H.prepare(index, fake, torch_fn, rng)
    p.desc, p.sample = desc, sample
    trainable = {n: q for n, q in theirs.named_parameters() if q.requires_grad}
    # our module: same constructor, torch's weights
    try:
        ours = getattr(nn, name)(*[_ctor_arg(a) for a in ctor.args],
                                 **{k: _ctor_arg(v) for k, v in ctor.kwargs.items()})
        ours.to(dtype)
        ours.train(training)
        own = dict(ours.named_parameters(buffers=True))
        if set(own) - set(state):
            raise KeyError(f"state_dict entries torch does not have: {sorted(set(own) - set(state))}")
        # torch's buffers of constructor tensors (a loss's weight) ours keeps as arguments
        ours.load_state_dict({k: v for k, v in state.items() if k in own})
    except Exception as e:   # noqa: BLE001 -- reported as this sample's trace failure
        err = f"{type(e).__name__}: {e}"

        def rebuild(values, err=err):
            raise TypeError(f"constructing nn.{name}: {err}")
        p.rebuild = rebuild
        return p
    inner = p.rebuild
    p.rebuild = lambda values: (ours, *_shift(inner(values)))
    prefix = f"s{index}."
    ours_params = dict(ours.named_parameters(buffers=True))
    p.params = {prefix + n: q for n, q in ours_params.items()}
    if p.diff_outs and trainable:
        flat = H._torch_flat(torch_fn(tuple(fwd.args), **fwd.kwargs))
        gs = torch.autograd.grad([flat[k] for k in p.diff_outs], list(trainable.values()),
                                 [torch.from_numpy(c) for c in p.cts], allow_unused=True)
        p.param_grads = {prefix + n: (np.zeros(tuple(q.shape), dtype) if g is None
                                      else g.detach().numpy().copy())
                         for (n, q), g in zip(trainable.items(), gs)}
    return p


def _shift(call):
    """(input, args, kwargs) of a forward call -> (args, kwargs): the input is the args."""
    inp, _, kwargs = call
    return tuple(inp), kwargs


def _ctor_arg(v):
    """A constructor argument as the frontend takes it (tensors as numpy arrays)."""
    if isinstance(v, torch.Tensor):
        return v.detach().numpy().copy()
    if isinstance(v, torch.nn.Module):
        return _our_layer(v)
    name = getattr(v, "__name__", "")
    if callable(v) and getattr(torch.nn.functional, name, None) is v:
        return getattr(F, name)             # an activation passed as torch's function
    return H._to_ours(v)


def _our_layer(m: torch.nn.Module):
    """Our twin of a torch layer passed to a constructor (an encoder's layer, its norm),
    built from its attributes (the weights come later, from the state dict)."""
    kind = type(m).__name__
    if kind == "LayerNorm":
        return nn.LayerNorm(m.normalized_shape, eps=m.eps,
                            elementwise_affine=m.elementwise_affine, bias=m.bias is not None)
    if kind in ("TransformerEncoderLayer", "TransformerDecoderLayer"):
        a = m.self_attn
        return getattr(nn, kind)(a.embed_dim, a.num_heads, m.linear1.out_features,
                                 m.dropout.p, _ctor_arg(m.activation), m.norm1.eps,
                                 a.batch_first, m.norm_first, m.linear1.bias is not None)
    raise NotImplementedError(f"no twin for a torch {kind} constructor argument")


@dataclasses.dataclass
class _FakeSample:
    input: object
    args: tuple
    kwargs: dict


def _args(fi) -> str:
    parts = [H.describe(_FakeSample(a, (), {})) for a in fi.args] + [
        f"{k}={H.describe(_FakeSample(v, (), {}))}" for k, v in fi.kwargs.items()]
    return "(" + ", ".join(parts) + ")"


# CI time: LLVM compiles a graph of whole Transformers or unrolled multi-layer LSTMs (every
# sample's gradients) for minutes; a compiled backend runs every k-th of these modules'
# samples in the CI suite (the reference runs them all); ``python -m
# tests.conformance.report`` runs all.
CI_STRIDE = {"Transformer": 6, "TransformerDecoderLayer": 3, "TransformerEncoderLayer": 2,
             "TransformerEncoder": 6, "LSTM": 8, "GRU": 3}


def check_module(name: str, dtype: str, backend_names, stride: int | None = None
                 ) -> dict[str, list]:
    stride = CI_STRIDE.get(name, 1) if stride is None else stride
    return H.run_prepared(name, _call_module, samples(name, dtype), "accum", dtype,
                          backend_names, stride)


def report(backend_names) -> int:
    from . import summary
    failed = 0
    for name in MODULES:
        for dtype in ("float32", "float64"):
            res = check_module(name, dtype, backend_names, stride=1)
            cells = []
            for b in backend_names:
                agree, listed, bad, notes = H.judge(res[b], b, lambda s, bk: unsupported(
                    name, s, bk), KNOWN)
                summary.record("modules", b, agree, listed, len(bad))
                cells.append(f"{agree}/{len(res[b])}")
                failed += len(bad)
                for line in (bad + notes)[:10]:
                    print("    " + line[:300])
            print(f"{'nn.' + name:44s} {dtype:8s} " + " ".join(f"{c:>16s}" for c in cells),
                  flush=True)
    return failed
