"""ONNX operator handlers: each maps one operator onto registry ops or ``frontend.F``.

Every handler refuses what it cannot express exactly (``node.fail`` names the node); the
window geometry (auto_pad, pads, ceil_mode) is computed once in ``_window`` for Conv,
ConvTranspose and the pools.
"""
from __future__ import annotations

import numpy as np

from irgraph.ops.conv_geometry import out_size

from .. import functional as F
from .handlers import HANDLERS, IR_DTYPES, TRAINING, NodeView, handler, tensor_array

_AUTO_PAD = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


# ---------------------------------------------------------------- window geometry
def _ints(node: NodeView, name: str, n: int, default: int) -> tuple[int, ...]:
    v = node.attr(name)
    if v is None:
        return (default,) * n
    v = tuple(int(a) for a in v)
    if len(v) != n:
        node.fail(f"attribute {name}={list(v)} needs {n} values (one per spatial axis)")
    return v


def _window(node: NodeView, spatial, kernel, *, dilated: bool = True,
            ceil_mode: bool = False):
    """(strides, dilations, per-side IR padding (b0, a0, b1, a1, ...)) from the ONNX
    attributes; SAME_UPPER/SAME_LOWER give ceil(S / stride) outputs, the extra padding at
    the end/start."""
    d = len(spatial)
    strides = _ints(node, "strides", d, 1)
    dil = _ints(node, "dilations", d, 1) if dilated else (1,) * d
    if any(s < 1 for s in strides) or any(q < 1 for q in dil):
        node.fail(f"strides {list(strides)} and dilations {list(dil)} must be >= 1")
    auto = node.attr("auto_pad", "NOTSET")
    if auto not in _AUTO_PAD:
        node.fail(f"auto_pad={auto!r} is not one of {', '.join(_AUTO_PAD)}")
    if auto == "NOTSET":
        pads = _ints(node, "pads", 2 * d, 0)
        if any(p < 0 for p in pads):
            node.fail(f"negative pads {list(pads)} are not supported")
        per_side = tuple(p for i in range(d) for p in (pads[i], pads[d + i]))
    elif auto == "VALID":
        per_side = (0,) * (2 * d)
    else:
        if node.attr("pads") is not None:
            node.fail(f"pads and auto_pad={auto} cannot both be given")
        per_side = []
        for s, k, st, q in zip(spatial, kernel, strides, dil):
            total = max(0, (-(-s // st) - 1) * st + (k - 1) * q + 1 - s)
            small, big = total // 2, total - total // 2
            per_side += [small, big] if auto == "SAME_UPPER" else [big, small]
        per_side = tuple(per_side)
    return strides, dil, per_side


def _kernel(node: NodeView, d: int, from_weight=None) -> tuple[int, ...]:
    k = node.attr("kernel_shape")
    if k is None:
        if from_weight is None:
            node.fail("attribute kernel_shape is required")
        return tuple(from_weight)
    k = tuple(int(a) for a in k)
    if len(k) != d or (from_weight is not None and k != tuple(from_weight)):
        node.fail(f"kernel_shape {list(k)} does not match the "
                  f"{'weight ' + str(list(from_weight)) if from_weight else 'input rank'}")
    return k


def _spatial_input(node: NodeView, x, what="X"):
    if x.ndim < 3:
        node.fail(f"{what} must be (N, C, D1, ...), got shape {x.shape}")
    return x.shape[2:]


def _bias(node: NodeView, y, i: int):
    if not node.has(i):
        return y
    b = node.input(i)
    return F.add(y, F.reshape(b, (1, -1) + (1,) * (y.ndim - 2)))


# ---------------------------------------------------------------- convolution
@handler("Conv", attrs=("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"))
def _conv(node: NodeView):
    x, w = node.input(0), node.input(1)
    sp = _spatial_input(node, x)
    k = _kernel(node, len(sp), w.shape[2:])
    st, dl, pads = _window(node, sp, k)
    y = node.emit("conv", x, w, stride=st, padding=pads, dilation=dl,
                  groups=int(node.attr("group", 1)))
    return _bias(node, y, 2)


@handler("ConvTranspose", attrs=("auto_pad", "dilations", "group", "kernel_shape",
                                 "output_padding", "output_shape", "pads", "strides"))
def _conv_transpose(node: NodeView):
    """``conv_input_grad``: ONNX's W (C_in, C_out/group, *k) is the weight of the forward
    convolution whose input gradient this is. Output size per axis:
    stride (in - 1) + output_padding + dilation (k - 1) + 1 - pad_begin - pad_end, or
    ``output_shape`` with the total padding split as the ONNX specification says."""
    x, w = node.input(0), node.input(1)
    sp = _spatial_input(node, x)
    d = len(sp)
    k = _kernel(node, d, w.shape[2:])
    st = _ints(node, "strides", d, 1)
    dl = _ints(node, "dilations", d, 1)
    opad = _ints(node, "output_padding", d, 0)
    auto = node.attr("auto_pad", "NOTSET")
    if auto not in _AUTO_PAD:
        node.fail(f"auto_pad={auto!r} is not one of {', '.join(_AUTO_PAD)}")
    full = [st[i] * (sp[i] - 1) + opad[i] + (k[i] - 1) * dl[i] + 1 for i in range(d)]
    shape = node.attr("output_shape")
    if shape is not None or auto in ("SAME_UPPER", "SAME_LOWER"):
        if node.attr("pads") is not None:
            node.fail("pads cannot be given with output_shape or auto_pad SAME_*")
        out = (list(shape)[-d:] if shape is not None else [sp[i] * st[i] for i in range(d)])
        pads = []
        for i in range(d):
            total = full[i] - out[i]
            if total < 0:                 # extra outputs at the end (bias only), either mode
                pads += [0, total]
                continue
            half = total // 2
            pads += [half, total - half] if auto == "SAME_UPPER" else [total - half, half]
    elif auto == "VALID":
        pads = [0] * (2 * d)
    else:
        p = _ints(node, "pads", 2 * d, 0)
        if any(v < 0 for v in p):
            node.fail(f"negative pads {list(p)} are not supported")
        pads = [v for i in range(d) for v in (p[i], p[d + i])]
    size = tuple(full[i] - pads[2 * i] - pads[2 * i + 1] for i in range(d))
    if any(p < 0 for p in pads[0::2]):
        node.fail(f"a negative begin padding {pads[0::2]}")
    pads = [max(p, 0) for p in pads]
    if any(n < 1 for n in size):
        node.fail(f"the output size {list(size)} is empty")
    # the forward convolution over `size` must see exactly x's positions: output padding
    # that adds whole windows pads x with zeros (they carry nothing)
    need = tuple(out_size(size[i], k[i], st[i], pads[2 * i], pads[2 * i + 1], dl[i])
                 for i in range(d))
    if any(m < n for m, n in zip(need, sp)):
        node.fail(f"pads {pads} crop positions the input's windows need")
    if need != tuple(sp):
        x = node.emit("pad", x, pads=(0, 0, 0, 0) + tuple(
            p for m, n in zip(need, sp) for p in (0, m - n)))
    y = node.emit("conv_input_grad", w, x, input_size=size, stride=st, padding=tuple(pads),
                  dilation=dl, groups=int(node.attr("group", 1)))
    return _bias(node, y, 2)


# ---------------------------------------------------------------- pooling
def _ceil(node: NodeView) -> bool:
    c = int(node.attr("ceil_mode", 0))
    if c not in (0, 1):
        node.fail(f"ceil_mode={c} must be 0 or 1")
    return bool(c)


@handler("MaxPool", attrs=("auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads",
                           "storage_order", "strides"))
def _max_pool(node: NodeView):
    if node.wants(1):
        node.fail("the Indices output is not supported (the IR's max_pool has no index "
                  "output in ONNX's layout)")
    # storage_order only orders the Indices output, which is refused above
    x = node.input(0)
    if x.dtype not in ("float32", "float64"):
        node.fail(f"max pooling of {x.dtype} is not supported (the IR pools floats)")
    sp = _spatial_input(node, x)
    k = _kernel(node, len(sp))
    st, dl, pads = _window(node, sp, k)
    ceil = _ceil(node)
    if _over_half(k, dl, pads):
        # the op keeps torch's limit (padding <= half the window): pad with -inf first
        if ceil:
            node.fail(f"pads {list(pads)} wider than half the window with ceil_mode=1")
        x = node.emit("pad", x, pads=(0, 0, 0, 0) + pads, value=float("-inf"))
        pads = (0,) * len(pads)
    return node.emit("max_pool", x, kernel_size=k, stride=st, padding=pads, dilation=dl,
                     ceil_mode=ceil)


def _over_half(k, dl, pads) -> bool:
    return any(max(pads[2 * i], pads[2 * i + 1]) > ((k[i] - 1) * dl[i] + 1) // 2
               for i in range(len(k)))


def _axis_counts(size, k, st, dl, before, after, n_out, lo, hi):
    """Per output position along one axis: how many of its k taps fall in [lo, hi)."""
    pos = np.arange(n_out)[:, None] * st + np.arange(k)[None, :] * dl - before
    return ((pos >= lo) & (pos < hi)).sum(axis=1)


def _windows_sum(node: NodeView, x, k, st, dl, pads, ceil_mode):
    """(sum over each window of x (zero padding), outputs per axis, pads with the right
    extension ceil_mode needs): ``unfold`` then a sum over the kernel axes."""
    sp = x.shape[2:]
    d = len(sp)
    outs = [out_size(sp[i], k[i], st[i], pads[2 * i], pads[2 * i + 1], dl[i], ceil_mode)
            for i in range(d)]
    ext = list(pads)
    for i in range(d):       # right padding so that the floor rule gives `outs`
        need = (outs[i] - 1) * st[i] + (k[i] - 1) * dl[i] + 1 - (sp[i] + pads[2 * i])
        ext[2 * i + 1] = max(pads[2 * i + 1], need)
    cols = node.emit("unfold", x, kernel_size=k, stride=st, padding=tuple(ext), dilation=dl)
    return F.sum(cols, tuple(range(2, 2 + d))), outs, ext


@handler("AveragePool", attrs=("auto_pad", "ceil_mode", "count_include_pad", "dilations",
                               "kernel_shape", "pads", "strides"))
def _avg_pool(node: NodeView):
    """The ``avg_pool`` op when it matches (no dilation, floor mode); otherwise the window
    sums (``unfold``) divided by the number of taps that fall in the input (or, with
    count_include_pad, in the input and its explicit padding)."""
    x = node.input(0)
    sp = _spatial_input(node, x)
    k = _kernel(node, len(sp))
    st, dl, pads = _window(node, sp, k)
    cip = int(node.attr("count_include_pad", 0))
    if cip not in (0, 1):
        node.fail(f"count_include_pad={cip} must be 0 or 1")
    ceil = _ceil(node)
    if all(q == 1 for q in dl) and not ceil and not _over_half(k, dl, pads):
        return node.emit("avg_pool", x, kernel_size=k, stride=st, padding=pads,
                         ceil_mode=False, count_include_pad=bool(cip), divisor_override=None)
    total, outs, _ = _windows_sum(node, x, k, st, dl, pads, ceil)
    div = np.ones(())
    for i in range(len(sp)):
        lo, hi = (-pads[2 * i], sp[i] + pads[2 * i + 1]) if cip else (0, sp[i])
        c = _axis_counts(sp[i], k[i], st[i], dl[i], pads[2 * i], pads[2 * i + 1], outs[i],
                         lo, hi)
        div = np.multiply.outer(div, c)
    div = np.maximum(div, 1).astype(x.type.np_dtype)
    return F.div(total, node.const(div, x.dtype))


@handler("LpPool", attrs=("auto_pad", "ceil_mode", "dilations", "kernel_shape", "p", "pads",
                          "strides"))
def _lp_pool(node: NodeView):
    """(sum over the window of |x|^p) ^ (1/p); padding counts as zeros."""
    x = node.input(0)
    sp = _spatial_input(node, x)
    k = _kernel(node, len(sp))
    st, dl, pads = _window(node, sp, k)
    p = float(node.attr("p", 2))
    if p <= 0:
        node.fail(f"p={p} must be positive")
    xp = F.square(x) if p == 2 else F.pow(F.abs(x), node.const(p, x.dtype))
    total, _, _ = _windows_sum(node, xp, k, st, dl, pads, _ceil(node))
    return F.sqrt(total) if p == 2 else F.pow(total, node.const(1.0 / p, x.dtype))


@handler("GlobalAveragePool")
def _global_avg(node: NodeView):
    x = node.input(0)
    return F.mean(x, tuple(range(2, x.ndim)), keepdim=True)


@handler("GlobalMaxPool")
def _global_max(node: NodeView):
    x = node.input(0)
    return F.amax(x, tuple(range(2, x.ndim)), keepdim=True)


# ---------------------------------------------------------------- normalization
@handler("BatchNormalization", attrs=("epsilon", "momentum", "training_mode", "spatial",
                                      "is_test", "consumed_inputs"))
def _batch_norm(node: NodeView):
    """Inference: the ``batch_norm`` op. Training mode: y from the op (batch statistics,
    biased variance); ONNX's running outputs are ``m * running + (1 - m) * batch`` with
    the BIASED batch variance (the op's use torch's unbiased one), so they are built from
    core reductions."""
    if int(node.attr("spatial", 1)) != 1:
        node.fail("spatial=0 (per-activation statistics) is not supported")
    x, scale, b, mean, var = (node.input(i) for i in range(5))
    eps = float(node.attr("epsilon", 1e-5))
    m = float(node.attr("momentum", 0.9))
    training = bool(int(node.attr("training_mode", 0))) or (node.opset < 7 and not int(
        node.attr("is_test", 0)) and node.n_outputs > 1)
    if node.opset < 14 and node.n_outputs > 1 and not training:
        training = True
    y, _, _ = node.emit("batch_norm", x, scale, b, mean, var, training=training, eps=eps,
                        momentum=1.0 - m, axis=1)
    if not training:
        if node.n_outputs > 1:
            node.fail("running-statistic outputs in inference mode are not supported")
        return [y]
    axes = (0,) + tuple(range(2, x.ndim))
    bm = F.mean(x, axes)
    bv = F.mean(F.square(F.sub(x, F.reshape(bm, (1, -1) + (1,) * (x.ndim - 2)))), axes)
    mm = node.const(m, x.dtype)
    one_m = node.const(1.0 - m, x.dtype)
    new_mean = F.add(F.mul(mean, mm), F.mul(bm, one_m))
    new_var = F.add(F.mul(var, mm), F.mul(bv, one_m))
    if node.opset < 14 and node.n_outputs > 3:
        node.fail("the saved_mean/saved_var outputs are not supported")
    return [y, new_mean, new_var]


# ---------------------------------------------------------------- matrix products
@handler("Gemm", attrs=("alpha", "beta", "transA", "transB", "broadcast"))
def _gemm(node: NodeView):
    a, b = node.input(0), node.input(1)
    if a.ndim != 2 or b.ndim != 2:
        node.fail(f"A and B must be matrices, got {a.shape} and {b.shape}")
    if int(node.attr("transA", 0)):
        a = F.transpose(a, 0, 1)
    if int(node.attr("transB", 0)):
        b = F.transpose(b, 0, 1)
    y = node.emit("matmul", a, b)
    alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
    if alpha != 1.0:
        y = node.emit("mul", y, node.const(alpha, y.dtype))
    if node.has(2):
        c = node.input(2)
        if beta != 1.0:
            c = node.emit("mul", c, node.const(beta, c.dtype))
        y = node.emit("add", y, c)
    return y


@handler("MatMul")
def _matmul(node: NodeView):
    return node.emit("matmul", node.input(0), node.input(1))


# ---------------------------------------------------------------- elementwise
_BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul"}


def _same_dtype(node: NodeView, a, b):
    if a.dtype != b.dtype:
        node.fail(f"operands have different types {a.dtype} and {b.dtype}")


@handler(*_BINARY, attrs=("broadcast", "axis", "consumed_inputs"))
def _binary(node: NodeView):
    a, b = node.input(0), node.input(1)
    _legacy_broadcast(node)
    _same_dtype(node, a, b)
    return node.emit(_BINARY[node.op_type], a, b)


def _legacy_broadcast(node: NodeView):
    if node.attr("axis") is not None:
        node.fail("the opset < 7 broadcast 'axis' attribute is not supported")


@handler("Div", attrs=("broadcast", "axis", "consumed_inputs"))
def _div(node: NodeView):
    """Integer division truncates toward zero in ONNX (the IR's ``div`` floors)."""
    a, b = node.input(0), node.input(1)
    _legacy_broadcast(node)
    _same_dtype(node, a, b)
    if a.type.is_float:
        return node.emit("div", a, b)
    return F.div(a, b, rounding_mode="trunc")


@handler("Pow", attrs=("broadcast", "axis"))
def _pow(node: NodeView):
    """The result has the base's type (ONNX's Pow(T, T1)): a float base takes the exponent
    cast to its type; an integer base is raised in float64 and cast back (exact while the
    result is below 2^53)."""
    a, b = node.input(0), node.input(1)
    _legacy_broadcast(node)
    if a.type.is_float:
        return node.emit("pow", a, b if b.dtype == a.dtype else F.cast(b, a.dtype))
    if a.dtype == "bool" or b.dtype == "bool":
        node.fail("Pow of bool is not supported")
    y = node.emit("pow", F.cast(a, "float64"), F.cast(b, "float64"))
    return F.cast(y, a.dtype)


_UNARY = {"Relu": "relu", "Tanh": "tanh", "Sigmoid": "sigmoid", "Exp": "exp", "Log": "log",
          "Sqrt": "sqrt", "Abs": "abs", "Neg": "neg"}


@handler(*_UNARY, attrs=("consumed_inputs",))
def _unary(node: NodeView):
    x = node.input(0)
    op = _UNARY[node.op_type]
    if op not in ("relu", "abs", "neg") and not x.type.is_float:
        node.fail(f"{node.op_type} of {x.dtype} is not supported")
    return node.emit(op, x)


@handler("Clip", attrs=("min", "max", "consumed_inputs"))
def _clip(node: NodeView):
    """min then max, as ONNX (so min > max gives max everywhere)."""
    x = node.input(0)
    if node.opset < 11:
        lo, hi = node.attr("min"), node.attr("max")
        lo = None if lo is None else node.const(lo, x.dtype)
        hi = None if hi is None else node.const(hi, x.dtype)
    else:
        lo, hi = node.optional(1), node.optional(2)
    if lo is not None:
        lo = _bound(lo, x)
        x = node.emit("where", node.emit("lt", x, lo), lo, x)
    if hi is not None:
        hi = _bound(hi, x)
        x = node.emit("where", node.emit("gt", x, hi), hi, x)
    return x


def _bound(v, x):
    """A one-element bound as a 0-d tensor (``where`` broadcasts it: no tensor of x's shape
    filled with it), any other as x's shape."""
    if v.type.size == 1:
        return F.reshape(v, ()) if v.shape != () else v
    return F.broadcast_to(v, x.shape)


@handler("HardSigmoid", attrs=("alpha", "beta", "consumed_inputs"))
def _hard_sigmoid(node: NodeView):
    """max(0, min(1, alpha x + beta))."""
    x = node.input(0)
    alpha, beta = float(node.attr("alpha", 0.2)), float(node.attr("beta", 0.5))
    y = F.add(F.mul(x, node.const(alpha, x.dtype)), node.const(beta, x.dtype))
    y = node.emit("minimum", y, _bound(node.const(1.0, x.dtype), y))
    return node.emit("maximum", y, _bound(node.const(0.0, x.dtype), y))


def _softmax(node: NodeView, op: str):
    """Opset >= 13: along ``axis`` (default -1). Before: the input is coerced to 2-D
    (prod(shape[:axis]), prod(shape[axis:])) (default axis 1) and normalized per row."""
    x = node.input(0)
    if node.opset >= 13:
        return node.emit(op, x, axis=_axis(node, int(node.attr("axis", -1)), max(x.ndim, 1)))
    axis = _axis(node, int(node.attr("axis", 1)), max(x.ndim, 1))
    rows = int(np.prod(x.shape[:axis], dtype=np.int64))
    y = node.emit(op, F.reshape(x, (rows, -1)), axis=1)
    return F.reshape(y, x.shape)


@handler("Softmax", attrs=("axis",))
def _softmax_h(node: NodeView):
    return _softmax(node, "softmax")


@handler("LogSoftmax", attrs=("axis",))
def _log_softmax_h(node: NodeView):
    return _softmax(node, "log_softmax")


# ---------------------------------------------------------------- shapes
def _axis(node: NodeView, axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        node.fail(f"axis {axis} is out of range for rank {rank}")
    return axis % rank


@handler("Reshape", attrs=("allowzero", "shape", "consumed_inputs"))
def _reshape(node: NodeView):
    """0 copies the input's dimension (unless allowzero), -1 is inferred."""
    x = node.input(0)
    shape = (node.attr("shape") if node.opset < 5 else node.known(1, "shape"))
    shape = [int(s) for s in np.asarray(shape).reshape(-1)]
    if not int(node.attr("allowzero", 0)):
        shape = [x.shape[i] if s == 0 and i < x.ndim else s for i, s in enumerate(shape)]
    return F.reshape(x, shape)


@handler("Flatten", attrs=("axis",))
def _flatten(node: NodeView):
    x = node.input(0)
    axis = int(node.attr("axis", 1))
    axis = axis + x.ndim if axis < 0 else axis
    if not 0 <= axis <= x.ndim:
        node.fail(f"axis {axis} out of range for rank {x.ndim}")
    rows = int(np.prod(x.shape[:axis], dtype=np.int64))
    cols = int(np.prod(x.shape[axis:], dtype=np.int64))
    return F.reshape(x, (rows, cols))


@handler("Transpose", attrs=("perm",))
def _transpose(node: NodeView):
    x = node.input(0)
    perm = node.attr("perm")
    perm = tuple(reversed(range(x.ndim))) if perm is None else tuple(int(p) for p in perm)
    if sorted(perm) != list(range(x.ndim)):
        node.fail(f"perm {list(perm)} is not a permutation of {x.ndim} axes")
    return x if perm == tuple(range(x.ndim)) else node.emit("transpose", x, perm=perm)


@handler("Concat", attrs=("axis",))
def _concat(node: NodeView):
    xs = [node.input(i) for i in range(node.n_inputs) if node.has(i)]
    if node.attr("axis") is None:
        node.fail("attribute axis is required")
    for x in xs[1:]:
        _same_dtype(node, xs[0], x)
    return node.emit("concat", *xs, axis=_axis(node, int(node.attr("axis")), xs[0].ndim))


@handler("Identity")
def _identity(node: NodeView):
    if node.is_known(0):
        return node.known(0, "input")
    return node.input(0)


@handler("Constant", attrs=("value", "value_float", "value_floats", "value_int",
                            "value_ints", "sparse_value", "value_string", "value_strings"))
def _constant(node: NodeView):
    if len(node.attrs) != 1:
        node.fail("exactly one value attribute is required")
    (name, v), = node.attrs.items()
    if name == "value":
        return _checked_tensor(node, v)
    if name in ("value_float", "value_floats"):
        return np.asarray(v, np.float32)
    if name in ("value_int", "value_ints"):
        return np.asarray(v, np.int64)
    node.fail(f"attribute {name} is not supported (no string or sparse tensors)")


def _checked_tensor(node: NodeView, t) -> np.ndarray:
    from .errors import OnnxImportError
    try:
        return tensor_array(t, "its value")
    except OnnxImportError as e:
        node.fail(str(e))


@handler("Shape", attrs=("start", "end"))
def _shape(node: NodeView):
    """Static shapes: the result is a known int64 vector."""
    name = node.node.input[0]
    shape = (node.ctx.static[name].shape if name in node.ctx.static
             else node.input(0).shape)
    r = len(shape)
    start, end = int(node.attr("start", 0)), node.attr("end")
    end = r if end is None else int(end)
    start, end = (min(max(v + r if v < 0 else v, 0), r) for v in (start, end))
    return np.asarray(shape[start:end], np.int64)


@handler("Cast", attrs=("to", "saturate", "round_mode"), static=True)
def _cast(node: NodeView):
    to = int(node.attr("to"))
    if to not in IR_DTYPES:
        import onnx
        node.fail(f"cast to {onnx.TensorProto.DataType.Name(to)}: the IR has float32, float64, "
                  f"int32, int64 and bool only")
    return F.cast(node.input(0), IR_DTYPES[to])


def _static_only(node: NodeView):
    node.fail(f"{node.op_type} is supported only on values known at import time (shape "
              f"arithmetic); here an input is computed at run time")


_COMPARE = {"Equal": "eq", "Less": "lt", "Greater": "gt", "LessOrEqual": "le",
            "GreaterOrEqual": "ge"}


@handler(*_COMPARE, static=True)
def _compare(node: NodeView):
    a, b = node.input(0), node.input(1)
    _same_dtype(node, a, b)
    return node.emit(_COMPARE[node.op_type], a, b)


@handler("Where", static=True)
def _where(node: NodeView):
    c, a, b = node.input(0), node.input(1), node.input(2)
    _same_dtype(node, a, b)
    return node.emit("where", c, a, b)


@handler("CastLike", attrs=("saturate", "round_mode"), static=True)
def _cast_like(node: NodeView):
    x, like = node.input(0), node.input(1)
    return x if x.dtype == like.dtype else F.cast(x, like.dtype)


for _op, _attrs in (("Gather", ("axis",)), ("Range", ()), ("ConstantOfShape", ("value",)),
                    ("Expand", ())):
    handler(_op, attrs=_attrs, static=True)(_static_only)
# shape arithmetic of exporters folds on known values, and otherwise runs as a tensor op
for (_d, _o), _h in list(HANDLERS.items()):
    if _d == "" and _o in ("Add", "Sub", "Mul", "Div", "Concat", "Identity", "Reshape",
                           "Transpose", "Slice", "Squeeze", "Unsqueeze", "Neg", "Abs", "Min",
                           "Max", "Flatten", "Sum", "Mod", "Floor", "Ceil"):
        _h.static = True


def _axes_arg(node: NodeView, input_index: int, attr_from_opset: int):
    """Axes as an attribute (opset < ``attr_from_opset``) or as an optional input."""
    if node.opset < attr_from_opset:
        v = node.attr("axes")
        return None if v is None else [int(a) for a in v]
    if node.attr("axes") is not None:
        node.fail(f"axes is an input since opset {attr_from_opset}, not an attribute")
    if not node.has(input_index):
        return None
    return [int(a) for a in np.asarray(node.known(input_index, "axes")).reshape(-1)]


@handler("Squeeze", attrs=("axes",), static=True)
def _squeeze(node: NodeView):
    x = node.input(0)
    axes = _axes_arg(node, 1, 13)
    if axes is None:
        return F.reshape(x, tuple(s for s in x.shape if s != 1))
    axes = {_axis(node, a, x.ndim) for a in axes}
    for a in axes:
        if x.shape[a] != 1:
            node.fail(f"cannot squeeze axis {a} of size {x.shape[a]}")
    return F.reshape(x, tuple(s for i, s in enumerate(x.shape) if i not in axes))


@handler("Unsqueeze", attrs=("axes",), static=True)
def _unsqueeze(node: NodeView):
    x = node.input(0)
    axes = _axes_arg(node, 1, 13)
    if axes is None:
        node.fail("axes are required")
    r = x.ndim + len(axes)
    axes = sorted(_axis(node, a, r) for a in axes)
    if len(set(axes)) != len(axes):
        node.fail(f"axes {axes} repeat an axis")
    shape = list(x.shape)
    for a in axes:
        shape.insert(a, 1)
    return F.reshape(x, tuple(shape))


@handler("Slice", attrs=("starts", "ends", "axes"), static=True)
def _slice(node: NodeView):
    """ONNX clamps starts/ends per axis; translated to the IR's Python slices (an end of -1
    after clamping with a negative step means "past index 0": the IR's stop -size-1)."""
    x = node.input(0)
    if node.opset < 10:
        starts, ends = node.attr("starts"), node.attr("ends")
        axes, steps = node.attr("axes"), None
    else:
        starts = node.known(1, "starts")
        ends = node.known(2, "ends")
        axes = node.known(3, "axes") if node.has(3) else None
        steps = node.known(4, "steps") if node.has(4) else None
    starts = [int(v) for v in np.asarray(starts).reshape(-1)]
    ends = [int(v) for v in np.asarray(ends).reshape(-1)]
    axes = (list(range(len(starts))) if axes is None
            else [_axis(node, int(a), x.ndim) for a in np.asarray(axes).reshape(-1)])
    steps = [1] * len(starts) if steps is None else [int(v) for v in np.asarray(
        steps).reshape(-1)]
    if not len(starts) == len(ends) == len(axes) == len(steps) or len(set(axes)) != len(axes):
        node.fail("starts, ends, axes and steps must have one entry per distinct axis")
    b, e, s = [0] * x.ndim, list(x.shape), [1] * x.ndim
    for st, en, ax, sp in zip(starts, ends, axes, steps):
        dim = x.shape[ax]
        if sp == 0:
            node.fail("a step of 0")
        st = st + dim if st < 0 else st
        en = en + dim if en < 0 else en
        if sp > 0:
            st, en = min(max(st, 0), dim), min(max(en, 0), dim)
        else:
            st, en = min(max(st, 0), dim - 1), min(max(en, -1), dim - 1)
            if en == -1:
                en = -dim - 1
        b[ax], e[ax], s[ax] = st, en, sp
    return node.emit("slice", x, starts=tuple(b), stops=tuple(e), steps=tuple(s))


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate",
              "wrap": "circular"}


@handler("Pad", attrs=("mode", "pads", "value"))
def _pad(node: NodeView):
    """pads (x1_begin, x2_begin, ..., x1_end, x2_end) as an input (opset >= 11, with
    optional constant_value and, from 18, axes) or an attribute; negative pads crop."""
    x = node.input(0)
    mode = node.attr("mode", "constant")
    if mode not in _PAD_MODES:
        node.fail(f"mode={mode!r} is not supported ({', '.join(_PAD_MODES)})")
    if node.opset < 11:
        pads, value, axes = node.attr("pads"), float(node.attr("value", 0.0)), None
    else:
        pads = node.known(1, "pads")
        value = 0.0
        if node.has(2):
            cv = node.known(2, "constant_value")
            value = float(np.asarray(cv).reshape(-1)[0])
        axes = node.known(3, "axes") if node.has(3) else None
    pads = [int(p) for p in np.asarray(pads).reshape(-1)]
    axes = (list(range(x.ndim)) if axes is None
            else [_axis(node, int(a), x.ndim) for a in np.asarray(axes).reshape(-1)])
    n = len(axes)
    if len(pads) != 2 * n:
        node.fail(f"pads {pads} needs {2 * n} values")
    if mode != "constant" and value != 0.0:
        node.fail(f"a constant_value with mode={mode}")
    per = [0] * (2 * x.ndim)
    for i, a in enumerate(axes):
        per[2 * a], per[2 * a + 1] = pads[i], pads[n + i]
    torch_order = [v for a in reversed(range(x.ndim)) for v in (per[2 * a], per[2 * a + 1])]
    if mode == "circular" and any(p < 0 for p in per):
        node.fail("negative pads with mode=wrap are not supported")
    return F.pad(x, torch_order, mode=_PAD_MODES[mode], value=value)


# ---------------------------------------------------------------- reductions
_REDUCE = {"ReduceSum": ("sum", 13), "ReduceMean": ("mean", 18), "ReduceMax": ("max", 18),
           "ReduceMin": ("min", 18)}


@handler(*_REDUCE, attrs=("axes", "keepdims", "noop_with_empty_axes"))
def _reduce(node: NodeView):
    op, since = _REDUCE[node.op_type]
    x = node.input(0)
    axes = _axes_arg(node, 1, since)
    keep = bool(int(node.attr("keepdims", 1)))
    if not axes:
        if int(node.attr("noop_with_empty_axes", 0)):
            return x
        axes = list(range(x.ndim))
    axes = tuple(sorted({_axis(node, a, x.ndim) for a in axes}))
    if op == "mean" and not x.type.is_float:
        node.fail(f"ReduceMean of {x.dtype} is not supported")
    if op in ("max", "min") and any(x.shape[a] == 0 for a in axes):
        # nothing to reduce: ONNX's result is the identity (-inf/+inf, False/True)
        shape = tuple(1 if i in axes else n for i, n in enumerate(x.shape) if keep or
                      i not in axes)
        if x.dtype == "bool":
            value = op == "min"
        elif x.type.is_float:
            value = float("-inf") if op == "max" else float("inf")
        else:
            info = np.iinfo(x.type.np_dtype)
            value = info.min if op == "max" else info.max
        return node.const(np.full(shape, value, x.type.np_dtype), x.dtype)
    if op in ("max", "min") and x.dtype == "bool":     # any / all
        y = node.emit(op, F.cast(x, "int32"), axis=axes, keepdims=keep)
        return F.cast(y, "bool")
    return node.emit(op, x, axis=axes, keepdims=keep)


@handler("Max", "Min", attrs=("consumed_inputs",))
def _variadic_extremum(node: NodeView):
    xs = [node.input(i) for i in range(node.n_inputs) if node.has(i)]
    if not xs:
        node.fail("needs at least one input")
    y = xs[0]
    for x in xs[1:]:
        _same_dtype(node, y, x)
        y = node.emit("maximum" if node.op_type == "Max" else "minimum", y, x)
    return y


# ---------------------------------------------------------------- training operators
def _training_io(node: NodeView, n_state: int):
    """(R, T, per-tensor groups [(X, G, *states)])."""
    n = node.n_inputs - 2
    if n % (2 + n_state):
        node.fail(f"expects R, T and {2 + n_state} inputs per optimized tensor, got "
                  f"{node.n_inputs} inputs")
    k = n // (2 + n_state)
    r, t = node.input(0), node.input(1)
    groups = [[node.input(2 + j * k + i) for j in range(2 + n_state)] for i in range(k)]
    for grp in groups:
        x = grp[0]
        if not x.type.is_float or any(v.type != x.type for v in grp):
            node.fail(f"X, G and the states must be float tensors of one type, got "
                      f"{[str(v.type) for v in grp]}")
    return r, t, groups


def _scalar_as(node, v, like):
    v = F.reshape(v, ()) if v.shape != () else v
    return v if v.dtype == like.dtype else F.cast(v, like.dtype)


def _regularized(node, x, g, coeff: float):
    return g if coeff == 0.0 else F.add(F.mul(x, node.const(coeff, x.dtype)), g)


def _outputs(groups_out, k):
    """ONNX orders the outputs X_new..., then each state kind over all tensors."""
    return [grp[j] for j in range(len(groups_out[0])) for grp in groups_out]


@handler("Adagrad", attrs=("decay_factor", "epsilon", "norm_coefficient"), domain=TRAINING)
def _adagrad(node: NodeView):
    """``adagrad_update`` with lr = R / (1 + T decay_factor), g = norm_coefficient X + G."""
    r, t, groups = _training_io(node, 1)
    decay = float(node.attr("decay_factor", 0.0))
    eps = float(node.attr("epsilon", 0.0))
    coeff = float(node.attr("norm_coefficient", 0.0))
    outs = []
    for x, g, h in groups:
        rr, tt = _scalar_as(node, r, x), _scalar_as(node, t, x)
        lr = F.div(rr, F.add(node.const(1.0, x.dtype), F.mul(tt, node.const(decay, x.dtype))))
        gr = _regularized(node, x, g, coeff)
        outs.append(node.emit("adagrad_update", x, gr, h, lr, node.const(eps, x.dtype)))
    return _outputs(outs, len(groups))


@handler("Momentum", attrs=("alpha", "beta", "mode", "norm_coefficient"), domain=TRAINING)
def _momentum(node: NodeView):
    """v' = alpha v + beta_t g (beta_t = beta when T > 0, else 1): ``momentum_update`` of
    torch's convention with the gradient scaled by beta_t. Standard: x' = x - R v' (the op's
    own result); Nesterov: x' = x - R (g + alpha v'), built from core ops (the op's Nesterov
    form would read beta_t g)."""
    r, t, groups = _training_io(node, 1)
    alpha, beta = float(node.attr("alpha")), float(node.attr("beta"))
    coeff = float(node.attr("norm_coefficient"))
    mode = node.attr("mode")
    if mode not in ("standard", "nesterov"):
        node.fail(f"mode={mode!r} must be 'standard' or 'nesterov'")
    outs = []
    for x, g, v in groups:
        rr, tt = _scalar_as(node, r, x), _scalar_as(node, t, x)
        gr = _regularized(node, x, g, coeff)
        beta_t = node.emit("where", F.gt(tt, node.const(0.0, x.dtype)),
                           node.const(beta, x.dtype), node.const(1.0, x.dtype))
        x_new, v_new = node.emit("momentum_update", x, F.mul(gr, beta_t), v, rr,
                                 node.const(alpha, x.dtype), convention="torch",
                                 nesterov=False)
        if mode == "nesterov":
            x_new = F.sub(x, F.mul(rr, F.add(gr, F.mul(v_new, node.const(alpha, x.dtype)))))
        outs.append((x_new, v_new))
    return _outputs(outs, len(groups))


@handler("Adam", attrs=("alpha", "beta", "epsilon", "norm_coefficient",
                        "norm_coefficient_post"), domain=TRAINING)
def _adam(node: NodeView):
    """ONNX's Adam puts epsilon outside the bias correction (x' = x - R sqrt(1 - beta^T) /
    (1 - alpha^T) v' / (sqrt(h') + eps)), unlike ``adam_update``; built from core ops."""
    r, t, groups = _training_io(node, 2)
    alpha, beta = float(node.attr("alpha", 0.9)), float(node.attr("beta", 0.999))
    eps = float(node.attr("epsilon", 1e-6))
    coeff = float(node.attr("norm_coefficient", 0.0))
    post = float(node.attr("norm_coefficient_post", 0.0))
    outs = []
    for x, g, v, h in groups:
        c = lambda val: node.const(val, x.dtype)  # noqa: E731
        rr, tt = _scalar_as(node, r, x), _scalar_as(node, t, x)
        gr = _regularized(node, x, g, coeff)
        v_new = F.add(F.mul(v, c(alpha)), F.mul(gr, c(1.0 - alpha)))
        h_new = F.add(F.mul(h, c(beta)), F.mul(F.square(gr), c(1.0 - beta)))
        corr = F.div(F.sqrt(F.sub(c(1.0), F.pow(c(beta), tt))),
                     F.sub(c(1.0), F.pow(c(alpha), tt)))
        r_adj = node.emit("where", F.gt(tt, c(0.0)), F.mul(rr, corr), rr)
        x_new = F.sub(x, F.mul(r_adj, F.div(v_new, F.add(F.sqrt(h_new), c(eps)))))
        if post != 0.0:
            x_new = F.mul(x_new, c(1.0 - post))
        outs.append((x_new, v_new, h_new))
    return _outputs(outs, len(groups))
