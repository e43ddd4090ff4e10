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

__all__ = ["F", "nn", "compile", "trace", "CompiledFunction", "manual_seed", "Tensor",
           "TensorSpec", "grad", "value_and_grad", "GradFunction", "init", "optim", "compile_train",
           "TrainStepFunction", "rnn", "jit", "JitFunction", "tensor", "arange", "einsum",
           "empty", "empty_like", "eye", "full", "full_like", "linspace", "ones", "ones_like",
           "zeros", "zeros_like", "cat", "stack", "where"] + _TORCH_MATH
