"""Activations and losses composed of core ops (frontend/compositions.py and their nn modules)
against torch.nn.functional / torch.nn, values and gradients, including the far tails."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import irgraph.frontend as fe
from irgraph.frontend import F, nn

X = np.array([[-80.0, -20.5, -3.0, -1.0, -0.25, 0.0], [0.25, 1.0, 3.0, 20.5, 40.0, 90.0]],
             np.float32)

ACTIVATIONS = {
    "leaky_relu": ({}, {"negative_slope": 0.2}),
    "relu6": ({},),
    "hardtanh": ({}, {"min_val": -2.0, "max_val": 0.5}),
    "elu": ({}, {"alpha": 0.7}),
    "softplus": ({}, {"beta": 2.0}, {"beta": 0.5, "threshold": 5.0}),
    "silu": ({},),
    "logsigmoid": ({},),
}
ACT_CASES = [(n, kw) for n, kws in ACTIVATIONS.items() for kw in kws]


@pytest.mark.parametrize("name,kw", ACT_CASES, ids=[f"{n}-{i}" for i, (n, _) in
                                                    enumerate(ACT_CASES)])
def test_activation_matches_torch_in_both_tails(name, kw):
    got = fe.compile(lambda x: getattr(F, name)(x, **kw), fe.TensorSpec(X.shape))(X)
    want = getattr(TF, name)(torch.from_numpy(X), **kw).numpy()
    assert got.dtype == want.dtype and np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,kw", ACT_CASES, ids=[f"{n}-{i}" for i, (n, _) in
                                                    enumerate(ACT_CASES)])
def test_activation_gradient_matches_torch_and_is_finite(name, kw):
    xs = X[:, [0, 1, 2, 4, 5]] + np.float32(0.01)      # off the kinks at 0
    grad = fe.grad(lambda x: getattr(F, name)(x, **kw).sum(), fe.TensorSpec(xs.shape))
    got = grad(xs)
    t = torch.from_numpy(xs).requires_grad_()
    getattr(TF, name)(t, **kw).sum().backward()
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, t.grad.numpy(), rtol=1e-5, atol=1e-6)


def _pair(seed):
    rng = np.random.default_rng(seed)
    return (rng.normal(0, 2, (4, 5)).astype(np.float32),
            rng.normal(0, 2, (4, 5)).astype(np.float32))


LOSSES = [("l1_loss", {}), ("smooth_l1_loss", {}), ("smooth_l1_loss", {"beta": 0.5}),
          ("smooth_l1_loss", {"beta": 0.0}), ("huber_loss", {}), ("huber_loss", {"delta": 2.5})]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name,kw", LOSSES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(LOSSES)])
def test_regression_losses_match_torch(name, kw, reduction):
    a, b = _pair(1)
    got = fe.compile(lambda x, y: getattr(F, name)(x, y, reduction=reduction, **kw),
                     fe.TensorSpec(a.shape), fe.TensorSpec(b.shape))(a, b)
    want = getattr(TF, name)(torch.from_numpy(a), torch.from_numpy(b), reduction=reduction,
                             **kw).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_binary_cross_entropy_matches_torch_including_p_0_and_1(reduction):
    p = np.array([[0.0, 0.1, 0.5], [0.9, 1.0, 0.3]], np.float32)
    t = np.array([[0.0, 1.0, 1.0], [0.0, 1.0, 0.5]], np.float32)
    got = fe.compile(lambda x, y: F.binary_cross_entropy(x, y, reduction=reduction),
                     fe.TensorSpec(p.shape), fe.TensorSpec(t.shape))(p, t)
    want = TF.binary_cross_entropy(torch.from_numpy(p), torch.from_numpy(t), reduction=reduction)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)
    p2 = p.copy()
    p2[0, 0] = 1.0    # t = 0, p = 1: log(0) clamped at -100 (torch)
    got = fe.compile(lambda x, y: F.binary_cross_entropy(x, y, reduction="none"),
                     fe.TensorSpec(p.shape), fe.TensorSpec(t.shape))(p2, t)
    assert got[0, 0] == pytest.approx(100.0)


@pytest.mark.parametrize("pos_weight", [None, 3.0, np.array([0.5, 1.0, 2.0], np.float32)],
                         ids=["none", "scalar", "per-class"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_bce_with_logits_matches_torch_for_huge_logits(pos_weight, reduction):
    x = np.array([[-100.0, -5.0, 0.0], [2.0, 30.0, 100.0]], np.float32)
    t = np.array([[0.0, 1.0, 0.5], [1.0, 0.0, 1.0]], np.float32)
    got = fe.compile(lambda a, b: F.binary_cross_entropy_with_logits(
        a, b, reduction=reduction, pos_weight=pos_weight),
        fe.TensorSpec(x.shape), fe.TensorSpec(t.shape))(x, t)
    pw = None if pos_weight is None else torch.as_tensor(pos_weight)
    want = TF.binary_cross_entropy_with_logits(torch.from_numpy(x), torch.from_numpy(t),
                                               reduction=reduction, pos_weight=pw)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)


def test_loss_gradients_match_torch():
    a, b = _pair(2)
    for name in ("l1_loss", "smooth_l1_loss", "huber_loss", "binary_cross_entropy_with_logits"):
        got = fe.grad(lambda x, y: getattr(F, name)(x, y), fe.TensorSpec(a.shape),
                      fe.TensorSpec(b.shape))(a, b)
        ta = torch.from_numpy(a).requires_grad_()
        getattr(TF, name)(ta, torch.from_numpy(b)).backward()
        np.testing.assert_allclose(got, ta.grad.numpy(), rtol=1e-5, atol=1e-6, err_msg=name)


def test_losses_check_shapes_and_reduction():
    with pytest.raises(ValueError, match=r"input \(2, 3\) and target \(3,\)"):
        fe.trace(lambda x, y: F.l1_loss(x, y), fe.TensorSpec((2, 3)), fe.TensorSpec((3,)))
    with pytest.raises(ValueError, match="reduction must be"):
        fe.trace(lambda x: F.huber_loss(x, x, reduction="avg"), fe.TensorSpec((2,)))


MODULES = [(nn.LeakyReLU(0.2), torch.nn.LeakyReLU(0.2)),
           (nn.LeakyReLU(negative_slope=0.3, inplace=True), torch.nn.LeakyReLU(0.3, True)),
           (nn.ReLU6(), torch.nn.ReLU6()), (nn.Hardtanh(-0.5, 2.0), torch.nn.Hardtanh(-0.5, 2.0)),
           (nn.ELU(alpha=0.5), torch.nn.ELU(alpha=0.5)), (nn.Softplus(beta=3.0),
                                                          torch.nn.Softplus(beta=3.0)),
           (nn.SiLU(), torch.nn.SiLU()), (nn.LogSigmoid(), torch.nn.LogSigmoid())]


@pytest.mark.parametrize("ours,theirs", MODULES, ids=[type(m).__name__ for m, _ in MODULES])
def test_activation_modules_match_torch(ours, theirs):
    got = fe.compile(ours, fe.TensorSpec(X.shape))(X)
    np.testing.assert_allclose(got, theirs(torch.from_numpy(X)).numpy(), rtol=1e-5, atol=1e-6)


LOSS_MODULES = [(nn.L1Loss(), torch.nn.L1Loss()),
                (nn.SmoothL1Loss(reduction="sum", beta=0.5),
                 torch.nn.SmoothL1Loss(reduction="sum", beta=0.5)),
                (nn.HuberLoss(delta=0.7), torch.nn.HuberLoss(delta=0.7)),
                (nn.BCEWithLogitsLoss(pos_weight=2.0),
                 torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(2.0)))]


@pytest.mark.parametrize("ours,theirs", LOSS_MODULES,
                         ids=[type(m).__name__ for m, _ in LOSS_MODULES])
def test_loss_modules_match_torch(ours, theirs):
    a, b = _pair(3)
    b = 1 / (1 + np.exp(-b)) if isinstance(ours, nn.BCEWithLogitsLoss) else b
    got = fe.compile(ours, fe.TensorSpec(a.shape), fe.TensorSpec(b.shape))(a, b)
    want = theirs(torch.from_numpy(a), torch.from_numpy(b.astype(np.float32)))
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)


def test_bce_module_and_bad_constructor_arguments():
    p, t = np.array([0.2, 0.7], np.float32), np.array([0.0, 1.0], np.float32)
    got = fe.compile(nn.BCELoss(), fe.TensorSpec((2,)), fe.TensorSpec((2,)))(p, t)
    assert got == pytest.approx(-(np.log(0.8) + np.log(0.7)) / 2, rel=1e-6)
    with pytest.raises(TypeError, match=r"unexpected arguments \['alpha'\]"):
        nn.LeakyReLU(alpha=0.1)
    with pytest.raises(TypeError, match="at most 2 positional"):
        nn.LeakyReLU(0.1, True, 3)


# ------------------------------------------------------------------ weighted, smoothed CE
CE_X = np.random.default_rng(4).standard_normal((5, 4, 3)).astype(np.float32)
CE_T = np.random.default_rng(5).integers(0, 4, (5, 3))
CE_T[0, 0] = CE_T[3, 2] = -100
CE_W = np.array([0.5, 2.0, 1.0, 3.0], np.float32)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.25])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_weight_and_label_smoothing_match_torch(reduction, label_smoothing,
                                                             weighted):
    """Eq. 10.12-10.14 with torch's class weights (mean divides by the weight of the targets
    that count) and label smoothing ((1 - e) NLL + e/C * sum_c -w_c log p_c)."""
    w = CE_W if weighted else None
    run = fe.compile(lambda a, b: F.cross_entropy(a, b, w, reduction=reduction,
                                                  label_smoothing=label_smoothing),
                     fe.TensorSpec(CE_X.shape), fe.TensorSpec(CE_T.shape, "int64"))
    want = TF.cross_entropy(torch.from_numpy(CE_X), torch.from_numpy(CE_T),
                            None if w is None else torch.from_numpy(w), reduction=reduction,
                            label_smoothing=label_smoothing)
    np.testing.assert_allclose(run(CE_X, CE_T), want.numpy(), rtol=1e-5, atol=1e-6)


def test_weighted_nll_by_hand_and_its_gradient_match_torch():
    logp = np.log(np.array([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]], np.float64))
    t, w = np.array([0, 1, 2]), np.array([1.0, 2.0, 3.0])
    want = -(1 * np.log(0.5) + 2 * np.log(0.8) + 3 * np.log(0.6)) / (1 + 2 + 3)
    run = fe.compile(lambda a, b: F.nll_loss(a, b, weight=w), fe.TensorSpec((3, 3), "float64"),
                     fe.TensorSpec((3,), "int64"))
    np.testing.assert_allclose(run(logp, t), want, rtol=1e-12)
    g = fe.grad(lambda a, b: F.cross_entropy(a, b, CE_W, label_smoothing=0.1),
                fe.TensorSpec(CE_X.shape), fe.TensorSpec(CE_T.shape, "int64"))(CE_X, CE_T)
    tx = torch.from_numpy(CE_X).requires_grad_()
    TF.cross_entropy(tx, torch.from_numpy(CE_T), torch.from_numpy(CE_W),
                     label_smoothing=0.1).backward()
    np.testing.assert_allclose(g, tx.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_cross_entropy_modules_with_weight_and_smoothing_match_torch():
    ours = nn.CrossEntropyLoss(weight=CE_W, ignore_index=-100, label_smoothing=0.3)
    theirs = torch.nn.CrossEntropyLoss(weight=torch.from_numpy(CE_W), label_smoothing=0.3)
    run = fe.compile(ours, fe.TensorSpec(CE_X.shape), fe.TensorSpec(CE_T.shape, "int64"))
    want = theirs(torch.from_numpy(CE_X), torch.from_numpy(CE_T))
    np.testing.assert_allclose(run(CE_X, CE_T), want.numpy(), rtol=1e-5)
    logp = torch.log_softmax(torch.from_numpy(CE_X), 1)
    run = fe.compile(nn.NLLLoss(CE_W, reduction="sum"), fe.TensorSpec(CE_X.shape),
                     fe.TensorSpec(CE_T.shape, "int64"))
    want = torch.nn.NLLLoss(torch.from_numpy(CE_W), reduction="sum")(logp, torch.from_numpy(CE_T))
    np.testing.assert_allclose(run(logp.numpy(), CE_T), want.numpy(), rtol=1e-5)


def test_cross_entropy_argument_errors():
    spec_x, spec_t = fe.TensorSpec((2, 3)), fe.TensorSpec((2,), "int64")
    with pytest.raises(ValueError, match=r"one entry per class \(3\), got shape \(2,\)"):
        fe.trace(lambda a, b: F.cross_entropy(a, b, np.ones(2, np.float32)), spec_x, spec_t)
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\]"):
        fe.trace(lambda a, b: F.cross_entropy(a, b, label_smoothing=1.5), spec_x, spec_t)
    with pytest.raises(ValueError, match="deprecated"):
        fe.trace(lambda a, b: F.cross_entropy(a, b, size_average=True), spec_x, spec_t)
    g = fe.trace(lambda a, b: F.cross_entropy(a, b, "sum"), spec_x, spec_t)
    assert g.nodes[-1].attrs["reduction"] == "sum"      # the older positional form


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted,label_smoothing", [(False, 0.0), (True, 0.0), (True, 0.2)])
def test_cross_entropy_with_probability_targets_matches_torch(reduction, weighted,
                                                              label_smoothing):
    probs = np.random.default_rng(6).dirichlet(np.ones(4), (5, 3)).transpose(0, 2, 1)
    probs = probs.astype(np.float32)
    w = CE_W if weighted else None
    run = fe.compile(lambda a, b: F.cross_entropy(a, b, w, reduction=reduction,
                                                  label_smoothing=label_smoothing),
                     fe.TensorSpec(CE_X.shape), fe.TensorSpec(probs.shape))
    want = TF.cross_entropy(torch.from_numpy(CE_X), torch.from_numpy(probs),
                            None if w is None else torch.from_numpy(w), reduction=reduction,
                            label_smoothing=label_smoothing)
    np.testing.assert_allclose(run(CE_X, probs), want.numpy(), rtol=1e-5, atol=1e-6)
