"""nn.utils against torch's: gradient clipping by norm (2, 1, inf, 3) and by value on the
gradient arrays ig.grad returns, parameters to a vector and back, pad_sequence (both batch
layouts, both padding sides)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import irgraph as ig

R = np.random.default_rng(0)
GRADS = {"w": R.standard_normal((3, 4)).astype(np.float32),
         "b": R.standard_normal(5).astype(np.float32)}


@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf"), 3.0])
@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_grad_norm_as_torch(norm_type, max_norm):
    ours = {k: v.copy() for k, v in GRADS.items()}
    params = [torch.nn.Parameter(torch.zeros(v.shape)) for v in GRADS.values()]
    for p, v in zip(params, GRADS.values()):
        p.grad = torch.tensor(v)
    got = ig.nn.utils.clip_grad_norm_(ours, max_norm, norm_type)
    want = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-6)
    for a, p in zip(ours.values(), params):
        np.testing.assert_allclose(a, p.grad.numpy(), rtol=1e-6)


def test_clip_grad_value_vectors_and_padding_as_torch():
    ours = [v.copy() for v in GRADS.values()]
    theirs = [torch.tensor(v) for v in GRADS.values()]
    params = [torch.nn.Parameter(torch.zeros(v.shape)) for v in theirs]
    for p, t in zip(params, theirs):
        p.grad = t
    ig.nn.utils.clip_grad_value_(ours, 0.5)
    torch.nn.utils.clip_grad_value_(params, 0.5)
    for a, p in zip(ours, params):
        np.testing.assert_array_equal(a, p.grad.numpy())
    m = ig.nn.Linear(3, 2)
    v = ig.nn.utils.parameters_to_vector(m.parameters())
    tm = torch.nn.Linear(3, 2)
    tm.load_state_dict({k: torch.tensor(a) for k, a in m.state_dict().items()})
    np.testing.assert_array_equal(v, torch.nn.utils.parameters_to_vector(
        tm.parameters()).detach().numpy())
    ig.nn.utils.vector_to_parameters(v * 2, m.parameters())
    np.testing.assert_array_equal(m.weight.data.ravel(), v[:6] * 2)
    with pytest.raises(ValueError, match="9 elements, the parameters 8"):
        ig.nn.utils.vector_to_parameters(np.zeros(9), m.parameters())
    seqs = [R.standard_normal((n, 2)).astype(np.float32) for n in (3, 1, 4)]
    for batch_first in (False, True):
        for side in ("right", "left"):
            got = ig.nn.utils.rnn.pad_sequence(seqs, batch_first, -1.0, side).numpy()
            want = torch.nn.utils.rnn.pad_sequence([torch.tensor(s) for s in seqs],
                                                   batch_first, -1.0, side).numpy()
            np.testing.assert_array_equal(got, want)
