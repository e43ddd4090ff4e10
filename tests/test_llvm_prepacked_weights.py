"""Weights packed once (the ``constant_params`` option, backends/llvm/gemm.py ``prepared``).

A convolution on the GEMM path whose product runs transposed (C^T = B^T A^T: many output
channels, few positions) packs its weights A^T into panels; with constant parameters the
packed panels are kept in the executable's prepared block, made by the first call and read
by the next ones. Checked against torch (conv2d in float64): the block is filled (its state
word), reused (changing the weights in place, which the option forbids, is not seen), made
again for other weight arrays, and made again when a thread count change gives a thread
another part of A (its header names another A); one and two threads, a fused conv + bias
+ residual + ReLU region (on two threads each thread's run of the reduction, its input
channels' columns of A: ``ops_conv.splits_k``) and a plain convolution (each thread's run
of rows)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from irgraph import Graph, TensorType
from irgraph.backends.llvm import gemm, jit, ops_conv
from irgraph.frontend.driver import compile_graph

ATTRS = dict(stride=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1), groups=1)
# ResNet-18's late layers: 512 channels on 7 x 7, 49 positions, 9.4 MB of weights (4.7 MB
# per thread's rows on two), so the product runs transposed (``_GemmBuilder.transposes``)
XS, WS = (1, 512, 7, 7), (512, 512, 3, 3)


def _graph(fused: bool) -> Graph:
    g = Graph("block")
    x = g.add_input("x", TensorType(XS, "float32"))
    r = g.add_input("r", TensorType((1, 512, 7, 7), "float32"))
    w = g.add_param("w", TensorType(WS, "float32"))
    bias = g.add_param("bias", TensorType((1, 512, 1, 1), "float32"))
    (y,) = g.add_node("conv", [x, w], ATTRS)
    if fused:
        (y,) = g.add_node("add", [y, bias])
        (y,) = g.add_node("add", [y, r])
        (y,) = g.add_node("relu", [y])
    else:
        (y,) = g.add_node("mul", [y, r])    # bias and r otherwise unused: keep the signature
        (y,) = g.add_node("add", [y, bias])
    g.set_outputs([y])
    return g


def _want(x, r, w, bias, fused: bool):
    y = torch.nn.functional.conv2d(torch.from_numpy(x.astype(np.float64)),
                                   torch.from_numpy(w.astype(np.float64)), padding=1).numpy()
    return np.maximum(y + bias + r, 0) if fused else y * r + bias


def _bound(x, w):
    return 2e-6 * np.sqrt(x.shape[1] * 9) * np.abs(x).max() * np.abs(w).max()


def _compile(fused: bool, threads: int):
    return compile_graph(_graph(fused), backend="llvm",
                         pipeline="default, fuse" if fused else "default",
                         options=dict(threads=threads, cache=False,
                                      constant_params=True)).executable


def _states(exe) -> list[int]:
    """The state word of every prepared region (``gemm.PRE_READY`` once packed)."""
    return [int(exe._prep[o:o + 8].view(np.int64)[0]) for o in exe.plan.prep_flags]


@pytest.mark.parametrize("fused,threads", [(True, 1), (True, 2), (False, 1), (False, 2)])
def test_packed_weights_kept_between_calls(fused, threads):
    rng = np.random.default_rng(7)
    x = rng.standard_normal(XS).astype(np.float32)
    r = rng.standard_normal((1, 512, 7, 7)).astype(np.float32)
    w = (rng.standard_normal(WS) / 16).astype(np.float32)
    w2 = (rng.standard_normal(WS) / 16).astype(np.float32)
    bias = rng.standard_normal((1, 512, 1, 1)).astype(np.float32)
    exe = _compile(fused, threads)
    assert len(exe.plan.prep) == 1 and len(exe.plan.prep_flags) == threads
    assert _states(exe) == [0] * threads
    if fused:       # on two threads the region's GEMM splits its reduction
        (node,) = [nd for nd in exe.graph.nodes if nd.op == "fused"]
        conv = ops_conv.epilogue_conv(node.attrs["body"], threads, jit.host()[2])
        assert ops_conv.splits_k(conv, threads, jit.host()[2]) == (threads == 2)

    def check(x, w, ref_w=None):
        got = exe(x, r, w, bias)[0]
        err = np.abs(got - _want(x, r, w if ref_w is None else ref_w, bias, fused)).max()
        assert err <= _bound(x, w), err
    check(x, w)
    # every thread's part of A packed into its own region (one thread: the whole A)
    assert _states(exe) == [gemm.PRE_READY] * threads
    check(x[:, ::-1].copy(), w)             # kept: other inputs, the same weights
    w_old = w.copy()
    w *= -2.0                               # in place: not seen (the kept panels are used)
    check(x, w, ref_w=w_old)
    check(x, w2)                            # another array: packed again
    check(x, w.copy())


class _Counts:
    """A thread choice that runs the given thread counts in turn."""

    def __init__(self, counts):
        self.counts = list(counts)

    def pick(self) -> int:
        return self.counts.pop(0)

    def record(self, m, seconds) -> None:
        pass


def test_a_thread_count_change_packs_the_rows_again():
    """Two threads keep a region per thread's part of A (its run of the reduction); a call
    on one thread finds in the first region the panels of thread 0's part only (another A
    in its header) and packs the whole A there; back on two threads, thread 0 packs its
    part again."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal(XS).astype(np.float32)
    r = rng.standard_normal((1, 512, 7, 7)).astype(np.float32)
    w = (rng.standard_normal(WS) / 16).astype(np.float32)
    bias = rng.standard_normal((1, 512, 1, 1)).astype(np.float32)
    exe = _compile(True, 2)
    exe.thread_choice = _Counts([2, 1, 2, 1, 2])
    want = _want(x, r, w, bias, True)
    for _ in range(5):
        got = exe(x, r, w, bias)[0]
        assert np.abs(got - want).max() <= _bound(x, w)
        assert _states(exe)[0] == gemm.PRE_READY


def test_nothing_kept_without_constant_params():
    exe = compile_graph(_graph(True), backend="llvm", pipeline="default, fuse",
                        options=dict(threads=1, cache=False)).executable
    assert not exe.plan.prep and not exe.plan.prep_flags
