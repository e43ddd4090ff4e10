"""Training state save/load (``TrainStepFunction.save_state`` / ``load_state``): a run resumed
from a saved state gives bit for bit the losses, parameters, buffers, optimizer state and
random draws of the uninterrupted run; a state that does not fit the step is refused whole."""
from __future__ import annotations

import json

import numpy as np
import pytest

import irgraph.frontend as fe
import irgraph.frontend.random
import irgraph
from irgraph.frontend import nn, optim
from irgraph.frontend.train import compile_train

N_STEPS, SPLIT = 6, 3
OPTIMIZERS = {
    "momentum_schedule": lambda: optim.SGD(lr=optim.LinearDecay(0.1, 0.01, 5), momentum=0.9),
    "adam": lambda: optim.Adam(lr=0.01),
}


def batches():
    r = np.random.default_rng(7)
    return [(r.standard_normal((16, 4)).astype(np.float32), r.integers(0, 3, 16))
            for _ in range(N_STEPS)]


def make_step(seed: int, opt_name: str, backend: str):
    """A model with batch norm (running statistics and a batch counter are buffers)."""
    fe.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    opt = OPTIMIZERS[opt_name]()
    step = compile_train(model, nn.CrossEntropyLoss(), opt, fe.TensorSpec((16, 4)),
                         fe.TensorSpec((16,), "int64"), backend=backend)
    return model, opt, step


def snapshot(model, opt):
    return ({n: p.data.copy() for n, p in model.named_parameters(buffers=True)},
            {pn: {s: a.copy() for s, a in slots.items()} for pn, slots in opt.state.items()},
            opt.step_count)


def assert_same(a, b):
    (pa, sa, ka), (pb, sb, kb) = a, b
    assert ka == kb and sorted(pa) == sorted(pb) and sorted(sa) == sorted(sb)
    for n in pa:
        assert pa[n].dtype == pb[n].dtype
        np.testing.assert_array_equal(pa[n], pb[n], err_msg=n)
    for pn in sa:
        assert sorted(sa[pn]) == sorted(sb[pn])
        for s in sa[pn]:
            np.testing.assert_array_equal(sa[pn][s], sb[pn][s], err_msg=f"{pn}.{s}")


@pytest.mark.parametrize("backend", ["reference", "llvm"])
@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_resume_is_bit_identical(tmp_path, backend, opt_name):
    data = batches()
    model, opt, step = make_step(0, opt_name, backend)
    full = [step(x, y) for x, y in data]
    full_end = snapshot(model, opt)
    full_draws = fe.random.rng().random(4)

    model, opt, step = make_step(0, opt_name, backend)
    first = [step(x, y) for x, y in data[:SPLIT]]
    step.save_state(tmp_path / "state")
    assert first == full[:SPLIT]

    # a fresh process would start from other weights and another random state
    model, opt, step = make_step(123, opt_name, backend)
    fe.random.rng().random(10)
    assert step(*data[SPLIT]) != full[SPLIT]          # this start does differ
    step.load_state(tmp_path / "state")
    assert opt.step_count == SPLIT
    rest = [step(x, y) for x, y in data[SPLIT:]]
    assert rest == full[SPLIT:]                       # exact float equality
    assert_same(snapshot(model, opt), full_end)
    np.testing.assert_array_equal(fe.random.rng().random(4), full_draws)
    assert int(model[1].num_batches_tracked.data) == N_STEPS


def test_state_of_another_model_or_optimizer_is_refused_whole(tmp_path):
    data = batches()
    model, opt, step = make_step(0, "adam", "reference")
    step(*data[0])
    step.save_state(tmp_path / "adam")

    # another optimizer class: refused before anything changes
    model2, opt2, step2 = make_step(1, "momentum_schedule", "reference")
    before = snapshot(model2, opt2)
    with pytest.raises(irgraph.CheckpointError, match=r"manifest.json: lists arrays "
                                                      r"\['state:0.bias:exp_avg'"):
        step2.load_state(tmp_path / "adam")
    assert_same(snapshot(model2, opt2), before)

    # another model (other widths)
    fe.manual_seed(0)
    wide = nn.Sequential(nn.Linear(4, 9), nn.BatchNorm1d(9), nn.ReLU(), nn.Linear(9, 3))
    step3 = compile_train(wide, nn.CrossEntropyLoss(), optim.Adam(lr=0.01),
                          fe.TensorSpec((16, 4)), fe.TensorSpec((16,), "int64"))
    with pytest.raises(irgraph.CheckpointError, match=r"array 'param:0.bias' is float32\[8\], "
                                                      r"this training step declares "
                                                      r"float32\[9\]"):
        step3.load_state(tmp_path / "adam")

    # a graph checkpoint is not a training state, nor the reverse
    with pytest.raises(irgraph.CheckpointError, match=r"kind 'training_state', expected 'graph'"):
        irgraph.load(tmp_path / "adam")


@pytest.mark.parametrize("meta,pattern", [
    ({"optimizer": "SGD"}, r"the state is 'SGD''s, this step's optimizer is Adam"),
    ({"step_count": -1}, r"step_count -1 is not an int >= 0"),
    ({"step_count": "3"}, r"step_count '3' is not an int >= 0"),
    ({"step_count": True}, r"step_count True is not an int >= 0"),
    ({"rng": {"bit_generator": "MT19937"}}, r"rng: not a PCG64 random state"),
    ({"rng": {"bit_generator": "PCG64", "state": {"state": "x", "inc": 1},
              "has_uint64": 0, "uinteger": 0}}, r"rng: not a PCG64 random state"),
    ({"extra": 1}, r"has keys \['extra', 'optimizer', 'rng', 'step_count'\]"),
])
def test_bad_metadata_is_refused_whole(tmp_path, meta, pattern):
    data = batches()
    model, opt, step = make_step(0, "adam", "reference")
    step(*data[0])
    step.save_state(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["meta"].update(meta)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    step(*data[1])
    before, rng_before = snapshot(model, opt), fe.random.get_state()
    with pytest.raises(irgraph.CheckpointError, match=r"manifest.json: meta: " + pattern):
        step.load_state(tmp_path)
    assert_same(snapshot(model, opt), before)
    assert fe.random.get_state() == rng_before
