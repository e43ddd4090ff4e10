"""Indexing by integer tensors, as torch: ``x[idx]``, ``x[:, idx]``, ``F.gather`` /
``Tensor.gather``, ``index_select``, ``take_along_dim``, ``scatter_add``, ``index_add`` and
``F.embedding`` (the ops of irgraph/ops/gather.py; their gradients scatter-add).

Indices are int32 or int64 tensors (or Python/numpy integer arrays, made constants); a
negative index counts from the end once; one outside ``[-n, n)`` is an error at call time
on every backend.
"""
from __future__ import annotations

import numpy as np

from irgraph.ops.core import wrap_dim

from .functional_core import as_tensor, basic_getitem, broadcast_to, emit_op as _emit, eq, mul, \
    reshape, slice_axes, unsqueeze, where
from .tracing import Tensor

__all__ = ["gather", "index_select", "take_along_dim", "scatter_add", "index_add", "embedding",
           "nonzero", "masked_select"]


def _index(index, what: str) -> Tensor:
    t = as_tensor(index if isinstance(index, Tensor) or hasattr(index, "requires_grad")
                  else np.asarray(index))
    if t.dtype not in ("int32", "int64"):
        raise TypeError(f"{what}: indices must be an int32 or int64 tensor, got {t.type}"
                        + (" (a boolean mask selects as many elements as its values say: "
                           "not in a trace, where shapes are fixed; use F.where, or index "
                           "outside the trace)" if t.dtype == "bool" else ""))
    return t


def in_range(idx: Tensor, n: int) -> Tensor:
    """``idx`` itself, checked at run time to lie in [0, n) (torch's gather, scatter and
    one_hot refuse a negative index; numpy's take would wrap it): read through ``take``
    from ``arange(n)``, whose error names the index."""
    iota = idx.tracer.emit("iota", shape=(int(n),), axis=0, dtype=idx.dtype)
    return _emit("take", iota, idx, axis=0, negative=False)


def gather(input, dim: int, index) -> Tensor:
    """``torch.gather``: ``out[i] = input[i with i[dim] = index[i]]``; out has index's shape
    (at most input's extent off ``dim``)."""
    x = as_tensor(input)
    idx = _index(index, "gather")
    if x.ndim == 0 and idx.ndim == 0:           # a scalar: its one element
        wrap_dim(dim, 1)
        return reshape(gather(reshape(x, (1,)), 0, reshape(idx, (1,))), ())
    if idx.ndim != x.ndim:
        raise ValueError(f"gather: index {idx.type} must have the input's rank {x.ndim}")
    d = wrap_dim(dim, x.ndim)
    return _emit("take_along_axis", x, in_range(idx, x.shape[d]), axis=d)


def index_select(input, dim: int, index) -> Tensor:
    """``torch.index_select``: entries ``index`` (0-d or 1-D) of axis ``dim``."""
    x = as_tensor(input)
    idx = _index(index, "index_select")
    if idx.ndim > 1:
        raise ValueError(f"index_select: index must be 0-d or 1-D, got {idx.type}")
    if idx.ndim == 0:
        idx = reshape(idx, (1,))
    return _emit("take", x, idx, axis=wrap_dim(dim, max(x.ndim, 1)), negative=False)


def take_along_dim(input, indices, dim: int | None = None) -> Tensor:
    """``torch.take_along_dim``: ``gather`` with input and indices broadcast off ``dim``
    (``dim=None``: both flattened)."""
    x = as_tensor(input)
    idx = _index(indices, "take_along_dim")
    if dim is None:
        return _emit("take_along_axis", reshape(x, (-1,)), reshape(idx, (-1,)), axis=0)
    if idx.ndim != x.ndim:
        raise ValueError(f"take_along_dim: indices {idx.type} must have the input's rank "
                         f"{x.ndim}")
    d = wrap_dim(dim, x.ndim)
    try:
        off = np.broadcast_shapes(*[tuple(1 if a == d else s for a, s in enumerate(t.shape))
                                    for t in (x, idx)])
    except ValueError:
        raise ValueError(f"take_along_dim: {x.shape} and {idx.shape} do not broadcast off "
                         f"dim {d}") from None
    xs = tuple(x.shape[d] if a == d else s for a, s in enumerate(off))
    ids = tuple(idx.shape[d] if a == d else s for a, s in enumerate(off))
    x = x if x.shape == xs else broadcast_to(x, xs)
    idx = idx if idx.shape == ids else broadcast_to(idx, ids)
    return _emit("take_along_axis", x, idx, axis=d)


def scatter_add(input, dim: int, index, src) -> Tensor:
    """``torch.scatter_add``: ``input`` plus ``src[i]`` added at ``i with i[dim] = index[i]``
    (src read on index's extent)."""
    x = as_tensor(input)
    idx = _index(index, "scatter_add")
    s = as_tensor(src, x)
    if x.ndim == 0 and idx.ndim == 0 and s.ndim == 0:      # a scalar: its one element
        wrap_dim(dim, 1)
        return reshape(scatter_add(reshape(x, (1,)), 0, reshape(idx, (1,)),
                                   reshape(s, (1,))), ())
    if s.ndim != idx.ndim or any(a < b for a, b in zip(s.shape, idx.shape)):
        raise ValueError(f"scatter_add: src {s.type} must cover index {idx.type}")
    if s.shape != idx.shape:
        s = slice_axes(s, [0] * s.ndim, idx.shape, [1] * s.ndim)
    if s.dtype != x.dtype:
        s = s.to(x.dtype)
    d = wrap_dim(dim, x.ndim)
    return _emit("scatter_add", x, in_range(idx, x.shape[d]), s, axis=d)


def index_add(input, dim: int, index, source, *, alpha=1) -> Tensor:
    """``torch.index_add``: ``input`` plus ``alpha * source`` added at entries ``index`` of
    axis ``dim`` (repeated indices accumulate)."""
    x = as_tensor(input)
    idx = _index(index, "index_add")
    s = as_tensor(source, x)
    if alpha != 1:
        s = mul(s, alpha)
    if s.dtype != x.dtype:
        s = s.to(x.dtype)
    d = wrap_dim(dim, x.ndim)
    return _emit("index_add", x, in_range(idx, x.shape[d]), s, axis=d)


def embedding(input, weight, padding_idx: int | None = None, max_norm=None,
              norm_type: float = 2.0, scale_grad_by_freq: bool = False,
              sparse: bool = False) -> Tensor:
    """``torch.nn.functional.embedding``: rows ``input`` of ``weight`` (num, dim); the row
    ``padding_idx`` gets no gradient (its lookups are cut from the graph's gradient)."""
    if max_norm is not None:
        raise NotImplementedError("embedding: max_norm (renormalizing rows in place while "
                                  "looking them up) is not supported; leave max_norm=None")
    if scale_grad_by_freq or sparse:
        raise NotImplementedError("embedding: scale_grad_by_freq and sparse gradients are not "
                                  "supported")
    w = as_tensor(weight)
    if w.ndim != 2:
        raise ValueError(f"embedding: weight must be 2-D (num_embeddings, embedding_dim), got "
                         f"{w.type}")
    idx = _index(input, "embedding")
    out = _emit("take", w, idx, axis=0, negative=False)    # torch: an index below 0 is an error
    if padding_idx is None:
        return out
    pad = padding_index(padding_idx, w.shape[0])
    hit = unsqueeze(eq(idx, pad), -1)
    return where(hit, _emit("stop_gradient", out), out)


def padding_index(padding_idx: int, num: int) -> int:
    """``padding_idx`` of an embedding table of ``num`` rows, checked, as a row in [0, num)."""
    if isinstance(padding_idx, bool) or not isinstance(padding_idx, (int, np.integer)) \
            or not -num <= padding_idx < num:
        raise ValueError(f"padding_idx must be within num_embeddings ({num}), got "
                         f"{padding_idx!r}")
    return int(padding_idx) % num


# ---------------------------------------------------------------- x[idx] with tensors
def getitem(x: Tensor, index) -> Tensor:
    """``x[index]``: basic indexing (ints, slices of any step, None and Ellipsis:
    ``functional_core.basic_getitem``); one integer tensor among them indexes its axis.
    Outside a trace a boolean mask selects too (``x[x > 0]``: the values are at hand; a
    trace refuses it, its shape depending on them)."""
    if is_tensor_index(index):
        if x.tracer.eager and _has_mask(index):
            return _eager_masked(x, index)
        return tensor_getitem(x, index)
    return basic_getitem(x, index)


def _has_mask(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(_is_tensorlike(i) and np.asarray(_values(i)).dtype == np.bool_ for i in items)


def _values(i):
    return i.numpy() if isinstance(i, Tensor) else (
        i.data if hasattr(i, "requires_grad") else np.asarray(i))


def _eager_masked(x: Tensor, index) -> Tensor:
    """``x[index]`` with a boolean mask among the index's parts, run by numpy on the
    values (numpy's boolean indexing is torch's)."""
    items = index if isinstance(index, tuple) else (index,)
    plain = [np.asarray(_values(i)) if _is_tensorlike(i) else i for i in items]
    mask_shapes = [p.shape for p in plain if isinstance(p, np.ndarray) and p.dtype == np.bool_]
    ints = [isinstance(p, (int, np.integer)) and not isinstance(p, bool) for p in plain]
    # torch applies plain ints first (basic indexing), the rest to what is left
    first: list = []
    for p, is_int in zip(plain, ints):
        if is_int or p is Ellipsis:
            first.append(p)
        elif p is not None:
            first += [slice(None)] * (p.ndim if isinstance(p, np.ndarray) else 1)
    rest = tuple(p for p, is_int in zip(plain, ints) if not is_int)
    try:
        out = x.numpy()[tuple(first)][rest]
    except IndexError as e:
        raise IndexError(f"indexing {x.type} with boolean mask(s) of shape "
                         f"{', '.join(str(list(m)) for m in mask_shapes)}: {e}") from None
    return as_tensor(np.ascontiguousarray(out))


def is_tensor_index(index) -> bool:
    """Does an index hold an integer tensor (or an integer list/array): advanced indexing?"""
    items = index if isinstance(index, tuple) else (index,)
    return any(_is_tensorlike(i) for i in items)


def _is_tensorlike(i) -> bool:
    return isinstance(i, (Tensor, list, np.ndarray)) or hasattr(i, "requires_grad")


def tensor_getitem(x: Tensor, index) -> Tensor:
    """``x[..., idx, ...]`` with integer tensors among ints, slices, None and Ellipsis, as
    torch: the ints and slices first (basic indexing), then the tensors. One tensor's
    dimensions replace its axis in place; several broadcast together, and their dimensions
    replace the indexed axes where those are adjacent, else go first (numpy's rule)."""
    items = list(index) if isinstance(index, tuple) else [index]
    dots = [j for j, i in enumerate(items) if i is Ellipsis]   # (identity: no Tensor.__eq__)
    if len(dots) == 1:                  # (several: the basic indexer's error below)
        e = dots[0]
        used = sum(1 for i in items if i is not None and i is not Ellipsis)
        items[e:e + 1] = [slice(None)] * max(x.ndim - used, 0)
    pos = [k for k, i in enumerate(items) if _is_tensorlike(i)]
    idxs = [_index(items[k], "indexing") for k in pos]
    # each tensor's axis in the result of the basic index without them: slices and Nones
    # before it each give one axis, ints none
    axes = [sum(1 for i in items[:k] if not isinstance(i, (int, np.integer))) for k in pos]
    for k in pos:
        items[k] = slice(None)
    y = basic_getitem(x, tuple(items))
    if len(pos) == 1:
        return _emit("take", y, idxs[0], axis=axes[0])
    return _take_several(y, axes, idxs)


def _take_several(y: Tensor, axes: list[int], idxs: list[Tensor]) -> Tensor:
    """``y`` indexed on ``axes`` (ascending) by ``idxs`` together: the axes moved side by
    side (to the first one's place where adjacent, else to the front), merged into one, and
    indexed by the flat position ``sum idx_j * stride_j``. Each index is first read through
    ``take`` from ``arange(size_j)``, which checks it against its own axis (an error naming
    it) and wraps a negative one."""
    from .functional_core import permute
    adjacent = all(b == a + 1 for a, b in zip(axes, axes[1:]))
    at = axes[0] if adjacent else 0
    rest = [d for d in range(y.ndim) if d not in axes]
    perm = rest[:at] + axes + rest[at:]
    if perm != list(range(y.ndim)):
        y = permute(y, *perm)
    sizes = [y.shape[at + j] for j in range(len(axes))]
    y = reshape(y, y.shape[:at] + (int(np.prod(sizes)),) + y.shape[at + len(axes):])
    flat, stride = None, 1
    for idx, size in reversed(list(zip(idxs, sizes))):
        iota = y.tracer.emit("iota", shape=(size,), axis=0, dtype=idx.dtype)
        pos = _emit("take", iota, idx, axis=0)
        term = pos if stride == 1 else mul(pos, stride)
        flat = term if flat is None else flat + term
        stride *= size
    return _emit("take", y, flat, axis=at)


def _eager_only(x: Tensor, what: str) -> None:
    if not x.tracer.eager:
        raise TypeError(f"{what}: the result's shape depends on the values: not in a trace, "
                        f"where shapes are fixed (use F.where, or call it outside the trace)")


def nonzero(input, *, as_tuple: bool = False):
    """``torch.nonzero`` outside a trace: the indices of the nonzero entries, (n, ndim)
    int64, or one index tensor per dim with ``as_tuple``."""
    x = as_tensor(input)
    _eager_only(x, "nonzero")
    idx = np.nonzero(x.numpy())
    if as_tuple:
        return tuple(as_tensor(np.ascontiguousarray(i, np.int64)) for i in idx)
    return as_tensor(np.ascontiguousarray(np.stack(idx, 1).astype(np.int64)))


def masked_select(input, mask) -> Tensor:
    """``torch.masked_select`` outside a trace: the entries where the mask (broadcast with
    the input) is true, flattened."""
    x = as_tensor(input)
    _eager_only(x, "masked_select")
    m = np.asarray(_values(mask)).astype(bool)
    a, m = np.broadcast_arrays(x.numpy(), m)
    return as_tensor(np.ascontiguousarray(a[m]))
