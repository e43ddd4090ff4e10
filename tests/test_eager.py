"""Eager execution: F functions, tensor operators and models called on numpy arrays outside a
trace run op by op and agree with the compiled (reference) path; errors are the same; the
values print as torch prints them; fe.grad takes eager inputs."""
import numpy as np
import pytest
import torch

import irgraph.frontend as fe
from irgraph.frontend import F, nn
from irgraph.frontend.tracing import Tensor

RNG = np.random.default_rng(0)


def f32(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def compiled(fn, *arrays):
    """``fn`` compiled for the arrays' shapes and dtypes (reference backend), run on them."""
    specs = [fe.TensorSpec(a.shape, a.dtype.name) for a in arrays]
    return fe.compile(fn, *specs)(*arrays)


def leaves(out):
    if isinstance(out, (tuple, list)):
        return [x for o in out for x in leaves(o)]
    return [out]


def assert_same(eager_out, compiled_out, rtol=1e-6, atol=1e-6):
    e, c = leaves(eager_out), leaves(compiled_out)
    assert len(e) == len(c)
    for a, b in zip(e, c):
        assert isinstance(a, Tensor) and a.tracer.eager
        assert a.dtype == b.dtype.name and a.shape == b.shape
        np.testing.assert_allclose(a.numpy(), b, rtol=rtol, atol=atol)


X, W, B = f32(4, 6), f32(3, 6), f32(3)
IMG, K = f32(2, 3, 6, 6), f32(4, 3, 3, 3)
LABELS = np.array([0, 2, 1, 2], np.int64)
SWEEP = [
    ("relu", lambda x: F.relu(x), (X,)),
    ("exp_tanh_sigmoid", lambda x: F.exp(x) + F.tanh(x) * F.sigmoid(x), (X,)),
    ("softmax", lambda x: F.softmax(x, dim=1), (X,)),
    ("log_softmax", lambda x: F.log_softmax(x, dim=0), (X,)),
    ("linear", lambda x, w, b: F.linear(x, w, b), (X, W, B)),
    ("matmul_operator", lambda x, w: x @ w.T, (X, W)),
    ("sum_mean_max", lambda x: (x.sum(1), x.mean(), x.max(0).values), (X,)),
    ("argmax", lambda x: x.argmax(1), (X,)),
    ("where_compare", lambda x: F.where(x > 0, x, 0.5 * x), (X,)),
    ("reshape_transpose", lambda x: x.reshape(6, 4).transpose(0, 1)[1:3, ::2], (X,)),
    ("item_assign", lambda x: _assign(x), (X,)),
    ("concat", lambda x: F.cat([x, -x], 0), (X,)),
    ("integer_ops", lambda i: (i // 2, i * 4 - 1, -i), (np.arange(-5, 7, dtype=np.int64),)),
    ("promotion", lambda x, i: x * i + 1, (X[:, :1], np.arange(6, dtype=np.int64))),
    ("cross_entropy", lambda x, y: F.cross_entropy(x[:, :3], y), (X, LABELS)),
    ("mse", lambda x, y: F.mse_loss(x, y), (X, X[::-1].copy())),
    ("layer_norm", lambda x: F.layer_norm(x, (6,)), (X,)),
    ("conv2d", lambda x, k: F.conv2d(x, k, padding=1, stride=2), (IMG, K)),
    ("max_pool", lambda x: F.max_pool2d(x, 2), (IMG,)),
    ("avg_pool", lambda x: F.avg_pool2d(x, 3, stride=1, padding=1), (IMG,)),
    ("adaptive_avg", lambda x: F.adaptive_avg_pool2d(x, (2, 3)), (IMG,)),
    ("gather", lambda x, y: F.gather(x, 1, y[:, None]), (X, LABELS)),
    ("leaky_relu_softplus", lambda x: F.leaky_relu(x, 0.1) + F.softplus(x), (X,)),
    ("float64", lambda x: F.tanh(x) * 2, (X.astype(np.float64),)),
]


def _assign(x):
    x = x * 1.0
    x[1, ::2] = 7.0
    return x


@pytest.mark.parametrize("name,fn,args", SWEEP, ids=[s[0] for s in SWEEP])
def test_functions_eagerly_equal_compiled(name, fn, args):
    eager_args = [fe.tensor(a) for a in args]
    assert_same(fn(*eager_args), compiled(fn, *args))


def test_numpy_arrays_into_F_functions_run_eagerly():
    y = F.relu(X)
    assert isinstance(y, Tensor) and y.tracer.eager
    np.testing.assert_array_equal(y.numpy(), np.maximum(X, 0))
    np.testing.assert_allclose(F.softmax(X, dim=1).numpy(),
                               torch.softmax(torch.tensor(X), 1).numpy(), rtol=1e-6)


def test_tensor_data_access():
    t = fe.tensor([[1.5, -2.0], [3.0, 4.0]])
    assert t.dtype == "float32" and t.shape == (2, 2)
    assert float(t[0, 0]) == 1.5 and int(t[1, 0]) == 3 and t.sum().item() == 6.5
    assert t.tolist() == [[1.5, -2.0], [3.0, 4.0]]
    assert bool(t[1, 1] > 3) and not bool(t[0, 1] > 0)
    np.testing.assert_array_equal(np.asarray(t), [[1.5, -2.0], [3.0, 4.0]])
    assert [1, 2, 3][fe.tensor(2)] == 3
    with pytest.raises(ValueError, match="4 elements"):
        t.item()
    with pytest.raises(TypeError, match="0-d integer"):
        [1, 2][t[0, 0]]


@pytest.mark.parametrize("data", [[0.5, 1.25], [1.0, 2.0], [[1.0, 2.0], [3.0, 4.5]],
                                  [1e-5, 1.0], [1e10, 2e10], 3.5, [1, 2, 3], [True, False],
                                  [[0.1, 0.2, 0.3333333]]])
def test_repr_as_torch(data):
    assert repr(fe.tensor(data)) == repr(torch.tensor(data))


def test_repr_names_a_dtype_that_is_not_the_default():
    assert repr(fe.tensor(np.array([0.5, 1.0]))) == "tensor([0.5000, 1.0000], dtype=float64)"
    assert repr(fe.tensor([1, 2], "int32")) == "tensor([1, 2], dtype=int32)"


def _mlp():
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def _cnn():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(36, 5))


@pytest.mark.parametrize("make,x,mode", [(_mlp, X, "train"), (_cnn, IMG, "train"),
                                         (_cnn, IMG, "eval")], ids=["mlp", "cnn_bn_train",
                                                                    "cnn_bn_eval"])
def test_models_eagerly_equal_compiled_with_state_updates(make, x, mode):
    fe.manual_seed(3)
    model = getattr(make(), mode)()
    model.load_state_dict({k: v + RNG.uniform(0.1, 0.5, v.shape).astype(v.dtype)
                           if v.dtype.kind == "f" else v
                           for k, v in model.state_dict().items()})    # non-trivial stats
    before = model.state_dict()
    eager = model(x)
    after_eager = model.state_dict()
    model.load_state_dict(before)
    assert_same(eager, compiled(model, x), rtol=1e-5, atol=1e-6)
    after_compiled = model.state_dict()
    for k in before:                    # running statistics written the same way
        np.testing.assert_allclose(after_eager[k], after_compiled[k], rtol=1e-6, err_msg=k)
    if mode == "train" and make is _cnn:
        assert not np.allclose(after_eager["1.running_mean"], before["1.running_mean"])


def test_rnn_eagerly_equals_compiled_and_torch():
    fe.manual_seed(4)
    rnn = nn.RNN(3, 5, num_layers=2, batch_first=True)
    xs = f32(2, 7, 3)
    out, h = rnn(xs)
    assert_same((out, h), compiled(rnn, xs))
    ref = torch.nn.RNN(3, 5, num_layers=2, batch_first=True)
    with torch.no_grad():
        for name, p in rnn.named_parameters():
            getattr(ref, name).copy_(torch.tensor(p.data))
        t_out, t_h = ref(torch.tensor(xs))
    np.testing.assert_allclose(out.numpy(), t_out.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h.numpy(), t_h.numpy(), rtol=1e-5, atol=1e-6)


def _error(fn, *args):
    try:
        fn(*args)
    except Exception as e:          # noqa: BLE001 -- the error itself is compared
        return type(e), str(e)
    raise AssertionError("no error")


def _bad_matmul(x):
    return x @ x


def _bad_conv(x):
    return F.conv2d(x, np.ones((2, 5, 3, 3), np.float32))


def _bad_reshape(x):
    return x.reshape(5, 5)


def _bad_cat(x):
    return F.cat([x, x[:, :2]], 0)


def _bad_div(x):
    return F.div(x, 2, rounding_mode="up")


def _bad_data(x):
    return F.relu(x) + np.ones((3, 3), np.float32)


@pytest.mark.parametrize("fn,x", [(_bad_matmul, X), (_bad_conv, IMG), (_bad_reshape, X),
                                  (_bad_cat, X), (_bad_div, X), (_bad_data, X)],
                         ids=["matmul", "conv", "reshape", "cat", "div", "broadcast"])
def test_eager_errors_equal_compiled_errors(fn, x):
    eager = _error(fn, fe.tensor(x))
    traced = _error(lambda: fe.compile(fn, fe.TensorSpec(x.shape)))
    assert eager == traced
    if fn is not _bad_div:            # a type rule's error names the user's line
        assert f"test_eager.py:{fn.__code__.co_firstlineno + 1}:" in eager[1], eager[1]


def test_eager_tensor_enters_a_trace_as_a_constant():
    shift = F.exp(fe.tensor([0.0, 1.0, 2.0]))
    run = fe.compile(lambda x: x + shift, fe.TensorSpec((2, 3)))
    x = f32(2, 3)
    np.testing.assert_allclose(run(x), x + np.exp([0.0, 1.0, 2.0]), rtol=1e-6)
    assert "constant" in [n.op for n in run.source_graph.nodes]


def test_eager_random_draws_match_the_compiled_draws():
    fe.manual_seed(11)
    a, b = F.rand(5), F.rand(5)
    fe.manual_seed(11)
    draw = fe.compile(lambda: F.rand(5))
    np.testing.assert_array_equal(a.numpy(), draw())     # counter 0
    np.testing.assert_array_equal(b.numpy(), draw())     # counter 1
    assert not np.array_equal(a.numpy(), b.numpy())


def test_grad_on_eager_inputs_agrees_with_torch():
    def f(x, w):
        return F.sum(F.tanh(x @ w.T) ** 2) / 3.0
    x, w = f32(4, 6), f32(3, 6)
    gx, gw = fe.grad(f, wrt=(0, 1))(fe.tensor(x), w)
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    ((torch.tanh(tx @ tw.T) ** 2).sum() / 3.0).backward()
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gw, tw.grad.numpy(), rtol=1e-5, atol=1e-6)
    # the same function, compiled with specs: the same gradient
    cx = fe.grad(f, fe.TensorSpec(x.shape), fe.TensorSpec(w.shape))(x, w)
    np.testing.assert_array_equal(gx, cx)


def test_grad_of_a_model_loss_on_numpy_arrays_agrees_with_torch():
    fe.manual_seed(5)
    model = _mlp()
    loss = fe.grad(lambda x, y: F.cross_entropy(model(x), y), model=model)
    grads = loss(X, np.array([0, 1, 2, 1]))
    ref = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    with torch.no_grad():
        for name, p in model.named_parameters():
            dict(ref.named_parameters())[name].copy_(torch.tensor(p.data))
    torch.nn.functional.cross_entropy(ref(torch.tensor(X)), torch.tensor([0, 1, 2, 1])).backward()
    for name, p in ref.named_parameters():
        np.testing.assert_allclose(grads[name], p.grad.numpy(), rtol=1e-5, atol=1e-6)
    # eager forward value = the loss torch computes
    value = F.cross_entropy(model(X), np.array([0, 1, 2, 1]))
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(ref(torch.tensor(X)),
                                                     torch.tensor([0, 1, 2, 1]))
    np.testing.assert_allclose(float(value), float(expected), rtol=1e-6)


def test_traced_tensors_still_have_no_data():
    with pytest.raises(TypeError, match="does not exist while tracing"):
        fe.compile(lambda x: F.relu(x) if float(x.sum()) > 0 else x, fe.TensorSpec((2,)))
