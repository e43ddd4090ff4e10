"""Gated recurrent layers (section 10.10) with torch.nn's interface and meaning.

* ``LSTM`` (eq. 10.40-10.44 in torch's form, gate order i, f, g, o; ``proj_size``: h_t =
  W_hr (o * tanh(c_t)), torch's LSTMP) and ``GRU`` (torch's variant of eq. 10.45-10.47,
  gate order r, z, n): layers, directions, ``batch_first``, ``hx``, ``lengths`` as
  ``nn.RNN`` (``rnn.RNNBase``), through the same ``scan`` and BPTT passes (rolled,
  unrolled, truncated, recompute).
* ``LSTMCell``, ``GRUCell``, ``RNNCell``: one step, as torch's cells.

Each step computes its gates with ONE matmul h W_hh^T (4H or 3H wide) and slices them; the
input side x W_ih^T is one matmul over all steps, outside the loop. The gate equations are
written once (``lstm_update``, ``gru_update``) and shared by the layers and the cells.
"""
from __future__ import annotations

import math

import numpy as np

from . import functional as F
from .init import lstm_forget_bias_
from .module import Module, Parameter
from .random import rng
from .rnn import RNNBase, scan
from .tracing import Tensor

LSTM_GATES = ("i", "f", "g", "o")     # blocks of W_ih / W_hh / biases, torch's order
GRU_GATES = ("r", "z", "n")


def _block(gates: Tensor, k: int, size: int) -> Tensor:
    """Gate block k (columns k*size .. (k+1)*size) of gates (..., G*size)."""
    return gates[..., k * size:(k + 1) * size]


def lstm_update(gates: Tensor, c: Tensor, w_hr_t: Tensor | None = None):
    """One LSTM step from its pre-activations ``gates`` = x W_ih^T + b_ih + h W_hh^T + b_hh
    (N, 4H): i, f, o = sigmoid (eq. 10.42, 10.40, 10.44), g = tanh (the cell input; eq. 10.41
    has the sigmoid), c' = f c + i g (eq. 10.41), h' = o tanh(c') (eq. 10.43; times W_hr^T
    with a projection). -> (h', c')."""
    h, c, _ = _lstm_step(gates, c, w_hr_t)
    return h, c


def _lstm_step(gates, c, w_hr_t=None):
    """``lstm_update``, and the step's activations that its derivative reads (the gates,
    tanh(c')): a layer emits them per step, so that BPTT reads them from the forward scan
    (passes/scan_reuse.py) instead of recomputing the step's gate matmul."""
    size = c.shape[-1]
    i, f, g, o = (_block(gates, k, size) for k in range(4))
    i, f, g, o = F.sigmoid(i), F.sigmoid(f), F.tanh(g), F.sigmoid(o)
    c = f * c + i * g
    tc = F.tanh(c)
    h = o * tc
    return (h if w_hr_t is None else F.matmul(h, w_hr_t)), c, (i, f, g, o, tc)


def gru_update(xg: Tensor, hg: Tensor, h: Tensor) -> Tensor:
    """One GRU step, torch's form, from xg = x W_ih^T + b_ih and hg = h W_hh^T + b_hh
    (N, 3H): r = sigmoid(xg_r + hg_r), z = sigmoid(xg_z + hg_z), n = tanh(xg_n + r * hg_n),
    h' = (1 - z) n + z h (eq. 10.45-10.47, but the text resets before W, W (r * h), and
    squashes n with the sigmoid)."""
    return _gru_step(xg, hg, h)[0]


def _gru_step(xg, hg, h):
    """``gru_update``, and the activations its derivative reads (r, z, n, h W_hn^T + b_hn),
    emitted per step by the layer (as ``_lstm_step``'s)."""
    size = h.shape[-1]
    r = F.sigmoid(_block(xg, 0, size) + _block(hg, 0, size))
    z = F.sigmoid(_block(xg, 1, size) + _block(hg, 1, size))
    hn = _block(hg, 2, size)
    n = F.tanh(_block(xg, 2, size) + r * hn)
    return (1.0 - z) * n + z * h, (r, z, n, hn)


def _t(w) -> Tensor:
    return F.transpose(F.as_tensor(w), 0, 1)


def _gate_slice(gate_names: tuple[str, ...], gate: str, size: int) -> slice:
    if gate not in gate_names:
        raise ValueError(f"unknown gate {gate!r}; the gates are {', '.join(gate_names)}")
    k = gate_names.index(gate)
    return slice(k * size, (k + 1) * size)


class LSTM(RNNBase):
    """``torch.nn.LSTM``: ``forward(input, hx=None, lengths=None) -> (output, (h_n, c_n))``
    with ``hx`` = (h_0, c_0) of shapes (D * num_layers, N, proj_size or H) and (D *
    num_layers, N, H). ``forget_bias``: start the forget gate's bias at this value (b_ih's
    f block; b_hh's f block 0), the advice of section 8.4 (Jozefowicz et al.: 1);
    ``frontend.init.lstm_forget_bias_`` does the same to any model."""

    GATES = len(LSTM_GATES)
    GATE_NAMES = LSTM_GATES
    PROJECTS = True
    STATES = ("h", "c")

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0,
                 forget_bias: float | None = None):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size)
        if forget_bias is not None:
            lstm_forget_bias_(self, forget_bias)

    def gate_slice(self, gate: str) -> slice:
        """The rows of gate ``gate`` ('i', 'f', 'g', 'o') in W_ih, W_hh and the biases."""
        return _gate_slice(self.GATE_NAMES, gate, self.hidden_size)

    def _direction(self, x: Tensor, state0: tuple, key: str, reverse: bool, mask):
        w = self._weights(key)
        pre = self._input_projection(x, w)                  # (T, N, 4H), one GEMM
        consts = (_t(w["weight_hh"]),) + ((_t(w["weight_hr"]),) if self.proj_size else ())

        def step(carry, pre_t, w_hh_t, *w_hr_t):
            h, c = carry
            h, c, acts = _lstm_step(pre_t + F.matmul(h, w_hh_t), c, *w_hr_t)
            return (h, c), (h,) + acts

        (h, c), ys = scan(step, tuple(state0), pre, consts, reverse=reverse, mask=mask)
        return ys[0], (h, c)


class GRU(RNNBase):
    """``torch.nn.GRU``: ``forward(input, hx=None, lengths=None) -> (output, h_n)``, gates
    in torch's order r, z, n and torch's form of the candidate state (``gru_update``)."""

    GATES = len(GRU_GATES)
    GATE_NAMES = GRU_GATES

    def gate_slice(self, gate: str) -> slice:
        """The rows of gate ``gate`` ('r', 'z', 'n') in W_ih, W_hh and the biases."""
        return _gate_slice(self.GATE_NAMES, gate, self.hidden_size)

    def _direction(self, x: Tensor, state0: tuple, key: str, reverse: bool, mask):
        w = self._weights(key)
        xg = self._input_projection(x, w, bias=False)       # (T, N, 3H), one GEMM
        if self.bias:
            xg = xg + w["bias_ih"]
        b_hh = w.get("bias_hh")

        def step(h, xg_t, w_hh_t):
            hg = F.matmul(h, w_hh_t)
            if b_hh is not None:
                hg = hg + b_hh
            h, acts = _gru_step(xg_t, hg, h)
            return h, (h,) + acts

        h, ys = scan(step, state0[0], xg, (_t(w["weight_hh"]),), reverse=reverse, mask=mask)
        return ys[0], (h,)


# ---------------------------------------------------------------- cells
class _CellBase(Module):
    """torch's ``RNNCellBase``: weight_ih (G*H, H_in), weight_hh (G*H, H), bias_ih, bias_hh
    (G*H,), all U(-1/sqrt(H), 1/sqrt(H)). ``forward(input, hx=None)``: input (N, H_in) or
    unbatched (H_in,); hx (N, H) (LSTMCell: a tuple (h, c)), zeros when None."""

    GATES = 1
    STATES = ("h",)

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__()
        if input_size < 1 or hidden_size < 1:
            raise ValueError("input_size and hidden_size must be >= 1")
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        k, rows = 1 / math.sqrt(hidden_size), self.GATES * hidden_size
        shapes = [("weight_ih", (rows, input_size)), ("weight_hh", (rows, hidden_size))]
        if bias:
            shapes += [("bias_ih", (rows,)), ("bias_hh", (rows,))]
        for name, shape in shapes:
            setattr(self, name, Parameter(rng().uniform(-k, k, shape).astype(np.float32)))

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, bias={self.bias}"

    def _prepare(self, input, hx):
        """(x (N, H_in), [states (N, H)], unbatched), checked."""
        name = type(self).__name__
        x = F.as_tensor(input)
        if x.ndim not in (1, 2) or x.shape[-1] != self.input_size:
            raise ValueError(f"{name}: input must be (N, {self.input_size}) or unbatched "
                             f"({self.input_size},); got {x.shape}")
        if x.dtype != self.weight_ih.data.dtype.name:
            raise TypeError(f"{name}: input is {x.dtype} but the parameters are "
                            f"{self.weight_ih.data.dtype.name}; cast one to the other")
        unbatched = x.ndim == 1
        x = F.unsqueeze(x, 0) if unbatched else x
        shape = (x.shape[0], self.hidden_size)
        if hx is None:
            return x, [x.tracer.emit("full", shape=shape, value=0.0, dtype=x.dtype)
                       for _ in self.STATES], unbatched
        if len(self.STATES) > 1:
            if not (isinstance(hx, (tuple, list)) and len(hx) == len(self.STATES)):
                raise TypeError(f"{name}: hx must be a tuple ({', '.join(self.STATES)}) of "
                                f"{len(self.STATES)} tensors, got {type(hx).__name__}")
            hxs = list(hx)
        else:
            hxs = [hx]
        states = []
        for what, h in zip(self.STATES, hxs):
            h = F.as_tensor(h)
            h = F.unsqueeze(h, 0) if unbatched and h.ndim == 1 else h
            if h.shape != shape:
                label = "hx" if len(self.STATES) == 1 else f"hx's {what}"
                want = shape if not unbatched else shape[1:]
                raise ValueError(f"{name}: {label} must have shape {want}, got {h.shape}")
            if h.dtype != x.dtype:
                raise TypeError(f"{name}: hx is {h.dtype} but the input is {x.dtype}")
            states.append(h)
        return x, states, unbatched

    def _sides(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """(x W_ih^T + b_ih, h W_hh^T + b_hh)."""
        xg, hg = F.linear(x, self.weight_ih), F.linear(h, self.weight_hh)
        if self.bias:
            xg, hg = xg + self.bias_ih, hg + self.bias_hh
        return xg, hg

    @staticmethod
    def _out(t: Tensor, unbatched: bool) -> Tensor:
        return F.squeeze(t, 0) if unbatched else t


class RNNCell(_CellBase):
    """``torch.nn.RNNCell``: h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh) (eq. 10.8-10.9)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "tanh"):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__(input_size, hidden_size, bias)
        self.nonlinearity = nonlinearity

    def forward(self, input, hx=None):
        x, (h,), unbatched = self._prepare(input, hx)
        xg, hg = self._sides(x, h)
        act = F.tanh if self.nonlinearity == "tanh" else F.relu
        return self._out(act(xg + hg), unbatched)


class LSTMCell(_CellBase):
    """``torch.nn.LSTMCell``: ``forward(input, (h, c)) -> (h', c')`` (``lstm_update``);
    ``forget_bias`` as ``LSTM``'s."""

    GATES = len(LSTM_GATES)
    GATE_NAMES = LSTM_GATES
    STATES = ("h", "c")

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 forget_bias: float | None = None):
        super().__init__(input_size, hidden_size, bias)
        if forget_bias is not None:
            lstm_forget_bias_(self, forget_bias)

    def gate_slice(self, gate: str) -> slice:
        return _gate_slice(self.GATE_NAMES, gate, self.hidden_size)

    def forward(self, input, hx=None):
        x, (h, c), unbatched = self._prepare(input, hx)
        xg, hg = self._sides(x, h)
        h, c = lstm_update(xg + hg, c)
        return self._out(h, unbatched), self._out(c, unbatched)


class GRUCell(_CellBase):
    """``torch.nn.GRUCell``: ``forward(input, h) -> h'`` (``gru_update``)."""

    GATES = len(GRU_GATES)
    GATE_NAMES = GRU_GATES

    def gate_slice(self, gate: str) -> slice:
        return _gate_slice(self.GATE_NAMES, gate, self.hidden_size)

    def forward(self, input, hx=None):
        x, (h,), unbatched = self._prepare(input, hx)
        xg, hg = self._sides(x, h)
        return self._out(gru_update(xg, hg, h), unbatched)
