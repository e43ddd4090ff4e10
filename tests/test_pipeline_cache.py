"""The on-disk cache of the pass pipeline's result (frontend/pipeline_cache.py): a hit gives
the graph the passes compute and an executable with the same outputs; a changed model,
pipeline or code misses; a damaged entry is recomputed; ``print_after`` still prints."""
from __future__ import annotations

import numpy as np
import pytest

import irgraph.frontend as fe
import irgraph.frontend.train as ftrain
from irgraph.backends import cache as disk_cache
from irgraph.frontend import nn, optim, pipeline_cache

T, BATCH, N_IN = 6, 4, 3


class Recurrent(nn.Module):
    def __init__(self, hidden: int, cell: str = "rnn"):
        super().__init__()
        self.rnn = nn.RNN(N_IN, hidden) if cell == "rnn" else nn.LSTM(N_IN, hidden)
        self.head = nn.Linear(hidden, 3)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[-1])


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """One cache root for the module (the kernels compile once); each test starts with no
    pipeline entries."""
    with pytest.MonkeyPatch.context() as mp:
        r = tmp_path_factory.mktemp("cache")
        mp.setenv("IRGRAPH_CACHE_DIR", str(r))
        mp.delenv("IRGRAPH_CACHE_MAX_MB", raising=False)
        yield r


@pytest.fixture
def built(root, monkeypatch):
    """Clears the pipeline entries; the list of ``Compiled`` of each compile_train after."""
    pipeline_cache.clear()
    seen = []
    real = ftrain.compile_graph

    def spy(*a, **k):
        seen.append(real(*a, **k))
        return seen[-1]
    monkeypatch.setattr(ftrain, "compile_graph", spy)
    return seen


def step(hidden=5, cell="rnn", backend="llvm", **kw):
    fe.manual_seed(0)
    return fe.compile_train(Recurrent(hidden, cell), nn.CrossEntropyLoss(),
                            optim.Adam(lr=1e-2), fe.TensorSpec((T, BATCH, N_IN)),
                            fe.TensorSpec((BATCH,), "int64"), backend=backend,
                            bptt="rolled", **kw)


def losses(fn) -> list[float]:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((T, BATCH, N_IN)).astype(np.float32)
    y = rng.integers(0, 3, BATCH)
    return [float(np.asarray(fn(x, y))) for _ in range(3)]


def entries(root) -> list:
    return sorted((root / "pipeline").glob("*.ir"))


def test_a_hit_gives_the_computed_graph_and_the_same_outputs(root, built):
    first = step()
    assert not built[0].cached and built[0].passes.records     # the passes ran, stored
    assert len(entries(root)) == 1
    second = step()
    hit = built[1]
    assert hit.cached and hit.passes.records == []
    assert str(hit.graph) == str(built[0].graph)
    assert [v.name for v in hit.graph.arguments] == [v.name for v in built[0].graph.arguments]
    got = losses(second)
    np.testing.assert_allclose(got, losses(first), rtol=1e-6)     # the same code
    np.testing.assert_allclose(got, losses(step(backend="reference")), rtol=1e-4, atol=1e-5)
    assert got[2] < got[0]                      # the steps trained


@pytest.mark.parametrize("change", ["model", "pipeline", "code"])
def test_a_changed_model_pipeline_or_code_misses(root, built, monkeypatch, change):
    step()
    assert len(entries(root)) == 1
    if change == "model":
        step(hidden=6)
    elif change == "pipeline":
        step(pipeline="simplify, cse")
    else:
        monkeypatch.setattr(disk_cache, "source_hash", lambda: "another version")
        step()
    assert not built[1].cached and built[1].passes.records
    assert len(entries(root)) == 2              # stored under a key of its own


def test_a_damaged_entry_is_recomputed(root, built):
    step()
    path, = entries(root)
    data = bytearray(path.read_bytes())
    data[-5] ^= 1
    path.write_bytes(bytes(data))
    with pytest.warns(disk_cache.CacheWarning, match="damaged"):
        step()
    assert not built[1].cached and str(built[1].graph) == str(built[0].graph)
    step()                                      # written anew
    assert built[2].cached


def test_an_entry_that_does_not_parse_is_recomputed(root, built):
    step()
    path, = entries(root)
    pipeline_cache._CACHE.store(path.stem, b"irgraph-pipeline v1\ngraph g( {")
    with pytest.warns(disk_cache.CacheWarning, match="cannot be read"):
        step()
    assert not built[1].cached and str(built[1].graph) == str(built[0].graph)


def test_print_after_still_prints(root, built, capsys):
    step()
    step(print_after=["simplify"])
    assert not built[1].cached
    assert "IR after pass simplify" in capsys.readouterr().out


def test_graphs_without_a_recurrence_and_unhashed_passes_are_not_stored(root, built):
    fe.manual_seed(0)
    fe.compile_train(nn.Linear(4, 3), nn.CrossEntropyLoss(), optim.SGD(lr=0.1),
                     fe.TensorSpec((2, 4)), fe.TensorSpec((2,), "int64"), backend="llvm")
    step(pipeline=["simplify", lambda g: g])    # a function the source hash does not cover
    step(cache=False)
    assert entries(root) == [] and not any(c.cached for c in built)


def test_a_full_cache_is_scanned_once_per_tenth_of_its_limit(tmp_path, monkeypatch):
    """A store that finds the root over its size limit evicts down to 90% of it, so the next
    stores add to the estimate instead of scanning every entry again (a full cache of
    122,000 kernel entries made each compile scan them all)."""
    limit = 100 * 1024
    monkeypatch.setenv("IRGRAPH_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("IRGRAPH_CACHE_MAX_MB", str(limit / 2**20))
    monkeypatch.setattr(disk_cache, "_USAGE", {})
    scans = []
    real = disk_cache._entries
    monkeypatch.setattr(disk_cache, "_entries", lambda top: scans.append(top) or real(top))
    c = disk_cache.DiskCache("t", ".bin")
    payload = bytes(range(256)) * 8
    for k in range(200):
        assert c.store(f"k{k}", payload)
    sizes = [f.stat().st_size for f in (tmp_path / "c" / "t").iterdir()]
    assert sum(sizes) <= limit
    # entries of ~2 KiB, 10 KiB freed a scan: one scan in about five stores once full
    assert len(scans) <= 200 // 4, len(scans)
    assert c.load("k199") == payload and c.load("k0") is None
