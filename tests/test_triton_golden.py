"""Golden models (tests/golden: MLP, CNN with batch norm, tanh RNN, a training step of each,
made by the reference backend with fixed seeds) reproduced by the Triton backend."""
from __future__ import annotations

import numpy as np
import pytest

import irgraph.backends as backends
from tests.golden import NAMES, load


@pytest.mark.parametrize("name", NAMES)
def test_triton_reproduces_golden_outputs(name):
    graph, args, want = load(name)
    got = backends.compile(graph, "triton")(*[a.copy() for a in args])
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape and g.dtype == w.dtype, f"{name} output {i}"
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=f"{name} output {i}")
