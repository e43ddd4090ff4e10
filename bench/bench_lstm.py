"""An LSTM language model's training step: LLVM vs torch eager vs the reference interpreter.

The model reads one-hot tokens (vocabulary V), runs an LSTM (hidden 512) over 64 steps of a
batch of 32, and predicts the next token with a linear layer; a step is forward, the mean
cross-entropy, BPTT (the rolled scan: 64 > the unroll threshold) and an SGD update, compiled
as one graph by ``compile_train``. torch does the same step eagerly (``torch.nn.LSTM``,
autograd, ``torch.optim.SGD``). Every contender gets 2 threads; LLVM and torch steps
alternate, and the best of ``--repeats`` of each is printed (the machine may be shared).

    python bench/bench_lstm.py [--hidden 512] [--steps 64] [--batch 32] [--vocab 64]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import best_of, describe, pin_threads  # noqa: E402

THREADS = 2
pin_threads(THREADS)                    # numpy's BLAS (the reference backend) too

import numpy as np  # noqa: E402

import irgraph.frontend as fe  # noqa: E402
from irgraph.frontend import F, nn, optim  # noqa: E402
from irgraph.frontend.rnn import one_hot  # noqa: E402


class LanguageModel(nn.Module):
    def __init__(self, vocab: int, hidden: int):
        super().__init__()
        self.vocab = vocab
        self.lstm = nn.LSTM(vocab, hidden)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, tokens, targets):
        h, _ = self.lstm(one_hot(tokens, self.vocab))
        logits = self.out(h)
        steps, batch, vocab = logits.shape
        return F.cross_entropy(F.reshape(logits, (steps * batch, vocab)),
                               F.reshape(targets, (steps * batch,)))



def torch_step(model: LanguageModel, tokens, targets, lr: float):
    import torch
    torch.set_num_threads(THREADS)
    lstm = torch.nn.LSTM(model.vocab, model.lstm.hidden_size)
    out = torch.nn.Linear(model.lstm.hidden_size, model.vocab)
    with torch.no_grad():
        for prefix, t in (("lstm.", lstm), ("out.", out)):
            for n, p in t.named_parameters():
                p.copy_(torch.from_numpy(dict(model.named_parameters())[prefix + n].data))
    opt = torch.optim.SGD(list(lstm.parameters()) + list(out.parameters()), lr=lr)
    x = torch.nn.functional.one_hot(torch.from_numpy(tokens), model.vocab).float()
    y = torch.from_numpy(targets).reshape(-1)

    def step():
        opt.zero_grad()
        h, _ = lstm(x)
        loss = torch.nn.functional.cross_entropy(out(h).reshape(-1, model.vocab), y)
        loss.backward()
        opt.step()
        return loss.item()
    return step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--reference-repeats", type=int, default=1)
    args = ap.parse_args()
    import torch
    print(f"machine: {describe(f'Python {platform.python_version()}', f'torch {torch.__version__}')}")
    print(f"LSTM language model: vocab {args.vocab} (one-hot), hidden {args.hidden}, "
          f"{args.steps} steps, batch {args.batch}, float32, SGD; {THREADS} threads each")
    r = np.random.default_rng(0)
    tokens = r.integers(0, args.vocab, (args.steps, args.batch))
    targets = np.roll(tokens, -1, 0)
    specs = (fe.TensorSpec(tokens.shape, "int64"), fe.TensorSpec(targets.shape, "int64"))
    lr = 0.1
    steps, compile_s, first, results = {}, {}, {}, {}
    for name in ("llvm", "reference"):
        fe.manual_seed(0)
        model = LanguageModel(args.vocab, args.hidden)
        t0 = time.perf_counter()
        opts = dict(threads=THREADS) if name == "llvm" else {}
        steps[name] = fe.compile_train(model, None, optim.SGD(lr=lr), *specs, backend=name,
                                       **opts)
        compile_s[name] = time.perf_counter() - t0
    fe.manual_seed(0)
    tstep = torch_step(LanguageModel(args.vocab, args.hidden), tokens, targets, lr)
    compile_s["torch eager"] = 0.0
    run = {"llvm": lambda: steps["llvm"](tokens, targets), "torch eager": tstep,
           "reference": lambda: steps["reference"](tokens, targets)}
    for name, fn in run.items():
        first[name] = fn()
    for _ in range(args.repeats):              # alternate, so both see the same load
        for name in ("llvm", "torch eager"):
            results[name] = min(results.get(name, np.inf), best_of(run[name], 1))
    results["reference"] = best_of(run["reference"], args.reference_repeats)
    base = results["torch eager"]
    print(f"{'':>12} {'step ms':>9} {'vs torch':>9} {'compile s':>10} {'first loss':>11}")
    for name in ("llvm", "torch eager", "reference"):
        t, c = results[name], compile_s[name]
        print(f"{name:>12} {1e3 * t:>9.1f} {base / t:>8.2f}x {c:>10.2f} {first[name]:>11.5f}")


if __name__ == "__main__":
    main()
