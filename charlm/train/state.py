"""What a run carries from one process to the next: the checkpoint payload, the position inside an
interrupted epoch, every random generator, and which settings may change on resume.

    train() ──snapshot──> last.pt {config, vocab, model, optimizer, scheduler, rng, partial, metrics, ...}
                             │
    charlm train --resume ───┴──> check_resumable -> resume_config -> train(resume=payload)
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch

from charlm.config import Config
from charlm.data.corpus import Corpus
from charlm.errors import CharlmError

# How, not what: the fields that may change on resume (a GPU run resumed on the CPU needs --precision fp32).
RESUMABLE = ("epochs", "patience", "pred_every", "pred_len", "prefixes", "device", "time_budget",
             "precision", "compile", "val_streams")
RESUME_KEYS = ("epoch", "optimizer", "scheduler", "metrics", "best_val_ppl", "best_epoch", "bad_epochs", "rng", "corpus")


@dataclass
class TrainResult:
    """What a finished run reports back to its caller."""

    run_dir: Path
    metrics: list = field(default_factory=list)
    best_val_ppl: float = float("inf")
    best_epoch: int = 0
    stopped_early: bool = False
    best_tune_ppl: float | None = None  # with a tuning slice: the figure best.pt was chosen by
    stop_reason: str | None = None  # how training ended: "converged", "budget" or "epochs" (charlm/train/stopping.py)


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
        "forms": corpus_forms(corpus),
    }


_FORMS: dict[str, dict] = {}  # fingerprint -> learned forms: learned once per run, stored in every checkpoint


def corpus_forms(corpus: Corpus) -> dict:
    """The forms of the corpus's training text (line lengths, rhyme, named forms), as plain types."""
    if corpus.fingerprint not in _FORMS:
        from charlm.generate.formed import learn_run_forms
        _FORMS.clear()
        _FORMS[corpus.fingerprint] = learn_run_forms(corpus.text[:len(corpus.train) + len(corpus.tune)])
    return _FORMS[corpus.fingerprint]


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
    return replace(saved, **{n: getattr(requested, n) for n in RESUMABLE if n in explicit})


def extend_cosine(payload: dict, config: Config, explicit: set[str]) -> tuple[Config, str | None]:
    """A cosine run resumed with more --epochs: (config, the line that says how it goes on), else (config, None).

    The cosine keeps its length (its epochs, or under a time budget the minibatches planned for it)
    and the steps after its end hold the floor rate, FLOOR x --lr (charlm/train/budget.py); without
    an explicit --time-budget the added epochs get the run's budget again on top of the time spent.
    """
    from charlm.train.budget import FLOOR

    saved_epochs = int(payload["config"].get("epochs", config.epochs))
    if config.lr_schedule != "cosine" or config.epochs <= saved_epochs:
        return config, None
    budget = ""
    if config.time_budget and "time_budget" not in explicit:
        spent = float((payload.get("budget") or {}).get("elapsed", 0.0)) / 60
        grown = round(spent + config.time_budget, 2)
        budget = f"; time budget {config.time_budget:g} -> {grown:g} min ({spent:.1f} spent, {config.time_budget:g} more)"
        config = replace(config, time_budget=grown)
    return config, (f"extending a cosine run from {saved_epochs} to {config.epochs} epochs: the cosine keeps its "
                    f"length, then the rate holds at its floor {config.lr * FLOOR:g} ({FLOOR:.0%} of --lr "
                    f"{config.lr:g}){budget}")


def check_resumable(payload: dict, path) -> None:
    """Refuse a checkpoint that lacks what `train(resume=...)` needs, saying what is missing."""
    missing = [key for key in RESUME_KEYS if key not in payload]
    if missing:
        raise CharlmError(f"{path} cannot be resumed: it lacks {', '.join(missing)} "
                          "(not a last.pt written by charlm train); start a new run instead")
