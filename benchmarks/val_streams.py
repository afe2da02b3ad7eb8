"""How much batched validation moves the perplexity, and what it saves: a trained run, S = 1 against S streams.

    python benchmarks/val_streams.py checkpoints/RUN            # the run's own corpus and split
    python benchmarks/val_streams.py checkpoints/RUN --streams 1,4,19,32,64,256 --device cpu

Loads best.pt (else last.pt) of a run, re-reads the corpus its config names,
and evaluates the held-out text as S contiguous streams (charlm.train.validate.perplexity)
for each S; S = 1 is the exact single-stream figure. "auto" is what
`--val-streams 0` picks on this device.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from charlm.device import val_streams  # noqa: E402
from charlm.run.checkpoint import load_checkpoint, model_from_checkpoint  # noqa: E402
from charlm.data.corpus import load_corpus  # noqa: E402
from charlm.device import pick_device  # noqa: E402
from charlm.train.validate import perplexity as evaluate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="a run directory (best.pt or last.pt inside)")
    parser.add_argument("--streams", default="1,auto,8,32,64,256")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = parser.parse_args()
    run = Path(args.run)
    path = run / "best.pt" if (run / "best.pt").exists() else run / "last.pt"
    model, vocab, config = model_from_checkpoint(load_checkpoint(path))
    device = pick_device(args.device)
    model = model.to(device)
    corpus = load_corpus(config)
    auto = {"cpu": val_streams(0, len(corpus.val), torch.device("cpu")),
            "cuda": val_streams(0, len(corpus.val), torch.device("cuda"))}
    print(f"{path}: {config.model}, hidden {config.hidden}, layers {config.layers}; {corpus.source}: "
          f"{len(corpus.val):,} held-out characters; auto streams: cpu {auto['cpu']}, cuda {auto['cuda']}; device {device}")
    rows = []
    for item in args.streams.split(","):
        s = val_streams(0, len(corpus.val), device) if item == "auto" else int(item)
        began = time.perf_counter()
        ppl = evaluate(model, corpus.val, device, streams=s)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rows.append((f"{s}" + (" (auto)" if item == "auto" else ""), s, ppl, time.perf_counter() - began))
    exact = next((ppl for _, s, ppl, _ in rows if s == 1), None)
    print(f"{'streams':>8} {'chars each':>11} {'val ppl':>10} {'vs S=1':>9} {'seconds':>8}")
    for label, s, ppl, seconds in rows:
        versus = f"{100 * (ppl / exact - 1):>+8.3f}%" if exact else f"{'-':>9}"
        print(f"{label:>8} {len(corpus.val) // s:>11,} {ppl:>10.3f} {versus} {seconds:>8.2f}")


if __name__ == "__main__":
    main()
