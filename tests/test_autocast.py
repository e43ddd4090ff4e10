"""Mixed-precision training (compile_train(autocast=...)): a small CNN on the digits reaches
float32's accuracy; float16 loss scaling skips a step whose gradients overflow (parameters and
optimizer state untouched, scale halved) and doubles the scale after the good-step interval."""
from __future__ import annotations

import numpy as np
import pytest

from irgraph.frontend import TensorSpec, compile, compile_train, manual_seed, nn, optim
from irgraph.frontend.data import load_digits

B = 64


def _data():
    x, y = load_digits()
    return (x / 16.0).astype(np.float32)[:, None], y.astype(np.int64)


def _model():
    manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(8 * 16, 10))


def _train(autocast, epochs=3):
    x, y = _data()
    m = _model()
    opt = optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    step = compile_train(m, nn.CrossEntropyLoss(), opt, TensorSpec((B, 1, 8, 8)),
                         TensorSpec((B,), "int64"), autocast=autocast)
    for _ in range(epochs):
        for i in range(0, 1536 - B + 1, B):
            step(x[i:i + B], y[i:i + B])
    pred = compile(m, TensorSpec((len(x) - 1536, 1, 8, 8)))(x[1536:]).argmax(1)
    return float((pred == y[1536:]).mean()), m, step


def test_cnn_under_autocast_reaches_float32_accuracy():
    acc32, m32, _ = _train(None)
    assert acc32 > 0.75
    for dt in ("bf16", "f16"):
        acc, m, step = _train(dt)
        # stated tolerance: within 3 points of float32's held-out accuracy (261 digits)
        assert abs(acc - acc32) <= 0.03, (dt, acc, acc32)
        # master weights stay float32
        assert all(p.data.dtype == np.float32 for p in m.parameters())
    assert "bf16[" in str(_train_graph("bf16"))


def _train_graph(dt):
    m = _model()
    step = compile_train(m, nn.CrossEntropyLoss(), optim.SGD(m.parameters(), lr=0.1),
                         TensorSpec((B, 1, 8, 8)), TensorSpec((B,), "int64"), autocast=dt)
    return step.graph


def test_f16_loss_scaling_skips_overflow_then_grows():
    x, y = _data()
    m = _model()
    opt = optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    step = compile_train(m, nn.CrossEntropyLoss(), opt, TensorSpec((B, 1, 8, 8)),
                         TensorSpec((B,), "int64"), autocast="f16")
    assert step.loss_scale == 2.0 ** 16
    step(x[:B], y[:B])                                   # one good step: state exists
    before = [p.data.copy() for p in m.parameters()]
    state = {k: {s: a.copy() for s, a in v.items()} for k, v in opt.state.items()}
    bad = x[B:2 * B].copy()
    bad[0, 0, 0, 0] = 6e4       # float16 max is 65504: the product overflows to inf
    step(bad, y[B:2 * B])
    assert step.loss_scale == 2.0 ** 15                   # backoff 0.5
    for p, b in zip(m.parameters(), before):
        np.testing.assert_array_equal(p.data, b)          # the update was skipped
    for k, v in opt.state.items():
        for s, a in v.items():
            np.testing.assert_array_equal(a, state[k][s])
    # growth: after 2000 good steps in a row the scale doubles (count set just below)
    step.amp["amp.good_steps"][...] = 1998
    step(x[:B], y[:B])
    assert step.loss_scale == 2.0 ** 15
    step(x[:B], y[:B])
    assert step.loss_scale == 2.0 ** 16 and float(step.amp["amp.good_steps"]) == 0
    changed = any(not np.array_equal(p.data, b) for p, b in zip(m.parameters(), before))
    assert changed


def test_scale_is_saved_with_the_training_state(tmp_path):
    x, y = _data()
    m = _model()
    step = compile_train(m, nn.CrossEntropyLoss(), optim.SGD(m.parameters(), lr=0.1),
                         TensorSpec((B, 1, 8, 8)), TensorSpec((B,), "int64"), autocast="f16")
    bad = x[:B].copy()
    bad[0, 0, 0, 0] = 6e4
    step(bad, y[:B])
    step.save_state(tmp_path)
    step.amp["amp.scale"][...] = 1.0
    step.load_state(tmp_path)
    assert step.loss_scale == 2.0 ** 15


def test_autocast_rejects_other_dtypes():
    m = _model()
    with pytest.raises((ValueError, TypeError), match="float16 or bfloat16|unsupported"):
        compile_train(m, nn.CrossEntropyLoss(), optim.SGD(m.parameters(), lr=0.1),
                      TensorSpec((B, 1, 8, 8)), TensorSpec((B,), "int64"), autocast="float64")


def test_op_sets_are_the_registry_autocast_traits():
    """The pass's op sets are the traits; they are the sets its hand-written rule gave: the two
    literal lists plus every op named like a loss or a norm (random_normal matched "norm" by
    name only: a draw from integer key and counter, it has no float operand to cast)."""
    from irgraph.passes.autocast import FLOAT32_OPS, LOW_OPS
    from irgraph.registry import all_ops, ops_with
    assert LOW_OPS == ops_with("autocast_low") == {
        "matmul", "conv", "conv_fft", "tiled_conv", "locally_connected"}
    named = {n for n in all_ops() if "loss" in n or "norm" in n} - {"random_normal"}
    assert FLOAT32_OPS == ops_with("autocast_float32") == named | {
        "sum", "mean", "softmax", "log_softmax", "exp", "log", "pow", "global_norm"}


def test_autocast_pass_casts_by_the_traits():
    """matmul (autocast_low) of float32 operands runs in bfloat16; softmax and sum
    (autocast_float32) of a bfloat16 value run in float32; relu, in neither set, keeps its
    bfloat16 operand; each output keeps its traced dtype."""
    import ml_dtypes
    from irgraph import Graph, TensorType
    from irgraph.interpreter import interpret
    from irgraph.passes.autocast import autocast
    g = Graph("mixed")
    x = g.add_input("x", TensorType((4, 3), "float32"))
    h = g.add_input("h", TensorType((4, 2), "bfloat16"))
    w = g.add_param("w", TensorType((3, 2), "float32"))
    g.set_outputs([g.op("matmul", x, w), g.op("sum", g.op("softmax", h, axis=1)),
                   g.op("relu", h)])
    low = autocast(g, "bfloat16")
    computes = {n.op: [v.dtype for v in n.inputs] for n in low.nodes if n.op != "cast"}
    assert computes == {"matmul": ["bfloat16", "bfloat16"], "softmax": ["float32"],
                        "sum": ["float32"], "relu": ["bfloat16"]}
    assert [v.dtype for v in low.outputs] == ["float32", "bfloat16", "bfloat16"]
    rng = np.random.default_rng(0)
    xs, ws = rng.standard_normal((4, 3)), rng.standard_normal((3, 2))
    hs = rng.standard_normal((4, 2)).astype(ml_dtypes.bfloat16)
    y, total, r = interpret(low, [xs.astype(np.float32), hs, ws.astype(np.float32)])
    np.testing.assert_allclose(y, xs @ ws, rtol=2e-2, atol=2e-2)    # bfloat16 operands
    assert float(total) == 4.0                # four rows of a softmax, summed in float32
    np.testing.assert_array_equal(r, np.maximum(hs, 0))
