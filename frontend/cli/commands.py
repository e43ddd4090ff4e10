"""``irgraph show | run | check | bench``: each ``cmd_<name>(args, out) -> exit code``."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import irgraph.backends as backends
import irgraph.frontend as fe
import irgraph
from irgraph.frontend.check import find_divergence, max_abs_diff, node_differences, reference_values
from irgraph.frontend.compiler import run_pipeline

from .pictures import render_dot
from .target import UsageError, load_target, specs_for

OK, FAILED, USAGE = 0, 1, 2


def available_backends() -> dict[str, str]:
    """Backend -> why it cannot run here ('' when it can)."""
    out = {"reference": "", "llvm": ""}
    if importlib.util.find_spec("triton") is None or importlib.util.find_spec("torch") is None:
        out["triton"] = "triton and torch are not installed (pip install 'irgraph[gpu]')"
    elif os.environ.get("TRITON_INTERPRET") != "1" and not _cuda():
        out["triton"] = "no NVIDIA GPU; set TRITON_INTERPRET=1 to run its kernels on the CPU"
    else:
        out["triton"] = ""
    return out


def _cuda() -> bool:
    try:
        import torch
        return bool(torch.cuda.is_available())
    except Exception:        # a broken torch install: no GPU for us
        return False


def _traced(args):
    """(traced graph, graph after the pipeline, parameter arrays by name) for show/check."""
    obj, name = load_target(args.target, args.seed)
    if isinstance(obj, fe.nn.Module):
        obj.train(bool(getattr(args, "train", False)))
    specs = specs_for(obj, name, args.input)
    graph = fe.trace(obj, *specs, name=name if name.isidentifier() else None)
    weights = {}
    if isinstance(obj, fe.nn.Module):
        weights = {n: p.data for n, p in obj.named_parameters(buffers=True)}
    passes = getattr(args, "passes", "default")
    after = graph if passes in ("", "none") else run_pipeline(graph, passes, "inference")
    return graph, after, weights


def cmd_show(args, out) -> int:
    graph, after, _ = _traced(args)
    emit = args.emit
    if emit == "ir":
        text = f"{graph}\n" if args.passes in ("", "none") else (
            f"# traced ({len(graph.nodes)} nodes)\n{graph}\n\n"
            f"# after the pipeline '{args.passes}' ({len(after.nodes)} nodes)\n{after}\n")
    elif emit in ("dot", "svg"):
        text = after.to_dot() + "\n"
    elif emit in ("llvm", "asm"):
        exe = backends.compile(after, "llvm")
        text = exe.llvm_ir() if emit == "llvm" else exe.assembly()
    elif emit == "triton":
        why = available_backends()["triton"]
        if why:
            print(f"irgraph show: cannot emit Triton code: {why}", file=sys.stderr)
            return FAILED
        text = backends.compile(after, "triton").source()
    else:                                   # argparse's choices keep this unreachable
        raise UsageError(f"unknown --emit {emit!r}")
    if emit == "svg":
        path = Path(args.output or f"{after.name}.svg")
        render_dot(text, path, "svg")
        print(f"wrote {path}", file=out)
    elif args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}", file=out)
    else:
        out.write(text if text.endswith("\n") else text + "\n")
    return OK


def _load_npz(path: str) -> dict[str, np.ndarray]:
    if not Path(path).is_file():
        raise UsageError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except ValueError as e:         # object arrays need pickle: refused
        raise UsageError(f"{path}: cannot read without unpickling ({e})") from None
    except Exception as e:
        raise UsageError(f"{path}: not a readable .npz file ({e})") from None


def _bind_inputs(graph, arrays: dict[str, np.ndarray], source: str) -> list[np.ndarray]:
    names = [v.name for v in graph.inputs]
    if set(names) <= set(arrays):
        chosen = [arrays[n] for n in names]
    elif len(arrays) == len(names) and all(k.startswith("arr_") for k in arrays):
        chosen = [arrays[f"arr_{i}"] for i in range(len(names))]   # np.savez(path, *arrays)
    else:
        missing = sorted(set(names) - set(arrays))
        raise UsageError(f"{source} lacks input(s) {missing} of graph {graph.name!r} (it "
                         f"has {sorted(arrays)}); save them by name: np.savez(path, "
                         + ", ".join(f"{n}=..." for n in names) + ")")
    for v, a in zip(graph.inputs, chosen):
        if a.shape != v.type.shape or a.dtype != v.type.np_dtype:
            raise UsageError(f"{source}: input %{v.name} is {a.dtype}{list(a.shape)}, the "
                             f"graph takes {v.type}")
    return chosen


def cmd_run(args, out) -> int:
    if not Path(args.folder).is_dir():
        raise UsageError(f"{args.folder}: no such folder (save one with irgraph.save)")
    graph, weights = irgraph.load(args.folder)
    missing = [p.name for p in graph.params if p.name not in weights]
    if missing:
        raise UsageError(f"{args.folder}: no weights for parameter(s) {missing}")
    inputs = _bind_inputs(graph, _load_npz(args.inputs), args.inputs)
    exe = backends.compile(graph, args.backend)
    outs = exe(*inputs, *[weights[p.name] for p in graph.params])
    result = {f"output_{i}": np.asarray(o) for i, o in enumerate(outs)}
    for k, v in result.items():
        print(f"{k}: {v.dtype}{list(v.shape)}  min {v.min() if v.size else 0:.6g}  "
              f"max {v.max() if v.size else 0:.6g}", file=out)
    target = args.output or "outputs.npz"
    np.savez(target, **result)
    print(f"wrote {target}", file=out)
    return OK


def _random_args(graph, weights, seed: int) -> list[np.ndarray]:
    r = np.random.default_rng(seed)
    args = []
    for v in graph.inputs:
        t = v.type
        if t.dtype.startswith("float"):
            args.append(r.standard_normal(t.shape).astype(t.np_dtype))
        elif t.dtype == "bool":
            args.append(r.integers(0, 2, t.shape).astype(bool))
        else:
            args.append(r.integers(0, 2, t.shape).astype(t.np_dtype))
    for p in graph.params:
        if p.name not in weights:
            raise UsageError(f"parameter %{p.name} has no value")
        args.append(np.asarray(weights[p.name]))
    return args


def cmd_check(args, out) -> int:
    _, graph, weights = _traced(args)
    if args.inputs:
        given = _bind_inputs(graph, _load_npz(args.inputs), args.inputs)
        call = given + _random_args(graph, weights, args.seed)[len(graph.inputs):]
    else:
        call = _random_args(graph, weights, args.seed)
    avail = available_backends()
    chosen = args.backend or [b for b in avail if b != "reference"]
    print(f"graph {graph.name}: {len(graph.nodes)} nodes after '{args.passes}'; inputs "
          + ", ".join(f"%{v.name}: {v.type}" for v in graph.inputs)
          + f"; rtol={args.rtol:g}, atol={args.atol:g}", file=out)
    ref = reference_values(graph, call)
    status = OK
    for b in chosen:
        if avail.get(b):
            print(f"{b}: skipped ({avail[b]})", file=out)
            continue
        div = find_divergence(graph, call, b, rtol=args.rtol, atol=args.atol, ref=ref)
        print(div.format(), file=out)
        if not div.agrees:
            status = FAILED
        if args.per_node or not div.agrees:
            _per_node_table(graph, call, b, ref, args, out)
    return status


def _per_node_table(graph, call, backend, ref, args, out, limit: int = 12) -> None:
    diffs = node_differences(graph, call, backend, args.rtol, args.atol, ref=ref)
    shown = diffs if args.per_node else sorted(diffs, key=lambda d: -d.max_diff)[:limit]
    shown = sorted(shown, key=lambda d: d.index)
    print(f"{backend}: per node, max|{backend} - reference| "
          f"({'all' if args.per_node else f'the {len(shown)} largest of'} {len(diffs)}):",
          file=out)
    for d in shown:
        mark = "x" if d.diverges else " "
        print(f"  {mark} #{d.index:<4d} {d.node.op:18s} {d.max_diff:10.3g}  {d.where}", file=out)


def bench_script() -> Path:
    return Path(__file__).resolve().parents[2] / "bench" / "bench_llvm.py"


def cmd_bench(args, out) -> int:
    script = bench_script()
    if not script.is_file():
        print(f"irgraph bench: {script} not found: the benchmarks live in the source tree "
              f"(git clone the project and pip install -e .)", file=sys.stderr)
        return FAILED
    cmd = [sys.executable, str(script)] + (["--quick"] if args.quick else [])
    print("running " + " ".join(cmd), file=out, flush=True)
    return FAILED if subprocess.call(cmd) else OK


def max_output_diff(a, b) -> float:
    return max((max_abs_diff(x, y) for x, y in zip(a, b)), default=0.0)
