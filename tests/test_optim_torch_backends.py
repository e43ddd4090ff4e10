"""torch-convention training steps against torch on every backend (float32, 5 steps, 1e-5),
and a CNN with batch norm in training mode: weights and running statistics."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import irgraph.backends as backends
import irgraph.frontend as fe
from irgraph.frontend import nn, optim
from irgraph.frontend.train import compile_train

from test_optim_torch import CASES, compare

# Triton runs in its interpreter on the CPU (slow): two optimizers there, all of them elsewhere
ON_BACKENDS = [(b, n) for b in backends.available() for n in
               (["nesterov", "adam", "radam"] if b == "triton" else
                ["momentum", "nesterov", "adam", "adagrad", "rmsprop",
                 "rmsprop_centered_momentum", "adam_amsgrad", "adamax_wd", "adadelta_wd",
                 "nadamw", "radam_wd", "rprop_etas"])]


@pytest.mark.parametrize("backend,name", ON_BACKENDS)
def test_trajectory_matches_torch_optim_float32_5_steps(backend, name):
    ours, theirs = CASES[name]
    compare(ours(), theirs, steps=5, dtype=np.float32, backend=backend)


def test_cnn_with_batch_norm_training_steps_match_torch():
    """Conv2d + BatchNorm2d (training mode) + ReLU + Linear, SGD with momentum (torch form):
    after 3 steps the weights AND the running statistics equal torch's."""
    fe.manual_seed(0)
    ours = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(27, 2))
    theirs = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3),
                                 torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(27, 2))
    state = {k: torch.from_numpy(v.copy()) for k, v in ours.state_dict().items()}
    theirs.load_state_dict(state, strict=False)
    opt = optim.SGD(lr=0.1, momentum=0.9, convention="torch")
    step = compile_train(ours, nn.CrossEntropyLoss(), opt, fe.TensorSpec((4, 2, 5, 5)),
                         fe.TensorSpec((4,), "int64"))
    topt = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9)
    r = np.random.default_rng(3)
    for k in range(3):
        x = r.standard_normal((4, 2, 5, 5)).astype(np.float32)
        y = r.integers(0, 2, 4)
        loss = step(x, y)
        topt.zero_grad()
        tloss = torch.nn.functional.cross_entropy(theirs(torch.from_numpy(x)),
                                                  torch.from_numpy(y))
        tloss.backward()
        topt.step()
        assert loss == pytest.approx(tloss.item(), rel=1e-5)
    for name, value in theirs.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue
        np.testing.assert_allclose(ours.state_dict()[name], value.numpy(), rtol=1e-4,
                                   atol=1e-6, err_msg=name)


@pytest.mark.parametrize("name", ["nesterov", "adam"])
def test_float64_steps_keep_their_hyperparameters_in_float64(name):
    """Three float64 training steps on every backend equal the reference's to 1e-9: the
    learning rate, momentum and betas are not rounded to float32 on the way (that left
    Triton's weights 5e-8 (Nesterov) and 2e-5 (Adam) away, relatively)."""
    from test_optim_torch import data, make_models
    results = {}
    for backend in backends.available():
        ours, _ = make_models(np.float64)
        opt = CASES[name][0]()
        step = compile_train(ours, nn.CrossEntropyLoss(), opt,
                             fe.TensorSpec((x_shape := data(1, np.float64)[0][0].shape),
                                           "float64"),
                             fe.TensorSpec(x_shape[:1], "int64"), backend=backend)
        for x, y in data(3, np.float64):
            step(x, y)
        results[backend] = [p.data.copy() for p in ours.parameters()]
    for backend, params in results.items():
        for k, (p, q) in enumerate(zip(params, results["reference"])):
            np.testing.assert_allclose(p, q, rtol=1e-9, atol=1e-13,
                                       err_msg=f"{backend}: parameter {k}")
