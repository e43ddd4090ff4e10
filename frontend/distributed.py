"""Data-parallel training: the compiled step on many processes, gradients averaged by
``torch.distributed`` (gloo on CPU, NCCL on GPU). docs/distributed.md explains the design.

    comm = distributed.init()                 # under torchrun (RANK, WORLD_SIZE, MASTER_*)
    step = distributed.compile_data_parallel(model, nn.CrossEntropyLoss(), optim.Adam(1e-3),
                                             TensorSpec((32, 784)), TensorSpec((32,), "int64"),
                                             comm=comm, backend="llvm")
    for x, y in batches:                      # each process: its shard of the global batch
        loss = step(*distributed.shard((x, y), comm.rank, comm.world_size))

``launch(fn, world_size, *args)`` runs ``fn(comm, *args)`` on that many local processes
(loopback rendezvous) and returns each rank's result, or raises ``DistributedError`` naming
the rank that failed first; every process is gone when it returns.

The step is two compiled graphs on the chosen backend: the GRADIENT graph (forward, loss,
reverse pass: loss, new buffer values, gradients) and the UPDATE graph, which is
``passes.train.training_step`` applied to the linear loss ``sum_i <g_i, p_i>`` whose gradient
with respect to ``p_i`` is the input ``g_i``: the optimizer of the single-process step,
clipping, weight decay and Polyak averaging included, applied to the averaged gradients.
Between them the loss, the gradients and the float buffers (batch norm's running statistics)
are averaged over the processes in flat buckets.
"""
from __future__ import annotations

import hashlib
import os
import socket
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Sequence

import numpy as np

from irgraph import Graph, TensorType, verify
from irgraph.passes.train import OptimizerSpec, training_step

from .compiler import param_names
from .driver import Gradient, compile_graph
from .nn import Module
from .optim import Optimizer
from .tracing import TensorSpec, trace_with
from .train import TrainStepFunction, loss_function, count_model_inputs, trainable_names

DEFAULT_BUCKET_MB = 25.0
DEFAULT_TIMEOUT_S = 60.0


class DistributedError(RuntimeError):
    """A data-parallel run that cannot go on: a process failed, died or timed out, or the
    processes disagree (different parameters, a failed checkpoint); the message names the
    rank(s)."""


# ---------------------------------------------------------------- the engine interface
class Communicator:
    """What data parallelism needs from a distributed engine. Arrays are numpy arrays,
    C-contiguous and writable; every collective is called by every rank in the same order.

    * ``all_reduce(buffers)``: sum each buffer over the ranks, in place; returns a handle
      whose ``wait()`` returns when the sums are there (it may run in the background);
    * ``broadcast(arrays, src)``: overwrite each array with rank ``src``'s;
    * ``all_gather(array)``: every rank's copy of a small array, in rank order;
    * ``barrier()``.
    """
    rank: int = 0
    world_size: int = 1

    def all_reduce(self, buffers: Sequence[np.ndarray]) -> "_Done":
        raise NotImplementedError

    def broadcast(self, arrays: Sequence[np.ndarray], src: int = 0) -> None:
        raise NotImplementedError

    def all_gather(self, array: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError

    def barrier(self) -> None:
        raise NotImplementedError


class _Done:
    def wait(self) -> None:
        pass


class LocalCommunicator(Communicator):
    """One process: every collective is the identity."""

    def all_reduce(self, buffers):
        return _Done()

    def broadcast(self, arrays, src=0):
        if src != 0:
            raise ValueError(f"broadcast from rank {src}: a local run has rank 0 only")

    def all_gather(self, array):
        return [np.array(array)]

    def barrier(self):
        pass


class TorchCommunicator(Communicator):
    """``torch.distributed``'s default process group. gloo reduces the numpy buffers in place
    (``torch.from_numpy`` shares their memory); NCCL reduces device copies that ``wait()``
    copies back."""

    def __init__(self):
        import torch
        import torch.distributed as dist
        if not dist.is_initialized():
            raise DistributedError("torch.distributed is not initialized: call "
                                   "frontend.distributed.init() first")
        self._torch, self._dist = torch, dist
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self._device = None
        if dist.get_backend() == "nccl":
            self._device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))

    def _tensor(self, a: np.ndarray):
        if not (a.flags.c_contiguous and a.flags.writeable):
            raise ValueError(f"collectives need C-contiguous writable arrays, got one of shape "
                             f"{a.shape} ({a.dtype})")
        t = self._torch.from_numpy(a)
        return t if self._device is None else t.to(self._device)

    def all_reduce(self, buffers):
        pairs = [(a, self._tensor(a)) for a in buffers]
        works = [self._dist.all_reduce(t, async_op=True) for _, t in pairs]
        return _TorchWork(works, pairs if self._device is not None else [])

    def broadcast(self, arrays, src=0):
        for a in arrays:
            t = self._tensor(a)
            self._dist.broadcast(t, src)
            if self._device is not None:
                np.copyto(a, t.cpu().numpy())

    def all_gather(self, array):
        t = self._tensor(np.ascontiguousarray(array).copy())
        out = [self._torch.empty_like(t) for _ in range(self.world_size)]
        self._dist.all_gather(out, t)
        return [o.cpu().numpy() for o in out]

    def barrier(self):
        self._dist.barrier()


class _TorchWork:
    def __init__(self, works, copy_back):
        self._works, self._copy_back = works, copy_back

    def wait(self) -> None:
        for w in self._works:
            w.wait()
        for a, t in self._copy_back:
            np.copyto(a, t.cpu().numpy())


def init(backend: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> Communicator:
    """Join the process group described by the environment (``torchrun`` sets RANK,
    WORLD_SIZE, MASTER_ADDR, MASTER_PORT; ``launch`` does too). ``backend``: "gloo" (CPU),
    "nccl" (GPU); default gloo. Every collective fails after ``timeout_s`` rather than hang.
    Without RANK/WORLD_SIZE in the environment: a single process (``LocalCommunicator``)."""
    if "RANK" not in os.environ and "WORLD_SIZE" not in os.environ:
        return LocalCommunicator()
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
               if k not in os.environ]
    if missing:
        raise DistributedError(f"the environment lacks {', '.join(missing)} (set by torchrun "
                               f"or frontend.distributed.launch)")
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group(backend or "gloo", timeout=timedelta(seconds=timeout_s))
    return TorchCommunicator()


def shutdown() -> None:
    """Leave the process group (no-op when there is none)."""
    try:
        import torch.distributed as dist
    except ImportError:
        return
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(batch: Sequence[np.ndarray], rank: int, world_size: int) -> list[np.ndarray]:
    """Rank ``rank``'s equal share of each array of the global batch (along axis 0)."""
    out = []
    for i, a in enumerate(batch):
        a = np.asarray(a)
        if a.ndim == 0 or a.shape[0] % world_size:
            raise ValueError(f"batch array {i} of shape {a.shape} does not split into "
                             f"{world_size} equal shards along axis 0")
        n = a.shape[0] // world_size
        out.append(a[rank * n:(rank + 1) * n])
    return out


# ---------------------------------------------------------------- the two graphs
def gradient_graph(loss_graph: Graph, trainable: Sequence[str],
                   spec: OptimizerSpec) -> tuple[Graph, list[str]]:
    """Forward, loss and reverse pass, without donations: outputs ``[loss, new buffer
    values..., gradient per trainable parameter...]``; also the buffers' names. For the
    text's Nesterov forms (alg. 8.3, 8.6) the gradient is taken at ``p + momentum v``: the
    graph then has one more input (the momentum) and the velocities as parameters, named as
    in the training step."""
    src = _at_interim_point(loss_graph, trainable) if spec.interim else loss_graph
    vg = Gradient(tuple(trainable), keep_donations=False)(src)     # BPTT, then the gradient
    n_src = len(loss_graph.outputs)
    buffers = _buffers(loss_graph)
    g = vg.copy(f"{loss_graph.name}_grad_step")
    g.set_outputs([g.outputs[0]] + [g.outputs[o] for o, _ in buffers] + g.outputs[n_src:])
    g.donations = {}
    return g, [name for _, name in buffers]      # verified by whoever compiles it


def _buffers(loss_graph: Graph) -> list[tuple[int, str]]:
    """(output, parameter name) of each buffer the loss graph updates (its donations)."""
    return [(o, loss_graph.arguments[a].name) for o, a in sorted(loss_graph.donations.items())
            if loss_graph.arguments[a] in loss_graph.params]


class _UpdateStep:
    """The update half, as the compile driver builds it from the loss graph: the optimizer's
    step on given gradients (inputs ``grad.<p>``), the training step of
    ``update_loss_graph`` over the trainable parameters; ``layout`` once built."""

    def __init__(self, trainable: Sequence[str], spec: OptimizerSpec,
                 groups: Sequence[int] | None = None):
        self.trainable, self.spec, self.layout = list(trainable), spec, None
        self.groups = groups

    def __call__(self, graph: Graph) -> Graph:
        types = {p.name: p.type for p in graph.params if p.name in self.trainable}
        self.layout = training_step(update_loss_graph(types, f"{graph.name}_update"),
                                    self.trainable, self.spec, groups=self.groups)
        # the linear loss's value is of no use: output 0 becomes 0, so the pipeline drops it
        g = self.layout.graph
        g.set_outputs([g.op("full", shape=(), value=0.0, dtype=g.outputs[0].dtype)]
                      + g.outputs[1:])
        return g


def _at_interim_point(graph: Graph, trainable: Sequence[str]) -> Graph:
    """``graph`` with each trainable parameter p read as p + mu v (mu: a new rank-0 input,
    v: a parameter ``opt.momentum_buffer.<p>``), so its gradient is taken at the interim
    point."""
    g = Graph(graph.name)
    env = {v: g.add_input(v.name, v.type) for v in graph.inputs}
    mu_t = next(p for p in graph.params if p.name in trainable).type
    mu = g.add_input(g.fresh_name("momentum"), TensorType((), mu_t.dtype))
    for p in graph.params:
        env[p] = g.add_param(p.name, p.type)
    for p in graph.params:
        if p.name in trainable:
            v = g.add_param(g.fresh_name(f"opt.momentum_buffer.{p.name}"), p.type)
            m = mu if p.dtype == mu.dtype else g.op("cast", mu, dtype=p.dtype)
            env[p] = g.op("add", env[p], g.op("mul", m, v))
    for node in graph.nodes:
        outs = g.add_node(node.op, [env[v] for v in node.inputs], node.attrs, node.loc)
        env.update(zip(node.outputs, outs))
    g.set_outputs([env[v] for v in graph.outputs])
    return verify(g)


def update_loss_graph(params: dict[str, TensorType], name: str = "update") -> Graph:
    """The loss ``sum_i sum(g_i * p_i)`` over inputs ``grad.<p>`` and parameters ``p``: its
    gradient with respect to ``p_i`` is ``g_i``, so ``training_step`` of it applies the
    optimizer to given gradients."""
    g = Graph(name)
    grads = [g.add_input(g.fresh_name(f"grad.{n}"), t) for n, t in params.items()]
    ps = [g.add_param(n, t) for n, t in params.items()]
    dt = next(iter(params.values())).dtype
    total = None
    for gi, pi in zip(grads, ps):
        s = g.op("sum", g.op("mul", gi, pi))
        s = s if s.dtype == dt else g.op("cast", s, dtype=dt)
        total = s if total is None else g.op("add", total, s)
    g.set_outputs([total])
    return verify(g)


# ---------------------------------------------------------------- buckets
@dataclass
class _Bucket:
    buffer: np.ndarray                                   # flat, one dtype
    items: list[tuple[int, slice, tuple[int, ...]]]      # (output index, range, shape)


def plan_buckets(types: Sequence[TensorType], indices: Sequence[int],
                 bucket_bytes: int) -> list[_Bucket]:
    """Flat buffers of one dtype, each at most ``bucket_bytes`` (a larger array gets its
    own), holding the arrays ``indices`` (with types ``types``) in order."""
    if bucket_bytes <= 0:
        raise ValueError(f"bucket size must be > 0 bytes, got {bucket_bytes}")
    by_dtype: dict[str, list[list[tuple[int, TensorType]]]] = {}
    used: dict[str, int] = {}                 # bytes in each dtype's last group
    for i, t in zip(indices, types):
        groups = by_dtype.setdefault(t.dtype, [[]])
        size = int(np.prod(t.shape, dtype=np.int64)) * t.np_dtype.itemsize
        if groups[-1] and used[t.dtype] + size > bucket_bytes:
            groups.append([])
            used[t.dtype] = 0
        groups[-1].append((i, t))
        used[t.dtype] = used.get(t.dtype, 0) + size
    buckets = []
    for dtype, groups in by_dtype.items():
        for group in groups:
            items, off = [], 0
            for i, t in group:
                n = int(np.prod(t.shape, dtype=np.int64))
                items.append((i, slice(off, off + n), t.shape))
                off += n
            buckets.append(_Bucket(np.zeros(off, group[0][1].np_dtype), items))
    return buckets


# ---------------------------------------------------------------- the step
class DataParallelStep(TrainStepFunction):
    """``step(*shard) -> loss``: this process's shard of the global batch in, the mean loss
    over the global batch out; parameters, buffers and optimizer state change in place and
    stay identical on every rank. ``save_state``/``load_state`` write and read the same
    checkpoint as ``compile_train``'s step (rank 0 writes, every rank reads), so a run
    resumes on any number of processes."""

    def __init__(self, layout, graph, executable, optimizer, params, *, grad_graph, grad_exe,
                 buffers, comm: Communicator, bucket_bytes: int, check_every: int):
        super().__init__(layout, graph, executable, optimizer, params)
        self.grad_graph, self.grad_executable = grad_graph, grad_exe
        self.buffer_names = buffers                 # buffers the gradient graph updates
        self.comm = comm
        self.check_every = int(check_every)
        self.steps_run = 0
        # seconds spent so far: gradient graph, averaging (pack, all-reduce, unpack), update
        self.timings = {"gradient": 0.0, "all_reduce": 0.0, "update": 0.0}
        self._n_batch = len(grad_graph.inputs) - (1 if optimizer.spec().interim else 0)
        # the gradient graph's parameters: the model's, then (text Nesterov) the velocities
        n_vel = len(layout.trainable) if optimizer.spec().interim else 0
        model = [p.name for p in grad_graph.params[:len(grad_graph.params) - n_vel]]
        self._grad_params = [(n, None) for n in model] + \
            [(n, "momentum_buffer") for n in model if n in layout.trainable][:n_vel]
        outs = grad_graph.outputs
        nb = len(buffers)
        float_out = [0] + [1 + k for k in range(nb) if outs[1 + k].type.is_float] + \
            list(range(1 + nb, len(outs)))
        self.buckets = plan_buckets([outs[i].type for i in float_out], float_out,
                                    bucket_bytes)

    @property
    def bucket_sizes(self) -> list[int]:
        """Bytes of each all-reduce buffer of a step."""
        return [b.buffer.nbytes for b in self.buckets]

    def __call__(self, *shard_batch) -> float:
        if len(shard_batch) != self._n_batch:
            raise TypeError(f"the data-parallel step takes {self._n_batch} batch input(s) "
                            f"(this process's shard), got {len(shard_batch)}")
        args = list(shard_batch)
        if self.optimizer.spec().interim:
            mu = self.optimizer.hyperparameters()["momentum"]
            args.append(np.asarray(mu, self.grad_graph.inputs[-1].type.np_dtype))
        state = self.optimizer.state
        args += [self.params[n].data if slot is None else state[n][slot]
                 for n, slot in self._grad_params]
        t0 = time.perf_counter()
        outs = self.grad_executable(*args)
        t1 = time.perf_counter()
        reduced = self._average(outs)
        t2 = time.perf_counter()
        nb = len(self.buffer_names)
        for k, name in enumerate(self.buffer_names):
            new = reduced.get(1 + k, outs[1 + k])
            p = self.params[name]
            if p.data.flags.writeable and p.data.shape == new.shape:
                np.copyto(p.data, new)
            else:
                p.data = np.array(new)
        grads = [reduced[i] for i in range(1 + nb, len(outs))]
        super().__call__(*grads)            # the update graph; counts the step
        t3 = time.perf_counter()
        for k, dt in zip(("gradient", "all_reduce", "update"), (t1 - t0, t2 - t1, t3 - t2)):
            self.timings[k] += dt
        self.steps_run += 1
        if self.check_every and self.steps_run % self.check_every == 0:
            self.check_consistency()
        return float(reduced[0])

    def _average(self, outs) -> dict[int, np.ndarray]:
        """All-reduce the bucketed outputs and divide by the world size: bucket k's
        all-reduce runs (in the engine's background) while bucket k+1 is packed."""
        if self.comm.world_size == 1:
            return {i: np.asarray(outs[i]) for b in self.buckets for i, _, _ in b.items}
        handles = []
        for b in self.buckets:
            for i, sl, _ in b.items:
                b.buffer[sl] = np.asarray(outs[i]).reshape(-1)
            handles.append(self.comm.all_reduce([b.buffer]))
        out = {}
        for b, h in zip(self.buckets, handles):
            h.wait()
            np.divide(b.buffer, self.comm.world_size, out=b.buffer)
            for i, sl, shape in b.items:
                out[i] = b.buffer[sl].reshape(shape)
        return out

    # -- keeping the ranks identical
    def checksum(self) -> int:
        """A 64-bit digest of every parameter, buffer, optimizer state array and the step
        count (bit for bit)."""
        h = hashlib.blake2b(digest_size=8)
        h.update(str(int(self.optimizer.step_count)).encode())
        for name, a in sorted(self._state_arrays().items()):
            h.update(name.encode())
            h.update(np.ascontiguousarray(a).tobytes())
        return int(np.frombuffer(h.digest(), np.int64)[0])

    def check_consistency(self) -> None:
        """All-gather the checksums; ``DistributedError`` on every rank, naming the ranks
        whose training state differs from rank 0's."""
        sums = [int(s[0]) for s in self.comm.all_gather(np.array([self.checksum()], np.int64))]
        bad = [r for r, s in enumerate(sums) if s != sums[0]]
        if bad:
            raise DistributedError(
                f"rank(s) {', '.join(map(str, bad))} hold different parameters or optimizer "
                f"state than rank 0 after {self.optimizer.step_count} steps (checksums "
                f"{[hex(s & (2**64 - 1)) for s in sums]})")

    def broadcast_state(self, src: int = 0) -> None:
        """Give every rank rank ``src``'s parameters, buffers, optimizer state, step count."""
        count = np.array([self.optimizer.step_count], np.int64)
        self.comm.broadcast([count], src)
        self.optimizer.step_count = int(count[0])
        for name, a in sorted(self._state_arrays().items()):
            dst = a if a.flags.writeable and a.flags.c_contiguous else np.array(a)
            self.comm.broadcast([dst], src)
            if dst is not a:
                self._assign(name, dst)

    def _assign(self, name: str, array: np.ndarray) -> None:
        kind, rest = name.split(":", 1)
        if kind == "param":
            self.params[rest].data = array
        else:
            pn, slot = rest.rsplit(":", 1)
            self.optimizer.state[pn][slot] = array

    def _agree(self, error: BaseException | None, what: str) -> None:
        """Every rank learns whether ``what`` failed on any rank (no rank waits forever on
        one that gave up); the failing rank re-raises its own error."""
        flags = [int(f[0]) for f in self.comm.all_gather(np.array([error is not None], np.int64))]
        if error is not None:
            raise error
        bad = [r for r, f in enumerate(flags) if f]
        if bad:
            raise DistributedError(f"{what} failed on rank(s) {', '.join(map(str, bad))}")

    # -- checkpoints
    def save_state(self, folder) -> None:
        """Rank 0 writes the training state (the same folder format as ``compile_train``'s
        step); every rank returns once it is written."""
        error = None
        if self.comm.rank == 0:
            try:
                super().save_state(folder)
            except Exception as e:       # noqa: BLE001 -- told to every rank, then re-raised
                error = e
        self._agree(error, f"saving the training state to {os.fspath(folder)!r} (rank 0)")

    def load_state(self, folder) -> None:
        """Every rank reads the folder (saved with any number of processes); then the ranks
        check that they hold the same state."""
        error = None
        try:
            super().load_state(folder)
        except Exception as e:           # noqa: BLE001 -- told to every rank, then re-raised
            error = e
        self._agree(error, f"loading the training state from {os.fspath(folder)!r}")
        self.check_consistency()


def compile_data_parallel(model: Module | Callable, loss_fn: Callable | None,
                          optimizer: Optimizer, *specs: TensorSpec,
                          comm: Communicator | None = None, backend: str = "reference",
                          pipeline=None, n_model_inputs: int | None = None,
                          bucket_mb: float = DEFAULT_BUCKET_MB, check_every: int = 100,
                          name: str | None = None, print_after=None,
                          **options) -> DataParallelStep:
    """``compile_train`` for data parallelism: ``specs`` are ONE PROCESS'S SHARD of the
    global batch. Every rank calls it (it is a collective: rank 0's parameters, buffers and
    optimizer state are broadcast to the others). The loss must be a mean over the batch
    (averaging gradients over equal shards then gives the global batch's gradient).
    ``check_every``: compare the ranks' checksums every that many steps (0: never)."""
    comm = comm if comm is not None else LocalCommunicator()
    if getattr(optimizer, "host_side", False) or not isinstance(optimizer, Optimizer):
        raise TypeError(f"data parallelism takes a first-order frontend.optim optimizer, got "
                        f"{type(optimizer).__name__} (section 8.6's host-side methods are "
                        f"not supported)")
    n_in = count_model_inputs(loss_fn, specs, n_model_inputs)
    fn = loss_function(model, loss_fn, n_in)
    graph, tracer, _ = trace_with(fn, specs, name or f"{type(model).__name__}_loss",
                                  param_names(model))
    trainable = trainable_names(tracer.params, optimizer)
    groups = optimizer.plan_steps({n: tracer.params[n] for n in trainable})
    spec = optimizer.spec()
    if spec.interim and spec.groups > 1:
        raise NotImplementedError("data-parallel training: the text's Nesterov momentum with "
                                  "parameter groups (one momentum for every group is)")
    buffers = [name for _, name in _buffers(graph)]
    grad = compile_graph(graph, backend=backend,
                         differentiate=lambda g: gradient_graph(g, trainable, spec)[0],
                         pipeline=pipeline, kind="training", print_after=print_after,
                         keep_interface=True, options=options)
    update = _UpdateStep(trainable, spec, groups)
    built = compile_graph(graph, backend=backend, differentiate=update, pipeline=pipeline,
                          kind="training", print_after=print_after, keep_interface=True,
                          options=options)
    optimizer.bind({n: tracer.params[n] for n in trainable})
    step = DataParallelStep(update.layout, built.graph, built.executable, optimizer,
                            dict(tracer.params), grad_graph=grad.graph,
                            grad_exe=grad.executable, buffers=buffers, comm=comm,
                            bucket_bytes=int(bucket_mb * 2**20), check_every=check_every)
    step.passes, step.grad_passes = built.passes, grad.passes
    if comm.world_size > 1:
        step.broadcast_state(0)
    return step


# ---------------------------------------------------------------- local launcher
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, world_size, port, backend, collective_timeout_s, fn, args, conn):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    try:
        comm = init(backend, collective_timeout_s)
        result = fn(comm, *args)
        conn.send(("ok", time.time(), result))
    except BaseException as e:                      # noqa: BLE001 -- reported to the parent
        conn.send(("error", time.time(),
                   f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
    finally:
        conn.close()
        shutdown()


def launch(fn: Callable[..., Any], world_size: int, *args, backend: str = "gloo",
           timeout_s: float = 300.0,
           collective_timeout_s: float = DEFAULT_TIMEOUT_S) -> list[Any]:
    """Run ``fn(comm, *args)`` on ``world_size`` new local processes (rendezvous on
    127.0.0.1, a free port) and return their results in rank order. ``fn`` and ``args``
    must be picklable (a module-level function). The first rank to fail makes it raise
    ``DistributedError`` naming that rank with its traceback; a process that dies without
    a report, or a run past ``timeout_s``, raises too; the processes are killed either way."""
    import multiprocessing as mp
    from multiprocessing.connection import wait
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    ctx = mp.get_context("spawn")
    port = free_port()
    procs, readers, senders = [], [], []
    for r in range(world_size):
        recv, send = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_rank_main, name=f"rank{r}", daemon=True,
                        args=(r, world_size, port, backend, collective_timeout_s, fn, args, send))
        procs.append(p)
        readers.append(recv)
        senders.append(send)
    results: dict[int, Any] = {}
    deadline = time.monotonic() + timeout_s
    try:
        for p, send in zip(procs, senders):
            p.start()
            send.close()            # the child holds it: its death is an EOF here
        pending = set(range(world_size))
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DistributedError(
                    f"rank(s) {', '.join(map(str, sorted(pending)))} of {world_size} did not "
                    f"finish within {timeout_s:g} s; all processes were killed")
            ready = wait([readers[r] for r in pending] + [procs[r].sentinel for r in pending],
                         timeout=left)
            errors = []
            for r in sorted(pending):
                if readers[r] in ready or readers[r].poll():
                    try:
                        status, when, payload = readers[r].recv()
                    except EOFError:
                        status, when, payload = "died", time.time(), None
                    if status == "ok":
                        results[r] = payload
                        pending.discard(r)
                    else:
                        errors.append((when, r, status, payload))
                elif procs[r].sentinel in ready and not readers[r].poll():
                    errors.append((time.time(), r, "died", None))
            if errors:
                when, r, status, payload = min(errors)
                if status == "died":
                    procs[r].join(1)
                    raise DistributedError(f"rank {r} of {world_size} exited (code "
                                           f"{procs[r].exitcode}) without a result")
                raise DistributedError(f"rank {r} of {world_size} failed: {payload}")
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        for p in procs:
            p.join(10)
        for c in readers:
            c.close()
    return [results[r] for r in range(world_size)]
