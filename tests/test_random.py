"""Philox-4x32-10 random numbers (irgraph/ops/random.py, docs/random.md): the Random123
known-answer vectors, bit equality across backends and thread counts, statistics of the
draws with fixed seeds, dropout (train/eval, p = 0 and 1, gradient) and the RNG state a
compiled function or training step carries (advancing counter, checkpointed)."""
from __future__ import annotations

import math

import numpy as np
import pytest

import irgraph.backends as backends
import irgraph.frontend as fe
from irgraph.frontend import F, TensorSpec, nn, optim
from irgraph.frontend.random import Generator, default_generator
from irgraph import Graph, IRError, TensorType
from irgraph.ops.random import philox4x32

M = 0xFFFFFFFF
# Random123's kat_vectors for philox4x32_10: (counter words, key words) -> output words
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((M, M, M, M), (M, M), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("ctr,key,want", KAT)
def test_philox_known_answers(ctr, key, want):
    assert tuple(int(w) for w in philox4x32(*ctr, *key)) == want


def _draws(n: int) -> Graph:
    """One graph drawing every kind from inputs key, counter."""
    g = Graph("draws")
    k = g.add_input("key", TensorType((), "int64"))
    c = g.add_input("counter", TensorType((), "int64"))
    g.set_outputs([
        g.op("random_bits", k, c, shape=(n,), stream=3),
        g.op("random_uniform", k, c, shape=(n,), stream=4),
        g.op("random_uniform", k, c, shape=(n,), stream=5, dtype="float64"),
        g.op("random_normal", k, c, shape=(n,), stream=6),
        g.op("random_normal", k, c, shape=(n,), stream=7, dtype="float64"),
    ])
    return g


def test_first_block_of_key_zero_counter_zero_is_the_known_answer():
    g = Graph("kat")
    k = g.add_input("key", TensorType((), "int64"))
    c = g.add_input("counter", TensorType((), "int64"))
    g.set_outputs([g.op("random_bits", k, c, shape=(2, 2))])
    want = np.array(KAT[0][2], np.uint32).view(np.int32).reshape(2, 2)
    zero = np.zeros((), np.int64)
    for backend, opts in (("reference", {}), ("llvm", {"threads": 2}), ("triton", {})):
        got = backends.compile(g, backend, **opts)(zero, zero)[0]
        np.testing.assert_array_equal(got, want, err_msg=backend)


def test_same_bits_on_every_backend_and_thread_count():
    """4099 elements (a cut last block, enough work for two threads): bits and uniforms equal
    bit for bit; normals equal up to the libm's last bits (log, cos, sin in float64)."""
    g = _draws(4099)
    args = (np.asarray(-123456789123, np.int64), np.asarray(2 ** 40 + 3, np.int64))
    ref = backends.compile(g, "reference")(*args)
    runs = {"llvm-1": backends.compile(g, "llvm", threads=1)(*args),
            "llvm-2": backends.compile(g, "llvm", threads=2)(*args),
            "triton": backends.compile(g, "triton")(*args)}
    for name, got in runs.items():
        for k in range(3):
            assert got[k].dtype == ref[k].dtype
            np.testing.assert_array_equal(got[k], ref[k], err_msg=f"{name} output {k}")
        np.testing.assert_allclose(got[3], ref[3], rtol=1e-6, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(got[4], ref[4], rtol=1e-13, atol=1e-13, err_msg=name)
    for k in range(5):
        np.testing.assert_array_equal(runs["llvm-1"][k], runs["llvm-2"][k])


def _run(g, key, counter):
    return backends.compile(g, "reference")(np.asarray(key, np.int64),
                                            np.asarray(counter, np.int64))


def test_streams_counters_and_keys_give_different_numbers():
    g = _draws(64)
    a, b, c = _run(g, 1, 0), _run(g, 1, 1), _run(g, 2, 0)
    for x, y in ((a, b), (a, c), (b, c)):
        assert np.mean(x[0] == y[0]) < 0.05
    assert np.mean(a[1] == a[2].astype(np.float32)) < 0.05      # different streams


def test_uniform_and_bit_statistics():
    """Fixed seeds, so exact thresholds: mean, variance, Kolmogorov-Smirnov distance below
    the 1% critical value 1.63/sqrt(n), chi-square of the top byte over 256 buckets below the
    0.1% critical value of 255 degrees of freedom (330.5), every bit set half the time."""
    n = 1 << 16
    bits, u32, u64, _, _ = _run(_draws(n), 2024, 5)
    for u in (u32, u64):
        assert 0 <= u.min() and u.max() < 1
        assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002
        s = np.sort(u.astype(np.float64))
        ks = max(np.max(np.arange(1, n + 1) / n - s), np.max(s - np.arange(n) / n))
        assert ks < 1.63 / math.sqrt(n)
    words = bits.view(np.uint32)
    counts = np.bincount(words >> 24, minlength=256)
    chi2 = np.sum((counts - n / 256) ** 2 / (n / 256))
    assert chi2 < 330.5
    ones = ((words[:, None] >> np.arange(32, dtype=np.uint32)) & 1).mean(axis=0)
    assert np.all(np.abs(ones - 0.5) < 0.01)
    assert np.all(u32 * 2 ** 24 == np.floor(u32 * 2 ** 24))   # multiples of 2**-24


def test_normal_statistics():
    n = 1 << 16
    _, _, _, z32, z64 = _run(_draws(n), 77, 0)
    for z in (z32, z64):
        assert np.all(np.isfinite(z))
        assert abs(z.mean()) < 0.02 and abs(z.var() - 1) < 0.02
        s = np.sort(z.astype(np.float64))
        cdf = 0.5 * (1 + np.array([math.erf(v / math.sqrt(2)) for v in s]))
        ks = max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))
        assert ks < 1.63 / math.sqrt(n)


def test_bad_key_is_refused_when_building():
    g = Graph("bad")
    k = g.add_input("key", TensorType((), "float32"))
    with pytest.raises(IRError, match="key must be a rank-0 int64"):
        g.op("random_uniform", k, k, shape=(3,))
    with pytest.raises(IRError, match="stream"):
        kk = g.add_input("k2", TensorType((), "int64"))
        g.op("random_bits", kk, kk, shape=(3,), stream=-1)


# ---------------------------------------------------------------- dropout
@pytest.mark.parametrize("backend", ["reference", "llvm", "triton"])
def test_dropout_train_mask_scale_and_fresh_numbers_each_call(backend):
    fe.manual_seed(9)
    x = np.random.default_rng(0).uniform(1, 2, (64, 64)).astype(np.float32)
    f = fe.compile(lambda a: F.dropout(a, 0.25), TensorSpec(x.shape), backend=backend)
    y1 = f(x)
    assert default_generator().get_state() == (9, 1)
    y2 = f(x)
    kept = y1 != 0
    assert abs(kept.mean() - 0.75) < 0.02
    np.testing.assert_array_equal(y1[kept], x[kept] * np.float32(1 / np.float32(0.75)))
    assert np.mean(kept == (y2 != 0)) < 0.7                 # a new mask on the next call
    fe.manual_seed(9)
    np.testing.assert_array_equal(f(x), y1)                  # the seed replays it


def test_dropout_edge_cases_and_eval_mode():
    x = np.array([[1.0, np.nan, -2.0, 3.0]], np.float32)
    spec = TensorSpec(x.shape)
    np.testing.assert_array_equal(fe.compile(lambda a: F.dropout(a, 0.0), spec)(x), x)
    np.testing.assert_array_equal(fe.compile(lambda a: F.dropout(a, 0.5, False), spec)(x), x)
    np.testing.assert_array_equal(fe.compile(lambda a: F.dropout(a, 1.0), spec)(x),
                                  x * np.float32(0))                 # NaN stays NaN
    layer = nn.Dropout(0.5)
    layer.eval()
    assert fe.trace(layer, spec).nodes == []                          # identity
    with pytest.raises(ValueError, match="between 0 and 1"):
        F.dropout(None, 1.5)
    with pytest.raises(ValueError, match="between 0 and 1"):
        nn.Dropout(-0.1)


def test_dropout_gradient_is_the_mask_times_scale():
    fe.manual_seed(4)
    x = np.random.default_rng(1).standard_normal((8, 16)).astype(np.float32)
    value, g = fe.value_and_grad(lambda a: (F.dropout(a, 0.5) * 1.0).sum(), TensorSpec(x.shape),
                                 wrt=0)(x)
    fe.manual_seed(4)
    y = fe.compile(lambda a: F.dropout(a, 0.5), TensorSpec(x.shape))(x)
    np.testing.assert_array_equal(g, np.where(y != 0, np.float32(2), np.float32(0)))


def test_explicit_key_counter_inputs_and_generators():
    f = fe.compile(lambda k, c: F.rand(5, key=k, counter=c), TensorSpec((), "int64"),
                   TensorSpec((), "int64"))
    g = Generator(123)
    h = fe.compile(lambda: F.rand(5, generator=g))
    np.testing.assert_array_equal(f(np.int64(123), np.int64(0)), h())
    np.testing.assert_array_equal(f(np.int64(123), np.int64(1)), h())
    assert g.get_state() == (123, 2)


# ---------------------------------------------------------------- training state
class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.fc(x))


def test_training_step_advances_and_checkpoints_the_rng_counter(tmp_path):
    fe.manual_seed(5)
    model = _Net()
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((16, 6)).astype(np.float32), rng.integers(0, 3, 16)
    step = fe.compile_train(model, nn.CrossEntropyLoss(), optim.SGD(lr=0.1), TensorSpec((16, 6)),
                            TensorSpec((16,), "int64"))
    assert {"rng.key", "rng.counter"} <= {p.name for p in step.graph.params}
    step(x, y)
    assert default_generator().get_state() == (5, 1)
    step.save_state(tmp_path / "ckpt")
    after = [step(x, y) for _ in range(3)]
    assert default_generator().get_state() == (5, 4)
    assert len(set(after)) == 3                      # fresh masks: different losses
    step.load_state(tmp_path / "ckpt")
    assert default_generator().get_state() == (5, 1)
    assert [step(x, y) for _ in range(3)] == after   # resumed bit for bit
