"""Training speed of the textbook path (one-hot, step by step) against the fast path, in one process.

    python benchmarks/train_speed.py                 # from the repository root
    python benchmarks/train_speed.py --threads 1 --batches 10 --rounds 3

Each variant trains hidden 256, batch 32, 35 steps on the first 10,000
characters of the default corpus with the trainer's own pieces (Adam, global
norm clipping, cross-entropy over all steps). Variants run in interleaved
rounds of `--batches` minibatches, so a neighbour's load hits all of them
alike; the best round is the figure (the least disturbed), the median is
printed beside it.

FLOPs per trained character (a multiply-add counts 2), with H hidden units and V characters:

    forward    H_{t-1} W_hh  2H^2      H_t W_hq      2HV
    backward   dA W_hh^T     2H^2      dO W_hq^T     2HV
               H^T dA        2H^2      H^T dO        2HV
    input      a row lookup forward and a row scatter-add backward: no products
    total      6H^2 + 6HV  (biases, tanh, softmax and Adam are lower order and not counted)

The peak is the best float32 torch.mm rate over the model's own matrix shapes
(and a 1024 cube), measured in this run before and after the training rounds.
The "fast" path of rnn-scratch, and of the one-layer rnn on the CPU, runs its
recurrence through charlm.models.fastrnn.tanh_recurrence (a hand-written backward
through time); on CUDA the nn models' fast path is torch's own module (cuDNN)
fed looked-up columns. "torch" is torch's nn.RNN / GRU / LSTM alone, fed
one-hot vectors: the baseline the fast path must keep up with on every device.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from charlm.data.batches import epoch_batches  # noqa: E402
from charlm.config import Config  # noqa: E402
from charlm.data.corpus import load_corpus  # noqa: E402
from charlm.run.metrics import perplexity  # noqa: E402
from charlm.models import build_model, detach_state  # noqa: E402
from charlm.device import pick_device  # noqa: E402
from charlm.train.loop import grad_clipping, make_optimizer  # noqa: E402


class PlainTorch(torch.nn.Module):
    """torch's own nn.RNN / GRU / LSTM fed one-hot vectors, + nn.Linear: the "torch" baseline (cuDNN on a GPU)."""

    def __init__(self, cell: str, vocab_size: int, hidden: int):
        super().__init__()
        module = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cell]
        self.cell, self.vocab_size, self.hidden = cell, vocab_size, hidden
        self.rnn = module(vocab_size, hidden, batch_first=True)
        self.dense = torch.nn.Linear(hidden, vocab_size)

    def begin_state(self, batch_size: int, device=None):
        h = torch.zeros(1, batch_size, self.hidden, device=device)
        return (h, h.clone()) if self.cell == "lstm" else h

    def forward(self, X, state):
        Y, state = self.rnn(F.one_hot(X, self.vocab_size).float(), state)
        return self.dense(Y), state


def make_variant(name: str, config: Config, vocab_size: int, device):
    """(model, optimizer) for a variant name such as 'rnn-scratch textbook', 'rnn fast' or 'rnn torch'."""
    model_name, path = name.split(" ", 1)
    torch.manual_seed(config.seed)
    if path == "torch":
        model = PlainTorch(model_name, vocab_size, config.hidden).to(device)
        return model, make_optimizer(config, model)
    model = build_model(Config(**{**config.to_dict(), "model": model_name, "onehot": path == "textbook"}), vocab_size)
    model = model.to(device)
    if path == "compiled":
        model.forward = torch.compile(model.forward)
    return model, make_optimizer(config, model)


# --- measuring -------------------------------------------------------------------

def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(shapes, device, reps: int = 10, rounds: int = 5) -> dict:
    """Best float32 torch.mm rate (GFLOP/s) for each (m, k, n)."""
    rates = {}
    for m, k, n in shapes:
        a, b, c = (torch.randn(m, k, device=device), torch.randn(k, n, device=device),
                   torch.empty(m, n, device=device))
        for _ in range(3):
            torch.mm(a, b, out=c)
        best = math.inf
        for _ in range(rounds):
            sync(device)
            began = time.perf_counter()
            for _ in range(reps):
                torch.mm(a, b, out=c)
            sync(device)
            best = min(best, (time.perf_counter() - began) / reps)
        rates[(m, k, n)] = 2 * m * k * n / best / 1e9
    return rates


def minibatches(indices, config: Config, count: int, device):
    """`count` minibatches from consecutive epochs: (X, Y, fresh) with fresh=True where an epoch starts."""
    out, epoch = [], 1
    while len(out) < count:
        for i, (X, Y) in enumerate(epoch_batches(indices, config, epoch, device)):
            out.append((X, Y, i == 0))
        epoch += 1
    return out[:count]


def train_steps(model, optimizer, batches, clip: float, state=None):
    """The trainer's minibatch step, repeated; returns (summed loss, characters, final state)."""
    loss_sum, n = 0.0, 0
    for X, Y, fresh in batches:
        state = model.begin_state(X.shape[0], X.device) if fresh or state is None else detach_state(state)
        logits, state = model(X, state)  # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), Y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_clipping(model.parameters(), clip)
        optimizer.step()
        loss_sum += loss.item() * Y.numel()
        n += Y.numel()
    return loss_sum, n, state


@torch.no_grad()
def val_perplexity(model, indices, device, chunk: int = 256) -> float:
    data = torch.as_tensor(indices, dtype=torch.long, device=device).view(1, -1)  # (1, n)
    state, total, n = model.begin_state(1, device), 0.0, 0
    for j in range(0, data.shape[1] - 1, chunk):
        Y = data[:, j + 1:j + 1 + chunk]
        logits, state = model(data[:, j:j + Y.shape[1]], state)
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), Y.reshape(-1), reduction="sum").item()
        n += Y.numel()
    return perplexity(total, n)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", default=None, help="default: the Jay Chou lyrics, found as charlm finds them")
    parser.add_argument("--max-chars", type=int, default=10000)
    parser.add_argument("--batches", type=int, default=10, help="minibatches per round and variant")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 keeps torch's default")
    parser.add_argument("--check-epochs", type=int, default=10, help="epochs of the same-perplexity check; 0 skips it")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile on the fast path")
    parser.add_argument("--models", default="rnn-scratch,rnn")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)

    config = Config(corpus=args.corpus, max_chars=args.max_chars, hidden=256, batch_size=32, num_steps=35)
    corpus = load_corpus(config)
    B, T, H, V = config.batch_size, config.num_steps, config.hidden, len(corpus.vocab)
    flops_per_char = 6 * H * H + 6 * H * V
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"machine: {cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print(f"corpus: {corpus.source}, {len(corpus.text)} characters, V = {V}; hidden {H}, batch {B}, steps {T}")
    print(f"FLOPs per trained character = 6H^2 + 6HV = {6 * H * H:,} + {6 * H * V:,} = {flops_per_char:,}")

    shapes = [(B * T, H, V), (B * T, V, H), (H, B * T, V), (B, H, H), (H, B * T, H), (1024, 1024, 1024)]
    peaks = matmul_peak(shapes, device)

    names = []
    for model_name in args.models.split(","):
        names += [f"{model_name} textbook", f"{model_name} fast"]
        if model_name in ("rnn", "gru", "lstm"):
            names.append(f"{model_name} torch")  # torch's module alone, one-hot input: the fast path must keep up
        if args.compile:
            names.append(f"{model_name} compiled")
    variants = {name: make_variant(name, config, V, device) for name in names}
    batches = minibatches(corpus.train, config, args.batches, device)
    rates = {name: [] for name in names}
    states = dict.fromkeys(names)
    for name, (model, optimizer) in variants.items():  # warm-up (and compilation)
        _, _, states[name] = train_steps(model, optimizer, batches[:2], config.clip)
    for _ in range(args.rounds):
        for name, (model, optimizer) in variants.items():
            began = time.perf_counter()
            _, n, states[name] = train_steps(model, optimizer, batches, config.clip, states[name])
            rates[name].append(n / (time.perf_counter() - began))

    for shape, rate in matmul_peak(shapes, device).items():
        peaks[shape] = max(peaks[shape], rate)
    peak = max(peaks.values())
    print("\nfloat32 torch.mm, best of 5 x 10 (GFLOP/s): "
          + ", ".join(f"{m}x{k}x{n} {r:.0f}" for (m, k, n), r in peaks.items()))
    print(f"matrix-multiply peak: {peak:.1f} GFLOP/s  (ceiling {peak * 1e9 / flops_per_char:,.0f} chars/s)\n")

    print(f"{'variant':<24}{'chars/s best':>14}{'median':>10}{'x textbook':>12}{'GFLOP/s':>10}{'% of peak':>11}")
    for name in names:
        best, median = max(rates[name]), statistics.median(rates[name])
        base = max(rates[name.split(" ")[0] + " textbook"])
        gflops = best * flops_per_char / 1e9
        print(f"{name:<24}{best:>14,.0f}{median:>10,.0f}{best / base:>11.2f}x{gflops:>10.1f}{100 * gflops / peak:>10.1f}%")

    if args.check_epochs:
        print(f"\nsame perplexity: {args.check_epochs} epochs from seed {config.seed}, consecutive sampler, Adam lr {config.lr}")
        print(f"{'variant':<24}{'train ppl':>11}{'val ppl':>10}{'vs textbook':>13}")
        for model_name in args.models.split(","):
            base = None
            for path in ("textbook", "fast"):
                name = f"{model_name} {path}"
                model, optimizer = make_variant(name, config, V, device)
                for epoch in range(1, args.check_epochs + 1):
                    batches = [(X, Y, i == 0) for i, (X, Y) in enumerate(epoch_batches(corpus.train, config, epoch, device))]
                    loss_sum, n, _ = train_steps(model, optimizer, batches, config.clip)
                val = val_perplexity(model, corpus.val, device)
                base = base or val
                print(f"{name:<24}{perplexity(loss_sum, n):>11.3f}{val:>10.3f}{100 * (val / base - 1):>12.3f}%")


if __name__ == "__main__":
    main()
