"""What ``show`` and ``check`` work on: a model or function defined in a user's Python file.

``FILE.py[:NAME]`` — the file is executed (as ``import`` would: it is the user's own code),
then NAME is looked up; without NAME the file must define exactly one ``nn.Module``
subclass or instance, or else exactly one function. A Module subclass is instantiated with
no arguments (after ``frontend.manual_seed(seed)``). Shapes come from ``--input``, one per
input: ``8,16`` (float32) or ``f32[8,16]`` / ``i64[8]``.
"""
from __future__ import annotations

import importlib.util
import inspect
import re
import sys
from pathlib import Path

import irgraph.frontend as fe
from irgraph.frontend import nn


class UsageError(ValueError):
    """Bad command-line input (exit code 2)."""


_DTYPES = {"f32": "float32", "f64": "float64", "i32": "int32", "i64": "int64", "bool": "bool",
           "float32": "float32", "float64": "float64", "int32": "int32", "int64": "int64"}


def parse_spec(text: str) -> fe.TensorSpec:
    """``8,16`` -> float32 (8, 16); ``f32[8,16]``, ``i64[8]``, ``f32[]`` (a scalar)."""
    s = text.strip()
    m = re.fullmatch(r"([a-z0-9]+)\[([0-9,\s]*)\]", s)
    dtype, dims = ("float32", s) if m is None else (_DTYPES.get(m.group(1)), m.group(2))
    if dtype is None:
        raise UsageError(f"--input {text!r}: unknown dtype {m.group(1)!r}; use one of "
                         f"f32, f64, i32, i64, bool")
    if not re.fullmatch(r"\s*(\d+\s*(,\s*\d+\s*)*)?,?\s*", dims):
        raise UsageError(f"--input {text!r}: expected a shape like 8,16 or f32[8,16]")
    shape = tuple(int(d) for d in dims.replace(" ", "").split(",") if d)
    return fe.TensorSpec(shape, dtype)


def load_file(path: str):
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{path}: no such file")
    if p.suffix != ".py":
        raise UsageError(f"{path}: expected a Python file (.py)")
    name = f"irgraph_user_{abs(hash(str(p.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, p)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module          # dataclasses and pickling-free introspection need it
    sys.path.insert(0, str(p.resolve().parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.pop(0)
    return module


def _candidates(module) -> dict[str, object]:
    out = {}
    for k, v in vars(module).items():
        if k.startswith("_"):
            continue
        if isinstance(v, nn.Module):
            out[k] = v
        elif inspect.isclass(v) and issubclass(v, nn.Module) and v.__module__ == module.__name__:
            out[k] = v
    if out:
        return out
    return {k: v for k, v in vars(module).items() if not k.startswith("_") and
            inspect.isfunction(v) and v.__module__ == module.__name__}


def load_target(target: str, seed: int = 0):
    """``FILE.py[:NAME]`` -> (a Module instance or a function, its name)."""
    path, _, name = target.partition(":") if not re.match(r"^[A-Za-z]:\\", target) else \
        (target, "", "")
    module = load_file(path)
    if name:
        if not hasattr(module, name):
            raise UsageError(f"{path} defines no {name!r}; it defines "
                             f"{sorted(_candidates(module)) or 'no model or function'}")
        obj = getattr(module, name)
    else:
        found = _candidates(module)
        if len(found) != 1:
            what = sorted(found) if found else "no nn.Module and no function"
            raise UsageError(f"{path}: say which model or function with {path}:NAME "
                             f"(found {what})")
        name, obj = next(iter(found.items()))
    if inspect.isclass(obj) and issubclass(obj, nn.Module):
        fe.manual_seed(seed)
        try:
            obj = obj()
        except TypeError as e:
            raise UsageError(f"{path}:{name} cannot be built with no arguments ({e}); define an "
                             f"instance in the file (model = {name}(...)) and name it") from None
    if not (isinstance(obj, nn.Module) or callable(obj)):
        raise UsageError(f"{path}:{name} is a {type(obj).__name__}, not a model or function")
    return obj, name


def input_names(obj) -> list[str]:
    fn = obj.forward if isinstance(obj, nn.Module) else obj
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            and p.default is p.empty]


def specs_for(obj, name: str, inputs: list[str] | None) -> list[fe.TensorSpec]:
    wanted = input_names(obj)
    if not inputs:
        raise UsageError(f"{name} takes {len(wanted)} input(s) ({', '.join(wanted)}): give "
                         f"each one's shape with --input, e.g. --input 8,16 or "
                         f"--input 'i64[8]'")
    specs = [parse_spec(s) for s in inputs]
    if wanted and len(specs) != len(wanted):
        raise UsageError(f"{name} takes {len(wanted)} input(s) ({', '.join(wanted)}), "
                         f"--input given {len(specs)} time(s)")
    return specs
