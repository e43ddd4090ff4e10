"""The blocking of the packed GEMM (gemm.py) for a CPU: the register tile (``tiling``, also
read by gemv.py and the direct and dot convolutions), the cache blocks (KC, MC, NC) and the
per-thread packing workspace (``workspace_bytes``: the planner, module.py, reserves it; the
bfloat16 GEMM packs its strips in it). Below every module that reads them.
"""
from __future__ import annotations

from dataclasses import dataclass

KC = 256
MC = 144
NC = 1024
# a row-major B under at most MC rows of A is read in place in column blocks of about this
# many bytes (K block x columns), each kept in L2 while every row strip of A sweeps it
B_BLOCK_BYTES = 256 * 1024


@dataclass(frozen=True)
class Tiling:
    vw: int      # vector width in elements
    mr: int
    nr: int

    def heights(self) -> tuple[int, ...]:
        """The register tiles' heights, shortest first (the tallest is MR): a last strip of
        ``r`` rows runs the shortest tile of at least ``r`` rows (M = 128 = 10 x 12 + 8 and
        M = 32 = 2 x 12 + 8 multiply-add no repeated row), in steps of MR / 3 (MR / 2 when
        3 does not divide it)."""
        step = self.mr // 3 if self.mr % 3 == 0 else max(1, self.mr // 2)
        return tuple(range(step, self.mr + 1, step))

    def wide(self) -> tuple[int, tuple[int, ...]]:
        """(rows per step, heights) of the tiles of a strip of NR + vw columns (three
        vectors, ``_GemmBuilder.wide_from``): as many rows as keep the MR x NR tile's count
        of accumulators, in two heights where they are even."""
        rows = self.mr * (self.nr // self.vw) // 3
        return rows, ((rows // 2, rows) if rows % 2 == 0 else (rows,))

    def panel_elems(self) -> int:
        mc = -(-MC // self.mr) * self.mr
        return KC * (NC + self.nr) + mc * KC


def tiling(dtype: str, features: str) -> Tiling:
    wide = "+avx512f" in features
    avx = "+avx2" in features or "+avx" in features
    bits = 512 if wide else (256 if avx else 128)
    vw = bits // (32 if dtype == "float32" else 64)
    mr = 12 if wide else (6 if avx else 4)
    return Tiling(vw, mr, 2 * vw)


def workspace_bytes(features: str) -> int:
    """Per-thread packing scratch: enough for either float dtype."""
    t = tiling("float64", features)
    return t.panel_elems() * 8 + 256


# column strips per thread below which threads sharing a GEMM take runs of its rows
ROW_SPLIT_STRIPS = 4


def splits_rows(M: int, N: int, mr: int, nr: int, threads: int) -> bool:
    """Whether ``threads`` threads (or shares) sharing C = A @ B (M x N, register tiles
    ``mr`` x ``nr``) take runs of mr rows rather than nr-wide column strips: the columns
    make fewer than ``ROW_SPLIT_STRIPS`` strips per thread (a whole or partial strip more
    on one thread is then a large part of its work: 49 columns, a 1x1 convolution on a
    7x7 grid, are a 32-wide strip and a 17-wide one) and the rows more runs than the
    columns strips."""
    strips = -(-N // nr)
    return strips < ROW_SPLIT_STRIPS * threads and -(-M // mr) > strips
