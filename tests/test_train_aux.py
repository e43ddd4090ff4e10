"""compile_train(has_aux=True): the loss function returns (loss, aux) and the step returns
both, from the one compiled graph: aux equals a separate forward pass at the weights the
step started from, the loss and the updates are those of the step without aux, buffers are
still updated, and an LSTM's final state carried between truncated-BPTT chunks gives
torch's training with the state detached between chunks."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

import irgraph.frontend as fe
from irgraph.frontend import F, nn, optim
from irgraph.ir import all_nodes


def mlp(seed: int):
    fe.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4))


def loss_and_aux(logits, y):
    loss = F.cross_entropy(logits, y)
    correct = F.sum(F.cast(F.eq(F.argmax(logits, -1), y), "int64"))
    return loss, {"logits": logits, "stats": (correct, F.softmax(logits, -1))}


SPECS = (fe.TensorSpec((6, 3)), fe.TensorSpec((6,), "int64"))


@pytest.mark.parametrize("backend", ["reference", "llvm"])
def test_aux_is_the_forward_of_the_step_and_the_step_is_unchanged(backend):
    r = np.random.default_rng(1)
    x, y = r.standard_normal((6, 3)).astype(np.float32), r.integers(0, 4, 6)
    with_aux, plain = mlp(0), mlp(0)
    step_aux = fe.compile_train(with_aux, loss_and_aux, optim.Adam(lr=0.1), *SPECS,
                                backend=backend, has_aux=True)
    step = fe.compile_train(plain, F.cross_entropy, optim.Adam(lr=0.1), *SPECS)
    # no second forward pass: the model's matmuls and tanh once, as without aux (the aux's
    # own argmax, softmax, ... are the only extra nodes)
    # (counted inside fused regions too: a backend's passes may group nodes)
    ops, plain_ops = (Counter(n.op for n in all_nodes(s.graph)) for s in (step_aux, step))
    assert all(ops[k] == plain_ops[k] for k in ("matmul", "tanh", "adam_update"))
    assert not plain_ops - ops
    assert len(step_aux.graph.outputs) == len(step.graph.outputs) + 3
    forward = fe.compile(with_aux, SPECS[0])
    for _ in range(3):
        before = forward(x)                          # the weights the step starts from
        loss, aux = step_aux(x, y)
        np.testing.assert_allclose(loss, step(x, y), rtol=1e-5)
        np.testing.assert_allclose(aux["logits"], before, rtol=1e-5, atol=1e-6)
        e = np.exp(before - before.max(-1, keepdims=True))
        np.testing.assert_allclose(aux["stats"][1], e / e.sum(-1, keepdims=True), rtol=1e-5)
        assert aux["stats"][0].dtype == np.int64
        assert aux["stats"][0] == (aux["logits"].argmax(-1) == y).sum()
        for (n, a), (_, b) in zip(with_aux.named_parameters(), plain.named_parameters()):
            np.testing.assert_allclose(a.data, b.data, rtol=1e-5, atol=1e-6, err_msg=n)


def test_aux_beside_buffer_updates_and_a_single_tensor_aux():
    """Batch norm's running statistics (donated outputs) are still written; aux may be one
    tensor (the batch mean the statistics average in, worked out from the input)."""
    fe.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))

    class WithAux(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, x):
            h = self.m[0](x)
            return (self.m[1](h) ** 2).mean(), h.mean(0)
    x = np.random.default_rng(3).standard_normal((8, 3)).astype(np.float32)
    w, b = model[0].weight.data.copy(), model[0].bias.data.copy()
    step = fe.compile_train(WithAux(), None, optim.SGD(lr=0.0), fe.TensorSpec((8, 3)),
                            has_aux=True)
    loss, batch_mean = step(x)
    want = (x @ w.T + b).mean(0)
    np.testing.assert_allclose(batch_mean, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model[1].running_mean.data, 0.1 * want, rtol=1e-5, atol=1e-6)
    assert isinstance(loss, float)


def test_lstm_state_carried_between_truncated_chunks_matches_torch():
    """Truncated BPTT by chunks: each step returns the final (h, c) as aux and the next
    chunk starts from it (no gradient crosses the boundary), as torch's training with
    ``state.detach()`` between chunks (SGD, float64)."""
    fe.manual_seed(4)
    lstm, head = nn.LSTM(2, 3), nn.Linear(3, 1)

    class Chunk(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm, self.head = lstm, head

        def forward(self, x, y, h, c):
            out, state = self.lstm(x, (h, c))
            return ((self.head(out) - y) ** 2).mean(), state
    model = Chunk()
    for p in model.parameters():
        p.data = p.data.astype(np.float64)
    tl, th = torch.nn.LSTM(2, 3).double(), torch.nn.Linear(3, 1).double()
    with torch.no_grad():
        for pre, t in (("lstm.", tl), ("head.", th)):
            for n, p in t.named_parameters():
                p.copy_(torch.from_numpy(dict(model.named_parameters())[pre + n].data))
    specs = [fe.TensorSpec(s, "float64") for s in ((4, 2, 2), (4, 2, 1), (1, 2, 3), (1, 2, 3))]
    step = fe.compile_train(model, None, optim.SGD(lr=0.1), *specs, has_aux=True)
    topt = torch.optim.SGD(list(tl.parameters()) + list(th.parameters()), lr=0.1)
    r = np.random.default_rng(5)
    x, y = r.standard_normal((12, 2, 2)), r.standard_normal((12, 2, 1))
    h, c = np.zeros((1, 2, 3)), np.zeros((1, 2, 3))
    tstate = (torch.zeros(1, 2, 3, dtype=torch.float64),) * 2
    for k in range(0, 12, 4):
        loss, (h, c) = step(x[k:k + 4], y[k:k + 4], h, c)
        topt.zero_grad()
        out, tstate = tl(torch.from_numpy(x[k:k + 4]), tuple(s.detach() for s in tstate))
        tloss = ((th(out) - torch.from_numpy(y[k:k + 4])) ** 2).mean()
        tloss.backward()
        topt.step()
        np.testing.assert_allclose(loss, tloss.item(), rtol=1e-10)
        np.testing.assert_allclose(h, tstate[0].detach().numpy(), rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(c, tstate[1].detach().numpy(), rtol=1e-10, atol=1e-13)
    for pre, t in (("lstm.", tl), ("head.", th)):
        for n, p in t.named_parameters():
            np.testing.assert_allclose(dict(model.named_parameters())[pre + n].data,
                                       p.detach().numpy(), rtol=1e-10, atol=1e-13)


def test_has_aux_mistakes_are_named():
    with pytest.raises(TypeError, match=r"has_aux=True the function must return "
                                        r"\(scalar loss, aux\)"):
        fe.compile_train(mlp(6), F.cross_entropy, optim.SGD(lr=0.1), *SPECS, has_aux=True)
    with pytest.raises(ValueError, match="needs has_aux=True"):
        fe.compile_train(mlp(6), loss_and_aux, optim.SGD(lr=0.1), *SPECS)
    with pytest.raises(NotImplementedError, match="has_aux"):
        fe.compile_train(mlp(6), loss_and_aux, optim.LBFGS(), *SPECS, has_aux=True)
