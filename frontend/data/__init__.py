"""Data for training loops: a batcher over numpy arrays and the digits that ship with irgraph.

    loader = DataLoader(x, y, batch_size=64, shuffle=True, seed=0, drop_last=True)
    for xb, yb in loader:              # one epoch; the next iteration is a new shuffle
        ...

Compiled steps have static shapes. With ``drop_last=False`` (the default, as PyTorch) the
last batch of an epoch may be smaller than ``batch_size``; give such a loader a step that
compiles once per batch shape (``frontend.fit.per_shape``), a step compiled with
``compile_train(..., dynamic_batch=True)`` (one compile, the partial batch padded and
masked), or pass ``drop_last=True``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

DIGITS = Path(__file__).resolve().parent / "digits.npz"


class DataLoader:
    """Batches of the leading axis of ``arrays`` (all with the same length).

    ``shuffle``: a new permutation each epoch, drawn from one generator seeded with ``seed``
    (the same seed gives the same sequence of epochs). ``drop_last``: leave out a last batch
    smaller than ``batch_size``. A loader with one array yields arrays, with several tuples.
    """

    def __init__(self, *arrays, batch_size: int = 32, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False):
        if not arrays:
            raise ValueError("DataLoader needs at least one array")
        arrays = tuple(np.asarray(a) for a in arrays)
        for i, a in enumerate(arrays):
            if a.ndim == 0:
                raise ValueError(f"DataLoader: array {i} is 0-d; batches split the first axis")
        lengths = {len(a) for a in arrays}
        if len(lengths) != 1:
            raise ValueError(f"DataLoader: arrays have different lengths "
                             f"{[len(a) for a in arrays]}")
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be a positive int, got {batch_size!r}")
        self.arrays, self.batch_size = arrays, int(batch_size)
        self.shuffle, self.drop_last = shuffle, drop_last
        self.n = lengths.pop()
        self._rng = np.random.default_rng(seed)
        if drop_last and self.n < self.batch_size:
            raise ValueError(f"DataLoader: drop_last with {self.n} examples and batch_size "
                             f"{self.batch_size} gives no batch at all")

    def __len__(self) -> int:
        """Batches per epoch."""
        full, rest = divmod(self.n, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    @property
    def examples_per_epoch(self) -> int:
        return len(self) * self.batch_size if self.drop_last else self.n

    def __iter__(self):
        order = self._rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        for start in range(0, self.n, self.batch_size):
            idx = order[start:start + self.batch_size]
            if len(idx) < self.batch_size and self.drop_last:
                return
            batch = tuple(np.ascontiguousarray(a[idx]) for a in self.arrays)
            yield batch[0] if len(batch) == 1 else batch


def split(n: int, test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split of ``range(n)``: (train indices, test indices)."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    k = int(round(n * test_fraction))
    return np.sort(order[k:]), np.sort(order[:k])


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 8x8 handwritten digits (UCI optdigits test set as scikit-learn ships it):
    images ``(1797, 8, 8)`` uint8 in 0..16 and labels ``(1797,)`` uint8 in 0..9.
    Read from the package (``frontend/data/digits.npz``), never downloaded or unpickled."""
    with np.load(DIGITS, allow_pickle=False) as f:
        return f["images"], f["labels"]


__all__ = ["DataLoader", "split", "load_digits", "DIGITS"]
