"""Random numbers inside traced code (docs/random.md): ``F.rand``, ``F.randn``,
``F.rand_like``, ``F.randn_like``, ``F.random_bits`` and ``F.dropout``, as torch names them.

Each draw is one Philox op (irgraph/ops/random.py) over a key and a counter. By default they
come from a ``frontend.random.Generator`` (the default one, seeded by ``fe.manual_seed``, or
``generator=``): its key and counter become graph parameters ``rng.key``/``rng.counter`` and
the traced function returns ``counter + 1`` as a state update, so every call of the compiled
function (or training step: ``compile_train`` threads it like batch norm's statistics) draws
fresh numbers. Draws within one trace get distinct ``stream`` attributes. ``key=`` and
``counter=`` (rank-0 int64 tensors, e.g. graph inputs) replace the generator.
"""
from __future__ import annotations

import numpy as np

from .functional_core import as_tensor, mul, where
from .random import Generator, default_generator
from .tracing import Tensor, current_tracer

__all__ = ["rand", "randn", "rand_like", "randn_like", "random_bits", "dropout", "randint",
           "bernoulli"]


def _size(size) -> tuple[int, ...]:
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        size = tuple(size[0])
    try:
        shape = tuple(int(d) for d in size)
    except TypeError:
        raise TypeError(f"a size must be ints, got {size!r}") from None
    if any(d < 0 for d in shape) or any(isinstance(d, bool) for d in size):
        raise ValueError(f"a size must be ints >= 0, got {size!r}")
    return shape


def _source(generator: Generator | None, key, counter) -> tuple[Tensor, Tensor, int]:
    """(key, counter, stream) of the next draw of the current trace."""
    tr = current_tracer()
    book = tr.__dict__.setdefault("_random_streams", {})
    if key is not None or counter is not None:
        if key is None or counter is None:
            raise ValueError("give both key= and counter= (rank-0 int64 tensors), or neither")
        k, c = as_tensor(key), as_tensor(counter)
        for name, t in (("key", k), ("counter", c)):
            if t.shape != () or t.dtype != "int64":
                raise TypeError(f"{name}= must be a rank-0 int64 tensor, got {t.type}")
        slot = book.setdefault((k.value, c.value), [k, c, 0])
    else:
        gen = generator if generator is not None else default_generator()
        if not isinstance(gen, Generator):
            raise TypeError(f"generator= must be a frontend.random.Generator, got "
                            f"{type(gen).__name__}")
        slot = book.get(id(gen))
        if slot is None:
            prefix = "rng" if gen is default_generator() else f"rng{len(book)}"
            for part in ("key", "counter"):
                tr.param_names.setdefault(id(getattr(gen, part)), f"{prefix}.{part}")
            k, c = as_tensor(gen.key), as_tensor(gen.counter)
            tr.update_state(gen.counter, c + 1)      # the next call draws fresh numbers
            slot = book[id(gen)] = [k, c, 0, gen]
    slot[2] += 1
    return slot[0], slot[1], slot[2] - 1


def _draw(op: str, shape, dtype: str | None, generator, key, counter) -> Tensor:
    k, c, stream = _source(generator, key, counter)
    attrs = {"shape": shape, "stream": stream}
    if dtype is not None:
        if dtype not in ("float32", "float64"):
            dtype = str(np.dtype(dtype))
        if dtype not in ("float32", "float64"):
            raise TypeError(f"{op} draws float32 or float64 numbers, not {dtype}")
        attrs["dtype"] = dtype
    return k.tracer.emit(op, k, c, **attrs)


def rand(*size, generator: Generator | None = None, dtype: str = "float32", key=None,
         counter=None) -> Tensor:
    """Uniform on [0, 1) (``torch.rand``)."""
    return _draw("random_uniform", _size(size), dtype, generator, key, counter)


def randn(*size, generator: Generator | None = None, dtype: str = "float32", key=None,
          counter=None) -> Tensor:
    """Standard normal (``torch.randn``; Box-Muller over Philox words)."""
    return _draw("random_normal", _size(size), dtype, generator, key, counter)


def random_bits(*size, generator: Generator | None = None, key=None, counter=None) -> Tensor:
    """32 random bits per element, as int32."""
    return _draw("random_bits", _size(size), None, generator, key, counter)


def _float_dtype(x: Tensor, dtype) -> str:
    dt = dtype or x.dtype
    return dt if dt in ("float32", "float64") else "float32"


def randint(*args, size=None, generator: Generator | None = None, dtype: str = "int64",
            key=None, counter=None) -> Tensor:
    """``torch.randint(low=0, high, size)``: integers uniform on [low, high)."""
    if size is None:
        if not args:
            raise TypeError("randint: give (high, size) or (low, high, size)")
        *args, size = args
    low, high = (0, args[0]) if len(args) == 1 else tuple(args)
    low, high = int(low), int(high)
    if high <= low:
        raise ValueError(f"randint: need low < high, got [{low}, {high})")
    u = rand(size, generator=generator, dtype="float64", key=key, counter=counter)
    span = as_tensor(np.array(float(high - low)))
    from .functional_core import cast, floor_divide, minimum
    k = cast(floor_divide(mul(u, span), 1.0), "int64")
    k = minimum(k, as_tensor(np.array(high - low - 1, np.int64)))
    out = k + as_tensor(np.array(low, np.int64))
    return out if dtype == "int64" else cast(out, dtype)


def bernoulli(input, p=None, *, generator: Generator | None = None, key=None,
              counter=None) -> Tensor:
    """``torch.bernoulli``: 1 with probability ``input`` (or ``p``), else 0, in input's
    dtype."""
    from .functional_core import cast, lt
    x = as_tensor(input)
    prob = x if p is None else as_tensor(np.asarray(p, x.type.np_dtype))
    u = rand(x.shape, generator=generator, dtype=x.dtype if x.type.is_float else "float32",
             key=key, counter=counter)
    return cast(lt(u, prob), x.dtype if x.type.is_float else "float32")


def rand_like(input, dtype: str | None = None, *, generator: Generator | None = None,
              key=None, counter=None) -> Tensor:
    x = as_tensor(input)
    return rand(x.shape, generator=generator, dtype=_float_dtype(x, dtype), key=key,
                counter=counter)


def randn_like(input, dtype: str | None = None, *, generator: Generator | None = None,
               key=None, counter=None) -> Tensor:
    x = as_tensor(input)
    return randn(x.shape, generator=generator, dtype=_float_dtype(x, dtype), key=key,
                 counter=counter)


def dropout(input, p: float = 0.5, training: bool = True, inplace: bool = False, *,
            generator: Generator | None = None) -> Tensor:
    """``torch.nn.functional.dropout``: in training, each element is zeroed with probability
    ``p`` and the others scaled by ``1 / (1 - p)``; the identity when not training, for
    ``p = 0`` or an empty input; ``p = 1`` gives ``input * 0`` (NaN stays NaN), as torch.
    An element is kept where its uniform draw ``u >= p`` (``F.rand_like``)."""
    if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)) \
            or not 0 <= p <= 1:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p!r}")
    x = as_tensor(input)
    if x.dtype not in ("float32", "float64"):
        raise TypeError(f"dropout needs a float tensor, got {x.type}")
    if not training or p == 0 or x.numel() == 0:
        return x
    if p == 1:
        return mul(x, 0.0)
    ty = np.dtype(x.dtype).type
    keep = rand_like(x, generator=generator) >= float(ty(p))
    scale = ty(1) / ty(1 - p)                    # torch: mask / (1 - p) in the input's dtype
    return mul(x, where(keep, as_tensor(float(scale), x), as_tensor(0.0, x)))

