"""How learnable is a synthetic Markov text? Fit the teacher's own family to it and see how close that gets.

    python benchmarks/markov_oracle.py                      # the panel's Markov texts
    python benchmarks/markov_oracle.py --order 3 --vocab 1000 --rank 16 --epochs 90

A text drawn from charlm/synthetic.py is only a fair yardstick for "within 1.10 x
the best possible perplexity" if that is reachable from its training characters
at all. This script gives the model every advantage a learner could have: the
exact form of the teacher (embeddings per position, tanh, output matrix, bias,
the sharpness), its true Gaussian prior as the penalty (a MAP fit), the training
part charlm uses (the first 90%) and the best validation figure over the epochs
(chosen on the validation text itself, so it is a generous bound). It prints that
figure against the exact best possible one, with the teacher's free parameters d
and the rule-of-thumb excess d / 2n nats that any maximum-likelihood fit of d
parameters to n characters pays.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from charlm.data.synthetic import best_perplexity, markov_indices  # noqa: E402

# (order, vocabulary, rank, epochs) of the panel's Markov texts; the epochs are about where the fit stops gaining
PANEL = ((2, 60, 16, 300), (3, 1000, 2, 40), (3, 1000, 4, 60), (3, 1000, 16, 90))


def fit_teacher_family(order: int, vocab: int, rank: int, sharpness: float, length: int, epochs: int,
                       seed: int = 0) -> dict:
    """MAP fit of the teacher's family on the first 90% of the text; the best validation perplexity over the epochs."""
    indices, teacher = markov_indices(order, vocab, length, seed, rank=rank, sharpness=sharpness)
    n_val = max(2, round(length * 0.1))
    best_possible = best_perplexity(indices, teacher, length - n_val + 1)
    x = torch.from_numpy(indices)
    t = torch.arange(order, length)
    context = torch.stack([x[t - 1 - j] for j in range(order)], 1)  # column j: the character j + 1 back
    is_train = t < length - n_val + 1
    torch.manual_seed(seed)
    U = torch.nn.Parameter(0.1 * torch.randn(order, vocab, rank))
    W = torch.nn.Parameter(0.1 * torch.randn(vocab, rank))
    bias = torch.nn.Parameter(torch.zeros(vocab))

    def logits(c):
        return bias + sharpness * torch.tanh(sum(U[j][c[:, j]] for j in range(order))) @ W.T

    def perplexity(c, y):
        with torch.no_grad():
            return math.exp(torch.nn.functional.cross_entropy(logits(c), y).item())

    xs, ys = context[is_train], x[t][is_train]
    xv, yv = context[~is_train], x[t][~is_train]
    n = len(ys)
    opt = torch.optim.Adam([U, W, bias], lr=0.01)
    best = math.inf
    for epoch in range(epochs):
        for batch in torch.randperm(n).split(4096):
            nll = torch.nn.functional.cross_entropy(logits(xs[batch]), ys[batch], reduction="sum")
            prior = 0.5 * (U.pow(2).sum() + rank * W.pow(2).sum())  # the teacher's U ~ N(0, 1), W ~ N(0, 1/rank)
            loss = (nll + prior * len(batch) / n) / len(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
        best = min(best, perplexity(xv, yv))
        if (epoch + 1) % 10 == 0:
            print(f"  o{order}/V{vocab}/r{rank} epoch {epoch + 1}: train {perplexity(xs[:20_000], ys[:20_000]):.2f}, "
                  f"val {perplexity(xv, yv):.2f}, best possible {best_possible:.2f}", file=sys.stderr, flush=True)
    d = U.numel() + W.numel() + bias.numel()
    return {"best_possible": best_possible, "fitted": best, "d": d, "n": n, "excess": d / (2 * n)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--order", type=int, help="one text only: its order (with --vocab and --rank)")
    ap.add_argument("--vocab", type=int, default=1000)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--sharpness", type=float, default=4.0)
    ap.add_argument("--length", type=int, default=200_000)
    ap.add_argument("--epochs", type=int, help="passes of the fit (default: 60 for one text, the PANEL's for the panel)")
    args = ap.parse_args(argv)
    texts = [(args.order, args.vocab, args.rank, 60)] if args.order else PANEL
    print("| text | best possible | teacher's family, fitted | ratio | d | n | d / 2n nats (exp) | minutes |")
    print("|---|---|---|---|---|---|---|---|")
    for order, vocab, rank, epochs in texts:
        began = time.perf_counter()
        r = fit_teacher_family(order, vocab, rank, args.sharpness, args.length, args.epochs or epochs)
        print(f"| order {order}, {vocab} symbols, rank {rank} | {r['best_possible']:.3f} | {r['fitted']:.3f} | "
              f"{r['fitted'] / r['best_possible']:.3f} | {r['d']:,} | {r['n']:,} | {r['excess']:.3f} "
              f"({math.exp(r['excess']):.3f}x) | {(time.perf_counter() - began) / 60:.1f} |", flush=True)


if __name__ == "__main__":
    main()
