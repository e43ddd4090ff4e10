"""Any batch size: fe.jit re-specializes per input signature (bounded table, exact counts,
warning); compile/compile_train with dynamic_batch=True run partial batches through one
executable with the results of a fresh compile at that size."""
import warnings

import numpy as np
import pytest

import irgraph.backends as backends
import irgraph.frontend as fe
from irgraph.frontend import F, nn, optim
from irgraph.frontend.data import DataLoader
from irgraph.frontend.fit import fit, per_shape
from irgraph.frontend.jit import CacheInfo, RecompileWarning

RNG = np.random.default_rng(1)


def data(n, d=5, dtype=np.float32):
    return RNG.standard_normal((n, d)).astype(dtype)


def labels(n, classes=3):
    return RNG.integers(0, classes, n).astype(np.int64)


def mlp(seed=0):
    fe.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))


def spec(*shape, dtype="float32"):
    return fe.TensorSpec(shape, dtype)


@pytest.fixture
def compile_count(monkeypatch):
    """How many executables the backends build while the test runs."""
    calls = []
    real = backends.compile

    def counting(graph, *a, **k):
        calls.append(graph.name)
        return real(graph, *a, **k)
    monkeypatch.setattr(backends, "compile", counting)
    return calls


# ---------------------------------------------------------------- jit
def test_jit_respecializes_per_shape_and_dtype_with_exact_counts(compile_count):
    model = mlp()
    f = fe.jit(model)
    for n in (4, 4, 7, 4, 1, 7, 7):
        x = data(n)
        np.testing.assert_array_equal(f(x), fe.compile(model, spec(n, 5))(x))
    assert f.cache_info() == CacheInfo(hits=4, misses=3, maxsize=32, currsize=3, recompiles=2)
    x64 = data(4, dtype=np.float64)
    np.testing.assert_array_equal(f(x64), fe.compile(model, spec(4, 5, dtype="float64"))(x64))
    assert f.recompiles == 3 and f(fe.tensor(x64)).dtype == np.float64
    assert f.cache_info().hits == 5
    assert len(compile_count) == 4 + 8          # 4 by jit, 8 by the checks


def test_jit_reads_live_weights_and_recompiles_for_a_new_mode():
    fe.manual_seed(2)
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4))
    f = fe.jit(model)
    x = data(6)
    f(x)
    model[0].weight.data[...] *= 2.0                      # in place
    model[0].bias.data = np.ones(4, np.float32)          # replaced
    state = model.state_dict()
    out = f(x)
    assert f.cache_info().misses == 1
    model.load_state_dict(state)
    np.testing.assert_allclose(out, fe.compile(model, spec(6, 5))(x), rtol=1e-6)
    model.eval()
    np.testing.assert_allclose(f(x), fe.compile(model, spec(6, 5))(x), rtol=1e-6)
    assert f.cache_info().misses == 2


def test_jit_static_arguments_and_python_numbers():
    f = fe.jit(lambda x, k: F.softmax(x * k, dim=1), static_argnums=1)
    x = data(3)
    for k in (2.0, 2.0, 3.0):
        e = np.exp(x * k - (x * k).max(1, keepdims=True))
        np.testing.assert_allclose(f(x, k), e / e.sum(1, keepdims=True), rtol=1e-6)
    assert f.cache_info().misses == 2 and f.cache_info().hits == 1
    g = fe.jit(lambda x, s: x * s)
    with pytest.raises(TypeError, match=r"argument 1 is a Python float \(2.0\).*static_argnums"):
        g(x, 2.0)
    with pytest.raises(TypeError, match="static argument 1 must be hashable"):
        f(x, [1.0])


def test_jit_table_is_lru_bounded():
    f = fe.jit(lambda x: x * 2.0, maxsize=2)
    for n in (1, 2, 3, 1):              # 1 was evicted by 3: compiled again
        f(data(n))
    assert f.cache_info() == CacheInfo(hits=0, misses=4, maxsize=2, currsize=2, recompiles=3)
    f(data(3))                          # still there
    f(data(2))                          # evicted by the second 1
    assert f.cache_info() == CacheInfo(hits=1, misses=5, maxsize=2, currsize=2, recompiles=4)
    with pytest.raises(ValueError, match="maxsize must be an int >= 1"):
        fe.jit(lambda x: x, maxsize=0)


def test_jit_warns_once_when_recompiles_reach_warn_after():
    f = fe.jit(lambda x: x + 1.0, warn_after=2)
    seen = []
    for n in (1, 2, 3, 4, 3):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            f(data(n))
        seen.append([str(m.message) for m in w if issubclass(m.category, RecompileWarning)])
    assert [len(s) for s in seen] == [0, 0, 1, 0, 0]
    assert "recompiled 2 times (now for (float32[3, 5]))" in seen[2][0]


def test_jit_on_llvm_equals_reference():
    model = mlp(3)
    f = fe.jit(model, backend="llvm")
    for n in (3, 6, 3):
        x = data(n)
        np.testing.assert_allclose(f(x), fe.compile(model, spec(n, 5))(x), rtol=1e-5,
                                   atol=1e-6)
    assert f.cache_info().misses == 2


def test_grad_without_specs_keeps_a_table():
    g = fe.grad(lambda x: F.sum(x * x))
    for n in (2, 2, 5):
        x = data(n)
        np.testing.assert_allclose(g(x), 2 * x, rtol=1e-6)
    assert g.cache_info().misses == 2 and g.cache_info().hits == 1


# ---------------------------------------------------------------- dynamic_batch: inference
@pytest.mark.parametrize("backend", ["reference", "llvm"])
def test_dynamic_batch_inference_equals_a_fresh_compile(backend, compile_count):
    model = mlp(4)
    run = fe.compile(model, spec(8, 5), backend=backend, dynamic_batch=True)
    assert len(compile_count) == 1
    xs = {n: data(n) for n in range(1, 12)}
    outs = {n: run(xs[n]) for n in xs}
    assert len(compile_count) == 1 and run.runs == 8 + 3 * 2    # 9 to 11 rows: two runs
    tol = dict(rtol=1e-6, atol=1e-7) if backend == "reference" else dict(rtol=1e-5, atol=1e-6)
    for n, x in xs.items():
        assert outs[n].shape == (n, 3)
        np.testing.assert_allclose(outs[n], fe.compile(model, spec(n, 5))(x), **tol)
    fresh = fe.compile(model, spec(3, 5), backend=backend)(xs[3])
    np.testing.assert_allclose(outs[3], fresh, **tol)


def test_dynamic_batch_cnn_in_eval_mode():
    fe.manual_seed(5)
    cnn = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                        nn.Flatten(), nn.Linear(48, 2)).eval()
    run = fe.compile(cnn, spec(4, 2, 4, 4), dynamic_batch=True)
    x = RNG.standard_normal((3, 2, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(run(x), fe.compile(cnn, spec(3, 2, 4, 4))(x), rtol=1e-5,
                               atol=1e-6)


def test_dynamic_batch_refuses_coupled_rows_and_bad_batches():
    fe.manual_seed(6)
    bn = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4))
    with pytest.raises(ValueError, match="cannot pad a batch: it updates state"):
        fe.compile(bn, spec(8, 5), dynamic_batch=True)
    bn[1].track_running_stats = False
    with pytest.raises(ValueError, match="batch norm in training mode"):
        fe.compile(lambda x: F.batch_norm(x, None, None, training=True), spec(8, 5),
                   dynamic_batch=True)
    with pytest.raises(ValueError, match=r"output 0 \(%\w+: f32\[\]\) does not lead"):
        fe.compile(lambda x: x.sum(), spec(8, 5), dynamic_batch=True)
    with pytest.raises(ValueError, match="input %b: f32\\[3,5\\] has leading axis 3"):
        fe.compile(lambda a, b: a + b.sum(), spec(8, 5), spec(3, 5), dynamic_batch=True)
    run = fe.compile(mlp(), spec(8, 5), dynamic_batch=True)
    with pytest.raises(ValueError, match=r"input 0 has shape \(3, 4\), expected \(n, 5\)"):
        run(data(3, 4))
    with pytest.raises(TypeError, match="input 0 has dtype float64, expected float32"):
        run(data(3, dtype=np.float64))


# ---------------------------------------------------------------- dynamic_batch: training
def _twin_steps(make_model, loss_fn, make_opt, b, backend, extra_specs=(), target_dtype="int64",
                target_shape=()):
    """A dynamic step for batches of b, and per-size fresh steps on an identical model."""
    m1, m2 = make_model(), make_model()
    o1, o2 = make_opt(), make_opt()
    dyn = fe.compile_train(m1, loss_fn, o1, spec(b, 5),
                           spec(b, *target_shape, dtype=target_dtype), backend=backend,
                           dynamic_batch=True)
    fresh = per_shape(lambda n: fe.compile_train(
        m2, loss_fn, o2, spec(n, 5), spec(n, *target_shape, dtype=target_dtype),
        backend=backend))
    return (m1, dyn), (m2, fresh)


def _assert_same_training(batches, twins, rtol=1e-5, atol=1e-6):
    (m1, dyn), (m2, fresh) = twins
    for x, y in batches:
        np.testing.assert_allclose(dyn(x, y), fresh(x, y), rtol=rtol, atol=atol)
        for (name, p), q in zip(m1.named_parameters(), m2.parameters()):
            np.testing.assert_allclose(p.data, q.data, rtol=rtol, atol=atol, err_msg=name)


@pytest.mark.parametrize("backend", ["reference", "llvm"])
def test_dynamic_batch_training_equals_fresh_compiles(backend, compile_count):
    batches = [(data(8), labels(8)), (data(5), labels(5)), (data(8), labels(8))]
    if backend == "reference":
        batches += [(data(1), labels(1)), (data(3), labels(3))]
    twins = _twin_steps(mlp, nn.CrossEntropyLoss(), lambda: optim.Adam(lr=0.05), 8, backend)
    _assert_same_training(batches, twins)
    step = twins[0][1]
    assert len(compile_count) == 1 + len({len(x) for x, _ in batches})   # dynamic + fresh
    with pytest.raises(ValueError, match="up to 8 rows .* this batch has 9"):
        step(data(9), labels(9))


def test_dynamic_batch_training_mse_sum_and_ignore_index():
    batches = [(data(6), data(6, 3)), (data(4), data(4, 3))]
    twins = _twin_steps(mlp, nn.MSELoss(), lambda: optim.SGD(lr=0.1, momentum=0.9), 6,
                        "reference", target_dtype="float32", target_shape=(3,))
    _assert_same_training(batches, twins)
    batches = [(data(6), labels(6)), (data(3), labels(3))]
    twins = _twin_steps(mlp, nn.CrossEntropyLoss(reduction="sum"), lambda: optim.SGD(lr=0.01),
                        6, "reference")
    _assert_same_training(batches, twins)
    y = np.array([1, -100, 2, -100], np.int64)            # mean over the 2 targets that count
    batches = [(data(6), labels(6)), (data(4), y)]
    twins = _twin_steps(mlp, F.cross_entropy, lambda: optim.SGD(lr=0.1), 6, "reference")
    _assert_same_training(batches, twins)


def test_dynamic_batch_class_probability_targets_average_over_rows():
    """Cross entropy with class-probability targets (floats, torch's second target form)
    has no ignore_index: its mean divides by the rows alone, padded or not."""
    def probs(n):
        p = RNG.random((n, 3)).astype(np.float32)
        return p / p.sum(1, keepdims=True)
    batches = [(data(6), probs(6)), (data(4), probs(4))]
    twins = _twin_steps(mlp, nn.CrossEntropyLoss(), lambda: optim.SGD(lr=0.5), 6, "reference",
                        target_dtype="float32", target_shape=(3,))
    _assert_same_training(batches, twins)
    import torch
    m = mlp()
    x, y = batches[1]
    want = torch.nn.functional.cross_entropy(
        torch.from_numpy(np.tanh(x @ m[0].weight.data.T + m[0].bias.data)
                         @ m[2].weight.data.T + m[2].bias.data), torch.from_numpy(y))
    dyn = fe.compile_train(m, nn.CrossEntropyLoss(), optim.SGD(lr=0.5), spec(6, 5),
                           spec(6, 3), dynamic_batch=True)
    np.testing.assert_allclose(dyn(x, y), want.item(), rtol=1e-5)


def test_dynamic_batch_class_weighted_mean_divides_by_the_targets_weights():
    """torch's weighted mean: the sum over the true rows divided by the weights of their
    targets (ignored ones left out), for the module and for a function given its weights."""
    import functools
    w = np.array([0.2, 3.0, 1.0], np.float32)
    y = np.array([1, -100, 2, 0], np.int64)
    batches = [(data(6), labels(6)), (data(4), y), (data(3), labels(3))]
    for loss in (nn.CrossEntropyLoss(weight=w), functools.partial(F.cross_entropy, weight=w),
                 nn.CrossEntropyLoss(weight=w, label_smoothing=0.1)):
        twins = _twin_steps(mlp, loss, lambda: optim.SGD(lr=0.5), 6, "reference")
        _assert_same_training(batches, twins)


def test_dynamic_batch_step_with_every_target_ignored_leaves_the_weights():
    """A padded batch whose targets are all ignore_index: the loss is NaN (0/0) and no
    gradient reaches the weights, as a fixed-batch step and torch, with label smoothing too
    (its mean over no targets sent NaN into every weight)."""
    for loss in (nn.CrossEntropyLoss(), nn.CrossEntropyLoss(label_smoothing=0.2)):
        m = mlp()
        before = [p.data.copy() for p in m.parameters()]
        step = fe.compile_train(m, loss, optim.SGD(lr=0.5), spec(4, 5), spec(4, dtype="int64"),
                                dynamic_batch=True)
        assert np.isnan(step(data(3), np.full(3, -100, np.int64)))
        for p, q in zip(m.parameters(), before):
            np.testing.assert_array_equal(p.data, q)


@pytest.mark.parametrize("loss", [nn.L1Loss(), nn.SmoothL1Loss(beta=0.5), nn.HuberLoss(delta=2.0),
                                  nn.BCEWithLogitsLoss()])
def test_dynamic_batch_with_the_module_form_of_functional_losses(loss):
    """Loss modules made from a function carry torch's attributes (``reduction``, ``beta``,
    ...): dynamic_batch reads the per-example form from them and pads exactly."""
    assert loss.reduction == "mean"
    batches = [(data(6), RNG.random((6, 3)).astype(np.float32)),
               (data(4), RNG.random((4, 3)).astype(np.float32))]
    twins = _twin_steps(mlp, loss, lambda: optim.SGD(lr=0.1), 6, "reference",
                        target_dtype="float32", target_shape=(3,))
    _assert_same_training(batches, twins)
    x, y = batches[1]
    per = nn.L1Loss(reduction="none")
    per.reduction = "sum"           # an attribute set afterwards takes effect, as in torch
    np.testing.assert_allclose(per(x[:, :3], y), np.abs(x[:, :3] - y).sum(), rtol=1e-6)


def test_dynamic_batch_training_refusals():
    fe.manual_seed(7)
    bn = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4))
    with pytest.raises(ValueError, match="batch norm in training mode"):
        fe.compile_train(bn, nn.CrossEntropyLoss(), optim.SGD(lr=0.1), spec(8, 5),
                         spec(8, dtype="int64"), dynamic_batch=True)
    with pytest.raises(TypeError, match="reduction= argument"):
        fe.compile_train(mlp(), lambda out, y: F.mse_loss(out, y), optim.SGD(lr=0.1),
                         spec(8, 5), spec(8, 3), dynamic_batch=True)


def test_fit_with_a_partial_last_batch_through_one_dynamic_step():
    x, y = data(10), labels(10)
    twins = _twin_steps(mlp, nn.CrossEntropyLoss(), lambda: optim.SGD(lr=0.2), 4, "reference")
    (m1, dyn), (m2, fresh) = twins
    h1 = fit(dyn, DataLoader(x, y, batch_size=4), epochs=2, progress=False, out=_Null())
    h2 = fit(fresh, DataLoader(x, y, batch_size=4), epochs=2, progress=False, out=_Null())
    np.testing.assert_allclose(h1.loss, h2.loss, rtol=1e-5)
    assert sorted(fresh.steps) == [2, 4] and fresh.cache_info().misses == 2
    for p, q in zip(m1.parameters(), m2.parameters()):
        np.testing.assert_allclose(p.data, q.data, rtol=1e-5, atol=1e-6)


class _Null:
    def write(self, s):
        pass

    def flush(self):
        pass
