"""What every backend's executable shares: the call contract.

* ``validate_args``: the one rule for arguments (count, array type, dtype, shape; Python and
  numpy scalars for rank-0 arguments), checked before any kernel or native code runs.
* ``check_out_buffers``: the one rule for ``call_into``'s output buffers.
* ``reference_error``: a run-time failure of the reference kernels, as the class every
  backend raises for that fault (``irgraph.errors``); the compiled backends ask the
  reference for the message of a fault their own code detected, so the text is the same.
* ``fork_safe_locks``: the locks every executable, cache and worker pool of a backend
  holds; a forked child gets each of them fresh (unlocked).
* ``run_backend_passes``: what a backend's ``compile`` does before its ``build``: the graph
  verified and put through the passes the backend declares (its ``PASSES``) by the
  PassManager, the one place a graph is verified on its way to a backend (the compile
  driver, frontend/driver.py, runs the same passes after the pipeline, in one PassManager).

docs/reliability.md ("Calling compiled code") states what a call guarantees.
"""
from __future__ import annotations

import os
import threading
import weakref
from typing import NoReturn, Sequence

import numpy as np
try:
    from numpy.lib.array_utils import byte_bounds
except ImportError:                     # numpy < 2
    from numpy import byte_bounds

from irgraph import Graph
from irgraph.errors import DataError, RuntimeDataError
from irgraph.interpreter import ExecutionError, interpret
from irgraph.ops.debug import NonFiniteError

__all__ = ["validate_args", "check_out_buffers", "reference_error", "run_reference",
           "fork_safe_locks", "run_backend_passes", "Executable", "DataError",
           "RuntimeDataError", "NonFiniteError"]

# kinds of Python/numpy scalars, in promotion order: a scalar may stand for a rank-0 argument
# whose kind is not below its own (torch's rule: no silent truncation of a float to an int)
_KINDS = {"b": (0, "a bool"), "i": (1, "an integer"), "u": (1, "an integer"),
          "f": (2, "a float")}


def _scalar_kind(a) -> str | None:
    if isinstance(a, (bool, np.bool_)):
        return "b"
    if isinstance(a, (int, np.integer)):
        return "i"
    if isinstance(a, (float, np.floating)):
        return "f"
    return None


def _scalar_arg(v, a) -> np.ndarray:
    """A Python or numpy scalar for the rank-0 argument ``v``, as a 0-d array of its dtype."""
    t = v.type
    kind = _scalar_kind(a)
    if kind is None:
        raise TypeError(f"argument %{v.name} must be a number or a numpy array of type {t}, "
                        f"got {type(a).__name__}")
    have, have_name = _KINDS[kind]
    want, want_name = _KINDS[t.np_dtype.kind]
    if have > want:
        raise TypeError(f"argument %{v.name} is {t}: {have_name} scalar ({a!r}) would be "
                        f"converted with loss; pass {want_name}")
    if want == 1:
        info = np.iinfo(t.np_dtype)
        if not info.min <= int(a) <= info.max:
            raise ValueError(f"argument %{v.name} is {t}: {int(a)} is outside its range "
                             f"[{info.min}, {info.max}]")
    return np.asarray(a, dtype=t.np_dtype)


def validate_args(graph: Graph, args: Sequence) -> list[np.ndarray]:
    """Check count, shape and dtype of each argument; give C-contiguous numpy arrays.

    Python and numpy scalars are accepted for rank-0 arguments when their kind (bool < int <
    float) is not above the argument's, and integers only within the dtype's range. Wrong
    inputs raise TypeError/ValueError naming the argument, so native code never sees a bad
    buffer.
    """
    params = graph.arguments
    if len(args) != len(params):
        names = ", ".join(v.name for v in params)
        raise TypeError(f"graph {graph.name!r} takes {len(params)} arguments ({names}), "
                        f"got {len(args)}")
    out = []
    for v, a in zip(params, args):
        t = v.type
        if t.rank == 0 and not isinstance(a, np.ndarray) and _scalar_kind(a) is not None:
            a = _scalar_arg(v, a)
        if not isinstance(a, np.ndarray):
            raise TypeError(f"argument %{v.name} must be a numpy array of type {t}, "
                            f"got {type(a).__name__}")
        if a.dtype != t.np_dtype:
            raise TypeError(f"argument %{v.name} has dtype {a.dtype}, expected {t.dtype} ({t})")
        if a.shape != t.shape:
            raise ValueError(f"argument %{v.name} has shape {a.shape}, expected {t.shape} ({t}); "
                             f"a new shape needs a new compilation")
        if not (a.flags.c_contiguous and a.flags.aligned):
            a = np.ascontiguousarray(a)
        out.append(a)
    return out


def byte_spans(arrays: Sequence) -> np.ndarray:
    """(n, 2) int64: each array's byte range [lo, hi) (the bounds ``np.may_share_memory``
    compares); an empty array or a non-array gets an empty range that overlaps nothing."""
    spans = np.zeros((len(arrays), 2), np.int64)
    for i, a in enumerate(arrays):
        if isinstance(a, np.ndarray) and a.size:
            if a.flags.c_contiguous:
                lo = a.ctypes.data
                spans[i] = lo, lo + a.nbytes
            else:
                spans[i] = byte_bounds(a)
    return spans


def overlaps(xs: Sequence, ys: Sequence | None = None) -> np.ndarray:
    """Boolean (len(xs), len(ys)): do the byte ranges of xs[i] and ys[j] overlap? (what
    ``np.may_share_memory`` answers, for all pairs in one vectorised test); ys None: xs
    against itself."""
    a = byte_spans(xs)
    b = a if ys is None else byte_spans(ys)
    hit = (a[:, None, 0] < b[None, :, 1]) & (b[None, :, 0] < a[:, None, 1])
    return hit & (a[:, None, 0] < a[:, None, 1]) & (b[None, :, 0] < b[None, :, 1])


def check_out_buffers(graph: Graph, out: Sequence) -> list[np.ndarray]:
    """``call_into``'s output buffers: one per output, numpy arrays of its exact type,
    writable (any layout: results are copied into them)."""
    if len(out) != len(graph.outputs):
        raise TypeError(f"{len(graph.outputs)} output buffers needed, got {len(out)}")
    for j, (v, a) in enumerate(zip(graph.outputs, out)):
        t = v.type
        if not isinstance(a, np.ndarray) or a.dtype != t.np_dtype or a.shape != t.shape:
            got = (f"{a.dtype}{list(a.shape)}" if isinstance(a, np.ndarray)
                   else type(a).__name__)
            raise TypeError(f"output buffer {j} must be a numpy array of type {t}, got {got}")
        if not a.flags.writeable:
            raise ValueError(f"output buffer {j} is read-only")
    return list(out)


def _root(e: BaseException) -> BaseException:
    while e.__cause__ is not None:
        e = e.__cause__
    return e


def reference_error(e: ExecutionError) -> Exception:
    """The error to raise for a reference kernel's failure ``e``.

    The graph was verified and the arguments validated, so every shape and dtype is right: a
    kernel that still fails with a ValueError or IndexError failed on the data (a class index,
    an exponent, an index), a ``RuntimeDataError`` with the reference's text (the failing node
    and the user's line). Anything else is a fault of a kernel and stays as it is."""
    if isinstance(e, DataError):
        return e
    if isinstance(_root(e), (ValueError, IndexError)):
        return RuntimeDataError(str(e))
    return e


def run_reference(graph: Graph, args: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``interpret`` with its failures raised as ``reference_error`` says."""
    try:
        return interpret(graph, args)
    except ExecutionError as e:
        err = reference_error(e)
        if err is e:
            raise
        raise err from e


def raise_as_reference(graph: Graph, args: Sequence[np.ndarray], fallback: Exception
                       ) -> NoReturn:
    """A compiled backend's code found bad data: raise what the reference raises on the same
    (unchanged) arguments, so the class and the text are the same on every backend;
    ``fallback`` if the reference does not fail."""
    run_reference(graph, args)
    raise fallback


_FRESH_IN_CHILD: "weakref.WeakKeyDictionary[object, tuple[str, ...]]" = (
    weakref.WeakKeyDictionary())


def fork_safe_locks(owner, *attrs: str) -> None:
    """Give ``owner`` a ``threading.Lock`` in each attribute ``attrs``, made fresh (unlocked)
    in a forked child.

    Only the forking thread lives on in a child: a lock another thread held at the fork (one
    calling an executable, say) would stay held forever and the child's first call would
    deadlock. Every lock a backend owns is made here. (Plain ``threading.Lock`` objects, so
    ``with`` acquires and releases them in C: an asynchronous exception cannot fall between
    acquiring and the release being set up.)"""
    for a in attrs:
        setattr(owner, a, threading.Lock())
    _FRESH_IN_CHILD[owner] = _FRESH_IN_CHILD.get(owner, ()) + attrs


def _renew_locks_in_child() -> None:
    for owner, attrs in list(_FRESH_IN_CHILD.items()):
        for a in attrs:
            setattr(owner, a, threading.Lock())


os.register_at_fork(after_in_child=_renew_locks_in_child)


def run_backend_passes(graph: Graph, passes: Sequence[str]) -> Graph:
    """``graph`` verified, then put through ``passes`` (a backend's ``PASSES``)."""
    from irgraph.passes.manager import PassManager
    return PassManager(list(passes)).run(graph)


class Executable:
    """Base executable: ``exe(*args) -> list of output arrays``; args are inputs then params.
    Built by a backend's ``build`` from a graph the PassManager verified (``compile``).

    Outputs the graph donates to an argument are written into that argument's buffer (in
    place) when the caller passed a writable array of the right layout. A call that raises
    leaves every argument as it was.
    """
    backend = "base"
    # ``run``'s results never share a byte with an argument other than their own donated
    # one (fresh arrays, or the donated buffer written in place): no overlap test needed
    results_fresh = False

    def __init__(self, graph: Graph):
        self.graph = graph

    def run(self, args: list[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def __call__(self, *args) -> list[np.ndarray]:
        arrays = validate_args(self.graph, args)
        outs = self.run(arrays)
        return self.apply_donations(args, outs)

    def call_into(self, out: Sequence[np.ndarray], *args) -> list[np.ndarray]:
        """``res = exe(*args)``, then ``out[j][...] = res[j]`` for each output in order;
        returns ``out``. Output buffers may overlap the arguments or each other (as numpy's
        ``out=``): every result is complete before any buffer is written."""
        out = check_out_buffers(self.graph, out)
        res = [np.asarray(r) for r in self(*args)]
        # a result living in a buffer that an earlier copy overwrites is taken aside first
        res = [r.copy() if any(o is not r and np.may_share_memory(o, r) for o in out) else r
               for r in res]
        for o, r in zip(out, res):
            if o is not r:
                np.copyto(o, np.asarray(r))
        return out

    def apply_donations(self, given: Sequence, outs: list[np.ndarray]) -> list[np.ndarray]:
        donations = self.graph.donations
        targets = [] if self.results_fresh else [
            given[a] for a in donations.values() if isinstance(given[a], np.ndarray)]
        # an output that is (a view of) an argument buffer another donation overwrites keeps
        # its value (e.g. a graph returning a parameter while updating it); all pairs tested
        # at once (a training step has a hundred of each)
        if targets and outs:
            donated_to: dict[int, list[int]] = {}
            for k, a in donations.items():
                if k < len(outs):
                    donated_to.setdefault(id(given[a]), []).append(k)
            hits = overlaps(outs, targets)
            for j, t in enumerate(targets):        # a donation's own argument is no hazard
                for k in donated_to.get(id(t), ()):
                    hits[k, j] = False
            for k in np.flatnonzero(hits.any(axis=1)):
                outs[k] = np.array(outs[k], copy=True)
        for o, a in donations.items():
            dst = given[a]
            if (outs[o] is not dst and isinstance(dst, np.ndarray) and dst.flags.writeable
                    and dst.flags.c_contiguous):
                np.copyto(dst, outs[o])
                outs[o] = dst
        return outs

    def source(self) -> str:
        """What the backend generated (IR text for the reference backend)."""
        return str(self.graph)
