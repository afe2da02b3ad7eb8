"""The panel: `charlm train --corpus X` with no other flag (--preset auto) against the best Kneser-Ney order, per corpus.

    python benchmarks/panel.py                       # all corpora (Song ci last: up to ~15 min)
    python benchmarks/panel.py --only lyrics,markov-o2-v60 --work /tmp/charlm-panel

For each corpus: the best KN order's validation perplexity (orders 1-8 counted once
on the training text, each scored on the validation text with its closed-form
discounts: the figure `charlm train --preset none --model kn --order K` prints),
auto's validation perplexity and wall minutes (a fresh `charlm train` process,
counting, evaluation and start-up included), their ratio, and for the synthetic
Markov texts (charlm/synthetic.py) the best perplexity any model can reach there.
The sparse random Markov sources (each context allows only a few successors, drawn
at random) also get their learnable floor: the Bayes estimate that knows every
context's successor set, counted on the training text (`sparse_floor`), and
auto's ratio to it. Prints one markdown table. The Markov texts are written under --work, never
into the repository.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from charlm.run.checkpoint import load_checkpoint  # noqa: E402
from charlm.config import Config  # noqa: E402
from charlm.data.corpus import load_corpus  # noqa: E402
from charlm.models.kn_tuning import choose_order  # noqa: E402
from charlm.data.synthetic import make_markov_text, make_sparse_markov_text  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
# name: (order, vocabulary, teacher rank). The teacher's rank sets how much there is to learn from the
# 180,000 training characters (benchmarks/markov_oracle.py fits the teacher's own family with its true prior:
# 1.035 x the best possible at rank 2, 1.06 x at rank 4, 1.24 x at rank 16). Rank 2 is the order-3 text
# "a small model can predict almost perfectly"; ranks 4 and 16 are harder rows, reported beside it.
MARKOV = {"markov-o2-v60": (2, 60, 16), "markov-o3-v1000-r2": (3, 1000, 2), "markov-o3-v1000-r4": (3, 1000, 4),
          "markov-o3-v1000-r16": (3, 1000, 16)}
# name: (order, alphabet, successors per context) of the sparse random Markov sources, 200,000 characters each.
# 60 symbols: about 50 (order 2) visits per context, where counting is nearly enough; 120 symbols and order 3:
# 10-15 per context, where knowing that only a few successors exist is worth most.
SPARSE = {"sparse-o2-v60-s16": (2, 60, 16), "sparse-o2-v60-s8": (2, 60, 8), "sparse-o2-v120-s6": (2, 120, 6),
          "sparse-o3-v30-s4": (3, 30, 4)}
ORDER = ["lyrics", *MARKOV, *SPARSE, "songci"]  # the long one last


def corpus_path(name: str, work: Path) -> tuple[Path, float | None, float | None]:
    """The file to train on, the best possible validation perplexity when it is known (Markov texts), and the
    learnable floor of a sparse source (the Bayes estimate told the successor sets)."""
    if name == "lyrics":
        return SHARED / "jaychou_lyrics.txt.zip", None, None
    if name == "songci":
        return SHARED / "songci.txt.gz", None, None
    path, best = work / f"{name}.txt", work / f"{name}.best.json"
    if not (path.exists() and best.exists()):
        if name in SPARSE:
            text, floor, ppl = make_sparse_markov_text(*SPARSE[name], 200_000, seed=0)
        else:
            order, vocab, rank = MARKOV[name]
            (text, ppl), floor = make_markov_text(order, vocab, 200_000, seed=0, rank=rank), None
        path.write_text(text, encoding="utf-8")
        best.write_text(json.dumps({"best_ppl": ppl, "floor": floor}))
    saved = json.loads(best.read_text())
    return path, saved["best_ppl"], saved.get("floor")


def best_kn(path: Path) -> tuple[int, float]:
    """(order, validation perplexity) of the best KN order 1-8 with closed-form discounts, counted on the training text."""
    corpus = load_corpus(Config(corpus=str(path), preset="none"))
    choice = choose_order(corpus.train, corpus.val, len(corpus.vocab), max_order=8, fit_discount=False)
    order = min(choice.closed_form_ppl, key=choice.closed_form_ppl.get)
    return order, choice.closed_form_ppl[order]


def run_auto(path: Path, out: Path, timeout: float, extra: list[str]) -> dict:
    """One `charlm train --corpus path` process; its wall minutes, best validation perplexity and chosen recipe."""
    cmd = [sys.executable, "-m", "charlm", "train", "--corpus", str(path), "--out", str(out), "--overwrite", *extra]
    began = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    minutes = (time.perf_counter() - began) / 60
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()[-500:]}")
    payload = load_checkpoint(out / "best.pt")
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    c = payload["config"]
    metrics = load_checkpoint(out / "last.pt")["metrics"]  # every epoch run (best.pt's stop at its epoch)
    best = next(r for r in metrics if r["epoch"] == payload["best_epoch"])
    auto_line = next((line for line in done.stdout.splitlines() if line.startswith("auto: ")), "")
    recipe = (f"{c['model']}" + (f" {c['mix_neural']} {c['hidden']}" if c["model"] == "mix" else f" {c['hidden']}")
              + f", dropout {c['dropout']:g}, KN-{c['order']}"
              + (" modified" if c.get("kn_discount_kinds", 1) == 3 else "") + f", {c.get('mix_fit', 'fixed')} mix, "
              f"{len(metrics)} epochs (best {payload['best_epoch']}), budget {c['time_budget']:g} min")
    return {"ppl": summary.get("best_val_ppl", payload["best_val_ppl"]), "minutes": minutes,
            "ended": summary.get("stop_reason", "-"), "budget": c["time_budget"], "recipe": recipe, "auto_line": auto_line,
            "network_tune_ppl": best.get("tune_neural_ppl"), "ngram_tune_ppl": best.get("tune_ngram_ppl"),
            "elapsed": metrics[-1].get("elapsed")}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(ORDER), help="comma list of: " + ", ".join(ORDER))
    ap.add_argument("--work", default="/tmp/charlm-panel", help="where the Markov texts and the runs go")
    ap.add_argument("--timeout", type=float, default=20 * 60, help="seconds per auto run before it is abandoned")
    ap.add_argument("--train-args", default="", help="extra flags for every charlm train (e.g. '--time-budget 1.5')")
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in [n for n in ORDER if n in args.only.split(",")]:
        path, best_possible, floor = corpus_path(name, work)
        if not path.exists():
            print(f"{name}: {path} not found, skipped", file=sys.stderr)
            continue
        began = time.perf_counter()
        order, kn_ppl = best_kn(path)
        kn_seconds = time.perf_counter() - began
        print(f"{name}: best KN order {order}, val ppl {kn_ppl:.3f} ({kn_seconds:.0f} s)", file=sys.stderr, flush=True)
        auto = run_auto(path, work / f"run-{name}", args.timeout, args.train_args.split())
        print(f"{name}: {auto['auto_line']}", file=sys.stderr)
        print(f"{name}: auto val ppl {auto['ppl']:.3f} in {auto['minutes']:.1f} min", file=sys.stderr, flush=True)
        rows.append((name, order, kn_ppl, auto, best_possible, floor))
    print_table(rows)


def _ratio(a: float, b: float | None) -> str:
    return f"{a / b:.3f}" if b else "-"


def print_table(rows) -> None:
    """One markdown row per corpus: auto against the best KN order, the best possible and the learnable floor."""
    print("| corpus | best KN (order) val ppl | auto val ppl | auto / KN | best possible | auto / best | "
          "learnable floor | floor / KN | auto / floor | network alone (tune) | ended | train min / budget | "
          "auto minutes (wall) | auto's recipe |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, order, kn_ppl, auto, best_possible, floor in rows:
        best = f"{best_possible:.3f}" if best_possible else "-"
        net = f"{auto['network_tune_ppl']:.3f}" if auto["network_tune_ppl"] else "-"
        used = f"{(auto['elapsed'] or 0) / 60:.1f} / {auto['budget']:g}"
        print(f"| {name} | {kn_ppl:.3f} ({order}) | {auto['ppl']:.3f} | {auto['ppl'] / kn_ppl:.3f} | {best} | "
              f"{_ratio(auto['ppl'], best_possible)} | {f'{floor:.3f}' if floor else '-'} | {_ratio(floor or 0, kn_ppl) if floor else '-'} | "
              f"{_ratio(auto['ppl'], floor)} | {net} | {auto['ended']} | {used} | {auto['minutes']:.1f} | {auto['recipe']} |")


if __name__ == "__main__":
    main()
