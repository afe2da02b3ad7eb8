"""The training loop: minibatches -> loss -> clipped gradient step, then validation perplexity and checkpoints.

`train()` reads no globals and prints nothing: lines go to the `log` callback
and within-epoch progress to `progress(done, total)`, both supplied by the CLI.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from charlm.device import Precision, maybe_compile, val_streams
from charlm.data.batches import carries_state, epoch_batches, num_batches
from charlm.train.budget import Budget
from charlm.run.checkpoint import remove_stale_temporaries, save_checkpoint
from charlm.config import Config
from charlm.data.corpus import Corpus
from charlm.generate.decode import DEFAULT_DECODING, greedy, predict
from charlm.train.distributed import Group
from charlm.errors import CharlmError
from charlm.run.metrics import MetricsLog, perplexity
from charlm.models import build_model, detach_state, eval_mode


class NonFiniteLoss(CharlmError):
    """The loss became NaN or infinite: training stops and the last good checkpoint stays."""


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CharlmError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    return torch.device(name)


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
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def make_scheduler(config: Config, optimizer):
    """The learning-rate schedule, stepped once per epoch (None for a constant rate).

    Under --time-budget a cosine schedule is laid over the planned minibatches
    instead, stepped per minibatch by the trainer (charlm/budget.py): None here.
    """
    if config.lr_schedule == "cosine" and config.time_budget:
        return None
    if config.lr_schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=1)
    if config.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    return None


@torch.no_grad()
def evaluate(model, indices, device=None, chunk: int = 256, streams: int = 1) -> float:
    """Perplexity of `model` on an index array read as `streams` contiguous streams side by side.

    The n-1 predictions (x_t -> x_{t+1}) are cut into S streams of L = ceil((n-1)/S)
    steps; row s reads positions s·L .. s·L+L-1, its hidden state carried from
    chunk to chunk and starting from zero at the row's first character. The
    last row is padded (·) and its padded targets are not counted:

        positions  0 ............ L-1 | L ........... 2L-1 | 2L ...... n-2 · ·
        row 0      ══════════════════►                           (S = 3)
        row 1                         ══════════════════►
        row 2                                              ═════════════►· ·
                   └ chunk 1 ┘└ chunk 2 ┘ …   (each chunk: S rows × `chunk` steps, one forward)

    S = 1 is the single stream, every character predicted from all before it
    (the exact figure). With S > 1 each row's first characters lack the text
    before them, which raises the perplexity slightly (docs/gpu.md measures how
    much); in return one forward covers S rows.
    """
    with eval_mode(model):
        device = device or next(model.parameters()).device
        data = torch.as_tensor(indices, dtype=torch.long, device=device)  # (n,)
        m = data.numel() - 1  # predictions
        if m < 1:
            return perplexity(0.0, 0)
        length = -(-m // max(1, min(streams, m)))  # L: steps per row
        rows = -(-m // length)  # S, no empty row
        X = torch.zeros(rows * length, dtype=torch.long, device=device)
        Y = torch.full((rows * length,), -100, dtype=torch.long, device=device)  # -100: cross_entropy's ignore_index
        X[:m], Y[:m] = data[:-1], data[1:]
        X, Y = X.view(rows, length), Y.view(rows, length)  # (S, L)
        state = model.begin_state(rows, device)
        total = torch.zeros((), dtype=torch.float64, device=device)  # summed on the device: one sync at the end
        for j in range(0, length, chunk):
            logits, state = model(X[:, j:j + chunk], state)  # (S, steps, vocab)
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), Y[:, j:j + chunk].reshape(-1),
                                     reduction="sum")
        return perplexity(total.item(), m)


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


@dataclass
class TrainResult:
    """What a finished run reports back to its caller."""

    run_dir: Path
    metrics: list = field(default_factory=list)
    best_val_ppl: float = float("inf")
    best_epoch: int = 0
    stopped_early: bool = False
    best_tune_ppl: float | None = None  # with a tuning slice: the figure best.pt was chosen by


def _format_line(r: dict) -> str:
    tune = f"tune ppl {r['tune_ppl']:9.3f} | " if r.get("tune_ppl") is not None else ""
    elapsed = f" | {r['elapsed'] / 60:5.1f} min" if "elapsed" in r else ""
    return (f"epoch {r['epoch']:4d} | train ppl {r['train_ppl']:9.3f} | {tune}val ppl {r['val_ppl']:9.3f} | "
            f"{r['seconds']:6.2f} s | {r['chars_per_sec']:8.0f} chars/s{elapsed}")


def tune_perplexity(config: Config, model, tune, device, parts: dict | None = None) -> float:
    """Perplexity on the tuning slice, after fitting a mixture's weights there (--mix-fit; never on validation text).

    For a fitted mixture, each part's own tuning perplexity goes into `parts` (for metrics.jsonl).
    """
    how = getattr(config, "mix_fit", "none")
    if how != "none" and hasattr(model, "neural") and hasattr(model, "kn"):
        from charlm.models.mixture import fit_mixture
        fitted = fit_mixture(model, tune, device, how)
        if parts is not None:
            parts.update(tune_neural_ppl=fitted["neural_ppl"], tune_ngram_ppl=fitted["ngram_ppl"])
        return fitted["mix_ppl"]
    return score_perplexity(model, tune, device)


@torch.no_grad()
def score_perplexity(model, indices, device=None, streams: int = 1, chunk: int = 512) -> float:
    """`evaluate`, through the model's target-only path when it has one (kn, mix: no vocabulary-wide n-gram rows).

    Same streams layout and the same figure as `evaluate`; only faster for counting models.
    """
    if not hasattr(model, "target_log_probs"):
        return evaluate(model, indices, device, streams=streams)
    with eval_mode(model):
        device = device or next(model.parameters()).device
        data = torch.as_tensor(indices, dtype=torch.long, device=device)
        m = data.numel() - 1
        if m < 1:
            return perplexity(0.0, 0)
        length = -(-m // max(1, min(streams, m)))
        rows = -(-m // length)
        X = torch.zeros(rows * length, dtype=torch.long, device=device)
        Y = torch.zeros(rows * length, dtype=torch.long, device=device)
        X[:m], Y[:m] = data[:-1], data[1:]
        counted = (torch.arange(rows * length, device=device) < m).view(rows, length)  # the padding is not scored
        X, Y = X.view(rows, length), Y.view(rows, length)
        state = model.begin_state(rows, device)
        total = 0.0
        for j in range(0, length, chunk):
            logp, state = model.target_log_probs(X[:, j:j + chunk], Y[:, j:j + chunk], state)  # (S, steps)
            total -= float(logp.double()[counted[:, j:j + chunk]].sum())
        return perplexity(total, m)


def set_kn_discounts(model, config: Config) -> None:
    """Give the n-gram part the discounts fitted on the tuning slice (--kn-discount; none: keep the closed-form ones)."""
    if config.kn_discounts:
        kn = model.kn if hasattr(model, "neural") else model
        kn.set_discounts([float(d) for d in config.kn_discounts])


def _budget_hook(clock: Budget, optimizer, base_lr: float, planned: bool, progress):
    """The per-minibatch callback: count the step, set the next step's learning rate (under a budget), draw progress."""
    def hook(done, total):
        clock.step()
        if planned:
            for group in optimizer.param_groups:
                group["lr"] = base_lr * clock.lr_factor()
        if progress is not None:
            progress(done, total)
    return hook


def train(config: Config, corpus: Corpus, run_dir: str | Path, *, resume: dict | None = None,
          log=lambda line: None, progress=None, dist: Group | None = None, should_stop=None) -> TrainResult:
    """Train the model described by `config` on `corpus`, writing metrics and checkpoints into `run_dir`.

    With `resume` (a loaded last.pt), the model, optimizer, schedule, epoch and
    random state continue exactly where that checkpoint stopped. `dist` (from
    `distributed.from_env()`) makes this process one rank of a torchrun run:
    it trains on its share of each minibatch and only rank 0 logs and writes.
    When `should_stop()` turns true (the CLI's Ctrl-C / SIGTERM handler), the
    current state, mid-epoch included, is saved to last.pt and
    TrainingInterrupted is raised.
    """
    run_dir = Path(run_dir)
    dist = dist or Group()
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    else:  # only rank 0 prints and writes
        log, progress = (lambda line: None), None
    device = dist.start(pick_device(config.device))  # under torchrun: joins the process group, picks this rank's GPU
    dist.check_same("corpus", corpus.fingerprint)
    dist.check_same("configuration", config.to_dict())
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    model = build_model(config, len(corpus.vocab)).to(device)
    if hasattr(model, "fit_counts"):  # a model that learns (partly) by counting n-grams: kn, mix
        if not any(p.requires_grad for p in model.parameters()):
            if not dist.is_main:  # under torchrun nothing is shared out: rank 0 counts and writes alone
                return TrainResult(run_dir)
            return train_by_counting(config, corpus, model, run_dir, device, resume, log, should_stop)
        if resume is None:  # on resume the counts come back with the checkpoint's state_dict
            model.fit_counts(corpus.train, should_stop=should_stop)  # nothing saved yet: a stop here just ends
            set_kn_discounts(model, config)
    optimizer = make_optimizer(config, model)
    scheduler = make_scheduler(config, optimizer)
    metrics_log = MetricsLog(run_dir / "metrics.jsonl")
    result = TrainResult(run_dir)
    bad_epochs, start = 0, 1
    position = None  # a part-done epoch from an interrupted run, else each epoch starts at minibatch 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        if scheduler is not None and resume.get("scheduler"):
            scheduler.load_state_dict(resume["scheduler"])
        set_rng_state(resume["rng"])
        if resume.get("partial"):
            position = EpochPosition.from_dict(resume["partial"], device)
        result.metrics = list(resume["metrics"])
        result.best_val_ppl, result.best_epoch = resume["best_val_ppl"], resume["best_epoch"]
        result.best_tune_ppl = resume.get("best_tune_ppl")
        bad_epochs, start = resume["bad_epochs"], resume["epoch"] + 1
        if dist.is_main:
            metrics_log.truncate_to(result.metrics)
    check_minibatch_fits(config, len(corpus.train))  # refuse before the first checkpoint is written
    total = num_batches(len(corpus.train), config)
    # The clock runs from here (counting n-grams excluded); under --time-budget it also plans steps and the rate.
    clock = Budget(config.time_budget, config.epochs * total, config.lr_schedule == "cosine", (resume or {}).get("budget"))
    precision = Precision(config.precision, device)  # refuses bf16 / fp16 where the device cannot

    def snapshot(epoch: int, partial: dict | None = None) -> dict:
        """The checkpoint payload: everything resume needs (`partial`: the position inside epoch + 1)."""
        payload = checkpoint_payload(config, corpus, model, epoch, result, optimizer, scheduler, bad_epochs, partial)
        payload.update(best_tune_ppl=result.best_tune_ppl, budget=clock.state())
        return payload

    last = run_dir / "last.pt"
    if dist.is_main:
        remove_stale_temporaries(run_dir)  # left by a save that was killed half-way
        if resume is None:
            save_checkpoint(last, snapshot(0))  # from here on, a kill at any moment leaves a last.pt to resume
    net = dist.wrap(model)  # DDP under torchrun (its forward averages gradients in backward); else the model itself
    net = maybe_compile(net, config.compile, device, log)
    streams = val_streams(config.val_streams, len(corpus.val), device)
    log(f"validation: {len(corpus.val):,} characters as {streams} stream{'s' if streams > 1 else ''}"
        f"{' (--val-streams 1: the exact single-stream figure)' if streams > 1 else ''}; precision {config.precision}")
    # Ranks must all stop at the same minibatch, so under torchrun an interrupt is only acted on between epochs.
    mid_epoch_stop = None if dist.launched else should_stop
    carry = carries_state(config.sampler)
    step_hook = _budget_hook(clock, optimizer, config.lr, bool(config.time_budget), progress)
    if config.time_budget:
        for group in optimizer.param_groups:
            group["lr"] = config.lr * clock.lr_factor()
    budget_stop = clock.over if config.time_budget and not dist.launched else None  # torchrun: between epochs only

    def stop_now() -> bool:
        return bool((mid_epoch_stop is not None and mid_epoch_stop()) or (budget_stop is not None and budget_stop()))

    out_of_time = False
    for epoch in range(start, config.epochs + 1):
        if config.time_budget and dist.all_reduce_sum(int(clock.over()))[0]:
            log(f"time budget of {config.time_budget:g} min spent: stopping")
            break
        position = position or EpochPosition()
        began = time.perf_counter() - position.seconds
        batches = (dist.shard(X, Y) for X, Y in epoch_batches(corpus.train, config, epoch, device))  # this rank's rows
        try:
            loss_sum, n = train_epoch(net, batches, optimizer, config.clip, carry, epoch, step_hook, total,
                                      position, stop_now, precision)
        except NonFiniteLoss as e:
            raise NonFiniteLoss(f"{e}; the last good checkpoint {last} is unchanged") from None
        if mid_epoch_stop is not None and mid_epoch_stop():
            position.seconds = time.perf_counter() - began
            save_checkpoint(last, snapshot(epoch - 1, position.to_dict(epoch)))
            raise TrainingInterrupted(last, epoch, position.batch, total)
        out_of_time = budget_stop is not None and budget_stop()  # the budget ends this epoch part-way
        position = None
        loss_sum, n = dist.all_reduce_sum(loss_sum, n)  # the whole minibatches, over all ranks
        seconds = time.perf_counter() - began
        evaluated = time.perf_counter()
        # The tuning slice first: a mixture's weights are fitted there, then validation reads the fitted model.
        parts = {}  # a fitted mixture's two parts on the tuning slice
        tune_ppl = (dist.run_once(lambda: _or_inf(lambda: tune_perplexity(config, model, corpus.tune, device, parts)))
                    if len(corpus.tune) else None)
        validated = time.perf_counter()
        val_ppl = dist.run_once(lambda: _or_inf(lambda: score_perplexity(model, corpus.val, device, streams=streams)))  # rank 0 validates
        val_seconds = time.perf_counter() - validated
        clock.after_epoch(time.perf_counter() - evaluated)
        record = {"epoch": epoch, "train_ppl": _or_inf(lambda: perplexity(loss_sum, n)), "val_ppl": val_ppl,
                  "seconds": round(seconds, 4), "val_seconds": round(val_seconds, 4), "chars_per_sec": round(n / seconds, 1),
                  "lr": optimizer.param_groups[0]["lr"], "elapsed": round(clock.elapsed(), 2)}
        if tune_ppl is not None:
            record.update(tune_ppl=tune_ppl, **parts)
        if not (math.isfinite(record["train_ppl"]) and math.isfinite(val_ppl)):
            raise NonFiniteLoss(f"the perplexity became infinite or NaN in epoch {epoch}: "
                                f"{divergence_advice(optimizer.param_groups[0]['lr'], config.clip)}; "
                                f"the last good checkpoint {last} is unchanged")
        result.metrics.append(record)

        # With a tuning slice, best.pt and early stopping read it; the validation text only reports.
        score = val_ppl if tune_ppl is None else tune_ppl
        best_score = result.best_val_ppl if tune_ppl is None else (result.best_tune_ppl or math.inf)
        improved = score < best_score
        if improved:
            result.best_val_ppl, result.best_tune_ppl, result.best_epoch, bad_epochs = val_ppl, tune_ppl, epoch, 0
        else:
            bad_epochs += 1
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(score)
        elif scheduler is not None:
            scheduler.step()

        payload = snapshot(epoch)
        if dist.is_main:
            save_checkpoint(last, payload)
            if improved:
                save_checkpoint(run_dir / "best.pt", payload)
            metrics_log.append(record)  # after last.pt, so that the log never runs ahead of the checkpoint
        log(_format_line(record))

        if dist.is_main and config.pred_every and (epoch % config.pred_every == 0 or epoch == config.epochs or out_of_time):
            log_predictions(config, model, corpus.vocab, device, log)
        if out_of_time:
            log(f"time budget of {config.time_budget:g} min spent after {clock.done:,} minibatches: stopping "
                f"(best validation perplexity {result.best_val_ppl:.3f} at epoch {result.best_epoch})")
            break
        if config.patience and bad_epochs >= config.patience:
            which = "validation" if tune_ppl is None else "tuning-slice"
            log(f"no better {which} perplexity for {config.patience} epochs: stopping early "
                f"(best validation perplexity {result.best_val_ppl:.3f} at epoch {result.best_epoch})")
            result.stopped_early = True
            break
        if should_stop is not None and epoch < config.epochs and dist.all_reduce_sum(int(should_stop()))[0]:
            raise TrainingInterrupted(last, epoch, None, total)  # between epochs: last.pt was just written
    if dist.is_main and len(corpus.tune) and hasattr(model, "fit_counts") and (run_dir / "best.pt").exists():
        recount_best(config, corpus, model, run_dir, device, streams, result, log)
    dist.close()  # under torchrun: all ranks leave the process group together, once rank 0 has written
    return result


def recount_best(config: Config, corpus: Corpus, model, run_dir: Path, device, streams: int, result: TrainResult,
                 log) -> None:
    """Recount best.pt's n-gram part on the whole training text (the tuning slice included) and report that.

    The order, discounts and mixture weights stay as fitted on the tuning slice;
    only the counts grow by the slice, which lies right before the validation
    text (nothing is fitted on the validation text). last.pt keeps the counts
    training used, so a resumed run continues exactly.
    """
    from charlm.run.checkpoint import load_checkpoint

    payload = load_checkpoint(run_dir / "best.pt")
    model.load_state_dict(payload["model"])
    model.fit_counts(np.concatenate([corpus.train, corpus.tune]))
    set_kn_discounts(model, config)
    val_ppl = _or_inf(lambda: score_perplexity(model, corpus.val, device, streams=streams))
    log(f"n-gram part recounted with the tuning slice ({len(corpus.train) + len(corpus.tune):,} characters): "
        f"val ppl {val_ppl:.3f} (was {result.best_val_ppl:.3f})")
    payload.update(model=model.state_dict(), best_val_ppl=val_ppl, recounted_val_ppl=val_ppl)
    save_checkpoint(run_dir / "best.pt", payload)
    result.best_val_ppl = val_ppl


def train_by_counting(config: Config, corpus: Corpus, model, run_dir: Path, device, resume, log,
                      should_stop=None) -> TrainResult:
    """Fit a model with nothing to learn by gradient (kn) by one count of the training text.

    The count is its only epoch: one metrics.jsonl line and the usual checkpoints, no optimizer.
    """
    if resume is not None:  # counted already: nothing left to train (compare may resume any unfinished-looking run)
        log(f"{config.model} is complete after its one counting pass; nothing to resume")
        return TrainResult(run_dir, list(resume["metrics"]), resume["best_val_ppl"], resume["best_epoch"])
    began = time.perf_counter()
    model.fit_counts(corpus.train, should_stop=should_stop)  # Ctrl-C / SIGTERM is acted on between orders
    set_kn_discounts(model, config)
    seconds = max(time.perf_counter() - began, 1e-9)
    # the target-only path: the same figures as evaluate, without (positions x V) n-gram rows
    record = {"epoch": 1, "train_ppl": score_perplexity(model, corpus.train, device),
              "val_ppl": score_perplexity(model, corpus.val, device),
              "seconds": round(seconds, 4), "chars_per_sec": round(len(corpus.train) / seconds, 1), "lr": 0.0}
    result = TrainResult(run_dir, [record], record["val_ppl"], 1)
    payload = checkpoint_payload(config, corpus, model, 1, result)
    save_checkpoint(run_dir / "last.pt", payload)
    save_checkpoint(run_dir / "best.pt", payload)
    MetricsLog(run_dir / "metrics.jsonl").append(record)  # after last.pt: the log never runs ahead of it
    log(_format_line(record))
    if config.pred_every:
        log_predictions(config, model, corpus.vocab, device, log)
    return result


def checkpoint_payload(config: Config, corpus: Corpus, model, epoch: int, result: TrainResult, optimizer=None,
                       scheduler=None, bad_epochs: int = 0, partial: dict | None = None) -> dict:
    """Everything a checkpoint holds: what generate needs (config, vocabulary, weights) and what resume needs."""
    return {
        "config": config.to_dict(), "vocab": corpus.vocab.idx_to_char,
        "corpus": {"fingerprint": corpus.fingerprint, "source": corpus.source, "chars": len(corpus.text)},
        "epoch": epoch, "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "metrics": result.metrics, "best_val_ppl": result.best_val_ppl, "best_epoch": result.best_epoch,
        "bad_epochs": bad_epochs, "rng": rng_state(), "partial": partial,
    }


def log_predictions(config: Config, model, vocab, device, log) -> None:
    """The progress continuation of each prefix (prefixes the vocabulary cannot spell are skipped).

    The textbook presets keep the textbook's greedy predictor. The others sample as
    `generate` does by default (temperature and top-p), because greedy decoding of a
    language model loops and recites, which says little about what it has learned.
    The draws come from their own generator, seeded by --seed, so the lines are
    reproducible and training's random stream is untouched.
    """
    choose, generator = greedy, None
    if not config.preset.startswith("textbook"):
        choose = DEFAULT_DECODING.chooser()
        generator = torch.Generator(device=device).manual_seed(config.seed)
    for prefix in config.prefixes:
        if prefix and not vocab.unknown(prefix):
            text = predict(prefix, config.pred_len, model, vocab, device, choose=choose, generator=generator)
            log(" -> " + text.replace("\n", " / "))


RESUMABLE = ("epochs", "patience", "pred_every", "pred_len", "prefixes", "device", "time_budget",
             "precision", "compile", "val_streams")  # how, not what: a GPU run resumed on the CPU needs --precision fp32


def resume_config(saved: Config, requested: Config, explicit: set[str]) -> Config:
    """The saved run's configuration with the flags that may change on resume taken from the request.

    Any other explicitly given flag that differs from the saved run is refused.
    """
    flag = {f.name: f.metadata.get("flag") or "--" + f.name.replace("_", "-") for f in fields(Config)}
    differs = [name for name in explicit if name not in RESUMABLE + ("resume", "out", "preset")
               and getattr(requested, name, None) != getattr(saved, name, None)]
    if differs:
        details = ", ".join(f"{flag[n]} was {getattr(saved, n)!r}, now {getattr(requested, n)!r}" for n in sorted(differs))
        raise CharlmError(f"cannot resume with different settings ({details}); only "
                          f"{', '.join(flag[n] for n in RESUMABLE)} may change on resume")
    if saved.lr_schedule == "cosine" and "epochs" in explicit and requested.epochs != saved.epochs:
        raise CharlmError(f"--epochs cannot change on resume with --lr-schedule cosine (the schedule was laid out "
                          f"over {saved.epochs} epochs); resume without --epochs")
    return replace(saved, **{n: getattr(requested, n) for n in RESUMABLE if n in explicit})


# --- interrupts and exact resume -------------------------------------------------------------------

class TrainingInterrupted(Exception):
    """Training stopped on request (Ctrl-C, SIGTERM) after saving the current state to `path`.

    `batch` is how many minibatches of `epoch` were done (None: stopped between epochs, after `epoch`).
    """

    def __init__(self, path: Path, epoch: int, batch: int | None, total: int):
        where = f"after epoch {epoch}" if batch is None else f"in epoch {epoch} after minibatch {batch} of {total}"
        super().__init__(f"interrupted {where}; the state is saved in {path}")
        self.path, self.epoch, self.batch, self.total = Path(path), epoch, batch, total


@dataclass
class EpochPosition:
    """How far an epoch has got; an interrupt saves it in last.pt so that resume continues mid-epoch exactly."""

    batch: int = 0  # minibatches finished
    state: object = None  # hidden state after the last finished minibatch (consecutive sampler), else None
    loss_sum: float = 0.0  # summed training loss of the finished minibatches
    n: int = 0  # characters they predicted
    seconds: float = 0.0  # training time spent in this epoch so far

    def to_dict(self, epoch: int) -> dict:
        return {"epoch": epoch, "batch": self.batch, "state": _state_to(self.state, "cpu"),
                "loss_sum": self.loss_sum, "n": self.n, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, saved: dict, device) -> "EpochPosition":
        return cls(saved["batch"], _state_to(saved["state"], device), saved["loss_sum"], saved["n"], saved["seconds"])


def _state_to(state, device):
    """A hidden state (a tensor, a tuple of them, or None) moved to `device`."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.detach().to(device)
    return tuple(_state_to(s, device) for s in state)


def rng_state() -> dict:
    """Every random generator a run may draw from (torch, CUDA, numpy's and Python's global ones), checkpoint-safe."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        # numpy's own dict holds an ndarray, which weights_only loading refuses: keep the key as a tensor
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)), "pos": np_state["state"]["pos"],
                  "has_gauss": np_state["has_gauss"], "gauss": np_state["gauss"]},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(saved: dict) -> None:
    """Restore what `rng_state()` saved (a checkpoint from before charlm saved numpy and Python has torch only)."""
    torch.set_rng_state(saved["torch"])
    if "python" in saved:
        version, internal, gauss = saved["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in saved:
        s = saved["numpy"]
        np.random.set_state({"bit_generator": "MT19937", "state": {"key": s["key"].numpy().astype(np.uint32), "pos": s["pos"]},
                             "has_gauss": s["has_gauss"], "gauss": s["gauss"]})
    if "cuda" in saved and torch.cuda.is_available() and len(saved["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(saved["cuda"])


def _or_inf(compute) -> float:
    """`compute()`, or infinity when a diverged model's mean loss (above ~709 nats) overflows math.exp in it."""
    try:
        return compute()
    except OverflowError:
        return math.inf


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


RESUME_KEYS = ("epoch", "optimizer", "scheduler", "metrics", "best_val_ppl", "best_epoch", "bad_epochs", "rng", "corpus")


def check_resumable(payload: dict, path) -> None:
    """Refuse a checkpoint that lacks what `train(resume=...)` needs, saying what is missing."""
    missing = [key for key in RESUME_KEYS if key not in payload]
    if missing:
        raise CharlmError(f"{path} cannot be resumed: it lacks {', '.join(missing)} "
                          "(not a last.pt written by charlm train); start a new run instead")
