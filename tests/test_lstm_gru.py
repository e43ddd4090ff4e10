"""nn.LSTM, nn.GRU and the cells against torch: values, input / state / parameter gradients
(BPTT through the scan, rolled and unrolled), on every backend; long sequences; BPTT's
truncated and recompute forms; Adam's trajectory; the gate layout (one matmul per step).

Layers are checked in groups ("zoos": an LSTM, a GRU and the three cells in one graph) so
that each backend compiles few graphs; configurations are drawn from seeded generators."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import backends
import frontend as fe
from frontend import init, nn, optim
from frontend import functional as F
from passes.unroll import bptt

pack = torch.nn.utils.rnn.pack_padded_sequence
unpack = torch.nn.utils.rnn.pad_packed_sequence


def random_config(seed: int) -> dict:
    r = np.random.default_rng(seed)
    return dict(
        seed=seed, input=int(r.integers(2, 5)), hidden=int(r.integers(3, 6)),
        steps=int(r.integers(3, 7)), batch=int(r.integers(2, 4)),
        batch_first=bool(r.integers(2)), hx=bool(r.integers(2)), lengths=bool(r.integers(2)),
        lstm=dict(num_layers=int(r.integers(1, 3)), bidirectional=bool(r.integers(2)),
                  bias=bool(r.random() > 0.5), proj_size=int(r.integers(0, 3))),
        gru=dict(num_layers=int(r.integers(1, 3)), bidirectional=bool(r.integers(2)),
                 bias=bool(r.random() > 0.3)),
        cell_bias=bool(r.random() > 0.3))


REFERENCE_SEEDS = range(8)


def test_the_seeded_configurations_cover_every_option():
    """The reference configurations reach every option both ways (else the seeds change)."""
    cfgs = [random_config(s) for s in REFERENCE_SEEDS]
    flags = {k: {c[k] for c in cfgs} for k in ("batch_first", "hx", "lengths", "cell_bias")}
    for layer, keys in (("lstm", ("bidirectional", "bias")), ("gru", ("bidirectional", "bias"))):
        flags.update({f"{layer}.{k}": {c[layer][k] for c in cfgs} for k in keys})
        flags[f"{layer}.num_layers"] = {c[layer]["num_layers"] for c in cfgs}
    flags["lstm.proj"] = {c["lstm"]["proj_size"] > 0 for c in cfgs}
    assert all(len(v) == 2 for v in flags.values()), flags


class Zoo(nn.Module):
    """An LSTM, a GRU, an LSTMCell, a GRUCell and an RNNCell; ``forward`` returns a scalar
    mixing every output and final state (so each gradient is checked) and the outputs."""

    def __init__(self, cfg):
        super().__init__()
        fe.manual_seed(cfg["seed"])
        i, h, bf = cfg["input"], cfg["hidden"], cfg["batch_first"]
        self.lstm = nn.LSTM(i, h, batch_first=bf, **cfg["lstm"])
        self.gru = nn.GRU(i, h, batch_first=bf, **cfg["gru"])
        self.lstm_cell = nn.LSTMCell(i, h, bias=cfg["cell_bias"])
        self.gru_cell = nn.GRUCell(i, h, bias=cfg["cell_bias"])
        self.rnn_cell = nn.RNNCell(i, h, bias=cfg["cell_bias"], nonlinearity="relu")

    def forward(self, x, xc, h0, c0, g0, hc, cc, lengths=None):
        lstm_hx = None if h0 is None else (h0, c0)
        out_l, (h_l, c_l) = self.lstm(x, lstm_hx, lengths=lengths)
        out_g, h_g = self.gru(x, g0, lengths=lengths)
        hc1, cc1 = self.lstm_cell(xc, (hc, cc))
        gc1 = self.gru_cell(xc, hc)
        rc1 = self.rnn_cell(xc)
        outs = (out_l, h_l, c_l, out_g, h_g, hc1, cc1, gc1, rc1)
        return mix(outs), outs


def mix(outs):
    """sum_k (k + 1) / 3 * sum(o_k^2) + sum(o_k) / (k + 2): every output counts, unequally."""
    total = 0.0
    for k, o in enumerate(outs):
        total = total + ((o * o).sum() * ((k + 1) / 3) + o.sum() / (k + 2))
    return total


def torch_zoo(zoo: Zoo, dtype) -> dict:
    """torch twins of the zoo's modules with copied weights."""
    cfg = zoo.cfg
    i, h, bf = cfg["input"], cfg["hidden"], cfg["batch_first"]
    twins = dict(lstm=torch.nn.LSTM(i, h, batch_first=bf, **cfg["lstm"]),
                 gru=torch.nn.GRU(i, h, batch_first=bf, **cfg["gru"]),
                 lstm_cell=torch.nn.LSTMCell(i, h, bias=cfg["cell_bias"]),
                 gru_cell=torch.nn.GRUCell(i, h, bias=cfg["cell_bias"]),
                 rnn_cell=torch.nn.RNNCell(i, h, bias=cfg["cell_bias"], nonlinearity="relu"))
    for name, t in twins.items():
        t.to(dtype)
        ours = dict(getattr(zoo, name).named_parameters())
        assert [n for n, _ in t.named_parameters()] == list(ours), name    # names and order
        with torch.no_grad():
            for n, p in t.named_parameters():
                assert tuple(p.shape) == ours[n].data.shape, (name, n)
                p.copy_(torch.from_numpy(ours[n].data))
    return twins


def torch_forward(twins, cfg, x, xc, h0, c0, g0, hc, cc, lengths):
    def run(m, hx):
        if lengths is None:
            return m(x, hx)
        out, hn = m(pack(x, torch.from_numpy(lengths), batch_first=cfg["batch_first"],
                         enforce_sorted=False), hx)
        return unpack(out, batch_first=cfg["batch_first"], total_length=cfg["steps"])[0], hn
    out_l, (h_l, c_l) = run(twins["lstm"], None if h0 is None else (h0, c0))
    out_g, h_g = run(twins["gru"], g0)
    hc1, cc1 = twins["lstm_cell"](xc, (hc, cc))
    outs = (out_l, h_l, c_l, out_g, h_g, hc1, cc1, twins["gru_cell"](xc, hc),
            twins["rnn_cell"](xc))
    return mix(outs), outs


def zoo_inputs(cfg, dtype):
    r = np.random.default_rng(100 + cfg["seed"])
    T, N, i, h = cfg["steps"], cfg["batch"], cfg["input"], cfg["hidden"]
    x = r.standard_normal((N, T, i) if cfg["batch_first"] else (T, N, i)).astype(dtype)
    lengths = None
    if cfg["lengths"]:
        lengths = r.integers(1, T + 1, N).astype(np.int64)
        lengths[0] = T
    nl = cfg["lstm"]["num_layers"] * (2 if cfg["lstm"]["bidirectional"] else 1)
    ng = cfg["gru"]["num_layers"] * (2 if cfg["gru"]["bidirectional"] else 1)
    proj = cfg["lstm"]["proj_size"] or h
    states = [r.standard_normal(s).astype(dtype) for s in
              ((nl, N, proj), (nl, N, h), (ng, N, h))] if cfg["hx"] else [None] * 3
    cells = [r.standard_normal(s).astype(dtype) for s in ((N, i), (N, h), (N, h))]
    return x, cells[0], states, cells[1:], lengths


class Holder(nn.Module):
    """Calls the zoo with the named inputs present (parameters named ``m.<path>``)."""

    def __init__(self, zoo, names):
        super().__init__()
        self.m, self.names = zoo, names

    def forward(self, *args):
        a = dict(zip(self.names + ["lengths"], args))
        return self.m(a["x"], a["xc"], a.get("h0"), a.get("c0"), a.get("g0"), a["hc"],
                      a["cc"], a.get("lengths"))


def check_zoo(cfg, backend, dtype, mode="rolled", rtol=1e-9, atol=1e-11):
    zoo = Zoo(cfg)
    zoo.cfg = cfg
    for p in zoo.parameters():
        p.data = p.data.astype(dtype)
    x, xc, states, (hc, cc), lengths = zoo_inputs(cfg, dtype)
    given = [("x", x), ("xc", xc)] + [(n, s) for n, s in zip(("h0", "c0", "g0"), states)
                                      if s is not None] + [("hc", hc), ("cc", cc)]
    names = [n for n, _ in given]

    arrays = [a for _, a in given] + ([lengths] if lengths is not None else [])
    g = fe.trace(Holder(zoo, names), *[fe.TensorSpec(a.shape, a.dtype.name) for a in arrays],
                 name="zoo")
    wrt = [v.name for v in g.inputs[:len(given)]] + [p.name for p in g.params]
    exe = backends.compile(bptt(g, wrt, mode=mode), backend)
    params = dict(Holder(zoo, names).named_parameters())
    res = exe(*arrays, *[params[p.name].data for p in g.params])
    n_out = len(g.outputs)
    value, outs, grads = res[0], res[1:n_out], dict(zip(wrt, res[n_out:]))

    twins = torch_zoo(zoo, torch.float64 if dtype == np.float64 else torch.float32)
    tin = {n: torch.tensor(a, requires_grad=True) for n, a in given}
    tval, touts = torch_forward(twins, cfg, tin["x"], tin["xc"], tin.get("h0"), tin.get("c0"),
                                tin.get("g0"), tin["hc"], tin["cc"], lengths)
    tval.backward()
    np.testing.assert_allclose(value, tval.item(), rtol=rtol)
    for k, (o, t) in enumerate(zip(outs, touts)):
        np.testing.assert_allclose(o, t.detach().numpy(), rtol=rtol, atol=atol,
                                   err_msg=f"output {k}")
    for (n, _), v in zip(given, g.inputs):
        np.testing.assert_allclose(grads[v.name], tin[n].grad.numpy(), rtol=rtol, atol=atol,
                                   err_msg=f"d/d{n}")
    for name, t in twins.items():
        for pn, p in t.named_parameters():
            np.testing.assert_allclose(grads[f"m.{name}.{pn}"], p.grad.numpy(), rtol=rtol,
                                       atol=atol, err_msg=f"{name}.{pn}")


@pytest.mark.parametrize("seed", REFERENCE_SEEDS)
def test_layers_match_torch_float64_reference_rolled_and_unrolled(seed):
    cfg = random_config(seed)
    check_zoo(cfg, "reference", np.float64, "rolled")
    check_zoo(cfg, "reference", np.float64, "unrolled")
