"""ONNX RNN, LSTM and GRU, unrolled over the (static) sequence length with core ops.

Exact ONNX semantics: gate order zrh (GRU, with ``linear_before_reset``) and iofc (LSTM,
with peepholes P = (i, o, f)); biases Wb + Rb; ``clip`` bounds every gate's input (not the
cell state's h(C), as onnxruntime reads it);
``sequence_lens`` holds a row's state past its length and zeroes its outputs there (a
reverse direction then starts at the row's last step); ``layout`` 1 is batch-major.
The input projection X W^T + Wb is one matmul over all steps.
"""
from __future__ import annotations

from .. import functional as F
from .handlers import NodeView, handler

_ACTS = {"Tanh": "tanh", "Sigmoid": "sigmoid", "Relu": "relu"}
_KINDS = {"RNN": (1, ("Tanh",)), "GRU": (3, ("Sigmoid", "Tanh")),
          "LSTM": (4, ("Sigmoid", "Tanh", "Tanh"))}
_COMMON = ("activation_alpha", "activation_beta", "activations", "clip", "direction",
           "hidden_size", "layout")


def _cols(x, a: int, b: int):
    """Columns [a, b) of the last axis."""
    starts = (0,) * (x.ndim - 1) + (a,)
    stops = x.shape[:-1] + (b,)
    return F.slice_axes(x, starts, stops, (1,) * x.ndim)


def _take(x, i: int):
    """x[i] along the first axis."""
    y = F.slice_axes(x, (i,) + (0,) * (x.ndim - 1), (i + 1,) + x.shape[1:], (1,) * x.ndim)
    return F.reshape(y, x.shape[1:])


@handler("RNN", attrs=_COMMON)
@handler("GRU", attrs=_COMMON + ("linear_before_reset",))
@handler("LSTM", attrs=_COMMON + ("input_forget",))
def _recurrent(node: NodeView):
    kind = node.op_type
    n_gates, default_acts = _KINDS[kind]
    if node.attr("activation_alpha") is not None or node.attr("activation_beta") is not None:
        node.fail("activation_alpha/activation_beta are not supported (only Tanh, Sigmoid "
                  "and Relu activations)")
    if kind == "LSTM" and int(node.attr("input_forget", 0)):
        node.fail("input_forget=1 (coupled input and forget gates) is not supported")
    direction = node.attr("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        node.fail(f"direction={direction!r} must be forward, reverse or bidirectional")
    n_dirs = 2 if direction == "bidirectional" else 1
    acts = node.attr("activations")
    acts = list(default_acts) * n_dirs if acts is None else list(acts)
    if len(acts) != len(default_acts) * n_dirs:
        node.fail(f"activations {acts} needs {len(default_acts) * n_dirs} names")
    for a in acts:
        if a not in _ACTS:
            node.fail(f"activation {a!r} is not supported ({', '.join(_ACTS)})")
    clip = node.attr("clip")
    layout = int(node.attr("layout", 0))
    if layout not in (0, 1):
        node.fail(f"layout={layout} must be 0 or 1")

    x, w, r = node.input(0), node.input(1), node.input(2)
    if x.ndim != 3 or w.ndim != 3 or r.ndim != 3:
        node.fail(f"X, W and R must be rank 3, got {x.shape}, {w.shape}, {r.shape}")
    if layout:
        x = F.permute(x, (1, 0, 2))
    steps, batch, _ = x.shape
    hidden = r.shape[-1]
    if node.attr("hidden_size") is not None and int(node.attr("hidden_size")) != hidden:
        node.fail(f"hidden_size={node.attr('hidden_size')} but R has shape {r.shape}")
    gh = n_gates * hidden
    if w.shape[:2] != (n_dirs, gh) or r.shape != (n_dirs, gh, hidden):
        node.fail(f"W {w.shape} and R {r.shape} do not match {n_dirs} direction(s) of "
                  f"{n_gates} gates of {hidden} units")
    bias = node.optional(3)
    lens = node.optional(4)
    h0 = node.optional(5)
    c0 = node.optional(6) if kind == "LSTM" else None
    peep = node.optional(7) if kind == "LSTM" else None
    if layout:
        h0 = None if h0 is None else F.permute(h0, (1, 0, 2))
        c0 = None if c0 is None else F.permute(c0, (1, 0, 2))
    zeros = node.const(0.0, x.dtype)
    masks = None
    if lens is not None:
        masks = [F.reshape(F.gt(lens, node.const(t, lens.dtype)), (batch, 1))
                 for t in range(steps)]

    def act(name, v, clipped: bool = True):
        if clip is not None and clipped:
            c = float(clip)
            v = F.clamp(v, -c, c)
        return node.emit(_ACTS[name], v)

    ys, hs, cs = [], [], []
    for d in range(n_dirs):
        reverse = direction == "reverse" or d == 1
        f_act, *rest = acts[d * len(default_acts):(d + 1) * len(default_acts)]
        w_d, r_d = _take(w, d), _take(r, d)
        b_d = _take(bias, d) if bias is not None else None
        xw = F.matmul(x, F.transpose(w_d, 0, 1))                     # (T, B, gH)
        if b_d is not None:
            xw = F.add(xw, _cols(b_d, 0, gh))
        rb = _cols(b_d, gh, 2 * gh) if b_d is not None else None
        r_t = F.transpose(r_d, 0, 1)                                  # (H, gH)
        h = _take(h0, d) if h0 is not None else F.broadcast_to(zeros, (batch, hidden))
        c = None
        if kind == "LSTM":
            c = _take(c0, d) if c0 is not None else F.broadcast_to(zeros, (batch, hidden))
            p_d = _take(peep, d) if peep is not None else None
        out = [None] * steps
        for t in (reversed(range(steps)) if reverse else range(steps)):
            xt = _take(xw, t)
            if kind == "RNN":
                pre = F.add(xt, F.matmul(h, r_t))
                h_new = act(f_act, pre if rb is None else F.add(pre, rb))
                c_new = None
            elif kind == "GRU":
                h_new = _gru_step(node, xt, h, r_t, rb, hidden, f_act, rest[0], act)
                c_new = None
            else:
                h_new, c_new = _lstm_step(xt, h, c, r_t, rb, p_d, hidden, f_act, rest, act)
            if masks is not None:
                m = masks[t]
                y = F.where(m, h_new, zeros)
                h = F.where(m, h_new, h)
                c = F.where(m, c_new, c) if c_new is not None else c
            else:
                y, h, c = h_new, h_new, c_new
            out[t] = y
        ys.append(F.stack(out, 0))
        hs.append(h)
        cs.append(c)
    y = F.stack(ys, 1)                                                # (T, dirs, B, H)
    y_h = F.stack(hs, 0)
    y_c = F.stack(cs, 0) if kind == "LSTM" else None
    if layout:
        y = F.permute(y, (2, 0, 1, 3))
        y_h = F.permute(y_h, (1, 0, 2))
        y_c = F.permute(y_c, (1, 0, 2)) if y_c is not None else None
    return [y, y_h, y_c] if kind == "LSTM" else [y, y_h]


def _gru_step(node, xt, h, r_t, rb, hidden, f_act, g_act, act):
    hr = F.matmul(h, r_t)                                             # (B, 3H)
    if rb is not None:
        hr = F.add(hr, rb)
    z = act(f_act, F.add(_cols(xt, 0, hidden), _cols(hr, 0, hidden)))
    rr = act(f_act, F.add(_cols(xt, hidden, 2 * hidden), _cols(hr, hidden, 2 * hidden)))
    if int(node.attr("linear_before_reset", 0)):
        cand = F.mul(rr, _cols(hr, 2 * hidden, 3 * hidden))
    else:
        cand = F.matmul(F.mul(rr, h), _cols(r_t, 2 * hidden, 3 * hidden))
        if rb is not None:
            cand = F.add(cand, _cols(rb, 2 * hidden, 3 * hidden))
    ht = act(g_act, F.add(_cols(xt, 2 * hidden, 3 * hidden), cand))
    one = node.const(1.0, xt.dtype)
    return F.add(F.mul(F.sub(one, z), ht), F.mul(z, h))


def _lstm_step(xt, h, c, r_t, rb, p, hidden, f_act, rest, act):
    g_act, h_act = rest
    pre = F.add(xt, F.matmul(h, r_t))
    if rb is not None:
        pre = F.add(pre, rb)
    gi, go, gf, gc = (_cols(pre, k * hidden, (k + 1) * hidden) for k in range(4))
    if p is not None:
        gi = F.add(gi, F.mul(_cols(p, 0, hidden), c))
        gf = F.add(gf, F.mul(_cols(p, 2 * hidden, 3 * hidden), c))
    i, f = act(f_act, gi), act(f_act, gf)
    c_new = F.add(F.mul(f, c), F.mul(i, act(g_act, gc)))
    if p is not None:
        go = F.add(go, F.mul(_cols(p, hidden, 2 * hidden), c_new))
    o = act(f_act, go)
    # the cell state's activation takes it unclipped: clip bounds the gates' inputs
    # (onnxruntime's reading of the spec)
    return F.mul(o, act(h_act, c_new, clipped=False)), c_new
