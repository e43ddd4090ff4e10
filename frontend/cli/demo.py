"""``irgraph demo``: the whole promise in under a minute on a CPU.

A CNN with batch norm, written in the DSL; its training step (forward, loss, gradients,
optimizer update) compiled as one graph; trained on the 1,797 8x8 digits that ship with
irgraph; then in eval mode with batch norm folded into the convolutions, compiled again;
held-out accuracy on a fixed seeded split; the compiled model checked node by node against
the reference interpreter; step times against the reference backend (and torch, when
installed); the folded model saved with ``irgraph.save`` and, with ``--plot``, curves.

Second-order optimizers (newton, cg, bfgs, lbfgs) train a multinomial logistic regression
on 4x4-pooled digits instead (170 parameters: Newton's Hessian has 170^2 entries), one
full-batch iteration per epoch.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

import irgraph.backends as backends
import irgraph.frontend as fe
import irgraph
from irgraph.frontend import nn, optim
from irgraph.frontend.check import find_divergence
from irgraph.frontend.compiler import run_pipeline
from irgraph.frontend.data import DataLoader, load_digits, split
from irgraph.frontend.fit import fit
from irgraph.passes.fold_params import fold_params

from .pictures import MissingTool, plot_history, render_dot

FIRST_ORDER = {
    "sgd": lambda: optim.SGD(lr=0.1),
    "momentum": lambda: optim.SGD(lr=0.05, momentum=0.9),
    "nesterov": lambda: optim.SGD(lr=0.05, momentum=0.9, nesterov=True),
    "adagrad": lambda: optim.AdaGrad(lr=0.05),
    "rmsprop": lambda: optim.RMSprop(lr=0.002, alpha=0.9),
    "adam": lambda: optim.Adam(lr=0.01),
}
SECOND_ORDER = {
    "newton": lambda: optim.Newton(damping=1e-3),
    "cg": lambda: optim.ConjugateGradient(),
    "bfgs": lambda: optim.BFGS(),
    "lbfgs": lambda: optim.LBFGS(history_size=10),
}
OPTIMIZERS = list(FIRST_ORDER) + list(SECOND_ORDER)
BATCH = 64
TARGET_ACCURACY = 0.95
CHECKED = 16            # held-out images in the cross-backend check


class DigitsCNN(nn.Module):
    """conv3x3(16) - BN - ReLU - pool, conv3x3(32) - BN - ReLU - pool, linear(10)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Linear(32 * 2 * 2, 10)

    def forward(self, x):
        return self.classifier(self.features(x).reshape(-1, 32 * 2 * 2))


class LogisticRegression(nn.Module):
    """softmax(W avgpool2x2(x) + b): 16 features, 10 classes."""

    def __init__(self):
        super().__init__()
        self.pool = nn.AvgPool2d(2)
        self.linear = nn.Linear(16, 10)

    def forward(self, x):
        return self.linear(self.pool(x).reshape(-1, 16))


def _inference_graph(model, n: int):
    """The eval-mode model for batches of ``n``: (traced graph, the graph after the inference
    pipeline (batch norm folded) with its weights bound by fold_params, those weights)."""
    traced = fe.trace(model, fe.TensorSpec((n, 1, 8, 8)), name="digits")
    folded = run_pipeline(traced, None, "inference")
    weights = {k: p.data for k, p in model.named_parameters(buffers=True)}
    frozen, frozen_w = fold_params(folded, weights)
    return traced, frozen, frozen_w


def _ms(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3


def _torch_times(x, y, xt, reps: int):
    """(training step ms, inference ms) of the same CNN in PyTorch, or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    torch.manual_seed(0)
    tn = torch.nn
    model = tn.Sequential(tn.Conv2d(1, 16, 3, padding=1), tn.BatchNorm2d(16), tn.ReLU(),
                          tn.MaxPool2d(2), tn.Conv2d(16, 32, 3, padding=1), tn.BatchNorm2d(32),
                          tn.ReLU(), tn.MaxPool2d(2), tn.Flatten(), tn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    xb, yb, xe = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(xt)

    def step():
        opt.zero_grad()
        tn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()
    t_step = _ms(step, reps)
    model.eval()
    with torch.no_grad():
        t_inf = _ms(lambda: model(xe), reps)
    return t_step, t_inf


def run_demo(args, out) -> int:
    def say(text=""):
        print(text, file=out, flush=True)

    t_start = time.perf_counter()
    second = args.optimizer in SECOND_ORDER
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    images, labels = load_digits()
    x = (images.astype(np.float32) / 16.0)[:, None]          # (N, 1, 8, 8) in [0, 1]
    y = labels.astype(np.int64)
    tr, te = split(len(x), 0.2, seed=args.seed)
    epochs = args.epochs if args.epochs is not None else (15 if second else 8)
    fe.manual_seed(args.seed)
    model = LogisticRegression() if second else DigitsCNN()
    what = ("a logistic regression (4x4-pooled pixels)" if second else
            "a CNN with batch norm")
    say(f"irgraph demo: {what} on {len(x):,} 8x8 digits ({len(tr)} train / {len(te)} "
        f"held out, seed {args.seed}); optimizer {args.optimizer}; backend {args.backend}")

    # ---- compile the training step: forward + loss + gradients + update, one graph
    batch = len(tr) if second else BATCH
    opt = (SECOND_ORDER if second else FIRST_ORDER)[args.optimizer]()
    specs = fe.TensorSpec((batch, 1, 8, 8)), fe.TensorSpec((batch,), "int64")
    t0 = time.perf_counter()
    step = fe.compile_train(model, nn.CrossEntropyLoss(), opt, *specs, backend=args.backend)
    say(f"compiled the training step for {args.backend} in {time.perf_counter() - t0:.1f} s"
        + ("" if second else f" ({len(step.graph.nodes)} nodes)"))

    # ---- an eval-mode compile reads the live weights: held-out accuracy after each epoch
    model.eval()
    evaluate = fe.compile(model, fe.TensorSpec((len(te), 1, 8, 8)), backend=args.backend)
    model.train()

    def accuracy() -> dict:
        model.eval()
        acc = float((evaluate(x[te]).argmax(1) == y[te]).mean())
        model.train()
        return {"accuracy": acc}

    loader = DataLoader(x[tr], y[tr], batch_size=batch, shuffle=not second, seed=args.seed,
                        drop_last=True)
    history = fit(step, loader, epochs, eval_fn=accuracy, out=out)

    # ---- inference: eval mode, batch norm folded, weights bound, compiled
    model.eval()
    traced, frozen, frozen_w = _inference_graph(model, len(te))
    weights = {n: p.data for n, p in model.named_parameters(buffers=True)}
    n_bn = sum(n.op == "batch_norm" for n in traced.nodes)
    say(f"inference graph: {len(traced.nodes)} nodes with {n_bn} batch norm(s) -> "
        f"{len(frozen.nodes)} nodes with "
        f"{sum(n.op == 'batch_norm' for n in frozen.nodes)} after folding")
    t0 = time.perf_counter()
    infer = backends.compile(frozen, args.backend)
    say(f"compiled the folded model for {args.backend} in {time.perf_counter() - t0:.1f} s")
    args_frozen = [x[te]] + [frozen_w[p.name] for p in frozen.params]
    logits = np.asarray(infer(*args_frozen)[0])
    acc = float((logits.argmax(1) == y[te]).mean())
    say(f"held-out accuracy: {acc:.1%} ({int(round(acc * len(te)))}/{len(te)})"
        + ("" if second or acc >= TARGET_ACCURACY else
           f"  (below {TARGET_ACCURACY:.0%}: train longer, --epochs)"))

    # ---- checks: folding kept the function; every backend agrees with the reference
    from irgraph.interpreter import interpret
    unfolded = interpret(traced, [x[te]] + [weights[p.name] for p in traced.params])[0]
    fold_diff = float(np.abs(np.asarray(unfolded) - logits).max())
    say(f"folded vs unfolded logits (reference interpreter vs {args.backend}): max|diff| "
        f"{fold_diff:.2e}")
    from .commands import available_backends
    status = 0
    # the cross-backend check runs the folded model on a few images: Triton's interpreter
    # (a CPU without a GPU) is slow
    _, small, small_w = _inference_graph(model, CHECKED)
    small_args = [x[te[:CHECKED]]] + [small_w[p.name] for p in small.params]
    for b, why in available_backends().items():
        if b == "reference":
            continue
        if why:
            say(f"check {b}: skipped ({why})")
            continue
        div = find_divergence(small, small_args, b, rtol=1e-3, atol=1e-4)
        if div.agrees:
            say(f"check {b}: the folded model agrees with the reference on {CHECKED} "
                f"held-out images (max|diff| of the logits {max(div.output_diffs):.2e})")
        else:
            say(div.format())
            status = 1

    # ---- timings: the same step on the reference backend (and torch)
    reps = 3 if args.quick else 10
    xb, yb = x[tr[:batch]], y[tr[:batch]]
    rows = []
    fe.manual_seed(args.seed)
    timing_model = LogisticRegression() if second else DigitsCNN()
    timing_opt = (SECOND_ORDER if second else FIRST_ORDER)[args.optimizer]()
    timed = {args.backend: fe.compile_train(timing_model, nn.CrossEntropyLoss(), timing_opt,
                                            *specs, backend=args.backend)}
    if args.backend != "reference":
        timed["reference"] = fe.compile_train(timing_model, nn.CrossEntropyLoss(), timing_opt,
                                              *specs, backend="reference")
    ref_exe = infer if args.backend == "reference" else backends.compile(frozen, "reference")
    step_ms = {b: _ms(lambda s=s: s(xb, yb), 1 if b == "reference" else reps)
               for b, s in timed.items()}
    inf_ms = {args.backend: _ms(lambda: infer(*args_frozen), reps),
              "reference": _ms(lambda: ref_exe(*args_frozen), 1)}
    torch_ms = None if second else _torch_times(xb, yb, x[te], reps)
    say("")
    head = f"{'median time':34s} {'reference':>10s} {args.backend:>10s}" + (
        f" {'torch':>10s}" if torch_ms else "") + f" {'ref/' + args.backend:>10s}"
    say(head)
    for label, d, tt in ((f"training step (batch {batch})", step_ms, 0),
                         (f"inference, folded ({len(te)} images)", inf_ms, 1)):
        line = f"{label:34s} {d['reference']:8.2f}ms {d[args.backend]:8.2f}ms"
        if torch_ms:
            line += f" {torch_ms[tt]:8.2f}ms"
        line += f" {d['reference'] / d[args.backend]:9.1f}x"
        rows.append(line)
        say(line)

    # ---- artefacts
    saved = out_dir / "model"
    irgraph.save(saved, frozen, frozen_w)
    (out_dir / "model.dot").write_text(frozen.to_dot() + "\n")
    say("")
    say(f"saved the folded model to {saved}/ (irgraph.load; run it with: irgraph run "
        f"{saved} INPUTS.npz)")
    np.savez(out_dir / "heldout_inputs.npz", **{frozen.inputs[0].name: x[te]})
    say(f"held-out images for it: {out_dir / 'heldout_inputs.npz'}; its graph: "
        f"{out_dir / 'model.dot'}")
    if args.plot:
        try:
            p = plot_history(history, out_dir / "training.png",
                             f"{what}, {args.optimizer}, {args.backend}")
            say(f"plot: {p}")
            svg = render_dot(frozen.to_dot(), out_dir / "model.svg")
            say(f"graph picture: {svg}")
        except MissingTool as e:
            say(f"(no pictures: {e})")
    say(f"done in {time.perf_counter() - t_start:.1f} s")
    return status
