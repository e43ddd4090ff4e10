"""What every backend's executable shares: argument validation before any kernel runs."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from irgraph import Graph, verify


def validate_args(graph: Graph, args: Sequence) -> list[np.ndarray]:
    """Check count, shape and dtype of each argument; give C-contiguous numpy arrays.

    Python scalars are accepted for rank-0 arguments. Wrong inputs raise TypeError/ValueError
    naming the argument, so native code never sees a bad buffer.
    """
    params = graph.arguments
    if len(args) != len(params):
        names = ", ".join(v.name for v in params)
        raise TypeError(f"graph {graph.name!r} takes {len(params)} arguments ({names}), "
                        f"got {len(args)}")
    out = []
    for v, a in zip(params, args):
        t = v.type
        if isinstance(a, (bool, int, float, np.generic)) and t.rank == 0:
            a = np.asarray(a, dtype=t.np_dtype)
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


class Executable:
    """Base executable: ``exe(*args) -> list of output arrays``; args are inputs then params.

    Outputs the graph donates to an argument are written into that argument's buffer (in
    place) when the caller passed a writable array of the right layout.
    """
    backend = "base"

    def __init__(self, graph: Graph):
        self.graph = verify(graph)

    def run(self, args: list[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def __call__(self, *args) -> list[np.ndarray]:
        arrays = validate_args(self.graph, args)
        outs = self.run(arrays)
        return self.apply_donations(args, outs)

    def apply_donations(self, given: Sequence, outs: list[np.ndarray]) -> list[np.ndarray]:
        donations = self.graph.donations
        targets = [given[a] for a in donations.values() if isinstance(given[a], np.ndarray)]
        # an output that is (a view of) an argument buffer another donation overwrites keeps
        # its value (e.g. a graph returning a parameter while updating it)
        for k, out in enumerate(outs):
            own = given[donations[k]] if k in donations else None
            if any(t is not own and np.may_share_memory(out, t) for t in targets):
                outs[k] = np.array(out, copy=True)
        for o, a in donations.items():
            dst = given[a]
            if (isinstance(dst, np.ndarray) and dst.flags.writeable and dst.flags.c_contiguous
                    and outs[o] is not dst):
                np.copyto(dst, outs[o])
                outs[o] = dst
        return outs

    def source(self) -> str:
        """What the backend generated (IR text for the reference backend)."""
        return str(self.graph)
