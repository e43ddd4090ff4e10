"""The errors a call of a compiled graph raises when its data, not its arguments' types, is
at fault; the same classes on every backend (see docs/reliability.md, "Calling compiled
code").

* ``DataError``: the base. The arguments passed validation (count, dtype, shape, scalar
  range) but a value computed or read while running is outside an op's domain. Nothing the
  caller passed is modified when a call raises it.
* ``RuntimeDataError(DataError)``: a class index outside ``[0, C)``, an integer raised to a
  negative integer power, an index out of range. Also a ``ValueError`` (bad values) and an
  ``irgraph.interpreter.ExecutionError`` (a kernel failed while running), like numpy's
  ``AxisError`` is both a ValueError and an IndexError.
* ``irgraph.ops.debug.NonFiniteError(DataError)``: the NaN checker (``debug_nans``) found a
  NaN or an infinity.
"""
from __future__ import annotations

from .interpreter import ExecutionError


class DataError(Exception):
    """A valid call met data outside an op's domain while running (see the module text)."""


class RuntimeDataError(DataError, ExecutionError, ValueError):
    """A class index, exponent or index outside its op's domain, found while running."""
