"""Op definitions. Importing this package registers every op with the registry."""
from . import core  # noqa: F401
from . import conv, norm, pool  # noqa: F401  (convolution, batch norm, pooling: chapter 9)
from . import optim  # noqa: F401
from . import recurrence  # noqa: F401
from . import debug, fused  # noqa: F401  (check_finite and fused regions: passes/)
from . import gather, random  # noqa: F401  (indexing by tensors, Philox random numbers)


def _empty_results_first(op):
    """Wrap ``op``'s kernel: when an input is empty and so is every result (a batch of 0, a
    zero-length axis kept), the results are empty arrays of the inferred types and the kernel,
    which may divide by or reshape around the empty extent, is not run."""
    import functools

    import numpy as np

    from ..types import TensorType
    kernel = op.kernel

    @functools.wraps(kernel)
    def run(*arrays, **attrs):
        if any(np.size(a) == 0 for a in arrays):
            types = op.infer([TensorType.of(np.asarray(a)) for a in arrays], attrs)
            if all(t.size == 0 for t in types):
                outs = [np.empty(t.shape, t.np_dtype) for t in types]
                return outs[0] if len(outs) == 1 else tuple(outs)
        return kernel(*arrays, **attrs)
    run.empty_results_first = True
    op.kernel = run


def _low_precision(op):
    """Wrap ``op``'s kernel for the 16-bit floats (float16, bfloat16), as PyTorch computes
    them: 16-bit inputs are widened to float32 (exact), the kernel computes in float32, and
    each result of a 16-bit type is rounded to it once, to nearest even. Ops with a subgraph
    run their body's nodes, each wrapped alike, so they are left alone."""
    import functools

    import numpy as np

    from ..types import LOW_DTYPES, TensorType
    kernel = op.kernel
    low = tuple(np.dtype(d) for d in LOW_DTYPES)

    @functools.wraps(kernel)
    def run(*arrays, **attrs):
        arrays = [np.asarray(a) if isinstance(a, np.generic) else a for a in arrays]
        if not (any(getattr(a, "dtype", None) in low for a in arrays)
                or any(isinstance(v, str) and v in LOW_DTYPES for v in attrs.values())):
            return kernel(*arrays, **attrs)
        types = op.infer([TensorType.of(np.asarray(a)) for a in arrays], attrs)
        wide = [a.astype(np.float32) if getattr(a, "dtype", None) in low else a for a in arrays]
        # a 16-bit dtype attribute (cast, full, random draws) computes in float32 too, so a
        # float64 -> bfloat16 cast rounds twice, through float32, as PyTorch's does
        wide_attrs = {k: "float32" if isinstance(v, str) and v in LOW_DTYPES else v
                      for k, v in attrs.items()}
        res = kernel(*wide, **wide_attrs)
        outs = list(res) if isinstance(res, (tuple, list)) else [res]
        # rounded from float32 (a float64 result too: PyTorch's rule)
        outs = [np.asarray(r).astype(np.float32).astype(t.np_dtype)
                if t.dtype in LOW_DTYPES else r for r, t in zip(outs, types)]
        return tuple(outs) if isinstance(res, (tuple, list)) else outs[0]
    run.low_precision = True
    op.kernel = run


def _wrap_all():
    from ..registry import all_ops
    for _op in all_ops().values():
        if not getattr(_op.kernel, "empty_results_first", False):
            _empty_results_first(_op)
        if not _op.has_subgraph and not getattr(_op.kernel, "low_precision", False):
            _low_precision(_op)


_wrap_all()
