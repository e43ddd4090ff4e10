"""The DSL: tracing of Python functions and ``nn.Module`` objects, and the compile driver."""
from . import functional as F
from . import nn
from . import init, optim
from . import rnn
from .autodiff import GradFunction, grad, value_and_grad
from .compiler import CompiledFunction, compile, trace
from .eager import tensor
from .jit import JitFunction, jit
from .random import manual_seed
from .tracing import Tensor, TensorSpec
from .train import TrainStepFunction, compile_train
# torch-level functions (``ig.zeros``, ``ig.einsum``, ...): the same as ``F``'s
from .functional_tensor import (arange, einsum, empty, empty_like, eye, full, full_like,
                                linspace, ones, ones_like, zeros, zeros_like)
from .functional_core import cat, stack, where
from . import functional_math as _math
# ig.mm, ig.lerp, ...: torch's names (but ig.trace traces a function: F.trace is the matrix's)
_TORCH_MATH = [n for n in _math.__all__ if n != "trace"]
globals().update({n: getattr(_math, n) for n in _TORCH_MATH})

# torch's top-level names of F's functions (``ig.exp``, ``ig.sum``, ``ig.softmax``, ...)
_TORCH_F = ["matmul", "softmax", "log_softmax", "sigmoid", "tanh", "relu", "exp", "log",
            "sqrt", "rsqrt", "abs", "max", "min", "sum", "mean", "argmax", "argmin", "topk",
            "sort", "argsort", "msort", "kthvalue", "clamp", "clip", "clamp_min", "clamp_max",
            "split", "chunk", "unbind", "flatten", "reshape", "squeeze", "unsqueeze",
            "transpose", "permute", "movedim", "narrow", "flip", "fliplr", "flipud", "roll",
            "gather", "index_select", "take_along_dim", "scatter", "scatter_add",
            "scatter_reduce", "index_add", "masked_fill", "masked_select", "nonzero", "tile",
            "repeat_interleave", "broadcast_to", "isnan", "isinf", "isfinite", "nan_to_num",
            "norm", "cumsum", "cumprod", "tril", "triu", "logsumexp", "std", "var", "prod",
            "any", "all", "amax", "amin", "maximum", "minimum", "erf", "sign", "floor", "ceil",
            "round", "trunc", "frac", "remainder", "fmod", "pow", "square", "sin", "cos",
            "expm1", "log1p", "logical_and", "logical_or", "logical_not", "logical_xor",
            "bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_not", "floor_divide", "div",
            "mul", "add", "sub", "neg", "eq", "ne", "lt", "le", "gt", "ge", "detach", "rand",
            "randn", "rand_like", "randn_like", "randint", "bernoulli"]
globals().update({n: getattr(F, n) for n in _TORCH_F})
# re-exports (listed in __all__ through _TORCH_API)
from .torch_api import (bfloat16, bool, double, enable_grad, float, float16, float32,  # noqa
                        float64, half, inference_mode, int, int32, int64, is_tensor, long,
                        no_grad, numel, set_grad_enabled)
from .torch_api import tensor as from_numpy  # noqa: E402
as_tensor = from_numpy
_TORCH_API = ["no_grad", "enable_grad", "set_grad_enabled", "inference_mode", "is_tensor",
              "numel", "from_numpy", "as_tensor", "float16", "bfloat16", "float32", "float64",
              "int32", "int64", "bool", "half", "float", "double", "long", "int"]

__all__ = ["F", "nn", "compile", "trace", "CompiledFunction", "manual_seed", "Tensor",
           "TensorSpec", "grad", "value_and_grad", "GradFunction", "init", "optim", "compile_train",
           "TrainStepFunction", "rnn", "jit", "JitFunction", "tensor", "arange", "einsum",
           "empty", "empty_like", "eye", "full", "full_like", "linspace", "ones", "ones_like",
           "zeros", "zeros_like", "cat", "stack", "where"] + _TORCH_MATH + _TORCH_F + _TORCH_API
