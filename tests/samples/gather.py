"""Sample inputs of the gather/scatter ops (irgraph/ops/gather.py): repeated and negative
indices, int32 and int64 indices, every axis, multi-dimensional index tensors, float64 and
integer data. The index input (1) is never perturbed by finite differences."""
from __future__ import annotations

import numpy as np

from . import Case, rand


def _i(values, dtype=np.int64) -> np.ndarray:
    return np.asarray(values, dtype)


SAMPLES = {
    "take": [
        Case([rand(5, 3), _i([0, 4, -1, 2, 2])], {"axis": 0}, nondiff=(1,),
             note="an embedding lookup: repeats and a negative index"),
        Case([rand(2, 4, 3, seed=1), _i([[3, 0], [-4, 3]], np.int32)], {"axis": 1},
             nondiff=(1,), note="x[:, idx] with a 2-D int32 index"),
        Case([rand(3, 4, seed=2, dtype=np.float64), _i([1, -1])], {"axis": -1}, nondiff=(1,)),
        Case([_i([[1, 2], [3, 4], [5, 6]]), _i(-2)], {"axis": 0}, nondiff=(1,),
             note="integer data, a 0-d index drops the axis"),
    ],
    "take_along_axis": [
        Case([rand(3, 4), _i([[0, 3, 3], [1, 1, -1], [2, 0, 0]])], {"axis": 1},
             nondiff=(1,), note="torch.gather on dim 1 with repeats"),
        Case([rand(4, 3, seed=1, dtype=np.float64), _i([[3, 0, 1], [-1, 2, 2]], np.int32)],
             {"axis": 0}, nondiff=(1,), note="fewer rows than x: torch.gather's corner"),
        Case([rand(2, 3, 4, seed=2), _i(np.arange(24).reshape(2, 3, 4) % 3)], {"axis": -2},
             nondiff=(1,)),
    ],
    "index_add": [
        Case([rand(5, 3), _i([0, 4, -1, 4, 2, 0]), rand(6, 3, seed=3)], {"axis": 0},
             nondiff=(1,), note="duplicates accumulate"),
        Case([rand(2, 4, seed=1, dtype=np.float64), _i([[3, 3], [-4, 1]], np.int32),
              rand(2, 2, 2, seed=4, dtype=np.float64)], {"axis": 1}, nondiff=(1,)),
        Case([_i([[1, 2], [3, 4]]), _i([1, 1, 0]), _i([[5, 6], [7, 8], [9, 10]])],
             {"axis": 0}, nondiff=(1,), note="integer data"),
    ],
    "scatter_add": [
        Case([rand(3, 4), _i([[0, 3, 3], [1, 1, -1], [2, 0, 0]]), rand(3, 3, seed=5)],
             {"axis": 1}, nondiff=(1,), note="torch.scatter_add on dim 1 with repeats"),
        Case([rand(4, 3, seed=1, dtype=np.float64), _i([[3, 0, 1], [-1, 3, 3]], np.int32),
              rand(2, 3, seed=6, dtype=np.float64)], {"axis": 0}, nondiff=(1,)),
    ],
}
