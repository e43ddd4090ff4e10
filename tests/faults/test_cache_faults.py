"""Faults of the on-disk compile caches (backends/cache.py): damaged, planted and renamed
entries, unsafe folders and secrets, a full disk, the size limit, the key, and the memory of
uncached compiles. Every test has its own cache root (IRGRAPH_CACHE_DIR)."""
from __future__ import annotations

import ctypes
import errno
import gc
import os
import shutil
import stat
import warnings

import llvmlite.binding
import numpy as np
import pytest

import irgraph.backends as backends
from irgraph.backends import cache
from irgraph.backends.cache import CacheWarning
from irgraph.backends.llvm import gemm, jit
from irgraph.backends.triton import codegen
from irgraph import Graph, TensorType
from irgraph.passes.fusion import fuse

RNG = np.random.default_rng(7)
SHAPE = (6,)


@pytest.fixture
def root(tmp_path, monkeypatch):
    r = tmp_path / "cache"
    monkeypatch.setenv("IRGRAPH_CACHE_DIR", str(r))
    monkeypatch.delenv("IRGRAPH_CACHE_MAX_MB", raising=False)
    return r


@pytest.fixture
def loaded(monkeypatch):
    """Every object file handed to LLVM, in order."""
    seen: list[bytes] = []
    original = llvmlite.binding.ObjectFileRef.from_data

    def spy(cls, data):
        seen.append(bytes(data))
        return original(data)
    monkeypatch.setattr(llvmlite.binding.ObjectFileRef, "from_data", classmethod(spy))
    return seen


def graph(op: str, name: str = "g") -> Graph:
    """``op(x, y) + tanh(x)``: a different ``op`` is a different function."""
    g = Graph(name)
    x, y = g.add_input("x", TensorType(SHAPE)), g.add_input("y", TensorType(SHAPE))
    g.set_outputs([g.op("add", g.op(op, x, y), g.op("tanh", x))])
    return g


ARGS = [RNG.standard_normal(SHAPE).astype(np.float32) for _ in range(2)]


def check_right(exe, g: Graph) -> None:
    want = backends.compile(g, "reference")(*ARGS)[0]
    np.testing.assert_allclose(exe(*ARGS)[0], want, rtol=1e-5, atol=1e-6)


def compile_llvm(g: Graph, **kw):
    return backends.compile(g, "llvm", threads=1, **kw)


def entry(root, exe):
    return root / "llvm" / f"{exe.cache_key}.o"


# ------------------------------------------------------------------ LLVM object cache
def test_entry_is_checked_and_served(root, loaded):
    g = graph("mul")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        first = compile_llvm(g)
        data = entry(root, first).read_bytes()
        assert data.startswith(cache.MAGIC)
        again = compile_llvm(graph("mul"))
    assert not first.cache_hit and again.cache_hit
    payload = data.split(b"\n", 1)[1]
    assert payload[:4] == b"\x7fELF" and loaded[-1] == payload   # header stripped for LLVM
    check_right(again, g)
    secret = root / cache.SECRET_NAME
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and len(secret.read_bytes()) == 32
    assert stat.S_IMODE((root / "llvm").stat().st_mode) & 0o077 == 0


def _truncate(d: bytes) -> bytes:
    return d[:len(d) // 2]


def _flip(d: bytes) -> bytes:
    i = len(d) - 200                      # inside the object code, past the header
    return d[:i] + bytes([d[i] ^ 0x10]) + d[i + 1:]


def _header_only(d: bytes) -> bytes:
    return d.split(b"\n", 1)[0] + b"\n"


@pytest.mark.parametrize("damage,why", [(_truncate, "damaged"), (lambda d: b"", "truncated"),
                                        (_flip, "HMAC"), (_header_only, "truncated")])
def test_damaged_entry_is_deleted_and_compiled_anew(root, loaded, damage, why):
    g = graph("sub")
    path = entry(root, compile_llvm(g))
    bad = damage(path.read_bytes())
    path.write_bytes(bad)
    loaded.clear()
    with pytest.warns(CacheWarning, match=why):
        exe = compile_llvm(graph("sub"))
    assert not exe.cache_hit
    assert all(obj not in bad for obj in loaded if obj)         # nothing of it reached LLVM
    check_right(exe, g)
    assert path.read_bytes() != bad                             # rewritten, valid again
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        assert compile_llvm(graph("sub")).cache_hit


def test_unreadable_entry_is_deleted(root, monkeypatch):
    g = graph("sub")
    path = entry(root, compile_llvm(g))
    real_open = os.open

    def failing(p, *a, **k):
        if str(p) == str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(p))
        return real_open(p, *a, **k)
    monkeypatch.setattr(cache.os, "open", failing)
    with pytest.warns(CacheWarning, match="unreadable"):
        exe = compile_llvm(graph("sub"))
    monkeypatch.undo()
    assert not exe.cache_hit
    check_right(exe, g)


def test_planted_entry_of_another_graph_never_runs(root, loaded):
    """A valid entry of graph B renamed onto graph A's key (and B's bare object code) is
    rejected before LLVM sees it; A still computes A."""
    a, b = graph("add", "a"), graph("mul", "a")
    key_a = compile_llvm(a).cache_key
    exe_b = compile_llvm(b)
    b_entry = entry(root, exe_b).read_bytes()
    b_object = b_entry.split(b"\n", 1)[1]
    for planted in (b_entry, b_object):
        (root / "llvm" / f"{key_a}.o").write_bytes(planted)
        loaded.clear()
        with pytest.warns(CacheWarning, match="HMAC" if planted is b_entry else "header"):
            exe = compile_llvm(graph("add", "a"))
        assert exe.cache_key == key_a and not exe.cache_hit
        assert b_object not in loaded
        check_right(exe, a)


def test_runtime_module_entry_is_checked_too(root, loaded):
    """Target-only runtime code (the GEMM kernels, the worker loop) goes through the same
    checked cache: a damaged entry is recompiled, never loaded."""
    from llvmlite import ir

    def make(triple):
        m = ir.Module("plus_one")
        m.triple = triple
        i64 = ir.IntType(64)
        f = ir.Function(m, ir.FunctionType(i64, [i64]), "irgraph_test_plus_one")
        b = ir.IRBuilder(f.append_basic_block())
        b.ret(b.add(f.args[0], ir.Constant(i64, 1)))
        return m

    good = jit.compiled_module("test runtime", make)
    (path,) = (root / "llvm").glob("*.o")
    bad = _flip(path.read_bytes())
    path.write_bytes(bad)
    with pytest.warns(CacheWarning, match="HMAC"):
        obj = jit.compiled_module("test runtime", make)
    assert obj == good and obj not in bad
    engine = jit.Loaded(obj, None)
    fn = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64)(
        engine.engine.get_function_address("irgraph_test_plus_one"))
    assert fn(41) == 42


@pytest.mark.parametrize("which", ["root", "llvm"])
def test_folder_writable_by_others_is_refused(root, which):
    folder = root if which == "root" else root / "llvm"
    folder.mkdir(parents=True)
    os.chmod(folder, 0o777)
    g = graph("mul")
    with pytest.warns(CacheWarning, match="mode 0777"):
        exe = compile_llvm(g)
    check_right(exe, g)
    assert not list(root.rglob("*.o"))
    assert not (root / cache.SECRET_NAME).exists()
    with pytest.warns(CacheWarning, match="refused"):
        assert not compile_llvm(graph("mul")).cache_hit


def test_folder_owned_by_someone_else_is_refused(root, monkeypatch):
    g = graph("mul")
    compile_llvm(g)                                       # a good cache of this user...
    monkeypatch.setattr(cache, "_uid", lambda: os.getuid() + 1)   # ...seen by another one
    with pytest.warns(CacheWarning, match="owned by uid"):
        exe = compile_llvm(graph("mul"))
    assert not exe.cache_hit
    check_right(exe, g)


@pytest.mark.parametrize("mode", [0o644, 0o660, 0o604])
def test_secret_readable_by_others_is_refused(root, mode):
    g = graph("mul")
    compile_llvm(g)
    os.chmod(root / cache.SECRET_NAME, mode)
    with pytest.warns(CacheWarning, match=f"cache secret .*mode {mode:04o}"):
        exe = compile_llvm(graph("mul"))
    assert not exe.cache_hit
    check_right(exe, g)


def test_secret_of_wrong_size_is_refused(root):
    root.mkdir(mode=0o700)
    secret = root / cache.SECRET_NAME
    secret.write_bytes(b"short")
    os.chmod(secret, 0o600)
    with pytest.warns(CacheWarning, match="holds 5 bytes"):
        check_right(compile_llvm(graph("mul")), graph("mul"))


@pytest.mark.parametrize("secret_first", [True, False])
def test_full_disk_leaves_no_temporary_file(root, monkeypatch, secret_first):
    if secret_first:
        compile_llvm(graph("sub"))                        # secret and folders exist

    def full(fd, data):
        os.write(fd, data[:len(data) // 3])
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(cache, "_write", full)
    g = graph("mul")
    with pytest.warns(CacheWarning, match="disk full|cannot be created"):
        exe = compile_llvm(g)
    check_right(exe, g)
    left = [p.name for p in root.rglob("*") if p.is_file()]
    assert not [n for n in left if n.startswith(".tmp-")], left
    assert not (root / "llvm" / f"{exe.cache_key}.o").exists()


def test_size_limit_evicts_least_recently_used(root, monkeypatch):
    store = cache.DiskCache("llvm", ".o")
    monkeypatch.setenv("IRGRAPH_CACHE_MAX_MB", "1")
    blob = bytes(400 * 1024)
    assert store.store("a", blob) and store.store("b", blob)
    now = os.path.getmtime(store.path("b"))
    os.utime(store.path("a"), (now - 100, now - 100))
    os.utime(store.path("b"), (now - 50, now - 50))
    assert store.load("a") == blob                        # a hit: a is now the newest
    assert store.store("c", blob)                         # 1.2 MB > 1 MB: b goes
    assert store.path("a").exists() and store.path("c").exists()
    assert not store.path("b").exists()


def test_size_limit_applies_to_compiles(root, monkeypatch):
    first = compile_llvm(graph("mul"))
    path = entry(root, first)
    size = path.stat().st_size
    monkeypatch.setenv("IRGRAPH_CACHE_MAX_MB", str(1.5 * size / 2**20))
    t = path.stat().st_mtime - 60
    os.utime(path, (t, t))
    second = compile_llvm(graph("sub"))
    assert entry(root, second).exists() and not path.exists()
    monkeypatch.setenv("IRGRAPH_CACHE_MAX_MB", "0")              # 0: nothing stored
    third = compile_llvm(graph("div"))
    assert not entry(root, third).exists()
    check_right(third, graph("div"))


@pytest.mark.parametrize("raw", ["lots", "-1", "nan", "inf"])
def test_bad_size_limit_is_an_error_naming_the_variable(root, monkeypatch, raw):
    monkeypatch.setenv("IRGRAPH_CACHE_MAX_MB", raw)
    with pytest.raises(ValueError, match="IRGRAPH_CACHE_MAX_MB"):
        compile_llvm(graph("mul"))


def test_bad_entry_key_is_an_error():
    with pytest.raises(ValueError, match="bad entry key"):
        cache.DiskCache("llvm", ".o").path("../escape")


# ------------------------------------------------------------------ the key
def test_source_hash_covers_passes_and_ops(tmp_path, monkeypatch):
    copies = []
    for src in cache.source_roots():
        dst = tmp_path / src.name
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        copies.append(dst)
    assert [c.name for c in copies] == ["irgraph", "passes", "backends"]
    monkeypatch.setattr(cache, "source_roots", lambda: copies)
    h0 = cache.source_hash.__wrapped__()
    (tmp_path / "passes" / "__pycache__").mkdir(exist_ok=True)
    (tmp_path / "passes" / "__pycache__" / "x.py").write_text("# not source\n")
    assert cache.source_hash.__wrapped__() == h0
    seen = {h0}
    for rel in ("passes/fusion.py", "irgraph/ops/core.py", "irgraph/types.py"):
        with open(tmp_path / rel, "a") as f:
            f.write("\n# changed\n")
        h = cache.source_hash.__wrapped__()
        assert h not in seen, rel
        seen.add(h)
    (tmp_path / "passes" / "new_pass.py").write_text("")     # a new, empty file counts too
    assert cache.source_hash.__wrapped__() not in seen
    monkeypatch.setattr(cache, "package_version", lambda: "9.9.9")
    assert cache.source_hash.__wrapped__() not in seen


def test_key_covers_source_target_and_options(monkeypatch):
    base = jit.cache_key("graph text", {"opt": 3})
    assert jit.cache_key("graph text", {"opt": 2}) != base
    assert jit.cache_key("other text", {"opt": 3}) != base
    triple, cpu, features = jit.host()
    monkeypatch.setattr(jit, "host", lambda: (triple, cpu + "x", features))
    assert jit.cache_key("graph text", {"opt": 3}) != base
    monkeypatch.setattr(jit, "host", lambda: (triple, cpu, features + ",+fake"))
    assert jit.cache_key("graph text", {"opt": 3}) != base
    monkeypatch.undo()
    monkeypatch.setattr(cache, "source_hash", lambda: "another tree")
    assert jit.cache_key("graph text", {"opt": 3}) != base
    monkeypatch.undo()
    monkeypatch.setattr(llvmlite.binding, "llvm_version_info", (0, 0, 1))
    assert jit.cache_key("graph text", {"opt": 3}) != base


# ------------------------------------------------------------------ Triton source cache
def triton_graph() -> Graph:
    g = Graph("ew")
    x, b = g.add_input("x", TensorType((3, 5))), g.add_input("b", TensorType((5,)))
    g.set_outputs([g.op("sigmoid", g.op("mul", g.op("add", x, b), x))])
    return fuse(g)


TRITON_ARGS = [RNG.standard_normal(s).astype(np.float32) for s in ((3, 5), (5,))]


def check_triton(g: Graph) -> None:
    want = backends.compile(g, "reference")(*TRITON_ARGS)[0]
    got = backends.compile(g, "triton")(*TRITON_ARGS)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_triton_planted_source_never_runs(root, tmp_path):
    g = triton_graph()
    check_triton(g)
    files = list((root / "triton").glob("*.py"))
    assert files and all(f.read_bytes().startswith(cache.MAGIC) for f in files)
    marker = tmp_path / "ran"
    for f in files:
        f.write_text(f"open({str(marker)!r}, 'w').close()\n" + f.read_text())
    with pytest.warns(CacheWarning, match="damaged"):
        check_triton(triton_graph())
    assert not marker.exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        check_triton(triton_graph())                     # rewritten: served without warning


def test_triton_entry_renamed_onto_another_kernel_is_rejected(root):
    a, b = "fused_" + "a" * 16, "fused_" + "b" * 16
    src_a = f"\n\n@triton.jit\ndef {a}(x_ptr):\n    pass\n"
    src_b = f"\n\n@triton.jit\ndef {b}(x_ptr):\n    tl.store(x_ptr, 1.0)\n"
    codegen.load_kernel(src_a, a)
    codegen.load_kernel(src_b, b)
    shutil.copy(root / "triton" / f"{b}.py", root / "triton" / f"{a}.py")
    with pytest.warns(CacheWarning, match="HMAC"):
        kernel = codegen.load_kernel(src_a, a)
    assert kernel.fn.__name__ == a
    assert (root / "triton" / f"{a}.py").read_text().endswith(src_a)


def test_triton_unsafe_folder_is_refused(root):
    (root / "triton").mkdir(parents=True)
    os.chmod(root / "triton", 0o777)
    with pytest.warns(CacheWarning, match="mode 0777"):
        check_triton(triton_graph())
    assert not list((root / "triton").glob("*.py"))


# ------------------------------------------------------------------ memory
def _rss_kb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_uncached_compiles_release_their_memory():
    """Each uncached compile used to keep its LLVM pass pipeline (~90 KB); after warm-up, the
    resident size must stay flat: under 20 KB per compile in at least one of three windows
    (allocator noise can fill one window, a leak fills all of them)."""
    g = graph("mul")
    for _ in range(30):
        compile_llvm(g, cache=False)(*ARGS)
    per_compile = []
    for _ in range(3):
        gc.collect()
        before = _rss_kb()
        for _ in range(60):
            compile_llvm(g, cache=False)(*ARGS)
        gc.collect()
        per_compile.append((_rss_kb() - before) / 60)
        if per_compile[-1] < 20:
            break
    assert min(per_compile) < 20, per_compile


def test_stores_scan_the_cache_only_when_the_size_limit_may_be_passed(root, monkeypatch):
    """A store does not stat every entry of the cache: this process scans the root once,
    then counts what it writes, and scans (and evicts) again only when that count passes
    the limit."""
    scans = []
    real = cache._entries
    monkeypatch.setattr(cache, "_entries", lambda top: scans.append(top) or real(top))
    monkeypatch.setenv("IRGRAPH_CACHE_MAX_MB", "1")
    store = cache.DiskCache("llvm", ".o")
    blob = bytes(100 * 1024)
    for k in range(9):                                   # ~0.9 MB: under the limit
        assert store.store(f"k{k}", blob)
    assert len(scans) <= 1
    for k in range(9, 12):                               # past 1 MB: scanned, oldest evicted
        assert store.store(f"k{k}", blob)
    assert 2 <= len(scans) <= 4
    kept = sum(p.stat().st_size for p in (root / "llvm").glob("*.o"))
    assert kept <= 2 ** 20 and store.path("k11").exists()


# ------------------------------------------------------------------ batched writes
def _count_syncs(monkeypatch) -> list:
    """Every flush to the disk a store asks for: ('fs', fd) or ('file', fd), from now on (the
    cache's folders and secret made first)."""
    assert cache.DiskCache("llvm", ".o").store("setup", b"x")
    calls: list = []
    real_fsync = os.fsync
    monkeypatch.setattr(cache, "_SYNCFS", lambda fd: calls.append(("fs", fd)) or 0)
    monkeypatch.setattr(cache.os, "fsync", lambda fd: calls.append(("file", fd))
                        or real_fsync(fd))
    return calls


def test_a_batch_of_entries_is_flushed_once_and_all_served(root, monkeypatch):
    calls = _count_syncs(monkeypatch)
    store = cache.DiskCache("llvm", ".o")
    blobs = {f"k{i}": os.urandom(1000 + i) for i in range(6)}
    assert store.store_many(blobs.items()) == 6
    assert [c[0] for c in calls] == ["fs"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        assert store.load_many(list(blobs) + ["absent"]) == {**blobs, "absent": None}
    assert not [p for p in (root / "llvm").iterdir() if p.name.startswith(".tmp-")]


def test_a_compile_flushes_its_entries_once(root, monkeypatch):
    """A graph with kernels of their own (GEMM, loops over many elements) stores them and
    its entry in one batch: one flush, and a second compile is served by them."""
    g = Graph("g")
    x, w = g.add_input("x", TensorType((64, 128))), g.add_input("w", TensorType((128, 64)))
    g.set_outputs([g.op("tanh", g.op("matmul", x, w)), g.op("exp", x)])
    gemm.runtime_object()                # the GEMM runtime: once per process, its own entry
    calls = _count_syncs(monkeypatch)
    first = backends.compile(g, "llvm", threads=1)
    kernels = list((root / "llvm").glob("*.o"))
    assert len(kernels) >= 4 and [c[0] for c in calls] == ["fs"]
    args = [RNG.standard_normal((64, 128)).astype(np.float32),
            RNG.standard_normal((128, 64)).astype(np.float32)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        again = backends.compile(g, "llvm", threads=1)
    assert not first.cache_hit and again.cache_hit
    want = backends.compile(g, "reference")(*args)
    for got, ref in zip(again(*args), want):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_a_torn_entry_of_a_batch_is_ignored_and_the_others_served(root):
    """A crash may leave an entry of a batch short or zeroed on disk: the check finds it,
    deletes it, and the other entries of the batch are still served."""
    store = cache.DiskCache("llvm", ".o")
    blobs = {f"k{i}": os.urandom(3000) for i in range(4)}
    assert store.store_many(blobs.items()) == 4
    torn = store.path("k2")
    data = torn.read_bytes()
    torn.write_bytes(data[:len(data) // 2] + bytes(len(data) - len(data) // 2))
    with pytest.warns(CacheWarning, match="k2.*HMAC"):
        got = store.load_many(blobs)
    assert got == {**blobs, "k2": None} and not torn.exists()


def test_a_failed_write_or_flush_in_a_batch_skips_that_entry_only(root, monkeypatch):
    store = cache.DiskCache("llvm", ".o")
    assert store.store("setup", b"x")                        # folders and secret made
    real_write = cache._write

    def full_on_k1(fd, data):
        if data.endswith(b"payload-1"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(fd, data)
    monkeypatch.setattr(cache, "_write", full_on_k1)
    monkeypatch.setattr(cache, "_SYNCFS", None)          # a flush per file
    real_fsync = os.fsync
    flushed = []

    def fsync_fails_on_second(fd):
        flushed.append(fd)
        if len(flushed) == 2:                                # k2's file (k1 never written)
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)
    monkeypatch.setattr(cache.os, "fsync", fsync_fails_on_second)
    items = [(f"k{i}", f"payload-{i}".encode()) for i in range(4)]
    with pytest.warns(CacheWarning) as got:
        assert store.store_many(items) == 2
    said = " ".join(str(w.message) for w in got)
    assert "k1.o could not be written (disk full)" in said
    assert "k2.o could not be written" in said and "Input/output error" in said
    names = sorted(p.name for p in (root / "llvm").iterdir())
    assert names == ["k0.o", "k3.o", "setup.o"]           # no temporary file left
    assert store.load("k0") == b"payload-0" and store.load("k3") == b"payload-3"


def test_package_version_is_the_installed_distributions():
    from importlib import metadata
    assert cache.package_version() == metadata.version("irgraph")


@pytest.mark.parametrize("lib, symbol", [("m", "erf"), ("c", "memcpy")])
def test_c_libraries_for_llvm_are_found_and_load(lib, symbol):
    path = jit._c_library(lib)
    assert path and hasattr(ctypes.CDLL(path), symbol)


def test_a_compiles_reader_checks_the_folders_once_and_every_entry(root, monkeypatch):
    store = cache.DiskCache("llvm", ".o")
    blobs = {f"r{i}": os.urandom(500) for i in range(3)}
    assert store.store_many(blobs.items()) == 3
    opens = []
    real = cache.DiskCache._open
    monkeypatch.setattr(cache.DiskCache, "_open", lambda self: opens.append(1) or real(self))
    load = store.reader()
    assert [load(k) for k in blobs] == list(blobs.values()) and load("absent") is None
    assert len(opens) == 1
    path = store.path("r1")
    path.write_bytes(_flip(path.read_bytes()))
    with pytest.warns(CacheWarning, match="r1.*HMAC"):
        assert load("r1") is None
    assert load("r2") == blobs["r2"] and not path.exists()
    os.chmod(root / "llvm", 0o777)                          # refused: nothing read
    refused = store.reader()
    with pytest.warns(CacheWarning, match="refused"):
        assert refused("r2") is None
    assert refused("r0") is None
