"""Optimizer-update ops: one registry entry per update rule of chapter 8.

Every op is elementwise over the parameter ``p``; it takes the parameter, its gradient ``g``,
its state tensors (same type as ``p``) and the hyperparameters as rank-0 tensor INPUTS of
``p``'s dtype (learning rate, momentum, betas, step count ``t``, eps...), so changing a
hyperparameter between steps never recompiles. Only the choice of formula (``convention``:
the text's or PyTorch's, ``nesterov``) is an attribute. Outputs: the new parameter, then the
new state, in input order.

    adam_update(p, g, s, r, lr, beta1, beta2, eps, t) -> (p', s', r')

These ops are bookkeeping of the training step: they are never differentiated through.
"""
from __future__ import annotations

import numpy as np

from ..registry import Attr, Cost, a_bool, a_choice, a_float, elementwise_cost, register_op
from ..types import TensorType

_NONDIFF = dict(differentiable=False,
                nondiff_reason="an optimizer update: the training step applies it after "
                               "differentiation and never differentiates through it")
_CONVENTION = Attr(a_choice("text", "torch"), "text",
                   "'text': the algorithm as the textbook writes it; 'torch': torch.optim's form")


def _update_rule(n_tensors: int, n_scalars: int):
    """Type rule: ``n_tensors`` tensors of p's type, then ``n_scalars`` rank-0 scalars of
    p's dtype; the outputs are p's type, once per tensor except the gradient (a clip has
    one tensor input and one output)."""
    def rule(*ins, **attrs):
        p = ins[0]
        if not p.is_float:
            raise ValueError(f"the parameter must be a float tensor, got {p}")
        for i, t in enumerate(ins[1:n_tensors], 1):
            if t != p:
                raise ValueError(f"input {i} is {t}; it must have the parameter's type {p}")
        for i, t in enumerate(ins[n_tensors:], n_tensors):
            if t.shape != () or t.dtype != p.dtype:
                raise ValueError(f"hyperparameter input {i} is {t}; it must be a rank-0 "
                                 f"{p.dtype} tensor")
        return [p] * max(n_tensors - 1, 1)
    return rule


_INPLACE = frozenset({"inplace"})     # each update reads p[i] (and state) before writing p'[i]


def _register(name: str, fn, n_tensors: int, n_scalars: int, flops: int, attrs=None, *,
              traits):
    op = register_op(name, attrs=attrs or {}, num_inputs=n_tensors + n_scalars,
                     cost=elementwise_cost(flops), traits=traits, **_NONDIFF)(fn)
    op.type_rule(_update_rule(n_tensors, n_scalars))
    return op


def _cast(p, *arrays):
    return tuple(np.asarray(a, dtype=p.dtype) for a in arrays)


# ---------------------------------------------------------------- SGD family
def sgd_update(p, g, lr):
    """Alg. 8.1: p' = p - lr g."""
    return _cast(p, p - lr * g)


def momentum_update(p, g, v, lr, momentum, *, convention, nesterov):
    """Momentum (alg. 8.2, eq. 8.15-8.16).

    text:  v' = momentum v - lr g;  p' = p + v'. Nesterov (alg. 8.3) uses this same update;
           the training step takes g at the interim point p + momentum v.
    torch: v' = momentum v + g;  p' = p - lr v'  (nesterov: p' = p - lr (g + momentum v')).
    """
    if convention == "text":
        v2 = momentum * v - lr * g
        return _cast(p, p + v2, v2)
    v2 = momentum * v + g
    step = g + momentum * v2 if nesterov else v2
    return _cast(p, p - lr * step, v2)


def adagrad_update(p, g, r, lr, eps):
    """Alg. 8.4: r' = r + g*g;  p' = p - lr g / (eps + sqrt(r')). torch.optim.Adagrad's form
    is the same (its lr_decay and initial accumulator are host-side choices)."""
    r2 = r + g * g
    return _cast(p, p - lr * g / (eps + np.sqrt(r2)), r2)


def rmsprop_update(p, g, r, lr, alpha, eps, *, convention):
    """Alg. 8.5 (alpha = the text's decay rate rho): r' = alpha r + (1 - alpha) g*g.

    text:  p' = p - lr g / sqrt(eps + r');   torch: p' = p - lr g / (sqrt(r') + eps).
    """
    r2 = alpha * r + (1 - alpha) * g * g
    denom = np.sqrt(eps + r2) if convention == "text" else np.sqrt(r2) + eps
    return _cast(p, p - lr * g / denom, r2)


def rmsprop_momentum_update(p, g, r, v, lr, alpha, eps, momentum, *, convention):
    """RMSProp with momentum: r' = alpha r + (1 - alpha) g*g.

    text (alg. 8.6, g taken at the interim point p + momentum v by the training step):
           v' = momentum v - lr g / sqrt(eps + r');  p' = p + v'
           (the text writes sqrt(r'); eps = 0 gives exactly that, eps > 0 places delta as
           alg. 8.5 does).
    torch: v' = momentum v + g / (sqrt(r') + eps);  p' = p - lr v'.
    """
    r2 = alpha * r + (1 - alpha) * g * g
    if convention == "text":
        v2 = momentum * v - lr * g / np.sqrt(eps + r2)
        return _cast(p, p + v2, r2, v2)
    v2 = momentum * v + g / (np.sqrt(r2) + eps)
    return _cast(p, p - lr * v2, r2, v2)


def adam_update(p, g, s, r, lr, beta1, beta2, eps, t, *, convention):
    """Alg. 8.7 at step t (t counts from 1): s' = beta1 s + (1 - beta1) g,
    r' = beta2 r + (1 - beta2) g*g, s^ = s'/(1 - beta1^t), r^ = r'/(1 - beta2^t).

    text:  p' = p - lr s^ / sqrt(r^ + eps);   torch: p' = p - lr s^ / (sqrt(r^) + eps).
    """
    s2 = beta1 * s + (1 - beta1) * g
    r2 = beta2 * r + (1 - beta2) * g * g
    s_hat = s2 / (1 - beta1 ** t)
    r_hat = r2 / (1 - beta2 ** t)
    denom = np.sqrt(r_hat + eps) if convention == "text" else np.sqrt(r_hat) + eps
    return _cast(p, p - lr * s_hat / denom, s2, r2)


def polyak_update(avg, p, alpha):
    """Eq. 8.39, Polyak averaging as an exponential moving average:
    avg' = alpha avg + (1 - alpha) p."""
    return _cast(avg, alpha * avg + (1 - alpha) * p)


_register("sgd_update", sgd_update, 2, 1, 2, traits=_INPLACE)
_register("momentum_update", momentum_update, 3, 2, 5,
          {"convention": _CONVENTION, "nesterov": Attr(a_bool, False)}, traits=_INPLACE)
_register("adagrad_update", adagrad_update, 3, 2, 7, traits=_INPLACE)
_register("rmsprop_update", rmsprop_update, 3, 3, 9, {"convention": _CONVENTION}, traits=_INPLACE)
_register("rmsprop_momentum_update", rmsprop_momentum_update, 4, 4, 11,
          {"convention": _CONVENTION}, traits=_INPLACE)
_register("adam_update", adam_update, 4, 5, 16, {"convention": _CONVENTION}, traits=_INPLACE)
_register("polyak_update", polyak_update, 2, 1, 3, traits=_INPLACE)


# ---------------------------------------------------------------- gradient clipping (8.2.4)
def clip_by_value(g, clip_value):
    """Clip each gradient element to [-clip_value, clip_value] (torch.nn.utils.clip_grad_value_)."""
    return _cast(g, np.clip(g, -clip_value, clip_value))


def clip_by_norm(g, norm, max_norm, *, eps):
    """Rescale g by min(1, max_norm / (norm + eps)), ``norm`` being the global norm of all the
    gradients (section 8.2.4 / 10.11.1: g <- g max_norm / ||g|| when ||g|| > max_norm).
    eps = 1e-6 is torch.nn.utils.clip_grad_norm_'s; eps = 0 is the text's rule."""
    scale = np.minimum(np.asarray(1, g.dtype), max_norm / (norm + g.dtype.type(eps)))
    return _cast(g, g * scale)


_register("clip_by_value", clip_by_value, 1, 1, 2, traits=_INPLACE)
_register("clip_by_norm", clip_by_norm, 1, 2, 3, {"eps": Attr(a_float, 1e-6)},
          traits={"autocast_float32"})


@register_op("global_norm", traits={"autocast_float32"}, num_inputs=None, **_NONDIFF,
             cost=lambda i, o, a: Cost(2 * sum(t.size for t in i), sum(t.nbytes for t in i)))
def global_norm(*gs):
    """sqrt(sum over all tensors of sum(g*g)): the norm of all gradients as one vector."""
    dtype = gs[0].dtype
    total = sum((np.sum(np.square(g, dtype=np.float64)) for g in gs), np.float64(0))
    return np.asarray(np.sqrt(total), dtype)


@global_norm.type_rule
def _(*gs):
    if not gs:
        raise ValueError("global_norm of no tensors")
    for i, t in enumerate(gs):
        if not t.is_float or t.dtype != gs[0].dtype:
            raise ValueError(f"input {i} is {t}; all inputs must be float tensors of one dtype")
    return TensorType((), gs[0].dtype)
