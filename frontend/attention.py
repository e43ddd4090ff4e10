"""``nn.MultiheadAttention``, the encoder and decoder layers and stacks and ``nn.Transformer``
with torch's parameter names, layouts, initialization and arguments (docs/layers.md). The
attention itself is ``functional_norm.attend``, shared with
``F.scaled_dot_product_attention``."""
from __future__ import annotations

import copy
import math

import numpy as np

from . import functional as F
from .functional_norm import attend
from .layers_norm import LayerNorm
from .layers import Dropout
from .layers_basic import Linear
from .module import Module, ModuleList, Parameter
from .random import rng

__all__ = ["MultiheadAttention", "TransformerEncoderLayer", "TransformerEncoder",
           "TransformerDecoderLayer", "TransformerDecoder", "Transformer",
           "NonDynamicallyQuantizableLinear"]


class NonDynamicallyQuantizableLinear(Linear):
    """The class torch gives ``MultiheadAttention.out_proj`` (a plain Linear)."""


def _xavier(shape) -> Parameter:
    fan_out, fan_in = shape
    a = math.sqrt(6.0 / (fan_in + fan_out))
    return Parameter(rng().uniform(-a, a, shape).astype(np.float32))


def _additive(mask, like, name: str):
    """A torch attention mask as (bool keep-mask or None, float additive mask or None):
    bool True means "do not attend" here (the opposite of F.scaled_dot_product_attention)."""
    if mask is None:
        return None, None
    m = F.as_tensor(mask, like)
    if m.dtype == "bool":
        return F.eq(m, False), None
    if not m.type.is_float:
        raise TypeError(f"MultiheadAttention: {name} must be bool or float, got {m.type}")
    return None, F.cast(m, like.dtype)


def _attend_appended(mask, value, extra: int):
    """A mask (..., S) widened to (..., S + extra) by ``value`` columns (attend)."""
    if mask is None:
        return None
    fill = np.full((*mask.shape[:-1], extra), value, mask.type.np_dtype)
    return F.cat([mask, F.as_tensor(fill, mask)], -1)


class MultiheadAttention(Module):
    """``torch.nn.MultiheadAttention``: ``in_proj_weight`` (3E, E) and ``in_proj_bias`` (3E)
    packed as q, k, v (separate ``q/k/v_proj_weight`` when kdim or vdim differ from E),
    ``out_proj`` a Linear; xavier-uniform projections, zero biases. forward(query, key,
    value, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal)
    returns (output, weights or None); (L, N, E) layout unless ``batch_first``, unbatched
    (L, E) accepted. ``add_bias_kv``: learned ``bias_k``/``bias_v`` (1, 1, E) appended to
    the projected keys and values; ``add_zero_attn``: a key and value of zeros appended
    to every head; either adds a key every query attends (its mask columns unmasked)."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, kdim=None, vdim=None,
                 batch_first: bool = False):
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0 or embed_dim % num_heads:
            raise ValueError(f"MultiheadAttention: embed_dim ({embed_dim}) must be divisible "
                             f"by num_heads ({num_heads})")
        self.embed_dim, self.num_heads, self.dropout = embed_dim, num_heads, float(dropout)
        self.kdim = embed_dim if kdim is None else kdim
        self.vdim = embed_dim if vdim is None else vdim
        self.batch_first, self.head_dim = batch_first, embed_dim // num_heads
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        e = embed_dim
        if self._qkv_same_embed_dim:
            self.in_proj_weight = _xavier((3 * e, e))
        else:
            self.q_proj_weight = _xavier((e, e))
            self.k_proj_weight = _xavier((e, self.kdim))
            self.v_proj_weight = _xavier((e, self.vdim))
        if bias:
            self.in_proj_bias = Parameter(np.zeros(3 * e, np.float32))
        self.out_proj = NonDynamicallyQuantizableLinear(e, e, bias=bias)
        if bias:
            self.out_proj.bias.data[...] = 0
        if add_bias_kv:         # xavier-normal over (1, 1, E): fan in = fan out = E
            self.bias_k, self.bias_v = (
                Parameter(rng().normal(0.0, math.sqrt(1.0 / e), (1, 1, e)).astype(np.float32))
                for _ in range(2))
        else:
            self.bias_k = self.bias_v = None
        self.add_zero_attn = bool(add_zero_attn)

    def _bias(self, i: int):
        b = self._parameters.get("in_proj_bias")
        e = self.embed_dim
        return None if b is None else b[i * e:(i + 1) * e]

    def _project(self, query, key, value):
        e = self.embed_dim
        if self._qkv_same_embed_dim:
            w = self.in_proj_weight
            if query is key and key is value:              # self-attention: one GEMM
                b = self._parameters.get("in_proj_bias")
                qkv = F.linear(query, w, b)
                return qkv[..., :e], qkv[..., e:2 * e], qkv[..., 2 * e:]
            ws = [w[i * e:(i + 1) * e] for i in range(3)]
        else:
            ws = [self.q_proj_weight, self.k_proj_weight, self.v_proj_weight]
        return tuple(F.linear(x, ws[i], self._bias(i)) for i, x in
                     enumerate((query, key, value)))

    def forward(self, query, key, value, key_padding_mask=None, need_weights: bool = True,
                attn_mask=None, average_attn_weights: bool = True, is_causal: bool = False):
        query, key, value = (F.as_tensor(t) for t in (query, key, value))
        if is_causal and attn_mask is None:
            raise ValueError("MultiheadAttention: is_causal is a hint that attn_mask is the "
                             "causal mask; give attn_mask too")
        unbatched = query.ndim == 2
        if query.ndim not in (2, 3) or key.ndim != query.ndim or value.ndim != query.ndim:
            raise ValueError(f"MultiheadAttention: query, key and value must be all 3-D or "
                             f"all 2-D (unbatched), got {list(query.shape)}, "
                             f"{list(key.shape)}, {list(value.shape)}")
        if unbatched:
            query, key, value = (F.unsqueeze(t, 0) for t in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = F.unsqueeze(F.as_tensor(key_padding_mask, query), 0)
        elif not self.batch_first:
            same_kv = key is value
            same_qk = query is key
            query = F.transpose(query, 0, 1)
            key = query if same_qk else F.transpose(key, 0, 1)
            value = key if same_kv else F.transpose(value, 0, 1)
        n, l, e = query.shape
        s = key.shape[1]
        if e != self.embed_dim or key.shape[2] != self.kdim or value.shape[2] != self.vdim:
            raise ValueError(f"MultiheadAttention(embed_dim={self.embed_dim}, kdim={self.kdim}, "
                             f"vdim={self.vdim}) got query, key, value with feature sizes "
                             f"{e}, {key.shape[2]}, {value.shape[2]}")
        if key.shape[:2] != value.shape[:2] or key.shape[0] != n:
            raise ValueError(f"MultiheadAttention: key {list(key.shape)} and value "
                             f"{list(value.shape)} must share batch and length with the "
                             f"query's batch {n}")
        q, k, v = self._project(query, key, value)
        h, d = self.num_heads, self.head_dim
        extra = 0
        if self.bias_k is not None:
            k, v = (F.cat([t, F.broadcast_to(F.cast(b, t.dtype), (n, 1, e))], 1)
                    for t, b in ((k, self.bias_k), (v, self.bias_v)))
            extra = 1

        def heads(t, length):
            return F.transpose(F.reshape(t, (n, length, h, d)), 1, 2)    # (N, H, len, D)
        q, k, v = heads(q, l), heads(k, s + extra), heads(v, s + extra)
        if self.add_zero_attn:
            zero = F.zeros((n, h, 1, d), dtype=q.dtype)
            k, v = F.cat([k, zero], 2), F.cat([v, zero], 2)
            extra += 1
        keep, additive = _additive(attn_mask, q, "attn_mask")
        if attn_mask is not None:
            shape = tuple((keep if keep is not None else additive).shape)
            if shape == (n * h, l, s):
                keep, additive = (None if t is None else F.reshape(t, (n, h, l, s))
                                  for t in (keep, additive))
            elif shape != (l, s):
                raise ValueError(f"MultiheadAttention: attn_mask must be ({l}, {s}) or "
                                 f"({n * h}, {l}, {s}), got {list(shape)}")
        if key_padding_mask is not None:
            kk, ka = _additive(key_padding_mask, q, "key_padding_mask")
            m = kk if kk is not None else ka
            if tuple(m.shape) != (n, s):
                raise ValueError(f"MultiheadAttention: key_padding_mask must be ({n}, {s}), "
                                 f"got {list(m.shape)}")
            m = F.reshape(m, (n, 1, 1, s))
            if kk is not None:
                keep = m if keep is None else F.logical_and(keep, m)
            else:
                additive = m if additive is None else F.add(additive, m)
        if extra:       # the appended keys: attended by every query
            keep, additive = _attend_appended(keep, True, extra), _attend_appended(
                additive, 0.0, extra)
        p = self.dropout if self.training else 0.0
        out, attn = attend(q, k, v, None, keep, additive, p)
        out = F.reshape(F.transpose(out, 1, 2), (n, l, e))
        out = self.out_proj(out)
        if unbatched:
            out = F.squeeze(out, 0)
        elif not self.batch_first:
            out = F.transpose(out, 0, 1)
        if not need_weights:
            return out, None
        if average_attn_weights:
            attn = F.mean(attn, 1)
        return out, F.squeeze(attn, 0) if unbatched else attn


_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


def _feed_forward_and_norms(layer: Module, blocks: int, d_model: int, dim_feedforward: int,
                            dropout: float, activation, eps: float, norm_first: bool,
                            bias: bool) -> None:
    """An encoder or decoder layer's feed-forward block and, for each of its ``blocks``
    residual blocks, a layer norm and a dropout, registered in torch's order (the
    state_dict's)."""
    layer.linear1 = Linear(d_model, dim_feedforward, bias=bias)
    layer.dropout = Dropout(dropout)
    layer.linear2 = Linear(dim_feedforward, d_model, bias=bias)
    layer.norm_first = norm_first
    for k in range(1, blocks + 1):
        setattr(layer, f"norm{k}", LayerNorm(d_model, eps=eps, bias=bias))
    for k in range(1, blocks + 1):
        setattr(layer, f"dropout{k}", Dropout(dropout))
    layer.activation = _activation(activation)


class _TransformerLayer(Module):
    """What the encoder and decoder layers share: the self-attention block and the
    feed-forward block (its dropout the layer's last)."""
    blocks = 2

    def _sa(self, x, attn_mask, key_padding_mask, is_causal):
        y = self.self_attn(x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                           need_weights=False, is_causal=is_causal)[0]
        return self.dropout1(y)

    def _ff(self, x):
        last = getattr(self, f"dropout{self.blocks}")
        return last(self.linear2(self.dropout(self.activation(self.linear1(x)))))


class TransformerEncoderLayer(_TransformerLayer):
    """``torch.nn.TransformerEncoderLayer``: self-attention and a feed-forward block, each
    with dropout, a residual connection and layer norm, after (``norm_first=False``) or
    before; ``activation`` "relu", "gelu" or a callable (a Module is registered)."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048,
                 dropout: float = 0.1, activation="relu", layer_norm_eps: float = 1e-5,
                 batch_first: bool = False, norm_first: bool = False, bias: bool = True):
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias,
                                            batch_first=batch_first)
        _feed_forward_and_norms(self, self.blocks, d_model, dim_feedforward, dropout,
                                activation, layer_norm_eps, norm_first, bias)

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal: bool = False):
        x = F.as_tensor(src)
        if self.norm_first:
            x = x + self._sa(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            return x + self._ff(self.norm2(x))
        x = self.norm1(x + self._sa(x, src_mask, src_key_padding_mask, is_causal))
        return self.norm2(x + self._ff(x))


class TransformerEncoder(Module):
    """``torch.nn.TransformerEncoder``: ``num_layers`` copies of ``encoder_layer`` (each
    with its own weights, starting equal, as torch's deep copies), then ``norm``."""

    def __init__(self, encoder_layer: TransformerEncoderLayer, num_layers: int, norm=None,
                 enable_nested_tensor: bool = True, mask_check: bool = True):
        super().__init__()
        self.layers = ModuleList([copy.deepcopy(encoder_layer) for _ in range(num_layers)])
        self.num_layers = num_layers
        self.norm = norm

    def forward(self, src, mask=None, src_key_padding_mask=None, is_causal=None):
        x = src
        for layer in self.layers:
            x = layer(x, src_mask=mask, src_key_padding_mask=src_key_padding_mask,
                      is_causal=bool(is_causal))
        return x if self.norm is None else self.norm(x)


def _activation(activation):
    if isinstance(activation, str):
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation should be relu/gelu, not {activation}")
        return _ACTIVATIONS[activation]
    return activation


class TransformerDecoderLayer(_TransformerLayer):
    """``torch.nn.TransformerDecoderLayer``: self-attention over the target, attention from
    the target to the encoder's ``memory``, and a feed-forward block, each with dropout, a
    residual connection and layer norm, after (``norm_first=False``) or before."""
    blocks = 3

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048,
                 dropout: float = 0.1, activation="relu", layer_norm_eps: float = 1e-5,
                 batch_first: bool = False, norm_first: bool = False, bias: bool = True):
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias,
                                            batch_first=batch_first)
        self.multihead_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias,
                                                 batch_first=batch_first)
        _feed_forward_and_norms(self, self.blocks, d_model, dim_feedforward, dropout,
                                activation, layer_norm_eps, norm_first, bias)

    def _mha(self, x, memory, attn_mask, key_padding_mask, is_causal):
        y = self.multihead_attn(x, memory, memory, attn_mask=attn_mask,
                                key_padding_mask=key_padding_mask, need_weights=False,
                                is_causal=is_causal)[0]
        return self.dropout2(y)

    def forward(self, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None, tgt_is_causal: bool = False,
                memory_is_causal: bool = False):
        x, memory = F.as_tensor(tgt), F.as_tensor(memory)
        if self.norm_first:
            x = x + self._sa(self.norm1(x), tgt_mask, tgt_key_padding_mask, tgt_is_causal)
            x = x + self._mha(self.norm2(x), memory, memory_mask, memory_key_padding_mask,
                              memory_is_causal)
            return x + self._ff(self.norm3(x))
        x = self.norm1(x + self._sa(x, tgt_mask, tgt_key_padding_mask, tgt_is_causal))
        x = self.norm2(x + self._mha(x, memory, memory_mask, memory_key_padding_mask,
                                     memory_is_causal))
        return self.norm3(x + self._ff(x))


class TransformerDecoder(Module):
    """``torch.nn.TransformerDecoder``: ``num_layers`` copies of ``decoder_layer`` (deep
    copies, as torch's), each attending to the same ``memory``, then ``norm``."""

    def __init__(self, decoder_layer: TransformerDecoderLayer, num_layers: int, norm=None):
        super().__init__()
        self.layers = ModuleList([copy.deepcopy(decoder_layer) for _ in range(num_layers)])
        self.num_layers = num_layers
        self.norm = norm

    def forward(self, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None, tgt_is_causal=None,
                memory_is_causal: bool = False):
        x = tgt
        for layer in self.layers:
            x = layer(x, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                      tgt_key_padding_mask=tgt_key_padding_mask,
                      memory_key_padding_mask=memory_key_padding_mask,
                      tgt_is_causal=bool(tgt_is_causal) and tgt_mask is not None,
                      memory_is_causal=memory_is_causal)
        return x if self.norm is None else self.norm(x)


class Transformer(Module):
    """``torch.nn.Transformer``: an encoder (``num_encoder_layers`` layers and a final layer
    norm) over ``src`` and a decoder (``num_decoder_layers`` and a final norm) over ``tgt``
    attending to the encoder's output; every weight matrix xavier-uniform, as torch's
    ``_reset_parameters``. ``custom_encoder``/``custom_decoder`` replace either."""

    def __init__(self, d_model: int = 512, nhead: int = 8, num_encoder_layers: int = 6,
                 num_decoder_layers: int = 6, dim_feedforward: int = 2048,
                 dropout: float = 0.1, activation="relu", custom_encoder=None,
                 custom_decoder=None, layer_norm_eps: float = 1e-5, batch_first: bool = False,
                 norm_first: bool = False, bias: bool = True):
        super().__init__()
        args = (d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps,
                batch_first, norm_first, bias)

        def stack(custom, kind, layer, n):
            return custom if custom is not None else kind(
                layer(*args), n, LayerNorm(d_model, eps=layer_norm_eps, bias=bias))
        self.encoder = stack(custom_encoder, TransformerEncoder, TransformerEncoderLayer,
                             num_encoder_layers)
        self.decoder = stack(custom_decoder, TransformerDecoder, TransformerDecoderLayer,
                             num_decoder_layers)
        for p in self.parameters():
            if p.data.ndim > 1:
                fan_out, fan_in = p.data.shape[0], int(np.prod(p.data.shape[1:]))
                a = math.sqrt(6.0 / (fan_in + fan_out))
                p.data = rng().uniform(-a, a, p.data.shape).astype(p.data.dtype)
        self.d_model, self.nhead, self.batch_first = d_model, nhead, batch_first

    def forward(self, src, tgt, src_mask=None, tgt_mask=None, memory_mask=None,
                src_key_padding_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None, src_is_causal=None, tgt_is_causal=None,
                memory_is_causal: bool = False):
        src, tgt = F.as_tensor(src), F.as_tensor(tgt)
        batch = 0 if self.batch_first else 1
        if src.ndim == 3 and (tgt.ndim != 3 or src.shape[batch] != tgt.shape[batch]):
            raise ValueError(f"Transformer: the batch number of src {list(src.shape)} and tgt "
                             f"{list(tgt.shape)} must be equal")
        if src.shape[-1] != self.d_model or tgt.shape[-1] != self.d_model:
            raise ValueError(f"Transformer: the feature number of src {list(src.shape)} and "
                             f"tgt {list(tgt.shape)} must be equal to d_model {self.d_model}")
        memory = self.encoder(src, mask=src_mask, src_key_padding_mask=src_key_padding_mask,
                              is_causal=src_is_causal)
        return self.decoder(tgt, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                            tgt_key_padding_mask=tgt_key_padding_mask,
                            memory_key_padding_mask=memory_key_padding_mask,
                            tgt_is_causal=tgt_is_causal, memory_is_causal=memory_is_causal)

    @staticmethod
    def generate_square_subsequent_mask(sz: int, dtype=np.float32) -> np.ndarray:
        """torch's causal float mask: 0 on and below the diagonal, -inf above."""
        return np.triu(np.full((sz, sz), -np.inf, dtype=dtype), 1)
