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

import irgraph.backends as backends
import irgraph.frontend as fe
from irgraph.frontend import init, nn, optim
from irgraph.passes.unroll import bptt

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported")

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
def test_layers_match_torch_float64_reference(seed):
    check_zoo(random_config(seed), "reference", np.float64, "rolled" if seed % 2 else
              "unrolled")


def small(seed: int, **kw) -> dict:
    """A drawn configuration with fewer steps and layers where compiling dominates."""
    cfg = random_config(seed)
    cfg.update(steps=3, **kw)
    return cfg


def test_layers_match_torch_float64_llvm():
    """A 2-layer bidirectional LSTM with a projection over padded lengths and given states,
    a GRU, the cells, compiled by LLVM (rolled BPTT)."""
    check_zoo(small(9, gru=dict(num_layers=1, bidirectional=False, bias=True)), "llvm",
              np.float64, "rolled")


@pytest.mark.parametrize("backend", ["reference", "llvm", "triton"])
def test_layers_match_torch_float32_every_backend(backend):
    cfg = small(6, batch=2, lstm=dict(num_layers=1, bidirectional=False, bias=True,
                                      proj_size=2),
                gru=dict(num_layers=1, bidirectional=False, bias=False))
    check_zoo(cfg, backend, np.float32, "rolled", rtol=2e-5, atol=2e-6)


# ------------------------------------------------------------------ long sequences
class Pair(nn.Module):
    def __init__(self, lstm, gru):
        super().__init__()
        self.lstm, self.gru = lstm, gru

    def forward(self, x):
        out_l, (h, c) = self.lstm(x)
        out_g, hg = self.gru(x)
        return mix((out_l, c, out_g, hg))


def test_bptt_over_120_steps_rolled_on_llvm_matches_torch():
    """Rolled BPTT (one reverse scan over the saved states) through 120 steps of an LSTM
    and a GRU: every parameter gradient equals torch autograd's."""
    fe.manual_seed(30)
    model = Pair(nn.LSTM(2, 3), nn.GRU(2, 3))
    for p in model.parameters():
        p.data = p.data.astype(np.float64)
    x = np.random.default_rng(31).standard_normal((120, 2, 2))
    g = fe.trace(model, fe.TensorSpec(x.shape, "float64"))
    vg = bptt(g, mode="auto")                       # 120 > threshold: stays rolled
    assert sum(n.op == "scan" for n in vg.nodes) >= 4     # 2 forward + 2 backward scans
    params = dict(model.named_parameters())
    res = backends.compile(vg, "llvm")(x, *[params[p.name].data for p in g.params])
    grads = dict(zip([p.name for p in g.params], res[1:]))
    tl, tg = torch.nn.LSTM(2, 3).double(), torch.nn.GRU(2, 3).double()
    with torch.no_grad():
        for pre, t in (("lstm.", tl), ("gru.", tg)):
            for n, p in t.named_parameters():
                p.copy_(torch.from_numpy(params[pre + n].data))
    tx = torch.from_numpy(x)
    out_l, (_, c) = tl(tx)
    out_g, hg = tg(tx)
    loss = mix((out_l, c, out_g, hg))
    loss.backward()
    np.testing.assert_allclose(res[0], loss.item(), rtol=1e-10)
    for pre, t in (("lstm.", tl), ("gru.", tg)):
        for n, p in t.named_parameters():
            np.testing.assert_allclose(grads[pre + n], p.grad.numpy(), rtol=1e-8, atol=1e-10,
                                       err_msg=pre + n)


# ------------------------------------------------------------------ BPTT's forms
def test_truncated_and_recompute_bptt_of_an_lstm():
    """Recompute (checkpoints every 4 states) gives the full gradients; truncation to k = 4
    gives torch's gradients with the state (h, c) detached every 4 steps."""
    fe.manual_seed(32)
    lstm = nn.LSTM(2, 3)
    for p in lstm.parameters():
        p.data = p.data.astype(np.float64)
    x = np.random.default_rng(33).standard_normal((12, 2, 2))
    model = Pair.__new__(Pair)
    nn.Module.__init__(model)
    model.lstm = lstm
    model.forward = lambda x: mix(model.lstm(x)[:1] + model.lstm(x)[1][1:])
    g = fe.trace(model, fe.TensorSpec(x.shape, "float64"), name="f")
    args = [x] + [dict(model.named_parameters())[p.name].data for p in g.params]
    names = [p.name.removeprefix("lstm.") for p in g.params]

    def grads(**opts):
        res = backends.compile(bptt(g, mode="rolled", **opts), "reference")(*args)
        return dict(zip(names, res[1:]))

    def torch_grads(k):
        t = torch.nn.LSTM(2, 3).double()
        with torch.no_grad():
            for n, p in t.named_parameters():
                p.copy_(torch.from_numpy(getattr(lstm, n).data))
        state, outs = None, []
        for s in range(0, 12, k):
            state = None if state is None else tuple(v.detach() for v in state)
            o, state = t(torch.from_numpy(x[s:s + k]), state)
            outs.append(o)
        mix((torch.cat(outs), state[1])).backward()
        return {n: p.grad.numpy() for n, p in t.named_parameters()}

    full, recompute, truncated = grads(), grads(checkpoint=4), grads(truncate_k=4)
    want_full, want_truncated = torch_grads(12), torch_grads(4)
    for n in names:
        np.testing.assert_allclose(full[n], want_full[n], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(recompute[n], want_full[n], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(truncated[n], want_truncated[n], rtol=1e-9, atol=1e-12)
    assert not np.allclose(truncated["weight_hh_l0"], full["weight_hh_l0"])


# ------------------------------------------------------------------ training
@pytest.mark.parametrize("form", ["rolled", "unrolled"])
def test_training_an_lstm_with_adam_follows_torchs_trajectory(form):
    """A sequence classifier (LSTM, linear head on h_n) trained 5 Adam steps (torch's
    formula), BPTT rolled or unrolled: the losses and final weights are torch's."""
    fe.manual_seed(34)
    lstm, head = nn.LSTM(3, 4, batch_first=True), nn.Linear(4, 2)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm, self.head = lstm, head

        def forward(self, x):
            return self.head(self.lstm(x)[1][0][0])
    net = Net()
    for p in net.parameters():
        p.data = p.data.astype(np.float64)
    tnet = torch.nn.ModuleDict(dict(lstm=torch.nn.LSTM(3, 4, batch_first=True),
                                    head=torch.nn.Linear(4, 2))).double()
    with torch.no_grad():
        for n, p in tnet.named_parameters():
            p.copy_(torch.from_numpy(dict(net.named_parameters())[n].data))
    r = np.random.default_rng(35)
    x, y = r.standard_normal((4, 6, 3)), r.integers(0, 2, 4)
    step = fe.compile_train(net, nn.CrossEntropyLoss(), optim.Adam(lr=0.05, convention="torch"),
                            fe.TensorSpec(x.shape, "float64"), fe.TensorSpec((4,), "int64"),
                            bptt=form)
    assert any(n.op == "scan" for n in step.graph.nodes) == (form == "rolled")
    topt = torch.optim.Adam(tnet.parameters(), lr=0.05)
    ours, theirs = [], []
    for _ in range(5):
        ours.append(step(x, y))
        topt.zero_grad()
        loss = torch.nn.functional.cross_entropy(
            tnet["head"](tnet["lstm"](torch.from_numpy(x))[1][0][0]), torch.from_numpy(y))
        loss.backward()
        topt.step()
        theirs.append(loss.item())
    np.testing.assert_allclose(ours, theirs, rtol=1e-9)
    assert theirs[-1] < theirs[0]
    for n, p in tnet.named_parameters():
        np.testing.assert_allclose(dict(net.named_parameters())[n].data, p.detach().numpy(),
                                   rtol=1e-8, atol=1e-10, err_msg=n)


# ------------------------------------------------------------------ layout and init
def count_matmuls(g):
    """(top-level matmuls, [matmuls of each scan body])."""
    top = sum(n.op == "matmul" for n in g.nodes)
    bodies = [sum(m.op == "matmul" for m in n.attrs["body"].nodes) for n in g.nodes
              if n.op == "scan"]
    return top, bodies


@pytest.mark.parametrize("kind,kw,gates,body", [
    ("LSTM", dict(num_layers=2), 4, 1), ("LSTM", dict(proj_size=3), 4, 2),
    ("GRU", dict(bidirectional=True), 3, 1)])
def test_gates_are_one_matmul_per_step_and_the_input_side_one_per_layer(kind, kw, gates, body):
    """A step computes all its gates with ONE h W_hh^T (G*H wide), sliced after (plus W_hr
    with a projection); x W_ih^T is one matmul over all steps per layer and direction."""
    m = getattr(nn, kind)(5, 8, **kw)
    g = fe.trace(lambda x: m(x)[0], fe.TensorSpec((7, 2, 5)))
    top, bodies = count_matmuls(g)
    assert top == len(bodies) == m.num_layers * m.num_directions
    assert bodies == [body] * top
    scan = next(n for n in g.nodes if n.op == "scan")
    mm = next(n for n in scan.attrs["body"].nodes if n.op == "matmul")
    assert mm.outputs[0].type.shape == (2, gates * 8)


def test_init_is_torchs_and_forget_bias_follows_section_8_4():
    """U(-1/sqrt(H), 1/sqrt(H)) for every parameter (torch's rule); section 8.4's advice
    (Jozefowicz et al.) of a forget-gate bias of 1: b_ih's f block (rows H..2H, torch's gate
    order i, f, g, o) is 1 and b_hh's 0. With every weight zero, c_1 = sigmoid(1) c_0 +
    sigmoid(0) tanh(0) = sigmoid(1) c_0 exactly then."""
    fe.manual_seed(36)
    m = nn.LSTM(3, 50, num_layers=2, bidirectional=True, proj_size=7)
    w = np.concatenate([p.data.ravel() for p in m.parameters()])
    k = 1 / math.sqrt(50)
    assert np.abs(w).max() <= k
    np.testing.assert_allclose(w.std(), k / math.sqrt(3), rtol=0.05)
    cell = nn.LSTMCell(2, 3, forget_bias=1.0)
    for name in ("bias_ih", "bias_hh"):
        assert m.gate_slice("f") == slice(50, 100)
        np.testing.assert_array_equal(getattr(cell, name).data[3:6], 1.0 if name == "bias_ih"
                                      else 0.0)
    init.lstm_forget_bias_(m)
    assert (m.bias_ih_l1_reverse.data[50:100] == 1).all() and not m.bias_hh_l0.data[50:100].any()
    for p in cell.parameters():
        p.data[...] = 0.0
    init.lstm_forget_bias_(cell, 1.0)
    c0 = np.array([[0.5, -2.0, 3.0]], np.float32)
    h1, c1 = fe.compile(lambda x, h, c: cell(x, (h, c)), fe.TensorSpec((1, 2)),
                        fe.TensorSpec((1, 3)), fe.TensorSpec((1, 3)))(
        np.ones((1, 2), np.float32), np.ones((1, 3), np.float32), c0)
    np.testing.assert_allclose(c1, c0 / (1 + math.exp(-1)), rtol=1e-6)
    np.testing.assert_allclose(h1, 0.5 * np.tanh(c1), rtol=1e-6)
    with pytest.raises(ValueError, match="no LSTM"):
        init.lstm_forget_bias_(nn.GRU(2, 3))


def test_unbatched_inputs_and_cells_match_torch():
    fe.manual_seed(37)
    lstm, cell = nn.LSTM(3, 4, num_layers=2, proj_size=2), nn.GRUCell(3, 4)
    x = np.random.default_rng(38).standard_normal((5, 3)).astype(np.float32)
    xc = x[0]
    (out, (h, c)), hc = fe.compile(lambda x, xc: (lstm(x), cell(xc)), fe.TensorSpec((5, 3)),
                                 fe.TensorSpec((3,)))(x, xc)
    assert out.shape == (5, 2) and h.shape == (2, 2) and c.shape == (2, 4) and hc.shape == (4,)
    t, tc = torch.nn.LSTM(3, 4, num_layers=2, proj_size=2), torch.nn.GRUCell(3, 4)
    with torch.no_grad():
        for mod, tm in ((lstm, t), (cell, tc)):
            for n, p in tm.named_parameters():
                p.copy_(torch.from_numpy(getattr(mod, n).data))
    to, (th, tcs) = t(torch.from_numpy(x))
    for a, b in ((out, to), (h, th), (c, tcs), (hc, tc(torch.from_numpy(xc)))):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_dropout_acts_between_layers_in_training_mode_only():
    """torch's placement: on every layer's output but the last. With p = 1 the second layer
    reads zeros, deterministically: torch in training mode gives the same; layer 0's final
    state is untouched; p = 0.5 changes the output; eval mode is the identity."""
    fe.manual_seed(39)
    x = np.random.default_rng(40).standard_normal((5, 2, 3)).astype(np.float32)
    lstm = nn.LSTM(3, 4, num_layers=2, dropout=1.0)
    t = torch.nn.LSTM(3, 4, num_layers=2, dropout=1.0)
    with torch.no_grad():
        for n, p in t.named_parameters():
            p.copy_(torch.from_numpy(getattr(lstm, n).data))
    run = lambda: fe.compile(lambda x: lstm(x), fe.TensorSpec(x.shape))(x)  # noqa: E731
    (out, (h, c)), (to, (th, tc)) = run(), t(torch.from_numpy(x))
    for a, b in ((out, to), (h, th), (c, tc)):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-5, atol=1e-6)
    lstm.eval()
    t.eval()
    (out0, (h0, _)), (to0, _) = run(), t(torch.from_numpy(x))
    np.testing.assert_allclose(out0, to0.detach().numpy(), rtol=1e-5, atol=1e-6)
    lstm.train()
    lstm.dropout = 0.5
    out5, (h5, _) = run()
    np.testing.assert_allclose(h5[0], h0[0], rtol=1e-6)
    assert not np.allclose(out5, out0)


def test_bad_arguments_say_what_is_wrong():
    with pytest.raises(ValueError, match="proj_size"):
        nn.LSTM(3, 4, proj_size=4)
    with pytest.raises(ValueError, match="dropout"):
        nn.GRU(3, 4, dropout=1.5)
    lstm = nn.LSTM(3, 4)
    with pytest.raises(ValueError, match=r"hx's c_0 must have shape \(1, 2, 4\)"):
        fe.trace(lambda x, h, c: lstm(x, (h, c))[0], fe.TensorSpec((5, 2, 3)),
                 fe.TensorSpec((1, 2, 4)), fe.TensorSpec((1, 2, 5)))
    with pytest.raises(TypeError, match=r"hx must be a tuple \(h, c\)"):
        fe.trace(lambda x, h: lstm(x, h)[0], fe.TensorSpec((5, 2, 3)), fe.TensorSpec((1, 2, 4)))
    with pytest.raises(ValueError, match=r"GRUCell: input must be \(N, 3\)"):
        fe.trace(nn.GRUCell(3, 4), fe.TensorSpec((2, 5)))
    with pytest.raises(ValueError, match="gate"):
        nn.GRU(3, 4).gate_slice("f")
