"""charlm's epoch on a GPU against a bare PyTorch loop of the same model, in one process.

    python benchmarks/gpu_speed.py                       # CUDA: 3-layer LSTM of 512, batch 128, 128 steps, Song ci
    python benchmarks/gpu_speed.py --small               # anywhere (the default on the CPU): 2 x 64 LSTM, 60,000 characters
    python benchmarks/gpu_speed.py --json $OUT/gpu.json  # also write the figures as JSON

For each precision (fp32, then bf16 and fp16 where the device has them) it
times, on the same minibatches (consecutive sampling, Adam, clip 1):

    charlm emb   `charlm.train.loop.train` of `--model lstm --embedding H`: the same
                 architecture as the bare loop (embedding H -> LSTM -> dense);
                 one epoch's wall time = training + validation (all streams the
                 device rule picks) + writing last.pt / best.pt
    charlm 1hot  the same with the default one-hot input (`--embedding 0`): the
                 looked-up columns of W_ih and an identity first layer
    bare         nn.Embedding + nn.LSTM + nn.Linear, written out in 30 lines:
                 training time of one epoch, no validation, no checkpoint

Each run trains 2 epochs and reports the second (the first pays cuDNN's
and the allocator's warm-up); the bare loop runs before and after charlm's
runs and the faster of the two counts. On CUDA, peak memory is
torch.cuda.max_memory_allocated over each run. The issue's targets (CUDA):
charlm's epoch wall time at most 1.15x the bare loop's training time, and
reduced precision at least 1.3x fp32 at the same validation perplexity (1%).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from charlm.device import Precision  # noqa: E402
from charlm.data.batches import epoch_batches  # noqa: E402
from charlm.config import Config  # noqa: E402
from charlm.data.corpus import load_corpus  # noqa: E402
from charlm.errors import CharlmError  # noqa: E402
from charlm.device import pick_device  # noqa: E402
from charlm.train.loop import train  # noqa: E402
from charlm.train.validate import perplexity as evaluate  # noqa: E402

EPOCHS = 2  # the second is timed


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def run_charlm(config: Config, corpus, device) -> dict:
    """charlm.train.loop.train for EPOCHS epochs; the last epoch's wall time from one log line to the next."""
    stamps = []

    def log(line: str) -> None:
        if line.startswith("epoch"):
            sync(device)
            stamps.append(time.perf_counter())

    reset_peak(device)
    with tempfile.TemporaryDirectory() as run_dir:
        began = time.perf_counter()
        result = train(config, corpus, run_dir, log=log)
    last = result.metrics[-1]
    wall = stamps[-1] - (stamps[-2] if len(stamps) > 1 else began)
    return {"wall_s": wall, "train_s": last["seconds"], "val_s": last.get("val_seconds"),
            "val_ppl": last["val_ppl"], "chars_per_s": last["chars_per_sec"], "peak_mib": peak_mib(device)}


class BareLSTM(nn.Module):
    def __init__(self, vocab: int, hidden: int, layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.lstm = nn.LSTM(hidden, hidden, layers, batch_first=True)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, X, state):
        Y, state = self.lstm(self.embed(X), state)
        return self.out(Y), state


def run_bare(config: Config, corpus, device, precision: Precision) -> dict:
    """The bare loop: same batches, Adam, clipping and loss; the last epoch's training time."""
    torch.manual_seed(config.seed)
    V = len(corpus.vocab)
    model = BareLSTM(V, config.hidden, config.layers).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    reset_peak(device)
    for epoch in range(1, EPOCHS + 1):
        sync(device)
        began = time.perf_counter()
        state, n, total = None, 0, 0.0
        for X, Y in epoch_batches(corpus.train, config, epoch, device):
            if state is None:
                zeros = torch.zeros(config.layers, X.shape[0], config.hidden, device=device)
                state = (zeros, zeros.clone())
            state = tuple(s.detach() for s in state)
            with precision.autocast():
                logits, state = model(X, state)
                loss = F.cross_entropy(logits.reshape(-1, V), Y.reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            precision.backward(loss)
            precision.unscale(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), config.clip)
            precision.step(optimizer)
            total += loss.item() * Y.numel()
            n += Y.numel()
        sync(device)
        seconds = time.perf_counter() - began
    return {"train_s": seconds, "train_ppl": math.exp(total / n), "chars_per_s": n / seconds,
            "peak_mib": peak_mib(device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", default=str(Path(__file__).resolve().parents[2] / "shared/data/songci.txt.gz"))
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--small", action="store_true", help="a 2-layer LSTM of 64 on 60,000 characters (the default on the CPU)")
    parser.add_argument("--precisions", default="fp32,bf16,fp16")
    parser.add_argument("--max-chars", type=int, default=None)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()

    device = pick_device(args.device)
    small = args.small or device.type != "cuda"
    shape = (dict(layers=2, hidden=64, batch_size=32, num_steps=35) if small
             else dict(layers=3, hidden=512, batch_size=128, num_steps=128))
    max_chars = args.max_chars if args.max_chars is not None else (60_000 if small else 0)
    base = Config(corpus=args.corpus, max_chars=max_chars, model="lstm", epochs=EPOCHS, lr=0.002, clip=1.0,
                  pred_every=0, device=device.type, preset="none", **shape).validate()
    corpus = load_corpus(base)
    print(f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else f", {torch.get_num_threads()} threads"))
    print(f"corpus {corpus.source}: {len(corpus.train):,} train, {len(corpus.val):,} validation characters, "
          f"vocabulary {len(corpus.vocab):,}; LSTM {shape['layers']} x {shape['hidden']}, batch {shape['batch_size']}, "
          f"{shape['num_steps']} steps; epoch {EPOCHS} of {EPOCHS} timed")
    rows = []
    for name in args.precisions.split(","):
        try:
            precision = Precision(name, device)
        except CharlmError as e:
            print(f"{name}: refused: {e}")
            continue
        emb = Config(**{**base.to_dict(), "precision": name, "embedding": shape["hidden"]})
        onehot = Config(**{**base.to_dict(), "precision": name})
        first = run_bare(emb, corpus, device, precision)
        for variant, config in (("charlm emb", emb), ("charlm 1hot", onehot)):
            rows.append({"precision": name, "variant": variant, **run_charlm(config, corpus, device)})
        # the bare loop before and after charlm's runs, the faster one counted: a busy neighbour or a
        # clock change then hurts the baseline no more than charlm
        again = run_bare(emb, corpus, device, precision)
        rows.insert(len(rows) - 2, {"precision": name, "variant": "bare", **min(first, again, key=lambda r: r["train_s"])})
    print(f"\n{'precision':9} {'variant':12} {'train s':>8} {'val s':>7} {'epoch s':>8} {'x bare':>7} "
          f"{'chars/s':>10} {'val ppl':>9} {'peak MiB':>9}")
    bare_s = {r["precision"]: r["train_s"] for r in rows if r["variant"] == "bare"}
    for r in rows:
        wall = r.get("wall_s", r["train_s"])
        ratio = wall / bare_s[r["precision"]]
        val_s = f"{r['val_s']:7.2f}" if r.get("val_s") is not None else f"{'-':>7}"
        val_ppl = f"{r['val_ppl']:9.2f}" if "val_ppl" in r else f"{'-':>9}"
        peak = f"{r['peak_mib']:9.0f}" if r.get("peak_mib") is not None else f"{'-':>9}"
        print(f"{r['precision']:9} {r['variant']:12} {r['train_s']:8.2f} {val_s} {wall:8.2f} {ratio:6.2f}x "
              f"{r['chars_per_s']:10,.0f} {val_ppl} {peak}")
    fp32 = {r["variant"]: r for r in rows if r["precision"] == "fp32"}
    for r in rows:
        if r["precision"] != "fp32" and r["variant"] in fp32 and "val_ppl" in r:
            base_r = fp32[r["variant"]]
            print(f"{r['precision']} / fp32, {r['variant']}: {base_r['wall_s'] / r['wall_s']:.2f}x speed, "
                  f"val ppl {100 * (r['val_ppl'] / base_r['val_ppl'] - 1):+.2f}%")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": str(device), "torch": torch.__version__, "shape": shape,
                                               "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
