"""The base of ``frontend.nn``: ``Parameter``, ``Module`` (registered, named parameters and
submodules, as in ``torch.nn``) and the containers ``Sequential``, ``ModuleList``,
``ModuleDict``, ``ParameterList``, ``ParameterDict``. Every layer module builds on this one;
nn.py gathers them."""
from __future__ import annotations

from collections import OrderedDict
from typing import Iterator, NamedTuple

import numpy as np

from .functional_core import as_tensor
from .guards import bump
from .tracing import note_module


class Parameter:
    """A named weight: a numpy array (``.data``) that becomes a graph parameter when traced."""

    def __init__(self, data, requires_grad: bool = True):
        a = np.asarray(data, order="C")     # no copy when already C-ordered; 0-d stays 0-d
        if a.dtype == np.float64 and not isinstance(data, np.ndarray):
            a = a.astype(np.float32)
        object.__setattr__(self, "_data", a)
        object.__setattr__(self, "_requires_grad", bool(requires_grad))

    # compiled functions depend on these (frontend/guards.py): a change of requires_grad, or
    # an array of another shape or dtype, makes them compile again at their next call
    @property
    def data(self) -> np.ndarray:
        return self._data

    @data.setter
    def data(self, value) -> None:
        old = self._data
        object.__setattr__(self, "_data", value)
        if getattr(value, "shape", None) != old.shape or getattr(value, "dtype", None) != old.dtype:
            bump()

    @property
    def requires_grad(self) -> bool:
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value: bool) -> None:
        if bool(value) != self._requires_grad:
            object.__setattr__(self, "_requires_grad", bool(value))
            bump()

    def requires_grad_(self, requires_grad: bool = True) -> "Parameter":
        self.requires_grad = requires_grad
        return self

    @property
    def shape(self):
        return self.data.shape

    def numpy(self) -> np.ndarray:
        return self.data

    def __repr__(self) -> str:
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"

    # Parameters take part in traced arithmetic like tensors
    def _t(self):
        return as_tensor(self)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._t(), name)


for _op in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__",
            "__rtruediv__", "__matmul__", "__rmatmul__", "__neg__", "__pow__", "__getitem__"):
    setattr(Parameter, _op, (lambda name: lambda self, *a: getattr(self._t(), name)(*a))(_op))
Parameter.T = property(lambda self: self._t().T)


class IncompatibleKeys(NamedTuple):
    """What ``load_state_dict`` returns (torch's): the keys it did not find and the extra
    ones."""
    missing_keys: list
    unexpected_keys: list


class Module:
    """Base class of models: parameters and submodules are registered on assignment."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"call Module.__init__() in {type(self).__name__}.__init__ "
                                 f"before assigning {name!r}")
        _refuse_plain_container(self, name, value)
        bump()          # any attribute (a layer's eps, slope, p) may be read when tracing
        if name in self._buffers and not isinstance(value, (Parameter, Module)) \
                and value is not None:
            # torch keeps a buffer a buffer when an array is assigned to it
            self._buffers[name] = Parameter(np.asarray(value), requires_grad=False)
            return
        if value is not None and not isinstance(value, Parameter) and name in self._parameters:
            raise TypeError(f"cannot assign {type(value).__name__!r} as parameter {name!r} "
                            f"(nn.Parameter or None expected)")
        if value is not None and not isinstance(value, Module) and name in self._modules:
            raise TypeError(f"cannot assign {type(value).__name__!r} as child module {name!r} "
                            f"(nn.Module or None expected)")
        # a new parameter or submodule under a name of its kind keeps the name's place
        # (state_dict order; a Sequential's order of layers)
        if isinstance(value, Parameter) and name in self._parameters:
            self._parameters[name] = value
            return
        if isinstance(value, Module) and name in self._modules:
            self._modules[name] = value
            return
        for d in (self._parameters, self._modules, self._buffers):
            d.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        d = self.__dict__
        if name == "_non_persistent":       # modules unpickled or copied from older state
            object.__setattr__(self, name, set())
            return d[name]
        for table in ("_parameters", "_modules", "_buffers"):
            if table in d and name in d[table]:
                return d[table][name]
        raise AttributeError(f"{type(self).__name__!r} has no attribute {name!r}")

    def register_buffer(self, name: str, value, persistent: bool = True) -> None:
        """A non-trained state array (e.g. batch norm's running mean), traced as a parameter.
        ``persistent=False``: left out of ``state_dict`` (torch's); None: a placeholder, no
        buffer until an array is assigned to the name."""
        if not isinstance(name, str) or "." in name or name == "":
            raise KeyError(f"buffer name can't contain '.' or be empty, got {name!r}")
        if name in self.__dict__ or name in self._parameters or name in self._modules:
            raise KeyError(f"attribute {name!r} already exists")
        self._buffers[name] = value if value is None or isinstance(value, Parameter) else \
            Parameter(value, requires_grad=False)
        if persistent:
            self._non_persistent.discard(name)
        else:
            self._non_persistent.add(name)
        bump()

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        if "." in name or name == "":
            raise KeyError(f"parameter name can't contain '.' or be empty, got {name!r}")
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"cannot assign {type(param).__name__!r} as parameter {name!r} "
                            f"(nn.Parameter or None expected)")
        setattr(self, name, param)

    def add_module(self, name: str, module: "Module | None") -> None:
        if not isinstance(name, str) or "." in name or name == "":
            raise KeyError(f"module name can't contain '.' or be empty, got {name!r}")
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{type(module).__name__} is not a Module subclass")
        setattr(self, name, module)

    register_module = add_module

    def get_submodule(self, target: str) -> "Module":
        m = self
        for part in target.split(".") if target else ():
            if part not in m._modules:
                raise AttributeError(f"{type(m).__name__} has no submodule {part!r} "
                                     f"(looking up {target!r})")
            m = m._modules[part]
        return m

    def get_parameter(self, target: str) -> Parameter:
        owner, _, name = target.rpartition(".")
        m = self.get_submodule(owner)
        if name not in m._parameters:
            raise AttributeError(f"{type(m).__name__} has no parameter {name!r}")
        return m._parameters[name]

    def named_parameters(self, prefix: str = "", recurse: bool = True,
                         remove_duplicate: bool = True, *, buffers: bool = False
                         ) -> Iterator[tuple[str, Parameter]]:
        """Parameters (and with ``buffers`` the buffers too) under their dotted names, each
        object once unless ``remove_duplicate`` is False (a tied weight under every name)."""
        seen = set()
        for name, p in self._named(prefix + "." if prefix else "", buffers, recurse):
            if not remove_duplicate or id(p) not in seen:
                seen.add(id(p))
                yield name, p

    def _named(self, prefix, buffers, recurse=True):
        for name, p in self._parameters.items():
            yield prefix + name, p
        if buffers:
            for name, p in self._buffers.items():
                if p is not None:
                    yield prefix + name, p
        if recurse:
            for name, m in self._modules.items():
                yield from m._named(f"{prefix}{name}.", buffers)

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        return (p for _, p in self.named_parameters(recurse=recurse))

    def named_buffers(self, prefix: str = "", recurse: bool = True,
                      remove_duplicate: bool = True):
        """The registered buffers (``register_buffer``) under their dotted names."""
        seen = set()
        for name, m in self.named_modules(prefix=prefix) if recurse else [(prefix, self)]:
            for bname, b in m._buffers.items():
                if b is not None and (not remove_duplicate or id(b) not in seen):
                    seen.add(id(b))
                    yield (f"{name}.{bname}" if name else bname), b

    def buffers(self, recurse: bool = True):
        return (b for _, b in self.named_buffers(recurse=recurse))

    def named_children(self):
        """Each direct submodule once, under its first name."""
        seen = set()
        for name, m in self._modules.items():
            if m is not None and id(m) not in seen:
                seen.add(id(m))
                yield name, m

    def children(self):
        return (m for _, m in self.named_children())

    def named_modules(self, memo: set | None = None, prefix: str = "",
                      remove_duplicate: bool = True):
        """This module and every submodule, depth first, each once (torch's order)."""
        memo = set() if memo is None else memo
        if remove_duplicate:
            if id(self) in memo:
                return
            memo.add(id(self))
        yield prefix, self
        for name, m in self._modules.items():
            if m is not None:
                yield from m.named_modules(memo, f"{prefix}.{name}" if prefix else name,
                                           remove_duplicate)

    def modules(self):
        return (m for _, m in self.named_modules())

    def state_dict(self) -> dict[str, np.ndarray]:
        """Every parameter and persistent buffer under every name it has (a tied weight
        under each), in torch's order."""
        return {n: p.data.copy() for n, p in self._persistent()}

    def _persistent(self):
        """(dotted name, parameter or buffer) of the state dict."""
        for mname, m in self.named_modules(remove_duplicate=False):
            pre = mname + "." if mname else ""
            for n, p in m._parameters.items():
                yield pre + n, p
            for n, b in m._buffers.items():
                if b is not None and n not in m._non_persistent:
                    yield pre + n, b

    def load_state_dict(self, state: dict, strict: bool = True):
        """Copy ``state``'s arrays into the parameters and persistent buffers. ``strict``
        (torch's default) refuses missing or unexpected keys, and a shape that differs is
        refused either way: a RuntimeError naming them, as torch's. Returns torch's
        (missing_keys, unexpected_keys), in the module's and the state dict's order. A
        batch norm's ``num_batches_tracked`` may be absent (older torch files): it stays."""
        own = dict(self._persistent())
        optional = {n for n in own if n.rpartition(".")[2] == "num_batches_tracked"}
        missing = [n for n in own if n not in state and n not in optional]
        extra = [n for n in state if n not in own]
        errors = []
        if strict and extra:
            errors.append("Unexpected key(s) in state_dict: " + ", ".join(
                f'"{n}"' for n in extra) + ". ")
        if strict and missing:
            errors.append("Missing key(s) in state_dict: " + ", ".join(
                f'"{n}"' for n in missing) + ". ")
        for n, p in own.items():
            if n in state and np.shape(state[n]) != p.data.shape:
                errors.append(f"size mismatch for {n}: copying a param with shape "
                              f"{np.shape(state[n])} from checkpoint, the shape in current "
                              f"model is {p.data.shape}.")
        if errors:
            raise RuntimeError(f"Error(s) in loading state_dict for {type(self).__name__}:"
                               "\n\t" + "\n\t".join(errors))
        for n, p in own.items():
            if n in state:
                np.copyto(p.data, np.asarray(state[n]).astype(p.data.dtype))
        return IncompatibleKeys(missing, extra)

    def train(self, mode: bool = True) -> "Module":
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        bump()
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def forward(self, *args):
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, *args, **kwargs):
        note_module(self)
        return self.forward(*args, **kwargs)

    # ------------------------------------------------------------ conversions
    def apply(self, fn) -> "Module":
        """``fn(m)`` for every submodule, children first, then this module (torch's order)."""
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    def to(self, dtype) -> "Module":
        """Float parameters and buffers converted to ``dtype`` ("float32"/"float64", a numpy
        dtype or ``torch.float32``/``torch.float64``), in place; integer buffers (batch
        counts) are left alone. A device ("cpu") changes nothing."""
        name = str(dtype).removeprefix("torch.")
        if name in ("cpu", "float", "double"):
            name = {"cpu": "", "float": "float32", "double": "float64"}[name]
        if name == "":
            return self
        try:
            dt = np.dtype(name)
        except TypeError:
            dt = None
        if dt is None or dt.kind != "f" or dt.itemsize not in (4, 8):
            raise TypeError(f"Module.to: expected float32 or float64 (or 'cpu'), got {dtype!r}")
        for _, p in self.named_parameters(buffers=True):
            if p.data.dtype.kind == "f":
                p.data = np.ascontiguousarray(p.data, dtype=dt)
        return self

    def double(self) -> "Module":
        return self.to("float64")

    def float(self) -> "Module":
        return self.to("float32")

    def requires_grad_(self, requires_grad: bool = True) -> "Module":
        """Marks every parameter (not the buffers) trainable or frozen."""
        buffers = {id(b) for m in self.modules() for b in m._buffers.values()}
        for p in self.parameters():
            if id(p) not in buffers:
                p.requires_grad = requires_grad
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Nothing to do, accepted for PyTorch code: gradients are outputs of compiled
        functions (``grad``, ``value_and_grad``, ``compile_train``'s step), never accumulated
        into parameters, so no step sees an earlier step's gradient."""

    # ------------------------------------------------------------ printing (torch's format)
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        extra = self.extra_repr()
        lines = extra.split("\n") if extra else []
        children = [f"({name}): " + _indent(repr(m)) for name, m in self._modules.items()]
        if len(lines) == 1 and not children:
            return f"{type(self).__name__}({lines[0]})"
        if not lines and not children:
            return f"{type(self).__name__}()"
        return f"{type(self).__name__}(\n  " + "\n  ".join(lines + children) + "\n)"


def _indent(text: str) -> str:
    return text.replace("\n", "\n  ")


def _refuse_plain_container(owner: Module, name: str, value) -> None:
    """A list, tuple or dict holding modules or parameters is not registered (its weights
    would be traced but left out of ``parameters()`` and ``state_dict()``): refuse it."""
    if isinstance(value, (ModuleList, ModuleDict, ParameterList, ParameterDict)) or \
            not isinstance(value, (list, tuple, dict)):
        return
    items = value.values() if isinstance(value, dict) else value
    kinds = {type(v) for v in items if isinstance(v, (Module, Parameter))}
    if not kinds:
        return
    holder = "nn.ModuleDict" if isinstance(value, dict) else "nn.ModuleList"
    params = all(issubclass(k, Parameter) for k in kinds)
    if params:
        holder = "nn.ParameterDict" if isinstance(value, dict) else "nn.ParameterList"
    raise TypeError(f"{type(owner).__name__}.{name}: a plain {type(value).__name__} of "
                    f"{'parameters' if params else 'modules'} is not "
                    f"registered, so its weights would be missing from parameters() and "
                    f"state_dict(); use {holder}(...) instead")


class Sequential(Module):
    """Layers applied in order, named ``"0"``, ``"1"``, ... or by an ``OrderedDict``'s keys."""

    def __init__(self, *layers: Module):
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], dict):
            for name, layer in layers[0].items():
                setattr(self, name, layer)
            return
        for i, layer in enumerate(layers):
            setattr(self, str(i), layer)

    def _key(self, i: int) -> str:
        keys = list(self._modules)
        if not -len(keys) <= i < len(keys):
            raise IndexError(f"index {i} is out of range for a Sequential of {len(keys)}")
        return keys[i]

    def __getitem__(self, i):
        """A layer, or for a slice a Sequential of those layers under their names (torch)."""
        if isinstance(i, slice):
            return type(self)(dict(list(self._modules.items())[i]))
        return self._modules[self._key(i)]

    def __setitem__(self, i: int, layer: Module) -> None:
        if not isinstance(layer, Module):
            raise TypeError(f"a Sequential holds modules, got {type(layer).__name__}")
        self._modules[self._key(i)] = layer          # in place: the order is kept
        bump()

    def __delitem__(self, i) -> None:
        """Deletes, then numbers the layers 0, 1, ... again (torch's)."""
        for k in (list(self._modules)[i] if isinstance(i, slice) else [self._key(i)]):
            del self._modules[k]
        self._renumber(list(self._modules.values()))

    def _renumber(self, layers) -> None:
        self._modules.clear()
        for k, layer in enumerate(layers):
            self._modules[str(k)] = layer
        bump()

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(list(self._modules.values()))

    def append(self, layer: Module) -> "Sequential":
        setattr(self, str(len(self)), layer)
        return self

    def extend(self, layers) -> "Sequential":
        for layer in layers:
            self.append(layer)
        return self

    def insert(self, index: int, layer: Module) -> "Sequential":
        """``layer`` before position ``index`` (torch's), the layers numbered again."""
        if not isinstance(layer, Module):
            raise TypeError(f"a Sequential holds modules, got {type(layer).__name__}")
        n = len(self)
        if not -n <= index <= n:
            raise IndexError(f"index {index} is out of range for a Sequential of {n}")
        layers = list(self._modules.values())
        layers.insert(index % (n + 1) if index < 0 else index, layer)
        self._renumber(layers)
        return self

    def pop(self, index: int = -1) -> Module:
        layer = self[index]
        del self[index]
        return layer

    def forward(self, x):
        for layer in self._modules.values():
            x = layer(x)
        return x


class ModuleList(Module):
    """Modules held in a list, registered as ``"0"``, ``"1"``, ... (torch.nn.ModuleList)."""

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.extend(modules)

    def _check(self, m):
        if not isinstance(m, Module):
            raise TypeError(f"{type(self).__name__} holds modules, got {type(m).__name__}")
        return m

    def _index(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} is out of range for a {type(self).__name__} of "
                             f"length {n}")
        return i % n

    def __getitem__(self, i):
        items = list(self._modules.values())
        if isinstance(i, slice):
            return type(self)(items[i])
        return items[self._index(i)]

    def __setitem__(self, i: int, m) -> None:
        self._modules[str(self._index(i))] = self._check(m)
        bump()

    def __delitem__(self, i) -> None:
        items = list(self._modules.values())
        del items[i if isinstance(i, slice) else self._index(i)]
        self._modules.clear()
        for k, m in enumerate(items):
            self._modules[str(k)] = m
        bump()

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(list(self._modules.values()))

    def __iadd__(self, modules):
        return self.extend(modules)

    def append(self, m) -> "ModuleList":
        self._modules[str(len(self))] = self._check(m)
        bump()
        return self

    def extend(self, modules) -> "ModuleList":
        for m in modules:
            self.append(m)
        return self

    def insert(self, index: int, m) -> None:
        items = list(self._modules.values())
        items.insert(index, self._check(m))
        self._modules.clear()
        for k, x in enumerate(items):
            self._modules[str(k)] = x
        bump()

    def forward(self, *args):
        raise NotImplementedError("ModuleList has no forward(): iterate over it")

    def __repr__(self) -> str:
        """torch's form: runs of equal consecutive entries print once as ``(i-j): n x ...``."""
        reps = [repr(m) for m in self]
        if not reps:
            return f"{type(self).__name__}()"
        lines, start = [], 0
        for k in range(1, len(reps) + 1):
            if k == len(reps) or reps[k] != reps[start]:
                label = f"({start})" if k - start == 1 else \
                    f"({start}-{k - 1}): {k - start} x"
                lines.append(_indent(f"{label}{':' if k - start == 1 else ''} {reps[start]}"))
                start = k
        return f"{type(self).__name__}(\n  " + "\n  ".join(lines) + "\n)"


class ModuleDict(Module):
    """Modules held by name (torch.nn.ModuleDict), in insertion order."""

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.update(modules)

    def __getitem__(self, key: str) -> Module:
        return self._modules[key]

    def __setitem__(self, key: str, m) -> None:
        if not isinstance(m, Module):
            raise TypeError(f"ModuleDict holds modules, got {type(m).__name__} for {key!r}")
        setattr(self, key, m)

    def __delitem__(self, key: str) -> None:
        del self._modules[key]
        bump()

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(list(self._modules))

    def __contains__(self, key) -> bool:
        return key in self._modules

    def keys(self):
        return self._modules.keys()

    def values(self):
        return self._modules.values()

    def items(self):
        return self._modules.items()

    def pop(self, key: str) -> Module:
        bump()
        return self._modules.pop(key)

    def clear(self) -> None:
        self._modules.clear()

    def update(self, modules) -> None:
        pairs = modules.items() if hasattr(modules, "items") else modules
        for k, m in pairs:
            self[k] = m

    def forward(self, *args):
        raise NotImplementedError("ModuleDict has no forward(): index it by name")


class ParameterList(Module):
    """Parameters held in a list, registered as ``"0"``, ``"1"``, ... (torch's
    ParameterList); numpy arrays become Parameters."""

    def __init__(self, values=None):
        super().__init__()
        for v in values or ():
            self.append(v)

    def append(self, value) -> "ParameterList":
        p = value if isinstance(value, Parameter) else Parameter(value)
        self._parameters[str(len(self))] = p
        return self

    def extend(self, values) -> "ParameterList":
        for v in values:
            self.append(v)
        return self

    def __getitem__(self, i: int) -> Parameter:
        return list(self._parameters.values())[i]

    def __setitem__(self, i: int, value) -> None:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} is out of range for a ParameterList of length {n}")
        self._parameters[str(i % n)] = value if isinstance(value, Parameter) else \
            Parameter(value)

    def __len__(self) -> int:
        return len(self._parameters)

    def __iter__(self):
        return iter(list(self._parameters.values()))

    def forward(self, *args):
        raise NotImplementedError("ParameterList has no forward(): index it")

    def extra_repr(self) -> str:
        return "\n".join(f"  ({k}): Parameter containing: [{_torch_dtype(p.data)} of size "
                         f"{'x'.join(map(str, p.data.shape))}]"
                         for k, p in self._parameters.items())


class ParameterDict(Module):
    """Parameters held by name (torch's ParameterDict); numpy arrays become Parameters."""

    def __init__(self, parameters=None):
        super().__init__()
        if parameters is not None:
            self.update(parameters)

    def __setitem__(self, key: str, value) -> None:
        self.register_parameter(key, value if isinstance(value, Parameter) else
                                Parameter(value))

    def __getitem__(self, key: str) -> Parameter:
        return self._parameters[key]

    def __delitem__(self, key: str) -> None:
        del self._parameters[key]

    def __contains__(self, key: str) -> bool:
        return key in self._parameters

    def __len__(self) -> int:
        return len(self._parameters)

    def __iter__(self):
        return iter(list(self._parameters))

    def keys(self):
        return list(self._parameters)

    def values(self):
        return list(self._parameters.values())

    def items(self):
        return list(self._parameters.items())

    def update(self, parameters) -> None:
        items = parameters.items() if hasattr(parameters, "items") else parameters
        for k, v in items:
            self[k] = v

    def pop(self, key: str) -> Parameter:
        return self._parameters.pop(key)

    def forward(self, *args):
        raise NotImplementedError("ParameterDict has no forward(): index it")


def _torch_dtype(a: np.ndarray) -> str:
    return f"torch.{a.dtype.name}"
