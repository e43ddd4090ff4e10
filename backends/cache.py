"""The on-disk compile caches of every backend: one root folder, one entry format, one set of
checks (docs/reliability.md, "Compile caches").

    $IRGRAPH_CACHE_DIR (default ~/.cache/irgraph)     owned by the user, not group/other-writable
        cache-secret                                   32 random bytes, mode 0600: the HMAC key
        llvm/<key>.o                                   object code of the LLVM backend
        triton/<name>.py                               generated Triton kernel sources
        pipeline/<key>.ir                              pass pipeline results (graph text)

An entry is ``MAGIC <hex HMAC-SHA256>\\n`` followed by its payload; the HMAC (keyed by the
secret) covers the cache's name, the entry's key and the payload, so an entry that was
truncated, emptied, bit-flipped, planted, or renamed onto another key fails the check. Only
a checked payload is ever returned: a damaged entry is deleted (with a ``CacheWarning``) and
the caller compiles anew. A folder or secret that another user could have written is refused
(``CacheWarning``) and the compile goes on without the cache. Entries are written atomically
(temporary files in the same folder, one sync for all of a compile's entries,
``os.replace``); the folders together stay under
``$IRGRAPH_CACHE_MAX_MB`` megabytes (default 512), least recently used entries evicted first
(a hit touches its entry).
"""
from __future__ import annotations

import errno
import hashlib
import hmac
import os
import re
import stat
import sys
import tempfile
import time
import warnings

from functools import lru_cache
from pathlib import Path
from typing import Iterable

from .base import fork_safe_locks

ENV_DIR = "IRGRAPH_CACHE_DIR"
ENV_MAX_MB = "IRGRAPH_CACHE_MAX_MB"
DEFAULT_MAX_MB = 512.0
SECRET_NAME = "cache-secret"
SECRET_BYTES = 32
MAGIC = b"# irgraph-cache v1 hmac-sha256="
_MAC_HEX = 64
_TEMP_PREFIX = ".tmp-"
_STALE_TEMP_S = 3600.0
_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")
# the packages whose source shapes generated code: a change in any file invalidates entries
SOURCE_PACKAGES = ("irgraph", "irgraph.passes", "irgraph.backends")


class CacheWarning(UserWarning):
    """The on-disk cache was refused, or one of its entries was damaged or could not be
    written; compiling goes on (without the cache, or anew)."""


def root() -> Path:
    """The cache root: ``$IRGRAPH_CACHE_DIR``, else ``~/.cache/irgraph``."""
    env = os.environ.get(ENV_DIR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "irgraph"


def max_bytes() -> int:
    """The size limit of the whole cache root, from ``$IRGRAPH_CACHE_MAX_MB`` (0: store
    nothing)."""
    raw = os.environ.get(ENV_MAX_MB)
    if raw is None or raw.strip() == "":
        return int(DEFAULT_MAX_MB * 2**20)
    try:
        mb = float(raw)
    except ValueError:
        mb = -1.0
    if not mb >= 0 or mb == float("inf"):
        raise ValueError(f"{ENV_MAX_MB} must be a finite number of megabytes >= 0, got {raw!r}")
    return int(mb * 2**20)


def _uid() -> int | None:
    """This process's user id (None where the platform has none: no ownership checks)."""
    return os.getuid() if hasattr(os, "getuid") else None


def _check_private(st: os.stat_result, what: str, path: Path, secret: bool = False) -> None:
    """Raise _Refused unless ``st`` is owned by this user and nobody else may write it (a
    secret: nobody else may even read it)."""
    uid = _uid()
    if uid is not None and st.st_uid != uid:
        raise _Refused(f"{what} {path} is owned by uid {st.st_uid}, not by this user "
                       f"(uid {uid})")
    bad = stat.S_IMODE(st.st_mode) & (0o077 if secret else 0o022)
    if bad:
        who = "group/others" if secret else "group/others (writable)"
        raise _Refused(f"{what} {path} has mode {stat.S_IMODE(st.st_mode):04o}: "
                       f"{who} may {'read or write' if secret else 'write'} it "
                       f"(chmod {'600' if secret else '700'} it, or remove it)")


class _Refused(Exception):
    pass


def _private_dir(path: Path) -> None:
    """Create ``path`` (mode 0700) if absent; refuse it if another user could write it."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.stat(path)
    except OSError as e:
        raise _Refused(f"cache folder {path} cannot be created or read ({e})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise _Refused(f"cache folder {path} is not a folder")
    _check_private(st, "cache folder", path)


def _read_secret(path: Path) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as e:
        raise _Refused(f"cache secret {path} cannot be read ({e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _Refused(f"cache secret {path} is not a regular file")
        _check_private(st, "cache secret", path, secret=True)
        data = os.read(fd, SECRET_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) != SECRET_BYTES:
        raise _Refused(f"cache secret {path} holds {len(data)} bytes, not {SECRET_BYTES} "
                       f"(remove it: a new one is made)")
    return data


def _secret(folder: Path) -> bytes:
    """The per-user HMAC key beside the cache, created (mode 0600, atomically) if absent."""
    path = folder / SECRET_NAME
    key = _read_secret(path)
    if key is not None:
        return key
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=_TEMP_PREFIX)     # mode 0600
    try:
        _write(fd, os.urandom(SECRET_BYTES))
        os.fsync(fd)
        os.close(fd)
        fd = -1
        try:
            os.link(tmp, path)              # never replaces one another process just made
        except FileExistsError:
            pass
    except OSError as e:
        raise _Refused(f"cache secret {path} cannot be created ({e})") from None
    finally:
        if fd >= 0:
            os.close(fd)
        _unlink(Path(tmp))
    key = _read_secret(path)
    if key is None:
        raise _Refused(f"cache secret {path} vanished while being created")
    return key


def _write(fd: int, data: bytes) -> None:
    """All of ``data`` to ``fd`` (the one place entries and secrets are written)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError:
        pass


def _warn(msg: str) -> None:
    warnings.warn(msg, CacheWarning, stacklevel=3)


# ------------------------------------------------------------------ what shapes the code
def tree_hash(roots: Iterable[Path]) -> str:
    """sha256 over every ``*.py`` file under ``roots`` (relative path and bytes, in a fixed
    order; ``__pycache__`` skipped)."""
    h = hashlib.sha256()
    for top in roots:
        top = Path(top)
        h.update(f"root {top.name}\0".encode())
        for path in sorted(top.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            data = path.read_bytes()
            h.update(f"{path.relative_to(top).as_posix()}\0{len(data)}\0".encode())
            h.update(data)
    return h.hexdigest()


def package_version() -> str:
    """The installed irgraph's version: the ``Version:`` of the first ``irgraph-*.dist-info``
    on ``sys.path`` (where importlib.metadata looks first; importing that costs a tenth of
    a second in every process's first compile), else importlib.metadata's answer."""
    for entry in sys.path:
        try:
            found = sorted(Path(entry or ".").glob("irgraph-*.dist-info"))
        except (OSError, ValueError):
            continue
        for info in found:
            try:
                with open(info / "METADATA", encoding="utf-8") as f:
                    for line in f:
                        if not line.strip():
                            break
                        if line.startswith("Version:"):
                            return line.split(":", 1)[1].strip()
            except OSError:
                continue
    from importlib import metadata
    try:
        return metadata.version("irgraph")
    except metadata.PackageNotFoundError:
        return "unknown"


def source_roots() -> list[Path]:
    import importlib.util
    roots = []
    for name in SOURCE_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise RuntimeError(f"cache: package {name!r} not found for the source hash")
        roots.append(Path(spec.origin).parent)
    return roots


@lru_cache(maxsize=None)
def source_hash() -> str:
    """The package version and a hash of the installed source of every package that shapes
    generated code (computed once per process)."""
    return hashlib.sha256(f"{package_version()}\0{tree_hash(source_roots())}".encode()
                          ).hexdigest()


# ------------------------------------------------------------------ the caches
class DiskCache:
    """One backend's folder under the root: ``load``/``store`` payloads by key."""

    def __init__(self, name: str, suffix: str):
        self.name = name
        self.suffix = suffix

    def folder(self) -> Path:
        return root() / self.name

    def path(self, key: str) -> Path:
        if not _KEY.match(key):
            raise ValueError(f"cache {self.name}: bad entry key {key!r} (letters, digits, "
                             f"'_', '.', '-' only)")
        return self.folder() / f"{key}{self.suffix}"

    def _open(self) -> bytes | None:
        """The HMAC key once the root, this folder and the secret passed their checks; None
        (with a warning) when the cache is refused."""
        top, folder = root(), self.folder()
        try:
            _private_dir(top)
            _private_dir(folder)
            return _secret(top)
        except _Refused as e:
            _warn(f"compile cache refused: {e}; compiling without the cache")
            return None

    def _mac(self, secret: bytes, key: str, payload: bytes) -> bytes:
        msg = b"\0".join([b"irgraph-cache v1", self.name.encode(), key.encode(), payload])
        return hmac.new(secret, msg, hashlib.sha256).hexdigest().encode()

    def load(self, key: str) -> bytes | None:
        """The payload stored under ``key``, checked; None when absent, refused or damaged (a
        damaged entry is deleted)."""
        return self.load_many([key])[key]

    def load_many(self, keys: Iterable[str]) -> dict[str, bytes | None]:
        """``load`` of each key, the folders and the secret checked once for all of them."""
        keys = list(keys)
        paths = [self.path(k) for k in keys]
        secret = self._open()
        if secret is None:
            return dict.fromkeys(keys)
        return {k: self._load(k, path, secret) for k, path in zip(keys, paths)}

    def reader(self):
        """``load`` for the many lookups of one compile: the folders and the secret are
        checked once, at the first lookup, not at each."""
        opened: list = []

        def load(key: str) -> bytes | None:
            path = self.path(key)
            if not opened:
                opened.append(self._open())
            return None if opened[0] is None else self._load(key, path, opened[0])
        return load

    def _load(self, key: str, path: Path, secret: bytes) -> bytes | None:
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            return None
        except OSError as e:
            return self._damaged(path, f"unreadable ({e})")
        try:
            with os.fdopen(fd, "rb") as f:
                data = f.read()
        except OSError as e:
            return self._damaged(path, f"unreadable ({e})")
        head = len(MAGIC) + _MAC_HEX + 1
        if len(data) <= head:
            return self._damaged(path, f"truncated ({len(data)} bytes)")
        if not data.startswith(MAGIC) or data[head - 1:head] != b"\n":
            return self._damaged(path, "no cache header")
        payload = data[head:]
        if not hmac.compare_digest(data[len(MAGIC):head - 1], self._mac(secret, key, payload)):
            return self._damaged(path, "checksum (HMAC) mismatch: modified, truncated or "
                                       "not written by this cache for this key")
        try:
            os.utime(path)                          # least recently used goes first
        except OSError:
            pass
        return payload

    def _damaged(self, path: Path, why: str) -> None:
        _unlink(path)
        _warn(f"compile cache entry {path} is damaged: {why}; deleted, compiling anew")
        return None

    def store(self, key: str, payload: bytes) -> bool:
        """Write ``payload`` under ``key`` (atomically); False when it was not stored (cache
        refused, size limit 0, write failed: a warning, no temporary file left)."""
        return self.store_many([(key, payload)]) == 1

    def store_many(self, items: Iterable[tuple[str, bytes]]) -> int:
        """Write each (key, payload) atomically: every entry to a temporary file first, then
        ONE sync of them all (``_sync``: a compile's entries cost one flush to the disk, not
        one each), then each moved into place. Returns how many were stored; an entry that
        could not be written is skipped with a warning and leaves no temporary file."""
        items = [(self.path(key), key, payload) for key, payload in items]
        limit = max_bytes()
        if limit == 0 or not items:
            return 0
        secret = self._open()
        if secret is None:
            return 0
        written: list[tuple[int, str, Path, int]] = []     # (fd, temporary, path, bytes)
        try:
            for path, key, payload in items:
                data = MAGIC + self._mac(secret, key, payload) + b"\n" + payload
                try:
                    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TEMP_PREFIX)
                except OSError as e:
                    self._not_written(path, e)
                    continue
                written.append((fd, tmp, path, len(data)))
                try:
                    _write(fd, data)
                except OSError as e:
                    os.close(fd)
                    _unlink(Path(tmp))
                    written.pop()
                    self._not_written(path, e)
            failed = _sync([fd for fd, *_ in written])
            stored = 0
            while written:
                fd, tmp, path, size = written.pop(0)
                try:
                    os.close(fd)
                    if fd in failed:
                        raise failed[fd]
                    os.replace(tmp, path)
                except OSError as e:
                    _unlink(Path(tmp))
                    self._not_written(path, e)
                    continue
                stored += 1
                _account(size, limit)
            return stored
        finally:                    # an exception on the way: no temporary file left
            for fd, tmp, _, _ in written:
                try:
                    os.close(fd)
                except OSError:
                    pass
                _unlink(Path(tmp))

    def _not_written(self, path: Path, e: OSError) -> None:
        reason = "disk full" if e.errno == errno.ENOSPC else str(e)
        _warn(f"compile cache entry {path} could not be written ({reason}); the compiled "
              f"code is used without caching")

    def clear(self) -> int:
        """Delete every entry of this cache; returns how many were removed."""
        n = 0
        try:
            paths = list(self.folder().iterdir())
        except OSError:
            return 0
        for p in paths:
            if p.name.endswith(self.suffix) or p.name.startswith(_TEMP_PREFIX):
                n += p.name.endswith(self.suffix)
                _unlink(p)
        return n


def _syncfs():
    """libc's ``syncfs`` (Linux: flush one file system), or None where there is none."""
    try:
        import ctypes
        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
    return fn


_SYNCFS = _syncfs() if sys.platform.startswith("linux") else None


def _sync(fds: list[int]) -> dict[int, OSError]:
    """Flush the files ``fds`` (all in one folder) to the disk before they are moved into
    place; returns the error of each one that could not be flushed. One file: its fsync.
    Several: one ``syncfs`` of their file system where there is one (a single flush for a
    whole compile's entries), else an fsync each."""
    if len(fds) > 1 and _SYNCFS is not None and _SYNCFS(fds[0]) == 0:
        return {}
    failed: dict[int, OSError] = {}
    for fd in fds:
        try:
            os.fsync(fd)
        except OSError as e:
            failed[fd] = e
    return failed


def _entries(top: Path) -> list[tuple[float, int, Path]]:
    """(mtime, size, path) of every entry under the root's folders; temporary files of
    writers that died long ago are removed on the way."""
    out = []
    now = time.time()
    try:
        folders = [d for d in top.iterdir() if d.is_dir() and not d.is_symlink()]
    except OSError:
        return out
    for d in folders:
        try:
            with os.scandir(d) as it:
                for e in it:
                    if not e.is_file(follow_symlinks=False):
                        continue
                    st = e.stat(follow_symlinks=False)
                    if e.name.startswith(_TEMP_PREFIX):
                        if now - st.st_mtime > _STALE_TEMP_S:
                            _unlink(Path(e.path))
                        continue
                    out.append((st.st_mtime, st.st_size, Path(e.path)))
        except OSError:
            continue
    return out


def evict(limit: int | None = None) -> int:
    """Delete least recently used entries until the root holds at most ``limit`` bytes
    (default: ``$IRGRAPH_CACHE_MAX_MB``); returns how many were deleted."""
    return _evict(max_bytes() if limit is None else limit)[0]


def _evict(limit: int) -> tuple[int, int]:
    """(entries deleted, bytes left) after a scan of the whole root."""
    entries = sorted(_entries(root()), key=lambda t: (t[0], str(t[2])))
    total = sum(size for _, size, _ in entries)
    n = 0
    for _, size, path in entries:
        if total <= limit:
            break
        _unlink(path)
        total -= size
        n += 1
    with _USAGE_LOCK:
        _USAGE[str(root())] = total
    return n, total


# bytes under each root as this process last scanned it, plus what it wrote since: a store
# scans the root (a stat per entry) only when this estimate passes the limit, not at every
# write (a cache of many small kernel entries made every compile scan thousands of files).
# Other processes' writes are not counted here: each process bounds what it adds.
_USAGE: dict[str, int] = {}
fork_safe_locks(sys.modules[__name__], "_USAGE_LOCK")


# a store that finds the root over its limit evicts down to this share of it, not just
# under it: a full cache would otherwise scan every entry on every store (122,000 kernel
# entries took the ONNX node tests' compiles from seconds to many minutes)
LOW_WATER = 0.9


def _account(written: int, limit: int) -> None:
    key = str(root())
    with _USAGE_LOCK:
        est = _USAGE.get(key)
        if est is not None and est + written <= limit:
            _USAGE[key] = est + written
            return
    _evict(int(limit * LOW_WATER))
