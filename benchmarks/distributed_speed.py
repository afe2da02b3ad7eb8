"""Characters per second of `charlm train` in one process and under torchrun with N processes.

    python benchmarks/distributed_speed.py                    # 1 process, then torchrun with 2
    python benchmarks/distributed_speed.py --nproc 1 2 4 --epochs 3 -- --hidden 512

Each run trains the acceptance job (rnn, consecutive, global batch 32) on the
default corpus into a temporary directory and reads metrics.jsonl; the figure
is the median over the epochs after the first (which pays for warm-up). The
single process is measured with torch's default thread count and with one
thread, since torchrun gives each process one thread (OMP_NUM_THREADS=1).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

JOB = ["--model", "rnn", "--sampler", "consecutive", "--batch-size", "32", "--pred-every", "0", "--device", "cpu"]


def run(label: str, launcher: list[str], args: list[str], env: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        done = subprocess.run([*launcher, *args, "--out", str(out)], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{label} failed:\n{done.stdout}{done.stderr}")
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    later = records[1:] or records
    return {"label": label, "chars_per_sec": statistics.median(r["chars_per_sec"] for r in later),
            "train_ppl": records[-1]["train_ppl"], "val_ppl": records[-1]["val_ppl"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, nargs="+", default=[2], help="process counts for torchrun")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("extra", nargs="*", help="more `charlm train` flags, after --")
    opts = parser.parse_args()
    args = ["train", *JOB, "--epochs", str(opts.epochs), *opts.extra]
    python = [sys.executable, "-m", "charlm"]
    results = [
        run("1 process, default threads", python, args, {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}),
        run("1 process, 1 thread", python, args, {**os.environ, "OMP_NUM_THREADS": "1"}),
    ]
    for n in opts.nproc:
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n), "-m", "charlm"]
        results.append(run(f"torchrun, {n} processes x 1 thread", torchrun, args, {**os.environ, "OMP_NUM_THREADS": "1"}))
    print(f"{'run':36s} {'chars/s':>10s} {'train ppl':>10s} {'val ppl':>10s}")
    for r in results:
        print(f"{r['label']:36s} {r['chars_per_sec']:10.0f} {r['train_ppl']:10.4f} {r['val_ppl']:10.4f}")


if __name__ == "__main__":
    main()
