"""What a call of a compiled graph guarantees on every backend (docs/reliability.md, "Calling
compiled code"): arguments validated before any kernel runs, with the same error class and
text everywhere; a call that raises leaves every argument as it was; ``call_into`` with
output buffers that overlap the arguments or each other gives the reference's numbers; a
forked child can call an executable another thread of its parent was running; calls from
several Python threads at once (or an exception in the caller) never hang a worker."""
from __future__ import annotations

import ctypes
import os
import signal
import threading
import time

import numpy as np
import pytest

import irgraph.backends as backends
import irgraph.frontend as fe
from irgraph.backends.base import fork_safe_locks
from irgraph.backends.llvm.workers import workers
from irgraph.frontend import F, nn, optim
from irgraph import Graph, TensorType
from irgraph.errors import DataError, RuntimeDataError
from irgraph.ops.debug import NonFiniteError

BACKENDS = ["reference", "llvm", "triton"]
RNG = np.random.default_rng(7)


def compile_(g: Graph, backend: str):
    return backends.compile(g, backend, **({"threads": 2} if backend == "llvm" else {}))


def matmul_graph(n: int) -> Graph:
    g = Graph("mm")
    a = g.add_input("a", TensorType((n, n)))
    b = g.add_input("b", TensorType((n, n)))
    g.set_outputs([g.op("matmul", a, b)])
    return g


def affine_graph(n: int) -> Graph:
    """y = 2 x + c, z = x * c (two outputs of x's shape)."""
    g = Graph("affine")
    x = g.add_input("x", TensorType((n,)))
    c = g.add_input("c", TensorType((n,)))
    two = g.op("full", shape=(n,), value=2.0)
    g.set_outputs([g.op("add", g.op("mul", x, two), c), g.op("mul", x, c)])
    return g


# ------------------------------------------------------------------ aliasing call_into


@pytest.mark.parametrize("backend", BACKENDS)
def test_call_into_an_output_that_is_an_input(backend):
    n = 512 if backend == "llvm" else 16
    exe = compile_(matmul_graph(n), backend)
    a = RNG.standard_normal((n, n)).astype(np.float32)
    b = RNG.standard_normal((n, n)).astype(np.float32)
    want = a.astype(np.float64) @ b.astype(np.float64)
    for out_is in ("a", "b"):
        aa, bb = a.copy(), b.copy()
        out = aa if out_is == "a" else bb
        res = exe.call_into([out], aa, bb)
        assert res[0] is out
        np.testing.assert_allclose(out, want, rtol=2e-4, atol=2e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_call_into_overlapping_views_gives_the_references_numbers(backend):
    n = 300
    ref = backends.compile(affine_graph(n), "reference")
    exe = compile_(affine_graph(n), backend)
    base = RNG.standard_normal(2 * n + 8).astype(np.float32)
    layouts = {
        "out0 shifted by one over x": lambda m: ([m[1:n + 1], m[n + 4:2 * n + 4]],
                                                 m[0:n], m[n + 3:2 * n + 3]),
        "outputs on each other": lambda m: ([m[0:n], m[0:n]], m[2:n + 2], m[n + 5:2 * n + 5]),
        "outputs overlapping by half": lambda m: ([m[0:n], m[n // 2:n // 2 + n]],
                                                  m[5:n + 5].copy(), m[n + 6:2 * n + 6]),
        "reversed view of x": lambda m: ([m[n - 1::-1], m[n + 8:2 * n + 8]],
                                         m[0:n], m[n + 2:2 * n + 2].copy()),
    }
    for name, layout in layouts.items():
        mine, theirs = base.copy(), base.copy()
        out_m, x_m, c_m = layout(mine)
        out_r, x_r, c_r = layout(theirs)
        x0, c0 = x_m.astype(np.float64), c_m.astype(np.float64)
        exe.call_into(out_m, x_m, c_m)
        ref.call_into(out_r, x_r, c_r)
        np.testing.assert_array_equal(mine, theirs, err_msg=name)
        if name == "out0 shifted by one over x":        # worked out by hand too
            np.testing.assert_allclose(out_m[0], 2 * x0 + c0, rtol=1e-6, err_msg=name)
            np.testing.assert_allclose(out_m[1], x0 * c0, rtol=1e-6, err_msg=name)


def sgd_graph(shape=(64,)) -> Graph:
    g = Graph("sgd")
    gr = g.add_input("g", TensorType(shape))
    lr = g.add_input("lr", TensorType(()))
    p = g.add_param("p", TensorType(shape))
    g.set_outputs([g.op("sgd_update", p, gr, lr), g.op("sum", gr)])
    g.donations[0] = 2
    return g


@pytest.mark.parametrize("backend", BACKENDS)
def test_call_into_a_declared_donation_stays_in_place(backend):
    exe = compile_(sgd_graph(), backend)
    gr = RNG.standard_normal(64).astype(np.float32)
    p = RNG.standard_normal(64).astype(np.float32)
    want = p - np.float32(0.25) * gr
    s = np.zeros((), np.float32)
    res = exe.call_into([p, s], gr, np.float32(0.25), p)      # the update's buffer: p itself
    assert res[0] is p
    np.testing.assert_allclose(p, want, rtol=1e-6)
    np.testing.assert_allclose(s, gr.astype(np.float64).sum(), rtol=1e-5)
    # the gradient buffer as the update's output: computed aside, then p and g both hold it
    p = RNG.standard_normal(64).astype(np.float32)
    g0 = gr.copy()
    want = p - np.float32(0.25) * g0
    exe.call_into([gr, s], gr, np.float32(0.25), p)
    np.testing.assert_allclose(gr, want, rtol=1e-6)
    np.testing.assert_allclose(p, want, rtol=1e-6)
    np.testing.assert_allclose(s, g0.astype(np.float64).sum(), rtol=1e-5)


def test_call_into_output_buffers_are_checked():
    exe = compile_(affine_graph(4), "llvm")
    x = np.ones(4, np.float32)
    with pytest.raises(TypeError, match="2 output buffers needed, got 1"):
        exe.call_into([np.empty(4, np.float32)], x, x)
    with pytest.raises(TypeError, match=r"output buffer 1 must be a numpy array of type "
                                        r"f32\[4\], got float64\[4\]"):
        exe.call_into([np.empty(4, np.float32), np.empty(4)], x, x)
    ro = np.empty(4, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="output buffer 0 is read-only"):
        exe.call_into([ro, np.empty(4, np.float32)], x, x)


# ------------------------------------------------------------------ failed steps


X = RNG.standard_normal((6, 4)).astype(np.float32)
Y = np.array([0, 2, 1, 1, 0, 2], np.int64)


def make_step(backend: str, opt):
    fe.manual_seed(3)
    net = nn.Linear(4, 3)
    step = fe.compile_train(net, F.cross_entropy, opt, fe.TensorSpec((6, 4)),
                            fe.TensorSpec((6,), "int64"), backend=backend,
                            pipeline="default, debug_nans",
                            **({"threads": 2} if backend == "llvm" else {}))
    return net, step


def buffers(net, opt) -> list[np.ndarray]:
    arrays = [p.data for _, p in net.named_parameters()]
    arrays += [a for slots in opt.state.values() for a in slots.values()]
    return arrays


def huge_values(opt):
    """Inputs of 1e20 give gradients of about 1e20 (finite): lr g (SGD) and g**2 (Adam's
    second moment) overflow float32 in the update, the first node to make an infinity."""
    lr = opt.lr
    opt.lr = 1e30

    def restore(o):
        o.lr = lr
    return (X * np.float32(1e20), Y), restore


def bad_class(opt):
    return (X, np.array([0, 2, 7, 1, 0, 2], np.int64)), lambda o: None


def steps_with_failures(backend: str, make_opt):
    """A good step; then per fault one step that raises and a good one. A failed step
    leaves every buffer (weights, optimizer state) bit for bit as it was."""
    opt = make_opt()
    net, step = make_step(backend, opt)
    losses, errors = [], []
    for breaker in (huge_values, bad_class):
        before = [a.copy() for a in buffers(net, opt)]
        ids = [id(a) for a in buffers(net, opt)]
        args, restore = breaker(opt)
        with pytest.raises(DataError) as info:
            step(*args)
        errors.append(info.value)
        after = buffers(net, opt)
        assert [id(a) for a in after] == ids, backend
        for b, a in zip(before, after):
            np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8), err_msg=backend)
        restore(opt)
        losses.append(step(X, Y))
    return errors, losses, [a.copy() for a in buffers(net, opt)]


OPTS = {"sgd": lambda: optim.SGD(lr=0.1),
        "adam": lambda: optim.Adam(lr=0.01)}


@pytest.mark.parametrize("kind, backends_", [("sgd", BACKENDS), ("adam", ["reference", "llvm"])])
def test_a_failed_step_changes_nothing_on_every_backend(kind, backends_):
    """(Adam on Triton runs the same staging code as SGD, in a slower interpreter.)"""
    results = {b: steps_with_failures(b, OPTS[kind]) for b in backends_}
    (non_finite, bad_index), ref_losses, ref_bufs = results["reference"]
    op = "sgd_update" if kind == "sgd" else "adam_update"
    assert type(non_finite) is NonFiniteError
    assert f"first non-finite value: op '{op}'" in str(non_finite)
    assert type(bad_index) is RuntimeDataError
    assert "nll_loss" in str(bad_index) and "outside [0, 3)" in str(bad_index)
    for b, (errs, losses, bufs) in results.items():
        for err, ref_err in zip(errs, (non_finite, bad_index)):
            assert type(err) is type(ref_err), b
            assert str(err) == str(ref_err), b
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, err_msg=b)
        for x, y in zip(bufs, ref_bufs):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6, err_msg=b)


# ------------------------------------------------------------------ error classes


def bad_index_graph() -> Graph:
    g = Graph("nll")
    logp = g.add_input("logp", TensorType((3, 4)))
    t = g.add_input("t", TensorType((3,), "int64"))
    g.set_outputs([g.op("nll_loss", logp, t)])
    return g


def scalars_graph() -> Graph:
    g = Graph("scalars")
    k = g.add_input("k", TensorType((), "int64"))
    h = g.add_input("h", TensorType((), "int32"))
    x = g.add_input("x", TensorType(()))
    g.set_outputs([g.op("add", k, k), g.op("add", h, h), g.op("add", x, x)])
    return g


def error_of(fn):
    try:
        fn()
    except Exception as e:              # noqa: BLE001 - the class itself is what we compare
        return type(e), str(e)
    return None, None


S_OK = (np.int64(3), np.int32(4), np.float32(1.5))


def scalar_calls():
    i8 = np.int8(5)
    return {
        "count": ((), TypeError, r"graph 'scalars' takes 3 arguments \(k, h, x\), got 0"),
        "float for int": ((2.0, 1, 1.0), TypeError,
                          r"argument %k is i64\[\]: a float scalar \(2\.0\) would be converted "
                          r"with loss; pass an integer"),
        "numpy float for int": ((1, np.float32(2), 1.0), TypeError, r"argument %h is i32\[\]"),
        "2**70 for i64": ((2 ** 70, 1, 1.0), ValueError,
                          r"argument %k is i64\[\]: 1180591620717411303424 is outside its range "
                          r"\[-9223372036854775808, 9223372036854775807\]"),
        "2**31 for i32": ((1, 2 ** 31, 1.0), ValueError, r"argument %h is i32\[\]: 2147483648 "
                                                        r"is outside its range"),
        "string": ((1, 1, "1.0"), TypeError, r"argument %x must be a numpy array of type "
                                            r"f32\[\], got str"),
        "wrong 0-d dtype": ((np.array(1, np.int32), 1, 1.0), TypeError,
                            r"argument %k has dtype int32, expected int64"),
        "ok: bool and numpy ints": ((True, i8, 3), None, None),
    }


@pytest.mark.parametrize("backend", BACKENDS)
def test_scalar_arguments_follow_one_rule_on_every_backend(backend):
    exe = compile_(scalars_graph(), backend)
    ref = backends.compile(scalars_graph(), "reference")
    for name, (args, cls, pattern) in scalar_calls().items():
        got = error_of(lambda: exe(*args))
        assert got == error_of(lambda: ref(*args)), name
        if cls is None:
            res = exe(*args)
            assert [np.asarray(r).item() for r in res] == [2 * int(args[0]), 2 * int(args[1]),
                                                          2 * float(args[2])], name
        else:
            assert got[0] is cls, (name, got)
            import re
            assert re.search(pattern, got[1]), (name, got[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_data_errors_are_one_class_with_one_text_on_every_backend(backend):
    exe = compile_(bad_index_graph(), backend)
    ref = backends.compile(bad_index_graph(), "reference")
    logp = np.log(np.full((3, 4), 0.25, np.float32))
    for t in ([0, 4, 1], [-1, 0, 0], [0, 1, 2 ** 40]):
        t = np.array(t, np.int64)
        got = error_of(lambda: exe(logp, t))
        assert got == error_of(lambda: ref(logp, t))
        assert got[0] is RuntimeDataError
        assert issubclass(got[0], (DataError, ValueError))
        assert "nll_loss" in got[1] and "outside [0, 4)" in got[1]
    np.testing.assert_allclose(exe(logp, np.array([0, 3, 1]))[0], np.log(4.0), rtol=1e-6)
    # argument faults are TypeError / ValueError with the same text
    for args in ((logp,), (logp.astype(np.float64), np.zeros(3, np.int64)),
                 (logp[:2], np.zeros(3, np.int64)), (logp, [0, 1, 2])):
        got = error_of(lambda: exe(*args))
        assert got == error_of(lambda: ref(*args)) and got[0] in (TypeError, ValueError)


# ------------------------------------------------------------------ fork, threads, interrupts


def wait_exit(pid: int, deadline_s: float = 120.0) -> int:
    """The child's exit code; a child still running at the (generous) deadline is a hang:
    killed, and the test fails."""
    end = time.monotonic() + deadline_s
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > end:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"forked child {pid} hung (deadlocked on a lock held at the fork)")
        time.sleep(0.02)


def child_call(exe, args, want) -> int:
    """In the child: call, compare, exit without running the parent's exit handlers."""
    try:
        ok = np.allclose(exe(*args)[0], want, rtol=1e-4, atol=1e-3)
        os._exit(0 if ok else 1)
    except BaseException:       # noqa: BLE001 - any failure is a non-zero exit
        os._exit(2)


def mm_case(n=192):
    exe = compile_(matmul_graph(n), "llvm")
    assert exe.plan.parallel           # the call goes through the worker pool
    a = RNG.standard_normal((n, n)).astype(np.float32)
    b = RNG.standard_normal((n, n)).astype(np.float32)
    return exe, (a, b), a.astype(np.float64) @ b


def test_a_forked_child_gets_every_lock_fresh():
    """Another thread holds the executable's and the worker pool's locks at the fork (a call
    in flight): the child's call must not wait for them."""
    exe, args, want = mm_case()
    exe(*args)
    held, release = threading.Event(), threading.Event()

    def hold():
        with exe._lock, workers().lock:
            held.set()
            release.wait()
    t = threading.Thread(target=hold)
    t.start()
    held.wait()
    try:
        pid = os.fork()
        if pid == 0:
            child_call(exe, args, want)
        assert wait_exit(pid) == 0
    finally:
        release.set()
        t.join()
    np.testing.assert_allclose(exe(*args)[0], want, rtol=1e-4, atol=1e-3)


def test_fork_while_another_thread_calls_an_llvm_executable():
    exe, args, want = mm_case()
    stop = threading.Event()
    calls = [0]

    def loop():
        while not stop.is_set():
            exe(*args)
            calls[0] += 1
    t = threading.Thread(target=loop)
    t.start()
    try:
        for _ in range(5):
            while calls[0] == 0:
                time.sleep(0.001)
            pid = os.fork()
            if pid == 0:
                child_call(exe, args, want)
            assert wait_exit(pid) == 0
    finally:
        stop.set()
        t.join()


def test_fork_safe_locks_are_fresh_in_the_child():
    class Owner:
        pass
    owner = Owner()
    fork_safe_locks(owner, "a", "b")
    with owner.a:
        pid = os.fork()
        if pid == 0:
            os._exit(0 if not (owner.a.locked() or owner.b.locked()) else 1)
        assert wait_exit(pid) == 0
    assert not owner.a.locked()


def test_concurrent_calls_from_python_threads_are_right():
    """Four Python threads share two executables (8 threads each, more than the cores)."""
    n = 128
    exes = [backends.compile(matmul_graph(n), "llvm", threads=8) for _ in range(2)]
    results: list = []
    errors: list = []

    def work(seed: int):
        rng = np.random.default_rng(seed)
        try:
            for k in range(15):
                a = rng.standard_normal((n, n)).astype(np.float32)
                b = rng.standard_normal((n, n)).astype(np.float32)
                got = exes[(seed + k) % 2](a, b)[0]
                results.append(np.allclose(got, a.astype(np.float64) @ b, rtol=1e-4, atol=1e-3))
        except BaseException as e:          # noqa: BLE001
            errors.append(e)
    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
        assert not t.is_alive(), "a call never returned"
    assert not errors and len(results) == 60 and all(results)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_concurrent_calls_on_the_other_backends_are_right(backend):
    """(Triton's interpreter swaps module globals while a kernel runs: calls take turns.)"""
    g = Graph("ew")
    a = g.add_input("a", TensorType((8, 8)))
    b = g.add_input("b", TensorType((8, 8)))
    g.set_outputs([g.op("tanh", g.op("matmul", a, b)), g.op("sum", g.op("exp", a), axis=1)])
    exe = compile_(g, backend)
    results: list = []

    def work(seed: int):
        rng = np.random.default_rng(seed)
        for _ in range(4):
            x = rng.standard_normal((8, 8)).astype(np.float32)
            y = rng.standard_normal((8, 8)).astype(np.float32)
            try:
                o = exe(x, y)
                results.append(
                    np.allclose(o[0], np.tanh(x.astype(np.float64) @ y), atol=1e-5)
                    and np.allclose(o[1], np.exp(x.astype(np.float64)).sum(1), rtol=1e-5))
            except Exception as e:          # noqa: BLE001
                results.append(repr(e))
    threads = [threading.Thread(target=work, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
        assert not t.is_alive(), "a call never returned"
    assert results == [True] * 12


def test_an_exception_in_the_calling_thread_never_hangs_the_workers():
    """KeyboardInterrupt raised (asynchronously) in a thread looping over calls: that thread
    stops, and the executable and the pool still serve the next calls."""
    exe, args, want = mm_case()
    started, caught = threading.Event(), []

    def loop():
        try:
            while True:
                exe(*args)
                started.set()
        except KeyboardInterrupt:
            caught.append(True)
    t = threading.Thread(target=loop)
    t.start()
    started.wait()
    for _ in range(100):            # delivered at the thread's next bytecode boundary
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(t.ident),
                                                   ctypes.py_object(KeyboardInterrupt))
        t.join(timeout=1)
        if not t.is_alive():
            break
    t.join(timeout=300)
    assert not t.is_alive() and caught == [True]
    assert not exe._lock.locked() and not workers().lock.locked()
    for _ in range(3):
        np.testing.assert_allclose(exe(*args)[0], want, rtol=1e-4, atol=1e-3)


def test_scratch_the_machine_cannot_give_is_a_memory_error():
    """A 2**47-byte intermediate (a whole x86-64 user address space): a clean MemoryError when the
    executable is made, before native code could touch it."""
    g = Graph("huge")
    x = g.add_input("x", TensorType((1, 1)))
    big = g.op("broadcast_to", x, shape=(1 << 22, 1 << 23))
    g.set_outputs([g.op("sum", g.op("exp", big))])
    with pytest.raises(MemoryError):
        backends.compile(g, "llvm", threads=1, cache=False)


def test_worker_threads_are_stopped_before_the_interpreter_exits(tmp_path):
    """At exit the native workers are stopped and joined before the interpreter frees the
    JIT code they run and the slots they read (an exit handler registered before irgraph's
    runs after it and sees no worker alive)."""
    import subprocess
    import sys
    script = tmp_path / "exit.py"
    script.write_text(
        "import atexit, threading\n"
        "atexit.register(lambda: print('alive', sorted(t.name for t in threading.enumerate()"
        " if t.name.startswith('irgraph-llvm-worker') and t.is_alive())))\n"
        "import numpy as np\n"
        "import irgraph.backends as backends\n"
        "from irgraph.backends.llvm import workers\n"
        "from irgraph import Graph, TensorType\n"
        "g = Graph('m'); a = g.add_input('a', TensorType((128, 128)))\n"
        "g.set_outputs([g.op('matmul', a, a)])\n"
        "exe = backends.compile(g, 'llvm', threads=2)\n"
        "x = np.ones((128, 128), np.float32)\n"
        "workers.workers()._ensure(1)\n"
        "assert exe(x)[0][0, 0] == 128\n"
        "print('started', len(workers.workers()._threads))\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "started 1" in out.stdout and "alive []" in out.stdout, out.stdout
