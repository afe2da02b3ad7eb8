"""The issue's acceptance table: one short run per model family plus `--preset best`, as a markdown table.

    python benchmarks/model_table.py                      # all rows, default corpus (minutes: see docs/baseline.md)
    python benchmarks/model_table.py --rows kn,best       # only some rows

Every family runs on the default corpus (newlines kept, the last 10% held
out) with the train defaults (hidden 256, Adam lr 0.002, consecutive
sampler) and the same short budget, `--epochs` with early stopping after
`--patience` epochs without a better validation perplexity; `kn` counts once;
`best` is `charlm train --preset best` unchanged. "minutes" is the wall time
of the whole run (training, validation, checkpoints), so it depends on what
else the machine is doing: the load average is printed beside it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from charlm.run.checkpoint import load_checkpoint, model_from_checkpoint
from charlm.config import Config, apply_preset
from charlm.data.corpus import load_corpus
from charlm.models import build_model, count_parameters
from charlm.models.kn import KNModel
from charlm.train.loop import train
from charlm.train.validate import perplexity as evaluate

FAMILIES = ("rnn-scratch", "rnn", "gru", "lstm", "kn")


def row_config(row: str, epochs: int, patience: int, corpus: str | None) -> Config:
    """The configuration of one table row: a model family with the short budget, or the best preset."""
    if row == "best":
        config = apply_preset(Config(), "best", explicit=set())
    else:
        config = Config(model=row, epochs=epochs, patience=patience)
    return replace(config, corpus=corpus, pred_every=0).validate()


def describe_params(model) -> str:
    """Trainable parameters, and for n-gram parts the number of stored counts."""
    counts = sum(int((t > 0).sum()) for m in model.modules() if isinstance(m, KNModel) for t in m.kn.state_dict()["counts"])
    n = count_parameters(model)
    if not counts:
        return f"{n:,}"
    return f"{n:,} + {counts:,} n-gram counts" if n else f"{counts:,} n-gram counts"


def run_row(row: str, config: Config, corpus, out: Path) -> dict:
    """Train one row into out/<row>/ (replacing an earlier table run there) and measure it."""
    run_dir = out / row
    for name in ("metrics.jsonl", "last.pt", "best.pt"):
        (run_dir / name).unlink(missing_ok=True)
    load_before = os.getloadavg()[0]
    began, cpu_began = time.perf_counter(), time.process_time()
    result = train(config, corpus, run_dir, log=lambda line: print(f"  [{row}] {line}", flush=True))
    wall, cpu = time.perf_counter() - began, time.process_time() - cpu_began
    model, _, _ = model_from_checkpoint(load_checkpoint(run_dir / "best.pt"))
    record = {"row": row, "model": config.model, "params": describe_params(model), "best": result.best_val_ppl,
              "epoch": result.best_epoch, "epochs_run": len(result.metrics), "minutes": wall / 60,
              "cpu_minutes": cpu / 60, "load": (load_before + os.getloadavg()[0]) / 2, "config": config}
    if hasattr(model, "weight") and hasattr(model, "neural"):  # a mixture: its network alone, for information
        model.weight = 1.0
        record["neural_alone"] = evaluate(model, corpus.val, torch.device("cpu"))
    return record


def label(record: dict) -> str:
    config = record["config"]
    if record["row"] == "best":
        return (f"**best preset** ({config.model}: {config.mix_neural} + kn{config.order}, "
                f"λ={config.mix_weight:g})")
    return record["row"] + (f" (order {config.order})" if config.model == "kn" else "")


def markdown(records: list[dict]) -> str:
    lines = ["| model | parameters | best val ppl | epoch | minutes | load avg |",
             "|---|---|---:|---:|---:|---:|"]
    for r in records:
        epoch = f"{r['epoch']} of {r['epochs_run']}"
        lines.append(f"| {label(r)} | {r['params']} | {r['best']:.1f} | {epoch} | {r['minutes']:.2f} | {r['load']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(FAMILIES + ("best",)),
                        help="Comma list of rows: any of %(default)s.")
    parser.add_argument("--epochs", type=int, default=20, help="Epoch budget of each family row (default %(default)s).")
    parser.add_argument("--patience", type=int, default=3,
                        help="Stop a family row after this many epochs without improvement (default %(default)s).")
    parser.add_argument("--corpus", default=None, help="Corpus file (default: the Jay Chou lyrics).")
    parser.add_argument("--out", default="checkpoints/model-table", help="Where the runs go (default %(default)s).")
    args = parser.parse_args(argv)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in FAMILIES + ("best",)]
    if unknown:
        print(f"error: unknown rows {', '.join(unknown)}; choose from {', '.join(FAMILIES + ('best',))}", file=sys.stderr)
        return 2
    configs = {row: row_config(row, args.epochs, args.patience, args.corpus) for row in rows}
    corpus = load_corpus(next(iter(configs.values())))  # every row reads the same text and split
    print(f"corpus {corpus.source}: {len(corpus.train):,} training and {len(corpus.val):,} validation characters, "
          f"vocabulary {len(corpus.vocab):,}; {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}", flush=True)
    records = []
    for row, config in configs.items():
        print(f"{row}: {config.model}, {count_parameters(build_model(config, len(corpus.vocab))):,} parameters ...",
              flush=True)
        records.append(run_row(row, config, corpus, Path(args.out)))
    print()
    print(markdown(records))
    for r in records:
        if "neural_alone" in r:
            print(f"\n{r['row']}: its {r['config'].mix_neural} part alone (λ = 1) has validation perplexity "
                  f"{r['neural_alone']:.1f} at the same checkpoint.")
    total = sum(r["minutes"] for r in records)
    print(f"\ntotal {total:.1f} minutes; CPU time per row (minutes): "
          + ", ".join(f"{r['row']} {r['cpu_minutes']:.1f}" for r in records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
