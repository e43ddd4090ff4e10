"""Reverse-mode autodiff (any order): ``grad``, ``value_and_grad``, ``vjp``; ``hvp``,
``hessian``, ``jacobian`` (higher.py).

Rule tables live beside this package's modules and register themselves on import.
"""
from .core import (VJP_RULES, Emitter, backprop, build_vjp, grad, prune, resolve,
                   value_and_grad, vjp, vjp_rule)
from .higher import hessian, hvp, jacobian
from . import rules  # noqa: F401  (registers the VJP rules of the core ops)
from . import rules_conv, rules_norm, rules_pool  # noqa: F401  (chapter 9 ops, batch norm)
from . import rules_recurrence  # noqa: F401  (the rolled BPTT rule of scan)
from . import rules_passes  # noqa: F401  (fused regions, check_finite)
from . import rules_gather  # noqa: F401  (gather and scatter by index tensors)

__all__ = ["VJP_RULES", "Emitter", "backprop", "build_vjp", "grad", "prune", "resolve",
           "value_and_grad", "vjp", "vjp_rule", "hessian", "hvp", "jacobian"]
