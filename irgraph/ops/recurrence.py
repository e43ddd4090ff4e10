"""Recurrence in the IR: ``scan``, a node whose attribute is a body graph (the circuit diagram
of fig. 10.2), and ``stop_gradient`` (where truncated BPTT cuts the graph).

A ``scan`` runs its body once per time step, carrying state from one step to the next::

    %hT: f32[2,4], %hs: f32[5,2,4] = scan(%h0, %xs, %W, %U) {body=graph cell(
        %h: f32[2,4], %x: f32[2,3]) params(%W: f32[4,4], %U: f32[4,3]) {...
        return %h1, %h1 }, num_carry=1, num_seq=1, ...}

* node inputs: the initial carries (``num_carry``), the sequences (``num_seq``, time-major:
  step t reads ``xs[t]``), the mask ``bool[T, B]`` when ``masked``, then the loop-invariant
  values (the parameters theta, shared by every step).
* body arguments (its inputs, then its params): carries, one slice of each sequence,
  invariants, in that order. Body outputs: the new carries, then the per-step outputs y_t.
* node outputs: the final carries, the per-step outputs stacked on a new leading time axis,
  and, when ``save_every = k > 0``, the carries entering processing steps 0, k, 2k, ...
  stacked (the states BPTT keeps for its backward pass; ``k > 1`` is checkpointing).
* ``reverse``: steps run t = T-1, ..., 0 (the backward half of a bidirectional RNN); y_t is
  still stored at position t. Saved carries are in processing order.
* ``masked``: where ``mask[t, b]`` is false, row b of every carry is held and row b of y_t is
  zero (padding of a minibatch of sequences of different lengths). Carries and per-step
  outputs then have the batch as their leading axis.
* ``length``: the number of steps; needed only when there are no sequences.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..registry import Attr, Cost, a_bool, a_graph, a_int, a_optional, register_op
from ..types import TensorType


# ---------------------------------------------------------------- helpers shared by passes
def inline(dst, body, args: Sequence, loc: str | None = None) -> list:
    """Copy ``body``'s nodes into graph ``dst`` with its arguments bound to ``args``; return
    the values of ``body``'s outputs in ``dst``. Nested subgraphs are shared, not copied."""
    if len(args) != len(body.arguments):
        raise ValueError(f"graph {body.name!r} takes {len(body.arguments)} arguments, "
                         f"got {len(args)}")
    env = dict(zip(body.arguments, args))
    for node in body.nodes:
        outs = dst.add_node(node.op, [env[v] for v in node.inputs], node.attrs,
                            node.loc or loc)
        env.update(zip(node.outputs, outs))
    return [env[v] for v in body.outputs]


def split_inputs(items: Sequence, attrs: dict) -> tuple[list, list, object, list]:
    """(carries, sequences, mask or None, invariants) of a scan's inputs."""
    nc, ns = attrs["num_carry"], attrs["num_seq"]
    k = nc + ns + (1 if attrs["masked"] else 0)
    mask = items[nc + ns] if attrs["masked"] else None
    return list(items[:nc]), list(items[nc:nc + ns]), mask, list(items[k:])


def num_steps(in_types: Sequence[TensorType], attrs: dict) -> int:
    """T: the leading extent of the sequences (and mask), or the ``length`` attribute."""
    _, seqs, mask, _ = split_inputs(in_types, attrs)
    stacked = seqs + ([mask] if mask is not None else [])
    lengths = {t.shape[0] for t in stacked if t.rank >= 1}
    if any(t.rank == 0 for t in stacked):
        raise ValueError("a sequence (or mask) must have a leading time axis; got a scalar")
    if attrs["length"] is not None:
        lengths.add(attrs["length"])
    if len(lengths) != 1:
        what = "no sequences and no length attribute" if not lengths else \
            f"sequences of different lengths {sorted(lengths)}"
        raise ValueError(f"scan needs one number of steps; got {what}")
    return lengths.pop()


def num_saved(steps: int, save_every: int) -> int:
    return 0 if save_every == 0 else -(-steps // save_every)


def step_body(attrs: dict):
    """The body one step runs: the ``body`` attribute, with the mask folded in when masked.

    The masked body takes one more per-step input (``mask_t: bool[B]``) after the sequence
    slices and holds carries / zeroes outputs where it is false. The reference kernel, the
    unroll pass and the VJP rule all use this one definition of a masked step."""
    body = attrs["body"]
    if not attrs["masked"]:
        return body
    from ..ir import Graph
    nc, ns = attrs["num_carry"], attrs["num_seq"]
    if len(body.inputs) < nc + ns:
        raise ValueError("a scan body takes its carries and sequence slices as inputs, "
                         "not params")
    g = Graph(body.name + "_masked")
    vals = [g.add_input(v.name, v.type) for v in body.inputs[:nc + ns]]
    mask = g.add_input(g.fresh_name("mask_t"), TensorType((_batch(body, nc),), "bool"))
    vals += [g.add_input(v.name, v.type) for v in body.inputs[nc + ns:]]
    vals += [g.add_param(v.name, v.type) for v in body.params]
    outs = inline(g, body, vals)
    new = []
    for i, o in enumerate(outs):
        m = g.op("reshape", mask, shape=(o.shape[0],) + (1,) * (o.type.rank - 1))
        held = vals[i] if i < nc else g.op("full", shape=o.shape, value=0.0, dtype=o.dtype)
        new.append(g.op("where", m, o, held))
    g.set_outputs(new)
    return g


def _batch(body, nc: int) -> int:
    vals = list(body.arguments[:nc]) + list(body.outputs[nc:])
    if not vals or any(v.type.rank == 0 for v in vals):
        raise ValueError("a masked scan needs carries and outputs with a leading batch axis")
    sizes = {v.shape[0] for v in vals}
    if len(sizes) != 1:
        raise ValueError(f"a masked scan needs one batch size; carries and outputs have "
                         f"leading extents {sorted(sizes)}")
    return sizes.pop()


# ---------------------------------------------------------------- scan
_SCAN_ATTRS = {
    "body": Attr(a_graph, doc="the step f(carries, x_t; theta) -> (carries', y_t)"),
    "num_carry": Attr(a_int, doc="how many inputs are initial carries"),
    "num_seq": Attr(a_int, doc="how many inputs after the carries are sequences"),
    "reverse": Attr(a_bool, False, "run t = T-1 ... 0"),
    "masked": Attr(a_bool, False, "a bool[T, B] mask follows the sequences"),
    "length": Attr(a_optional(a_int), None, "number of steps when there are no sequences"),
    "save_every": Attr(a_int, 0, "also output every k-th entering carry (BPTT residuals)"),
}


def _scan_cost(ins, outs, attrs) -> Cost:
    steps = num_steps(ins, attrs)
    flops = nbytes = 0
    for node in step_body(attrs).nodes:
        c = node.opdef.cost([v.type for v in node.inputs], [v.type for v in node.outputs],
                            node.attrs)
        flops, nbytes = flops + c.flops, nbytes + c.bytes
    return Cost(steps * flops, steps * nbytes)


@register_op("scan", traits=(), attrs=_SCAN_ATTRS, num_inputs=None, cost=_scan_cost,
             has_subgraph=True)
def scan(*arrays, body, num_carry, num_seq, reverse, masked, length, save_every):
    """Run the body once per step (fig. 10.2); see the module docstring for the layout."""
    from ..interpreter import ExecutionError, interpret
    attrs = dict(body=body, num_carry=num_carry, num_seq=num_seq, reverse=reverse,
                 masked=masked, length=length, save_every=save_every)
    step = step_body(attrs)
    carries, seqs, mask, consts = split_inputs(arrays, attrs)
    steps = num_steps([TensorType.of(a) for a in arrays], attrs)
    ys: list = [None] * steps
    saved: list = []
    order = range(steps - 1, -1, -1) if reverse else range(steps)
    for p, t in enumerate(order):
        if save_every and p % save_every == 0:
            saved.append(carries)
        per_step = [s[t] for s in seqs] + ([mask[t]] if masked else [])
        try:
            outs = interpret(step, list(carries) + per_step + list(consts))
        except ExecutionError as e:
            raise ValueError(f"in step t={t} of the scan body: {e}") from None
        carries, ys[t] = outs[:num_carry], outs[num_carry:]
    out_types = step.outputs[num_carry:]
    stacked = [np.stack([y[i] for y in ys]) if steps else
               np.empty((0,) + v.shape, v.type.np_dtype) for i, v in enumerate(out_types)]
    kept = [np.stack([s[i] for s in saved]) for i in range(num_carry)] if save_every else []
    return list(carries) + stacked + kept


@scan.type_rule
def _(*ins, body, num_carry, num_seq, reverse, masked, length, save_every):
    attrs = dict(body=body, num_carry=num_carry, num_seq=num_seq, reverse=reverse,
                 masked=masked, length=length, save_every=save_every)
    if num_carry < 0 or num_seq < 0 or save_every < 0:
        raise ValueError("num_carry, num_seq and save_every must be >= 0")
    needed = num_carry + num_seq + (1 if masked else 0)
    if len(ins) < needed:
        raise ValueError(f"scan takes at least {needed} inputs (carries, sequences"
                         f"{', mask' if masked else ''}), got {len(ins)}")
    carries, seqs, mask, consts = split_inputs(ins, attrs)
    steps = num_steps(ins, attrs)
    expect = list(carries) + [s.with_shape(s.shape[1:]) for s in seqs] + list(consts)
    roles = (["carry"] * num_carry + ["sequence slice"] * num_seq
             + ["loop invariant"] * len(consts))
    args = body.arguments
    if len(args) != len(expect):
        raise ValueError(f"body {body.name!r} takes {len(args)} arguments but the scan gives "
                         f"it {len(expect)} ({num_carry} carries, {num_seq} sequence slices, "
                         f"{len(consts)} loop invariants)")
    for i, (a, t, role) in enumerate(zip(args, expect, roles)):
        if a.type != t:
            raise ValueError(f"body argument {i} (%{a.name}, a {role}) is {a.type}, "
                             f"the scan gives {t}")
    outs = body.outputs
    if len(outs) < num_carry:
        raise ValueError(f"body {body.name!r} returns {len(outs)} values, fewer than its "
                         f"{num_carry} carries")
    for i, (o, c) in enumerate(zip(outs, carries)):
        if o.type != c:
            raise ValueError(f"body output {i} (new carry %{o.name}) is {o.type}; the carry "
                             f"is {c}: a carry keeps its type from step to step")
    if masked:
        batch = _batch(body, num_carry)
        if mask.dtype != "bool" or mask.shape != (steps, batch):
            raise ValueError(f"the mask must be bool[{steps},{batch}], got {mask}")
    ys = [TensorType((steps,) + o.shape, o.dtype) for o in outs[num_carry:]]
    n_saved = num_saved(steps, save_every)
    saved = [TensorType((n_saved,) + c.shape, c.dtype) for c in carries] if save_every else []
    return list(carries) + ys + saved


# ---------------------------------------------------------------- stop_gradient
@register_op("stop_gradient", traits={"elementwise", "inplace"},
             cost=lambda i, o, a: Cost(0, i[0].nbytes + o[0].nbytes),
             differentiable=False,
             nondiff_reason="blocks the gradient by definition: truncated BPTT cuts the "
                            "graph here, so its derivative is taken to be zero")
def stop_gradient(x):
    """The identity in the forward pass; no gradient flows back through it."""
    return x.copy()


@stop_gradient.type_rule
def _(x):
    return x

