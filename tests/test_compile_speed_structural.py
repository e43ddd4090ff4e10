"""Compile speed, checked by structure (never by a clock): the LLVM backend emits each
distinct kernel once (an unrolled recurrence's steps share theirs; a rolled one's kernels do
not depend on its length), kernels are cached on their own and shared across graphs, the
cache key ignores names and source locations, and ``compile_train(bptt=...)`` picks rolled
or unrolled back-propagation through time with the same gradients."""
from __future__ import annotations

import re

import numpy as np
import pytest

import irgraph.backends as backends
import irgraph.frontend as fe
import irgraph
from irgraph.backends import llvm
from irgraph.backends.llvm import jit
from irgraph.backends.llvm.module import KERNEL_PREFIX
from irgraph.frontend import F, nn, optim
from irgraph import Graph, TensorType
from tests.golden import NAMES, load


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("IRGRAPH_CACHE_DIR", str(tmp_path / "cache"))
    jit.reset_stats()
    return tmp_path / "cache"


# ---------------------------------------------------------------- one kernel per code
def recurrence(steps: int, name: str = "rec") -> Graph:
    """h <- tanh(h @ W + b) ``steps`` times, written out step by step (an unrolled cell)."""
    g = Graph(name)
    h = g.add_input("h0", TensorType((4, 16)))
    w, b = g.add_param("w", TensorType((16, 16))), g.add_param("b", TensorType((16,)))
    for _ in range(steps):
        h = g.op("tanh", g.op("add", g.op("matmul", h, w), b))
    g.set_outputs([h])
    return g


def test_unrolled_steps_share_their_kernels():
    short, long = llvm.program(recurrence(3)), llvm.program(recurrence(40))
    assert short.calls == 3 * 3 and long.calls == 40 * 3      # every node calls a kernel
    assert len(long.kernels) == len(short.kernels) <= 3
    assert set(long.kernels) == set(short.kernels)            # the same code, the same names
    text = str(long)
    assert all(text.count(f'define void @"{k}"(') == 1 for k in long.kernels)


def test_unrolled_steps_compute_what_the_reference_computes(cache_root):
    g = recurrence(12)
    r = np.random.default_rng(0)
    args = [r.standard_normal(v.type.shape).astype(np.float32) * 0.5 for v in g.arguments]
    got = backends.compile(g, "llvm", threads=1)(*args)[0]
    want = backends.compile(g, "reference")(*args)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)   # 12 float32 tanh steps
    assert jit.stats()["kernels_compiled"] <= 3 and jit.stats()["kernels_shared"] == 33


class RNNHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn, self.head = nn.RNN(3, 8), nn.Linear(8, 4)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[-1])


def rnn_step(steps: int, bptt: str = "auto", backend: str = "reference", seed: int = 0):
    fe.manual_seed(seed)
    model = RNNHead()
    opt = optim.SGD(lr=0.5)
    step = fe.compile_train(model, nn.CrossEntropyLoss(), opt, fe.TensorSpec((steps, 2, 3)),
                            fe.TensorSpec((2,), "int64"), backend=backend, bptt=bptt)
    return model, step


def test_a_rolled_recurrence_has_the_same_kernels_at_any_length():
    """A 16-step and a 256-step RNN training step build the same number of kernels, and
    all but those touching the sequence itself (its slices, stacks) are the same code."""
    progs = {t: llvm.program(rnn_step(t, "rolled")[1].graph) for t in (16, 256)}
    assert len(progs[16].kernels) == len(progs[256].kernels)
    assert progs[16].calls == progs[256].calls
    assert any(n.op == "scan" for n in rnn_step(256, "rolled")[1].graph.nodes)


def test_default_training_rolls_all_but_the_shortest_recurrences():
    from irgraph.passes.unroll import DEFAULT_THRESHOLD
    assert DEFAULT_THRESHOLD < 16
    assert not any(n.op == "scan" for n in rnn_step(DEFAULT_THRESHOLD)[1].graph.nodes)
    assert any(n.op == "scan" for n in rnn_step(16)[1].graph.nodes)


# ---------------------------------------------------------------- bptt= option
@pytest.mark.parametrize("mode", ["rolled", "unrolled"])
def test_bptt_modes_give_the_reference_gradients(mode, cache_root):
    """One SGD step (lr 0.5) from the same weights and batch: the updated weights equal the
    reference backend's, whichever BPTT form the LLVM step runs."""
    r = np.random.default_rng(3)
    x = r.standard_normal((6, 2, 3)).astype(np.float32)
    y = np.array([1, 3], np.int64)
    ref_model, ref_step = rnn_step(6, "unrolled")
    model, step = rnn_step(6, mode, "llvm")
    has_scan = any(n.op == "scan" for n in step.graph.nodes)
    assert has_scan == (mode == "rolled")
    loss_ref, loss = ref_step(x, y), step(x, y)
    assert loss == pytest.approx(loss_ref, rel=1e-5)
    for (name, p), (_, q) in zip(model.named_parameters(), ref_model.named_parameters()):
        np.testing.assert_allclose(p.data, q.data, rtol=1e-4, atol=1e-6, err_msg=name)
    moved = [np.abs(p.data - p0).max() for p, p0 in
             zip(model.parameters(), (p.data for p in rnn_step(6)[0].parameters()))]
    assert min(moved) > 0                         # every weight got a gradient


def test_bptt_rolled_matches_a_torch_rnn_step():
    import torch
    r = np.random.default_rng(4)
    x = r.standard_normal((9, 2, 3)).astype(np.float32)
    y = np.array([0, 2], np.int64)
    model, step = rnn_step(9, "rolled")
    tm = torch.nn.RNN(3, 8)
    th = torch.nn.Linear(8, 4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            mod, attr = (tm, name.split(".", 1)[1]) if name.startswith("rnn.") else \
                (th, name.split(".", 1)[1])
            getattr(mod, attr).copy_(torch.from_numpy(p.data.copy()))
    out, _ = tm(torch.from_numpy(x))
    loss = torch.nn.functional.cross_entropy(th(out[-1]), torch.from_numpy(y))
    loss.backward()
    step(x, y)
    for name, p in model.named_parameters():
        mod = tm if name.startswith("rnn.") else th
        tp = getattr(mod, name.split(".", 1)[1])
        want = tp.detach().numpy() - 0.5 * tp.grad.numpy()
        np.testing.assert_allclose(p.data, want, rtol=1e-4, atol=1e-5, err_msg=name)


def test_bptt_option_is_checked():
    with pytest.raises(ValueError, match="bptt must be 'auto', 'rolled' or 'unrolled'"):
        rnn_step(4, "sideways")


# ---------------------------------------------------------------- the cache key
def renamed(g: Graph) -> Graph:
    """``g`` with another graph name, other value and parameter names, other locations."""
    text = re.sub(r"%([A-Za-z0-9_.]+)", r"%renamed_\1", str(g))
    text = re.sub(r"\bgraph (\w+)\(", r"graph other_\1(", text)
    text = re.sub(r"  # .*$", "  # somewhere_else.py:4242", text, flags=re.M)
    return irgraph.parse(text)


@pytest.mark.parametrize("name", NAMES)
def test_renamed_golden_models_have_the_same_key(name):
    """The key hashes the graph's canonical text: renaming every value, parameter and graph
    and moving every node to another line keeps it (a 100% hit rate on renamed copies)."""
    g = load(name)[0]
    other = renamed(g)
    assert str(other) != str(g)
    assert jit.canonical_text(other) == jit.canonical_text(g)


def cell(op: str = "add", batch: int = 4, steps: int = 2) -> Graph:
    g = Graph("rec")
    h = g.add_input("h0", TensorType((batch, 16)))
    w, b = g.add_param("w", TensorType((16, 16))), g.add_param("b", TensorType((16,)))
    for _ in range(steps):
        h = g.op("tanh", g.op(op, g.op("matmul", h, w), b))
    g.set_outputs([h])
    return g


def test_what_changes_the_code_changes_the_key():
    base = jit.canonical_text(cell())
    assert jit.canonical_text(recurrence(2, "another_name")) == base
    for other in (cell(steps=3), cell(op="sub"), cell(batch=5)):
        assert jit.canonical_text(other) != base
    donating = cell()
    donating.donations = {0: 0}
    assert jit.canonical_text(donating) != base


def two_models():
    """The same model twice, defined at other lines with other names."""
    class Small(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 5)

        def forward(self, x):
            return F.tanh(self.fc(x))

    class Renamed(nn.Module):
        # a comment above, and a blank line below, move every node

        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(6, 5)

        def forward(self, inputs):
            hidden = self.layer(inputs)
            return F.tanh(hidden)
    return Small(), Renamed()


def test_same_model_at_other_lines_and_names_is_a_cache_hit(cache_root):
    a, b = two_models()
    b.layer.weight.data[...] = a.fc.weight.data
    b.layer.bias.data[...] = a.fc.bias.data
    fa = fe.compile(a, fe.TensorSpec((3, 6)), backend="llvm", threads=1)
    assert jit.stats()["graph_misses"] == 1 and jit.stats()["graph_hits"] == 0
    fb = fe.compile(b, fe.TensorSpec((3, 6)), backend="llvm", threads=1)
    assert jit.stats()["graph_hits"] == 1 and jit.stats()["graph_misses"] == 1
    x = np.random.default_rng(5).standard_normal((3, 6)).astype(np.float32)
    want = np.tanh(x @ a.fc.weight.data.T + a.fc.bias.data)
    np.testing.assert_allclose(fa(x), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fb(x), want, rtol=1e-5, atol=1e-6)
    fe.compile(a, fe.TensorSpec((4, 6)), backend="llvm", threads=1)   # another shape: new
    assert jit.stats()["graph_misses"] == 2


def test_golden_model_renamed_copy_hits_the_cache(cache_root):
    g, args, expect = load("mlp")
    first = backends.compile(g, "llvm", threads=1)
    second = backends.compile(renamed(g), "llvm", threads=1)
    assert not first.cache_hit and second.cache_hit
    assert jit.stats()["graph_hits"] == 1
    np.testing.assert_allclose(second(*args)[0], expect[0], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- kernels shared by graphs
def mlp(hidden: int, out: int, name: str) -> Graph:
    """x (32, 64) -> relu(x W1 + b1) (hidden) -> (. W2 + b2) (out)."""
    g = Graph(name)
    x = g.add_input("x", TensorType((32, 64)))
    w1, b1 = g.add_param("w1", TensorType((64, hidden))), g.add_param("b1", TensorType((hidden,)))
    w2, b2 = g.add_param("w2", TensorType((hidden, out))), g.add_param("b2", TensorType((out,)))
    h = g.op("relu", g.op("add", g.op("matmul", x, w1), b1))
    g.set_outputs([g.op("add", g.op("matmul", h, w2), b2)])
    return g


def test_a_new_graph_loads_the_kernels_of_a_layer_it_shares(cache_root):
    """Two graphs share their first layer and differ after it: compiling the second loads
    the shared layer's kernels from the cache and compiles only the others."""
    a, b = mlp(128, 10, "a"), mlp(128, 7, "b")
    ka, kb = set(llvm.program(a, 1).kernels), set(llvm.program(b, 1).kernels)
    # kernels of the cheap level are compiled within the graph's entry module, not cached
    shared = {k for k in ka & kb if k.startswith(KERNEL_PREFIX)}
    assert shared and kb - ka                          # the test means something
    backends.compile(a, "llvm", threads=1)
    assert jit.stats()["kernels_compiled"] == len(ka)
    jit.reset_stats()
    exe = backends.compile(b, "llvm", threads=1)
    st = jit.stats()
    assert st["kernels_loaded"] == len(shared)
    assert st["kernels_compiled"] == len(kb) - len(shared)
    assert st["graph_misses"] == 1 and not exe.cache_hit
    r = np.random.default_rng(6)
    args = [r.standard_normal(v.type.shape).astype(np.float32) for v in b.arguments]
    np.testing.assert_allclose(exe(*args)[0], backends.compile(b, "reference")(*args)[0],
                               rtol=1e-4, atol=1e-4)


def test_a_graph_hit_with_a_kernel_gone_compiles_again(cache_root):
    """The graph's entry is served only with every kernel it calls; one evicted: rebuilt."""
    g = mlp(128, 5, "g")            # (its hidden layer's loops are kernels of their own)
    first = backends.compile(g, "llvm", threads=1)
    keys = [jit.kernel_key(k) for k in llvm.program(g, 1).kernels
            if k.startswith(KERNEL_PREFIX)]
    assert keys and all((cache_root / "llvm" / f"{k}.o").exists() for k in keys)
    (cache_root / "llvm" / f"{keys[0]}.o").unlink()
    jit.reset_stats()
    again = backends.compile(g, "llvm", threads=1)
    assert not again.cache_hit and jit.stats()["kernels_loaded"] == len(keys) - 1
    r = np.random.default_rng(8)
    args = [r.standard_normal(v.type.shape).astype(np.float32) for v in g.arguments]
    np.testing.assert_allclose(again(*args)[0], first(*args)[0], rtol=0, atol=0)


# ---------------------------------------------------------------- size-generic kernels
def shape_variants() -> Graph:
    """The same elementwise code at several sizes (odd ones: no multiple of a vector width;
    small ones run by one thread, a large one split across threads): exp, a product with a
    rank-0 scale, a comparison into bool, an Adam update; plus adds that broadcast a row,
    a column, or along a middle axis, each at two sizes (one kernel per pattern)."""
    g = Graph("variants")
    s = g.add_input("s", TensorType(()))
    xs = [g.add_input(f"x{i}", TensorType(shape)) for i, shape in
          enumerate([(64, 130), (37, 151), (4099,), (256, 300)])]
    outs = []
    for x in xs:
        outs += [g.op("exp", x), g.op("mul", s, x), g.op("gt", x, s)]
    hyper = [g.add_input(n, TensorType(())) for n in ("lr", "beta1", "beta2", "eps", "t")]
    for i, shape in enumerate([(96, 97), (5001,)]):
        p, gr, m, v = (g.add_param(f"{n}{i}", TensorType(shape)) for n in "pgmv")
        outs += list(g.op("adam_update", p, gr, m, v, *hyper, convention="torch"))
    for i, (shape, other) in enumerate([((64, 130), (130,)), ((80, 130), (130,)),
                                        ((64, 130), (64, 1)), ((100, 45), (100, 1)),
                                        ((8, 12, 30), (12, 1)), ((5, 31, 33), (31, 1))]):
        b = g.add_input(f"b{i}", TensorType(other))
        outs.append(g.op("add", g.add_input(f"y{i}", TensorType(shape)), b))
    g.set_outputs(outs)
    return g


def variant_args(g: Graph, seed: int) -> list:
    r = np.random.default_rng(seed)
    fixed = {"lr": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "t": 3.0, "s": 0.25}
    args = []
    for v in g.arguments:
        if v.name in fixed:
            args.append(np.float32(fixed[v.name]))
        elif v.name.startswith("v"):                       # second moments: >= 0
            args.append(r.random(v.type.shape).astype(np.float32))
        else:
            args.append(r.standard_normal(v.type.shape).astype(np.float32))
    return args


def test_elementwise_code_at_other_sizes_shares_one_kernel():
    from irgraph.backends.llvm.module import runs_parallel
    g = shape_variants()
    assert {runs_parallel(n) for n in g.nodes if n.op == "exp"} == {True, False}
    prog = llvm.program(g, 2)
    by_op: dict[str, int] = {}
    for k in prog.kernels.values():
        by_op[k.op] = by_op.get(k.op, 0) + 1
    # one kernel per code whatever the size; the broadcasting adds: one per pattern
    assert by_op["exp"] == by_op["mul"] == by_op["gt"] == by_op["adam_update"] == 1, by_op
    assert by_op["add"] == 3, by_op


@pytest.mark.parametrize("threads", [1, 2])
def test_size_generic_kernels_compute_what_the_reference_computes(cache_root, threads):
    g = shape_variants()
    exe = backends.compile(g, "llvm", threads=threads)
    ref = backends.compile(g, "reference")
    args = variant_args(g, threads)
    got, want = exe(*[a.copy() for a in args]), ref(*[a.copy() for a in args])
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-6)


# ---------------------------------------------------------------- compiles beside the build
def _spy_stream(monkeypatch) -> list:
    """Events of the next compiles: ("kernel", handed to compile threads?) per kernel of its
    own module, as the IR builder hands it over, and "built" when the IR build returns."""
    import irgraph.backends.llvm.module as module
    events: list = []
    real_build, real_add = module.build_module, jit.KernelStream.add

    def build(*a, **k):
        prog = real_build(*a, **k)
        events.append("built")
        return prog

    def add(self, k):
        n = len(self.jobs)
        real_add(self, k)
        if len(self.jobs) > n:
            events.append(("kernel", self.jobs[-1][1] is not None))
    monkeypatch.setattr(module, "build_module", build)
    monkeypatch.setattr(jit.KernelStream, "add", add)
    return events


def test_kernels_go_to_the_compile_threads_while_the_ir_is_built(cache_root, monkeypatch):
    g = shape_variants()
    events = _spy_stream(monkeypatch)
    monkeypatch.setattr(jit, "COMPILE_THREADS", 2)
    threaded = backends.compile(g, "llvm", threads=2, cache=False)
    kernels = events[:events.index("built")]
    assert len(kernels) >= 5 and all(e == ("kernel", True) for e in kernels), events
    events.clear()
    monkeypatch.setattr(jit, "COMPILE_THREADS", 1)            # compiled after the build
    serial = backends.compile(g, "llvm", threads=2, cache=False)
    assert events[:-1] == [("kernel", False)] * len(kernels) and events[-1] == "built"
    args = variant_args(g, 5)
    want = backends.compile(g, "reference")(*[a.copy() for a in args])
    for a, b, c in zip(threaded(*[a.copy() for a in args]), serial(*[a.copy() for a in args]),
                       want):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, c, rtol=2e-6, atol=1e-6)


def test_a_failed_build_stops_its_compile_threads(cache_root, monkeypatch):
    import threading
    import irgraph.backends.llvm.module as module
    real = module._emit_kernel
    built = []

    def emit(*a, **k):
        if len(built) == 3:
            raise RuntimeError("lowering failed on purpose")
        built.append(real(*a, **k))
        return built[-1]
    monkeypatch.setattr(module, "_emit_kernel", emit)
    monkeypatch.setattr(jit, "COMPILE_THREADS", 2)
    with pytest.raises(RuntimeError, match="on purpose"):
        backends.compile(shape_variants(), "llvm", threads=2, cache=False)
    assert not [t for t in threading.enumerate() if t.name.startswith("irgraph-llvm-compile")]


# ---------------------------------------------------------------- levels by code
def test_straight_line_kernels_take_the_cheap_level():
    """A GEMM kernel only calls the GEMM runtime (compiled once per machine): it has no loop
    to tune and is compiled at the cheap level with the entry; loop kernels of the same
    graph keep the requested level."""
    from irgraph.backends.llvm.module import CHEAP_PREFIX, has_loop
    prog = llvm.program(mlp(128, 5, "g"), 2)
    mm = [k for k in prog.kernels.values() if k.op == "matmul"]
    loops = [k for k in prog.kernels.values() if k.op == "relu"]
    assert mm and all(not has_loop(k.text) and k.opt == 0 for k in mm)
    assert all(k.symbol.startswith(CHEAP_PREFIX) for k in mm)
    assert loops and all(has_loop(k.text) and k.opt == 3 for k in loops)


@pytest.mark.parametrize("text, loops", [
    ("define void @f() {\nentry:\n  br label %\"a\"\na:\n  br label %\"a\"\n}\n", True),
    ("define void @f() {\nentry:\n  br label %\"b\"\na:\n  ret void\nb:\n  br label %\"a\"\n}\n",
     True),
    ("define void @f(i1 %c) {\nentry:\n  br i1 %c, label %\"a\", label %\"b\"\na:\n"
     "  br label %\"b\"\nb:\n  ret void\n}\n", False),
    ("define void @f() {\nentry:\n  ret void\n}\ndefine void @g() {\nx:\n  br label %\"entry\"\n"
     "entry:\n  ret void\n}\n", False),
    ("define void @f(i64 %v) {\nentry:\n  br label %\"s\"\ns:\n  switch i64 %v, label %\"e\" "
     "[i64 0, label %\"s\"]\ne:\n  ret void\n}\n", True),
])
def test_has_loop_finds_back_edges(text, loops):
    from irgraph.backends.llvm.module import has_loop
    assert has_loop(text) is loops


def test_compile_threads_take_the_largest_waiting_module_first(monkeypatch):
    """A big kernel built late does not wait behind small ones; a compile error reaches
    whoever waits on that module."""
    import threading
    started, release, order = threading.Event(), threading.Event(), []

    def fake(text, opt):
        order.append(text)
        if text == "a":
            started.set()
            assert release.wait(30)
        if text == "bad":
            raise RuntimeError("llvm failed on purpose")
        return text.encode()
    monkeypatch.setattr(jit, "_compile_isolated", fake)
    pool = jit._LargestFirst(1)
    try:
        first = pool.submit("a", 3)
        assert started.wait(30)                  # the one thread is busy with "a"
        futs = [pool.submit(t, 3) for t in ("bb", "cccc", "d", "bad")]
        release.set()
        assert first.result(30) == b"a"
        assert [f.result(30) for f in futs[:3]] == [b"bb", b"cccc", b"d"]
        with pytest.raises(RuntimeError, match="on purpose"):
            futs[3].result(30)
    finally:
        release.set()
        pool.close()
    assert order == ["a", "cccc", "bad", "bb", "d"]


# ---------------------------------------------------------------- known kernels
def test_a_changed_graph_names_its_known_kernels_without_building_them(cache_root,
                                                                        monkeypatch):
    """A graph not seen before whose nodes have kernels compiled before (same signature)
    loads them without building their code; a damaged index entry or a kernel object gone
    only makes that kernel built again."""
    import warnings
    import irgraph.backends.llvm.module as module
    from irgraph.backends.cache import CacheWarning
    a, b, c = mlp(128, 10, "a"), mlp(128, 7, "b"), mlp(128, 6, "c")
    pa, pb, pc = (llvm.program(g, 1) for g in (a, b, c))
    shared = {k for k in set(pa.kernels) & set(pb.kernels) if k.startswith(KERNEL_PREFIX)}
    assert len(shared) >= 2 and shared <= set(pc.kernels)
    backends.compile(a, "llvm", threads=1)
    built: list = []
    real = module._emit_kernel
    monkeypatch.setattr(module, "_emit_kernel",
                        lambda *x, **k: built.append(1) or real(*x, **k))
    jit.reset_stats()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        exe = backends.compile(b, "llvm", threads=1)
    assert len(built) == len(pb.kernels) - len(shared)
    assert jit.stats()["kernels_loaded"] == len(shared) and not exe.cache_hit
    r = np.random.default_rng(9)
    args = [r.standard_normal(v.type.shape).astype(np.float32) for v in b.arguments]
    np.testing.assert_allclose(exe(*args)[0], backends.compile(b, "reference")(*args)[0],
                               rtol=1e-4, atol=1e-4)
    # one index entry damaged, one kernel object gone: both kernels are built again
    first, second = sorted(shared)[:2]
    index = cache_root / "llvm" / f"{jit.signature_key(pb.signatures[first])}.o"
    data = index.read_bytes()
    index.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))     # its last byte changed
    (cache_root / "llvm" / f"{jit.kernel_key(second)}.o").unlink()
    built.clear()
    with pytest.warns(CacheWarning, match="damaged"):
        exe = backends.compile(c, "llvm", threads=1)
    assert len(built) == len(pc.kernels) - len(shared) + 2
    args = [r.standard_normal(v.type.shape).astype(np.float32) for v in c.arguments]
    np.testing.assert_allclose(exe(*args)[0], backends.compile(c, "reference")(*args)[0],
                               rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- size-generic regions
def region_variants() -> Graph:
    """The same elementwise chain (scaled by a rank-0 value, a row broadcast, relu, minus
    its input: one fused region each after ``fuse``) at odd sizes of two and three axes, a
    large one split across threads; and another chain over a vector (a second code)."""
    g = Graph("regions")
    s = g.add_input("s", TensorType(()))
    outs = []
    for i, shape in enumerate([(64, 130), (37, 151), (3, 5, 31), (300, 257)]):
        x = g.add_input(f"x{i}", TensorType(shape))
        b = g.add_input(f"b{i}", TensorType(shape[-1:]))
        outs.append(g.op("sub", g.op("relu", g.op("add", g.op("mul", x, s), b)), x))
    for i, n in enumerate([4099, 17]):
        x = g.add_input(f"v{i}", TensorType((n,)))
        outs.append(g.op("mul", g.op("exp", x), x))
    g.set_outputs(outs)
    return g


def test_fused_regions_at_other_sizes_share_one_kernel():
    from irgraph.passes.fusion import fuse
    g = fuse(region_variants())
    assert [n.op for n in g.nodes].count("fused") == 6
    prog = llvm.program(g, 2)
    fused = [k for k in prog.kernels.values() if k.op == "fused"]
    assert len(fused) == 2, [k.symbol for k in fused]     # one per code, not per size


@pytest.mark.parametrize("threads", [1, 2])
def test_size_generic_regions_compute_what_the_reference_computes(cache_root, threads):
    from irgraph.passes.fusion import fuse
    g = region_variants()
    exe = backends.compile(fuse(g), "llvm", threads=threads)
    ref = backends.compile(g, "reference")
    r = np.random.default_rng(threads)
    args = [np.float32(0.75) if v.name == "s" else
            r.standard_normal(v.type.shape).astype(np.float32) for v in g.arguments]
    got, want = exe(*args), ref(*args)
    assert len(got) == len(want) == 6
    for a, b in zip(got, want):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-6)


def batch_norm_variants(training: bool) -> Graph:
    """Batch norms over channel axis 1 at odd sizes of 2, 3 and 4 axes (each large enough
    for a kernel of its own), a large one split across threads."""
    g = Graph("bn_variants")
    outs = []
    for i, shape in enumerate([(7, 3, 15, 19), (4, 5, 11, 13), (65, 33), (3, 2, 701),
                               (16, 6, 28, 28)]):
        x = g.add_input(f"x{i}", TensorType(shape))
        ps = [g.add_input(f"{n}{i}", TensorType((shape[1],))) for n in "gbmv"]
        outs += list(g.op("batch_norm", x, *ps, axis=1, training=training, momentum=0.1,
                          eps=1e-5))
    g.set_outputs(outs)
    return g


def test_batch_norms_at_other_sizes_share_one_kernel():
    prog = llvm.program(batch_norm_variants(True), 2)
    assert [k.op for k in prog.kernels.values()] == ["batch_norm"]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("training", [True, False])
def test_size_generic_batch_norm_computes_what_the_reference_computes(cache_root, threads,
                                                                       training):
    g = batch_norm_variants(training)
    r = np.random.default_rng(threads)
    args = [(r.random(v.type.shape) + (0.5 if v.name[0] == "v" else -0.3)).astype(np.float32)
            for v in g.arguments]
    got = backends.compile(g, "llvm", threads=threads)(*args)
    want = backends.compile(g, "reference")(*args)
    assert len(got) == len(want) == 15
    for a, b in zip(got, want):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)


def reduction_variants() -> Graph:
    """sum, mean, max and min over the same pattern of reduced and kept runs at odd sizes:
    the last run reduced (axes 0, 2, 3 of NCHW; a whole tensor) or kept (axis 0, columns
    split across threads), with and without kept dimensions, a large one split across
    threads; and float64."""
    g = Graph("reduce_variants")
    outs = []
    cases = [((7, 3, 15, 19), (0, 2, 3)), ((9, 5, 11, 13), (0, 2, 3)), ((64, 6, 28, 28), (0, 2, 3)),
             ((65, 84), (0,)), ((101, 257), (0,)), ((3, 1, 70, 80), (0, 1)),
             ((5, 7, 150), (0, 1, 2)), ((4099,), (0,))]
    for i, (shape, axes) in enumerate(cases):
        x = g.add_input(f"x{i}", TensorType(shape))
        for op in ("sum", "mean", "max", "min"):
            outs.append(g.op(op, x, axis=axes, keepdims=i % 2 == 0))
    x = g.add_input("d", TensorType((33, 4, 70), "float64"))
    outs += [g.op("mean", x, axis=(0, 2), keepdims=True), g.op("sum", x, axis=(0,),
                                                               keepdims=False)]
    g.set_outputs(outs)
    return g


def test_reductions_at_other_sizes_share_their_kernels():
    prog = llvm.program(reduction_variants(), 2)
    by_op: dict[str, int] = {}
    for k in prog.kernels.values():
        by_op[k.op] = by_op.get(k.op, 0) + 1
    # per op, whatever the sizes and keepdims: runs reduced, kept, reduced (axes 0, 2, 3);
    # reduced, kept (axis 0; axes 0, 1 of 3x1x70x80: the size-1 axis dropped, the kept
    # ones merged); all reduced. And one float64 kernel each for sum and mean.
    assert by_op == {"sum": 4, "mean": 4, "max": 3, "min": 3}, by_op


@pytest.mark.parametrize("threads", [1, 2])
def test_size_generic_reductions_compute_what_the_reference_computes(cache_root, threads):
    g = reduction_variants()
    r = np.random.default_rng(threads)
    args = [r.standard_normal(v.type.shape).astype(v.dtype) for v in g.arguments]
    got = backends.compile(g, "llvm", threads=threads)(*args)
    want = backends.compile(g, "reference")(*args)
    assert len(got) == len(want) == 34
    for a, b in zip(got, want):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-4 if a.dtype == np.float32
                                   else 1e-12)
