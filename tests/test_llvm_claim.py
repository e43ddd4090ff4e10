"""The LLVM backend's claimed tasks: every parallel op family gives the reference's numbers
on 1, 2 and 3 threads, and the same bits whichever threads (and how many) run the shares of
one executable; runs with more threads than cores beside a busy thread stay right; an error
raised in a share is the node's error, and leaves nothing stale for the next call."""
from __future__ import annotations

import dataclasses
import threading
from contextlib import contextmanager

import numpy as np
import pytest

import irgraph.backends as backends
from irgraph import Graph, IRError, TensorType
from irgraph.backends.llvm import lowering, ops_recurrence
from irgraph.backends.llvm.module import claim_tasks

R, C = 256, 512          # 512 KB of float32: every node of the families below is split


def _families() -> Graph:
    """One graph with a node of each parallel family: elementwise, cast, where, GEMM,
    reductions, argmax, softmax, transpose, concat, slice, pad, broadcast, gathers,
    index_add (a lowering that meets), pooling, convolution (meets) and batch norm."""
    g = Graph("families")
    x = g.add_input("x", TensorType((R, C), "float32"))
    y = g.add_input("y", TensorType((R, C), "float32"))
    w = g.add_input("w", TensorType((C, 192), "float32"))
    idx = g.add_input("idx", TensorType((300,), "int64"))
    img = g.add_input("img", TensorType((8, 16, 32, 32), "float32"))
    k = g.add_input("k", TensorType((16, 16, 3, 3), "float32"))
    gamma = g.add_input("gamma", TensorType((16,), "float32"))
    beta = g.add_input("beta", TensorType((16,), "float32"))
    e = g.op("tanh", g.op("add", g.op("mul", x, y), x))
    mask = g.op("gt", x, y)
    wh = g.op("where", mask, e, g.op("cast", g.op("cast", y, dtype="float64"), dtype="float32"))
    mm = g.op("matmul", wh, w)
    outs = [
        wh, mm,
        g.op("sum", e, axis=(1,)), g.op("max", y, axis=(0,)), g.op("argmax", x, axis=1),
        g.op("softmax", x, axis=-1), g.op("transpose", y, perm=(1, 0)),
        g.op("concat", x, y, axis=1),
        g.op("slice", x, starts=(1, 3), stops=(R, C), steps=(2, 3)),
        g.op("pad", y, pads=(1, 2, 3, 0)),
        g.op("broadcast_to", g.op("sum", x, axis=(0,), keepdims=True), shape=(R, C)),
        g.op("take", x, idx, axis=0),
        g.op("take_along_axis", y, g.op("broadcast_to", g.op("reshape", idx, shape=(1, 300)),
                                         shape=(R, 300)), axis=1),
        g.op("index_add", x, idx, g.op("take", y, idx, axis=0), axis=0),
        g.op("max_pool", img, kernel_size=(2, 2), stride=(2, 2), padding=(0, 0, 0, 0),
             dilation=(1, 1)),
        g.op("conv", img, k, stride=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1)),
    ]
    bn = g.op("batch_norm", img, gamma, beta, beta, g.op("exp", gamma), training=False)
    g.set_outputs(outs + (list(bn) if isinstance(bn, (list, tuple)) else [bn]))
    return g


def _args(seed: int = 0):
    r = np.random.default_rng(seed)
    f = lambda *s: r.standard_normal(s).astype(np.float32)          # noqa: E731
    idx = r.integers(-R, R, 300)
    return [f(R, C), f(R, C), f(C, 192) / 20, idx, f(8, 16, 32, 32), f(16, 16, 3, 3) / 10,
            f(16), f(16)]


def _run_on(exe, n: int, args):
    """Run ``exe`` (compiled for more threads) on ``n`` of them: the same shares, claimed
    by fewer threads."""
    saved = exe.threads
    exe.threads = n
    try:
        return exe(*args)
    finally:
        exe.threads = saved


def test_every_family_matches_the_reference_and_is_bitwise_the_same_on_any_threads():
    g = _families()
    args = _args()
    ref = backends.compile(g, "reference")(*args)
    three = backends.compile(g, "llvm", threads=3)
    kinds = {three.graph.nodes[t.nodes[0]].op: t.kind for t in three.plan.tasks}
    # the families are split: claimed, or run by every thread where the lowering meets
    assert kinds["matmul"] == kinds["softmax"] == kinds["take"] == "shares"
    assert kinds["conv"] == "shares"                # images split, no barrier inside
    assert kinds["index_add"] == "all"
    runs = {n: _run_on(three, n, args) for n in (1, 2, 3)}
    for k, (want, got) in enumerate(zip(ref, runs[3])):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5, err_msg=f"output {k}")
    for n in (1, 2):
        for k, (a, b) in enumerate(zip(runs[n], runs[3])):
            np.testing.assert_array_equal(a, b, err_msg=f"output {k} on {n} threads")
    for n in (1, 2):                     # compiled for fewer threads: the reference's too
        got = backends.compile(g, "llvm", threads=n)(*args)
        for k, (want, o) in enumerate(zip(ref, got)):
            np.testing.assert_allclose(o, want, rtol=2e-5, atol=2e-5, err_msg=f"output {k}")


def _chain() -> Graph:
    """Claimed nodes back to back (each reads the one before: a share that ran before its
    inputs were done would read stale numbers) with small nodes between them."""
    g = Graph("chain")
    x = g.add_input("x", TensorType((R, C), "float32"))
    w = g.add_input("w", TensorType((C, C), "float32"))
    h = x
    for i in range(6):
        h = g.op("tanh", g.op("matmul", h, w))
        s = g.op("sum", g.op("slice", h, starts=(0, 0), stops=(2, C), steps=(1, 1)),
                 axis=(1,), keepdims=True)                  # small: one share
        h = g.op("sub", h, g.op("broadcast_to", g.op("mean", s, axis=(0,), keepdims=True),
                                shape=(R, C)))
    g.set_outputs([h])
    return g


@contextmanager
def busy_thread():
    """A thread that takes a core now and then (numpy releases the GIL), as another process
    would, for the duration of the block."""
    stop = threading.Event()

    def busy():
        a = np.ones((128, 128), np.float32)
        while not stop.is_set():
            a = np.tanh(a @ a / 128)
    t = threading.Thread(target=busy, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()


def test_more_threads_than_cores_beside_a_busy_thread_give_the_same_numbers():
    g = _chain()
    r = np.random.default_rng(1)
    x = r.standard_normal((R, C)).astype(np.float32)
    w = (r.standard_normal((C, C)) / 25).astype(np.float32)
    want = backends.compile(g, "llvm", threads=1)(x, w)[0]
    ref = backends.compile(g, "reference")(x, w)[0]
    np.testing.assert_allclose(want, ref, rtol=1e-4, atol=1e-4)
    four = backends.compile(g, "llvm", threads=4)
    assert {t.kind for t in four.plan.tasks} == {"shares", "one"}
    with busy_thread():
        for _ in range(25):
            np.testing.assert_array_equal(four(x, w)[0], want)


def test_an_error_in_a_share_is_the_nodes_error_and_the_next_call_is_clean():
    g = Graph("gather")
    x = g.add_input("x", TensorType((R, C), "float32"))
    i = g.add_input("i", TensorType((4096,), "int64"))
    g.set_outputs([g.op("exp", g.op("take", x, i, axis=1))])
    exe = backends.compile(g, "llvm", threads=3)
    assert [t.kind for t in exe.plan.tasks if exe.graph.nodes[t.nodes[0]].op == "take"] == [
        "shares"]
    r = np.random.default_rng(2)
    xs = r.standard_normal((R, C)).astype(np.float32)
    good = r.integers(0, C, 4096)
    bad = good.copy()
    bad[4000] = C + 7                    # in the last shares' range
    ref = backends.compile(g, "reference")
    with pytest.raises(Exception) as want:
        ref(xs, bad)
    for n in (3, 2, 1):
        with pytest.raises(type(want.value)) as got:
            _run_on(exe, n, [xs, bad])
        assert str(got.value) == str(want.value)
        np.testing.assert_allclose(_run_on(exe, n, [xs, good])[0], ref(xs, good)[0],
                                   rtol=1e-6)


def test_small_nodes_in_a_row_are_one_task_and_meeting_nodes_every_threads():
    g = _families()
    exe = backends.compile(g, "llvm", threads=2)
    tasks = claim_tasks(exe.graph.nodes, exe.plan.skip, 2, exe._features)
    assert tasks == exe.plan.tasks
    covered = [i for t in tasks for i in t.nodes]
    assert covered == [i for i in range(len(exe.graph.nodes)) if i not in exe.plan.skip]
    for a, b in zip(tasks, tasks[1:]):
        assert not (a.kind == b.kind == "one")            # runs of small nodes merged
    for t in tasks:
        node = exe.graph.nodes[t.nodes[0]]
        if t.kind != "one":
            assert len(t.nodes) == 1
            assert (t.kind == "all") == lowering.get_lowering(node).meets_for(
                node, 2, exe._features)
            assert t.shares == (1 if t.kind == "all" else
                                2 if node.op in ("matmul", "conv") else 4)


def test_a_lowering_that_meets_cannot_run_as_claimed_shares(monkeypatch):
    g = Graph("scatter")
    x = g.add_input("x", TensorType((R, C), "float32"))
    i = g.add_input("i", TensorType((64,), "int64"))
    s = g.add_input("s", TensorType((64, C), "float32"))
    g.set_outputs([g.op("index_add", x, i, s, axis=0)])
    low = lowering.LOWERINGS["index_add"]
    monkeypatch.setitem(lowering.LOWERINGS, "index_add", dataclasses.replace(low, meets=False))
    with pytest.raises(IRError, match="meets"):
        backends.compile(g, "llvm", threads=2, cache=False)


# ---------------------------------------------------------------- recurrences, convolutions
def _train_graph(cell: str, hidden: int) -> Graph:
    """One SGD training step of a sequence classifier (``cell`` over 8 steps of 16 inputs,
    batch 32, a linear head on the last state) as a graph: a step of the forward and of
    the backward scan costs more than ``module.SERIAL_FLOPS``, so both run on threads."""
    import irgraph.frontend as fe
    from irgraph.frontend import nn, optim
    fe.manual_seed(5)
    rnn = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cell](16, hidden)
    head = nn.Linear(hidden, 10)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.head = rnn, head

        def forward(self, x):
            h = self.rnn(x)[1]
            return self.head((h[0] if cell == "lstm" else h)[0])
    step = fe.compile_train(Net(), nn.CrossEntropyLoss(), optim.SGD(lr=0.1),
                            fe.TensorSpec((8, 32, 16)), fe.TensorSpec((32,), "int64"),
                            backend="reference", bptt="rolled")
    return step.graph


def _graph_args(g: Graph, seed: int):
    r = np.random.default_rng(seed)
    return [r.integers(0, 10, v.shape) if v.dtype == "int64" else
            r.uniform(-0.3, 0.3, v.shape).astype(v.type.np_dtype) for v in g.arguments]


def _same_on_1_2_3_threads(g: Graph, args, tol: float, exact=None):
    """``g`` compiled once for 3 threads, run on 3, 2 and 1 of them (fresh copies of the
    arguments: a step may update them in place): the reference's numbers, and the same
    bits on every thread count for the outputs ``exact`` (all by default)."""
    ref = backends.compile(g, "reference")(*[np.copy(a) for a in args])
    three = backends.compile(g, "llvm", threads=3, cache=False)
    runs = {n: _run_on(three, n, [np.copy(a) for a in args]) for n in (3, 2, 1)}
    for n, got in runs.items():
        for k, (want, o) in enumerate(zip(ref, got)):
            np.testing.assert_allclose(o, want, rtol=tol, atol=tol * max(np.abs(want).max(), 1),
                                       err_msg=f"output {k} on {n} threads")
    for n in (1, 2):
        for k in range(len(ref)) if exact is None else exact:
            np.testing.assert_array_equal(runs[n][k], runs[3][k],
                                          err_msg=f"output {k} on {n} threads")
    return three


@pytest.mark.parametrize("cell, hidden", [("rnn", 256), ("lstm", 128), ("gru", 160)])
def test_a_recurrent_training_step_claims_the_work_of_each_step(cell, hidden):
    g = _train_graph(cell, hidden)
    exe = _same_on_1_2_3_threads(g, _graph_args(g, 3), 2e-5)
    scans = [t for t in exe.plan.tasks if exe.graph.nodes[t.nodes[0]].op == "scan"]
    assert [t.kind for t in scans] == ["steps", "steps"]    # forward and backward
    for t in scans:           # no part of a step meets (the step's regions as their parts)
        tasks = ops_recurrence._scan_tasks(exe.graph.nodes[t.nodes[0]], 3, exe._features)
        assert "all" not in [st.task.kind for st in tasks]


def _conv_graph(n, c, o, hw, k, groups=1, pad=None) -> Graph:
    """A convolution, its input gradient and its kernel gradient."""
    g = Graph("conv")
    pad = k // 2 if pad is None else pad
    a = dict(stride=(1, 1), padding=(pad,) * 4, dilation=(1, 1), groups=groups)
    x = g.add_input("x", TensorType((n, c, hw, hw), "float32"))
    w = g.add_input("w", TensorType((o, c // groups, k, k), "float32"))
    y = g.op("conv", x, w, **a)
    gy = g.add_input("gy", TensorType(y.shape, "float32"))
    g.set_outputs([y, g.op("conv_input_grad", w, gy, input_size=(hw, hw), **a),
                   g.op("conv_kernel_grad", x, gy, kernel_size=(k, k), **a)])
    return g


@pytest.mark.parametrize("shape, forms", [
    ((8, 6, 16, 14, 5), ("shares", "shares", "all")),          # direct, images split
    ((8, 64, 64, 24, 3, 64), ("shares", "shares", "all")),     # depthwise
    ((4, 32, 32, 20, 3), ("all", "all", "all")),               # Winograd 3x3: meets
    ((2, 16, 16, 24, 5), ("all", "shares", "all")),            # batch < threads: split GEMMs
])
def test_convolutions_claim_images_and_meet_where_threads_share_work(shape, forms):
    """Forward and input gradient: the reference's numbers and the same bits on any thread
    count; the kernel gradient (per-thread partial sums, met and added) the reference's."""
    g = _conv_graph(*shape)
    exe = _same_on_1_2_3_threads(g, _graph_args(g, 4), 1e-4, exact=(0, 1))
    kinds = {exe.graph.nodes[t.nodes[0]].op: t.kind for t in exe.plan.tasks}
    assert (kinds["conv"], kinds["conv_input_grad"], kinds["conv_kernel_grad"]) == forms


def test_claimed_steps_and_convolutions_on_4_threads_beside_a_busy_thread():
    g = _train_graph("rnn", 256)
    c = _conv_graph(8, 6, 16, 14, 5)
    args, cargs = _graph_args(g, 6), _graph_args(c, 7)
    want = backends.compile(g, "llvm", threads=1)(*[np.copy(a) for a in args])
    cwant = backends.compile(c, "llvm", threads=1)(*cargs)[:2]
    four, cfour = (backends.compile(x, "llvm", threads=4) for x in (g, c))
    with busy_thread():
        for _ in range(8):
            for k, (a, b) in enumerate(zip(four(*[np.copy(a) for a in args]), want)):
                np.testing.assert_array_equal(a, b, err_msg=f"output {k}")
            for a, b in zip(cfour(*cargs)[:2], cwant):
                np.testing.assert_array_equal(a, b)
