"""Sample inputs of the convolution ops (irgraph/ops/conv.py): 1-, 2- and 3-D, strides,
per-side padding, dilation and groups, kept tiny for the finite-difference test."""
from __future__ import annotations

import numpy as np

from irgraph.ops.conv_geometry import out_shape

from . import Case, rand

# (x shape, w shape, attrs) of conv; the other ops reuse these geometries
_GEOMS = [
    ((2, 2, 7), (3, 2, 3), dict(stride=(2,), padding=(1, 2), dilation=(1,), groups=1)),
    ((1, 4, 5, 6), (4, 2, 2, 3), dict(stride=(2, 1), padding=(0, 1, 1, 0), dilation=(2, 1),
                                      groups=2)),
    ((1, 2, 3, 4, 3), (2, 1, 2, 2, 2), dict(stride=(1, 2, 1), padding=(1, 0, 0, 1, 1, 1),
                                            dilation=(1, 1, 1), groups=2)),
]


def _y_shape(xs, ws, a):
    return (xs[0], ws[0]) + out_shape(xs[2:], ws[2:], a["stride"], a["padding"], a["dilation"])


def _conv_cases(dtype=np.float32):
    return [Case([rand(*xs, seed=i, dtype=dtype), rand(*ws, seed=10 + i, dtype=dtype)], a,
                 note="eq. 9.6-9.8") for i, (xs, ws, a) in enumerate(_GEOMS)]


def _grad_cases(which: str):
    cases = []
    for i, (xs, ws, a) in enumerate(_GEOMS):
        gy = rand(*_y_shape(xs, ws, a), seed=20 + i)
        if which == "kernel":
            cases.append(Case([rand(*xs, seed=i), gy], dict(a, kernel_size=ws[2:]),
                              note="g of eq. 9.11"))
        else:
            cases.append(Case([rand(*ws, seed=10 + i), gy], dict(a, input_size=xs[2:]),
                              note="h of eq. 9.13"))
    return cases


def _window(a):
    return {k: a[k] for k in ("stride", "padding", "dilation")}


def _unfold_cases():
    out = []
    for i, (xs, ws, a) in enumerate(_GEOMS[:2]):
        out.append(Case([rand(*xs, seed=30 + i)], dict(_window(a), kernel_size=ws[2:])))
    return out


def _fold_cases():
    out = []
    for i, (xs, ws, a) in enumerate(_GEOMS[:2]):
        o = out_shape(xs[2:], ws[2:], a["stride"], a["padding"], a["dilation"])
        cols = rand(*(xs[:2] + ws[2:] + o), seed=40 + i)
        out.append(Case([cols], dict(_window(a), kernel_size=ws[2:], output_size=xs[2:])))
    return out


_LC = dict(stride=(1, 2), padding=(1, 0, 0, 1), dilation=(1, 1))

SAMPLES = {
    "conv": _conv_cases() + [Case([rand(1, 1, 4, 5, seed=3, dtype=np.float64),
                                   rand(1, 1, 1, 2, seed=4, dtype=np.float64)],
                                  dict(stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1)),
                                  note="fig. 9.6: two-element kernel, float64")],
    "conv_fft": _conv_cases()[:2],
    "conv_kernel_grad": _grad_cases("kernel"),
    "conv_input_grad": _grad_cases("input"),
    "unfold": _unfold_cases(),
    "fold": _fold_cases(),
    "locally_connected": [
        Case([rand(2, 2, 5, seed=50), rand(3, 3, 2, 3, seed=51)],
             dict(stride=(1,), padding=(0, 0), dilation=(1,)), note="eq. 9.9, 1-D"),
        Case([rand(1, 2, 4, 4, seed=52), rand(2, 4, 2, 2, 2, 2, seed=53)], _LC,
             note="eq. 9.9, 2-D, stride and asymmetric padding"),
    ],
    "tiled_conv": [
        Case([rand(2, 2, 6, seed=54), rand(2, 2, 2, 3, seed=55)],
             dict(stride=(1,), padding=(0, 0), dilation=(1,)),
             note="eq. 9.10, 1-D, t=3 does not divide the width 5"),
        Case([rand(1, 2, 4, 4, seed=56), rand(2, 2, 2, 2, 2, 1, seed=57)], _LC,
             note="eq. 9.10, 2-D, t=(2,1)"),
    ],
}
