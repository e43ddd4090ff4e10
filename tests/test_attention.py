"""Attention against torch: F.scaled_dot_product_attention (causal, bool and float masks,
scale), nn.MultiheadAttention (packed and separate projections, batch_first, unbatched,
key_padding_mask, attn_mask, need_weights / average_attn_weights) and
nn.TransformerEncoderLayer / TransformerEncoder (relu/gelu, norm_first both ways) on seeded
configurations: values and gradients of one graph per backend and dtype."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import irgraph.frontend as fe
from irgraph.frontend import F, nn

from _torch_twins import check, check_function


def random_config(seed: int) -> dict:
    r = np.random.default_rng(seed)
    b = lambda: bool(r.integers(2))                          # noqa: E731
    return dict(seed=seed, batch_first=b(), norm_first=b(), act=["relu", "gelu"][r.integers(2)],
                mask=["bool", "float", "none"][r.integers(3)], padding=b(), bias=b(),
                heads=int(r.choice([1, 2, 4])), weights_avg=b(), kvdim=b())


SEEDS = [0, 1, 2, 33]
# torch warns that a bool key_padding_mask beside a float attn_mask is deprecated; both work
pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")


def test_the_seeded_configurations_cover_every_option():
    cfgs = [random_config(s) for s in SEEDS]
    for key in ("batch_first", "norm_first", "padding", "bias", "weights_avg", "kvdim"):
        assert {c[key] for c in cfgs} == {False, True}, key
    assert {c["act"] for c in cfgs} == {"relu", "gelu"}
    assert {c["mask"] for c in cfgs} == {"bool", "float", "none"}


E, L, S, N, FF = 8, 5, 6, 3, 12


def build(nnm, cfg):
    """The same zoo from ``fe.nn`` or ``torch.nn``."""
    kd = 5 if cfg["kvdim"] else None

    class Zoo(nnm.Module):
        def __init__(self):
            super().__init__()
            self.mha = nnm.MultiheadAttention(E, cfg["heads"], bias=cfg["bias"],
                                              batch_first=cfg["batch_first"], kdim=kd, vdim=kd)
            self.enc = nnm.TransformerEncoder(nnm.TransformerEncoderLayer(
                E, 2, FF, dropout=0.0, activation=cfg["act"], batch_first=cfg["batch_first"],
                norm_first=cfg["norm_first"], bias=cfg["bias"]), 1 if cfg.get("small") else 2,
                enable_nested_tensor=False)

        def forward(self, q, kv, src, attn_mask, pad):
            kw = {}
            if cfg["mask"] != "none":
                kw["attn_mask"] = attn_mask
            if cfg["padding"]:
                kw["key_padding_mask"] = pad
            out, w = self.mha(q, kv, kv, average_attn_weights=cfg["weights_avg"], **kw)
            enc = self.enc(src, mask=kw.get("attn_mask") if cfg["mask"] != "none" and
                           attn_mask.shape == (L, L) else None)
            return out, w, enc
    return Zoo()


def zoo_inputs(cfg):
    r = np.random.default_rng(100 + cfg["seed"])
    kd = 5 if cfg["kvdim"] else E
    bf = cfg["batch_first"]
    q = r.standard_normal((N, L, E) if bf else (L, N, E))
    kv = r.standard_normal((N, S, kd) if bf else (S, N, kd))
    src = r.standard_normal((N, L, E) if bf else (L, N, E))
    if cfg["mask"] == "bool":
        mask = r.random((L, S)) < 0.3
        mask[:, 0] = False                                    # no row fully masked
    else:
        mask = r.standard_normal((L, S))
    pad = r.random((N, S)) < 0.3
    pad[:, 1] = False
    return [q, kv, src, mask, pad]


def zoo(cfg):
    fe.manual_seed(cfg["seed"])
    ours = build(nn, cfg)
    r = np.random.default_rng(7 + cfg["seed"])
    for p in ours.parameters():
        p.data = (p.data + r.standard_normal(p.data.shape) * 0.2).astype(np.float32)
    return ours, build(torch.nn, cfg), zoo_inputs(cfg)


@pytest.mark.parametrize("seed", SEEDS)
def test_attention_layers_match_torch_float64_reference(seed):
    ours, twin, inputs = zoo(random_config(seed))
    check(ours, twin, inputs, "reference", np.float64, rtol=1e-9, atol=1e-10, grad_inputs=3)


def test_attention_layers_match_torch_float64_llvm():
    """One encoder layer where compiling dominates (the stack is the same layer twice)."""
    ours, twin, inputs = zoo(dict(random_config(1), small=True))
    check(ours, twin, inputs, "llvm", np.float64, rtol=1e-9, atol=1e-10, grad_inputs=3)


@pytest.mark.parametrize("backend", ["reference", "llvm", "triton"])
def test_attention_layers_match_torch_float32_every_backend(backend):
    cfg = random_config(33)
    ours, twin, inputs = zoo(dict(cfg, small=True) if backend == "llvm" else cfg)
    check(ours, twin, inputs, backend, np.float32, rtol=2e-4, atol=3e-5, grad_inputs=3)


@pytest.mark.parametrize("kind", ["causal", "bool", "float", "scale"])
def test_sdpa_matches_torch(kind):
    """(N, H, L, E) with a causal mask, a broadcast bool mask, a float mask, a given scale."""
    r = np.random.default_rng(11)
    q, k, v = (r.standard_normal(s) for s in ((2, 3, 4, 5), (2, 3, 6, 5), (2, 3, 6, 7)))
    bmask = r.random((4, 6)) < 0.6
    bmask[:, 0] = True
    kw = {"causal": dict(is_causal=True), "bool": dict(attn_mask=bmask),
          "float": dict(attn_mask=r.standard_normal((3, 4, 6))), "scale": dict(scale=0.3)}[kind]

    def fn(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, **kw)
    specs = [fe.TensorSpec(a.shape, "float64") for a in (q, k, v)]
    got = fe.compile(fn, *specs, backend="reference")(q, k, v)
    tkw = {n: torch.from_numpy(a) if isinstance(a, np.ndarray) else a for n, a in kw.items()}
    want = torch.nn.functional.scaled_dot_product_attention(
        *(torch.from_numpy(a) for a in (q, k, v)), **tkw)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-10, atol=1e-12)


def test_sdpa_dropout_draws_and_keeps_the_expectation():
    """dropout_p > 0 zeroes attention weights with F.dropout (scaled by 1 / (1 - p)): with
    v = ones the output rows are sums of kept weights, whose mean over many rows is 1."""
    q = np.random.default_rng(0).standard_normal((64, 8, 4)).astype(np.float32)
    v = np.ones((64, 8, 4), np.float32)
    fe.manual_seed(3)
    f = fe.compile(lambda q, v: F.scaled_dot_product_attention(q, q, v, dropout_p=0.5),
                   fe.TensorSpec(q.shape), fe.TensorSpec(v.shape), backend="reference")
    a, b = f(q, v), f(q, v)
    assert not np.array_equal(a, b)                           # fresh draws per call
    assert abs(float(a.mean()) - 1.0) < 0.1
    assert float(a.std()) > 0.1                               # weights were dropped


def test_bad_masks_and_shapes_name_what_is_wrong():
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    spec = fe.TensorSpec((2, 3, 8))
    with pytest.raises(ValueError, match=r"attn_mask must be \(3, 3\) or \(4, 3, 3\)"):
        fe.trace(lambda x, m: mha(x, x, x, attn_mask=m)[0], spec,
                 fe.TensorSpec((2, 3), "bool"))
    with pytest.raises(ValueError, match=r"key_padding_mask must be \(2, 3\)"):
        fe.trace(lambda x, m: mha(x, x, x, key_padding_mask=m)[0], spec,
                 fe.TensorSpec((3, 2), "bool"))
    with pytest.raises(ValueError, match="embed_dim \\(9\\) must be divisible by num_heads"):
        nn.MultiheadAttention(9, 2)
    with pytest.raises(ValueError, match="attn_mask or is_causal, not both"):
        fe.trace(lambda x: F.scaled_dot_product_attention(x, x, x, attn_mask=np.ones((3, 3), bool),
                                                          is_causal=True), spec)


@pytest.mark.parametrize("backend", ["reference", "llvm"])
def test_attention_over_heads_of_a_transposed_tensor_as_torch(backend):
    """SDPA on (N, L, H, D) transposed to heads first (MultiheadAttention's layout), N * H
    16 and more: the LLVM step once hung in its softmax here (a vectorizer width forced on
    rows of 6)."""
    x = np.random.default_rng(0).standard_normal((4, 6, 4, 2))

    def f(a):
        q = F.transpose(a, 1, 2)
        return F.scaled_dot_product_attention(q, q, q)
    got = fe.compile(f, fe.TensorSpec(x.shape, "float64"), backend=backend)(x)
    tq = torch.from_numpy(x).transpose(1, 2)
    want = torch.nn.functional.scaled_dot_product_attention(tq, tq, tq).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    fe.manual_seed(0)
    mha = nn.MultiheadAttention(8, 4, batch_first=True).double()
    twin = torch.nn.MultiheadAttention(8, 4, batch_first=True).double()
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in mha.state_dict().items()})
    y = np.random.default_rng(1).standard_normal((4, 6, 8))
    got = fe.compile(lambda a: mha(a, a, a, need_weights=False)[0],
                     fe.TensorSpec(y.shape, "float64"), backend=backend)(y)
    t = torch.from_numpy(y)
    want = twin(t, t, t, need_weights=False)[0].detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


class _Call(nn.Module):
    """A module called with fixed keyword arguments (one twin class per framework)."""

    def __init__(self, m, names, kw):
        super().__init__()
        self.m, self.names, self.kw = m, names, kw

    def forward(self, *xs):
        return self.m(*xs[:2], **dict(zip(self.names, xs[2:])), **self.kw)


class _TorchCall(torch.nn.Module):
    def __init__(self, m, names, kw):
        super().__init__()
        self.m, self.names, self.kw = m, names, kw

    def forward(self, *xs):
        return self.m(*xs[:2], **dict(zip(self.names, xs[2:])), **self.kw)


def _perturbed(ours, seed):
    r = np.random.default_rng(seed)
    for p in ours.parameters():
        p.data = (p.data + r.standard_normal(p.data.shape) * 0.2).astype(np.float32)


def transformer_case(batch_first: bool, norm_first: bool, act: str = "relu"):
    """nn.Transformer (2 encoder and 2 decoder layers) with a causal target mask, a padded
    source (src and memory key padding) and a padded target."""
    fe.manual_seed(5)
    kw = dict(dropout=0.0, batch_first=batch_first, norm_first=norm_first, activation=act)
    ours = nn.Transformer(E, 2, 2, 2, FF, **kw)
    twin = torch.nn.Transformer(E, 2, 2, 2, FF, **kw)
    _perturbed(ours, 1)
    r = np.random.default_rng(3)
    src = r.standard_normal((N, S, E) if batch_first else (S, N, E))
    tgt = r.standard_normal((N, L, E) if batch_first else (L, N, E))
    causal = nn.Transformer.generate_square_subsequent_mask(L)
    spad = r.random((N, S)) < 0.3
    spad[:, 0] = False
    tpad = r.random((N, L)) < 0.2
    tpad[:, 0] = False
    names = ["tgt_mask", "src_key_padding_mask", "memory_key_padding_mask",
             "tgt_key_padding_mask"]
    return (_Call(ours, names, {}), _TorchCall(twin, names, {}),
            [src, tgt, causal, spad, spad, tpad])


@pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")
@pytest.mark.parametrize("batch_first,norm_first,act",
                         [(False, False, "relu"), (True, True, "gelu")])
def test_transformer_matches_torch_float64_reference(batch_first, norm_first, act):
    """Encoder, decoder (self-attention, attention to memory, feed-forward) and their final
    norms: outputs, input and parameter gradients equal torch.nn.Transformer's."""
    ours, twin, inputs = transformer_case(batch_first, norm_first, act)
    check(ours, twin, inputs, "reference", np.float64, rtol=1e-9, atol=1e-10, grad_inputs=2)


@pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")
def test_transformer_matches_torch_float32_llvm():
    ours, twin, inputs = transformer_case(True, False)
    check(ours, twin, inputs, "llvm", np.float32, rtol=2e-4, atol=3e-5, grad_inputs=2)


def test_transformer_decoder_stack_and_layer_match_torch():
    """nn.TransformerDecoder of deep-copied layers with a final norm and a float memory
    mask, and a bare decoder layer (norm_first), against torch's."""
    for norm_first in (False, True):
        fe.manual_seed(2)
        layer = dict(d_model=E, nhead=2, dim_feedforward=FF, dropout=0.0, norm_first=norm_first)
        ours = nn.TransformerDecoder(nn.TransformerDecoderLayer(**layer), 2, nn.LayerNorm(E))
        twin = torch.nn.TransformerDecoder(torch.nn.TransformerDecoderLayer(**layer), 2,
                                           torch.nn.LayerNorm(E))
        _perturbed(ours, 4)
        r = np.random.default_rng(6)
        tgt, mem = r.standard_normal((L, N, E)), r.standard_normal((S, N, E))
        names = ["memory_mask"]
        check(_Call(ours, names, {}), _TorchCall(twin, names, {}),
              [tgt, mem, r.standard_normal((L, S))], "reference", np.float64, rtol=1e-9,
              atol=1e-10, grad_inputs=2)
        fe.manual_seed(2)
        one, one_t = nn.TransformerDecoderLayer(**layer), torch.nn.TransformerDecoderLayer(**layer)
        check(one, one_t, [tgt, mem], "reference", np.float64, rtol=1e-9, atol=1e-10)


@pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")
def test_transformer_initialises_every_matrix_xavier_uniform():
    """torch.nn.Transformer._reset_parameters: xavier-uniform weight matrices, bound
    sqrt(6 / (fan_in + fan_out)); layer norms and biases as their layers make them."""
    fe.manual_seed(0)
    m = nn.Transformer(64, 4, 1, 1, 128)
    for name, p in m.named_parameters():
        a = p.data
        if a.ndim > 1:
            bound = np.sqrt(6.0 / (a.shape[0] + a.shape[1]))
            assert np.abs(a).max() <= bound and np.abs(a).max() > 0.95 * bound, name
            assert abs(a.std() - bound / np.sqrt(3)) < 0.1 * bound, name
    sd, twin = m.state_dict(), torch.nn.Transformer(64, 4, 1, 1, 128).state_dict()
    assert list(sd) == list(twin)
    assert all(tuple(sd[k].shape) == tuple(twin[k].shape) for k in sd)


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")
@pytest.mark.parametrize("bias_kv,zero_attn,mask", [(True, False, "bool"),
                                                    (False, True, "float"),
                                                    (True, True, "bool")])
def test_mha_bias_kv_and_zero_attention_match_torch(bias_kv, zero_attn, mask):
    """add_bias_kv appends learned bias_k/bias_v, add_zero_attn a zero key and value: the
    masks gain columns that every query attends; weights cover them (S + 1 or S + 2)."""
    fe.manual_seed(1)
    kw = dict(add_bias_kv=bias_kv, add_zero_attn=zero_attn, kdim=5, vdim=5)
    ours, twin = nn.MultiheadAttention(E, 2, **kw), torch.nn.MultiheadAttention(E, 2, **kw)
    _perturbed(ours, 2)
    r = np.random.default_rng(8)
    am = r.random((L, S)) < 0.3 if mask == "bool" else r.standard_normal((L, S))
    inputs = [r.standard_normal((L, N, E)), r.standard_normal((S, N, 5)), am,
              r.random((N, S)) < 0.3]

    class Kv(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, q, kv, am, pad):
            return self.m(q, kv, kv, attn_mask=am, key_padding_mask=pad)

    class TorchKv(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, q, kv, am, pad):
            return self.m(q, kv, kv, attn_mask=am, key_padding_mask=pad)
    check(Kv(ours), TorchKv(twin), inputs, "reference", np.float64, rtol=1e-9, atol=1e-10,
          grad_inputs=2)
    if bias_kv and zero_attn:
        twin.zero_grad(set_to_none=True)        # torch accumulated the first check's
        check(Kv(ours), TorchKv(twin), inputs, "llvm", np.float32, rtol=2e-4, atol=3e-5,
              grad_inputs=2)


@pytest.mark.parametrize("backend", ["reference", "llvm"])
def test_sdpa_grouped_query_attention_matches_torch(backend):
    """enable_gqa: 6 query heads over 2 key/value heads (each serving 3 consecutive query
    heads), causal; values and the gradients of q, k, v against torch's."""
    r = np.random.default_rng(12)
    q, k, v = (r.standard_normal(s) for s in ((2, 6, 4, 5), (2, 2, 7, 5), (2, 2, 7, 3)))

    check_function(
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
        lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=True, enable_gqa=True), [q, k, v], (0, 1, 2), backend)
    with pytest.raises(ValueError, match="multiple of"):
        fe.trace(lambda q, k: F.scaled_dot_product_attention(q, k, k, enable_gqa=True),
                 fe.TensorSpec((1, 6, 4, 5), "float32"), fe.TensorSpec((1, 4, 7, 5), "float32"))
