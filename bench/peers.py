"""irgraph's LLVM backend beside its peers on the CPU, side by side in ONE process: the same
weights and batches, losses checked equal before anything is timed, every peer that is
installed (jax.jit, torch eager with fused Adam, torch.compile/Inductor), steps interleaved
in blocks so a change in machine load hits every peer alike, after ``--warmup`` untimed
steps of each (compiles and caches warm; irgraph's default thread count settles).

    python bench/peers.py [--rounds N] [--block 5] [--warmup 20] [--threads 2] [--busy]
                          [--only mlp rnn] [--interference CALLS]

Workloads (float32): an MLP 784-512-256-10 training step (batch 128), LeNet with batch norm
(batch 64, 1x28x28), a tanh RNN (hidden 256, 64 steps, 64 inputs, batch 32, a linear head
on the last state), each with cross entropy and Adam (lr 1e-3, torch's convention); and a
ResNet-ish block for inference: three 3x3 convolutions 64->64 (padding 1, ReLU, a residual
add) on 32x64x16x16. Prints the machine, the load average before and after, median and best
milliseconds per step of each peer, and irgraph's speedup over jax.jit and over the faster
torch; then the median CPU milliseconds per step (time.process_time: every thread of the
process, a library's spinning threads included) and the same speedups by CPU time. ``--busy`` first starts a process that keeps one core busy (stopped at the end).
``--threads`` is every library's thread count; irgraph runs with its default (adaptive)
thread count and, as columns of their own, on one thread and on ``--threads`` threads (the
two counts the default chooses between; "default / best fixed" is its median over the
better one's). Last, an MLP forward's median alone,
with a numpy matmul between calls, and alone again (``--interference``).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from machine import describe  # noqa: E402  (bench/ is on sys.path when run)

import numpy as np  # noqa: E402

LR, B1, B2, EPS = 1e-3, 0.9, 0.999, 1e-8
# Rounds of --block steps per peer. Beside a busy process a two-thread step is fast or, when
# a thread lost its core, slow by a scheduler slice (MLP: 1.5 or 4.6-9 ms, a third of the
# calls slow), so its median over 50 steps moves by some 10% from run to run: two runs of
# the same code gave the default thread count 1.16 and 1.25 times the fixed two threads'
# median over 50 steps each, 1.01 and 1.08 over 200.
ROUNDS, BUSY_ROUNDS = 10, 40
LOSS_TOL = 1e-5          # |loss difference| allowed between peers (relative to max(1, |loss|))


# ---------------------------------------------------------------- the workloads (irgraph)
def ours_models():
    import irgraph.frontend as fe
    from irgraph.frontend import nn

    class RNNNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.RNN(64, 256)
            self.out = nn.Linear(256, 10)

        def forward(self, x):
            y, _ = self.rnn(x)
            return self.out(y[-1])

    class ResBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(64, 64, 3, padding=1)
            self.c2 = nn.Conv2d(64, 64, 3, padding=1)
            self.c3 = nn.Conv2d(64, 64, 3, padding=1)

        def forward(self, x):
            y = fe.F.relu(self.c1(x))
            y = fe.F.relu(self.c2(y))
            return fe.F.relu(self.c3(y) + x)

    def mlp():
        return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(),
                             nn.Linear(256, 10))

    def lenet():
        return nn.Sequential(nn.Conv2d(1, 6, 5), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(6, 16, 5), nn.BatchNorm2d(16), nn.ReLU(),
                             nn.MaxPool2d(2), nn.Flatten(), nn.Linear(256, 120), nn.ReLU(),
                             nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
    return {"mlp": mlp, "lenet": lenet, "rnn": RNNNet, "resnet": ResBlock}


WORKLOADS = {
    # name: (title, input shape, train?)
    "mlp": ("MLP 784-512-256-10 train, b128", (128, 784), True),
    "lenet": ("LeNet+BN train, b64", (64, 1, 28, 28), True),
    "rnn": ("tanh RNN h256 T64 train, b32", (64, 32, 64), True),
    "resnet": ("ResNet-ish 3xconv3x3-64 infer, b32", (32, 64, 16, 16), False),
}


def batch(name: str):
    shape, train = WORKLOADS[name][1], WORKLOADS[name][2]
    r = np.random.default_rng(0)
    x = r.standard_normal(shape).astype(np.float32)
    n = shape[1] if name == "rnn" else shape[0]
    y = r.integers(0, 10, n).astype(np.int64)
    return x, (y if train else None)


def irgraph_peer(name: str, model, threads: int | None):
    import irgraph.frontend as fe
    from irgraph.frontend import nn, optim
    x, y = batch(name)
    opts = {} if threads is None else {"threads": threads}
    if y is None:
        f = fe.compile(model, fe.TensorSpec(x.shape), backend="llvm", **opts)
        return lambda: f(x)
    step = fe.compile_train(model, nn.CrossEntropyLoss(), optim.Adam(lr=LR, convention="torch"),
                            fe.TensorSpec(x.shape), fe.TensorSpec(y.shape, "int64"),
                            backend="llvm", **opts)
    return lambda: step(x, y)


# ---------------------------------------------------------------- torch
def torch_model(name: str, state: dict):
    import torch
    tnn = torch.nn
    if name == "mlp":
        m = tnn.Sequential(tnn.Linear(784, 512), tnn.ReLU(), tnn.Linear(512, 256), tnn.ReLU(),
                           tnn.Linear(256, 10))
    elif name == "lenet":
        m = tnn.Sequential(tnn.Conv2d(1, 6, 5), tnn.BatchNorm2d(6), tnn.ReLU(), tnn.MaxPool2d(2),
                           tnn.Conv2d(6, 16, 5), tnn.BatchNorm2d(16), tnn.ReLU(),
                           tnn.MaxPool2d(2), tnn.Flatten(), tnn.Linear(256, 120), tnn.ReLU(),
                           tnn.Linear(120, 84), tnn.ReLU(), tnn.Linear(84, 10))
    elif name == "rnn":
        class RNNNet(tnn.Module):
            def __init__(self):
                super().__init__()
                self.rnn = tnn.RNN(64, 256)
                self.out = tnn.Linear(256, 10)

            def forward(self, x):
                return self.out(self.rnn(x)[0][-1])
        m = RNNNet()
    else:
        class ResBlock(tnn.Module):
            def __init__(self):
                super().__init__()
                self.c1, self.c2, self.c3 = (tnn.Conv2d(64, 64, 3, padding=1) for _ in range(3))

            def forward(self, x):
                y = torch.relu(self.c1(x))
                y = torch.relu(self.c2(y))
                return torch.relu(self.c3(y) + x)
        m = ResBlock()
    own = m.state_dict()
    with torch.no_grad():
        for k, v in own.items():
            if k in state and not k.endswith("num_batches_tracked"):
                v.copy_(torch.from_numpy(np.ascontiguousarray(state[k])))
    return m


def torch_peer(name: str, state: dict, compiled: bool):
    import torch
    x, y = batch(name)
    m = torch_model(name, state)
    tx = torch.from_numpy(x)
    run = torch.compile(m) if compiled else m
    if y is None:
        m.eval()

        def infer():
            with torch.no_grad():
                return run(tx).numpy()
        return infer
    ty = torch.from_numpy(y)
    opt = torch.optim.Adam(m.parameters(), lr=LR, fused=True)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(run(tx), ty)
        loss.backward()
        opt.step()
        return float(loss.detach())
    return step


def cxx_compiler() -> str | None:
    return next((c for c in (os.environ.get("CXX"), "g++", "c++", "clang++")
                 if c and shutil.which(c)), None)


# ---------------------------------------------------------------- jax
def jax_peer(name: str, state: dict):
    import jax
    import jax.numpy as jnp
    from jax import lax
    x, y = batch(name)
    params = {k: jnp.asarray(v) for k, v in state.items()
              if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}

    def linear(p, k, h):
        return h @ p[k + ".weight"].T + p[k + ".bias"]

    def conv(p, k, h, pad):
        out = lax.conv_general_dilated(h, p[k + ".weight"], (1, 1), [(pad, pad)] * 2,
                                       dimension_numbers=("NCHW", "OIHW", "NCHW"))
        return out + p[k + ".bias"][None, :, None, None]

    def bn(p, k, h):
        mu = h.mean(axis=(0, 2, 3), keepdims=True)
        var = ((h - mu) ** 2).mean(axis=(0, 2, 3), keepdims=True)
        return ((h - mu) / jnp.sqrt(var + 1e-5) * p[k + ".weight"][None, :, None, None]
                + p[k + ".bias"][None, :, None, None])

    def pool(h):
        return lax.reduce_window(h, -jnp.inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")

    def forward(p, h):
        if name == "mlp":
            h = jax.nn.relu(linear(p, "0", h))
            h = jax.nn.relu(linear(p, "2", h))
            return linear(p, "4", h)
        if name == "lenet":
            h = pool(jax.nn.relu(bn(p, "1", conv(p, "0", h, 0))))
            h = pool(jax.nn.relu(bn(p, "5", conv(p, "4", h, 0))))
            h = h.reshape(h.shape[0], -1)
            h = jax.nn.relu(linear(p, "9", h))
            h = jax.nn.relu(linear(p, "11", h))
            return linear(p, "13", h)
        if name == "rnn":
            pre = h @ p["rnn.weight_ih_l0"].T + p["rnn.bias_ih_l0"] + p["rnn.bias_hh_l0"]
            w_hh_t = p["rnn.weight_hh_l0"].T

            def cell(hc, pre_t):
                hc = jnp.tanh(pre_t + hc @ w_hh_t)
                return hc, None
            last, _ = lax.scan(cell, jnp.zeros((h.shape[1], 256), h.dtype), pre)
            return linear(p, "out", last)
        r = jax.nn.relu(conv(p, "c1", h, 1))
        r = jax.nn.relu(conv(p, "c2", r, 1))
        return jax.nn.relu(conv(p, "c3", r, 1) + h)

    jx = jnp.asarray(x)
    if y is None:
        f = jax.jit(forward)
        return lambda: np.asarray(f(params, jx).block_until_ready())
    jy = jnp.asarray(y)

    def loss_fn(p):
        logp = jax.nn.log_softmax(forward(p, jx))
        return -jnp.take_along_axis(logp, jy[:, None], axis=1).mean()

    def step(p, m, v, t):
        loss, g = jax.value_and_grad(loss_fn)(p)
        m = jax.tree_util.tree_map(lambda m, g: B1 * m + (1 - B1) * g, m, g)
        v = jax.tree_util.tree_map(lambda v, g: B2 * v + (1 - B2) * g * g, v, g)
        c1, c2 = 1 - B1 ** t, 1 - B2 ** t
        p = jax.tree_util.tree_map(
            lambda p, m, v: p - LR * (m / c1) / (jnp.sqrt(v / c2) + EPS), p, m, v)
        return p, m, v, loss
    jstep = jax.jit(step, donate_argnums=(0, 1, 2))
    st = {"p": params, "m": jax.tree_util.tree_map(jnp.zeros_like, params),
          "v": jax.tree_util.tree_map(jnp.zeros_like, params), "t": 0}

    def run():
        st["t"] += 1
        st["p"], st["m"], st["v"], loss = jstep(st["p"], st["m"], st["v"],
                                                jnp.float32(st["t"]))
        return float(loss.block_until_ready())
    return run


# ---------------------------------------------------------------- timing
def start_busy() -> subprocess.Popen:
    """A process that keeps one core busy until stopped."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def time_interleaved(peers: dict, rounds: int, block: int):
    """Each round runs a block of steps of every peer, in an order drawn afresh each round
    (seeded): the peer after a thread-pool library's block finds its threads still spinning,
    and with a rotation of one order the same peer would always follow the same library.
    Returns the wall seconds of every step and the process CPU seconds (every thread of the
    process, spinning included) of every step, per peer."""
    times: dict[str, list[float]] = {k: [] for k in peers}
    cpu: dict[str, list[float]] = {k: [] for k in peers}
    names = list(peers)
    orders = np.random.default_rng(0)
    for r in range(rounds):
        for k in [names[i] for i in orders.permutation(len(names))]:
            fn = peers[k]
            for _ in range(block):
                c0, t0 = time.process_time(), time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
                cpu[k].append(time.process_time() - c0)
    return times, cpu


def check_equal(name: str, results: dict) -> str:
    """The first steps' losses (or the outputs) of every peer against irgraph's."""
    base = results["irgraph"]
    worst = 0.0
    for k, r in results.items():
        a, b = np.asarray(r, np.float64), np.asarray(base, np.float64)
        scale = max(1.0, float(np.abs(b).max()))
        d = float(np.abs(a - b).max()) / scale
        worst = max(worst, d)
        if not d <= (LOSS_TOL if WORKLOADS[name][2] else 1e-4):
            raise SystemExit(f"{name}: {k} disagrees with irgraph: {a.ravel()[:4]} vs "
                             f"{b.ravel()[:4]} (relative difference {d:.2e})")
    return f"{worst:.1e}"


def interference(calls: int) -> None:
    """An MLP forward (784-512-256-10, batch 128) compiled for LLVM alone, with a 256x256
    numpy matmul (numpy's BLAS thread pool) before every call, and alone again after."""
    import irgraph.frontend as fe
    fe.manual_seed(0)
    f = fe.compile(ours_models()["mlp"](), fe.TensorSpec((128, 784)), backend="llvm")
    x = np.random.default_rng(0).standard_normal((128, 784)).astype(np.float32)
    a = np.random.default_rng(1).standard_normal((256, 256)).astype(np.float32)

    def median_ms(mix: bool) -> float:
        ts = []
        for _ in range(calls):
            if mix:
                a @ a
            t0 = time.perf_counter()
            f(x)
            ts.append(time.perf_counter() - t0)
        return 1e3 * statistics.median(ts)
    f(x)
    print(f"\nMLP forward (LLVM), median ms over {calls} calls: alone {median_ms(False):.2f}, "
          f"numpy matmul between calls {median_ms(True):.2f}, alone after "
          f"{median_ms(False):.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=None,
                    help=f"rounds of --block steps per peer (default {ROUNDS}, with --busy "
                         f"{BUSY_ROUNDS})")
    ap.add_argument("--block", type=int, default=5, help="steps per peer per round")
    ap.add_argument("--warmup", type=int, default=20,
                    help="untimed steps per peer before the rounds")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--busy", action="store_true", help="start a process that keeps one core "
                    "busy for the whole run")
    ap.add_argument("--only", nargs="*", choices=list(WORKLOADS), default=list(WORKLOADS))
    ap.add_argument("--interference", type=int, default=300, metavar="CALLS",
                    help="calls per phase of the numpy-interference check (0: none)")
    args = ap.parse_args()
    if args.rounds is None:
        args.rounds = BUSY_ROUNDS if args.busy else ROUNDS
    os.environ.setdefault("XLA_FLAGS", f"--xla_cpu_multi_thread_eigen=true "
                          f"intra_op_parallelism_threads={args.threads}")
    versions = []
    have = {}
    try:
        import torch
        torch.set_num_threads(args.threads)
        have["torch"] = True
        versions.append(f"torch {torch.__version__}")
    except ImportError:
        have["torch"] = False
    try:
        import jax
        have["jax"] = True
        versions.append(f"jax {jax.__version__}")
    except ImportError:
        have["jax"] = False
    cxx = cxx_compiler()
    print(f"machine: {describe(*versions)}")
    if not have["jax"]:
        print("jax.jit: not installed (pip install -e .[bench])")
    if not have["torch"]:
        print("torch: not installed")
    elif not cxx:
        print("torch.compile: no C++ compiler found (Inductor needs one): left out")
    else:
        print(f"torch.compile: Inductor with {cxx}")
    busy = start_busy() if args.busy else None
    try:
        time.sleep(0.5 if busy else 0)
        print(f"load average before: {os.getloadavg()[0]:.2f}"
              + ("  (--busy: one core kept busy by another process)" if busy else ""))
        rows = [run_workload(name, args, have, cxx) for name in args.only]
        if args.interference:
            interference(args.interference)
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    cols = ["irgraph", "jax.jit", "torch eager", "torch.compile", "irgraph 1 thread",
            f"irgraph {args.threads} threads"]
    print(f"\nmedian | best ms per step, {args.rounds} x {args.block} steps each, interleaved"
          + (", one core busy" if busy else ""))
    print("| workload | " + " | ".join(cols) + " | vs jax | vs best torch | default / best "
          "fixed | losses |")
    print("|---" * (len(cols) + 5) + "|")
    for title, med, best, eq, _ in rows:
        cells = [f"{med[c]:.1f} \\| {best[c]:.1f}" if c in med else "-" for c in cols]
        print(f"| {title} | " + " | ".join(cells) + f" | {_ratios(med)} | "
              f"{_vs_fixed(med, cols[-2:])} | {eq} |")
    print(f"\nCPU ms per step (process time of every thread, spinning included), median")
    print("| workload | " + " | ".join(cols) + " | vs jax | vs best torch |")
    print("|---" * (len(cols) + 3) + "|")
    for title, _, _, _, cpu in rows:
        cells = [f"{cpu[c]:.1f}" if c in cpu else "-" for c in cols]
        print(f"| {title} | " + " | ".join(cells) + f" | {_ratios(cpu)} |")


def _vs_fixed(ms: dict, fixed: list) -> str:
    """The default (adaptive) thread count's median over the better fixed count's."""
    have = [ms[c] for c in fixed if c in ms]
    return f"{ms['irgraph'] / min(have):.2f}" if have else "-"


def _ratios(ms: dict) -> str:
    """irgraph's speedup over jax.jit and over the faster torch: two table cells."""
    vs_jax = f"{ms['jax.jit'] / ms['irgraph']:.2f}x" if "jax.jit" in ms else "-"
    tor = [ms[c] for c in ("torch eager", "torch.compile") if c in ms]
    vs_torch = f"{min(tor) / ms['irgraph']:.2f}x" if tor else "-"
    return f"{vs_jax} | {vs_torch}"


def run_workload(name: str, args, have: dict, cxx):
    import irgraph.frontend as fe
    title = WORKLOADS[name][0]
    print(f"\n{title}: compiling ...", flush=True)
    fe.manual_seed(0)
    make = ours_models()[name]
    model = make()
    state = model.state_dict()
    peers = {"irgraph": irgraph_peer(name, model, None)}
    one = make()
    one.load_state_dict(state)
    peers["irgraph 1 thread"] = irgraph_peer(name, one, 1)
    if args.threads > 1:        # the default beside both fixed counts it chooses between
        every = make()
        every.load_state_dict(state)
        peers[f"irgraph {args.threads} threads"] = irgraph_peer(name, every, args.threads)
    if have["jax"]:
        peers["jax.jit"] = jax_peer(name, state)
    if have["torch"]:
        peers["torch eager"] = torch_peer(name, state, compiled=False)
        if cxx:
            peers["torch.compile"] = torch_peer(name, state, compiled=True)
    # before timing: every peer's first steps (compiling them) give irgraph's losses
    results = {k: [fn() for _ in range(2)] for k, fn in peers.items()}
    eq = check_equal(name, results)
    for fn in peers.values():       # warm-up, untimed (irgraph's thread choice settles)
        for _ in range(args.warmup):
            fn()
    times, cpu = time_interleaved(peers, args.rounds, args.block)
    med = {k: 1e3 * statistics.median(t) for k, t in times.items()}
    best = {k: 1e3 * min(t) for k, t in times.items()}
    cpu_med = {k: 1e3 * statistics.median(t) for k, t in cpu.items()}
    for k in peers:
        print(f"  {k:18s} median {med[k]:8.2f} ms   best {best[k]:8.2f} ms   "
              f"CPU median {cpu_med[k]:8.2f} ms")
    return title, med, best, eq, cpu_med


if __name__ == "__main__":
    main()
