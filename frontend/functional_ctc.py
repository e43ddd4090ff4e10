"""``F.ctc_loss``: connectionist temporal classification (Graves et al., 2006), the negative
log-likelihood of a label sequence summed over every alignment of it to the input's frames.

The forward variables run over the extended labels l' = (blank, l1, blank, l2, ..., blank):

    alpha_0(0) = y_0(blank), alpha_0(1) = y_0(l1)
    alpha_t(s) = (alpha_{t-1}(s) + alpha_{t-1}(s-1) + [l'_s != blank, l'_s != l'_{s-2}]
                  alpha_{t-1}(s-2)) y_t(l'_s)

in log space, one step per frame (the recursion unrolled over the static frame count, a
frame past a sequence's input length keeping its alphas), and the loss is
-log(alpha_{T-1}(|l'| - 1) + alpha_{T-1}(|l'| - 2)). Lengths are data: the extended labels,
the skips and the final positions are gathered at run time. The gradient is the graph's
(reverse mode through the recursion); an impossible alignment gives an infinite loss (or 0
with ``zero_infinity``), its log-sum-exps made safe so no NaN reaches the gradient.
"""
from __future__ import annotations

import numpy as np

from . import functional_core as F
from .functional_index import gather
from .functional_tensor import cumsum, detach
from .tracing import Tensor

__all__ = ["ctc_loss"]

_NEG_INF = float("-inf")


def _lse(*xs: Tensor) -> Tensor:
    """log(sum(exp(x))) elementwise over ``xs``; -inf where all are -inf, with a zero
    gradient there (no 0/0)."""
    m = xs[0]
    for x in xs[1:]:
        m = F.maximum(m, x)
    finite = F.gt(m, _NEG_INF)
    shift = detach(F.where(finite, m, 0.0))
    total = F.exp(F.sub(xs[0], shift))
    for x in xs[1:]:
        total = F.add(total, F.exp(F.sub(x, shift)))
    out = F.add(shift, F.log(F.where(finite, total, 1.0)))
    return F.where(finite, out, _NEG_INF)


def _lengths(v, n: int, what: str) -> Tensor:
    t = F.as_tensor(np.asarray(v, np.int64) if not isinstance(v, Tensor) else v)
    if t.type.is_float:
        raise TypeError(f"ctc_loss: {what} must be integers, got {t.type}")
    t = F.cast(F.reshape(t, (-1,)), "int64")
    if t.shape[0] != n:
        raise ValueError(f"ctc_loss: {what} must hold one length per batch element ({n}), "
                         f"got {t.shape[0]}")
    return t


def _padded_targets(targets: Tensor, target_lengths, n: int) -> Tensor:
    """(N, S) targets from torch's two forms: padded (N, S), or 1-D, every sequence's labels
    one after another (gathered at offsets from the lengths)."""
    if targets.ndim == 2:
        if targets.shape[0] != n:
            raise ValueError(f"ctc_loss: targets {list(targets.shape)} must have the batch "
                             f"size {n} first")
        return targets
    if targets.ndim != 1:
        raise ValueError(f"ctc_loss: targets must be (N, S) or 1-D concatenated, got "
                         f"{list(targets.shape)}")
    total = targets.shape[0]
    if not isinstance(target_lengths, Tensor):             # known now: exact offsets
        lens = np.asarray(target_lengths, np.int64).reshape(-1)
        width = int(lens.max()) if lens.size else 0
        starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
        idx = np.minimum(starts[:, None] + np.arange(width)[None, :], max(total - 1, 0))
        if total == 0:
            return F.as_tensor(np.zeros((n, 0), targets.type.np_dtype))
        return F.emit_op("take", targets, F.as_tensor(idx), axis=0, negative=False)
    lens = _lengths(target_lengths, n, "target_lengths")
    ends = cumsum(lens, 0)
    starts = F.sub(ends, lens)
    pos = F.add(F.unsqueeze(starts, 1), F.as_tensor(np.arange(total)[None, :]))
    pos = F.minimum(pos, F.as_tensor(np.array(max(total - 1, 0))))
    return F.emit_op("take", targets, pos, axis=0, negative=False)


def ctc_loss(log_probs, targets, input_lengths, target_lengths, blank: int = 0,
             reduction: str = "mean", zero_infinity: bool = False) -> Tensor:
    """``torch.nn.functional.ctc_loss``: ``log_probs`` (T, N, C) (or (T, C)) log-softmax
    outputs, ``targets`` (N, S) padded or 1-D concatenated (no blanks), the lengths as
    tensors or sequences of ints; "mean" divides each loss by its target length, then
    averages over the batch."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"ctc_loss: reduction must be 'mean', 'sum' or 'none', got "
                         f"{reduction!r}")
    lp = F.as_tensor(log_probs)
    if not lp.type.is_float:
        raise TypeError(f"ctc_loss: log_probs must be a float tensor, got {lp.type}")
    unbatched = lp.ndim == 2
    if unbatched:
        lp = F.unsqueeze(lp, 1)
        targets = F.unsqueeze(F.as_tensor(targets), 0)
        input_lengths = F.reshape(F.as_tensor(input_lengths), (1,)) if isinstance(
            input_lengths, Tensor) else np.reshape(input_lengths, (1,))
        target_lengths = F.reshape(F.as_tensor(target_lengths), (1,)) if isinstance(
            target_lengths, Tensor) else np.reshape(target_lengths, (1,))
    if lp.ndim != 3:
        raise ValueError(f"ctc_loss: log_probs must be (T, N, C) or (T, C), got "
                         f"{list(lp.shape)}")
    steps, n, classes = lp.shape
    if not 0 <= blank < classes:
        raise ValueError(f"ctc_loss: blank {blank} must be a class in [0, {classes})")
    tg = F.as_tensor(targets)
    if tg.type.is_float:
        raise TypeError(f"ctc_loss: targets must be integers, got {tg.type}")
    tg = F.cast(_padded_targets(tg, target_lengths, n), "int64")
    in_len = _lengths(input_lengths, n, "input_lengths")
    tg_len = _lengths(target_lengths, n, "target_lengths")
    s = tg.shape[1]
    width = 2 * s + 1
    blanks = F.as_tensor(np.full((n, s), blank, np.int64))
    ext = F.cat([F.reshape(F.stack([blanks, tg], -1), (n, 2 * s)),
                 F.as_tensor(np.full((n, 1), blank, np.int64))], 1)            # (N, 2S+1)
    # y_t(l'_s) for every frame: (T, N, 2S+1)
    emit = gather(lp, 2, F.broadcast_to(F.unsqueeze(ext, 0), (steps, n, width)))
    col = np.arange(width)
    if width > 2:
        two_back = F.cat([F.as_tensor(np.full((n, 2), blank, np.int64)),
                          F.slice_axes(ext, [0, 0], [n, width - 2], [1, 1])], 1)
        skip = F.logical_and(F.ne(ext, blank), F.ne(ext, two_back))
        skip = F.logical_and(skip, F.as_tensor(col[None, :] >= 2))
    else:
        skip = None
    ninf = F.as_tensor(np.array(_NEG_INF, lp.type.np_dtype))

    def shifted(a: Tensor, k: int) -> Tensor:
        if k >= width:
            return F.broadcast_to(ninf, (n, width))
        head = F.broadcast_to(ninf, (n, k))
        return F.cat([head, F.slice_axes(a, [0, 0], [n, width - k], [1, 1])], 1)

    def frame(t: int) -> Tensor:
        return F.reshape(F.slice_axes(emit, [t, 0, 0], [t + 1, n, width], [1, 1, 1]),
                         (n, width))

    alpha = F.where(F.as_tensor(col[None, :] < 2), frame(0), ninf) if steps else None
    for t in range(1, steps):
        terms = [alpha, shifted(alpha, 1)]
        if skip is not None:
            terms.append(F.where(skip, shifted(alpha, 2), ninf))
        new = F.add(_lse(*terms), frame(t))
        alpha = F.where(F.unsqueeze(F.lt(t, in_len), 1), new, alpha)
    if alpha is None:
        nll = F.as_tensor(np.full((n,), np.inf, lp.type.np_dtype))
    else:
        last = F.unsqueeze(F.mul(tg_len, 2), 1)
        before = F.maximum(F.sub(last, 1), F.as_tensor(np.array(0, np.int64)))
        a_last = gather(alpha, 1, last)
        a_before = F.where(F.unsqueeze(F.gt(tg_len, 0), 1),
                           gather(alpha, 1, before), ninf)
        nll = F.neg(F.reshape(_lse(a_last, a_before), (n,)))
        # no frames at all (an input length of 0) leaves nothing to align to
        nll = F.where(F.gt(in_len, 0), nll, F.where(F.gt(tg_len, 0), np.inf, 0.0))
    if zero_infinity:
        nll = F.where(F.eq(nll, np.inf), 0.0, nll)
    if reduction == "none":
        return F.reshape(nll, ()) if unbatched else nll
    if reduction == "sum":
        return F.sum(nll)
    per = F.div(nll, F.cast(F.maximum(tg_len, F.as_tensor(np.array(1, np.int64))), nll.dtype))
    return F.mean(per)
