"""A 2-layer Transformer encoder's training step: LLVM vs torch eager vs the reference.

``nn.TransformerEncoder`` of two ``TransformerEncoderLayer(d_model=256, nhead=4,
dim_feedforward=1024, dropout=0.0, batch_first=True)`` (post-norm, relu), a batch of 16
sequences of 128 tokens, the mean squared error to a random target, Adam; compiled as one
graph by ``compile_train``. torch does the same step eagerly (the same module class, the same
weights, autograd, ``torch.optim.Adam``). Every contender gets 2 threads; LLVM and torch
steps alternate and the best of ``--repeats`` each is printed (the machine may be shared).

    python bench/bench_transformer.py [--d 256] [--heads 4] [--seq 128] [--batch 16]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import best_of, describe, pin_threads  # noqa: E402

THREADS = 2
pin_threads(THREADS)                    # numpy's BLAS (the reference backend) too

import numpy as np  # noqa: E402

import irgraph.frontend as fe  # noqa: E402
from irgraph.frontend import F, nn, optim  # noqa: E402


def encoder(nnm, d: int, heads: int, ff: int):
    layer = nnm.TransformerEncoderLayer(d, heads, ff, dropout=0.0, batch_first=True)
    kw = {"enable_nested_tensor": False}
    return nnm.TransformerEncoder(layer, 2, **kw)



def torch_step(ours, args, x, y, lr: float):
    import torch
    torch.set_num_threads(THREADS)
    model = encoder(torch.nn, args.d, args.heads, args.ff)
    with torch.no_grad():
        mine = dict(ours.named_parameters())
        for n, p in model.named_parameters():
            p.copy_(torch.from_numpy(mine[n].data))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(tx), ty)
        loss.backward()
        opt.step()
        return loss.item()
    return step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--ff", type=int, default=1024)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--reference-repeats", type=int, default=1)
    ap.add_argument("--profile", action="store_true", help="LLVM time per op")
    args = ap.parse_args()
    import torch
    print(f"machine: {describe(f'Python {platform.python_version()}', f'torch {torch.__version__}')}")
    print(f"Transformer encoder: 2 layers, d_model {args.d}, {args.heads} heads, feed-forward "
          f"{args.ff}, seq {args.seq}, batch {args.batch}, float32, MSE, Adam; "
          f"{THREADS} threads each")
    r = np.random.default_rng(0)
    x = r.standard_normal((args.batch, args.seq, args.d)).astype(np.float32)
    y = r.standard_normal((args.batch, args.seq, args.d)).astype(np.float32)
    specs = (fe.TensorSpec(x.shape), fe.TensorSpec(y.shape))
    lr = 1e-3
    steps, compile_s, first, results = {}, {}, {}, {}
    for name in ("llvm", "reference"):
        fe.manual_seed(0)
        model = encoder(nn, args.d, args.heads, args.ff)
        t0 = time.perf_counter()
        opts = dict(threads=THREADS, profile=args.profile) if name == "llvm" else {}
        steps[name] = fe.compile_train(model, F.mse_loss, optim.Adam(lr=lr), *specs,
                                       backend=name, **opts)
        compile_s[name] = time.perf_counter() - t0
    fe.manual_seed(0)
    tstep = torch_step(encoder(nn, args.d, args.heads, args.ff), args, x, y, lr)
    compile_s["torch eager"] = 0.0
    run = {"llvm": lambda: steps["llvm"](x, y), "torch eager": tstep,
           "reference": lambda: steps["reference"](x, y)}
    for name, fn in run.items():
        out = fn()
        first[name] = float(out[0] if isinstance(out, (tuple, list)) else out)
    for _ in range(args.repeats):              # alternate, so both see the same load
        for name in ("llvm", "torch eager"):
            results[name] = min(results.get(name, np.inf), best_of(run[name], 1))
    results["reference"] = best_of(run["reference"], args.reference_repeats)
    base = results["torch eager"]
    print(f"{'':>12} {'step ms':>9} {'vs torch':>9} {'compile s':>10} {'first loss':>11}")
    for name in ("llvm", "torch eager", "reference"):
        t, c = results[name], compile_s[name]
        print(f"{name:>12} {1e3 * t:>9.1f} {base / t:>8.2f}x {c:>10.2f} {first[name]:>11.5f}")
    if args.profile:
        exe = getattr(steps["llvm"], "executable", None) or getattr(steps["llvm"], "exe", None)
        if exe is not None:
            print(exe.profile_by_op())


if __name__ == "__main__":
    main()
