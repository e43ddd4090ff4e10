"""``nn.utils`` with torch's names, for the host side of a training loop (gradients are
arrays here, the outputs of ``ig.grad`` or a compiled step, not ``.grad`` fields):
``clip_grad_norm_`` and ``clip_grad_value_`` scale or clamp gradient arrays in place,
``parameters_to_vector`` / ``vector_to_parameters`` flatten and restore parameters, and
``rnn.pad_sequence`` stacks sequences of different lengths."""
from __future__ import annotations

import math
import types

import numpy as np

from .functional_core import as_tensor
from .module import Parameter
from .tracing import Tensor

__all__ = ["clip_grad_norm_", "clip_grad_value_", "parameters_to_vector",
           "vector_to_parameters", "rnn"]


def _arrays(grads, what: str) -> list[np.ndarray]:
    """The writable float arrays of ``grads``: a dict of them (``ig.grad``'s), an iterable,
    or one; Parameters give their ``data``."""
    if isinstance(grads, dict):
        grads = list(grads.values())
    elif isinstance(grads, (np.ndarray, Parameter)):
        grads = [grads]
    out = []
    for g in grads:
        a = g.data if isinstance(g, Parameter) else g
        if not isinstance(a, np.ndarray) or a.dtype.kind != "f":
            raise TypeError(f"{what}: gradients must be float numpy arrays (ig.grad's outputs), "
                            f"got {type(g).__name__}")
        if not a.flags.writeable:
            raise ValueError(f"{what}: a gradient array is read-only")
        out.append(a)
    return out


def clip_grad_norm_(parameters, max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False, foreach=None) -> np.ndarray:
    """Scale the gradient arrays in place so their joint ``norm_type`` norm is at most
    ``max_norm`` (torch's: by ``max_norm / (norm + 1e-6)`` where that is below 1); returns
    the norm before clipping."""
    arrays = _arrays(parameters, "clip_grad_norm_")
    norm_type = float(norm_type)
    if not arrays:
        return np.float32(0.0)
    dt = np.result_type(*arrays)
    if norm_type == math.inf:
        total = max(float(np.abs(a).max()) if a.size else 0.0 for a in arrays)
    else:
        parts = [np.linalg.norm(a.ravel().astype(np.float64), norm_type) if a.size else 0.0
                 for a in arrays]
        total = float(np.linalg.norm(np.asarray(parts), norm_type))
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"The total norm of order {norm_type} for gradients from "
                           f"`parameters` is non-finite, so it cannot be clipped")
    coef = min(float(max_norm) / (total + 1e-6), 1.0)
    for a in arrays:
        a *= a.dtype.type(coef)
    return np.asarray(total, dt)


def clip_grad_value_(parameters, clip_value: float, foreach=None) -> None:
    """Clamp every gradient entry to ``[-clip_value, clip_value]`` in place."""
    c = float(clip_value)
    for a in _arrays(parameters, "clip_grad_value_"):
        np.clip(a, -c, c, out=a)


def parameters_to_vector(parameters) -> np.ndarray:
    """The parameters' values flattened into one vector (in order)."""
    arrays = [p.data if isinstance(p, Parameter) else np.asarray(p) for p in parameters]
    return np.concatenate([a.ravel() for a in arrays]) if arrays else np.zeros(0, np.float32)


def vector_to_parameters(vec, parameters) -> None:
    """Copy consecutive slices of ``vec`` into the parameters (their shapes and dtypes)."""
    vec = np.asarray(vec)
    if vec.ndim != 1:
        raise TypeError(f"vector_to_parameters: expected a 1-D vector, got shape {vec.shape}")
    params = list(parameters)
    need = sum(p.data.size for p in params)
    if vec.size != need:
        raise ValueError(f"vector_to_parameters: the vector has {vec.size} elements, the "
                         f"parameters {need}")
    at = 0
    for p in params:
        n = p.data.size
        np.copyto(p.data, vec[at:at + n].reshape(p.data.shape).astype(p.data.dtype))
        at += n


def _pad_sequence(sequences, batch_first: bool = False, padding_value: float = 0.0,
                  padding_side: str = "right") -> Tensor:
    """torch's ``nn.utils.rnn.pad_sequence``: sequences (L_i, *) stacked into (L, B, *) (or
    (B, L, *)), each padded with ``padding_value`` on the right (or left) to the longest."""
    if padding_side not in ("right", "left"):
        raise ValueError(f"pad_sequence: padding_side must be 'left' or 'right', got "
                         f"{padding_side!r}")
    arrays = [s.numpy() if isinstance(s, Tensor) else np.asarray(s) for s in sequences]
    if not arrays:
        raise ValueError("pad_sequence: received an empty list of sequences")
    tail = arrays[0].shape[1:]
    if any(a.ndim == 0 or a.shape[1:] != tail for a in arrays):
        raise ValueError(f"pad_sequence: every sequence must be (L, {', '.join(map(str, tail))}"
                         f"), got {[a.shape for a in arrays]}")
    longest = max(a.shape[0] for a in arrays)
    out = np.full((len(arrays), longest) + tail, padding_value, np.result_type(*arrays))
    for i, a in enumerate(arrays):
        if padding_side == "right":
            out[i, :a.shape[0]] = a
        else:
            out[i, longest - a.shape[0]:] = a
    return as_tensor(out if batch_first else np.ascontiguousarray(np.swapaxes(out, 0, 1)))


rnn = types.SimpleNamespace(pad_sequence=_pad_sequence)
