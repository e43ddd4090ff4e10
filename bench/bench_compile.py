"""Where compile time goes: cold and cached compiles of the benchmark models on the LLVM
backend, per phase, side by side with ``jax.jit`` (``.lower().compile()``) when jax is
installed (``pip install -e .[bench]``).

    python bench/bench_compile.py [--models mlp,cnn,rnn16,rnn64,rnn256,lstm] [--threads 2]
                                  [--serial] [--no-jax] [--repeats 1]

Models (training steps: forward, cross-entropy, backward, Adam):
* ``mlp``: 784-512-256-10, batch 128; ``cnn``: LeNet with batch norm on 1x28x28, batch 64
  (both as in bench_llvm.py);
* ``rnnT``: a tanh RNN (input 32, hidden 256) over T steps, batch 32, head on the last
  state (bench_llvm.py's (c) for T = 64), in the default BPTT mode;
* ``rnnT-unrolled``: the same with ``bptt="unrolled"`` (every step a copy of the cell);
* ``lstm``: an LSTM (input 32, hidden 256) over 64 steps, batch 32.

Each model is compiled cold (a fresh, empty cache folder through IRGRAPH_CACHE_DIR; the
target's runtime kernels, compiled once per machine, are built beforehand and reported on
their own line), then again (cached; ``c.cpu``: its CPU time, the pass pipeline's result
read back from the disk cache for a model with a recurrence), then once more after its graph
was traced from a renamed copy (the same code: a cache hit). Phases: ``trace`` (Python tracing),
``autodiff`` (the training-step graph: BPTT, gradients, optimizer), ``passes`` (one
PassManager: the pipeline and the passes the backend declares), then the LLVM backend's own
(``backends.llvm.jit.phase_times``): ``ir_build`` (the compile threads start on each
kernel as soon as it is built); ``llvm_opt`` and ``codegen`` of modules compiled on one
thread; ``llvm``, with several compile threads, the wait for their modules after the IR
was built (optimization and machine code together); ``cache`` (one batch of writes per
compile); ``load``. ``cpu`` is the process's CPU time of the cold compile (all threads):
on a shared machine, less noisy than the wall time. A script,
not a test: nothing here asserts a time; the machine may be shared (best of ``--repeats``).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import models  # noqa: E402
from machine import describe  # noqa: E402

import irgraph.frontend as fe  # noqa: E402
import irgraph.frontend.train as ftrain  # noqa: E402
from irgraph.backends.llvm import gemm, jit  # noqa: E402
from irgraph.frontend import nn, optim  # noqa: E402

PHASES = ("trace", "autodiff", "passes", "ir_build", "llvm_opt", "codegen", "llvm", "cache",
          "load")


# ---------------------------------------------------------------- models
class RNNClassifier(nn.Module):
    """tanh RNN over the sequence, a linear head on the last state."""

    def __init__(self, n_in: int, hidden: int, n_out: int, cell: str = "rnn"):
        super().__init__()
        self.rnn = nn.RNN(n_in, hidden) if cell == "rnn" else nn.LSTM(n_in, hidden)
        self.head = nn.Linear(hidden, n_out)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[-1])


def model(kind: str):
    if kind == "mlp":
        return models.mlp()
    if kind == "cnn":
        return models.lenet()
    fe.manual_seed(0)
    return RNNClassifier(32, 256, 10, "lstm" if kind == "lstm" else "rnn")


def spec(kind: str):
    """(input shape, batch, bptt mode) of a model name."""
    if kind == "mlp":
        return (128, 784), 128, "auto"
    if kind == "cnn":
        return (64, 1, 28, 28), 64, "auto"
    if kind == "lstm":
        return (64, 32, 32), 32, "auto"
    steps, _, mode = kind[3:].partition("-")
    return (int(steps), 32, 32), 32, mode or "auto"


def train_options(mode: str) -> dict:
    """``bptt=`` when compile_train takes it (else the default mode only)."""
    import inspect
    if "bptt" in inspect.signature(fe.compile_train).parameters:
        return {"bptt": mode}
    if mode != "auto":
        raise SystemExit("this compile_train has no bptt= option")
    return {}


def our_step(kind: str, threads: int):
    shape, n, mode = spec(kind)
    return fe.compile_train(model(kind), nn.CrossEntropyLoss(), optim.Adam(lr=1e-3),
                            fe.TensorSpec(shape), fe.TensorSpec((n,), "int64"),
                            backend="llvm", threads=threads, **train_options(mode))


# ---------------------------------------------------------------- phase timing
_TIMES: dict[str, float] = {}


@contextmanager
def instrumented():
    """Time the frontend's phases by wrapping the functions compile_train calls."""
    from irgraph.passes.manager import PassManager
    wrapped = [(ftrain, "trace_with", "trace"), (ftrain, "training_step", "autodiff"),
               (PassManager, "run", "passes")]
    saved = []
    for mod, name, phase in wrapped:
        fn = getattr(mod, name)
        saved.append((mod, name, fn))

        def timed(*a, _fn=fn, _phase=phase, **k):
            t = time.perf_counter()
            try:
                return _fn(*a, **k)
            finally:
                _TIMES[_phase] = _TIMES.get(_phase, 0.0) + time.perf_counter() - t
        setattr(mod, name, timed)
    try:
        yield
    finally:
        for mod, name, fn in saved:
            setattr(mod, name, fn)


def measure(fn) -> tuple[float, dict[str, float], dict[str, int]]:
    """(wall seconds, seconds per phase (``cpu``: the process's CPU time, all threads),
    the backend's counters) of ``fn()``."""
    _TIMES.clear()
    jit.reset_stats()
    t, c = time.perf_counter(), time.process_time()
    fn()
    total = time.perf_counter() - t
    phases = dict(_TIMES, cpu=time.process_time() - c)
    phases.update(jit.phase_times())
    return total, phases, jit.stats()


# ---------------------------------------------------------------- jax
def jax_compile_time(kind: str) -> float | None:
    """Seconds for ``jax.jit(step).lower(...).compile()`` of the same training step (SGD
    with Adam's arithmetic written out); None without jax."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    jax.jit(lambda a: a + 1).lower(jnp.zeros(2)).compile()     # start XLA's client first
    shape, n, _ = spec(kind)
    key = jax.random.PRNGKey(0)

    def dense(k, i, o):
        return {"w": jax.random.normal(k, (i, o)) * 0.05, "b": jnp.zeros(o)}

    if kind == "mlp":
        ks = jax.random.split(key, 3)
        params = [dense(ks[0], 784, 512), dense(ks[1], 512, 256), dense(ks[2], 256, 10)]

        def forward(p, x):
            for layer in p[:-1]:
                x = jax.nn.relu(x @ layer["w"] + layer["b"])
            return x @ p[-1]["w"] + p[-1]["b"]
    elif kind == "cnn":
        ks = jax.random.split(key, 5)
        params = {"c1": jax.random.normal(ks[0], (6, 1, 5, 5)) * 0.1, "g1": jnp.ones(6),
                  "b1": jnp.zeros(6), "c2": jax.random.normal(ks[1], (16, 6, 5, 5)) * 0.1,
                  "g2": jnp.ones(16), "b2": jnp.zeros(16), "f1": dense(ks[2], 400, 120),
                  "f2": dense(ks[3], 120, 84), "f3": dense(ks[4], 84, 10)}

        def bn(x, g, b):
            m = x.mean((0, 2, 3), keepdims=True)
            v = x.var((0, 2, 3), keepdims=True)
            return (x - m) / jnp.sqrt(v + 1e-5) * g[None, :, None, None] + b[None, :, None, None]

        def pool(x):
            return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2),
                                         "VALID")

        def forward(p, x):
            conv = jax.lax.conv_general_dilated
            x = pool(jax.nn.relu(bn(conv(x, p["c1"], (1, 1), ((2, 2), (2, 2))), p["g1"],
                                    p["b1"])))
            x = pool(jax.nn.relu(bn(conv(x, p["c2"], (1, 1), "VALID"), p["g2"], p["b2"])))
            x = x.reshape(x.shape[0], -1)
            x = jax.nn.relu(x @ p["f1"]["w"] + p["f1"]["b"])
            x = jax.nn.relu(x @ p["f2"]["w"] + p["f2"]["b"])
            return x @ p["f3"]["w"] + p["f3"]["b"]
    else:
        lstm = kind == "lstm"
        gates = 4 if lstm else 1
        ks = jax.random.split(key, 3)
        params = {"wx": jax.random.normal(ks[0], (32, gates * 256)) * 0.05,
                  "wh": jax.random.normal(ks[1], (256, gates * 256)) * 0.05,
                  "b": jnp.zeros(gates * 256), "head": dense(ks[2], 256, 10)}

        def forward(p, xs):
            def cell(carry, x):
                h, c = carry
                z = x @ p["wx"] + h @ p["wh"] + p["b"]
                if not lstm:
                    h = jnp.tanh(z)
                    return (h, c), None
                i, f, g, o = jnp.split(z, 4, axis=-1)
                c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
                h = jax.nn.sigmoid(o) * jnp.tanh(c)
                return (h, c), None
            h0 = jnp.zeros((xs.shape[1], 256))
            (h, _), _ = jax.lax.scan(cell, (h0, h0), xs)
            return h @ p["head"]["w"] + p["head"]["b"]

    def loss(p, x, y):
        logp = jax.nn.log_softmax(forward(p, x))
        return -jnp.take_along_axis(logp, y[:, None], 1).mean()

    def step(p, m, v, x, y, t):
        g = jax.grad(loss)(p, x, y)
        m = jax.tree_util.tree_map(lambda m, g: 0.9 * m + 0.1 * g, m, g)
        v = jax.tree_util.tree_map(lambda v, g: 0.999 * v + 0.001 * g * g, v, g)
        p = jax.tree_util.tree_map(
            lambda p, m, v: p - 1e-3 * (m / (1 - 0.9 ** t)) / (jnp.sqrt(v / (1 - 0.999 ** t))
                                                               + 1e-8), p, m, v)
        return p, m, v
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    x = jnp.zeros(shape, jnp.float32)
    y = jnp.zeros((n,), jnp.int32)
    t = time.perf_counter()
    jax.jit(step).lower(params, zeros, zeros, x, y, 1.0).compile()
    return time.perf_counter() - t


# ---------------------------------------------------------------- main
def runtime_time() -> float:
    """Compile the target's runtime kernels (GEMM) into the current, empty cache."""
    gemm.runtime_object.cache_clear()
    t = time.perf_counter()
    gemm.runtime_object()
    return time.perf_counter() - t


def bench(kinds, threads: int, repeats: int, with_jax: bool) -> None:
    print(f"machine: {describe()}; {threads} threads")
    head = f"{'model':16s} {'cold':>7s} {'cpu':>6s} {'cached':>7s} {'c.cpu':>6s} {'renamed':>8s} " \
        f"{'jax':>7s}  " \
        + " ".join(f"{p:>8s}" for p in PHASES) + "  kernels (compiled/shared)"
    before = os.environ.get("IRGRAPH_CACHE_DIR")
    try:
        with tempfile.TemporaryDirectory() as d:
            os.environ["IRGRAPH_CACHE_DIR"] = d
            print(f"target runtime kernels (once per machine and cache): {runtime_time():.2f}s")
            print(head)
            with instrumented():
                for kind in kinds:
                    cold = cached = None
                    for r in range(repeats):
                        with tempfile.TemporaryDirectory() as fresh:
                            os.environ["IRGRAPH_CACHE_DIR"] = fresh
                            gemm.runtime_object()           # served from memory
                            got = measure(lambda: our_step(kind, threads))
                            if cold is None or got[0] < cold[0]:
                                cold = got
                            again = measure(lambda: our_step(kind, threads))
                            if cached is None or again[0] < cached[0]:
                                cached = again
                            renamed = measure(lambda: _renamed_step(kind, threads))
                    jt = jax_compile_time(kind) if with_jax else None
                    total, phases, st = cold
                    print(f"{kind:16s} {total:6.2f}s {phases['cpu']:5.2f}s {cached[0]:6.3f}s "
                          f"{1e3 * cached[1]['cpu']:4.0f}ms {renamed[0]:7.2f}s "
                          f"{'-' if jt is None else f'{jt:.2f}s':>7s}  "
                          + " ".join(f"{phases.get(p, 0.0):8.3f}" for p in PHASES)
                          + f"  {st['kernels_compiled']}/{st['kernels_shared']}"
                          + ("" if renamed[2]["graph_hits"] else "  (renamed copy: MISS)"))
    finally:
        if before is None:
            os.environ.pop("IRGRAPH_CACHE_DIR", None)
        else:
            os.environ["IRGRAPH_CACHE_DIR"] = before


def _renamed_step(kind: str, threads: int):
    """The same model traced under another name (another graph name, other locations)."""
    shape, n, mode = spec(kind)
    return fe.compile_train(model(kind), nn.CrossEntropyLoss(), optim.Adam(lr=1e-3),
                            fe.TensorSpec(shape), fe.TensorSpec((n,), "int64"),
                            backend="llvm", threads=threads, name=f"renamed_{kind}",
                            **train_options(mode))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="mlp,cnn,rnn16,rnn64,rnn256,lstm,rnn16-unrolled,"
                                        "rnn32-unrolled")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--no-jax", action="store_true")
    ap.add_argument("--serial", action="store_true",
                    help="compile the modules on one thread (llvm_opt and codegen apart)")
    args = ap.parse_args()
    if args.serial:
        jit.COMPILE_THREADS = 1
    bench(args.models.split(","), args.threads, args.repeats, not args.no_jax)


if __name__ == "__main__":
    main()
