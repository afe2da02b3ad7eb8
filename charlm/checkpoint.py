"""Save and load checkpoints: plain dicts written atomically and read with `weights_only=True`.

A checkpoint holds the model and optimizer state, the full Config, the
vocabulary, the corpus fingerprint, the epoch and the metrics so far, so that
`generate` needs nothing else and `--resume` can continue exactly.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch

from . import __version__
from .config import Config
from .errors import CharlmError
from .models import build_model
from .vocab import Vocab

FORMAT = "charlm-checkpoint"
FORMAT_VERSION = 1
RUNS_DIR = Path("checkpoints")


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """Write `payload` to a temporary file beside `path`, fsync it, then rename it over `path`.

    A crash at any moment leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "charlm_version": __version__, **payload}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Read and check a checkpoint; anything that is not one of ours gives a CharlmError."""
    path = Path(path)
    if not path.is_file():
        raise CharlmError(f"checkpoint {path} does not exist; train first (charlm train) or pass --checkpoint PATH")
    if path.stat().st_size == 0:
        raise CharlmError(f"checkpoint {path} is empty (an interrupted copy?); use another checkpoint")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" in str(e) or "Unsupported" in str(e) or "global" in str(e).lower():
            raise CharlmError(f"checkpoint {path} holds Python objects that could run code; refusing to load it") from None
        raise CharlmError(f"checkpoint {path} is damaged or not a charlm checkpoint ({str(e).splitlines()[0]})") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise CharlmError(f"checkpoint {path} is damaged or truncated ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CharlmError(f"{path} is not a charlm checkpoint")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise CharlmError(f"checkpoint {path} has format version {version}, this charlm ({__version__}) "
                          f"reads version {FORMAT_VERSION}; retrain or use the charlm that wrote it")
    for key in ("config", "vocab", "model"):
        if key not in payload:
            raise CharlmError(f"checkpoint {path} lacks {key!r}; it is damaged")
    return payload


def find_checkpoint(path: str | Path | None) -> Path:
    """A .pt file from a file, a run directory (its best.pt, else last.pt) or, by default, the newest run."""
    if path is None:
        runs = [p for p in RUNS_DIR.glob("*/") if (p / "best.pt").is_file() or (p / "last.pt").is_file()]
        if not runs:
            raise CharlmError(f"no trained run under {RUNS_DIR}/; train one first (charlm train) or pass --checkpoint PATH")
        path = max(runs, key=lambda p: max(f.stat().st_mtime for f in p.glob("*.pt")))
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        raise CharlmError(f"run directory {path} holds no best.pt or last.pt; train into it first")
    return path


def model_from_checkpoint(payload: dict, device="cpu"):
    """Rebuild (model, vocab, config) from a loaded checkpoint, ready for inference."""
    config = Config.from_dict(payload["config"])
    vocab = Vocab(payload["vocab"])
    model = build_model(config, len(vocab))
    try:
        model.load_state_dict(payload["model"])
    except (RuntimeError, KeyError) as e:
        raise CharlmError(f"checkpoint weights do not fit a {config.model} model "
                          f"({str(e).splitlines()[0][:120]}); the file is damaged or from another version") from None
    model.to(device).eval()
    return model, vocab, config
