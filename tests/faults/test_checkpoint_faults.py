"""Checkpoint folders under faults: a writer killed at any instant, and folders tampered with.

After ``kill -9`` during an overwrite, ``irgraph.load`` returns the old checkpoint or the new
one, whole. A bad folder (names leaving it, links, FIFOs, devices, zip bombs, wrong or missing
arrays, checksum mismatches, malformed manifests) gives ``irgraph.CheckpointError`` naming the
file, reads nothing outside the folder and never inflates or allocates what it declares."""
from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import re
import signal
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import irgraph
from irgraph import CheckpointError, Graph, TensorType
from irgraph import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[2]


def small_graph(name: str = "small") -> Graph:
    g = Graph(name)
    x = g.add_input("x", TensorType((4, 3)))
    w = g.add_param("w", TensorType((3, 2)))
    b = g.add_param("b", TensorType((2,)))
    g.set_outputs([g.op("add", g.op("matmul", x, w), b)])
    return g


def small_weights():
    return {"w": np.arange(6, dtype=np.float32).reshape(3, 2), "b": np.array([1, -1], np.float32)}


def big_checkpoint(tag: str, value: float):
    """A multi-MB checkpoint; ``tag`` names the graph (so graphs differ too)."""
    g = Graph(tag)
    x = g.add_input("x", TensorType((2, 1024)))
    w = g.add_param("w", TensorType((1024, 1024)))
    b = g.add_param("b", TensorType((1024,), "float64"))
    g.set_outputs([g.op("add", g.op("cast", g.op("matmul", x, w), dtype="float64"), b)])
    return g, {"w": np.full((1024, 1024), value, np.float32),
               "b": np.arange(1024, dtype=np.float64) * value}


def same(loaded, expected) -> bool:
    (g, w), (g2, w2) = loaded, expected
    return g == g2 and sorted(w) == sorted(w2) and all(
        w[k].dtype == w2[k].dtype and np.array_equal(w[k], w2[k]) for k in w)


def manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def write_manifest(folder: Path, m: dict) -> None:
    (folder / "manifest.json").write_text(json.dumps(m))


def data_file(folder: Path, role: str) -> Path:
    return folder / manifest(folder)["files"][role]["name"]


def reseal(folder: Path, role: str, data: bytes) -> None:
    """Put ``data`` in place of a data file and vouch for it in the manifest, so that the
    checks after the checksum are what is tested."""
    m = manifest(folder)
    (folder / m["files"][role]["name"]).write_bytes(data)
    m["files"][role].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    write_manifest(folder, m)


@pytest.fixture
def folder(tmp_path) -> Path:
    irgraph.save(tmp_path / "ck", small_graph(), small_weights())
    return tmp_path / "ck"


# ------------------------------------------------------------------ round trips
def test_every_dtype_and_shape_round_trips(tmp_path):
    g = Graph("dtypes")
    arrays = {"f32": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
              "f64": np.array([np.pi, -0.0, np.inf, np.nan]),
              "i32": np.array([[-2**31, 2**31 - 1]], np.int32),
              "i64": np.array(-2**63, np.int64),              # 0-d
              "flag": np.array([True, False, True]),
              "empty": np.zeros((0, 5), np.float32),
              "fortran": np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3))}
    for n, a in arrays.items():
        g.add_param(n, TensorType(a.shape, a.dtype.name))
    g.set_outputs([g.params[0]])
    irgraph.save(tmp_path, g, arrays)
    g2, w2 = irgraph.load(tmp_path)
    assert g2 == g and sorted(w2) == sorted(arrays)
    for n, a in arrays.items():
        assert w2[n].dtype == a.dtype and w2[n].shape == a.shape and w2[n].flags.writeable
        np.testing.assert_array_equal(w2[n], a)
    with np.load(data_file(tmp_path, "weights"), allow_pickle=False) as z:   # plain npz
        np.testing.assert_array_equal(z["fortran"], arrays["fortran"])


def test_overwrite_leaves_one_version_and_removes_leftovers(tmp_path):
    irgraph.save(tmp_path, small_graph(), small_weights())
    (tmp_path / ".tmp-0123456789abcdef").write_bytes(b"left by a killed writer")
    stale = tmp_path / ("weights-" + "0" * 64 + ".npz")
    stale.write_bytes(b"stale")
    mine = tmp_path / "notes.txt"
    mine.write_text("not the checkpoint's")
    w = small_weights()
    w["b"] = np.array([5, 6], np.float32)
    irgraph.save(tmp_path, small_graph("renamed"), w)
    m = manifest(tmp_path)
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["manifest.json", "notes.txt", m["files"]["graph"]["name"], m["files"]["weights"]["name"]])
    assert same(irgraph.load(tmp_path), (small_graph("renamed"), w))


# ------------------------------------------------------------------ kill -9 during save
SAVER = r"""
import os, sys
import irgraph
target, old, new = sys.argv[1:4]
versions = [irgraph.load(new), irgraph.load(old)]
print("ready", flush=True)
for _ in sys.stdin:                       # one line per trial: fork a writer, report its pid
    pid = os.fork()
    if pid == 0:
        try:
            while True:
                for g, w in versions:
                    irgraph.save(target, g, w)
        finally:
            os._exit(0)
    print(pid, flush=True)
    os.waitpid(pid, 0)
    print("reaped", flush=True)
"""


def test_kill_at_random_instants_leaves_old_or_new_checkpoint(tmp_path):
    """A writer alternately saving NEW and OLD over a 5 MB checkpoint is killed with SIGKILL
    at seeded random instants; the folder then loads as OLD or NEW exactly, every time."""
    old, new = big_checkpoint("old", 1.0), big_checkpoint("new", 2.0)
    irgraph.save(tmp_path / "old", *old)
    irgraph.save(tmp_path / "new", *new)
    target = tmp_path / "target"
    irgraph.save(target, *old)
    server = subprocess.Popen([sys.executable, "-c", SAVER, str(target), str(tmp_path / "old"),
                               str(tmp_path / "new")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    seen = {"old": 0, "new": 0}
    try:
        assert server.stdout.readline() == "ready\n"
        instants = random.Random(20240611)
        for _ in range(15):
            server.stdin.write("\n")
            server.stdin.flush()
            pid = int(server.stdout.readline())
            time.sleep(instants.uniform(0.0, 0.3))
            os.kill(pid, signal.SIGKILL)
            assert server.stdout.readline() == "reaped\n"
            loaded = irgraph.load(target)
            assert same(loaded, old) or same(loaded, new), loaded[0].name
            seen[loaded[0].name] += 1
    finally:
        server.stdin.close()
        server.wait(timeout=60)
    assert sum(seen.values()) == 15
    irgraph.save(target, *new)                # a later save removes what killed ones left
    assert len(os.listdir(target)) == 3 and same(irgraph.load(target), new)


def test_failure_at_every_step_of_a_save_leaves_old_or_new(tmp_path, monkeypatch):
    """Deterministic companion of the kill test: the save is stopped at its k-th file
    operation (open, fsync, rename, unlink), for every k."""
    old, new = (small_graph("old"), small_weights()), (small_graph("new"), {"w": np.ones(
        (3, 2), np.float32)})

    class Stop(BaseException):
        pass

    real = {n: getattr(os, n) for n in ("open", "fsync", "replace", "unlink")}
    k, completed = 1, False
    while not completed:
        irgraph.save(tmp_path, *old)
        count = [0]

        def stop_at(name):
            def op(*a, **kw):
                count[0] += 1
                if count[0] == k:
                    raise Stop(name)
                return real[name](*a, **kw)
            return op
        for n in real:
            monkeypatch.setattr(ckpt.os, n, stop_at(n))
        try:
            irgraph.save(tmp_path, *new)
            completed = True
        except Stop:
            pass
        finally:
            for n, f in real.items():
                monkeypatch.setattr(ckpt.os, n, f)
        loaded = irgraph.load(tmp_path)
        assert same(loaded, new) if completed else (same(loaded, old) or same(loaded, new)), k
        k += 1
    assert k > 8        # every operation of the save was a stopping point


# ------------------------------------------------------------------ names and file kinds
@pytest.mark.parametrize("name", ["../outside.ir", "ABSOLUTE", "sub/graph.ir", ".hidden.ir",
                                  "manifest.json", "graph.ir\x00", "", 7, None])
def test_graph_name_must_be_a_plain_file_name(folder, name):
    """The outside file holds the right bytes, so only the name check can refuse it."""
    text = data_file(folder, "graph").read_bytes()
    (folder.parent / "outside.ir").write_bytes(text)
    m = manifest(folder)
    m["files"]["graph"]["name"] = str(folder.parent / "outside.ir") if name == "ABSOLUTE" \
        else name
    write_manifest(folder, m)
    with pytest.raises(CheckpointError, match=r"manifest\.json: files\.graph\.name .* is not a "
                                              r"plain file name"):
        irgraph.load(folder)


@pytest.mark.parametrize("role", ["graph", "weights", "manifest"])
def test_symlinked_files_are_refused(folder, role):
    path = folder / "manifest.json" if role == "manifest" else data_file(folder, role)
    outside = folder.parent / "outside"
    path.rename(outside)                      # the same bytes, now outside the folder
    path.symlink_to(outside)
    with pytest.raises(CheckpointError, match=re.escape(path.name) + r": is a symbolic link"):
        irgraph.load(folder)


def test_dev_zero_in_place_of_the_weights_is_refused(folder):
    path = data_file(folder, "weights")
    path.unlink()
    path.symlink_to("/dev/zero")
    with pytest.raises(CheckpointError, match=r"weights-\w+\.npz: is a symbolic link"):
        irgraph.load(folder)


@pytest.mark.parametrize("role", ["graph", "weights", "manifest"])
def test_fifo_or_folder_in_place_of_a_file_is_refused_without_hanging(folder, role):
    path = folder / "manifest.json" if role == "manifest" else data_file(folder, role)
    path.unlink()
    os.mkfifo(path)                           # opening it to read would block for a writer

    def hung(*_):
        raise AssertionError(f"load blocked on the FIFO {path.name}")
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)                          # only a guard against a hang, never reached
    try:
        with pytest.raises(CheckpointError, match=re.escape(path.name) +
                           r": is not a regular file"):
            irgraph.load(folder)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    path.unlink()
    path.mkdir()
    with pytest.raises(CheckpointError, match=r": is not a regular file"):
        irgraph.load(folder)


def test_missing_folder_and_files(tmp_path, folder):
    with pytest.raises(CheckpointError, match=r"nowhere: cannot open the checkpoint folder"):
        irgraph.load(tmp_path / "nowhere")
    data_file(folder, "weights").unlink()
    with pytest.raises(CheckpointError, match=r"weights-\w+\.npz: is missing"):
        irgraph.load(folder)
    (folder / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match=r"manifest\.json: is missing"):
        irgraph.load(folder)


def test_save_never_writes_through_symlinks(tmp_path):
    """Every name save writes (manifest, data files) is a link to a victim outside: the links
    are replaced, the victims stay as they were."""
    g, w = small_graph(), small_weights()
    irgraph.save(tmp_path / "probe", g, w)
    names = os.listdir(tmp_path / "probe")
    target = tmp_path / "target"
    target.mkdir()
    for n in names:
        victim = tmp_path / f"victim-{n}"
        victim.write_text("precious")
        (target / n).symlink_to(victim)
    irgraph.save(target, g, w)
    for n in names:
        assert (tmp_path / f"victim-{n}").read_text() == "precious"
        assert not (target / n).is_symlink() and (target / n).is_file()
    assert same(irgraph.load(target), (g, w))


# ------------------------------------------------------------------ zip bombs
def zip_one(member: str, data: bytes, size: int, method: int) -> bytes:
    """A zip of one member whose directory declares ``size`` uncompressed bytes (and the
    CRC of ``data``: right for a stored member that tells its true size)."""
    n, crc = member.encode(), zlib.crc32(data)
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0x21, crc, len(data),
                        size, len(n), 0) + n
    central = struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, method, 0, 0x21, crc,
                          len(data), size, len(n), 0, 0, 0, 0, 0, 0) + n
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, len(central),
                      len(local) + len(data), 0)
    return local + data + central + end


def npy_header(shape, dtype="<f4") -> bytes:
    import io
    f = io.BytesIO()
    np.lib.format.write_array_header_1_0(f, {"descr": dtype, "fortran_order": False,
                                             "shape": shape})
    return f.getvalue()


def deflate_bomb(header: bytes, mib: int) -> bytes:
    """``header`` then ``mib`` MiB of zeros, deflated (about 1 KiB per MiB): each flushed
    block of zeros compresses to the same bytes, so it is repeated, not recomputed."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(header) + c.flush(zlib.Z_FULL_FLUSH)
    c.compress(bytes(1 << 20)), c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
    return head + block * mib + c.flush()


HEADER = npy_header((3, 2))
MIB = 1 << 20
BOMBS = {
    # a real 768 MiB deflate bomb for the 3x2 weight
    "deflated_768MiB": lambda: zip_one("w.npy", deflate_bomb(HEADER, 768), len(HEADER) + 768 * MIB,
                                       zipfile.ZIP_DEFLATED),
    # stored, the directory claims 768 MiB
    "stored_claims_768MiB": lambda: zip_one("w.npy", HEADER + bytes(24), len(HEADER) + 768 * MIB,
                                            zipfile.ZIP_STORED),
    # the .npy header declares 10^10 floats; the directory's size is the honest 24 bytes
    "header_declares_huge": lambda: zip_one("w.npy", npy_header((100000, 100000)) + bytes(24),
                                            len(npy_header((100000, 100000))) + 24,
                                            zipfile.ZIP_STORED),
}


@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_zip_bombs_are_refused_before_anything_is_inflated(folder, bomb, monkeypatch):
    m = manifest(folder)
    del m["arrays"]["b"]
    write_manifest(folder, m)
    reseal(folder, "weights", BOMBS[bomb]())

    real = zipfile._get_decompressor

    def inflater(method):
        if method != zipfile.ZIP_STORED:
            raise AssertionError("load started inflating a member")
        return real(method)
    monkeypatch.setattr(zipfile, "_get_decompressor", inflater)
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match=r"weights-\w+\.npz: member 'w\.npy' (is "
                                                  r"compressed|declares|holds float32\[100000)"):
            irgraph.load(folder)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * MIB, peak


# ------------------------------------------------------------------ arrays vs manifest
def test_wrong_dtype_in_the_manifest_or_the_file(folder):
    m = manifest(folder)
    m["arrays"]["w"]["dtype"] = "float64"
    write_manifest(folder, m)
    with pytest.raises(CheckpointError, match=r"manifest\.json: weight 'w' is float64\[3, 2\], "
                                              r"graph 'small' in graph-\w+\.ir declares "
                                              r"float32\[3, 2\]"):
        irgraph.load(folder)
    m["arrays"]["w"]["dtype"] = "object"
    write_manifest(folder, m)
    with pytest.raises(CheckpointError, match=r"arrays\['w'\]\.dtype 'object' is not one of"):
        irgraph.load(folder)
    m["arrays"]["w"]["dtype"] = "float32"
    write_manifest(folder, m)
    reseal(folder, "weights", _npz({"w": np.zeros((3, 2), np.int32), "b": np.zeros(2, np.float32)}))
    with pytest.raises(CheckpointError, match=r"member 'w\.npy' holds int32\[3, 2\], the "
                                              r"manifest declares float32\[3, 2\]"):
        irgraph.load(folder)


def _npz(arrays) -> bytes:
    import io
    f = io.BytesIO()
    np.savez(f, **arrays)
    return f.getvalue()


def test_object_arrays_are_never_unpickled(folder):
    evil = np.array([{"a": 1}, [1, 2], None, 4, 5, 6], dtype=object).reshape(3, 2)
    import io
    f = io.BytesIO()
    np.savez(f, allow_pickle=True, w=evil, b=np.zeros(2, np.float32))
    reseal(folder, "weights", f.getvalue())
    with pytest.raises(CheckpointError, match=r"member 'w\.npy'"):
        irgraph.load(folder)


def test_missing_and_extra_weights(folder):
    reseal(folder, "weights", _npz({"w": small_weights()["w"]}))
    with pytest.raises(CheckpointError, match=r"weights-\w+\.npz: lacks arrays \['b'\] the "
                                              r"manifest lists"):
        irgraph.load(folder)
    reseal(folder, "weights", _npz({**small_weights(), "c": np.zeros(2, np.float32)}))
    with pytest.raises(CheckpointError, match=r"holds arrays \['c'\] the manifest does not"):
        irgraph.load(folder)
    m = manifest(folder)
    m["arrays"]["c"] = {"dtype": "float32", "shape": [2]}
    write_manifest(folder, m)
    with pytest.raises(CheckpointError, match=r"manifest\.json: lists weights \['c'\] that "
                                              r"graph 'small'"):
        irgraph.load(folder)
    del m["arrays"]["b"], m["arrays"]["c"]   # a listed subset still loads (partial weights)
    write_manifest(folder, m)
    reseal(folder, "weights", _npz({"w": small_weights()["w"]}))
    g, w = irgraph.load(folder)
    assert sorted(w) == ["w"] and np.array_equal(w["w"], small_weights()["w"])


def test_declared_sizes_are_bounded_by_the_file(folder):
    m = manifest(folder)
    m["arrays"]["w"]["shape"] = [300000, 200000]
    write_manifest(folder, m)
    with pytest.raises(CheckpointError, match=r"declares \d+ bytes of arrays, more than the "
                                              r"\d+ bytes of its weights file"):
        irgraph.load(folder)


# ------------------------------------------------------------------ checksums
@pytest.mark.parametrize("role", ["graph", "weights"])
def test_a_flipped_bit_or_a_truncation_is_a_checksum_error(folder, role):
    path = data_file(folder, role)
    data = bytearray(path.read_bytes())
    for bit in range(0, 8 * len(data), 8 * len(data) // 7 + 1):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        path.write_bytes(bytes(flipped))
        with pytest.raises(CheckpointError, match=re.escape(path.name) +
                           r": checksum mismatch"):
            irgraph.load(folder)
    path.write_bytes(bytes(data[:-1]))
    with pytest.raises(CheckpointError, match=rf": is {len(data) - 1} bytes, the manifest "
                                              rf"declares {len(data)}"):
        irgraph.load(folder)


def test_invalid_graph_text_with_a_valid_checksum(folder):
    reseal(folder, "graph", b"graph broken(%x: f32[2]) {\n  return %y\n}\n")
    with pytest.raises(CheckpointError, match=r"graph-\w+\.ir: is not a valid graph: line 2"):
        irgraph.load(folder)
    reseal(folder, "graph", b"\xff\xfe")
    with pytest.raises(CheckpointError, match=r"graph-\w+\.ir: is not UTF-8 text"):
        irgraph.load(folder)


# ------------------------------------------------------------------ malformed manifests
@pytest.fixture(scope="module")
def good(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "ck"
    irgraph.save(path, small_graph(), small_weights())
    return path, manifest(path)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) |
                    st.text(max_size=12),
                    lambda kids: st.lists(kids, max_size=4) |
                    st.dictionaries(st.text(max_size=8), kids, max_size=4), max_leaves=12)


def check_load(path: Path) -> None:
    """Either the one error class, or (the change kept the manifest's meaning) the original."""
    try:
        loaded = irgraph.load(path)
    except CheckpointError as e:
        assert str(e).startswith(str(path)), e
        return
    assert same(loaded, (small_graph(), small_weights()))


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_mutated_manifests_give_only_checkpoint_errors(good, data):
    path, valid = good
    m = copy.deepcopy(valid)
    node = m
    while True:                               # walk down to a random place, then change it
        keys = list(node) if isinstance(node, dict) else []
        key = data.draw(st.sampled_from(keys)) if keys else None
        if key is None or not isinstance(node[key], dict) or data.draw(st.booleans()):
            break
        node = node[key]
    action = data.draw(st.sampled_from(["replace", "delete", "add"]))
    if action == "replace" and key is not None:
        node[key] = data.draw(JSON)
    elif action == "delete" and key is not None:
        del node[key]
    else:
        node[data.draw(st.text(max_size=8))] = data.draw(JSON)
    write_manifest(path, m)
    check_load(path)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(doc=JSON | st.binary(max_size=64).map(lambda b: b.decode("latin-1")),
       cut=st.integers(0, 2000), raw=st.booleans())
def test_arbitrary_manifests_give_only_checkpoint_errors(good, doc, cut, raw):
    path, valid = good
    text = json.dumps(valid)[:cut] if raw else json.dumps(doc)
    (path / "manifest.json").write_text(text, encoding="utf-8", errors="surrogatepass")
    check_load(path)


def test_manifest_limits(folder):
    (folder / "manifest.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(CheckpointError, match=r"manifest\.json: is not valid JSON"):
        irgraph.load(folder)
    (folder / "manifest.json").write_text('{"format": "irgraph-2", "format": "irgraph-2"}')
    with pytest.raises(CheckpointError, match=r"duplicate key 'format'"):
        irgraph.load(folder)
    with open(folder / "manifest.json", "wb") as f:
        f.truncate(ckpt.MAX_MANIFEST_BYTES + 1)
    with pytest.raises(CheckpointError, match=r"manifest\.json: is \d+ bytes, over the limit"):
        irgraph.load(folder)
