"""Multi-tensor optimizer kernels: every parameter tensor of a training step in ONE launch.

A pointer table (one row per tensor: element count, input, output and hyperparameter
addresses) and a static work list (tensor, block) let one grid walk all tensors; learning
rate, betas, step count... are read from rank-0 device tensors, so a schedule never
recompiles. Formulas: irgraph/ops/optim.py (alg. 8.1-8.7, eq. 8.39, section 8.2.4).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import triton
import triton.language as tl

from ..runtime import View, cdiv, empty
from . import reduce as red
from .elementwise import elementwise

BLOCK = 1024


@dataclass(frozen=True)
class UpdateRule:
    """Arity of an update op: tensor inputs, tensor outputs, scalar (rank-0) inputs."""
    n_in: int
    n_out: int
    n_scal: int


RULES = {
    "sgd_update": UpdateRule(2, 1, 1),
    "momentum_update": UpdateRule(3, 2, 2),
    "adagrad_update": UpdateRule(3, 2, 2),
    "rmsprop_update": UpdateRule(3, 2, 3),
    "rmsprop_momentum_update": UpdateRule(4, 3, 4),
    "adam_update": UpdateRule(4, 3, 5),
    "polyak_update": UpdateRule(2, 1, 1),
    "clip_by_value": UpdateRule(1, 1, 1),
    "clip_by_norm": UpdateRule(1, 1, 2),
    "sum_squares": UpdateRule(1, 0, 0),          # global_norm's partial sums
}


@triton.jit
def _tensor(row, col: tl.constexpr, DTYPE: tl.constexpr):
    return tl.load(row + col).to(tl.pointer_type(DTYPE))


@triton.jit
def _scalar(row, col: tl.constexpr, DTYPE: tl.constexpr):
    # in the parameters' dtype: a float64 step's learning rate and betas are not rounded
    # to float32 (0.1 would move a weight of 1 by 3e-9 more than the reference)
    return tl.load(tl.load(row + col).to(tl.pointer_type(DTYPE)))


@triton.jit
def multi_tensor_kernel(table_ptr, work_ptr, partial_ptr, eps_attr,
                        OP: tl.constexpr, TORCH: tl.constexpr, NESTEROV: tl.constexpr,
                        N_IN: tl.constexpr, N_OUT: tl.constexpr, ROW: tl.constexpr,
                        DTYPE: tl.constexpr, COMPUTE: tl.constexpr, BLOCK: tl.constexpr):
    """Row of the table: [n, in_0.., out_0.., scalar_0..]; work item: (tensor, block)."""
    pid = tl.program_id(0)
    row = table_ptr + tl.load(work_ptr + 2 * pid) * ROW
    n = tl.load(row)
    offs = tl.load(work_ptr + 2 * pid + 1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    S: tl.constexpr = 1 + N_IN + N_OUT
    x0 = tl.load(_tensor(row, 1, DTYPE) + offs, mask=mask, other=0).to(COMPUTE)
    if N_IN > 1:
        x1 = tl.load(_tensor(row, 2, DTYPE) + offs, mask=mask, other=0).to(COMPUTE)
    if N_IN > 2:
        x2 = tl.load(_tensor(row, 3, DTYPE) + offs, mask=mask, other=0).to(COMPUTE)
    if N_IN > 3:
        x3 = tl.load(_tensor(row, 4, DTYPE) + offs, mask=mask, other=0).to(COMPUTE)
    if OP == "sgd_update":                       # alg. 8.1
        y0 = x0 - _scalar(row, S, DTYPE) * x1
    elif OP == "momentum_update":                # alg. 8.2 / torch SGD(momentum, nesterov)
        lr = _scalar(row, S, DTYPE)
        mu = _scalar(row, S + 1, DTYPE)
        if TORCH:
            y1 = mu * x2 + x1
            if NESTEROV:
                y0 = x0 - lr * (x1 + mu * y1)
            else:
                y0 = x0 - lr * y1
        else:
            y1 = mu * x2 - lr * x1
            y0 = x0 + y1
    elif OP == "adagrad_update":                 # alg. 8.4
        y1 = x2 + x1 * x1
        y0 = x0 - _scalar(row, S, DTYPE) * x1 / (_scalar(row, S + 1, DTYPE) + tl.sqrt(y1))
    elif OP == "rmsprop_update":                 # alg. 8.5
        alpha = _scalar(row, S + 1, DTYPE)
        eps = _scalar(row, S + 2, DTYPE)
        y1 = alpha * x2 + (1 - alpha) * x1 * x1
        if TORCH:
            y0 = x0 - _scalar(row, S, DTYPE) * x1 / (tl.sqrt(y1) + eps)
        else:
            y0 = x0 - _scalar(row, S, DTYPE) * x1 / tl.sqrt(eps + y1)
    elif OP == "rmsprop_momentum_update":        # alg. 8.6
        lr = _scalar(row, S, DTYPE)
        alpha = _scalar(row, S + 1, DTYPE)
        eps = _scalar(row, S + 2, DTYPE)
        mu = _scalar(row, S + 3, DTYPE)
        y1 = alpha * x2 + (1 - alpha) * x1 * x1
        if TORCH:
            y2 = mu * x3 + x1 / (tl.sqrt(y1) + eps)
            y0 = x0 - lr * y2
        else:
            y2 = mu * x3 - lr * x1 / tl.sqrt(eps + y1)
            y0 = x0 + y2
    elif OP == "adam_update":                    # alg. 8.7
        lr = _scalar(row, S, DTYPE)
        b1 = _scalar(row, S + 1, DTYPE)
        b2 = _scalar(row, S + 2, DTYPE)
        eps = _scalar(row, S + 3, DTYPE)
        t = _scalar(row, S + 4, DTYPE)
        y1 = b1 * x2 + (1 - b1) * x1
        y2 = b2 * x3 + (1 - b2) * x1 * x1
        s_hat = y1 / (1 - tl.exp(t * tl.log(b1)))
        r_hat = y2 / (1 - tl.exp(t * tl.log(b2)))
        if TORCH:
            y0 = x0 - lr * s_hat / (tl.sqrt(r_hat) + eps)
        else:
            y0 = x0 - lr * s_hat / tl.sqrt(r_hat + eps)
    elif OP == "polyak_update":                  # eq. 8.39
        alpha = _scalar(row, S, DTYPE)
        y0 = alpha * x0 + (1 - alpha) * x1
    elif OP == "clip_by_value":                  # section 8.2.4
        c = _scalar(row, S, DTYPE)
        y0 = tl.minimum(tl.maximum(x0, -c), c)
    elif OP == "clip_by_norm":
        scale = _scalar(row, S + 1, DTYPE) / (_scalar(row, S, DTYPE) + eps_attr)
        y0 = x0 * tl.minimum(scale, 1.0)
    else:  # sum_squares: one partial sum per work item
        tl.store(partial_ptr + pid, tl.sum(tl.where(mask, x0 * x0, 0), axis=0))
    if N_OUT > 0:
        tl.store(_tensor(row, 1 + N_IN, DTYPE) + offs, y0.to(DTYPE), mask=mask)
    if N_OUT > 1:
        tl.store(_tensor(row, 2 + N_IN, DTYPE) + offs, y1.to(DTYPE), mask=mask)
    if N_OUT > 2:
        tl.store(_tensor(row, 3 + N_IN, DTYPE) + offs, y2.to(DTYPE), mask=mask)


_TL = {"float32": tl.float32, "float64": tl.float64}


class MultiTensorUpdate:
    """Plan one launch of ``op`` over tensors of the given sizes (all of one float dtype).

    ``run(ins, scalars, outs)``: ``ins[j]`` the j-th tensor input of every tensor, ``outs``
    likewise (may alias ``ins``: updates in place), ``scalars[j]`` per tensor rank-0 tensors.
    """

    def __init__(self, op: str, sizes: Sequence[int], dtype: str, device, *,
                 convention: str = "text", nesterov: bool = False, eps: float = 0.0):
        if dtype not in _TL:
            raise ValueError(f"{op}: parameters must be float32 or float64, got {dtype}")
        self.op, self.rule, self.sizes, self.device = op, RULES[op], list(sizes), device
        work = [(i, b) for i, n in enumerate(self.sizes) for b in range(cdiv(n, BLOCK))]
        self.n_work = len(work)
        self.work = torch.tensor([v for w in work for v in w] or [0], dtype=torch.int64,
                                 device=device)
        self.consts = dict(OP=op, TORCH=convention == "torch", NESTEROV=nesterov,
                           N_IN=self.rule.n_in, N_OUT=self.rule.n_out,
                           ROW=1 + self.rule.n_in + self.rule.n_out + self.rule.n_scal,
                           DTYPE=_TL[dtype], COMPUTE=tl.float32 if dtype == "float32"
                           else tl.float64, BLOCK=BLOCK)
        self.eps = float(eps)
        self._table_key: tuple | None = None
        self._table: torch.Tensor | None = None

    def table(self, ins, scalars, outs) -> torch.Tensor:
        """The pointer table; rebuilt (one small host-to-device copy) only if buffers moved."""
        rows = []
        for i, n in enumerate(self.sizes):
            rows.append(n)
            rows.extend(t[i].data_ptr() for t in ins)
            rows.extend(t[i].data_ptr() for t in outs)
            rows.extend(t[i].data_ptr() for t in scalars)
        key = tuple(rows)
        if key != self._table_key:
            host = torch.tensor(rows, dtype=torch.int64)
            if self.device.type == "cuda":
                host = host.pin_memory()
            self._table = host.to(self.device, non_blocking=True)
            self._table_key = key
        return self._table

    def __call__(self, ins, scalars, outs, partial: torch.Tensor | None = None) -> None:
        if self.n_work == 0:
            return
        table = self.table(ins, scalars, outs)
        multi_tensor_kernel[(self.n_work,)](table, self.work,
                                            partial if partial is not None else table,
                                            self.eps, **self.consts)


def global_norm(sizes: Sequence[int], dtype: str, device):
    """sqrt(sum of squares of all tensors): one multi-tensor launch of per-block partial sums
    (float64 for float64 inputs), then one row reduction and one sqrt."""
    plan = MultiTensorUpdate("sum_squares", sizes, dtype, device)
    total = red.reduce("sum", (max(plan.n_work, 1),), (0,), (), dtype, dtype, device)
    root = elementwise("sqrt", (), dtype, [View.of(())], [dtype], device)

    def run(gs: Sequence[torch.Tensor]) -> torch.Tensor:
        partial = empty((max(plan.n_work, 1),), dtype, device)
        if plan.n_work == 0:
            partial.zero_()
        plan([list(gs)], [], [], partial)
        return root(total(partial))
    return run
