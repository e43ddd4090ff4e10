"""Lowering of batch normalization (section 8.7.1, eq. 8.34-8.37) and of normalize regions
(layer, group and instance norm; ``lower_normalize``).

Per channel (threads split the channels): in training, the mean (eq. 8.35) and the biased
variance (eq. 8.36) in float64 over every other axis (one pass: sums shifted by the
channel's first element), then y = gamma (x - mu) / sqrt(var +
eps) + beta and PyTorch's running-average update with the unbiased variance; in inference
the running averages stand in for the statistics. As the registry kernel, in float64.
"""
from __future__ import annotations

from contextlib import contextmanager

from llvmlite import ir

from .builder import F64, broadcast_strides, for_range, i64, prod
from .lowering import fused_kind, lowering
from . import scalar as sc


def _bn_generic(node):
    """One kernel for every size: (outer, channels, inner) are its arguments; x and y walk
    all three, the per-channel tensors the channels only (``Lowering.size_generic``)."""
    x = node.inputs[0]
    axis = node.attrs["axis"] % x.type.rank
    dims = (prod(x.shape[:axis]), x.shape[axis], prod(x.shape[axis + 1:]))
    if dims[1] == 0 or dims[0] * dims[2] < 2:
        return None
    full, chan = (True, True, True), (False, True, False)
    return dims, [full, chan, chan, full, chan, chan, chan, chan]


@lowering("batch_norm", parallel=True, size_generic=_bn_generic)
def _batch_norm(ctx, node, ins, outs):
    (x, gamma, beta, rmean, rvar), (y, nmean, nvar) = ins, outs
    a = node.attrs
    dt, b = x.dtype, ctx.b
    if ctx.runtime_dims is not None:        # (outer, channels, inner) known at run time
        outer, C, inner = ctx.runtime_dims
        m = b.mul(outer, inner)
        fm = b.sitofp(m, F64)
        fm1 = b.sitofp(b.sub(m, i64(1)), F64)
        c_inner = b.mul(C, inner)
    else:
        axis = a["axis"] % x.type.rank
        outer, C, inner = prod(x.shape[:axis]), x.shape[axis], prod(x.shape[axis + 1:])
        fm, fm1 = ir.Constant(F64, float(outer * inner)), ir.Constant(F64,
                                                                       float(outer * inner - 1))
        c_inner = i64(C * inner)
        inner = i64(inner)
    acc = ctx.alloca(F64, "acc")

    def f64(v):
        return sc.convert(ctx, dt, "float64", v)

    def to_dt(v):
        return sc.convert(ctx, "float64", dt, v)

    def each(c, fn):
        with for_range(b, 0, outer, "bo") as o:
            base = b.add(b.mul(o, c_inner), b.mul(c, inner))
            with for_range(b, 0, inner, "bi") as i:
                fn(b.add(base, i))

    acc2 = ctx.alloca(F64, "acc2")

    def moments(c):
        """The mean and the biased variance in one pass: float64 sums of (x - x0) and
        (x - x0)^2, x0 the channel's first element (shifted against cancellation)."""
        x0 = f64(x.load(b, b.mul(c, inner)))
        b.store(ir.Constant(F64, 0.0), acc)
        b.store(ir.Constant(F64, 0.0), acc2)

        def add(off):
            d = b.fsub(f64(x.load(b, off)), x0)
            s1 = b.fadd(b.load(acc), d)
            s2 = b.fadd(b.load(acc2), b.fmul(d, d))
            s1.flags.append("reassoc")  # vector partial sums (float64, as the kernel)
            s2.flags.append("reassoc")
            b.store(s1, acc)
            b.store(s2, acc2)
        each(c, add)
        m1 = b.fdiv(b.load(acc), fm)
        var = b.fsub(b.fdiv(b.load(acc2), fm), b.fmul(m1, m1))
        var = b.select(b.fcmp_ordered("<", var, ir.Constant(F64, 0.0)),
                       ir.Constant(F64, 0.0), var)
        return b.fadd(x0, m1), var

    lo, hi = ctx.split(C)
    with for_range(b, lo, hi, "ch") as c:
        if a["training"]:
            mean, var = moments(c)
            mom = ir.Constant(F64, a["momentum"])
            keep = ir.Constant(F64, 1.0 - a["momentum"])
            unbiased = b.fdiv(b.fmul(var, fm), fm1)
            nmean.store(b, c, to_dt(b.fadd(b.fmul(keep, f64(rmean.load(b, c))),
                                           b.fmul(mom, mean))))
            nvar.store(b, c, to_dt(b.fadd(b.fmul(keep, f64(rvar.load(b, c))),
                                          b.fmul(mom, unbiased))))
        else:
            mean, var = f64(rmean.load(b, c)), f64(rvar.load(b, c))
            nmean.store(b, c, rmean.load(b, c))
            nvar.store(b, c, rvar.load(b, c))
        inv = b.fdiv(ir.Constant(F64, 1.0),
                     sc.call(ctx, "sqrt", b.fadd(var, ir.Constant(F64, a["eps"]))))
        scale = b.fmul(f64(gamma.load(b, c)), inv)
        shift = f64(beta.load(b, c))
        each(c, lambda off: y.store(b, off, to_dt(b.fadd(
            b.fmul(scale, b.fsub(f64(x.load(b, off)), mean)), shift))))


# ---------------------------------------------------------------- normalize regions
# False: normalize and rows regions run their nodes one by one (bench/bench_attention.py
# compares the two)
REGIONS = True
NORMALIZE_ROW_ROLES = ("mean", "var", "vare", "r")        # one value per row
NORMALIZE_ELEM_ROLES = ("d", "sq", "y", "yw", "yb")       # one value per element


@fused_kind("normalize")
def lower_normalize(ctx, node, ins, outs) -> bool:
    """A ``fused`` region of kind ``normalize`` (passes/layer_regions.py) in two passes over
    each row of the normalized trailing axes, threads splitting the rows: one reads x for
    its float64 sums of (x - x0) and (x - x0)^2 (shifted by the row's first element against
    cancellation), giving the mean and the variance together; one writes the output (and
    any intermediate the region exports: ``d = x - mean`` for the backward). False if the
    body is not such a region (the caller lowers it node by node)."""
    from irgraph.passes.layer_regions import normalize_spec
    body = node.attrs["body"]
    spec = normalize_spec(body) if REGIONS else None
    if spec is None or not spec.centered or spec.x.type.dtype not in ("float32", "float64") \
            or any(t.swapped for t in list(ins) + list(outs)):
        return False
    x_t = spec.x.type
    n = prod(x_t.shape[x_t.rank - spec.axes:])
    rows = x_t.size // n if n else 0
    if n == 0 or rows == 0:
        return False
    index = {v: i for i, v in enumerate(body.inputs)}
    x = ins[index[spec.x]]
    w = ins[index[spec.weight]] if spec.weight is not None else None
    bias = ins[index[spec.bias]] if spec.bias is not None else None
    role_of = {v: r for r, v in spec.roles.items()}
    wanted = {role_of[v]: outs[j] for j, v in enumerate(body.outputs)}
    dt, b = x.dtype, ctx.b
    s1 = ctx.alloca(F64, "s1")
    s2 = ctx.alloca(F64, "s2")

    def f64(v):
        return sc.convert(ctx, dt, "float64", v)

    def to_dt(v):
        return sc.convert(ctx, "float64", dt, v)

    lo, hi = ctx.split(rows)
    with for_range(b, lo, hi, "row") as row:
        base = b.mul(row, i64(n))
        x0 = f64(x.load(b, base))
        b.store(ir.Constant(F64, 0.0), s1)
        b.store(ir.Constant(F64, 0.0), s2)
        with for_range(b, 0, n, "k") as k:                    # pass 1: statistics
            d = b.fsub(f64(x.load(b, b.add(base, k))), x0)
            a1 = b.fadd(b.load(s1), d)
            a2 = b.fadd(b.load(s2), b.fmul(d, d))
            a1.flags.append("reassoc")      # vector partial sums (float64)
            a2.flags.append("reassoc")
            b.store(a1, s1)
            b.store(a2, s2)
        inv_n = ir.Constant(F64, 1.0 / n)
        m1 = b.fmul(b.load(s1), inv_n)
        mean64 = b.fadd(x0, m1)
        mean = to_dt(mean64)
        # the variance about the mean as rounded to x's dtype (what the composition's
        # x - mean subtracts), c = mean_dt - x0: E[(x - x0)^2] - 2 c E[x - x0] + c^2
        c = b.fsub(f64(mean), x0)
        var64 = b.fadd(b.fsub(b.fmul(b.load(s2), inv_n), b.fmul(b.fadd(c, c), m1)),
                       b.fmul(c, c))
        var64 = b.select(b.fcmp_ordered("<", var64, ir.Constant(F64, 0.0)),
                         ir.Constant(F64, 0.0), var64)
        var = to_dt(var64)
        vare = b.fadd(var, sc.const(dt, spec.eps))
        r = to_dt(b.fdiv(ir.Constant(F64, 1.0), sc.call(ctx, "sqrt", f64(vare))))
        for role, val in (("mean", mean), ("var", var), ("vare", vare), ("r", r)):
            if role in wanted:
                wanted[role].store(b, row, val)
        with for_range(b, 0, n, "k") as k:                    # pass 2: the output
            off = b.add(base, k)
            d = b.fsub(x.load(b, off), mean)
            vals = {"d": d}
            if "sq" in wanted:
                vals["sq"] = b.fmul(d, d)
            y = vals["y"] = b.fmul(d, r)
            if w is not None:
                y = vals["yw"] = b.fmul(y, w.load(b, k))
            if bias is not None:
                vals["yb"] = b.fadd(y, bias.load(b, k))
            for role in NORMALIZE_ELEM_ROLES:
                if role in wanted:
                    wanted[role].store(b, off, vals[role])
    return True


# ---------------------------------------------------------------- row regions
def _spreads(reds, src, kind) -> dict:
    """The row reductions of ``(v - mean(v))^2`` (``square`` or ``mul(d, d)``), v an operand
    of the region, mean(v) a row mean in it: each maps to (v, that mean). A backend sums
    them in the sweep of the mean itself, as float64 sums of v - v0 and (v - v0)^2 (v0 the
    row's first element, against cancellation): a batch norm's variance without a sweep
    of its own."""
    out = {}
    for r in reds:
        sq = r.inputs[0].node
        if sq is None or not (sq.op == "square" or sq.op == "mul" and
                              sq.inputs[0] is sq.inputs[1]):
            continue
        sub = sq.inputs[0].node
        if sub is None or sub.op != "sub":
            continue
        v, m = sub.inputs
        mean = m.node
        if mean is not None and mean.op == "mean" and mean.inputs[0] is v and v in src \
                and kind[v] == "full" and v.type.dtype in ("float32", "float64"):
            out[r] = (v, mean)
    return out


@fused_kind("rows")
def lower_rows(ctx, node, ins, outs) -> bool:
    """A ``fused`` region of kind ``rows`` (passes/layer_regions.py: a normalization's
    backward; its rows the trailing axes, or the channels of a batch norm, each channel's
    elements a stretch per image): threads split the rows; per row, one pass over its
    elements per level of row reductions (float64 accumulators; the full-size values they
    read are recomputed from the operands, never stored), the row values between passes in
    registers, and a last pass storing the full-size results (and the last level's sums
    when the full results need none of them). False if the body is not of that form."""
    from irgraph.passes.layer_regions import reduced_axes, row_class, row_layout, row_member
    from .ops_core import SCALAR
    body = node.attrs["body"]
    reds = [n for n in body.nodes if n.op in ("sum", "mean")]
    if not REGIONS or not reds or any(t.swapped for t in list(ins) + list(outs)):
        return False
    full, k = reds[0].inputs[0].shape, reduced_axes(reds[0])
    scalar_const = lambda n: n.op == "full" and n.outputs[0].type.size == 1   # noqa: E731
    layout = row_layout(full, k) if k is not None else None
    if layout is None or not all(row_member(n, full, k) or scalar_const(n)
                                 for n in body.nodes) \
            or any(n.op not in SCALAR and n.op not in ("sum", "mean") for n in body.nodes) \
            or any(row_class(v.shape, full, k) is None for v in body.inputs) \
            or any(row_class(v.shape, full, k) not in ("full", "row") for v in body.outputs):
        return False
    # a row's elements: ``outer`` stretches of ``inner`` (one stretch when the rows are the
    # trailing axes), row r's stretch o at flat offset (o * rows + r) * inner
    outer, rows, inner = layout
    n_el = outer * inner
    if n_el == 0 or rows == 0:
        return False
    b = ctx.b
    src = dict(zip(body.inputs, ins))
    kind = {v: row_class(v.shape, full, k) for v in body.values()}
    red_dims = [full[a] for a in k]
    trail = {v: [st for a, st in enumerate(broadcast_strides(v.shape, full)) if a in k]
             for v in body.inputs if kind[v] == "trail"}
    spread = _spreads(reds, src, kind)
    # the pass after which each value exists: row reductions raise the level (a spread
    # about the row's mean exists with that mean)
    level: dict = {v: 0 for v in body.inputs}
    for n in body.nodes:
        top = max((level[v] for v in n.inputs), default=0)
        level[n.outputs[0]] = (level[spread[n][1].outputs[0]] if n in spread else
                               top + 1 if n.op in ("sum", "mean") else top)
    passes = max((level[r.outputs[0]] for r in reds), default=0)
    accs = {r: ctx.alloca(F64, "racc") for r in reds}
    acc2 = {r: ctx.alloca(F64, "racc2") for r in spread}

    def element_offsets(j):
        """Offsets into each trail operand at element j of a row."""
        out = {}
        dims = red_dims
        for v, st in trail.items():
            off, rem = i64(0), j
            for d in range(len(dims) - 1, -1, -1):
                if st[d]:
                    off = b.add(off, b.mul(b.srem(rem, i64(dims[d])), i64(st[d])))
                rem = b.sdiv(rem, i64(dims[d]))
            out[v] = off
        return out

    @contextmanager
    def sweep():
        """Over a row's elements: (flat offset, element index j within the row)."""
        if outer == 1:
            with for_range(b, 0, inner, "e") as j:
                yield b.add(base, j), j
            return
        with for_range(b, 0, outer, "eo") as o:
            start = b.add(b.mul(o, i64(rows * inner)), base)
            with for_range(b, 0, inner, "e") as i:
                yield b.add(start, i), b.add(b.mul(o, i64(inner)), i)

    lo, hi = ctx.split(rows)
    with for_range(b, lo, hi, "row") as row:
        base = b.mul(row, i64(inner))
        row_env: dict = {}

        def at_row(v):
            """A row or scalar value, computed once per row (after its level's pass)."""
            if v in row_env:
                return row_env[v]
            if v in src:
                x = src[v]
                val = x.load(b, row if kind[v] == "row" else i64(0))
            else:
                n = v.node
                val = SCALAR[n.op](ctx, n, [at_row(i) for i in n.inputs])
            row_env[v] = val
            return val

        def ready_rows(lvl):
            for n in body.nodes:
                v = n.outputs[0]
                if kind[v] in ("row", "scalar") and level[v] <= lvl and n.op not in (
                        "sum", "mean") and v not in row_env:
                    at_row(v)

        def element(off, j, wanted):
            trail_off = element_offsets(j) if trail else {}
            env: dict = {}

            def ev(v):
                if v in env:
                    return env[v]
                if kind[v] in ("row", "scalar"):
                    return at_row(v)
                if v in src:
                    val = src[v].load(b, off if kind[v] == "full" else trail_off[v])
                else:
                    n = v.node
                    val = SCALAR[n.op](ctx, n, [ev(i) for i in n.inputs])
                env[v] = val
                return val
            return [ev(v) for v in wanted]

        for v in body.inputs:             # loaded here, before any loop over elements
            if kind[v] in ("row", "scalar"):
                at_row(v)
        ready_rows(0)
        full_outs = [(v, o) for v, o in zip(body.outputs, outs) if kind[v] == "full"]
        # the last level's sums ride along the sweep that stores the full results when none
        # of those results needs them (a bias gradient summing the normalization's dx)
        merged = bool(full_outs) and all(level[v] < passes for v, _ in full_outs)
        def add(acc, term):
            total = b.fadd(b.load(acc), term)
            total.flags.append("reassoc")
            b.store(total, acc)

        for p in range(1, passes + 1):
            stage = [r for r in reds if level[r.outputs[0]] == p]
            spreads = [r for r in stage if r in spread]
            # one accumulator per distinct (op, operand): a repeated reduction (the
            # distributed sums repeat a row's sum of g) takes the first one's total, and a
            # row's sum or mean of v beside v's spread comes from the spread's sum of v - v0
            first: dict = {}
            same = {r: first.setdefault((r.op, r.inputs[0]), r) for r in stage
                    if r not in spread}
            shifted = {s_v: r for r in spreads for s_v in [spread[r][0]]}
            derived = {r: shifted[r.inputs[0]] for r in same
                       if same[r] is r and r.inputs[0] in shifted}
            plain = [r for r in same if same[r] is r and r not in derived]
            stores = full_outs if merged and p == passes else []
            firsts = {r: sc.convert(ctx, spread[r][0].type.dtype, "float64",
                                    src[spread[r][0]].load(b, base)) for r in spreads}
            for r in stage:
                b.store(ir.Constant(F64, 0.0), accs[r])
            for r in spreads:
                b.store(ir.Constant(F64, 0.0), acc2[r])
            with sweep() as (off, j):
                wanted = [r.inputs[0] for r in plain] + [spread[r][0] for r in spreads]
                vals = element(off, j, wanted + [v for v, _ in stores])
                for r, x in zip(plain, vals):
                    add(accs[r], sc.convert(ctx, r.inputs[0].type.dtype, "float64", x))
                for r, x in zip(spreads, vals[len(plain):]):
                    d = b.fsub(sc.convert(ctx, spread[r][0].type.dtype, "float64", x),
                               firsts[r])
                    add(accs[r], d)
                    add(acc2[r], b.fmul(d, d))
                for (_, o), x in zip(stores, vals[len(wanted):]):
                    o.store(b, off, x)
            inv_n = ir.Constant(F64, 1.0 / n_el)
            for r in plain + list(derived):
                if r in derived:                    # v0 + sum(v - v0) / n, or n v0 + ...
                    sp = derived[r]
                    total = b.fadd(b.load(accs[sp]), b.fmul(firsts[sp], ir.Constant(
                        F64, float(n_el))))
                else:
                    total = b.load(accs[r])
                if r.op == "mean":
                    total = b.fdiv(total, ir.Constant(F64, float(n_el)))
                row_env[r.outputs[0]] = sc.convert(ctx, "float64", r.outputs[0].type.dtype,
                                                   total)
            for r, canon in same.items():
                if canon is not r:
                    row_env[r.outputs[0]] = row_env[canon.outputs[0]]
            for r in spreads:
                # about the mean as rounded to its dtype (what the body's x - mean takes),
                # c = mean - x0: E[(x - x0)^2] - 2 c E[x - x0] + c^2
                m1 = b.fmul(b.load(accs[r]), inv_n)
                c = b.fsub(sc.convert(ctx, spread[r][1].outputs[0].type.dtype, "float64",
                                      row_env[spread[r][1].outputs[0]]), firsts[r])
                var = b.fadd(b.fsub(b.fmul(b.load(acc2[r]), inv_n), b.fmul(b.fadd(c, c), m1)),
                             b.fmul(c, c))
                var = b.select(b.fcmp_ordered("<", var, ir.Constant(F64, 0.0)),
                               ir.Constant(F64, 0.0), var)
                if r.op == "sum":
                    var = b.fmul(var, ir.Constant(F64, float(n_el)))
                row_env[r.outputs[0]] = sc.convert(ctx, "float64", r.outputs[0].type.dtype,
                                                   var)
            ready_rows(p)
        for v, o in zip(body.outputs, outs):
            if kind[v] == "row":
                o.store(b, row, at_row(v))
        if full_outs and not merged:
            with sweep() as (off, j):
                vals = element(off, j, [v for v, _ in full_outs])
                for (_, o), x in zip(full_outs, vals):
                    o.store(b, off, x)
    return True
