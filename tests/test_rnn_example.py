"""The character-level RNN example (examples/char_rnn.py): teacher-forced training lowers the
loss, and the open-loop writer produces text, on every backend."""
from __future__ import annotations

import numpy as np
import pytest

import irgraph.backends as backends
from examples.char_rnn import CORPUS, train_and_generate


def test_teacher_forced_training_lowers_the_loss_and_generation_writes_text():
    losses, sample = train_and_generate("reference", steps=80, seq=16, hidden=32,
                                        length=60, log=lambda *a: None)
    vocab = set(open(CORPUS, encoding="utf-8").read())
    assert np.log(len(vocab)) == pytest.approx(losses[0], rel=0.1)   # uniform at the start
    assert np.mean(losses[-10:]) < 0.75 * losses[0]
    assert len(sample) == 60 and set(sample) <= vocab


@pytest.mark.parametrize("backend", [b for b in backends.available() if b != "reference"])
def test_example_runs_on_every_backend_like_the_reference(backend):
    """A few steps on each backend follow the reference's losses and write the same text."""
    kw = dict(steps=3, seq=8, batch=2, hidden=8, length=12, log=lambda *a: None)
    want_losses, want_text = train_and_generate("reference", **kw)
    losses, text = train_and_generate(backend, **kw)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-4)
    assert text == want_text
