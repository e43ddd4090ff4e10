"""``fit``: the training loop for people, around any step ``step(*batch) -> loss``.

    history = fit(step, DataLoader(x, y, batch_size=64, shuffle=True, drop_last=True),
                  epochs=10, eval_fn=lambda: {"accuracy": accuracy()},
                  callbacks=[EarlyStopping("accuracy", mode="max", patience=2)])
    history.loss, history["accuracy"], history.stop_reason

Progress: a tqdm bar per epoch (loss, examples/s) when tqdm is installed and ``out`` is a
terminal, else one plain line per epoch. ``per_shape(make_step)`` compiles one step per
batch shape (a partial last batch gets its own) and says so when a compile takes over a
second (``compile_train(..., dynamic_batch=True)`` gives one step for every batch size up
to its own). A loss that is not finite ends training (``history.stop_reason`` says why).
"""
from __future__ import annotations

import math
import sys
import time
from typing import Callable, Iterable, Sequence

from .jit import SpecializationCache


class History:
    """Per epoch: ``loss`` (mean over the epoch's examples), ``time`` (s, training only),
    ``examples_per_s`` and whatever ``eval_fn`` returned."""

    def __init__(self):
        self.epochs: list[dict] = []
        self.stop_reason: str | None = None

    def __getitem__(self, key: str) -> list:
        if not self.epochs or key not in self.epochs[-1]:
            known = sorted(self.epochs[-1]) if self.epochs else []
            raise KeyError(f"history has no {key!r}; it has {known}")
        return [e.get(key) for e in self.epochs]

    @property
    def loss(self) -> list[float]:
        return self["loss"]

    def __len__(self) -> int:
        return len(self.epochs)

    def __repr__(self) -> str:
        return f"History({len(self)} epochs, stop_reason={self.stop_reason!r})"


class Callback:
    """Hooks of ``fit``; ``on_epoch_end`` returns a reason string to stop training."""

    def on_batch_end(self, batch: int, loss: float) -> None:
        pass

    def on_epoch_end(self, epoch: int, logs: dict) -> str | None:
        return None


class EarlyStopping(Callback):
    """Stop when ``monitor`` (a key of the epoch's logs: ``loss`` or an ``eval_fn`` metric)
    has not improved by more than ``min_delta`` for ``patience`` epochs."""

    def __init__(self, monitor: str = "loss", mode: str = "min", patience: int = 3,
                 min_delta: float = 0.0):
        if mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping mode must be 'min' or 'max', got {mode!r}")
        if patience < 0:
            raise ValueError(f"EarlyStopping patience must be >= 0, got {patience}")
        self.monitor, self.mode, self.patience, self.min_delta = monitor, mode, patience, min_delta
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.wait = 0

    def on_epoch_end(self, epoch, logs):
        if self.monitor not in logs:
            raise KeyError(f"EarlyStopping monitors {self.monitor!r}, but the epoch's logs "
                           f"have only {sorted(logs)} (return it from eval_fn)")
        value = float(logs[self.monitor])
        sign = 1.0 if self.mode == "min" else -1.0
        if self.best is None or sign * (self.best - value) > self.min_delta:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            return None
        self.wait += 1
        if self.wait >= self.patience:
            return (f"early stopping: {self.monitor} has not improved for {self.wait} "
                    f"epoch(s) (best {self.best:.6g} at epoch {self.best_epoch})")
        return None


def _say(out, text: str) -> None:
    print(text, file=out, flush=True)


class per_shape:
    """A step that compiles ``make_step(batch_size)`` once per leading batch size (so that
    a partial last batch runs too); compiles over a second are reported on ``out``. The
    steps sit in ``frontend.jit``'s bounded table (``maxsize``, ``warn_after``, counts in
    ``cache_info()``). One step for every size: ``compile_train(..., dynamic_batch=True)``."""

    def __init__(self, make_step: Callable[[int], Callable], out=None, maxsize: int = 32,
                 warn_after: int | None = None):
        self.make_step, self.out = make_step, out
        self.cache = SpecializationCache(maxsize, warn_after, "the per-shape training step")

    @property
    def steps(self) -> dict[int, Callable]:
        """Batch size -> its compiled step (the table's current entries)."""
        return dict(self.cache.table)

    def cache_info(self):
        return self.cache.info()

    def _make(self, n: int) -> Callable:
        t0 = time.perf_counter()
        step = self.make_step(n)
        dt = time.perf_counter() - t0
        if dt > 1.0:
            _say(self.out or sys.stderr, f"compiled the step for batches of {n} in {dt:.1f} s")
        return step

    def __call__(self, *batch):
        n = len(batch[0])
        return self.cache.get(n, lambda: self._make(n), lambda: f"batches of {n}")(*batch)


def _bar(total: int, desc: str, out, progress):
    if progress is False:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    if progress is None and not (hasattr(out, "isatty") and out.isatty()):
        return None
    return tqdm(total=total, desc=desc, file=out, leave=True, unit="batch")


def _format(logs: dict) -> str:
    parts = []
    for k, v in logs.items():
        if k in ("epoch", "time"):
            continue
        if k == "examples_per_s":
            parts.append(f"{v:,.0f} examples/s")
        elif isinstance(v, float):
            parts.append(f"{k} {v:.4f}")
        else:
            parts.append(f"{k} {v}")
    return "  ".join(parts) + f"  ({logs['time']:.2f} s)"


def fit(step: Callable, loader: Iterable, epochs: int = 1,
        eval_fn: Callable[[], dict] | None = None, callbacks: Sequence[Callback] = (),
        progress: bool | None = None, out=None) -> History:
    """Run ``step(*batch)`` over ``loader`` for ``epochs`` epochs; returns a ``History``.

    ``eval_fn()`` runs after each epoch and returns metrics (name -> number) added to the
    epoch's logs. ``progress``: None = a tqdm bar when possible, True = tqdm when installed,
    False = plain lines only; ``out`` defaults to ``sys.stderr``.
    """
    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
    out = out or sys.stderr
    history = History()
    for epoch in range(1, epochs + 1):
        bar = _bar(len(loader) if hasattr(loader, "__len__") else None,
                   f"epoch {epoch}/{epochs}", out, progress)
        total, seen, t0 = 0.0, 0, time.perf_counter()
        reason = None
        for i, batch in enumerate(loader):
            batch = batch if isinstance(batch, tuple) else (batch,)
            loss = float(step(*batch))
            n = len(batch[0])
            total, seen = total + loss * n, seen + n
            for cb in callbacks:
                cb.on_batch_end(i, loss)
            if bar is not None:
                rate = seen / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix_str(f"loss {total / seen:.4f}, {rate:,.0f} examples/s")
                bar.update(1)
            if not math.isfinite(loss):
                reason = f"the loss is {loss} at epoch {epoch}, batch {i}"
                break
        elapsed = time.perf_counter() - t0
        if bar is not None:
            bar.close()
        if seen == 0:
            raise ValueError("the loader gave no batch (fewer examples than one batch with "
                             "drop_last?)")
        logs = {"epoch": epoch, "loss": total / seen, "time": elapsed,
                "examples_per_s": seen / max(elapsed, 1e-9)}
        if eval_fn is not None and reason is None:
            logs.update(eval_fn())
        history.epochs.append(logs)
        _say(out, f"epoch {epoch}/{epochs}  " + _format(logs))
        for cb in callbacks:
            reason = cb.on_epoch_end(epoch, logs) or reason
        if reason:
            history.stop_reason = reason
            _say(out, f"stopped: {reason}")
            break
    return history


__all__ = ["fit", "History", "Callback", "EarlyStopping", "per_shape"]
