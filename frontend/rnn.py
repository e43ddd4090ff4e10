"""Recurrent networks in the DSL (chapter 10).

* ``scan(fn, init, xs)``: trace a step function ``fn(carry, x_t, *consts) -> (carry', y_t)``
  once into a body graph and emit one ``scan`` node (fig. 10.2): the parameters the step uses
  are shared by every step.
* ``RNN``: ``torch.nn.RNN``'s interface and meaning (eq. 10.8-10.9; layers, bidirectional,
  ``batch_first``, PyTorch's parameter names and init), plus ``lengths`` for minibatches of
  sequences of different lengths (padding touches neither outputs nor gradients).
* The networks of chapter 10: ``RNNSequenceModel`` (eq. 10.8-10.14: an output and a loss at
  every step), ``RNNLanguageModel`` (the same, fed its previous token: teacher forcing in
  training, its own outputs fed back in generation), ``OutputRecurrentNet`` (fig. 10.4,
  trained with teacher forcing, fig. 10.6, and run open loop to generate),
  ``SequenceClassifier`` (fig. 10.5: one output at the end) and ``RecurrentConvNet``
  (fig. 9.17: the same kernels U, V, W for every refinement step).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

import irgraph.passes.unroll  # noqa: F401  (registers the BPTT passes: unroll, bptt, save_states)
from irgraph import verify

from . import functional as F
from .layers_basic import Linear
from .module import Module, Parameter
from .random import rng
from .tracing import Tensor, Tracer, current_tracer, flatten, recording, unflatten


# ---------------------------------------------------------------- scan
def _leaves(tree, what: str) -> tuple[list[Tensor], object]:
    leaves, structure = flatten(tree)
    out = []
    for leaf in leaves:
        if isinstance(leaf, Parameter):
            leaf = F.as_tensor(leaf)
        if not isinstance(leaf, Tensor):
            raise TypeError(f"scan: {what} must be tensors (or tuples of them), got "
                            f"{type(leaf).__name__}")
        out.append(leaf)
    return out, structure


def _trace_step(fn: Callable, outer: Tracer, carries, slices, consts, structures):
    """Trace ``fn`` into a body graph; returns (body, its params' values in the outer graph,
    the structure of its per-step outputs)."""
    inner = Tracer(getattr(fn, "__name__", "step").replace("<", "").replace(">", "") or "step",
                   outer.param_names)
    g = inner.graph

    def inputs(ts, prefix, drop_time=False):
        return [Tensor(g.add_input(g.fresh_name(f"{prefix}{i}"),
                                   t.type.with_shape(t.shape[1:]) if drop_time else t.type),
                       inner) for i, t in enumerate(ts)]

    c_in, x_in, k_in = inputs(carries, "carry"), inputs(slices, "x", True), inputs(consts, "k")
    with recording(inner):
        c_tree = unflatten(structures[0], c_in)
        x_tree = unflatten(structures[1], x_in) if structures[1] is not False else None
        res = fn(c_tree, x_tree, *k_in)
        if not (isinstance(res, tuple) and len(res) == 2):
            raise TypeError("scan: the step function must return (new_carry, y_t); y_t may "
                            "be None")
        new_c, c_struct = _leaves(res[0], "the new carry")
        ys, y_struct = _leaves(res[1], "per-step outputs") if res[1] is not None else ([], False)
    if c_struct != structures[0] or [t.type for t in new_c] != [t.type for t in carries]:
        raise TypeError(f"scan: the new carry {[str(t.type) for t in new_c]} must have the "
                        f"structure and types of the initial carry "
                        f"{[str(t.type) for t in carries]}")
    if inner.state_updates:
        raise ValueError("scan: a step function cannot update module buffers")
    g.set_outputs([t.value for t in new_c + ys])
    _check_closed(g)
    outer_params = [Tensor(outer.param_value(p), outer) for p in inner.params.values()]
    return verify(g), outer_params, y_struct


def _check_closed(g) -> None:
    known = set(g.values())
    for node in g.nodes:
        for v in node.inputs:
            if v not in known:
                raise ValueError(f"scan: the step function uses %{v.name}, a tensor traced "
                                 f"outside it (at {node.loc}); pass it in through consts")
    for v in g.outputs:
        if v not in known:
            raise ValueError(f"scan: the step function returns %{v.name}, a tensor traced "
                             f"outside it; pass it in through consts")


def scan(fn: Callable, init, xs=None, consts: Sequence = (), *, reverse: bool = False,
         mask=None, length: int | None = None):
    """Run ``fn(carry, x_t, *consts) -> (carry', y_t)`` over the leading (time) axis of ``xs``.

    Returns ``(final_carry, ys)`` with ys stacked on a new leading time axis. ``reverse`` runs
    t = T-1 ... 0; ``mask`` (bool[T, B]) holds the carry and zeroes y_t where false.
    ``consts``: tensors the step needs from outside it (parameters it uses are found
    automatically). ``length``: the number of steps when there is no ``xs``."""
    init_l, init_s = _leaves(init, "the initial carry")
    xs_l, xs_s = _leaves(xs, "sequences") if xs is not None else ([], False)
    consts_l = [F.as_tensor(c) for c in consts]
    anchor = (init_l + xs_l + consts_l)
    outer = anchor[0].tracer if anchor else current_tracer()
    body, params, y_struct = _trace_step(fn, outer, init_l, xs_l, consts_l, (init_s, xs_s))
    extra = []
    if mask is not None:
        extra = [F.as_tensor(mask)]
        if extra[0].dtype != "bool":
            extra = [F.ne(extra[0], 0)]
    outs = outer.emit("scan", *init_l, *xs_l, *extra, *consts_l, *params, body=body,
                      num_carry=len(init_l), num_seq=len(xs_l), reverse=reverse,
                      masked=mask is not None, length=length)
    outs = outs if isinstance(outs, tuple) else (outs,)
    carry = unflatten(init_s, list(outs[:len(init_l)]))
    ys = unflatten(y_struct, list(outs[len(init_l):])) if y_struct is not False else None
    return carry, ys


def lengths_to_mask(lengths, steps: int) -> Tensor:
    """bool[T, B]: true where step t < lengths[b] (a padded minibatch of sequences)."""
    lengths = F.cast(F.as_tensor(np.asarray(lengths, np.int64) if not isinstance(
        lengths, Tensor) else lengths), "int64")
    if lengths.ndim != 1:
        raise ValueError(f"lengths must be a 1-D tensor (B,), got shape {lengths.shape}")
    t = lengths.tracer.emit("iota", shape=(steps, lengths.shape[0]), axis=0, dtype="int64")
    return F.lt(t, F.reshape(lengths, (1, lengths.shape[0])))


def one_hot(index, num_classes: int, dtype: str = "float32") -> Tensor:
    """``index`` (any shape, integers) as one-hot vectors on a new last axis."""
    index = F.as_tensor(index)
    classes = index.tracer.emit("iota", shape=index.shape + (num_classes,),
                                axis=index.ndim, dtype=index.dtype)
    return F.cast(F.eq(classes, F.unsqueeze(index, -1)), dtype)


# ---------------------------------------------------------------- nn.RNN
class RNNBase(Module):
    """What ``nn.RNN``, ``nn.LSTM`` and ``nn.GRU`` share, as torch's ``RNNBase``: parameters
    (names, shapes, init U(-1/sqrt(H), 1/sqrt(H))), the input's layouts (time-major,
    ``batch_first``, unbatched), the initial state ``hx``, ``lengths`` (padded minibatches),
    layers and directions. A subclass gives ``GATES`` (blocks of H rows stacked in W_ih,
    W_hh, b_ih, b_hh: 1, 4 for LSTM, 3 for GRU), ``STATES`` (names of the carried states:
    ``("h",)``, LSTM ``("h", "c")``) and ``_direction`` (one layer, one direction: a scan).

    ``forward(input, hx=None, lengths=None) -> (output, h_n)`` (LSTM: ``(output, (h_n,
    c_n))``): input (L, N, H_in) (or (N, L, H_in) with ``batch_first``, or unbatched
    (L, H_in)); output holds the last layer's hidden state at every step (both directions
    concatenated), h_n the last hidden state of every layer and direction (D * num_layers,
    N, H). ``lengths`` (N,) marks the valid steps of a padded minibatch, as
    ``pack_padded_sequence``: padded outputs are zero, h_n is taken at each sequence's own
    end, and the reverse direction starts there. ``dropout`` (training mode): F.dropout on
    the outputs of every layer but the last, as torch."""

    GATES = 1
    STATES = ("h",)
    PROJECTS = False        # takes proj_size (LSTM)

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0):
        super().__init__()
        if num_layers < 1 or hidden_size < 1 or input_size < 1:
            raise ValueError("input_size, hidden_size and num_layers must be >= 1")
        if isinstance(dropout, bool) or not 0 <= dropout <= 1:
            raise ValueError(f"dropout must be a probability in [0, 1], got {dropout!r}")
        if proj_size and not self.PROJECTS:
            raise ValueError(f"proj_size argument is only supported for LSTM, not RNN or GRU "
                             f"({type(self).__name__})")
        if proj_size < 0 or proj_size >= hidden_size:
            raise ValueError(f"proj_size must be >= 0 and < hidden_size ({hidden_size}), "
                             f"got {proj_size}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional, self.proj_size = bidirectional, proj_size
        k = 1 / math.sqrt(hidden_size)
        rows, out = self.GATES * hidden_size, self.output_size
        for layer in range(num_layers):
            n_in = input_size if layer == 0 else out * self.num_directions
            for sfx in self._suffixes():
                shapes = [("weight_ih", (rows, n_in)), ("weight_hh", (rows, out))]
                if bias:
                    shapes += [("bias_ih", (rows,)), ("bias_hh", (rows,))]
                if proj_size:
                    shapes += [("weight_hr", (proj_size, hidden_size))]
                for name, shape in shapes:
                    data = rng().uniform(-k, k, shape).astype(np.float32)
                    setattr(self, f"{name}_l{layer}{sfx}", Parameter(data))

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        """The size of h (and of each direction's output): proj_size if set, else H."""
        return self.proj_size or self.hidden_size

    def _suffixes(self) -> list[str]:
        return ["", "_reverse"][:self.num_directions]

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"batch_first={self.batch_first}, bidirectional={self.bidirectional}"
                + (f", proj_size={self.proj_size}" if self.proj_size else ""))

    def _weights(self, key: str) -> dict[str, object]:
        """The parameters of layer/direction ``key`` (``l0``, ``l1_reverse``) by short name
        (``weight_ih``, ...; absent ones left out)."""
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
        return {n: self._parameters[f"{n}_{key}"] for n in names
                if f"{n}_{key}" in self._parameters}

    def forward(self, input, hx=None, lengths=None):
        name = type(self).__name__
        x = F.as_tensor(input)
        unbatched = x.ndim == 2
        if x.ndim not in (2, 3) or x.shape[-1] != self.input_size:
            raise ValueError(f"{name}: input must be (L, N, {self.input_size}) "
                             f"(batch_first: (N, L, {self.input_size}), unbatched: "
                             f"(L, {self.input_size})); got {x.shape}")
        if x.dtype != self.weight_ih_l0.data.dtype.name:
            raise TypeError(f"{name}: input is {x.dtype} but the parameters are "
                            f"{self.weight_ih_l0.data.dtype.name}; cast one to the other")
        x = F.unsqueeze(x, 1) if unbatched else (F.transpose(x, 0, 1) if self.batch_first
                                                 else x)
        steps, batch = x.shape[0], x.shape[1]
        states = self._initial_state(hx, batch, unbatched, x)
        mask = lengths_to_mask(lengths, steps) if lengths is not None else None
        last = []
        for layer in range(self.num_layers):
            if layer:                    # torch: dropout on each layer's output but the last
                x = F.dropout(x, self.dropout, self.training)
            outs = []
            for d, sfx in enumerate(self._suffixes()):
                i = layer * self.num_directions + d
                y, final = self._direction(x, tuple(s[i] for s in states), f"l{layer}{sfx}",
                                           d == 1, mask)
                outs.append(y)
                last.append(final)
            x = outs[0] if len(outs) == 1 else F.cat(outs, 2)
        finals = [F.stack([f[j] for f in last], 0) for j in range(len(self.STATES))]
        if unbatched:
            x, finals = F.squeeze(x, 1), [F.squeeze(f, 1) for f in finals]
        elif self.batch_first:
            x = F.transpose(x, 0, 1)
        return x, (finals[0] if len(finals) == 1 else tuple(finals))

    def _state_shapes(self, batch: int) -> list[tuple[int, ...]]:
        n = self.num_layers * self.num_directions
        return [(n, batch, self.output_size if s == "h" else self.hidden_size)
                for s in self.STATES]

    def _initial_state(self, hx, batch: int, unbatched: bool, like: Tensor) -> list[Tensor]:
        """``hx`` (a tensor, or LSTM's tuple (h_0, c_0)) checked, as a list of
        (D * num_layers, N, size) tensors; zeros when None."""
        name, shapes = type(self).__name__, self._state_shapes(batch)
        if hx is None:
            return [like.tracer.emit("full", shape=s, value=0.0, dtype=like.dtype)
                    for s in shapes]
        if len(shapes) > 1:
            if not (isinstance(hx, (tuple, list)) and len(hx) == len(shapes)):
                raise TypeError(f"{name}: hx must be a tuple ({', '.join(self.STATES)}) of "
                                f"{len(shapes)} tensors, got {type(hx).__name__}")
            hxs = list(hx)
        else:
            hxs = [hx]
        out = []
        for what, h, shape in zip(self.STATES, hxs, shapes):
            h = F.as_tensor(h)
            h = F.unsqueeze(h, 1) if unbatched and h.ndim == 2 else h
            if h.shape != shape:
                want = shape if not unbatched else (shape[0], shape[2])
                label = "hx" if len(shapes) == 1 else f"hx's {what}_0"
                raise ValueError(f"{name}: {label} must have shape {want}, got {h.shape}")
            if h.dtype != like.dtype:
                raise TypeError(f"{name}: hx is {h.dtype} but the input is {like.dtype}")
            out.append(h)
        return out

    def _input_projection(self, x: Tensor, w: dict, bias: bool = True) -> Tensor:
        """x W_ih^T (+ b_ih + b_hh when ``bias``) for all steps at once: one GEMM outside
        the loop, GATES * H wide."""
        pre = F.matmul(x, F.transpose(F.as_tensor(w["weight_ih"]), 0, 1))
        if self.bias and bias:
            pre = pre + w["bias_ih"] + w["bias_hh"]
        return pre


class RNN(RNNBase):
    """Elman RNN, as ``torch.nn.RNN``: h_t = tanh(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)
    (eq. 10.8-10.9 with U = W_ih, W = W_hh, b = b_ih + b_hh). Shapes, ``hx``, ``lengths``:
    ``RNNBase``."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional)
        self.nonlinearity = nonlinearity

    def cell(self, layer: int, x: Tensor, h: Tensor, direction: int = 0) -> Tensor:
        """One step of one layer: act(x W_ih^T + b_ih + h W_hh^T + b_hh) (eq. 10.8-10.9)."""
        key = f"l{layer}{self._suffixes()[direction]}"
        a = F.linear(x, getattr(self, "weight_ih_" + key)) + F.linear(
            h, getattr(self, "weight_hh_" + key))
        if self.bias:
            a = a + getattr(self, "bias_ih_" + key) + getattr(self, "bias_hh_" + key)
        return F.tanh(a) if self.nonlinearity == "tanh" else F.relu(a)

    def _direction(self, x: Tensor, state0: tuple, key: str, reverse: bool, mask):
        """One layer, one direction: the input projection for all steps at once, then a scan
        whose body is h_t = act(pre_t + h_{t-1} W_hh^T)."""
        w = self._weights(key)
        pre = self._input_projection(x, w)
        act = F.tanh if self.nonlinearity == "tanh" else F.relu

        def cell(h, pre_t, w_hh_t):
            h = act(pre_t + F.matmul(h, w_hh_t))
            return h, h

        w_hh_t = F.transpose(F.as_tensor(w["weight_hh"]), 0, 1)  # transposed once, outside
        h_t, ys = scan(cell, state0[0], pre, (w_hh_t,), reverse=reverse, mask=mask)
        return ys, (h_t,)


# ---------------------------------------------------------------- the networks of chapter 10
class _RNNWithOutput(Module):
    """An RNN and an affine output layer o = c + V h (V sees both directions' states)."""

    def __init__(self, input_size: int, hidden_size: int, num_classes: int,
                 num_layers: int = 1, bidirectional: bool = False):
        super().__init__()
        self.rnn = RNN(input_size, hidden_size, num_layers, bidirectional=bidirectional)
        self.out = Linear(hidden_size * self.rnn.num_directions, num_classes)


class RNNSequenceModel(_RNNWithOutput):
    """The network of fig. 10.3 and eq. 10.8-10.14: a tanh RNN, an affine output
    o_t = c + V h_t at every step, softmax, and the negative log-likelihoods summed.

    ``forward(x, lengths=None)`` gives the logits o (T, N, C); ``loss(x, y)`` the summed
    NLL of targets y (T, N) (``reduction="mean"``: averaged over the counted steps)."""

    def forward(self, x, lengths=None):
        h, _ = self.rnn(x, lengths=lengths)
        return self.out(h)

    def loss(self, x, y, lengths=None, reduction: str = "sum"):
        o = self(x, lengths)
        return sequence_nll(o, y, lengths, reduction)


def sequence_nll(logits, targets, lengths=None, reduction: str = "sum") -> Tensor:
    """-sum_t log softmax(o_t)[y_t] (eq. 10.11-10.14) of logits (T, N, C) and targets (T, N);
    steps past ``lengths`` count for nothing."""
    steps, batch, classes = logits.shape
    targets = F.as_tensor(targets)
    if lengths is not None:
        targets = F.where(lengths_to_mask(lengths, steps), targets, -100)
    flat = F.reshape(logits, (steps * batch, classes))
    return F.cross_entropy(flat, F.reshape(targets, (steps * batch,)), reduction)


class RNNLanguageModel(Module):
    """A character (or word) model: the network of eq. 10.8-10.14 whose input at step t is the
    previous token y_{t-1} (one-hot; y_0 = 0, the start) and whose target is y_t.

    ``loss(tokens)`` trains it with teacher forcing (the true previous tokens are fed in);
    ``generate`` runs it open loop, feeding back its own argmax or, with Gumbel ``noise``
    (T, N, vocab) uniform in (0, 1), its own samples of softmax(o_t)."""

    def __init__(self, vocab_size: int, hidden_size: int, num_layers: int = 1):
        super().__init__()
        self.vocab_size = vocab_size
        self.rnn = RNN(vocab_size, hidden_size, num_layers)
        self.out = Linear(hidden_size, vocab_size)

    def forward(self, tokens, hx=None):
        """Logits (T, N, vocab) of y_t given y_1 ... y_{t-1}, and the final hidden state."""
        tokens = F.as_tensor(tokens)
        prev = one_hot(tokens, self.vocab_size, self.out.weight.data.dtype.name)
        start = prev.tracer.emit("full", shape=(1,) + prev.shape[1:], value=0.0,
                                 dtype=prev.dtype)
        h, h_n = self.rnn(F.cat([start, prev[:tokens.shape[0] - 1]], 0), hx)
        return self.out(h), h_n

    def loss(self, tokens, reduction: str = "mean"):
        return sequence_nll(self(tokens)[0], tokens, reduction=reduction)

    def generate(self, steps: int | None = None, batch: int = 1, noise=None):
        """Tokens (T, N) int64, each fed back as the next step's input."""
        if noise is not None:
            noise = F.as_tensor(noise)
            steps, batch = noise.shape[:2]
        if steps is None:
            raise ValueError("generate: give steps (or noise to take them from)")
        tr, dt = current_tracer(), self.out.weight.data.dtype.name
        layers = self.rnn.num_layers
        hs = tuple(tr.emit("full", shape=(batch, self.rnn.hidden_size), value=0.0, dtype=dt)
                   for _ in range(layers))
        start = tr.emit("full", shape=(batch, self.vocab_size), value=0.0, dtype=dt)

        def step(carry, g_t):
            prev, hs = carry[0], carry[1:]
            inp, new = prev, []
            for layer, h in enumerate(hs):
                inp = self.rnn.cell(layer, inp, h)
                new.append(inp)
            o = self.out(inp)
            token = F.argmax(o if g_t is None else o + g_t, dim=-1)
            return (one_hot(token, self.vocab_size, dt),) + tuple(new), token

        if noise is None:
            _, tokens = scan(lambda c, _: step(c, None), (start,) + hs, None, length=steps)
        else:
            gumbel = F.neg(F.log(F.neg(F.log(noise))))
            _, tokens = scan(step, (start,) + hs, gumbel)
        return tokens


class SequenceClassifier(_RNNWithOutput):
    """Fig. 10.5: an RNN reads the whole sequence; a single output o = c + V h_tau is read
    at the end (each sequence's own end with ``lengths``). ``forward`` gives logits (N, C)."""

    def forward(self, x, lengths=None):
        _, h_n = self.rnn(x, lengths=lengths)
        d = self.rnn.num_directions
        last = [h_n[h_n.shape[0] - d + i] for i in range(d)]
        return self.out(last[0] if d == 1 else F.cat(last, 1))

    def loss(self, x, labels, lengths=None, reduction: str = "mean"):
        return F.cross_entropy(self(x, lengths), labels, reduction)


class OutputRecurrentNet(Module):
    """Fig. 10.4: the recurrence goes from the output at t-1 to the hidden units at t:
    h_t = tanh(b + W y_{t-1} + U x_t), o_t = c + V h_t (y_0 = 0, the start).

    Trained with teacher forcing (fig. 10.6): ``forward(targets, x)`` feeds the TRUE previous
    output y_{t-1}, so training needs no back-propagation through time. ``generate`` runs
    open loop: the model's own previous output (its argmax, or a sample when Gumbel ``noise``
    is given) is fed back. ``input_size=0``: no inputs x (a language model)."""

    def __init__(self, num_classes: int, hidden_size: int, input_size: int = 0):
        super().__init__()
        self.num_classes, self.input_size = num_classes, input_size
        self.W = Linear(num_classes, hidden_size)              # y_{t-1} -> h_t, with b
        self.U = Linear(input_size, hidden_size, bias=False) if input_size else None
        self.V = Linear(hidden_size, num_classes)              # h_t -> o_t, with c

    def _logits(self, y_prev, x=None):
        a = self.W(y_prev)
        if self.U is not None:
            a = a + self.U(x)
        return self.V(F.tanh(a))

    def _check_x(self, x):
        if (x is None) != (self.U is None):
            raise ValueError("OutputRecurrentNet: pass x exactly when input_size > 0")

    def forward(self, targets, x=None):
        """Teacher forcing: logits (T, N, C) from the true previous outputs y_{t-1}."""
        self._check_x(x)
        targets = F.as_tensor(targets)
        prev = one_hot(targets, self.num_classes, self.V.weight.data.dtype.name)
        start = prev.tracer.emit("full", shape=(1,) + prev.shape[1:], value=0.0,
                                 dtype=prev.dtype)
        prev = F.cat([start, prev[:targets.shape[0] - 1]], 0)
        return self._logits(prev, x)

    def loss(self, targets, x=None, reduction: str = "sum"):
        return sequence_nll(self(targets, x), targets, reduction=reduction)

    def generate(self, steps: int | None = None, batch: int = 1, x=None, noise=None):
        """Open loop: tokens (T, N) int64, each fed back as the next step's y_{t-1}. With
        ``noise`` (T, N, C) uniform in (0, 1), tokens are samples of softmax(o_t) (the
        Gumbel-max trick); without, the argmax."""
        self._check_x(x)
        seqs = [s for s in (x, noise) if s is not None]
        if seqs:
            steps, batch = F.as_tensor(seqs[0]).shape[:2]
        if steps is None:
            raise ValueError("generate: give steps (or x / noise to take them from)")
        dt = self.V.weight.data.dtype.name
        start = current_tracer().emit("full", shape=(batch, self.num_classes), value=0.0,
                                      dtype=dt)
        gumbel = None
        if noise is not None:
            gumbel = F.neg(F.log(F.neg(F.log(F.as_tensor(noise)))))

        def step(prev, inp):
            x_t, g_t = inp
            o = self._logits(prev, x_t)
            token = F.argmax(o if g_t is None else o + g_t, dim=-1)
            return one_hot(token, self.num_classes, dt), token

        if not seqs:
            def step0(prev, _):
                return step(prev, (None, None))
            _, tokens = scan(step0, start, None, length=steps)
            return tokens
        names = [x is not None, noise is not None]
        ins = tuple(s for s in (x, gumbel) if s is not None)

        def step_seq(prev, inp):
            it = iter(inp)
            return step(prev, tuple(next(it) if has else None for has in names))
        _, tokens = scan(step_seq, start, ins)
        return tokens


class RecurrentConvNet(Module):
    """Fig. 9.17: pixel labelling by refinement. Each step computes the hidden maps
    H = tanh(U * X + W * Y_prev) (on the first step the W term is zero) and a new estimate
    Y = softmax(V * H) over classes; U, V, W are the same kernels at every step.

    ``forward(X)`` (N, C_in, H, W) gives the label distributions (N, classes, H, W) after
    ``steps`` refinements; ``estimates(X)`` gives every step's (steps, N, classes, H, W)."""

    def __init__(self, in_channels: int, hidden_channels: int, num_classes: int,
                 kernel_size: int = 3, steps: int = 3):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError("RecurrentConvNet: kernel_size must be odd (maps keep their size)")
        self.steps, self.num_classes, self.pad = steps, num_classes, kernel_size // 2

        def kernel(o, i):
            bound = 1 / math.sqrt(i * kernel_size * kernel_size)
            return Parameter(rng().uniform(-bound, bound, (o, i, kernel_size, kernel_size))
                             .astype(np.float32))
        self.U = kernel(hidden_channels, in_channels)
        self.V = kernel(num_classes, hidden_channels)
        self.W = kernel(hidden_channels, num_classes)

    def _conv(self, x, w):
        x, w = F.as_tensor(x), F.as_tensor(w)
        p = self.pad
        return x.tracer.emit("conv", x, w, stride=(1, 1), padding=(p, p, p, p),
                             dilation=(1, 1))

    def estimates(self, images):
        images = F.as_tensor(images)
        ux = self._conv(images, self.U)                        # the same on every step
        n, _, h, w = images.shape
        y0 = images.tracer.emit("full", shape=(n, self.num_classes, h, w), value=0.0,
                                dtype=images.dtype)

        def refine(y_prev, _, ux_):
            hidden = F.tanh(ux_ + self._conv(y_prev, self.W))
            y = F.softmax(self._conv(hidden, self.V), 1)
            return y, y

        _, ys = scan(refine, y0, None, consts=(ux,), length=self.steps)
        return ys

    def forward(self, images):
        ys = self.estimates(images)
        return ys[ys.shape[0] - 1]

    def loss(self, images, labels):
        """Pixel-wise negative log-likelihood of the final estimate."""
        y = self(images)
        return F.nll_loss(F.log(y), labels)
