"""Checkpoint folders: written atomically, checksummed, read with bounded, local reads.

A folder holds ``manifest.json`` and content-named data files, ``graph-<sha256>.ir`` (graph
text) and ``weights-<sha256>.npz`` (an uncompressed zip of ``.npy`` arrays, as ``np.savez``
writes). The manifest names each data file with its sha256 and size, declares every array's
dtype and shape, and carries the caller's metadata::

    {"format": "irgraph-2", "kind": "graph" | "training_state",
     "files": {"graph": {"name": ..., "sha256": ..., "bytes": ...}, "weights": {...}},
     "arrays": {"fc.weight": {"dtype": "float32", "shape": [3, 5]}, ...},
     "meta": {...}}

``write`` puts new data files beside the old ones (temporary name, fsync, rename), fsyncs the
folder, then replaces the manifest the same way: whatever instant the writer dies at, the
folder's manifest is the old one or the new one, and both name files that are whole. Files
no manifest names any more are removed last. Writers (and readers) take a lock on the folder.

``CheckpointReader`` refuses, with ``CheckpointError`` naming the file and the fault: names
that are not plain file names, symbolic links (``O_NOFOLLOW``), anything but a regular file
(checked with ``fstat`` before reading), files bigger than declared, checksum mismatches,
malformed manifests, arrays missing, extra or of another dtype/shape than declared, and
compressed or oversized zip members (checked in the zip directory and the ``.npy`` header
before any array byte is read; nothing is ever inflated or unpickled).
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import stat
import struct
import zipfile
import zlib

import numpy as np

from .types import DTYPES, check_shape

FORMAT = "irgraph-2"
MANIFEST = "manifest.json"
KINDS = ("graph", "training_state")
ROLES = {"graph": ".ir", "weights": ".npz"}     # data file role -> extension
MAX_MANIFEST_BYTES = 16 << 20
MAX_NPY_HEADER = 1 << 16
MAX_FILE_BYTES = 1 << 48

_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,254}\Z")   # a plain name, no '/'
_ARRAY_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,254}\Z")
_DATA_FILE = re.compile(r"(graph|weights)-[0-9a-f]{64}\.(ir|npz)\Z")
_TEMP_FILE = re.compile(r"\.tmp-[0-9a-f]{16}\Z")
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError,
               RuntimeError, NotImplementedError, struct.error, zlib.error, OverflowError,
               KeyError, IndexError)


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be read (or written) safely; the message names the
    file and what is wrong with it."""


# ---------------------------------------------------------------- writing
def write(path, kind: str, arrays: dict[str, np.ndarray], meta: dict | None = None,
          graph_text: str | None = None) -> None:
    """Replace the checkpoint in folder ``path`` (created if absent) atomically."""
    if kind not in KINDS:
        raise ValueError(f"checkpoint kind must be one of {KINDS}, got {kind!r}")
    arrays = {name: _array_to_save(name, a) for name, a in arrays.items()}
    os.makedirs(path, exist_ok=True)
    dfd = _open_folder(path)
    try:
        _lock(dfd, fcntl.LOCK_EX)
        files = {}
        if graph_text is not None:
            data = graph_text.encode()
            files["graph"] = _write_data(dfd, "graph", lambda f: f.write(data))
        files["weights"] = _write_data(dfd, "weights", lambda f: _write_npz(f, arrays))
        _fsync_folder(dfd)                              # the data files' names are durable
        manifest = {"format": FORMAT, "kind": kind, "files": files,
                    "arrays": {n: {"dtype": a.dtype.name, "shape": list(a.shape)}
                               for n, a in arrays.items()},
                    "meta": dict(meta or {})}
        text = (json.dumps(manifest, indent=1, sort_keys=True, allow_nan=False) + "\n").encode()
        tmp, _, _ = _write_temp(dfd, lambda f: f.write(text))
        os.replace(tmp, MANIFEST, src_dir_fd=dfd, dst_dir_fd=dfd)     # the commit point
        _fsync_folder(dfd)
        _remove_stale(dfd, {f["name"] for f in files.values()})
    finally:
        os.close(dfd)                                   # releases the lock


def _array_to_save(name, a) -> np.ndarray:
    if not isinstance(name, str) or not _ARRAY_NAME.match(name):
        raise ValueError(f"array name {name!r} cannot be saved: use letters, digits and "
                         f"'_.:-' (not first)")
    a = np.asarray(a)
    if a.dtype.name not in DTYPES:
        raise ValueError(f"array {name!r} is {a.dtype}; a checkpoint holds {sorted(DTYPES)}")
    return a if a.flags.c_contiguous else a.copy(order="C")     # 0-d stays 0-d


def _lock(dfd: int, how: int) -> None:
    """Writers exclude each other and readers; a filesystem without flock goes unlocked."""
    try:
        fcntl.flock(dfd, how)
    except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            raise


def _fsync_folder(dfd: int) -> None:
    try:
        os.fsync(dfd)
    except OSError as e:
        if e.errno != errno.EINVAL:         # a filesystem that cannot sync a folder
            raise


def _open_folder(path) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise CheckpointError(f"{os.fspath(path)}: cannot open the checkpoint folder: "
                              f"{e.strerror}") from None


def _write_temp(dfd: int, writer) -> tuple[str, str, int]:
    """Write a new temporary file in the folder; return (name, sha256, size) once synced."""
    name = ".tmp-" + secrets.token_hex(8)
    fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o644, dir_fd=dfd)
    try:
        with os.fdopen(fd, "w+b") as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
            f.seek(0)
            h, size = hashlib.sha256(), 0
            while chunk := f.read(1 << 20):
                h.update(chunk)
                size += len(chunk)
    except BaseException:
        _unlink(dfd, name)
        raise
    return name, h.hexdigest(), size


def _write_data(dfd: int, role: str, writer) -> dict:
    tmp, digest, size = _write_temp(dfd, writer)
    name = f"{role}-{digest}{ROLES[role]}"
    os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    return {"name": name, "sha256": digest, "bytes": size}


# dtypes that .npy cannot describe, stored as their raw bits: the manifest keeps the dtype
STORED_AS = {"bfloat16": "uint16"}


def _stored_dtype(dtype: str) -> np.dtype:
    """The dtype of the .npy member holding an array of ``dtype``."""
    return np.dtype(STORED_AS.get(dtype, dtype))


def _write_npz(f, arrays: dict[str, np.ndarray]) -> None:
    """An uncompressed zip of ``<name>.npy`` members (what ``np.load`` reads), with fixed
    timestamps so that equal contents give equal bytes. A bfloat16 array is stored as its
    16-bit words (uint16); the manifest says bfloat16."""
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, a in arrays.items():
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as m:
                np.lib.format.write_array(m, a.view(_stored_dtype(a.dtype.name)),
                                          allow_pickle=False)


def _remove_stale(dfd: int, keep: set[str]) -> None:
    for entry in os.listdir(dfd):
        if (_DATA_FILE.match(entry) and entry not in keep) or _TEMP_FILE.match(entry):
            _unlink(dfd, entry)


def _unlink(dfd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dfd)
    except FileNotFoundError:
        pass


# ---------------------------------------------------------------- reading
class CheckpointReader:
    """An open checkpoint folder whose manifest has been read and validated (shared lock held
    until ``close``). ``declared`` maps each array name to its (dtype name, shape)."""

    def __init__(self, path, kind: str):
        self.path = os.fspath(path)
        self._dfd = _open_folder(path)
        try:
            _lock(self._dfd, fcntl.LOCK_SH)
            self._read_manifest(kind)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "CheckpointReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._dfd >= 0:
            os.close(self._dfd)
            self._dfd = -1

    def error(self, name: str, what: str) -> CheckpointError:
        return CheckpointError(f"{os.path.join(self.path, name)}: {what}")

    # -- the manifest
    def _read_manifest(self, kind: str) -> None:
        fd, size = self._open(MANIFEST)
        with os.fdopen(fd, "rb") as f:
            if size > MAX_MANIFEST_BYTES:
                raise self.error(MANIFEST, f"is {size} bytes, over the limit of "
                                           f"{MAX_MANIFEST_BYTES}")
            raw = f.read(size)
        if len(raw) != size:
            raise self.error(MANIFEST, f"ends after {len(raw)} of its {size} bytes")
        bad = lambda what: self.error(MANIFEST, what)  # noqa: E731
        try:
            m = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
        except (ValueError, RecursionError) as e:       # UnicodeDecodeError is a ValueError
            raise bad(f"is not valid JSON: {e}") from None
        if not isinstance(m, dict):
            raise bad(f"must be a JSON object, got {type(m).__name__}")
        if m.get("format") != FORMAT:
            raise bad(f"unknown format {_r(m.get('format'))}, expected {FORMAT}")
        _keys(m, {"format", "kind", "files", "arrays", "meta"}, "the manifest", bad)
        if m["kind"] != kind:
            raise bad(f"holds a checkpoint of kind {_r(m['kind'])}, expected {kind!r}")
        self.files = self._files(m["files"], bad)
        self.declared = self._arrays(m["arrays"], bad)
        if not isinstance(m["meta"], dict):
            raise bad(f"'meta' must be an object, got {type(m['meta']).__name__}")
        self.meta = m["meta"]

    def _files(self, files, bad) -> dict[str, dict]:
        if not isinstance(files, dict):
            raise bad(f"'files' must be an object, got {type(files).__name__}")
        for role, entry in files.items():
            if role not in ROLES:
                raise bad(f"'files' names an unknown role {_r(role)} (known: {sorted(ROLES)})")
            where = f"files.{role}"
            if not isinstance(entry, dict):
                raise bad(f"{where} must be an object, got {type(entry).__name__}")
            _keys(entry, {"name", "sha256", "bytes"}, where, bad)
            name, digest, size = entry["name"], entry["sha256"], entry["bytes"]
            if not isinstance(name, str) or not _FILE_NAME.match(name) or name == MANIFEST \
                    or not name.endswith(ROLES[role]):
                raise bad(f"{where}.name {_r(name)} is not a plain file name ending in "
                          f"{ROLES[role]} (no folders, no leading '.')")
            if not isinstance(digest, str) or not _SHA256.match(digest):
                raise bad(f"{where}.sha256 {_r(digest)} is not 64 lowercase hex digits")
            if type(size) is not int or not 0 <= size <= MAX_FILE_BYTES:
                raise bad(f"{where}.bytes {_r(size)} is not a byte count")
        if "weights" not in files:
            raise bad("'files' has no 'weights' entry")
        return files

    def _arrays(self, arrays, bad) -> dict[str, tuple[str, tuple[int, ...]]]:
        if not isinstance(arrays, dict):
            raise bad(f"'arrays' must be an object, got {type(arrays).__name__}")
        out, total = {}, 0
        for name, decl in arrays.items():
            where = f"arrays[{_r(name)}]"
            if not _ARRAY_NAME.match(name):
                raise bad(f"{where}: not a valid array name")
            if not isinstance(decl, dict):
                raise bad(f"{where} must be an object, got {type(decl).__name__}")
            _keys(decl, {"dtype", "shape"}, where, bad)
            dtype, shape = decl["dtype"], decl["shape"]
            if not isinstance(dtype, str) or dtype not in DTYPES:
                raise bad(f"{where}.dtype {_r(dtype)} is not one of {sorted(DTYPES)}")
            if not isinstance(shape, list) or any(type(d) is not int for d in shape):
                raise bad(f"{where}.shape {_r(shape)} is not a list of ints")
            try:
                shape = check_shape(shape, dtype)
            except (TypeError, ValueError) as e:
                raise bad(f"{where}.shape: {e}") from None
            total += _nbytes(dtype, shape)
            out[name] = (dtype, shape)
        if total > self.files["weights"]["bytes"]:
            raise bad(f"declares {total} bytes of arrays, more than the "
                      f"{self.files['weights']['bytes']} bytes of its weights file")
        return out

    # -- what the caller expects
    def require(self, *roles: str) -> None:
        for role in roles:
            if role not in self.files:
                raise self.error(MANIFEST, f"'files' has no {role!r} entry")

    def check_arrays(self, expected: dict[str, tuple[str, tuple[int, ...]]], what: str,
                     whose: str, require_all: bool = True) -> None:
        """Every declared array must be one ``whose`` expects, with the expected (dtype,
        shape); with ``require_all`` every expected array must be declared. Checked before
        any array byte is read."""
        extra = sorted(set(self.declared) - set(expected))
        missing = sorted(set(expected) - set(self.declared)) if require_all else []
        if extra:
            raise self.error(MANIFEST, f"lists {what}s {extra} that {whose} has no place for")
        if missing:
            raise self.error(MANIFEST, f"lacks {what}s {missing} that {whose} needs")
        for name, (dtype, shape) in self.declared.items():
            want = (expected[name][0], tuple(expected[name][1]))
            if (dtype, shape) != want:
                raise self.error(MANIFEST, f"{what} {name!r} is {dtype}{list(shape)}, {whose} "
                                           f"declares {want[0]}{list(want[1])}")

    # -- data files
    def read_text(self, role: str) -> str:
        data = self._read_verified(role)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.error(self.files[role]["name"], f"is not UTF-8 text: {e}") from None

    def read_arrays(self) -> dict[str, np.ndarray]:
        """The declared arrays, each checked in the zip directory and its ``.npy`` header
        against the manifest before its bytes are read."""
        entry = self.files["weights"]
        name = entry["name"]
        fd, size = self._open(name)
        with os.fdopen(fd, "rb") as f:
            self._verify(f, size, entry)
            f.seek(0)
            try:
                with zipfile.ZipFile(f) as zf:
                    members = self._members(zf, name)
                    return {n: self._read_member(zf, members[n], name, *self.declared[n])
                            for n in self.declared}
            except CheckpointError:
                raise
            except _ZIP_ERRORS as e:
                raise self.error(name, f"is not a readable npz file: {e}") from None

    def _members(self, zf: zipfile.ZipFile, fname: str) -> dict[str, zipfile.ZipInfo]:
        members = {}
        for info in zf.infolist():
            if not info.filename.endswith(".npy") or info.filename[:-4] in members:
                raise self.error(fname, f"member {_r(info.filename)} is not one '<array>.npy'")
            members[info.filename[:-4]] = info
        extra = sorted(set(members) - set(self.declared))
        missing = sorted(set(self.declared) - set(members))
        if extra or missing:
            raise self.error(fname, f"holds arrays {extra} the manifest does not list"
                             if extra else f"lacks arrays {missing} the manifest lists")
        for n, info in members.items():
            dtype, shape = self.declared[n]
            need = _nbytes(dtype, shape)
            if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
                raise self.error(fname, f"member {info.filename!r} is compressed or "
                                        f"encrypted; checkpoint arrays are stored as is")
            if not need < info.file_size <= need + MAX_NPY_HEADER or \
                    info.compress_size != info.file_size:
                raise self.error(fname, f"member {info.filename!r} declares "
                                        f"{info.file_size} bytes ({info.compress_size} "
                                        f"stored), but {dtype}{list(shape)} needs {need} "
                                        f"plus a header")
        return members

    def _read_member(self, zf, info, fname, dtype: str, shape) -> np.ndarray:
        where = f"member {info.filename!r}"
        with zf.open(info) as m:
            version = np.lib.format.read_magic(m)
            if version not in ((1, 0), (2, 0)):
                raise self.error(fname, f"{where}: unknown .npy version {version}")
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            hshape, fortran, hdtype = read(m, max_header_size=MAX_NPY_HEADER)
            if hdtype != _stored_dtype(dtype) or hdtype.hasobject or tuple(hshape) != shape:
                raise self.error(fname, f"{where} holds {hdtype}{list(hshape)}, the manifest "
                                        f"declares {dtype}{list(shape)}")
            need = _nbytes(dtype, shape)
            if info.file_size - m.tell() != need:
                raise self.error(fname, f"{where} has {info.file_size - m.tell()} data bytes, "
                                        f"{dtype}{list(shape)} needs {need}")
            out = np.empty(shape[::-1] if fortran else shape, dtype)
            view = memoryview(out.reshape(-1).view(np.uint8))
            got = 0
            while got < need:
                n = m.readinto(view[got:])
                if not n:
                    raise self.error(fname, f"{where} ends after {got} of {need} data bytes")
                got += n
        return out.T.copy(order="C") if fortran else out

    def _read_verified(self, role: str) -> bytes:
        entry = self.files[role]
        fd, size = self._open(entry["name"])
        with os.fdopen(fd, "rb") as f:
            data = self._verify(f, size, entry, keep=True)
        return data

    def _verify(self, f, size: int, entry: dict, keep: bool = False) -> bytes | None:
        """The file must have the declared size and sha256 (read in bounded chunks)."""
        name = entry["name"]
        if size != entry["bytes"]:
            raise self.error(name, f"is {size} bytes, the manifest declares {entry['bytes']}")
        h, parts, left = hashlib.sha256(), [], size
        while left:
            try:
                chunk = f.read(min(left, 1 << 20))
            except OSError as e:
                raise self.error(name, f"cannot be read: {e.strerror}") from None
            if not chunk:
                raise self.error(name, f"ends {left} bytes before its declared size")
            h.update(chunk)
            left -= len(chunk)
            if keep:
                parts.append(chunk)
        if h.hexdigest() != entry["sha256"]:
            raise self.error(name, "checksum mismatch: the file is not the one the manifest "
                                   "vouches for (corrupt or tampered)")
        return b"".join(parts) if keep else None

    def _open(self, name: str) -> tuple[int, int]:
        """Open a plain file name in the folder: no symbolic link, nothing but a regular
        file (a FIFO or device is refused before any read); returns (fd, size)."""
        if not _FILE_NAME.match(name) and name != MANIFEST:
            raise self.error(name, "is not a plain file name")
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, dir_fd=self._dfd)
        except FileNotFoundError:
            raise self.error(name, "is missing") from None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise self.error(name, "is a symbolic link; checkpoint files must be regular "
                                       "files in the folder") from None
            raise self.error(name, f"cannot be opened: {e.strerror}") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise self.error(name, "is not a regular file")
        return fd, st.st_size


def _r(value) -> str:
    """A manifest value in a message, cut short."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _nbytes(dtype: str, shape) -> int:
    n = np.dtype(dtype).itemsize
    for d in shape:
        n *= d
    return n


def _keys(d: dict, allowed: set[str], where: str, bad) -> None:
    missing, extra = sorted(allowed - set(d)), sorted(set(d) - allowed)
    if missing or extra:
        raise bad(f"{where} " + (f"lacks {missing}" if missing else
                                 f"has unknown keys {_r(extra)}"))


def _no_duplicate_keys(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out
