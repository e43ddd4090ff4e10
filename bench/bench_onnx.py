"""ONNX models on irgraph's LLVM backend, side by side with onnxruntime and torch eager.

    python bench/bench_onnx.py [--quick] [--size 224] [--models ...] [--pipeline "default, fuse"]
                               [--threads 2] [--runs N] [--threads 1 --cpu]

ResNet-18 and MobileNetV2 (tests/onnx_models.py, random weights) exported by
``torch.onnx.export``, imported with batch norm folded, compiled by the LLVM backend; the
same ONNX file runs on onnxruntime's CPU execution provider; torch runs the model eagerly.
All with ``--threads`` (default 2), batch 1 and 8, input 3 x size x size (default 224). Prints ms per
inference (best of N runs: the shared machine is noisy; the three take turns, three calls
each, so a slow stretch of the machine hits all of them) and the ratio onnxruntime / LLVM
(> 1: LLVM faster), and the machine. The LLVM column compiles with ``--pipeline`` (default
``default, fuse``: convolutions with their bias, activation and residual add as one kernel,
as onnxruntime's default graph optimizations fuse them). A script, not a test: nothing here
asserts a speed.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))
from machine import describe  # noqa: E402

# seconds between one engine's turn and the next: onnxruntime's pool threads spin on after a
# run returns (the process's CPU time during a sleep after one run: 26-29 ms), on the cores
# the next engine's threads would use; a pause longer than that keeps the spinning out of
# the next turn
TURN_PAUSE_S = 0.05


def best_ms(fns: dict, runs: int, clock=time.perf_counter, block: int = 3) -> dict:
    """Best ms per call of each of ``fns`` (name -> callable) over ``runs`` calls each,
    taken in rounds of ``block`` calls per engine in turn (``TURN_PAUSE_S`` apart): on a
    VM whose cores come and go, a slow stretch hits every engine alike instead of the one
    whose turn it is."""
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn()                               # warm up
    for _ in range(-(-runs // block)):
        for name, fn in fns.items():
            time.sleep(TURN_PAUSE_S)
            for _ in range(block):
                t = clock()
                fn()
                times[name].append(clock() - t)
    return {name: 1000 * min(ts) for name, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer runs, 64x64 inputs")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--models", default="resnet18,mobilenet_v2",
                    help="comma-separated (each compiles in seconds: the 'compile s' column)")
    ap.add_argument("--pipeline", default="default, fuse",
                    help="the LLVM compile's pass pipeline ('default': no fusion)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cpu", action="store_true",
                    help="time by the calling thread's CPU time (with --threads 1): on a "
                         "shared machine, time spent descheduled does not count")
    ap.add_argument("--runs", type=int, default=None, help="timed runs (best of)")
    args = ap.parse_args()
    if args.cpu and args.threads != 1:
        ap.error("--cpu times the calling thread alone: use it with --threads 1")
    THREADS = args.threads
    clock = time.thread_time if args.cpu else time.perf_counter
    size = 64 if args.quick else args.size
    runs = args.runs or (3 if args.quick else 10)

    import onnxruntime as ort
    import torch

    import onnx_models as om
    from irgraph.frontend.onnx import import_onnx
    torch.set_num_threads(THREADS)
    print(describe(f"torch {torch.__version__}", f"onnxruntime {ort.__version__}",
                   f"{THREADS} threads each"))
    print(f"input 3x{size}x{size}; ms per inference, best of {runs} "
          f"({'thread CPU time' if args.cpu else 'wall clock'}); LLVM pipeline "
          f"{args.pipeline!r}; load average {os.getloadavg()[0]:.2f}")
    print(f"{'model':14s} {'batch':>5s} {'llvm':>9s} {'onnxruntime':>12s} {'torch':>9s} "
          f"{'ort/llvm':>9s} {'compile s':>10s}")
    for name in args.models.split(","):
        model = om.build(name)
        for batch in (1, 8):
            x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(
                np.float32)
            data = om.to_onnx(model, torch.from_numpy(x))
            t = time.perf_counter()
            exe = import_onnx(data).compile("llvm", threads=THREADS, pipeline=args.pipeline)
            compile_s = time.perf_counter() - t
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = THREADS
            opts.inter_op_num_threads = 1
            sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
            want = om.torch_out(model, x)
            got = exe(x)[0]
            err = float(np.abs(got - want).max() / max(1.0, np.abs(want).max()))
            assert err < 1e-3, f"{name}: LLVM output differs from torch's by {err}"
            xt = torch.from_numpy(x)

            def eager():
                with torch.no_grad():
                    return model(xt)
            t = best_ms({"llvm": lambda: exe(x), "ort": lambda: sess.run(None, {"input": x}),
                         "torch": eager}, runs, clock)
            t_llvm, t_ort, t_torch = t["llvm"], t["ort"], t["torch"]
            print(f"{name:14s} {batch:5d} {t_llvm:9.2f} {t_ort:12.2f} {t_torch:9.2f} "
                  f"{t_ort / t_llvm:9.2f} {compile_s:10.1f}", flush=True)


if __name__ == "__main__":
    main()
