"""A character-level RNN (chapter 10): trained with teacher forcing on a text that ships with
the project, then run open loop to write text of its own.

Training feeds the true previous character at each step (teacher forcing); every minibatch
is one compiled training step (forward, BPTT, Adam, gradient clipping). Generation is one
compiled graph: a scan that feeds back its own samples (Gumbel-max over softmax(o_t)).

    python examples/char_rnn.py [--backend reference|llvm|triton|all] [--steps 300]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import irgraph.backends as backends  # noqa: E402
import irgraph as ig  # noqa: E402

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "tiny_corpus.txt")


class TeacherForcedLoss(ig.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, tokens):
        return self.model.loss(tokens)


class Writer(ig.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, noise):
        return self.model.generate(noise=noise)


def train_and_generate(backend: str = "reference", steps: int = 300, seq: int = 32,
                       batch: int = 8, hidden: int = 64, length: int = 200, seed: int = 0,
                       log=print) -> tuple[list[float], str]:
    """Train on random windows of the corpus; return the losses and a generated text."""
    text = open(CORPUS, encoding="utf-8").read()
    vocab = sorted(set(text))
    codes = np.array([vocab.index(c) for c in text], np.int64)
    ig.manual_seed(seed)
    model = ig.nn.RNNLanguageModel(len(vocab), hidden)
    t0 = time.perf_counter()
    step = ig.compile_train(TeacherForcedLoss(model), None,
                            ig.optim.Adam(lr=0.01, clip_grad_norm=5.0),
                            ig.TensorSpec((seq, batch), "int64"), backend=backend)
    log(f"[{backend}] compiled the training step in {time.perf_counter() - t0:.1f} s")
    r = np.random.default_rng(seed)
    losses = []
    for i in range(steps):
        starts = r.integers(0, len(codes) - seq, batch)
        window = np.stack([codes[s:s + seq] for s in starts], 1)      # (seq, batch)
        losses.append(float(step(window)))
        if i % max(1, steps // 5) == 0 or i == steps - 1:
            log(f"[{backend}] step {i:4d}  loss per character {losses[-1]:.3f}")
    write = ig.compile(Writer(model), ig.TensorSpec((length, 1, len(vocab))), backend=backend)
    noise = r.uniform(1e-7, 1 - 1e-7, (length, 1, len(vocab))).astype(np.float32)
    sample = "".join(vocab[i] for i in write(noise)[:, 0])
    log(f"[{backend}] generated open loop:\n{sample}\n")
    return losses, sample


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="reference",
                    help=f"one of {backends.available()} or 'all'")
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args(argv)
    names = backends.available() if args.backend == "all" else [args.backend]
    for name in names:
        losses, _ = train_and_generate(name, args.steps)
        print(f"[{name}] loss {losses[0]:.3f} -> {np.mean(losses[-10:]):.3f}")


if __name__ == "__main__":
    main()
