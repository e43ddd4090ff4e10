"""Data parallelism (frontend/distributed.py) on 2 local processes over gloo (loopback).

Two processes on a global batch of 8 (4 each) must end with the parameters and optimizer
state of ONE process (plain ``compile_train``) on the same 8, for every first-order optimizer
and a schedule; batch norm (per-process statistics, running statistics averaged) is checked
against PyTorch doing the same by hand; checkpoints move between 2 and 1 processes; a failing
rank ends the run with an error naming it. One launch runs all the 2-process training (the
processes start once: importing torch costs seconds here); every launch has a deadline.
"""
from __future__ import annotations

import multiprocessing

import numpy as np
import pytest

import irgraph.frontend as fe
from irgraph.frontend import distributed as D
from irgraph.frontend import nn, optim
from irgraph.frontend.layers import BatchNorm1d

P, B, STEPS, RESUME_AT = 2, 8, 4, 2
X1 = fe.TensorSpec((B // P, 3))           # one process's shard of 2
Y1 = fe.TensorSpec((B // P,), "int64")
DEADLINE_S = 240                           # kill the processes past this (a bug, not load)

OPTIMIZERS = {
    "sgd": lambda: optim.SGD(lr=0.1),
    "sgd_linear_decay": lambda: optim.SGD(lr=optim.LinearDecay(0.2, 0.02, 3)),
    "momentum_wd": lambda: optim.SGD(lr=0.05, momentum=0.9, weight_decay=0.01),
    "nesterov": lambda: optim.SGD(lr=0.05, momentum=0.9, nesterov=True),
    "nesterov_torch": lambda: optim.SGD(lr=0.05, momentum=0.9, nesterov=True,
                                        convention="torch"),
    "adagrad": lambda: optim.AdaGrad(lr=0.1),
    "rmsprop": lambda: optim.RMSprop(lr=0.01),
    "rmsprop_nesterov": lambda: optim.RMSprop(lr=0.01, momentum=0.5, nesterov=True),
    "adam": lambda: optim.Adam(lr=0.02),
    "adam_torch_clip_polyak": lambda: optim.Adam(lr=0.02, convention="torch",
                                                 clip_grad_norm=0.5, polyak=0.9),
    "adamw_schedule": lambda: optim.AdamW(lr=optim.LinearDecay(0.05, 0.01, 3)),
}
LLVM_CASES = ("adam", "nesterov")
CKPT_OPT = "adamw_schedule"


def mlp(seed: int) -> nn.Module:
    fe.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))


def bn_mlp(seed: int) -> nn.Module:
    fe.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


def batch(step: int):
    """The global batch of step ``step``: two Gaussian blobs."""
    r = np.random.default_rng(100 + step)
    y = r.integers(0, 2, B)
    x = (r.standard_normal((B, 3)) + 1.5 * (2 * y[:, None] - 1)).astype(np.float32)
    return x, y


def state_of(step) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in step._state_arrays().items()}


def single_process(opt_name: str, steps: int = STEPS):
    """The oracle: plain compile_train, one process, the whole global batch."""
    step = fe.compile_train(mlp(0), nn.CrossEntropyLoss(), OPTIMIZERS[opt_name](),
                            fe.TensorSpec((B, 3)), fe.TensorSpec((B,), "int64"))
    losses = [step(*batch(s)) for s in range(steps)]
    return losses, state_of(step)


def dp_step(comm, opt_name: str, backend: str = "reference", model=None):
    # rank r starts from seed r: only the broadcast of rank 0's state makes them agree
    n = B // comm.world_size
    return D.compile_data_parallel(model or mlp(comm.rank), nn.CrossEntropyLoss(),
                                   OPTIMIZERS[opt_name](), fe.TensorSpec((n, 3)),
                                   fe.TensorSpec((n,), "int64"), comm=comm, backend=backend,
                                   check_every=2, bucket_mb=1e-4)   # 104-byte buckets: several


def run(step, comm, steps) -> list[float]:
    return [step(*D.shard(batch(s), comm.rank, comm.world_size)) for s in steps]


# ---------------------------------------------------------------- what each rank runs
def _all_cases(comm, ckpt_2to1: str, ckpt_1to2: str, bad_folder: str) -> dict:
    out = {}
    for name in OPTIMIZERS:
        step = dp_step(comm, name)
        out[name] = (run(step, comm, range(STEPS)), state_of(step), step.bucket_sizes)
    for name in LLVM_CASES:
        step = dp_step(comm, name, "llvm")
        out["llvm_" + name] = (run(step, comm, range(STEPS)), state_of(step))
    # batch norm: per-process statistics, running statistics averaged
    opt = optim.SGD(lr=0.1, momentum=0.9, convention="torch")
    step = D.compile_data_parallel(bn_mlp(comm.rank), nn.CrossEntropyLoss(), opt, X1, Y1,
                                   comm=comm)
    out["bn"] = (run(step, comm, range(STEPS)), state_of(step))
    # checkpoints: 2 processes save after RESUME_AT steps; resume what 1 process saved
    step = dp_step(comm, CKPT_OPT)
    run(step, comm, range(RESUME_AT))
    step.save_state(ckpt_2to1)
    step = dp_step(comm, CKPT_OPT)
    step.load_state(ckpt_1to2)
    out["resumed_1to2"] = (run(step, comm, range(RESUME_AT, STEPS)), state_of(step))
    # faults every rank must hear of: rank 0 cannot save; rank 1's parameters drift
    for what, act in (("bad_save", lambda: step.save_state(bad_folder)),
                      ("diverged", lambda: _drift_and_check(step, comm))):
        try:
            act()
            out[what] = None
        except Exception as e:    # noqa: BLE001 -- the message is what the test checks
            out[what] = f"{type(e).__name__}: {e}"
    return out


def _drift_and_check(step, comm):
    if comm.rank == 1:
        step.params["0.bias"].data[0] += 1e-3
    step.check_consistency()


def _fail_at_step_3(comm):
    step = dp_step(comm, "sgd")
    for s in range(STEPS):
        if comm.rank == 1 and s == 3:
            raise ValueError("injected fault in step 3")
        step(*D.shard(batch(s), comm.rank, comm.world_size))


def _hang_on_rank_1(comm):
    if comm.rank == 1:
        import time
        time.sleep(3600)


# ---------------------------------------------------------------- the 2-process run
@pytest.fixture(scope="module")
def two(tmp_path_factory):
    root = tmp_path_factory.mktemp("dp")
    # 1 process trains RESUME_AT steps and saves (the 2 processes resume from it)
    step = dp_step(D.LocalCommunicator(), CKPT_OPT)
    run(step, D.LocalCommunicator(), range(RESUME_AT))
    step.save_state(root / "from1")
    (root / "not_a_folder").write_text("a file where the checkpoint folder should go")
    results = D.launch(_all_cases, P, str(root / "from2"), str(root / "from1"),
                       str(root / "not_a_folder"), timeout_s=DEADLINE_S)
    return results, root


def assert_state_close(got: dict, want: dict, rtol=2e-5, atol=2e-6):
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=rtol, atol=atol, err_msg=k)


def test_ranks_end_bit_identical(two):
    (r0, r1), _ = two
    for case in r0:
        if r0[case] is not None and case not in ("bad_save", "diverged"):
            for k, a in r0[case][1].items():
                np.testing.assert_array_equal(a, r1[case][1][k], err_msg=f"{case}: {k}")


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_two_processes_match_one_process(two, name):
    (r0, _), _ = two
    losses, state, buckets = r0[name]
    want_losses, want_state = single_process(name)
    np.testing.assert_allclose(losses, want_losses, rtol=2e-5)   # global mean = shard means
    assert_state_close(state, want_state)
    assert len(buckets) > 1                     # the tiny bucket size splits the reduction


@pytest.mark.parametrize("name", LLVM_CASES)
def test_two_processes_on_llvm_match_one_process(two, name):
    (r0, _), _ = two
    losses, state = r0["llvm_" + name]
    want_losses, want_state = single_process(name)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-4)
    assert_state_close(state, want_state, rtol=1e-4, atol=1e-5)


def test_batch_norm_per_process_statistics_match_torch(two):
    """Each process normalizes its shard with its own statistics; the gradients are averaged
    and the running statistics too. PyTorch does the same by hand: each shard through the
    model from the same running statistics, the mean of the shard losses backpropagated,
    torch.optim.SGD, then the running statistics averaged."""
    import torch
    (r0, _), _ = two
    losses, state = r0["bn"]
    ours = bn_mlp(0)
    tm = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                             torch.nn.Linear(8, 2)).double()
    with torch.no_grad():
        for name, t in tm.state_dict().items():
            t.copy_(torch.from_numpy(np.asarray(dict(ours.named_parameters(buffers=True))[name]
                                                .data, np.float64)))
    opt = torch.optim.SGD(tm.parameters(), lr=0.1, momentum=0.9)
    bn = tm[1]
    want_losses = []
    for s in range(STEPS):
        x, y = (torch.from_numpy(a) for a in batch(s))
        start = (bn.running_mean.clone(), bn.running_var.clone())
        shard_losses, means, vars_ = [], [], []
        for k in range(P):
            bn.running_mean, bn.running_var = start[0].clone(), start[1].clone()
            sl = slice(k * B // P, (k + 1) * B // P)
            shard_losses.append(torch.nn.functional.cross_entropy(tm(x[sl].double()), y[sl]))
            means.append(bn.running_mean.clone())
            vars_.append(bn.running_var.clone())
        loss = sum(shard_losses) / P
        opt.zero_grad()
        loss.backward()
        opt.step()
        bn.running_mean, bn.running_var = sum(means) / P, sum(vars_) / P
        want_losses.append(loss.item())
    np.testing.assert_allclose(losses, want_losses, rtol=1e-4)
    for name, t in tm.state_dict().items():
        if name.endswith("num_batches_tracked"):
            assert state[f"param:{name}"] == STEPS
        else:
            np.testing.assert_allclose(state[f"param:{name}"], t.numpy(), rtol=1e-4,
                                       atol=1e-5, err_msg=name)


def test_checkpoint_from_two_processes_resumes_on_one(two):
    _, root = two
    comm = D.LocalCommunicator()
    step = dp_step(comm, CKPT_OPT)
    step.load_state(root / "from2")
    assert step.optimizer.step_count == RESUME_AT
    losses = run(step, comm, range(RESUME_AT, STEPS))
    want_losses, want_state = single_process(CKPT_OPT)
    np.testing.assert_allclose(losses, want_losses[RESUME_AT:], rtol=2e-5)
    assert_state_close(state_of(step), want_state)


def test_checkpoint_from_one_process_resumes_on_two(two):
    (r0, _), _ = two
    losses, state = r0["resumed_1to2"]
    want_losses, want_state = single_process(CKPT_OPT)
    np.testing.assert_allclose(losses, want_losses[RESUME_AT:], rtol=2e-5)
    assert_state_close(state, want_state)


def test_faults_reach_every_rank(two):
    (r0, r1), _ = two
    # rank 0 cannot write its checkpoint; rank 1 hears of it instead of waiting forever
    assert r0["bad_save"] is not None and "not_a_folder" in r0["bad_save"]
    assert r1["bad_save"].startswith("DistributedError: saving the training state")
    assert "rank(s) 0" in r1["bad_save"]
    # rank 1's parameters drift: both ranks' checks name rank 1
    for r in (r0, r1):
        assert r["diverged"].startswith("DistributedError: rank(s) 1 hold different")


def test_single_process_step_is_compile_train():
    """World size 1: the two graphs give exactly what the one-graph step gives."""
    for name in ("nesterov", "adam_torch_clip_polyak"):
        comm = D.LocalCommunicator()
        step = dp_step(comm, name, model=mlp(0))
        got = [step(*batch(s)) for s in range(STEPS)]
        want_losses, want_state = single_process(name)
        np.testing.assert_allclose(got, want_losses, rtol=1e-6)
        assert_state_close(state_of(step), want_state, rtol=1e-6, atol=0)


# ---------------------------------------------------------------- failures end the run
def test_a_failing_rank_ends_the_run_naming_it():
    before = set(multiprocessing.active_children())
    with pytest.raises(D.DistributedError) as info:
        D.launch(_fail_at_step_3, P, timeout_s=DEADLINE_S)
    msg = str(info.value)
    assert msg.startswith("rank 1 of 2 failed: ValueError: injected fault in step 3"), msg
    assert set(multiprocessing.active_children()) <= before     # all killed and reaped


def test_a_hanging_rank_is_killed_at_the_deadline():
    before = set(multiprocessing.active_children())
    with pytest.raises(D.DistributedError, match=r"rank\(s\) (0, )?1 of 2 did not finish "
                                                 r"within 6 s; all processes were killed"):
        D.launch(_hang_on_rank_1, P, timeout_s=6)
    assert set(multiprocessing.active_children()) <= before     # all killed and reaped


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="batch array 1 of shape \\(7,\\) does not split into "
                                         "2 equal shards"):
        D.shard([np.zeros((8, 3)), np.zeros(7)], 0, 2)
    step = dp_step(D.LocalCommunicator(), "sgd")
    with pytest.raises(TypeError, match="takes 2 batch input"):
        step(np.zeros((8, 3), np.float32))
    with pytest.raises(TypeError, match="first-order"):
        D.compile_data_parallel(mlp(0), nn.CrossEntropyLoss(), optim.LBFGS(), X1, Y1)


def test_buckets_hold_at_most_the_bucket_size_per_dtype():
    from irgraph import TensorType
    types = [TensorType((10,), "float32"), TensorType((3,), "float64"),
             TensorType((4, 5), "float32"), TensorType((5,), "float32")]
    got = [(b.buffer.dtype.name, b.buffer.nbytes, [(i, sl.start, sl.stop, shape)
                                                   for i, sl, shape in b.items])
           for b in D.plan_buckets(types, [0, 1, 2, 3], 100)]
    # 40 bytes; 40 + 80 > 100 starts a new bucket; 80 + 20 = 100 fits; float64 apart
    assert got == [("float32", 40, [(0, 0, 10, (10,))]),
                   ("float32", 100, [(2, 0, 20, (4, 5)), (3, 20, 25, (5,))]),
                   ("float64", 24, [(1, 0, 3, (3,))])]
    with pytest.raises(ValueError, match="bucket size must be > 0"):
        D.plan_buckets(types, [0, 1, 2, 3], 0)
