"""Memory against compute in BPTT: full, recompute (checkpoints every k states) and truncated.

For the network of eq. 10.8-10.14 at one tau, each form's stored states (the bytes the
forward keeps for the backward pass), the memory planner's peak live bytes of the top-level
graph (passes/memory.py) plus the states a recompute segment rebuilds inside the backward
loop, and the step time (loss + all gradients). The unrolled form is printed as the
baseline: its peak holds every step's intermediate values.

    python bench/bench_tbptt.py [--tau 256] [--k 16] [--backend reference]
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import irgraph.backends as backends  # noqa: E402
import irgraph.frontend as fe  # noqa: E402
from irgraph.frontend import nn  # noqa: E402
from irgraph.passes.memory import plan_memory  # noqa: E402
from irgraph.passes.unroll import bptt, save_states, stored_state_bytes, truncate  # noqa: E402

from bench_bptt import BATCH, CLASSES, HIDDEN, INPUT, Loss, machine, timed  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tau", type=int, default=256)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--backend", default="reference")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    tau, k = args.tau, args.k
    fe.manual_seed(0)
    model = nn.RNNSequenceModel(INPUT, HIDDEN, CLASSES)
    params = dict(Loss(model).named_parameters())
    r = np.random.default_rng(0)
    x = r.standard_normal((tau, BATCH, INPUT)).astype(np.float32)
    y = r.integers(0, CLASSES, (tau, BATCH))
    g = fe.trace(Loss(model), fe.TensorSpec(x.shape), fe.TensorSpec(y.shape, "int64"))
    call = [x, y] + [params[p.name].data for p in g.params]
    state = BATCH * HIDDEN * 4
    forms = {
        "unrolled (full BPTT)": (dict(mode="unrolled"), None, 0),
        "rolled, all states": (dict(mode="rolled"), save_states(g, 1), 0),
        f"rolled, recompute k={k}": (dict(mode="rolled", checkpoint=k), save_states(g, k),
                                     k * state),
        f"truncated k={k}": (dict(mode="rolled", truncate_k=k), save_states(truncate(g, k), 1),
                             0),
    }
    print(f"machine: {machine()}; backend: {args.backend}; tau {tau}, batch {BATCH}, "
          f"hidden {HIDDEN}; one state = {state} B")
    print(f"{'form':>26} {'stored states B':>16} {'peak live B':>12} {'step ms':>9} "
          f"{'vs full':>8}")
    base, grads = None, {}
    for name, (opts, fwd, inner) in forms.items():
        vg = bptt(g, **opts)
        exe = backends.compile(vg, args.backend)
        grads[name] = exe(*call)
        step = timed(lambda: exe(*call), args.repeats)
        base = base or step
        stored = "-" if fwd is None else str(stored_state_bytes(fwd))
        peak = plan_memory(vg).peak_live_bytes + inner
        print(f"{name:>26} {stored:>16} {peak:>12} {1e3 * step:>9.1f} {step / base:>8.3g}")
    full, recompute = grads["rolled, all states"], grads[f"rolled, recompute k={k}"]
    print("recompute gives the full gradients:",
          all(np.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(full, recompute)))
    trunc = grads[f"truncated k={k}"]
    print("truncated changes the recurrent weight's gradient by (relative):",
          f"{np.linalg.norm(trunc[2] - full[2]) / np.linalg.norm(full[2]):.3f}")


if __name__ == "__main__":
    main()
