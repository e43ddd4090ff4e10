"""frontend.data (DataLoader, the shipped digits) and frontend.fit (history, early stopping,
per-shape steps for a partial last batch)."""
from __future__ import annotations

import io

import numpy as np
import pytest

import irgraph.frontend as fe
from irgraph.frontend import nn, optim
from irgraph.frontend.data import DataLoader, load_digits, split
from irgraph.frontend.fit import Callback, EarlyStopping, History, fit, per_shape


def test_loader_partial_last_batch_covers_every_example_once():
    x = np.arange(10)
    batches = list(DataLoader(x, batch_size=4))
    assert [b.tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert len(DataLoader(x, batch_size=4)) == 3


def test_loader_drop_last_and_pairs():
    x, y = np.arange(10), np.arange(10) * 10
    loader = DataLoader(x, y, batch_size=4, drop_last=True)
    batches = list(loader)
    assert len(loader) == 2 and loader.examples_per_epoch == 8
    assert [(a.tolist(), b.tolist()) for a, b in batches] == [
        ([0, 1, 2, 3], [0, 10, 20, 30]), ([4, 5, 6, 7], [40, 50, 60, 70])]


def test_loader_shuffle_is_seeded_new_each_epoch_and_keeps_pairs():
    x = np.arange(20)
    a = DataLoader(x, x * 2, batch_size=5, shuffle=True, seed=3)
    b = DataLoader(x, x * 2, batch_size=5, shuffle=True, seed=3)
    e1 = np.concatenate([xb for xb, _ in a])
    e2 = np.concatenate([xb for xb, _ in a])
    assert sorted(e1.tolist()) == list(range(20)) and sorted(e2.tolist()) == list(range(20))
    assert e1.tolist() != e2.tolist() and e1.tolist() != list(range(20))
    assert np.concatenate([xb for xb, _ in b]).tolist() == e1.tolist()   # same seed
    for xb, yb in a:
        assert (yb == 2 * xb).all()


@pytest.mark.parametrize("kwargs,match", [
    (dict(batch_size=0), "batch_size"), (dict(batch_size=20, drop_last=True), "no batch")])
def test_loader_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DataLoader(np.arange(10), **kwargs)
    with pytest.raises(ValueError, match="different lengths"):
        DataLoader(np.arange(3), np.arange(4))


def test_digits_ship_with_the_package():
    images, labels = load_digits()
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8
    assert images.max() == 16 and sorted(set(labels.tolist())) == list(range(10))
    tr, te = split(1797, 0.2, seed=0)
    assert len(te) == 359 and len(set(tr) | set(te)) == 1797 and not set(tr) & set(te)


def test_early_stopping_by_hand():
    es = EarlyStopping("acc", mode="max", patience=2)
    seq = [0.5, 0.6, 0.6, 0.55]
    stops = [es.on_epoch_end(i + 1, {"acc": v}) for i, v in enumerate(seq)]
    assert stops[:3] == [None, None, None] and "acc" in stops[3] and es.best == 0.6
    with pytest.raises(KeyError, match="monitors 'val'"):
        EarlyStopping("val").on_epoch_end(1, {"loss": 1.0})


def test_fit_history_early_stopping_and_plain_progress():
    losses = iter([4.0, 2.0, 3.0, 3.0, 5.0, 5.0, 1.0, 1.0])   # two batches per epoch
    calls = []

    def step(xb):
        calls.append(len(xb))
        return next(losses)

    out = io.StringIO()
    hist = fit(step, DataLoader(np.zeros((8, 2)), batch_size=4), epochs=4,
               eval_fn=lambda: {"score": -len(calls)},
               callbacks=[EarlyStopping("loss", patience=2)], out=out)
    assert hist.loss == [3.0, 3.0, 5.0]              # mean of each epoch's batch losses
    assert hist["score"] == [-2, -4, -6] and len(hist["time"]) == 3
    assert "early stopping: loss" in hist.stop_reason and calls == [4] * 6
    text = out.getvalue()
    assert "epoch 1/4  loss 3.0000" in text and "examples/s" in text and "stopped:" in text


def test_fit_stops_on_a_non_finite_loss():
    hist = fit(lambda xb: float("nan"), DataLoader(np.zeros(6), batch_size=2), epochs=3,
               out=io.StringIO())
    assert len(hist) == 1 and "nan" in hist.stop_reason
    with pytest.raises(KeyError, match="no 'acc'"):
        hist["acc"]


def test_fit_trains_a_compiled_step_with_a_partial_last_batch():
    """10 examples in batches of 4: per_shape compiles a step for 4 and one for 2; the model
    learns a linear map (loss falls by 10x)."""
    r = np.random.default_rng(0)
    x = r.standard_normal((10, 3)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5]], np.float32)).astype(np.float32)
    fe.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = optim.SGD(lr=0.1)
    step = per_shape(lambda n: fe.compile_train(
        model, nn.MSELoss(), opt, fe.TensorSpec((n, 3)), fe.TensorSpec((n, 1))))
    hist = fit(step, DataLoader(x, y, batch_size=4, shuffle=True), epochs=30,
               out=io.StringIO())
    assert sorted(step.steps) == [2, 4]
    assert hist.loss[-1] < hist.loss[0] / 10
    assert isinstance(hist, History) and hist.stop_reason is None
    assert issubclass(EarlyStopping, Callback)
