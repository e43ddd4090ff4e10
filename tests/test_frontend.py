"""The DSL: tracing functions and nn.Modules, operators, indexing, methods, type promotion,
parameter naming, compile's outputs and its errors. Where PyTorch has the same code, the same
Python function runs on torch tensors to give the expected result."""
from __future__ import annotations

import inspect
import re

import numpy as np
import pytest
import torch

import irgraph.frontend as fe
import irgraph
from irgraph.frontend import F, nn
from irgraph import IRError

HERE = "test_frontend.py"


def spec(*shape, dtype="float32"):
    return fe.TensorSpec(shape, dtype)


def data(*shape, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype) == np.bool_:
        return rng.random(shape) < 0.5
    if np.issubdtype(dtype, np.integer):
        return rng.integers(-5, 6, shape).astype(dtype)
    return rng.uniform(-2, 2, shape).astype(dtype)


def same_as_torch(fn, *arrays, rtol=1e-5):
    """Compile ``fn`` over the arrays' types, run it, and compare with ``fn`` on torch."""
    compiled = fe.compile(fn, *[fe.TensorSpec(a.shape, a.dtype.name) for a in arrays])
    got = compiled(*arrays)
    want = fn(*[torch.from_numpy(a.copy()) for a in arrays])
    got, want = ((x if isinstance(x, tuple) else (x,)) for x in (got, want))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        w = w.numpy()
        assert g.shape == w.shape and g.dtype == w.dtype, (g.dtype, g.shape, w.dtype, w.shape)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=1e-6)
    return compiled


# ------------------------------------------------------------------ tracing
def test_trace_a_function_names_inputs_and_verifies():
    def f(x, bias):
        return F.relu(x @ x.T + bias)
    g = fe.trace(f, spec(3, 4), spec(3))
    assert isinstance(g, irgraph.Graph) and g.name == "f"
    assert [v.name for v in g.inputs] == ["x", "bias"]
    assert [n.op for n in g.nodes] == ["transpose", "matmul", "add", "relu"]
    assert str(g.outputs[0].type) == "f32[3,3]"
    assert irgraph.verify(g) is g and irgraph.parse(str(g)) == g


def test_nodes_record_the_users_source_line():
    line = inspect.currentframe().f_lineno + 1
    g = fe.trace(lambda x: x.exp(), spec(2))
    assert g.nodes[0].loc == f"{HERE}:{line}"


@pytest.mark.parametrize("name,want", [("my-model v2", "my_model_v2"), ("2nd", "g_2nd"),
                                       ("", "lambda"), ("a.b", "a.b")])
def test_graph_names_always_print_and_parse(name, want):
    g = fe.trace(lambda x: x + 1, spec(2), name=name or None)
    assert g.name == want and irgraph.parse(str(g)) == g


def test_trace_accepts_shape_tuples_and_rejects_other_specs():
    g = fe.trace(lambda x: -x, ((2, 3), "int32"))
    assert str(g.inputs[0].type) == "i32[2,3]"
    with pytest.raises(TypeError, match="TensorSpec"):
        fe.trace(lambda x: x, np.zeros(3))
    with pytest.raises(ValueError, match="negative dimension"):
        fe.TensorSpec((2, -1))
    with pytest.raises(TypeError, match="unsupported dtype"):
        fe.TensorSpec((2,), "complex64")


# ------------------------------------------------------------------ operators vs torch
BINARY = {
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b, "matmul": lambda a, b: a @ b.T, "pow": lambda a, b: abs(a) ** b,
    "lt": lambda a, b: a < b, "le": lambda a, b: a <= b, "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b, "eq": lambda a, b: a == b, "ne": lambda a, b: a != b,
    "neg_abs": lambda a, b: -a + abs(b),
    "scalar_right": lambda a, b: (a + 1) * 2 - b / 4 + a ** 2,
    "scalar_left": lambda a, b: 1 - a + 2 * b + 3 / (abs(b) + 1) + 2 ** a,
    "compare_scalar": lambda a, b: (a > 0.5, 1 < b, a == 0),
    "bool_ops": lambda a, b: (a > 0) & (b < 0) | (a == b),
}


@pytest.mark.parametrize("name", sorted(BINARY))
def test_operator_matches_torch(name):
    same_as_torch(BINARY[name], data(3, 4, seed=1), data(3, 4, seed=2))


@pytest.mark.parametrize("shapes", [((3, 1), (1, 4)), ((2, 3, 4), (4,)), ((), (2, 2))])
def test_broadcasting_operators_match_torch(shapes):
    a, b = data(*shapes[0], seed=3), data(*shapes[1], seed=4)
    same_as_torch(lambda x, y: (x + y, x * y - y, x / (y * y + 1), torch_max(x, y)), a, b)


def torch_max(x, y):
    return x.maximum(y)


@pytest.mark.parametrize("da,db", [("int32", "float32"), ("int64", "float64"), ("bool", "int32"),
                                   ("int32", "int64"), ("float32", "float64"),
                                   ("bool", "float32")])
def test_dtype_promotion_matches_torch(da, db):
    a, b = data(2, 3, dtype=da, seed=5), data(2, 3, dtype=db, seed=6)
    same_as_torch(lambda x, y: (x + y, y + x, x * 1.5, y * 2, x.sum(), x / 2), a, b)


@pytest.mark.parametrize("dtype", ["int32", "int64", "bool", "float64"])
def test_zero_d_tensors_do_not_upcast_as_torch(dtype):
    a, b = data(3, dtype="float32"), np.array(1, dtype=dtype)
    same_as_torch(lambda x, y: (x + y, y * x), a, b)


def test_integer_division_is_true_division_and_floor_divide_rounds_down():
    a = np.array([7, -7, 7, -7], np.int64)
    b = np.array([2, 2, -2, -2], np.int64)
    same_as_torch(lambda x, y: (x / y, x // y, torch_floor(x, y)), a, b)


def torch_floor(x, y):
    return x.div(y, rounding_mode="floor")


def test_numpy_operands_on_the_left_defer_to_the_tensor():
    c = np.arange(3, dtype=np.float32)
    f = fe.compile(lambda x: (np.float32(2) * x, c + x, np.float64(1) - x), spec(3))
    x = data(3)
    out = f(x)
    np.testing.assert_allclose(out[0], 2 * x)
    np.testing.assert_allclose(out[1], c + x)
    np.testing.assert_allclose(out[2], 1 - x, rtol=1e-6)
    assert all(o.dtype == np.float32 for o in out)


UNARY = ["exp", "log", "sqrt", "rsqrt", "tanh", "sigmoid", "relu", "abs", "sign", "square",
         "neg", "float", "double", "long", "int"]


@pytest.mark.parametrize("name", UNARY)
def test_unary_methods_match_torch(name):
    x = data(3, 4) + (3 if name in ("log", "sqrt", "rsqrt") else 0)
    same_as_torch(lambda t: getattr(t, name)(), x)


# ------------------------------------------------------------------ indexing
INDEXES = [1, -1, slice(1, 3), (slice(None), slice(None, None, 2)), None, (Ellipsis, 1),
           (1, Ellipsis, None), (slice(None), slice(-2, None)), slice(2, 1), (0, 1, 2),
           (None, Ellipsis, None), (slice(None), -3, slice(1, None, 3)), Ellipsis,
           (slice(-100, 100),)]


@pytest.mark.parametrize("index", INDEXES, ids=repr)
def test_indexing_matches_torch(index):
    same_as_torch(lambda t: t[index], data(4, 5, 6))


@pytest.mark.parametrize("index", [slice(None, None, -1), (slice(None), slice(None, None, -2)),
                                   (slice(3, 0, -1), Ellipsis, slice(-1, None, -3)),
                                   (slice(-1, -5, -2), 2), slice(None, -100, -1)], ids=repr)
def test_negative_step_indexing_matches_numpy(index):
    """torch has no negative steps; numpy (and Python) slicing is the reference."""
    x = data(4, 5, 6)
    np.testing.assert_array_equal(fe.compile(lambda t: t[index], spec(4, 5, 6))(x), x[index])


@pytest.mark.parametrize("index,err,pattern", [
    (5, IndexError, "index 5 is out of bounds for axis 0 of size 4"),
    ((0, 0, 0, 0), IndexError, "too many indices"),
    ((Ellipsis, 0, Ellipsis), IndexError, "single ellipsis"),
    ([0.5], TypeError, "int32 or int64"),
    (True, TypeError, "boolean index"),
])
def test_bad_indexes_are_clear_errors(index, err, pattern):
    with pytest.raises(err, match=pattern):
        fe.trace(lambda t: t[index], spec(4, 5, 6))


# ------------------------------------------------------------------ tensor methods
METHODS = {
    "shape": lambda t: t.reshape(t.shape[1], -1) * t.size(0) + t.size(-1),
    "reshape_minus_one": lambda t: t.reshape(-1, 4),
    "view": lambda t: t.view(2, -1, 3),
    "T": lambda t: t.reshape(6, 4).T,
    "sum_dim_keepdim": lambda t: (t.sum(1, keepdim=True), t.sum((0, -1)), t.sum()),
    "mean": lambda t: (t.mean(), t.mean(-1), t.mean(dim=(0, 1), keepdim=True)),
    "max_dim": lambda t: tuple(t.max(1)) + (t.max(),),
    "min_dim": lambda t: tuple(t.min(-1, keepdim=True)) + (t.min(),),
    "argmax": lambda t: (t.argmax(), t.argmax(1), t.argmin(2, keepdim=True)),
    "amax": lambda t: (t.amax(1), t.amin((0, 2))),
    "flatten": lambda t: (t.flatten(), t.flatten(1)),
    "permute": lambda t: (t.permute(2, 0, 1), t.permute((1, 2, 0)), t.transpose(0, 2)),
    "unsqueeze": lambda t: (t.unsqueeze(0), t.unsqueeze(-1), t[:1].squeeze(0), t.squeeze(),
                            t[:1, :, :1].squeeze((0, 1, -1))),
    "expand": lambda t: (t[:, :1].expand(2, 3, 4), t.expand(5, -1, -1, -1)),
    "clamp": lambda t: (t.clamp(-0.5, 0.5), t.clamp(min=0), t.clamp(max=0.1), t.clip(-1, 1)),
    "softmax": lambda t: (t.softmax(1), t.log_softmax(-1)),
    "var": lambda t: (t.var(), t.var(1), t.var(dim=-1, keepdim=True)),
    "arith_methods": lambda t: (t.add(1), t.sub(t), t.mul(2), t.div(3), t.pow(2)),
    "comparisons": lambda t: (t.eq(t), t.gt(0), t.le(0.5), t.ne(0), t.lt(t), t.ge(t)),
    "where_method": lambda t: t.where(t > 0, 0.0),
    "len_and_iter": lambda t: tuple(row.sum() for row in t) + (t * len(t),),
    "dim_numel": lambda t: t * t.dim() + t.numel(),
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_tensor_method_matches_torch(name):
    same_as_torch(METHODS[name], data(2, 3, 4, seed=7))


def test_max_dim_gives_values_and_indices_with_torch_tie_rule():
    x = np.array([[1, 3, 3], [2, 2, 0], [5, 5, 5]], np.float32)

    def f(t):
        m = t.max(1)
        values, indices = m
        return m.values, m.indices, values, indices, t.min(0).indices
    out = fe.compile(f, spec(3, 3))(x)
    np.testing.assert_array_equal(out[1], [1, 0, 0])
    np.testing.assert_array_equal(out[4], [0, 1, 1])
    same_as_torch(f, x)


def test_compiled_function_can_return_a_max_result():
    out = fe.compile(lambda t: t.max(0), spec(2, 3))(np.eye(2, 3, dtype=np.float32))
    assert type(out).__name__ == "MinMax"
    np.testing.assert_array_equal(out.indices, [0, 1, 0])


# ------------------------------------------------------------------ functional namespace
FUNCTIONS = {
    "cat": lambda a, b: (torch_or_F(a).cat([a, b], 0), torch_or_F(a).cat((a, b, a), dim=-1)),
    "stack": lambda a, b: (torch_or_F(a).stack([a, b]), torch_or_F(a).stack([a, b], dim=2)),
    "where": lambda a, b: torch_or_F(a).where(a > b, a, b),
    "max_other": lambda a, b: (torch_or_F(a).max(a, b), torch_or_F(a).min(a, b)),
    "clamp": lambda a, b: torch_or_F(a).clamp(a, -0.5, 0.5),
    "softmax": lambda a, b: (torch_or_F(a).softmax(a, 1), torch_or_F(a).log_softmax(a, 0)),
    "sum": lambda a, b: (torch_or_F(a).sum(a, 1), torch_or_F(a).mean(b)),
    "argmax": lambda a, b: (torch_or_F(a).argmax(a), torch_or_F(a).argmax(b, 1)),
    "flatten": lambda a, b: torch_or_F(a).flatten(torch_or_F(a).stack([a, b]), 1),
    "matmul": lambda a, b: torch_or_F(a).matmul(a, b.T),
    "unsqueeze": lambda a, b: torch_or_F(a).squeeze(torch_or_F(a).unsqueeze(a, 1), 1),
}


def torch_or_F(t):
    return torch if isinstance(t, torch.Tensor) else F


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_functional_matches_torch(name):
    same_as_torch(FUNCTIONS[name], data(3, 4, seed=8), data(3, 4, seed=9))


def test_cat_promotes_mixed_dtypes_as_torch():
    same_as_torch(lambda a, b: torch_or_F(a).cat([a, b]), data(2, dtype="int32"), data(3))


@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("pad", [(1, 2), (2, 1, 0, 3), (1, 1, 1, 1, 1, 1), (0, 0)])
def test_pad_matches_torch(mode, pad):
    tf = torch.nn.functional

    def f(t):
        mod = tf if isinstance(t, torch.Tensor) else F
        return mod.pad(t, pad, mode=mode, **({"value": 2.5} if mode == "constant" else {}))
    # torch's non-constant modes take k padded dims plus one or two leading ones
    same_as_torch(f, data(*(2, 3, 4, 5, 3)[:len(pad) // 2 + 2]))
    same_as_torch(f, data(*(3, 4, 5, 2)[:len(pad) // 2 + 1]))


def test_pad_with_negative_widths_crops_as_torch():
    tf = torch.nn.functional

    def f(t):
        mod = tf if isinstance(t, torch.Tensor) else F
        return mod.pad(t, (-1, 2, 1, -2))
    same_as_torch(f, data(3, 4, 5))


@pytest.mark.parametrize("fn,err,pattern", [
    (lambda t: t.unsqueeze(4), IndexError, r"range of \[-4, 3\], but got 4"),
    (lambda t: t.transpose(0, -4), IndexError, r"range of \[-3, 2\], but got -4"),
    (lambda t: t.permute(0, 0, 1), ValueError, "not a permutation"),
    (lambda t: t.squeeze(3), IndexError, "out of range"),
    (lambda t: t.flatten(2, 1), ValueError, "start_dim 2 comes after end_dim 1"),
    (lambda t: t.sum(3), IndexError, r"range of \[-3, 2\], but got 3"),
    (lambda t: t.reshape(5, -1), ValueError, r"cannot reshape \(2, 3, 4\) to \(5, -1\)"),
    (lambda t: t.reshape(-1, -1), ValueError, "only one dimension can be -1"),
])
def test_bad_dimensions_are_clear_errors(fn, err, pattern):
    with pytest.raises(err, match=pattern):
        fe.trace(fn, spec(2, 3, 4))


def test_zero_d_shape_functions_match_torch():
    same_as_torch(lambda t: (t.flatten(), t.unsqueeze(0), t.squeeze(), t.squeeze(-1),
                             t.transpose(0, -1), t.unsqueeze(-1)), np.array(2.5, np.float32))


def test_pad_errors_name_the_problem():
    with pytest.raises(ValueError, match="pairs"):
        fe.trace(lambda t: F.pad(t, (1, 2, 3)), spec(2, 3))
    with pytest.raises(IRError, match="reflect padding 3 of axis 1 must be < its size 3"):
        fe.trace(lambda t: F.pad(t, (3, 0), mode="reflect"), spec(2, 3))
    with pytest.raises(IRError, match="bad attribute mode='mirror'"):
        fe.trace(lambda t: F.pad(t, (1, 1), mode="mirror"), spec(2, 3))


def test_losses_match_torch():
    x, t = data(5, 4), np.array([0, 3, 1, -100, 2])
    tf = torch.nn.functional

    def f(a, b):
        mod = tf if isinstance(a, torch.Tensor) else F
        return (mod.cross_entropy(a, b), mod.cross_entropy(a, b, reduction="sum"),
                mod.nll_loss(mod.log_softmax(a, 1), b, reduction="none"),
                mod.mse_loss(a, a * 0.5), mod.softmax(a, dim=1))
    same_as_torch(f, x, t)


# ------------------------------------------------------------------ modules
class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer1 = nn.Linear(4, 8)
        self.body = nn.Sequential(nn.Tanh(), nn.Sequential(nn.Linear(8, 8), nn.ReLU()))
        self.head = nn.Linear(8, 3, bias=False)

    def forward(self, x):
        return self.head(self.body(self.layer1(x)))


NAMES = ["layer1.weight", "layer1.bias", "body.1.0.weight", "body.1.0.bias", "head.weight"]


def test_module_parameters_are_named_by_path():
    fe.manual_seed(0)
    m = MLP()
    assert [n for n, _ in m.named_parameters()] == NAMES
    assert len(list(m.parameters())) == 5
    g = fe.trace(m, spec(2, 4))
    assert [p.name for p in g.params] == NAMES
    assert g.name == "MLP" and [v.name for v in g.inputs] == ["x"]
    assert str(g.param("body.1.0.weight").type) == "f32[8,8]"


def test_module_matches_torch_with_the_same_weights():
    fe.manual_seed(1)
    m = MLP()
    tm = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8),
                             torch.nn.ReLU(), torch.nn.Linear(8, 3, bias=False))
    with torch.no_grad():
        for (_, p), tp in zip(m.named_parameters(), tm.parameters()):
            tp.copy_(torch.from_numpy(p.data))
    x = data(6, 4)
    np.testing.assert_allclose(fe.compile(m, spec(6, 4))(x),
                               tm(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_linear_initialization_follows_torch_bounds():
    fe.manual_seed(2)
    lin = nn.Linear(25, 7)
    assert lin.weight.data.shape == (7, 25) and lin.weight.data.dtype == np.float32
    assert np.abs(lin.weight.data).max() <= 1 / 5 and np.abs(lin.bias.data).max() <= 1 / 5
    assert np.abs(lin.weight.data).max() > 0.15    # spread over the whole U(-k, k) range


def test_shared_parameter_is_one_graph_parameter():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 3)
            self.b = nn.Linear(3, 3)
            self.b.weight = self.a.weight

        def forward(self, x):
            return self.b(self.a(x))
    m = Tied()
    g = fe.trace(m, spec(2, 3))
    assert [p.name for p in g.params] == ["a.weight", "a.bias", "b.bias"]


def test_state_dict_round_trip_and_errors():
    fe.manual_seed(3)
    a, b = MLP(), MLP()
    sd = a.state_dict()
    assert list(sd) == NAMES
    sd["layer1.bias"][:] = 7          # a copy: the module is untouched
    assert not np.all(a.layer1.bias.data == 7)
    b.load_state_dict(a.state_dict())
    x = data(2, 4)
    np.testing.assert_array_equal(fe.compile(a, spec(2, 4))(x), fe.compile(b, spec(2, 4))(x))
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "head.weight"'):
        b.load_state_dict({k: v for k, v in a.state_dict().items() if k != "head.weight"})
    bad = a.state_dict()
    bad["head.weight"] = np.zeros((2, 2), np.float32)
    with pytest.raises(RuntimeError, match=r"size mismatch for head.weight: copying a param with "
                       r"shape \(2, 2\) from checkpoint, the shape in current model is \(3, 8\)"):
        b.load_state_dict(bad)


def test_compiled_module_reads_weights_live():
    lin = nn.Linear(2, 2)
    run = fe.compile(lin, spec(1, 2))
    x = np.ones((1, 2), np.float32)
    lin.load_state_dict({"weight": np.eye(2, dtype=np.float32),
                         "bias": np.array([1, 2], np.float32)})
    np.testing.assert_array_equal(run(x), [[2, 3]])


def test_an_input_named_like_a_parameter_is_renamed_not_the_parameter():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(np.full(3, 2.0, np.float32))

        def forward(self, w):
            return w * self.w
    run = fe.compile(Scale(), spec(3))
    assert [v.name for v in run.graph.inputs] == ["w_input"]
    assert [v.name for v in run.graph.params] == ["w"]
    np.testing.assert_array_equal(run(np.ones(3, np.float32)), [2, 2, 2])


def test_modules_inside_a_traced_function():
    fe.manual_seed(4)
    lin = nn.Linear(3, 2)
    g = fe.trace(lambda x: F.softmax(lin(x), -1), spec(4, 3))
    assert [p.name for p in g.params] == ["param", "param_1"]


# ------------------------------------------------------------------ compile's outputs
def test_compile_returns_nested_output_structures():
    def f(x, y):
        return {"sum": x + y, "pair": (x * 2, [y - 1, x.sum()]), "last": x.T}
    x, y = data(2, 3), data(2, 3, seed=1)
    out = fe.compile(f, spec(2, 3), spec(2, 3))(x, y)
    assert set(out) == {"sum", "pair", "last"}
    assert isinstance(out["pair"], tuple) and isinstance(out["pair"][1], list)
    np.testing.assert_allclose(out["sum"], x + y)
    np.testing.assert_allclose(out["pair"][1][0], y - 1)
    np.testing.assert_allclose(out["pair"][1][1], x.sum(), rtol=1e-6)
    np.testing.assert_array_equal(out["last"], x.T)


def test_compile_of_identity_and_single_outputs():
    x = data(3)
    np.testing.assert_array_equal(fe.compile(lambda t: t, spec(3))(x), x)
    assert isinstance(fe.compile(lambda t: t + 1, spec(3))(x), np.ndarray)


def test_returning_a_non_tensor_is_an_error():
    with pytest.raises(TypeError, match="returned int"):
        fe.trace(lambda t: 3, spec(2))


# ------------------------------------------------------------------ errors
def test_shape_mismatch_names_the_op_and_the_users_line():
    def f(x, y):
        return x + y
    line = inspect.getsourcelines(f)[1] + 1
    with pytest.raises(IRError) as info:
        fe.trace(f, spec(2, 3), spec(4))
    msg = str(info.value)
    assert msg.startswith(f"{HERE}:{line}: op 'add' cannot take (f32[2,3], f32[4])")
    assert "do not broadcast" in msg


def test_matmul_mismatch_inside_a_module_names_the_module_call_line():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(5, 2)

        def forward(self, x):
            return self.fc(x)
    line = inspect.getsourcelines(Bad.forward)[1] + 1
    with pytest.raises(IRError, match=rf"^{HERE}:{line}: op 'matmul' .*contracted"):
        fe.trace(Bad(), spec(3, 4))


def test_data_dependent_if_is_a_clear_type_error():
    def f(x):
        if x.sum() > 0:
            return x
        return -x
    line = inspect.getsourcelines(f)[1] + 1
    with pytest.raises(TypeError, match=rf"{HERE}:{line}: .*no truth value.*F\.where"):
        fe.trace(f, spec(3))


@pytest.mark.parametrize("use", [float, int, lambda t: t.item(), lambda t: t.numpy(),
                                 lambda t: np.asarray(t), lambda t: [0, 1][t]])
def test_reading_data_while_tracing_is_a_clear_type_error(use):
    with pytest.raises(TypeError, match="while tracing"):
        fe.trace(lambda t: use(t.sum()), spec(2, dtype="int64"))


@pytest.mark.parametrize("args,err,pattern", [
    ((np.zeros((2, 3), np.float32),), TypeError, r"takes 2 inputs \(x, y\), got 1"),
    ((np.zeros((2, 3), np.float32), np.zeros(3, np.float32), np.zeros(3, np.float32)),
     TypeError, "takes 2 inputs"),
    ((np.zeros((2, 4), np.float32), np.zeros(3, np.float32)), ValueError,
     r"argument %x has shape \(2, 4\), expected \(2, 3\)"),
    ((np.zeros((2, 3), np.float32), np.zeros((1, 3), np.float32)), ValueError,
     r"argument %y has shape \(1, 3\), expected \(3,\)"),
    ((np.zeros((2, 3), np.float64), np.zeros(3, np.float32)), TypeError,
     r"argument %x has dtype float64, expected float32"),
    ((np.zeros((2, 3), np.float32), [0.0, 1.0, 2.0]), TypeError,
     r"argument %y must be a numpy array of type f32\[3\], got list"),
    ((np.zeros((2, 3), np.float32), None), TypeError, r"argument %y .* got NoneType"),
])
def test_bad_inputs_to_a_compiled_function(args, err, pattern):
    run = fe.compile(lambda x, y: x * y, spec(2, 3), spec(3))
    with pytest.raises(err, match=pattern):
        run(*args)


def test_compiled_function_accepts_python_scalars_for_rank_zero_inputs():
    run = fe.compile(lambda x, s: x * s, spec(2), spec())
    np.testing.assert_allclose(run(np.ones(2, np.float32), 2.5), [2.5, 2.5])


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match=r"unknown backend 'tpu'"):
        fe.compile(lambda x: x, spec(2), backend="tpu")


def test_functional_outside_a_trace_runs_eagerly():
    y = F.relu(np.array([-1.0, 0.5, 2.0], np.float32))
    np.testing.assert_array_equal(y.numpy(), [0.0, 0.5, 2.0])


def test_error_location_points_at_this_file_not_the_library():
    g = fe.trace(lambda x: F.cross_entropy(x, x.argmax(1)), spec(4, 3))
    assert all(re.fullmatch(rf"{HERE}:\d+", n.loc) for n in g.nodes)


def test_loss_modules_and_torch_constructor_arguments():
    """nn.ReLU(inplace=True), Sequential(OrderedDict), CrossEntropyLoss/NLLLoss(ignore_index)."""
    from collections import OrderedDict
    fe.manual_seed(5)
    model = nn.Sequential(OrderedDict([("fc", nn.Linear(4, 3)), ("act", nn.ReLU(inplace=True))]))
    assert [n for n, _ in model.named_parameters()] == ["fc.weight", "fc.bias"]
    x, t = data(5, 4), np.array([0, 2, -1, 1, 2])
    tm = torch.nn.Linear(4, 3)
    with torch.no_grad():
        tm.weight.copy_(torch.from_numpy(model.fc.weight.data))
        tm.bias.copy_(torch.from_numpy(model.fc.bias.data))
    logits = torch.relu(tm(torch.from_numpy(x)))
    for reduction in ("mean", "sum", "none"):
        ours = fe.compile(lambda a, b: nn.CrossEntropyLoss(reduction, ignore_index=-1)(
            model(a), b), spec(5, 4), spec(5, dtype="int64"))(x, t)
        want = torch.nn.CrossEntropyLoss(reduction=reduction, ignore_index=-1)(
            logits, torch.from_numpy(t))
        np.testing.assert_allclose(ours, want.detach().numpy(), rtol=1e-5, atol=1e-6)
    t2 = np.array([0, 2, 1, 1, 2])
    ours = fe.compile(lambda a, b: nn.NLLLoss(ignore_index=2)(F.log_softmax(model(a), 1), b),
                      spec(5, 4), spec(5, dtype="int64"))(x, t2)
    want = torch.nn.NLLLoss(ignore_index=2)(torch.log_softmax(
        torch.relu(tm(torch.from_numpy(x))), 1), torch.from_numpy(t2))
    np.testing.assert_allclose(ours, want.detach().numpy(), rtol=1e-5)


def test_numpy_matmul_on_the_left_defers_to_the_tensor():
    m = np.arange(6, dtype=np.float32).reshape(2, 3)
    x = data(3, 4)
    np.testing.assert_allclose(fe.compile(lambda t: m @ t, spec(3, 4))(x), m @ x, rtol=1e-6)


def test_run_time_kernel_error_names_the_users_line():
    from irgraph.interpreter import ExecutionError

    def f(logits, target):
        return F.cross_entropy(logits, target)
    line = inspect.getsourcelines(f)[1] + 1
    run = fe.compile(f, spec(2, 3), spec(2, dtype="int64"))
    with pytest.raises(ExecutionError, match=rf"nll_loss.*{HERE}:{line}.*outside \[0, 3\)"):
        run(data(2, 3), np.array([0, 7]))


def test_var_std_logsumexp_match_torch():
    def f(t):
        mod = torch if isinstance(t, torch.Tensor) else F
        return (t.var(1), t.std(), t.std(dim=(0, 2), keepdim=True), mod.var(t, 0, correction=0),
                t.logsumexp(1), mod.logsumexp(t, (0, -1), keepdim=True), t.logsumexp(-1))
    same_as_torch(f, data(2, 3, 4, seed=11))
    big = np.array([[1000.0, 999.0], [-1000.0, -1e30]], np.float32)
    same_as_torch(lambda t: t.logsumexp(1), big)


def test_item_assignment_matches_torch():
    def f(t, row):
        t = t.clone()
        t[1:3, 0] = 5
        t[0] = t[1] * 2
        t[..., -1] += 1
        t[2, 1:] = row
        t[-1, :, None if False else 0] = -1.5
        t[3:3] = 100.0                    # an empty region: no change
        return t, t.sum()
    same_as_torch(f, data(4, 3, 2), data(2, 2, seed=3))


def test_item_assignment_with_steps_matches_torch_and_numpy():
    """Slices of any positive step (torch) and negative steps (numpy: the reversed values at
    the ascending positions), on every CPU backend, and the gradients through both the
    tensor and the assigned values (torch.autograd)."""
    def f(t, row, col):
        t = t.clone()
        t[1:8:3] = 5
        t[::2, 1] = row
        t[2, ::4] = col * 3
        t[1:10:3, 2:] += 1
        return t, (t * t).sum()
    same_as_torch(f, data(10, 4), data(5, seed=3), data(1, seed=4))
    x, row, col = data(10, 4), data(5, seed=3), data(1, seed=4)
    g = fe.grad(lambda t, r, c: f(t, r, c)[1], spec(10, 4), spec(5), spec(1), wrt=[0, 1, 2])
    ts = [torch.tensor(a, requires_grad=True) for a in (x, row, col)]
    f(*ts)[1].backward()
    for got, t in zip(g(x, row, col), ts):
        np.testing.assert_allclose(got, t.grad.numpy(), rtol=1e-5, atol=1e-6)

    def reversed_steps(t, v):
        t[..., ::-2] = v
        t[7:2:-2, 0] = -1.0
        return t
    x, v = data(10, 5), data(10, 3, seed=5)
    want = x.copy()
    want[..., ::-2] = v
    want[7:2:-2, 0] = -1.0
    for backend in ("reference", "llvm"):
        got = fe.compile(reversed_steps, spec(10, 5), spec(10, 3), backend=backend)(x, v)
        np.testing.assert_array_equal(got, want)


def test_item_assignment_is_functional_and_checks_its_index():
    def f(x):
        before = x[0]
        x[0] = 9.0
        return before, x
    before, after = fe.compile(f, spec(2, 2))(np.zeros((2, 2), np.float32))
    np.testing.assert_array_equal(before, [0, 0])
    np.testing.assert_array_equal(after, [[9, 9], [0, 0]])

    def bad_shape(x):
        x[0] = np.ones(3, np.float32)
        return x
    with pytest.raises(IRError, match=rf"{HERE}:\d+: op 'broadcast_to'"):
        fe.trace(bad_shape, spec(2, 2))
