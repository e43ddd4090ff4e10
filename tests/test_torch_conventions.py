"""PyTorch conventions the frontend keeps where several answers are defensible: the gradient of
``clamp`` at its bounds, of ``max(x, dim)`` at ties, 0-d parameters, and BPTT's choice of
unrolled (short sequences) or rolled (long) recurrences in compiled training steps."""
import numpy as np
import torch

import irgraph.frontend as fe
from irgraph.frontend import F, nn
from irgraph.frontend.optim import SGD
from irgraph.interpreter import interpret
from irgraph.passes.autodiff import grad

TIES = np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, -1.0, 5.0]], np.float32)


def _ours_and_torch(fn, torch_fn=None):
    g = fe.trace(fn, fe.TensorSpec(TIES.shape))
    ours = interpret(grad(g), [TIES])[0]
    t = torch.tensor(TIES, requires_grad=True)
    (torch_fn or fn)(t).backward()
    return ours, t.grad.numpy()


def test_max_and_min_over_a_dim_send_the_gradient_to_the_returned_index_as_torch():
    ours, theirs = _ours_and_torch(
        lambda t: (t.max(1)[0] * 2).sum() + t.min(1).values.sum() + t.max(0, keepdim=True)[0].sum())
    np.testing.assert_array_equal(ours, theirs)


def test_clamp_passes_the_gradient_at_its_bounds_as_torch():
    ours, theirs = _ours_and_torch(lambda t: (F.clamp(t, 0.0, 2.0) * 3).sum(),
                                   lambda t: (torch.clamp(t, 0.0, 2.0) * 3).sum())
    np.testing.assert_array_equal(ours, theirs)
    ours, theirs = _ours_and_torch(lambda t: t.clamp(min=2.0).sum() + t.clamp(max=0.0).sum())
    np.testing.assert_array_equal(ours, theirs)


def test_clamp_forward_with_nan_and_crossed_bounds_matches_torch():
    x = np.array([np.nan, -1.0, 0.5, 4.0], np.float32)
    run = fe.compile(lambda t: F.clamp(t, 1.0, 0.0), fe.TensorSpec((4,)))
    np.testing.assert_array_equal(run(x), torch.clamp(torch.tensor(x), 1.0, 0.0).numpy())


def test_a_zero_dimensional_parameter_stays_zero_dimensional():
    p = nn.Parameter(np.zeros((), np.float32))
    assert p.shape == ()
    shared = np.ones((2, 3), np.float32)
    assert nn.Parameter(shared).data is shared   # like torch: no copy of a C-ordered array


def _rnn_step(length: int):
    fe.manual_seed(0)
    rnn = nn.RNN(3, 4)

    def loss(model_out):
        out, _ = model_out
        return (out * out).mean()
    return fe.compile_train(rnn, loss, SGD(lr=0.1), fe.TensorSpec((length, 2, 3)),
                            n_model_inputs=1)


def test_training_steps_unroll_short_recurrences_and_keep_long_ones_rolled():
    """The pipeline picks rolled BPTT above a length threshold (passes/unroll.py)."""
    ops_short = {n.op for n in _rnn_step(4).graph.nodes}
    ops_long = {n.op for n in _rnn_step(40).graph.nodes}
    assert "scan" not in ops_short
    assert "scan" in ops_long
