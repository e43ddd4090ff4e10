"""F.ctc_loss and nn.CTCLoss against torch: the loss summed over all alignments (padded and
concatenated targets, repeated labels, lengths shorter than the tensors, an empty target, an
impossible alignment with and without zero_infinity, every reduction, unbatched input) and
the gradient of the logits through log_softmax, on the reference and LLVM backends (torch's
gradient with respect to log_probs itself assumes they come from a log_softmax, so the
logits are where both are the true gradient)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import irgraph.frontend as fe
from irgraph.frontend import F, nn
from _torch_twins import check_function

T_, N, C, S = 10, 3, 5, 4
RNG = np.random.default_rng(21)
LOGITS = RNG.standard_normal((T_, N, C))
TARGETS = RNG.integers(1, C, (N, S))
TARGETS[0, 1] = TARGETS[0, 0]                    # a repeated label needs a blank between
IN_LEN = np.array([10, 7, 9])
TG_LEN = np.array([4, 2, 3])


@pytest.mark.parametrize("backend", ["reference", "llvm"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_ctc_loss_and_logit_gradients_match_torch(reduction, backend):
    flat = np.concatenate([TARGETS[i, :TG_LEN[i]] for i in range(N)])

    def ours(x):
        lp = F.log_softmax(x, 2)
        return (F.ctc_loss(lp, TARGETS, IN_LEN, TG_LEN, reduction=reduction),
                F.ctc_loss(lp, flat, IN_LEN, TG_LEN, blank=0, reduction=reduction),
                F.ctc_loss(lp, TARGETS, IN_LEN, np.array([0, 2, 1]), reduction=reduction))

    def theirs(x):
        lp = torch.log_softmax(x, 2)
        t = torch.tensor
        return (torch.nn.functional.ctc_loss(lp, t(TARGETS), t(IN_LEN), t(TG_LEN),
                                             reduction=reduction),
                torch.nn.functional.ctc_loss(lp, t(flat), t(IN_LEN), t(TG_LEN),
                                             reduction=reduction),
                torch.nn.functional.ctc_loss(lp, t(TARGETS), t(IN_LEN), t([0, 2, 1]),
                                             reduction=reduction))
    check_function(ours, theirs, [LOGITS], [0], backend, rtol=1e-9, grad_rtol=1e-8)


def test_ctc_lengths_as_traced_tensors_another_blank_and_unbatched():
    """Lengths given at run time (inputs of the compiled graph), blank = C - 1, and the
    unbatched (T, C) form."""
    tg = np.where(TARGETS == C - 1, 0, TARGETS)
    lp = torch.log_softmax(torch.tensor(LOGITS), 2)
    f = fe.compile(lambda lp, il, tl: F.ctc_loss(lp, tg, il, tl, blank=C - 1,
                                                 reduction="none"),
                   fe.TensorSpec((T_, N, C), "float64"), fe.TensorSpec((N,), "int64"),
                   fe.TensorSpec((N,), "int64"), backend="llvm")
    for il, tl in ((IN_LEN, TG_LEN), (np.array([6, 10, 8]), np.array([3, 4, 1]))):
        want = torch.nn.functional.ctc_loss(lp, torch.tensor(tg), torch.tensor(il),
                                            torch.tensor(tl), blank=C - 1, reduction="none")
        np.testing.assert_allclose(f(lp.numpy(), il, tl), want.numpy(), rtol=1e-10)
    one = fe.compile(lambda lp: F.ctc_loss(lp, TARGETS[1, :2], 7, 2),
                     fe.TensorSpec((T_, C), "float64"), backend="reference")(lp[:, 1].numpy())
    want = torch.nn.functional.ctc_loss(lp[:, 1], torch.tensor(TARGETS[1, :2]), torch.tensor(7),
                                        torch.tensor(2))
    np.testing.assert_allclose(one, want.numpy(), rtol=1e-10)


def test_impossible_alignments_are_infinite_or_zeroed_as_torch():
    """A target of 4 labels with a repeat needs 5 frames: 3 give an infinite loss; with
    zero_infinity the loss and its gradient are 0 (no NaN reaches the other elements)."""
    il = np.array([3, 7, 9])
    x = torch.tensor(LOGITS, requires_grad=True)
    loss = torch.nn.functional.ctc_loss(torch.log_softmax(x, 2), torch.tensor(TARGETS),
                                        torch.tensor(il), torch.tensor(TG_LEN),
                                        zero_infinity=True)
    loss.backward()
    value, grad = fe.value_and_grad(lambda x: F.ctc_loss(
        F.log_softmax(x, 2), TARGETS, il, TG_LEN, zero_infinity=True))(LOGITS)
    value, grad = np.asarray(value), np.asarray(grad)
    np.testing.assert_allclose(value, loss.item(), rtol=1e-10)
    np.testing.assert_allclose(grad, x.grad.numpy(), rtol=1e-8, atol=1e-12)
    assert np.all(grad[:, 0] == 0)
    per = F.ctc_loss(np.log(np.full((T_, N, C), 1 / C)), TARGETS, il, TG_LEN,
                     reduction="none").numpy()
    assert per[0] == np.inf and np.all(np.isfinite(per[1:]))


def test_ctc_module_trains_in_a_compiled_step():
    """nn.CTCLoss as a training loss: a small recurrent model's loss falls (Adam)."""
    fe.manual_seed(0)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(4, 8)
            self.out = nn.Linear(8, C)

        def forward(self, x):
            return F.log_softmax(self.out(self.rnn(x)[0]), 2)
    model, ctc = Model(), nn.CTCLoss()
    x = RNG.standard_normal((T_, N, 4)).astype(np.float32)

    def loss_fn(lp, tg):
        return ctc(lp, tg, IN_LEN, TG_LEN)
    step = fe.compile_train(model, loss_fn, fe.optim.Adam(lr=0.05),
                            fe.TensorSpec((T_, N, 4), "float32"),
                            fe.TensorSpec((N, S), "int64"), backend="llvm")
    losses = [float(step(x, TARGETS)) for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0]
    assert repr(ctc) == repr(torch.nn.CTCLoss())
