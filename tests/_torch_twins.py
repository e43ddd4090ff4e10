"""Shared by the layer tests against torch: run one module on a backend (values, input and
parameter gradients of a scalar mix of every output, through one compiled graph) and its
torch twin with the same weights, and compare."""
from __future__ import annotations

import numpy as np
import torch

import irgraph.backends as backends
import irgraph.frontend as fe
from irgraph.passes.autodiff import value_and_grad


def mix(outs):
    """sum_k (k + 1) / 3 * sum(o_k^2) + sum(o_k sin-like weights): every output counts."""
    total = 0.0
    for k, o in enumerate(outs):
        total = total + ((o * o).sum() * ((k + 1) / 3) + o.sum() / (k + 2))
    return total


class Mixed(fe.nn.Module):
    """The module's outputs (a tensor or a tuple) and their mix, as one traced function."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, *xs):
        outs = self.m(*xs)
        outs = outs if isinstance(outs, tuple) else (outs,)
        return (mix(outs),) + outs


def copy_weights(ours: fe.nn.Module, twin: torch.nn.Module) -> None:
    """torch's parameters take ours (same names in the same order, same shapes)."""
    mine = dict(ours.named_parameters())
    theirs = list(twin.named_parameters())
    assert [n for n, _ in theirs] == list(mine), ([n for n, _ in theirs], list(mine))
    with torch.no_grad():
        for n, p in theirs:
            assert tuple(p.shape) == mine[n].data.shape, n
            p.copy_(torch.from_numpy(np.asarray(mine[n].data)))


def check(ours, twin, inputs, backend: str, dtype, rtol: float, atol: float,
          grad_inputs: int | None = None):
    """Compare outputs, d(mix)/d(float inputs) and d(mix)/d(parameters) with torch's."""
    if dtype == np.float64:
        ours.double()
        twin.double()
    else:
        ours.float()
        twin.float()
    copy_weights(ours, twin)
    inputs = [a.astype(dtype) if a.dtype.kind == "f" else a for a in inputs]
    model = Mixed(ours)
    g = fe.trace(model, *[fe.TensorSpec(a.shape, a.dtype.name) for a in inputs], name="twin")
    n_grad = len(inputs) if grad_inputs is None else grad_inputs
    float_in = [v.name for v, a in zip(g.inputs[:n_grad], inputs) if a.dtype.kind == "f"]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    wrt = float_in + [p.name for p in g.params if p.name in trainable]
    exe = backends.compile(value_and_grad(g, wrt), backend)
    params = dict(model.named_parameters(buffers=True))
    res = exe(*inputs, *[params[p.name].data for p in g.params])
    n_out = len(g.outputs)
    value, outs, grads = res[0], res[1:n_out], dict(zip(wrt, res[n_out:]))

    tin = [torch.tensor(a, requires_grad=a.dtype.kind == "f") for a in inputs]
    touts = twin(*tin)
    touts = touts if isinstance(touts, tuple) else (touts,)
    touts = tuple(t for t in touts if t is not None)
    tval = mix(touts)
    tval.backward()
    np.testing.assert_allclose(value, tval.item(), rtol=rtol)
    assert len(outs) == len(touts)
    for k, (o, t) in enumerate(zip(outs, touts)):
        np.testing.assert_allclose(o, t.detach().numpy(), rtol=rtol, atol=atol,
                                   err_msg=f"output {k}")
    for v, t in zip(g.inputs[:n_grad], tin):
        if v.name in grads:
            want = np.zeros(t.shape) if t.grad is None else t.grad.numpy()   # unused input
            np.testing.assert_allclose(grads[v.name], want, rtol=rtol, atol=atol,
                                       err_msg=f"d/d{v.name}")
    for n, p in twin.named_parameters():
        np.testing.assert_allclose(grads[f"m.{n}"], p.grad.numpy(), rtol=rtol, atol=atol,
                                   err_msg=f"d/d{n}")
    return exe


def check_function(ours, theirs, inputs, wrt, backend: str, rtol: float = 1e-9,
                   grad_rtol: float = 1e-8, atol: float = 1e-12):
    """``ours`` compiled on ``backend`` against ``theirs`` (torch's) on ``inputs`` (float
    arrays taken as float64): the values (and dtypes of integer and bool results), and the
    gradients of ``sum_k sum(f_k(x) * c_k)`` over its outputs (``c_k`` fixed random arrays) by
    the inputs at positions ``wrt``."""
    inputs = [np.asarray(a, np.float64) if np.asarray(a).dtype.kind == "f" else np.asarray(a)
              for a in inputs]
    specs = [fe.TensorSpec(a.shape, a.dtype.name) for a in inputs]
    out = fe.compile(ours, *specs, backend=backend)(*inputs)
    ts = [torch.tensor(a, requires_grad=i in wrt) for i, a in enumerate(inputs)]
    want = theirs(*ts)
    many = isinstance(want, (tuple, list))
    outs, wants = (list(out), list(want)) if many else ([out], [want])
    assert len(outs) == len(wants)
    for o, w in zip(outs, wants):
        w = w.detach().numpy()
        assert np.shape(o) == w.shape, (np.shape(o), w.shape)
        if w.dtype.kind in "biu":
            assert np.asarray(o).dtype == w.dtype, (np.asarray(o).dtype, w.dtype)
            np.testing.assert_array_equal(o, w)
        else:
            np.testing.assert_allclose(o, w, rtol=rtol, atol=atol)
    if not wrt:
        return
    rng = np.random.default_rng(99)
    cs = [rng.standard_normal(np.shape(o)) for o in outs]

    def objective(*xs):
        ys = ours(*xs)
        ys = ys if many else (ys,)
        total = 0.0
        for y, c in zip(ys, cs):
            total = total + (y * c).sum()
        return total
    grads = fe.grad(objective, *specs, wrt=list(wrt), backend=backend)(*inputs)
    total = 0.0
    for w, c in zip(wants, cs):
        total = total + (w * torch.tensor(c)).sum()
    total.backward()
    for g, i in zip(grads, wrt):
        np.testing.assert_allclose(g, ts[i].grad.numpy(), rtol=grad_rtol, atol=atol * 10,
                                   err_msg=f"gradient of input {i}")
