"""The training step as one graph (passes/train.py) and ``compile_train``'s mechanics: in-place
updates through donations, hyperparameters as runtime inputs, optimizer state as numpy arrays,
batch norm's running statistics as step outputs, and errors."""
from __future__ import annotations

import numpy as np
import pytest

import irgraph.backends as backends
import irgraph.frontend as fe
import irgraph
from irgraph.frontend import F, nn, optim
from irgraph.frontend.tracing import current_tracer
from irgraph.frontend.train import compile_train
from irgraph.passes.train import OptimizerSpec, training_step

X = fe.TensorSpec((8, 3))
Y = fe.TensorSpec((8,), "int64")


def mlp(seed: int = 0) -> nn.Module:
    fe.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))


def blobs(seed: int = 2):
    """Two separable Gaussian blobs."""
    r = np.random.default_rng(seed)
    y = r.integers(0, 2, 8)
    x = (r.standard_normal((8, 3)) + 2.0 * (2 * y[:, None] - 1)).astype(np.float32)
    return x, y


ALL_OPTIMIZERS = {
    "sgd": lambda: optim.SGD(lr=0.1),
    "sgd_schedule": lambda: optim.SGD(lr=optim.LinearDecay(0.2, 0.002, 20)),
    "momentum": lambda: optim.SGD(lr=0.05, momentum=0.9),
    "nesterov": lambda: optim.SGD(lr=0.05, momentum=0.9, nesterov=True),
    "nesterov_torch": lambda: optim.SGD(lr=0.05, momentum=0.9, nesterov=True, convention="torch"),
    "adagrad": lambda: optim.AdaGrad(lr=0.1),
    "rmsprop": lambda: optim.RMSprop(lr=0.01),
    "rmsprop_nesterov": lambda: optim.RMSprop(lr=0.01, momentum=0.5, nesterov=True),
    "adam": lambda: optim.Adam(lr=0.02),
    "adam_torch_clip_polyak": lambda: optim.Adam(lr=0.02, convention="torch", clip_grad_norm=1.0,
                                                 polyak=0.9),
}


@pytest.mark.parametrize("name", sorted(ALL_OPTIMIZERS))
def test_mlp_loss_decreases_with_each_optimizer(name):
    model = mlp()
    step = compile_train(model, nn.CrossEntropyLoss(), ALL_OPTIMIZERS[name](), X, Y,
                         pipeline=[])
    x, y = blobs()
    losses = [step(x, y) for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0], losses


def test_step_graph_layout_and_donations():
    """(batch, hyperparameters, params, state) -> (loss, params', state'), each new value
    donated to the argument it replaces; the graph prints and parses back."""
    model = mlp()
    opt = optim.Adam(lr=0.01)
    step = compile_train(model, nn.CrossEntropyLoss(), opt, X, Y, pipeline=[])
    g = step.graph
    assert [v.name for v in g.inputs] == ["arg0", "arg1", "lr", "beta1", "beta2", "eps", "t",
                                         "weight_decay"]
    assert all(v.type.shape == () for v in g.inputs[2:])
    names = [p.name for p in g.params]
    assert names[:4] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert "opt.exp_avg.0.weight" in names and "opt.exp_avg_sq.2.bias" in names
    assert g.outputs[0].type.shape == ()
    args = g.arguments
    assert len(g.donations) == len(g.outputs) - 1 == 12
    for o, a in g.donations.items():
        assert g.outputs[o].type == args[a].type
    assert sorted(g.donations.values()) == list(range(8, 20))
    assert [n.op for n in g.nodes].count("adam_update") == 4
    assert irgraph.parse(str(g)) == g


def test_parameters_and_state_update_in_place():
    model = mlp()
    opt = optim.SGD(lr=0.1, momentum=0.9)
    step = compile_train(model, nn.CrossEntropyLoss(), opt, X, Y, pipeline=[])
    w = model[0].weight.data
    before = w.copy()
    step(*blobs())
    buf = opt.state["0.weight"]["momentum_buffer"]
    assert model[0].weight.data is w and not np.array_equal(w, before)
    step(*blobs())
    assert opt.state["0.weight"]["momentum_buffer"] is buf and buf.any()


def test_hyperparameters_change_without_recompiling():
    model = mlp()
    opt = optim.SGD(lr=0.1, momentum=0.9)
    step = compile_train(model, nn.CrossEntropyLoss(), opt, X, Y, pipeline=[])
    graph, exe = step.graph, step.executable
    text = str(graph)
    x, y = blobs()
    step(x, y)
    w = model[0].weight.data.copy()
    v = opt.state["0.weight"]["momentum_buffer"].copy()
    opt.lr, opt.momentum = 0.0, 0.0      # a zero step: nothing may move
    step(x, y)
    np.testing.assert_array_equal(model[0].weight.data, w)
    np.testing.assert_array_equal(opt.state["0.weight"]["momentum_buffer"], 0 * v)
    assert step.graph is graph and step.executable is exe and str(step.graph) == text
    opt.lr, opt.momentum = 0.1, 0.5
    step(x, y)
    assert not np.array_equal(model[0].weight.data, w)


def test_structure_changes_are_refused_with_a_clear_error():
    model = mlp()
    opt = optim.SGD(lr=0.1)
    step = compile_train(model, nn.CrossEntropyLoss(), opt, X, Y, pipeline=[])
    opt.momentum = 0.9
    with pytest.raises(ValueError, match="compiled as zero"):
        step(*blobs())
    opt2 = optim.Adam(clip_grad_norm=1.0)
    step2 = compile_train(mlp(), nn.CrossEntropyLoss(), opt2, X, Y, pipeline=[])
    opt2.clip_grad_norm = None
    with pytest.raises(ValueError, match="clip_grad_norm was set"):
        step2(*blobs())


def test_optimizer_state_is_readable_and_writable():
    """Writing the state changes the next step: momentum 1, lr 1 and a pre-set velocity v
    make alg. 8.2's update theta + v - g, so the velocity's effect is visible exactly."""
    model = mlp()
    opt = optim.SGD(lr=1.0, momentum=1.0)
    step = compile_train(model, nn.CrossEntropyLoss(), opt, X, Y, pipeline=[])
    ref = mlp()
    ref_opt = optim.SGD(lr=1.0, momentum=1.0)
    ref_step = compile_train(ref, nn.CrossEntropyLoss(), ref_opt, X, Y, pipeline=[])
    opt.state["2.bias"]["momentum_buffer"][:] = [0.5, -0.25]        # write in place
    opt.state["0.bias"]["momentum_buffer"] = np.full(8, 0.125, np.float32)   # replace
    x, y = blobs()
    step(x, y)
    ref_step(x, y)
    np.testing.assert_allclose(model[2].bias.data - ref[2].bias.data, [0.5, -0.25], atol=1e-6)
    np.testing.assert_allclose(model[0].bias.data - ref[0].bias.data, 0.125, atol=1e-6)
    sd = opt.state_dict()
    assert sd["step_count"] == 1 and set(sd["state"]) == {"0.weight", "0.bias", "2.weight",
                                                          "2.bias"}
    opt.state["0.bias"]["momentum_buffer"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="momentum_buffer.0.bias"):
        step(x, y)


def test_optimizer_params_select_what_is_trained():
    model = mlp()
    frozen = model[0].weight.data.copy()
    opt = optim.SGD([model[2].weight, model[2].bias, model[0].bias], lr=0.1)
    step = compile_train(model, nn.CrossEntropyLoss(), opt, X, Y, pipeline=[])
    step(*blobs())
    np.testing.assert_array_equal(model[0].weight.data, frozen)
    assert set(opt.state) == {"2.weight", "2.bias", "0.bias"}


def test_schedule_is_evaluated_at_each_iteration_eq_8_14():
    opt = optim.SGD(lr=optim.LinearDecay(1.0, 0.01, 4))
    step = compile_train(mlp(), nn.CrossEntropyLoss(), opt, X, Y, pipeline=[])
    seen = []
    for _ in range(6):
        seen.append(opt.hyperparameters()["lr"])
        step(*blobs())
    np.testing.assert_allclose(seen, [1.0, 0.7525, 0.505, 0.2575, 0.01, 0.01])


def test_loss_fn_none_and_functions():
    """The model may return the loss itself; plain functions and float64 work too."""
    w = nn.Parameter(np.zeros(3))

    def model(x, y):
        return F.mse_loss(F.matmul(x, w), y)
    opt = optim.SGD([w], lr=0.5)
    step = compile_train(model, None, opt, fe.TensorSpec((4, 3), "float64"),
                         fe.TensorSpec((4,), "float64"), pipeline=[])
    x = np.eye(4, 3)
    y = x @ np.array([1.0, -2.0, 0.5])
    for _ in range(200):
        loss = step(x, y)
    assert loss < 1e-10
    np.testing.assert_allclose(w.data, [1.0, -2.0, 0.5], atol=1e-5)


# ---------------------------------------------------------------- batch norm
class BN(nn.Module):
    """A minimal batch-norm layer over the batch_norm op (the running statistics are buffers)."""

    def __init__(self, c: int):
        super().__init__()
        self.weight = nn.Parameter(np.ones(c, np.float32))
        self.bias = nn.Parameter(np.zeros(c, np.float32))
        self.register_buffer("running_mean", np.zeros(c, np.float32))
        self.register_buffer("running_var", np.ones(c, np.float32))

    def forward(self, x):
        tr = current_tracer()
        y, m, v = tr.emit("batch_norm", x, F.as_tensor(self.weight), F.as_tensor(self.bias),
                          F.as_tensor(self.running_mean), F.as_tensor(self.running_var),
                          training=self.training, eps=1e-5, momentum=0.1)
        if self.training:
            tr.update_state(self.running_mean, m)
            tr.update_state(self.running_var, v)
        return y


@pytest.mark.parametrize("layer", [BN, nn.BatchNorm1d])
def test_batch_norm_running_statistics_are_step_outputs(layer):
    """Training mode: the running statistics are explicit outputs donated to the buffers,
    r' = 0.9 r + 0.1 stat (PyTorch's momentum 0.1, unbiased variance); not trained."""
    fe.manual_seed(0)
    model = nn.Sequential(layer(3), nn.Linear(3, 2))
    opt = optim.SGD(lr=0.1)
    step = compile_train(model, nn.CrossEntropyLoss(), opt, X, Y, pipeline=[])
    counted = ["0.num_batches_tracked"] if layer is nn.BatchNorm1d else []   # as torch's
    assert step.layout.buffer_updates == counted + ["0.running_mean", "0.running_var"]
    assert step.layout.trainable == ["0.weight", "0.bias", "1.weight", "1.bias"]
    bn = [n for n in step.graph.nodes if n.op == "batch_norm"]
    assert len(bn) == 1 and bn[0].attrs["training"] is True
    x, y = blobs()
    rm = model[0].running_mean.data
    step(x, y)
    assert model[0].running_mean.data is rm
    np.testing.assert_allclose(rm, 0.1 * x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(model[0].running_var.data, 0.9 + 0.1 * x.var(0, ddof=1),
                               rtol=1e-5)
    assert set(opt.state) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    if counted:
        step(x, y)
        assert model[0].num_batches_tracked.data == 2


def test_batch_norm_eval_mode_is_compiled_without_updates():
    fe.manual_seed(0)
    model = nn.Sequential(BN(3), nn.Linear(3, 2)).eval()
    step = compile_train(model, nn.CrossEntropyLoss(), optim.SGD(lr=0.1), X, Y, pipeline=[])
    assert step.layout.buffer_updates == []
    assert [n for n in step.graph.nodes if n.op == "batch_norm"][0].attrs["training"] is False
    step(*blobs())
    np.testing.assert_array_equal(model[0].running_mean.data, 0)


# ---------------------------------------------------------------- the pass itself, and errors
def test_training_step_pass_rejects_bad_graphs():
    g = fe.trace(lambda x: x * 2.0, fe.TensorSpec((3,)))
    with pytest.raises(irgraph.IRError, match="float scalar"):
        training_step(g, [], OptimizerSpec("sgd"))
    model = mlp()
    g = fe.trace(lambda x: model(x).sum(), X)
    with pytest.raises(irgraph.IRError, match="not a parameter"):
        training_step(g, ["nope"], OptimizerSpec("sgd"))
    with pytest.raises(ValueError, match="unknown optimizer kind"):
        OptimizerSpec("lion")
    with pytest.raises(ValueError, match="no Nesterov form"):
        OptimizerSpec("rmsprop_momentum", "torch", nesterov=True)
    with pytest.raises(ValueError, match="dampening is torch's"):
        optim.SGD(lr=0.1, momentum=0.9, dampening=0.1)          # the text has no dampening
    with pytest.raises(ValueError, match="centered RMSprop is torch's"):
        optim.RMSprop(lr=0.1, centered=True)
    with pytest.raises(ValueError, match="amsgrad is torch's"):
        optim.Adam(lr=0.1, amsgrad=True)
    with pytest.raises(ValueError, match="adam_amsgrad is torch's"):
        OptimizerSpec("adam_amsgrad", "text")


def test_bad_batch_and_bad_loss_errors():
    step = compile_train(mlp(), nn.CrossEntropyLoss(), optim.SGD(lr=0.1), X, Y, pipeline=[])
    x, y = blobs()
    with pytest.raises(TypeError, match="2 batch input"):
        step(x)
    with pytest.raises(ValueError, match="shape"):
        step(x[:4], y[:4])
    with pytest.raises(ValueError, match="scalar"):
        compile_train(mlp(), lambda out, y: out, optim.SGD(lr=0.1), X, Y, pipeline=[])
    with pytest.raises(ValueError, match="lr must be"):
        bad = optim.SGD(lr=-1.0)
        compile_train(mlp(), nn.CrossEntropyLoss(), bad, X, Y, pipeline=[])(x, y)


@pytest.mark.parametrize("backend", backends.available())
def test_every_backend_updates_in_place_without_recompiling(backend):
    """The same step on each backend: buffers updated in place, hyperparameter changes reach
    the one executable, and the trajectory equals the reference backend's."""
    runs = {}
    for b in ("reference", backend):
        model = mlp()
        opt = optim.Adam(lr=0.05, convention="torch", clip_grad_norm=1.0, weight_decay=0.01)
        step = compile_train(model, nn.CrossEntropyLoss(), opt, X, Y, backend=b, pipeline=[])
        exe, w, m = step.executable, model[0].weight.data, None
        losses = []
        for k in range(3):
            opt.lr = 0.05 / (k + 1)
            losses.append(step(*blobs()))
            m = m if m is not None else opt.state["0.weight"]["exp_avg"]
        assert step.executable is exe and model[0].weight.data is w
        assert opt.state["0.weight"]["exp_avg"] is m
        runs[b] = (losses, w.copy(), m.copy())
    np.testing.assert_allclose(runs[backend][0], runs["reference"][0], rtol=1e-5)
    np.testing.assert_allclose(runs[backend][1], runs["reference"][1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(runs[backend][2], runs["reference"][2], rtol=1e-5, atol=1e-6)


def test_default_pipeline_keeps_the_step_and_its_donations():
    """The default 'training' pass pipeline may rewrite the step but must keep its arguments,
    its donations and its results."""
    runs = []
    for pipeline in (None, []):
        fe.manual_seed(0)
        model = nn.Sequential(BN(3), nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
        opt = optim.SGD(lr=0.05, momentum=0.9, nesterov=True, clip_grad_norm=1.0, polyak=0.9)
        step = compile_train(model, nn.CrossEntropyLoss(), opt, X, Y, pipeline=pipeline)
        losses = [step(*blobs()) for _ in range(4)]
        runs.append((losses, model.state_dict(), opt.averaged()))
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-6)
    for name, a in runs[1][1].items():
        np.testing.assert_allclose(runs[0][1][name], a, rtol=1e-5, atol=1e-7, err_msg=name)
    for name, a in runs[1][2].items():
        np.testing.assert_allclose(runs[0][2][name], a, rtol=1e-5, atol=1e-7, err_msg=name)


def test_param_groups_view_like_torch():
    model = mlp()
    opt = optim.SGD(lr=0.1, momentum=0.9)
    compile_train(model, nn.CrossEntropyLoss(), opt, X, Y, pipeline=[])
    (group,) = opt.param_groups
    assert group["lr"] == 0.1 and group["momentum"] == 0.9 and "betas" not in group
    assert len(group["params"]) == 4
    group["lr"] = 0.01
    assert opt.hyperparameters()["lr"] == 0.01
    with pytest.raises(KeyError, match="no hyperparameter 'betas'"):
        group["betas"]
    with pytest.raises(KeyError, match="cannot set"):
        group["params"] = []


def test_parameter_names_that_equal_hyperparameter_names():
    """A model whose parameters are called ``lr`` and ``t`` still gets its own inputs."""
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.lr = nn.Parameter(np.ones((3, 2), np.float32))
            self.t = nn.Parameter(np.zeros(2, np.float32))

        def forward(self, x):
            return F.linear(x, self.lr.T, self.t)
    model = Odd()
    step = compile_train(model, nn.CrossEntropyLoss(), optim.Adam(lr=0.1), X, Y, pipeline=[])
    names = [v.name for v in step.graph.inputs]
    assert names[2:] == ["hp_lr", "beta1", "beta2", "eps", "hp_t", "weight_decay"]
    losses = [step(*blobs()) for _ in range(5)]
    assert losses[-1] < losses[0]


def test_read_only_buffers_are_replaced_by_the_new_values():
    model = mlp()
    opt = optim.SGD(lr=0.1, momentum=0.9)
    step = compile_train(model, nn.CrossEntropyLoss(), opt, X, Y, pipeline=[])
    frozen = np.zeros((2,), np.float32)
    frozen.setflags(write=False)
    opt.state["2.bias"]["momentum_buffer"] = frozen
    w = model[2].weight.data.copy()
    w.setflags(write=False)
    model[2].weight.data = w
    step(*blobs())
    assert opt.state["2.bias"]["momentum_buffer"] is not frozen and not frozen.any()
    assert opt.state["2.bias"]["momentum_buffer"].any()
    assert model[2].weight.data is not w and not np.array_equal(model[2].weight.data, w)


def test_state_is_keyed_by_name_or_by_parameter():
    model = mlp()
    opt = optim.Adam(model.parameters(), lr=0.01)
    step = compile_train(model, nn.CrossEntropyLoss(), opt, X, Y, pipeline=[])
    step(*blobs())
    w = model[0].weight
    assert opt.state[w] is opt.state["0.weight"] and w in opt.state
    assert set(opt.state[w]) == {"exp_avg", "exp_avg_sq"} and opt.state[w]["exp_avg"].any()
    assert nn.Parameter(np.zeros(1)) not in opt.state
