"""Training by counting: a model with nothing to learn by gradient (kn) is fitted in one pass, and the
n-gram part of best.pt is recounted with the tuning slice once training is done (kn, mix)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from charlm.config import Config
from charlm.data.corpus import Corpus
from charlm.run.checkpoint import load_checkpoint, save_checkpoint
from charlm.run.metrics import MetricsLog, write_summary
from charlm.train.progress import format_line, log_predictions
from charlm.train.state import TrainResult, checkpoint_payload
from charlm.train.validate import or_inf, perplexity


def train_by_counting(config: Config, corpus: Corpus, model, run_dir: Path, device, resume, log,
                      should_stop=None) -> TrainResult:
    """Fit a model with nothing to learn by gradient (kn) by one count of the training text.

    The count is its only epoch: one metrics.jsonl line and the usual checkpoints, no optimizer.
    """
    if resume is not None:  # counted already: nothing left to train (compare may resume any unfinished-looking run)
        log(f"{config.model} is complete after its one counting pass; nothing to resume")
        result = TrainResult(run_dir, list(resume["metrics"]), resume["best_val_ppl"], resume["best_epoch"])
        write_run_summary(config, corpus, run_dir, result)
        return result
    began = time.perf_counter()
    model.fit_counts(corpus.train, config.kn_discounts, should_stop=should_stop)  # a stop acts between orders
    seconds = max(time.perf_counter() - began, 1e-9)
    # the target-only path: the same figures as the forward one, without (positions x V) n-gram rows
    record = {"epoch": 1, "train_ppl": perplexity(model, corpus.train, device, fast=True),
              "val_ppl": perplexity(model, corpus.val, device, fast=True),
              "seconds": round(seconds, 4), "chars_per_sec": round(len(corpus.train) / seconds, 1), "lr": 0.0}
    result = TrainResult(run_dir, [record], record["val_ppl"], 1)
    payload = checkpoint_payload(config, corpus, model, 1, result)
    save_checkpoint(run_dir / "last.pt", payload)
    save_checkpoint(run_dir / "best.pt", payload)
    MetricsLog(run_dir / "metrics.jsonl").append(record)  # after last.pt: the log never runs ahead of it
    log(format_line(record))
    if config.pred_every:
        log_predictions(config, model, corpus.vocab, device, log)
    write_run_summary(config, corpus, run_dir, result)
    return result


def write_run_summary(config: Config, corpus: Corpus, run_dir: Path, result: TrainResult,
                      before_recount: float | None = None) -> None:
    """RUN/summary.json: the figure the run ends with (the one `train` prints) and the checkpoint it belongs to."""
    summary = {"final": True, "best_val_ppl": result.best_val_ppl, "best_epoch": result.best_epoch,
               "checkpoint": "best.pt", "epochs": result.metrics[-1]["epoch"] if result.metrics else 0,
               "stopped_early": result.stopped_early, "model": config.model, "fingerprint": corpus.fingerprint}
    if result.best_tune_ppl is not None:
        summary["best_tune_ppl"] = result.best_tune_ppl
    if result.stop_reason is not None:  # converged, budget or epochs; with the minutes trained against the budget
        elapsed = result.metrics[-1].get("elapsed") if result.metrics else None
        summary.update(stop_reason=result.stop_reason, train_minutes=round(elapsed / 60, 3) if elapsed else None,
                       budget_minutes=config.time_budget or None)
    if before_recount is not None:  # best.pt's n-gram part was recounted with the tuning slice afterwards
        summary.update(recounted=True, val_ppl_before_recount=before_recount)
    write_summary(run_dir, summary)


def recount_best(config: Config, corpus: Corpus, model, run_dir: Path, device, streams: int, result: TrainResult,
                 log) -> float:
    """Recount best.pt's n-gram part on the whole training text (the tuning slice included) and report that.

    The order, discounts and mixture weights stay as fitted on the tuning slice;
    only the counts grow by the slice, which lies right before the validation
    text (nothing is fitted on the validation text). last.pt keeps the counts
    training used, so a resumed run continues exactly. Returns the figure before the recount.
    """
    payload = load_checkpoint(run_dir / "best.pt")
    model.load_state_dict(payload["model"])
    model.fit_counts(np.concatenate([corpus.train, corpus.tune]), config.kn_discounts)
    val_ppl = or_inf(lambda: perplexity(model, corpus.val, device, streams=streams, fast=True))
    log(f"n-gram part recounted with the tuning slice ({len(corpus.train) + len(corpus.tune):,} characters): "
        f"val ppl {val_ppl:.3f} (was {result.best_val_ppl:.3f})")
    payload.update(model=model.state_dict(), best_val_ppl=val_ppl, recounted_val_ppl=val_ppl)
    save_checkpoint(run_dir / "best.pt", payload)
    before, result.best_val_ppl = result.best_val_ppl, val_ppl
    return before
