"""The training loop: minibatches -> loss -> clipped gradient step, then validation perplexity and checkpoints.

`train()` reads no globals and prints nothing: lines go to the `log` callback
and within-epoch progress to `progress(done, total)`, both supplied by the CLI.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from .batches import carries_state, epoch_batches, num_batches
from .checkpoint import save_checkpoint
from .config import Config
from .corpus import Corpus
from .decoding import predict
from .errors import CharlmError
from .metrics import MetricsLog, perplexity
from .models import build_model, detach_state


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
    """The learning-rate schedule, stepped once per epoch (None for a constant rate)."""
    if config.lr_schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=1)
    if config.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    return None


@torch.no_grad()
def evaluate(model, indices, device=None, chunk: int = 256) -> float:
    """Perplexity of `model` on an index array read as one stream, the hidden state carried throughout."""
    was_training = model.training
    model.eval()
    try:
        device = device or next(model.parameters()).device
        data = torch.as_tensor(indices, dtype=torch.long, device=device).view(1, -1)  # (1, n)
        state = model.begin_state(1, device)
        total, n = 0.0, 0
        for j in range(0, data.shape[1] - 1, chunk):
            Y = data[:, j + 1:j + 1 + chunk]
            X = data[:, j:j + Y.shape[1]]
            logits, state = model(X, state)  # (1, steps, vocab)
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), Y.reshape(-1), reduction="sum").item()
            n += Y.numel()
        return perplexity(total, n)
    finally:
        model.train(was_training)


def train_epoch(model, batches, optimizer, clip: float, carry: bool, epoch: int, progress=None, total=None):
    """One pass over the minibatches; returns (summed loss, characters seen)."""
    state = None
    loss_sum, n = 0.0, 0
    for i, (X, Y) in enumerate(batches):
        if state is None or not carry:
            state = model.begin_state(X.shape[0], X.device)  # random sampling: a fresh start each minibatch
        else:
            state = detach_state(state)  # consecutive: keep the values, cut the graph (truncated BPTT)
        logits, state = model(X, state)  # (batch, steps, vocab)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), Y.reshape(-1))
        value = loss.item()
        if not math.isfinite(value):
            raise NonFiniteLoss(f"the loss became {value} in epoch {epoch}; lower --lr or set a smaller --clip "
                                "(the last good checkpoint is kept)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_clipping(model.parameters(), clip)
        optimizer.step()
        loss_sum += value * Y.numel()
        n += Y.numel()
        if progress is not None:
            progress(i + 1, total)
    return loss_sum, n


@dataclass
class TrainResult:
    """What a finished run reports back to its caller."""

    run_dir: Path
    metrics: list = field(default_factory=list)
    best_val_ppl: float = float("inf")
    best_epoch: int = 0
    stopped_early: bool = False


def _format_line(r: dict) -> str:
    return (f"epoch {r['epoch']:4d} | train ppl {r['train_ppl']:9.3f} | val ppl {r['val_ppl']:9.3f} | "
            f"{r['seconds']:6.2f} s | {r['chars_per_sec']:8.0f} chars/s")


def train(config: Config, corpus: Corpus, run_dir: str | Path, *, resume: dict | None = None,
          log=lambda line: None, progress=None) -> TrainResult:
    """Train the model described by `config` on `corpus`, writing metrics and checkpoints into `run_dir`.

    With `resume` (a loaded last.pt), the model, optimizer, schedule, epoch and
    random state continue exactly where that checkpoint stopped.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(config.device)
    torch.manual_seed(config.seed)
    model = build_model(config, len(corpus.vocab)).to(device)
    optimizer = make_optimizer(config, model)
    scheduler = make_scheduler(config, optimizer)
    metrics_log = MetricsLog(run_dir / "metrics.jsonl")
    result = TrainResult(run_dir)
    bad_epochs, start = 0, 1
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        if scheduler is not None and resume.get("scheduler"):
            scheduler.load_state_dict(resume["scheduler"])
        torch.set_rng_state(resume["rng"]["torch"])
        result.metrics = list(resume["metrics"])
        result.best_val_ppl, result.best_epoch = resume["best_val_ppl"], resume["best_epoch"]
        bad_epochs, start = resume["bad_epochs"], resume["epoch"] + 1
        metrics_log.truncate_to(result.metrics)

    carry = carries_state(config.sampler)
    total = num_batches(len(corpus.train), config)
    for epoch in range(start, config.epochs + 1):
        began = time.perf_counter()
        batches = epoch_batches(corpus.train, config, epoch, device)
        loss_sum, n = train_epoch(model, batches, optimizer, config.clip, carry, epoch, progress, total)
        seconds = time.perf_counter() - began
        record = {"epoch": epoch, "train_ppl": perplexity(loss_sum, n), "val_ppl": evaluate(model, corpus.val, device),
                  "seconds": round(seconds, 4), "chars_per_sec": round(n / seconds, 1),
                  "lr": optimizer.param_groups[0]["lr"]}
        result.metrics.append(record)
        metrics_log.append(record)
        log(_format_line(record))

        improved = record["val_ppl"] < result.best_val_ppl
        if improved:
            result.best_val_ppl, result.best_epoch, bad_epochs = record["val_ppl"], epoch, 0
        else:
            bad_epochs += 1
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(record["val_ppl"])
        elif scheduler is not None:
            scheduler.step()

        payload = {
            "config": config.to_dict(), "vocab": corpus.vocab.idx_to_char,
            "corpus": {"fingerprint": corpus.fingerprint, "source": corpus.source, "chars": len(corpus.text)},
            "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "metrics": result.metrics, "best_val_ppl": result.best_val_ppl, "best_epoch": result.best_epoch,
            "bad_epochs": bad_epochs, "rng": {"torch": torch.get_rng_state()},
        }
        save_checkpoint(run_dir / "last.pt", payload)
        if improved:
            save_checkpoint(run_dir / "best.pt", payload)

        if config.pred_every and (epoch % config.pred_every == 0 or epoch == config.epochs):
            for prefix in config.prefixes:
                if not corpus.vocab.unknown(prefix) and prefix:
                    log(" -> " + predict(prefix, config.pred_len, model, corpus.vocab, device).replace("\n", " / "))
        if config.patience and bad_epochs >= config.patience:
            log(f"no better validation perplexity for {config.patience} epochs: stopping early "
                f"(best {result.best_val_ppl:.3f} at epoch {result.best_epoch})")
            result.stopped_early = True
            break
    return result


RESUMABLE = ("epochs", "patience", "pred_every", "pred_len", "prefixes", "device")


def resume_config(saved: Config, requested: Config, explicit: set[str]) -> Config:
    """The saved run's configuration with the flags that may change on resume taken from the request.

    Any other explicitly given flag that differs from the saved run is refused.
    """
    differs = [name for name in explicit if name not in RESUMABLE + ("resume", "out", "preset")
               and getattr(requested, name, None) != getattr(saved, name, None)]
    if differs:
        details = ", ".join(f"--{n.replace('_', '-')} {getattr(saved, n)!r} -> {getattr(requested, n)!r}" for n in sorted(differs))
        raise CharlmError(f"cannot resume with different settings ({details}); only "
                          f"{', '.join('--' + n.replace('_', '-') for n in RESUMABLE)} may change")
    return replace(saved, **{n: getattr(requested, n) for n in RESUMABLE if n in explicit})
