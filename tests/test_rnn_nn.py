"""The DSL's recurrent networks: nn.RNN against torch.nn.RNN with copied weights (outputs and
gradients), padding of minibatches of different lengths, and the models of chapter 10."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import irgraph.frontend as fe
from irgraph.frontend import nn, optim
from irgraph.frontend.rnn import OutputRecurrentNet, RecurrentConvNet, SequenceClassifier
from irgraph.interpreter import interpret
from irgraph.passes.unroll import bptt


class Wrap(nn.Module):
    """Traces ``fn(module, *inputs)`` with the module's parameter names (prefix ``m.``)."""

    def __init__(self, m, fn):
        super().__init__()
        self.m, self.fn = m, fn

    def forward(self, *xs):
        return self.fn(self.m, *xs)


def to64(module):
    for p in module.parameters():
        p.data = p.data.astype(np.float64)
    return module


def value_and_grads(module, fn, inputs, wrt_inputs=(), mode="rolled"):
    """(outputs of fn, gradients of its output 0) through a traced graph and BPTT; the
    gradients are keyed by input position (``wrt_inputs``) and parameter name."""
    specs = [fe.TensorSpec(a.shape, a.dtype) for a in inputs]
    g = fe.trace(Wrap(module, fn), *specs, name="f")
    params = dict(Wrap(module, fn).named_parameters())
    wrt = [g.inputs[i].name for i in wrt_inputs] + [p.name for p in g.params]
    outs = interpret(bptt(g, wrt, mode=mode), list(inputs) + [params[p.name].data
                                                             for p in g.params])
    n = len(g.outputs)
    keys = list(wrt_inputs) + [p.name.removeprefix("m.") for p in g.params]
    return outs[:n], dict(zip(keys, outs[n:]))


def run(module, fn, inputs):
    """The outputs of ``fn(module, *inputs)``, traced and interpreted."""
    specs = [fe.TensorSpec(a.shape, a.dtype) for a in inputs]
    g = fe.trace(Wrap(module, fn), *specs, name="f")
    params = dict(Wrap(module, fn).named_parameters())
    return interpret(g, list(inputs) + [params[p.name].data for p in g.params])


def torch_copy(rnn: nn.RNN, **kw) -> torch.nn.RNN:
    t = torch.nn.RNN(rnn.input_size, rnn.hidden_size, **kw).double()
    with torch.no_grad():
        for name, p in t.named_parameters():
            p.copy_(torch.from_numpy(getattr(rnn, name).data.astype(np.float64)))
    return t


CONFIGS = [dict(), dict(num_layers=2), dict(bidirectional=True),
           dict(num_layers=2, bidirectional=True, batch_first=True),
           dict(nonlinearity="relu"), dict(bias=False)]


@pytest.mark.parametrize("kw", CONFIGS, ids=[str(k) for k in CONFIGS])
@pytest.mark.parametrize("mode", ["rolled", "unrolled"])
def test_rnn_matches_torch_outputs_and_gradients(kw, mode):
    """Eq. 10.8-10.9 as torch.nn.RNN computes them; BPTT gradients equal torch autograd's."""
    fe.manual_seed(1)
    rnn = to64(nn.RNN(3, 4, **kw))
    t = torch_copy(rnn, **kw)
    r = np.random.default_rng(2)
    shape = (2, 5, 3) if kw.get("batch_first") else (5, 2, 3)
    x = r.standard_normal(shape)
    hx = r.standard_normal((rnn.num_layers * rnn.num_directions, 2, 4))
    c1, c2 = r.standard_normal(2)

    def loss(m, x, hx):
        out, h_n = m(x, hx)
        return (out * out * c1).sum() + (h_n * h_n * c2).sum(), out, h_n
    (val, out, h_n), grads = value_and_grads(rnn, loss, [x, hx], (0, 1), mode)
    xt = torch.tensor(x, requires_grad=True)
    ht = torch.tensor(hx, requires_grad=True)
    to, th = t(xt, ht)
    tl = (to * to * c1).sum() + (th * th * c2).sum()
    tl.backward()
    np.testing.assert_allclose(out, to.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(h_n, th.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(val, tl.item(), rtol=1e-12)
    np.testing.assert_allclose(grads[0], xt.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(grads[1], ht.grad.numpy(), rtol=1e-9, atol=1e-12)
    for name, p in t.named_parameters():
        np.testing.assert_allclose(grads[name], p.grad.numpy(), rtol=1e-9, atol=1e-12,
                                   err_msg=name)


def test_rnn_float32_unbatched_and_default_state_match_torch():
    fe.manual_seed(3)
    rnn = nn.RNN(3, 5, num_layers=2)
    t = torch_copy(rnn, num_layers=2).float()
    x = np.random.default_rng(4).standard_normal((6, 3)).astype(np.float32)
    out, h_n = fe.compile(Wrap(rnn, lambda m, x: m(x)), fe.TensorSpec((6, 3)))(x)
    to, th = t(torch.from_numpy(x))
    assert out.shape == (6, 5) and h_n.shape == (2, 5) and out.dtype == np.float32
    np.testing.assert_allclose(out, to.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h_n, th.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_rnn_parameter_names_order_shapes_and_init_follow_torch():
    fe.manual_seed(0)
    ours = nn.RNN(7, 50, num_layers=2, bidirectional=True)
    theirs = torch.nn.RNN(7, 50, num_layers=2, bidirectional=True)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [
        (n, tuple(p.shape)) for n, p in theirs.named_parameters()]
    k = 1 / math.sqrt(50)
    w = np.concatenate([p.data.ravel() for p in ours.parameters()])
    assert w.dtype == np.float32 and np.abs(w).max() <= k
    np.testing.assert_allclose(w.std(), k / math.sqrt(3), rtol=0.05)   # U(-k, k)


def test_rnn_bad_arguments_say_what_is_wrong():
    with pytest.raises(ValueError, match="nonlinearity"):
        nn.RNN(3, 4, nonlinearity="gelu")
    with pytest.raises(ValueError, match="proj_size argument is only supported for LSTM"):
        nn.GRU(3, 4, proj_size=2)
    rnn = nn.RNN(3, 4)
    with pytest.raises(ValueError, match=r"input must be \(L, N, 3\)"):
        fe.trace(Wrap(rnn, lambda m, x: m(x)[0]), fe.TensorSpec((5, 2, 6)))
    with pytest.raises(TypeError, match="input is float64 but the parameters are float32"):
        fe.trace(Wrap(rnn, lambda m, x: m(x)[0]), fe.TensorSpec((5, 2, 3), "float64"))
    with pytest.raises(ValueError, match="hx must have shape"):
        fe.trace(Wrap(rnn, lambda m, x, h: m(x, h)[0]), fe.TensorSpec((5, 2, 3)),
                 fe.TensorSpec((2, 2, 4)))


def test_scan_step_using_an_outside_tensor_is_refused():
    from irgraph.frontend.rnn import scan

    def f(x):
        outside = x[0] * 2.0
        return scan(lambda h, x_t: (h + outside, h), x[0], x)[1]
    with pytest.raises(ValueError, match="outside"):
        fe.trace(f, fe.TensorSpec((4, 3)))


# ------------------------------------------------------------------ padding (masking)
LENGTHS = np.array([5, 3, 1, 4])


def padded_batch(seed=0, d=3):
    r = np.random.default_rng(seed)
    x = r.standard_normal((5, 4, d))
    for b, n in enumerate(LENGTHS):
        x[n:, b] = 1e3 * r.standard_normal((5 - n, d))        # garbage where padded
    return x


@pytest.mark.parametrize("kw", [dict(), dict(num_layers=2, bidirectional=True)])
def test_padding_changes_neither_outputs_nor_final_state(kw):
    """Each sequence of a padded minibatch gives what it gives alone, as torch's
    pack_padded_sequence; padded outputs are zero."""
    fe.manual_seed(5)
    rnn = to64(nn.RNN(3, 4, **kw))
    x = padded_batch()
    out, h_n = run(rnn, lambda m, x, n: m(x, lengths=n), [x, LENGTHS])
    for b, n in enumerate(LENGTHS):
        o1, h1 = run(rnn, lambda m, x: m(x), [x[:n, b:b + 1]])
        np.testing.assert_allclose(out[:n, b:b + 1], o1, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(h_n[:, b:b + 1], h1, rtol=1e-12, atol=1e-14)
        assert not out[n:, b].any()
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.from_numpy(x), LENGTHS,
                                                     enforce_sorted=False)
    to, th = torch_copy(rnn, **kw)(packed)
    to, _ = torch.nn.utils.rnn.pad_packed_sequence(to)
    np.testing.assert_allclose(out, to.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(h_n, th.detach().numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("mode", ["rolled", "unrolled"])
def test_padding_changes_neither_loss_nor_gradients(mode):
    """Eq. 10.13-10.14 over a padded minibatch == the sum over the sequences run alone."""
    fe.manual_seed(6)
    model = to64(nn.RNNSequenceModel(3, 4, 5, bidirectional=True))
    x = padded_batch(1)
    y = np.random.default_rng(7).integers(0, 5, (5, 4))
    (loss,), grads = value_and_grads(model, lambda m, x, y, n: m.loss(x, y, n),
                                     [x, y, LENGTHS], (0,), mode)
    total, summed = 0.0, {}
    for b, n in enumerate(LENGTHS):
        (l1,), g1 = value_and_grads(model, lambda m, x, y: m.loss(x, y),
                                    [x[:n, b:b + 1], y[:n, b:b + 1]], (0,), mode)
        total += l1
        np.testing.assert_allclose(grads[0][:n, b:b + 1], g1.pop(0), rtol=1e-9, atol=1e-12)
        assert not grads[0][n:, b].any()
        for k, v in g1.items():
            summed[k] = summed.get(k, 0) + v
    np.testing.assert_allclose(loss, total, rtol=1e-12)
    for k, v in summed.items():
        np.testing.assert_allclose(grads[k], v, rtol=1e-9, atol=1e-12, err_msg=k)


# ------------------------------------------------------------------ fig. 10.5
def test_sequence_classifier_reads_one_output_at_each_sequence_end():
    """Fig. 10.5: o = c + V h_tau, the last valid state of each sequence; vs torch."""
    fe.manual_seed(8)
    model = to64(SequenceClassifier(3, 4, 3))
    x = padded_batch(2)
    labels = np.array([0, 2, 1, 2])
    (loss, logits), grads = value_and_grads(
        model, lambda m, x, y, n: (m.loss(x, y, n), m(x, n)), [x, labels, LENGTHS])
    rnn, lin = torch_copy(model.rnn), torch.nn.Linear(4, 3).double()
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(model.out.weight.data))
        lin.bias.copy_(torch.from_numpy(model.out.bias.data))
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.from_numpy(x), LENGTHS,
                                                     enforce_sorted=False)
    tl = lin(rnn(packed)[1][-1])
    tloss = torch.nn.functional.cross_entropy(tl, torch.from_numpy(labels))
    tloss.backward()
    np.testing.assert_allclose(logits, tl.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(loss, tloss.item(), rtol=1e-12)
    for name, p in rnn.named_parameters():
        np.testing.assert_allclose(grads["rnn." + name], p.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(grads["out.weight"], lin.weight.grad.numpy(), rtol=1e-9)


# ------------------------------------------------------------------ fig. 10.4 / 10.6
def numpy_output_recurrence(model, prev_onehot, x=None):
    """h_t = tanh(b + W y_{t-1} + U x_t), o_t = c + V h_t (fig. 10.4)."""
    a = prev_onehot @ model.W.weight.data.T + model.W.bias.data
    if x is not None:
        a = a + x @ model.U.weight.data.T
    return np.tanh(a) @ model.V.weight.data.T + model.V.bias.data


def test_teacher_forcing_feeds_the_true_previous_outputs():
    """Fig. 10.6 (train time): step t sees y_{t-1} from the data, y_0 = 0."""
    fe.manual_seed(9)
    model = to64(OutputRecurrentNet(4, 6, input_size=2))
    r = np.random.default_rng(10)
    y, x = r.integers(0, 4, (5, 3)), r.standard_normal((5, 3, 2))
    (logits,) = run(model, lambda m, y, x: m(y, x), [y, x])
    prev = np.concatenate([np.zeros((1, 3, 4)), np.eye(4)[y[:-1]]])
    np.testing.assert_allclose(logits, numpy_output_recurrence(model, prev, x), rtol=1e-12)


def test_teacher_forced_training_then_open_loop_generation():
    """Train on a cyclic sequence with teacher forcing (SGD, loss falls), then generate open
    loop (fig. 10.6, test time): the argmax fed back reproduces the cycle."""
    fe.manual_seed(11)
    model = OutputRecurrentNet(4, 16)
    cycle = np.array([[0], [1], [2], [3]] * 3, np.int64)          # (12, 1)
    loss_model = Wrap(model, lambda m, y: m.loss(y))
    step = fe.compile_train(loss_model, None, optim.SGD(lr=0.1), fe.TensorSpec((12, 1),
                                                                                 "int64"))
    losses = [step(cycle) for _ in range(150)]
    assert losses[-1] < 0.1 * losses[0]
    tokens = fe.compile(Wrap(model, lambda m: m.generate(12, 1)))()
    np.testing.assert_array_equal(tokens, cycle)


def test_open_loop_generation_feeds_back_argmax_or_gumbel_samples():
    """Generation equals a numpy loop feeding back the model's own output: its argmax, or
    with Gumbel noise -log(-log u) a sample of softmax(o_t)."""
    fe.manual_seed(12)
    model = to64(OutputRecurrentNet(5, 6))
    u = np.random.default_rng(13).uniform(0.01, 0.99, (7, 2, 5))
    (greedy,) = run(model, lambda m: m.generate(7, 2), [])
    (sampled,) = run(model, lambda m, u: m.generate(noise=u), [u])
    for noise, got in ((None, greedy), (u, sampled)):
        prev, want = np.zeros((2, 5)), []
        for t in range(7):
            o = numpy_output_recurrence(model, prev)
            tok = np.argmax(o if noise is None else o - np.log(-np.log(noise[t])), -1)
            want.append(tok)
            prev = np.eye(5)[tok]
        np.testing.assert_array_equal(got, np.stack(want))
    assert (greedy != sampled).any()


def test_sampling_by_gumbel_noise_follows_softmax():
    """The sampled first tokens follow softmax(o_1) (chi-square-free check: 4000 draws)."""
    fe.manual_seed(14)
    model = to64(OutputRecurrentNet(3, 4))
    u = np.random.default_rng(15).uniform(1e-9, 1 - 1e-9, (1, 4000, 3))
    (tokens,) = run(model, lambda m, u: m.generate(noise=u), [u])
    o = numpy_output_recurrence(model, np.zeros((1, 3)))[0]
    p = np.exp(o - o.max()) / np.exp(o - o.max()).sum()
    freq = np.bincount(tokens[0], minlength=3) / 4000
    np.testing.assert_allclose(freq, p, atol=0.03)


# ------------------------------------------------------------------ fig. 9.17
def test_recurrent_conv_net_matches_torch_with_shared_kernels():
    """Fig. 9.17: H = tanh(U*X + W*Y_prev) (W term zero at first), Y = softmax(V*H); the same
    U, V, W at every refinement step; outputs and gradients vs torch."""
    fe.manual_seed(16)
    model = to64(RecurrentConvNet(2, 3, 4, kernel_size=3, steps=3))
    assert [n for n, _ in model.named_parameters()] == ["U", "V", "W"]
    r = np.random.default_rng(17)
    img, labels = r.standard_normal((2, 2, 5, 6)), r.integers(0, 4, (2, 5, 6))
    (loss, ys), grads = value_and_grads(
        model, lambda m, x, y: (m.loss(x, y), m.estimates(x)), [img, labels])
    U, V, W = (torch.tensor(p.data, requires_grad=True) for p in model.parameters())
    conv = torch.nn.functional.conv2d
    x, y = torch.from_numpy(img), torch.zeros(2, 4, 5, 6, dtype=torch.float64)
    want = []
    for _ in range(3):
        h = torch.tanh(conv(x, U, padding=1) + conv(y, W, padding=1))
        y = torch.softmax(conv(h, V, padding=1), 1)
        want.append(y)
    tloss = torch.nn.functional.nll_loss(torch.log(y), torch.from_numpy(labels))
    tloss.backward()
    np.testing.assert_allclose(ys, torch.stack(want).detach().numpy(), rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(loss, tloss.item(), rtol=1e-10)
    for name, p in zip("UVW", (U, V, W)):
        np.testing.assert_allclose(grads[name], p.grad.numpy(), rtol=1e-8, atol=1e-12)


# ------------------------------------------------------------------ eq. 8.11, section 8.2.4
def linear_recurrence_model(lam: float, hidden: int = 2):
    """h_t = h_{t-1} W^T + x_t with W = Q diag(lam, 0.5) Q^-1 (eq. 8.11), loss sum(h_tau)."""
    fe.manual_seed(0)
    rnn = nn.RNN(1, hidden, nonlinearity="relu", bias=False)
    q = np.array([[1.0, 0.3], [0.2, 1.0]])
    rnn.weight_hh_l0.data = (q @ np.diag([lam, 0.5]) @ np.linalg.inv(q)).astype(np.float32)
    rnn.weight_ih_l0.data = np.ones((hidden, 1), np.float32)
    return rnn


def test_gradient_grows_like_the_eigenvalue_power_eq_8_11():
    """With an eigenvalue 1.5 > 1, dL/dh_0 grows by ~1.5 per extra step (W^t, eq. 8.11)."""
    rnn = to64(linear_recurrence_model(1.5))
    norms = {}
    for steps in (5, 10, 20):
        x = np.ones((steps, 1, 1))
        _, grads = value_and_grads(rnn, lambda m, x, h: (m(x, h)[1] ** 2).sum(),
                                   [x, np.full((1, 1, 2), 0.1)], (1,))
        norms[steps] = np.linalg.norm(grads[1])
    assert norms[10] > 10 * norms[5] and norms[20] > 100 * norms[10]
    np.testing.assert_allclose((norms[20] / norms[10]) ** (1 / 10), 1.5 ** 2, rtol=0.05)


def test_gradient_clipping_keeps_training_finite():
    """Section 8.2.4: the same exploding recurrence trained by SGD diverges without clipping
    and stays finite with clip_grad_norm."""
    x = np.ones((30, 1, 1), np.float32)
    target = np.zeros((30, 1, 2), np.float32)
    finals = {}
    for clip in (None, 1.0):
        rnn = linear_recurrence_model(1.2)
        loss = Wrap(rnn, lambda m, x, y: ((m(x)[0] - y) ** 2).mean())
        step = fe.compile_train(loss, None, optim.SGD(lr=0.01, clip_grad_norm=clip),
                                fe.TensorSpec((30, 1, 1)), fe.TensorSpec((30, 1, 2)))
        with np.errstate(all="ignore"):
            finals[clip] = [step(x, target) for _ in range(20)]
    assert not np.isfinite(finals[None][-1]) or finals[None][-1] > 1e10
    assert np.all(np.isfinite(finals[1.0])) and finals[1.0][-1] < finals[1.0][0]


# ------------------------------------------------------------------ language model
def test_language_model_generation_agrees_with_its_teacher_forced_logits():
    """Open loop feeds back its own tokens: run teacher-forced on those tokens, the logits
    (plus the same Gumbel noise) pick exactly the tokens generated; the logits are torch's
    RNN on one-hot previous tokens."""
    fe.manual_seed(18)
    model = to64(nn.RNNLanguageModel(6, 5, num_layers=2))
    u = np.random.default_rng(19).uniform(0.01, 0.99, (9, 3, 6))
    for noise in (None, u):
        fn = (lambda m: m.generate(9, 3)) if noise is None else (
            lambda m, u: m.generate(noise=u))
        (tokens,) = run(model, fn, [] if noise is None else [u])
        logits, _ = run(model, lambda m, y: m(y), [tokens])
        pick = logits if noise is None else logits - np.log(-np.log(u))
        np.testing.assert_array_equal(np.argmax(pick, -1), tokens)
    prev = np.concatenate([np.zeros((1, 3, 6)), np.eye(6)[tokens[:-1]]])
    h, _ = torch_copy(model.rnn, num_layers=2)(torch.from_numpy(prev))
    want = h.detach().numpy() @ model.out.weight.data.T + model.out.bias.data
    np.testing.assert_allclose(logits, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("backend", ["reference", "llvm", "triton"])
def test_bidirectional_padded_rnn_gradients_on_every_backend_match_torch(backend):
    """The rolled BPTT graph of a padded bidirectional RNN, compiled by each backend."""
    import irgraph.backends as backends
    fe.manual_seed(20)
    rnn = nn.RNN(3, 4, bidirectional=True)
    x = padded_batch(3).astype(np.float32) * np.float32(1e-3)
    specs = [fe.TensorSpec(x.shape), fe.TensorSpec((4,), "int64")]
    fn = Wrap(rnn, lambda m, x, n: (m(x, lengths=n)[0] ** 2).sum())
    g = fe.trace(fn, *specs, name="f")
    params = dict(fn.named_parameters())
    exe = backends.compile(bptt(g, mode="rolled"), backend)
    outs = exe(x, LENGTHS, *[params[p.name].data for p in g.params])
    t = torch_copy(rnn, bidirectional=True)
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.from_numpy(x).double(), LENGTHS,
                                                     enforce_sorted=False)
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(t(packed)[0])
    (out ** 2).sum().backward()
    np.testing.assert_allclose(outs[0], (out ** 2).sum().item(), rtol=1e-5)
    for p, got in zip(g.params, outs[1:]):
        want = dict(t.named_parameters())[p.name.removeprefix("m.")].grad.numpy()
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6, err_msg=p.name)


def test_rnn_dropout_between_layers_as_torch():
    """torch's dropout on the outputs of every layer but the last: none in eval mode (the
    same outputs as torch's), and in training mode a second layer fed zeros where its input
    was dropped (a single layer has nothing to drop: its output is the eval one)."""
    fe.manual_seed(0)
    ours = nn.RNN(3, 4, num_layers=2, dropout=0.5)
    theirs = torch.nn.RNN(3, 4, num_layers=2, dropout=0.5)
    with torch.no_grad():
        for (n, p), q in zip(ours.named_parameters(), theirs.parameters()):
            q.copy_(torch.from_numpy(p.data))
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    ours.eval()
    theirs.eval()
    out = fe.compile(Wrap(ours, lambda m, a: m(a)[0]), fe.TensorSpec((5, 2, 3)))(x)
    np.testing.assert_allclose(out, theirs(torch.from_numpy(x))[0].detach().numpy(),
                               rtol=1e-5, atol=1e-6)
    ours.train()
    trained = fe.compile(Wrap(ours, lambda m, a: m(a)[0]), fe.TensorSpec((5, 2, 3)))(x)
    assert trained.shape == out.shape and not np.allclose(trained, out)
    one = nn.RNN(3, 4, num_layers=1, dropout=0.5)
    a = fe.compile(Wrap(one, lambda m, v: m(v)[0]), fe.TensorSpec((5, 2, 3)))(x)
    one.eval()
    b = fe.compile(Wrap(one, lambda m, v: m(v)[0]), fe.TensorSpec((5, 2, 3)))(x)
    np.testing.assert_array_equal(a, b)
