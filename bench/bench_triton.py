"""GPU benchmarks of the Triton backend's kernels, side by side with torch (cuDNN), in one run.

* conv2d forward, input gradient and kernel gradient against cuDNN in TFLOP/s on ResNet-like
  3x3 layers with 64-512 channels, TF32 on both sides (torch.backends.cudnn.allow_tf32 and our
  ``allow_tf32=True``), plus the forward in full fp32 (IEEE) on both sides;
* max pooling (ResNet's 3x3/2 stem pool and a 2x2/2 pool) against F.max_pool2d in GB/s;
* the fused multi-tensor Adam over 100M parameters (one launch, in place) against
  torch.optim.Adam(fused=True), in GB/s at 28 bytes per parameter (read p, g, m, v; write
  p, m, v), both compared with the device's copy bandwidth (torch's copy_ of a 1 GiB buffer).

Run on a GPU: ``python bench/bench_triton.py [--out results.json] [--quick]``; ``--quick``
uses small shapes (for a dry run, also under TRITON_INTERPRET=1 on the CPU, where the
numbers mean nothing). Every result is checked against torch before it is timed. Nothing
here asserts on time; targets: conv forward >= 0.7x cuDNN on 3x3 layers with 64+
channels, pooling and Adam >= 80% of copy bandwidth and no slower than torch.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as TF  # noqa: E402

from irgraph.backends.triton.kernels import conv as ck  # noqa: E402
from irgraph.backends.triton.kernels import optim as ok  # noqa: E402
from irgraph.backends.triton.kernels.pool import Pool  # noqa: E402
from irgraph.backends.triton.runtime import default_device, interpreting  # noqa: E402
from irgraph.ops import pool as pool_ops  # noqa: E402

RESNET_3X3 = [  # (N, C, H, W, O): the 3x3 stride-1 pad-1 layers of ResNet-18/34 stages
    (32, 64, 56, 56, 64), (32, 128, 28, 28, 128), (32, 256, 14, 14, 256), (32, 512, 7, 7, 512),
]
QUICK_CONV = [(1, 16, 5, 6, 16)]
POOLS = [((32, 64, 112, 112), 3, 2, 1), ((32, 256, 56, 56), 2, 2, 0)]
QUICK_POOLS = [((1, 2, 9, 9), 3, 2, 1)]


def machine() -> str:
    if interpreting():
        return f"Triton interpreter on CPU ({platform.processor() or platform.machine()})"
    p = torch.cuda.get_device_properties(0)
    return f"{p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}"


def bench(fn, reps: int) -> float:
    """Median seconds of ``fn`` (triton.testing.do_bench on a GPU, wall clock otherwise)."""
    if not interpreting():
        from triton.testing import do_bench
        return do_bench(fn, warmup=25, rep=reps * 5, return_mode="median") / 1e3
    fn()
    times = []
    for _ in range(max(1, reps // 10)):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def sync() -> None:
    if torch.cuda.is_available() and not interpreting():
        torch.cuda.synchronize()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / (b.double().abs().max() + 1e-30))


# ---------------------------------------------------------------- convolution
def conv_rows(shapes, dev, reps: int) -> list[dict]:
    rows = []
    for (n, c, h, w, o) in shapes:
        x = torch.randn(n, c, h, w, device=dev)
        wt = torch.randn(o, c, 3, 3, device=dev) / (3 * c) ** 0.5
        geo = ck.ConvGeometry.make(x.shape, wt.shape, (h, w), (1, 1), (1, 1, 1, 1), (1, 1), 1)
        flops = 2 * n * o * h * w * c * 9
        for tf32 in (True, False):
            torch.backends.cudnn.allow_tf32 = tf32
            torch.backends.cuda.matmul.allow_tf32 = tf32
            fwd = ck.conv_forward(geo, (n, o, h, w), "float32", dev, allow_tf32=tf32)
            y_ref = TF.conv2d(x, wt, padding=1)
            y = fwd(x, wt)
            row = dict(layer=f"{n}x{c}x{h}x{w}->{o} 3x3", precision="tf32" if tf32 else "ieee",
                       fwd_rel_err=rel_err(y, y_ref))
            row["fwd_tflops"] = flops / bench(lambda: fwd(x, wt), reps) / 1e12
            row["cudnn_fwd_tflops"] = flops / bench(lambda: TF.conv2d(x, wt, padding=1),
                                                    reps) / 1e12
            if tf32:
                gy = torch.randn_like(y_ref)
                dgrad = ck.conv_input_grad(geo, x.shape, "float32", dev, allow_tf32=True)
                wgrad = ck.conv_kernel_grad(geo, wt.shape, "float32", dev, allow_tf32=True)

                def aten_bwd(mask):
                    return torch.ops.aten.convolution_backward(
                        gy, x, wt, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)
                ref_dx, ref_dw, _ = aten_bwd([True, True, False])
                row["dgrad_rel_err"] = rel_err(dgrad(wt, gy), ref_dx)
                row["wgrad_rel_err"] = rel_err(wgrad(x, gy), ref_dw)
                row["dgrad_tflops"] = flops / bench(lambda: dgrad(wt, gy), reps) / 1e12
                row["cudnn_dgrad_tflops"] = flops / bench(
                    lambda: aten_bwd([True, False, False]), reps) / 1e12
                row["wgrad_tflops"] = flops / bench(lambda: wgrad(x, gy), reps) / 1e12
                row["cudnn_wgrad_tflops"] = flops / bench(
                    lambda: aten_bwd([False, True, False]), reps) / 1e12
            row["fwd_vs_cudnn"] = row["fwd_tflops"] / row["cudnn_fwd_tflops"]
            rows.append(row)
            print(_fmt(row), flush=True)
    return rows


# ---------------------------------------------------------------- pooling and Adam
def copy_bandwidth(dev, nbytes: int, reps: int) -> float:
    src = torch.empty(nbytes // 4, device=dev)
    dst = torch.empty_like(src)
    return 2 * nbytes / bench(lambda: dst.copy_(src), reps)


def pool_rows(shapes, dev, reps: int, copy_bw: float) -> list[dict]:
    rows = []
    for shape, k, s, p in shapes:
        x = torch.randn(*shape, device=dev)
        attrs = dict(kernel_size=(k, k), stride=(s, s), padding=(p, p, p, p),
                     dilation=(1, 1), ceil_mode=False)
        axes = pool_ops.regular_axes(shape[2:], **attrs)
        run = Pool("max", shape, axes, None, "float32", dev)
        y = run(x)
        ref = TF.max_pool2d(x, k, s, p)
        moved = (x.numel() + y.numel()) * 4
        row = dict(pool=f"max {k}x{k}/{s} pad {p} on {'x'.join(map(str, shape))}",
                   exact=bool(torch.equal(y, ref)))
        row["gbps"] = moved / bench(lambda: run(x), reps) / 1e9
        row["torch_gbps"] = moved / bench(lambda: TF.max_pool2d(x, k, s, p), reps) / 1e9
        row["vs_copy_bw"] = row["gbps"] * 1e9 / copy_bw
        row["vs_torch"] = row["gbps"] / row["torch_gbps"]
        rows.append(row)
        print(_fmt(row), flush=True)
    return rows


def adam_rows(total: int, dev, reps: int, copy_bw: float) -> list[dict]:
    """A model-like list of tensors (big matrices and small vectors) of ``total`` params."""
    sizes, left = [], total
    while left > 0:
        for s in (4096 * 1024, 1024, 1024 * 1024, 4096):
            sizes.append(min(s, left))
            left -= sizes[-1]
            if left <= 0:
                break
    ps = [torch.randn(s, device=dev) for s in sizes]
    gs = [torch.randn_like(p) for p in ps]
    ms = [torch.zeros_like(p) for p in ps]
    vs = [torch.zeros_like(p) for p in ps]
    hyper = [torch.tensor(v, device=dev) for v in (1e-3, 0.9, 0.999, 1e-8, 1.0)]
    plan = ok.MultiTensorUpdate("adam_update", sizes, "float32", dev, convention="torch")

    def ours():
        plan([ps, gs, ms, vs], [[h] * len(ps) for h in hyper], [ps, ms, vs])
    tp = [p.clone().requires_grad_(True) for p in ps]
    for p, g in zip(tp, gs):
        p.grad = g.clone()
    fused = not interpreting()
    topt = torch.optim.Adam(tp, lr=1e-3, fused=fused) if fused else torch.optim.Adam(tp)
    ours()
    topt.step()
    err = max(rel_err(a, b.detach()) for a, b in zip(ps[:4], tp[:4]))
    moved = 28 * total
    row = dict(adam=f"{total:,} params in {len(sizes)} tensors, one launch",
               rel_err_vs_torch=err)
    row["gbps"] = moved / bench(ours, reps) / 1e9
    row["torch_fused_gbps"] = moved / bench(topt.step, reps) / 1e9
    row["vs_copy_bw"] = row["gbps"] * 1e9 / copy_bw
    row["vs_torch"] = row["gbps"] / row["torch_fused_gbps"]
    print(_fmt(row), flush=True)
    return [row]


def _fmt(row: dict) -> str:
    return "  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in row.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--quick", action="store_true", help="small shapes (a dry run)")
    ap.add_argument("--adam-params", type=float, default=100e6)
    args = ap.parse_args()
    dev = default_device()
    reps = 1 if args.quick else 100
    torch.manual_seed(0)
    print(f"machine: {machine()}", flush=True)
    copy_bw = copy_bandwidth(dev, (1 << 20) if args.quick else (1 << 30), reps)
    print(f"copy bandwidth: {copy_bw / 1e9:.1f} GB/s", flush=True)
    res = {"machine": machine(), "copy_gbps": copy_bw / 1e9}
    res["conv"] = conv_rows(QUICK_CONV if args.quick else RESNET_3X3, dev, reps)
    res["pool"] = pool_rows(QUICK_POOLS if args.quick else POOLS, dev, reps, copy_bw)
    res["adam"] = adam_rows(int(1e4 if args.quick else args.adam_params), dev, reps, copy_bw)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
