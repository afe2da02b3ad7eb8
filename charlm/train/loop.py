"""The training loop: minibatches -> loss -> clipped gradient step, then validation perplexity and checkpoints.

`train()` reads no globals and prints nothing: lines go to the `log` callback
and within-epoch progress to `progress(done, total)`, both supplied by the CLI.
Its parts have rooms of their own: state.py (checkpoint payload, resume),
validate.py (perplexity), progress.py (the lines), counting.py (kn, recounting).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from charlm.config import Config
from charlm.data.batches import carries_state, epoch_batches, num_batches
from charlm.data.corpus import Corpus
from charlm.device import Precision, maybe_compile, pick_device, val_streams
from charlm.errors import CharlmError
from charlm.models import build_model, detach_state
from charlm.run import metrics
from charlm.run.metrics import MetricsLog, discard_summary
from charlm.run.checkpoint import remove_stale_temporaries, save_checkpoint
from charlm.train.budget import Budget, hold_floor, step_epoch_schedule
from charlm.train.counting import recount_best, train_by_counting, write_run_summary
from charlm.train.distributed import ProcessGroup
from charlm.train.progress import format_line, log_predictions
from charlm.train.state import EpochPosition, TrainingInterrupted, TrainResult, checkpoint_payload, set_rng_state
from charlm.train.stopping import Progress, ending_line, stop_reason
from charlm.train.validate import or_inf, perplexity, tune_perplexity


class NonFiniteLoss(CharlmError):
    """The loss became NaN or infinite: training stops and the last good checkpoint stays."""


def grad_clipping(params, theta: float) -> float:
    """Scale all gradients down together so that their global L2 norm is at most `theta` (the textbook's rule).

    Returns the norm before clipping; `theta` 0 leaves the gradients alone.
    """
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) if grads else torch.tensor(0.0)
    if theta and norm > theta:
        for g in grads:
            g.mul_(theta / norm)
    return float(norm)


def make_optimizer(config: Config, model) -> torch.optim.Optimizer:
    """SGD or Adam (--optimizer) over the model's weights, with --lr and --weight-decay."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def make_scheduler(config: Config, optimizer):
    """The learning-rate schedule, stepped once per epoch (None for a constant rate).

    Under --time-budget a cosine schedule is laid over the planned minibatches
    instead, stepped per minibatch by the trainer (charlm/train/budget.py): None here.
    """
    if config.lr_schedule == "cosine" and config.time_budget:
        return None
    if config.lr_schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=1)
    if config.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    return None


def train_epoch(model, batches, optimizer, clip: float, carry: bool, epoch: int, progress=None, total=None,
                position: EpochPosition | None = None, should_stop=None, precision: Precision | None = None):
    """One pass over the minibatches; returns (summed loss, characters seen).

    `position` (an EpochPosition) starts the pass part-way, as an interrupted run
    left it, and is brought up to date after every step; the pass ends early,
    between two minibatches, as soon as `should_stop()` is true. `precision`
    (charlm.device.Precision) runs the step under autocast with its scaler; None: plain fp32.
    """
    position = position if position is not None else EpochPosition()
    autocast = precision.autocast if precision is not None else contextlib.nullcontext
    state = position.state
    for i, (X, Y) in enumerate(batches):
        if i < position.batch:
            continue  # done before the interrupt: the epoch's order is fixed by (seed, epoch), so skip exactly these
        if should_stop is not None and should_stop():
            break
        if state is None or not carry:
            state = model.begin_state(X.shape[0], X.device)  # random sampling: a fresh start each minibatch
        else:
            state = detach_state(state)  # consecutive: keep the values, cut the graph (truncated BPTT)
        with autocast():
            logits, state = model(X, state)  # (batch, steps, vocab)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), Y.reshape(-1))
        value = loss.item()
        if not math.isfinite(value):
            raise NonFiniteLoss(f"the training loss became {value} in epoch {epoch} (minibatch {i + 1}): "
                                + divergence_advice(optimizer.param_groups[0]["lr"], clip))
        optimizer.zero_grad(set_to_none=True)
        if precision is None:
            loss.backward()
            grad_clipping(model.parameters(), clip)
            optimizer.step()
        else:
            precision.backward(loss)
            precision.unscale(optimizer)
            grad_clipping(model.parameters(), clip)
            precision.step(optimizer)
        position.loss_sum += value * Y.numel()
        position.n += Y.numel()
        position.batch, position.state = i + 1, detach_state(state) if carry else None
        if progress is not None:
            progress(i + 1, total)
    return position.loss_sum, position.n


def train(config: Config, corpus: Corpus, run_dir: str | Path, *, resume: dict | None = None,
          log=lambda line: None, progress=None, dist: ProcessGroup | None = None, should_stop=None) -> TrainResult:
    """Train the model described by `config` on `corpus`, writing metrics and checkpoints into `run_dir`.

    `resume` (a loaded last.pt) continues exactly where it stopped; `dist` makes this process one
    rank of a torchrun run (only rank 0 logs and writes); when `should_stop()` turns true the
    state, mid-epoch included, is saved to last.pt and TrainingInterrupted is raised.
    """
    run_dir, dist = Path(run_dir), dist or ProcessGroup()
    if not dist.is_main:  # only rank 0 prints and writes
        log, progress = (lambda line: None), None
    device, model = _start(config, corpus, run_dir, dist)
    if model.counts_ngrams and not any(p.requires_grad for p in model.parameters()):  # kn: nothing learnt by gradient
        if not dist.is_main:  # under torchrun nothing is shared out: rank 0 counts and writes alone
            return TrainResult(run_dir)
        return train_by_counting(config, corpus, model, run_dir, device, resume, log, should_stop)
    if resume is None:  # mix: count now; on resume the counts come back with the checkpoint's state_dict
        model.fit_counts(corpus.train, config.kn_discounts, should_stop=should_stop)  # a stop here just ends

    # resume
    optimizer = make_optimizer(config, model)
    run = _Run(config, corpus, model, optimizer, TrainResult(run_dir), make_scheduler(config, optimizer),
               progress=Progress(config.patience))
    metrics_log = MetricsLog(run_dir / "metrics.jsonl")
    start, position = _resume(run, resume, device, metrics_log if dist.is_main else None)
    check_minibatch_fits(config, len(corpus.train))  # refuse before the first checkpoint is written
    total = num_batches(len(corpus.train), config)
    # The clock runs from here (counting n-grams excluded); under --time-budget it also plans steps and the rate.
    extended = resume is not None and config.epochs > resume["config"]["epochs"]  # more --epochs on resume
    run.clock = clock = Budget(config.time_budget, config.epochs * total, config.lr_schedule == "cosine",
                               (resume or {}).get("budget"), frozen=extended and config.lr_schedule == "cosine")
    precision = Precision(config.precision, device)  # refuses bf16 / fp16 where the device cannot
    last = _first_checkpoint(run, run_dir, dist, resume)
    net = maybe_compile(dist.wrap(model), config.compile, device, log)  # DDP under torchrun; else the model itself
    streams = _validation_streams(config, corpus, device, log)
    mid_epoch_stop, budget_stop, stop_now = _stops(config, dist, should_stop, clock)
    carry, step_hook = carries_state(config.sampler), _budget_hook(run, config.lr, bool(config.time_budget), progress)
    out_of_time, reason = False, "epochs"
    for epoch in range(start, config.epochs + 1):
        if config.time_budget and dist.all_reduce_sum(int(clock.over()))[0]:
            log(f"time budget of {config.time_budget:g} min spent: stopping")
            reason = "budget"
            break

        # forward backward update
        position = position or EpochPosition()
        began = time.perf_counter() - position.seconds
        batches = (dist.shard(X, Y) for X, Y in epoch_batches(corpus.train, config, epoch, device))  # this rank's rows
        try:
            loss_sum, n = train_epoch(net, batches, run.optimizer, config.clip, carry, epoch, step_hook, total,
                                      position, stop_now, precision)
        except NonFiniteLoss as e:
            raise NonFiniteLoss(f"{e}; the last good checkpoint {last} is unchanged") from None
        if mid_epoch_stop is not None and mid_epoch_stop():
            position.seconds = time.perf_counter() - began
            save_checkpoint(last, run.snapshot(epoch - 1, position.to_dict(epoch)))
            raise TrainingInterrupted(last, epoch, position.batch, total)
        out_of_time = budget_stop is not None and budget_stop()  # the budget ends this epoch part-way
        position = None
        loss_sum, n = dist.all_reduce_sum(loss_sum, n)  # the whole minibatches, over all ranks

        # evaluate
        record = _epoch_record(run, epoch, loss_sum, n, time.perf_counter() - began, device, dist, streams, last)

        # keep the best
        _save_epoch(run, epoch, record, last, dist, metrics_log)

        # logging
        log(format_line(record))
        if dist.is_main and config.pred_every and (epoch % config.pred_every == 0 or epoch == config.epochs or out_of_time):
            log_predictions(config, model, corpus.vocab, device, log)
        if (reason := stop_reason(run, record, out_of_time, log) or reason) != "epochs":
            break
        if should_stop is not None and epoch < config.epochs and dist.all_reduce_sum(int(should_stop()))[0]:
            raise TrainingInterrupted(last, epoch, None, total)  # between epochs: last.pt was just written
    _finish(run, run_dir, device, streams, dist, reason, log)
    dist.close()  # under torchrun: all ranks leave the process group together, once rank 0 has written
    return run.result


def _finish(run, run_dir: Path, device, streams: int, dist: ProcessGroup, reason: str, log) -> None:
    """Say how training ended, recount best.pt's n-gram part with the tuning slice, write summary.json (rank 0)."""
    config, corpus, model = run.config, run.corpus, run.model
    run.result.stop_reason = reason
    log(ending_line(config, reason, run.clock))
    before = None
    if dist.is_main and len(corpus.tune) and model.counts_ngrams and (run_dir / "best.pt").exists():
        before = recount_best(config, corpus, model, run_dir, device, streams, run.result, log)
    if dist.is_main:  # the figure just reported, beside the epochs' lines (docs/errors.md, "summary.json")
        write_run_summary(config, corpus, run_dir, run.result, before)


@dataclass
class _Run:
    """What one run changes as it goes: the weights, the optimizer and schedule, the record, the clock."""

    config: Config
    corpus: Corpus
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    result: TrainResult
    scheduler: object = None
    clock: Budget | None = None
    progress: Progress | None = None  # epochs since the last progress (early stopping counts them)

    def snapshot(self, epoch: int, partial: dict | None = None) -> dict:
        """The checkpoint payload: everything resume needs (`partial`: the position inside epoch + 1)."""
        payload = checkpoint_payload(self.config, self.corpus, self.model, epoch, self.result, self.optimizer,
                                     self.scheduler, self.progress.bad_epochs, partial)
        payload.update(best_tune_ppl=self.result.best_tune_ppl, budget=self.clock.state(), **self.progress.state())
        return payload

    def keep_best(self, epoch: int, record: dict) -> bool:
        """Note the epoch's score, step the schedule; True when it is the best so far (best.pt is rewritten).

        With a tuning slice, best.pt and early stopping read it; the validation text only reports. Early
        stopping also counts a mixture's network part improving on its own as progress (charlm/train/stopping.py).
        """
        val_ppl, tune_ppl, result = record["val_ppl"], record.get("tune_ppl"), self.result
        score = val_ppl if tune_ppl is None else tune_ppl
        best_score = result.best_val_ppl if tune_ppl is None else (result.best_tune_ppl or math.inf)
        improved = score < best_score
        if improved:
            result.best_val_ppl, result.best_tune_ppl, result.best_epoch = val_ppl, tune_ppl, epoch
        self.progress.update(improved, record)
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(score)
        elif self.scheduler is not None:
            step_epoch_schedule(self.scheduler, self.optimizer)
        return improved


def _start(config: Config, corpus: Corpus, run_dir: Path, dist: ProcessGroup):
    """(device, freshly built model) of this rank, once every rank agrees on the text and the settings."""
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    device = dist.start(pick_device(config.device))  # under torchrun: joins the process group, picks this rank's GPU
    dist.check_same("corpus", corpus.fingerprint)
    dist.check_same("configuration", config.to_dict())
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    return device, build_model(config, len(corpus.vocab)).to(device)


def _save_epoch(run: _Run, epoch: int, record: dict, last: Path, dist: ProcessGroup, metrics_log: MetricsLog) -> None:
    """Write last.pt (and best.pt when the epoch is the best so far), then the epoch's line of metrics.jsonl."""
    improved = run.keep_best(epoch, record)
    payload = run.snapshot(epoch)
    if dist.is_main:
        save_checkpoint(last, payload)
        if improved:
            save_checkpoint(last.parent / "best.pt", payload)
        metrics_log.append(record)  # after last.pt, so that the log never runs ahead of the checkpoint

def _first_checkpoint(run: _Run, run_dir: Path, dist: ProcessGroup, resume: dict | None) -> Path:
    """last.pt's path; a new run writes it at once, so that a kill at any moment leaves a last.pt to resume."""
    last = run_dir / "last.pt"
    if dist.is_main:
        remove_stale_temporaries(run_dir)  # left by a save that was killed half-way
        if resume is None:
            save_checkpoint(last, run.snapshot(0))
    return last


def _resume(run: _Run, resume: dict | None, device, metrics_log) -> tuple[int, EpochPosition | None]:
    """Load a last.pt's state into `run`: (first epoch to train, the part-done epoch's position or None)."""
    if resume is None:
        return 1, None  # each epoch starts at minibatch 0
    run.model.load_state_dict(resume["model"])
    run.optimizer.load_state_dict(resume["optimizer"])
    if run.scheduler is not None and resume.get("scheduler"):
        run.scheduler.load_state_dict(resume["scheduler"])
        hold_floor(run.scheduler, run.optimizer)  # a cosine at its end, extended now (a run saved at rate 0)
    set_rng_state(resume["rng"])
    position = EpochPosition.from_dict(resume["partial"], device) if resume.get("partial") else None
    result = run.result
    result.metrics = list(resume["metrics"])
    result.best_val_ppl, result.best_epoch = resume["best_val_ppl"], resume["best_epoch"]
    result.best_tune_ppl = resume.get("best_tune_ppl")
    run.progress = Progress(run.config.patience, resume["bad_epochs"], resume.get("best_network_tune_ppl"))
    if metrics_log is not None:  # rank 0
        metrics_log.truncate_to(result.metrics)
        discard_summary(metrics_log.path.parent)  # training goes on: the earlier final figure no longer holds
    return resume["epoch"] + 1, position


def _validation_streams(config: Config, corpus: Corpus, device, log) -> int:
    """How many streams validation reads the held-out text as (--val-streams), said in one line."""
    streams = val_streams(config.val_streams, len(corpus.val), device)
    log(f"validation: {len(corpus.val):,} characters as {streams} stream{'s' if streams > 1 else ''}"
        f"{' (--val-streams 1: the exact single-stream figure)' if streams > 1 else ''}; precision {config.precision}")
    return streams


def _stops(config: Config, dist: ProcessGroup, should_stop, clock: Budget):
    """(mid-epoch stop request, budget stop, either): what may end an epoch between two minibatches.

    Ranks must all stop at the same minibatch, so under torchrun neither acts mid-epoch: only between epochs.
    """
    mid_epoch_stop = None if dist.launched else should_stop
    budget_stop = clock.over if config.time_budget and not dist.launched else None

    def stop_now() -> bool:
        return bool((mid_epoch_stop is not None and mid_epoch_stop()) or (budget_stop is not None and budget_stop()))

    return mid_epoch_stop, budget_stop, stop_now


def _budget_hook(run: _Run, base_lr: float, planned: bool, progress):
    """The per-minibatch callback: count the step, set the next step's learning rate (under a budget), draw progress.

    Under a budget the first step's rate is set here too, before the first minibatch.
    """
    clock, optimizer = run.clock, run.optimizer

    def set_lr():
        for group in optimizer.param_groups:
            group["lr"] = base_lr * clock.lr_factor()

    def hook(done, total):
        clock.step()
        if planned:
            set_lr()
        if progress is not None:
            progress(done, total)
    if planned:
        set_lr()
    return hook


def _epoch_record(run: _Run, epoch: int, loss_sum: float, n: int, seconds: float, device, dist: ProcessGroup,
                  streams: int, last: Path) -> dict:
    """The epoch's metrics.jsonl line, after scoring the tuning slice and the validation text (rank 0 scores)."""
    config, corpus, model, clock = run.config, run.corpus, run.model, run.clock
    evaluated = time.perf_counter()
    # The tuning slice first: a mixture's weights are fitted there, then validation reads the fitted model.
    parts = {}  # a fitted mixture's two parts on the tuning slice
    tune_ppl = (dist.run_once(lambda: or_inf(lambda: tune_perplexity(config, model, corpus.tune, device, parts)))
                if len(corpus.tune) else None)
    validated = time.perf_counter()
    val_ppl = dist.run_once(lambda: or_inf(lambda: perplexity(model, corpus.val, device, streams=streams, fast=True)))
    val_seconds = time.perf_counter() - validated
    clock.after_epoch(time.perf_counter() - evaluated)
    lr = run.optimizer.param_groups[0]["lr"]
    record = {"epoch": epoch, "train_ppl": or_inf(lambda: metrics.perplexity(loss_sum, n)), "val_ppl": val_ppl,
              "seconds": round(seconds, 4), "val_seconds": round(val_seconds, 4), "chars_per_sec": round(n / seconds, 1),
              "lr": lr, "elapsed": round(clock.elapsed(), 2)}
    if tune_ppl is not None:
        record.update(tune_ppl=tune_ppl, **parts)
    if not (math.isfinite(record["train_ppl"]) and math.isfinite(val_ppl)):
        raise NonFiniteLoss(f"the perplexity became infinite or NaN in epoch {epoch}: "
                            f"{divergence_advice(lr, config.clip)}; the last good checkpoint {last} is unchanged")
    run.result.metrics.append(record)
    return record


def divergence_advice(lr: float, clip: float) -> str:
    """What to try after a NaN or infinite loss."""
    clip_hint = "turn gradient clipping on with --clip 1" if not clip else f"clip harder with a smaller --clip (now {clip:g})"
    return f"training diverged; train again with a lower --lr (now {lr:g}) or {clip_hint}"


def check_minibatch_fits(config: Config, n_train: int) -> None:
    """Refuse a training text too short for one whole minibatch (an epoch would have none)."""
    if num_batches(n_train, config) < 1:
        raise CharlmError(f"the training text ({n_train} characters once validation is held out) is "
                          f"shorter than one minibatch of --batch-size {config.batch_size} x --num-steps "
                          f"{config.num_steps}{' (plus --random-offset)' if config.random_offset else ''}; "
                          "lower them or use a longer text")
