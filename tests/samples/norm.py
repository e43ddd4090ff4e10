"""Sample inputs of batch normalization (irgraph/ops/norm.py, section 8.7.1): per feature
(N, C), per channel (N, C, H, W), training and inference, axis other than 1."""
from __future__ import annotations

import numpy as np

from . import Case, positive, rand


def _bn(x_shape, c, seed, dtype=np.float32):
    return [rand(*x_shape, seed=seed, dtype=dtype), positive(c, seed=seed + 1, dtype=dtype),
            rand(c, seed=seed + 2, dtype=dtype), rand(c, seed=seed + 3, dtype=dtype),
            positive(c, seed=seed + 4, dtype=dtype)]


SAMPLES = {
    "batch_norm": [
        Case(_bn((4, 3), 3, 0), {"training": True}, note="eq. 8.35-8.37 per feature"),
        Case(_bn((2, 3, 2, 3), 3, 10), {"training": True, "momentum": 0.3},
             note="per channel, shared over positions"),
        Case(_bn((2, 3, 2, 3), 3, 20, np.float64), {"training": False, "eps": 1e-3},
             note="inference: running statistics"),
        Case(_bn((3, 2, 4), 4, 30), {"training": True, "axis": -1}, note="channels last"),
    ],
}
