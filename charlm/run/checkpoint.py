"""Save and load checkpoints: plain dicts written atomically and read with `weights_only=True`.

A checkpoint holds the model and optimizer state, the full Config, the
vocabulary, the corpus fingerprint, the epoch and the metrics so far, so that
`generate` needs nothing else and `--resume` can continue exactly.
"""

from __future__ import annotations

import errno
import os
import pickle
import re
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch

from charlm import __version__
from charlm.config import Config, field_default
from charlm.errors import CharlmError
from charlm.models import build_model, upgrade_state_dict
from charlm.data.corpus import Corpus, load_corpus
from charlm.data.vocab import Vocab

FORMAT = "charlm-checkpoint"
FORMAT_VERSION = 1
RUNS_DIR = Path("checkpoints")
TMP_SUFFIX = ".tmp"  # save_checkpoint's temporary files: <name>.pt.<random>.tmp
# torch.save's pre-1.6 format starts with this pickled magic number (a raw pickle, not a zip)
LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."


class CheckpointWriteError(CharlmError):
    """Writing a checkpoint failed (a full disk, a vanished directory); the previous file is unchanged."""


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """Write `payload` to a temporary file beside `path`, fsync it, then rename it over `path`.

    A crash at any moment leaves either the old file or the new one, never half of one;
    a failed write (e.g. a full disk) raises CheckpointWriteError and leaves the old file as it was.
    """
    path = Path(path)
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "charlm_version": __version__, **payload}
    try:
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=TMP_SUFFIX, dir=path.parent)
    except OSError as e:
        raise CheckpointWriteError(f"cannot write checkpoint {path} ({e.strerror or e}); "
                                   f"{_kept(path)}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp makes 0600; checkpoints are meant to be shared
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise CheckpointWriteError(f"cannot write checkpoint {path} ({e.strerror or e}); {_kept(path)}") from None
    except RuntimeError as e:  # torch's zip writer reports a failed write (a full disk) as "[enforce fail at ...]"
        reason = _write_failure(path, e)  # while the partial temporary still fills the disk
        Path(tmp).unlink(missing_ok=True)
        if not any(word in str(e) for word in ("enforce fail", "PytorchStreamWriter", "file write failed")):
            raise
        raise CheckpointWriteError(f"cannot write checkpoint {path} ({reason}); {_kept(path)}") from None
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


def _write_failure(path: Path, error: Exception) -> str:
    """Why torch's writer failed, in words: a full disk when the directory's file system is (nearly) full."""
    try:
        st = os.statvfs(path.parent)
        if st.f_bavail * st.f_frsize < (1 << 20):
            return os.strerror(errno.ENOSPC)
    except OSError:
        pass
    detail = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", (str(error).splitlines() or [""])[0])[:100]
    return f"the write failed: {detail or type(error).__name__}"


def _kept(path: Path) -> str:
    return f"the previous {path.name} is unchanged" if path.exists() else "nothing was written"


def remove_stale_temporaries(run_dir: str | Path) -> list[Path]:
    """Delete temporary files left in `run_dir` by a save that was killed half-way; returns what was removed."""
    removed = []
    for tmp in Path(run_dir).glob("*.pt.*" + TMP_SUFFIX):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Read and check a checkpoint; anything that is not one of ours gives a CharlmError.

    Only tensors and plain Python values are unpickled (`weights_only=True`): a file
    that holds any other object (which could run code when loaded) is refused unread.
    """
    path = Path(path)
    if not path.exists():
        raise CharlmError(f"checkpoint {path} does not exist; train first (charlm train) or pass --checkpoint PATH")
    if not path.is_file():
        raise CharlmError(f"checkpoint {path} is not a file; give a .pt file or a run directory")
    if path.stat().st_size == 0:
        raise CharlmError(f"checkpoint {path} is empty (an interrupted copy?); use another checkpoint")
    with open(path, "rb") as f:
        head = f.read(len(LEGACY_MAGIC))
    if head == LEGACY_MAGIC:
        raise CharlmError(f"checkpoint {path} is in PyTorch's legacy pre-1.6 file format, which charlm does not read "
                          "(it is a pickle that could run code); charlm checkpoints are zip files: use another checkpoint")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip; a truncated one has lost its central directory
        raise CharlmError(f"checkpoint {path} is truncated or not a checkpoint file at all "
                          "(no PyTorch zip structure); copy it again or use another checkpoint")
    try:
        with warnings.catch_warnings():  # torch's own warnings would break the one-line error
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        message = str(e)
        if "GLOBAL" in message:
            found = re.search(r"GLOBAL ([\w.]+)", message)
            what = f" ({found.group(1)})" if found else ""
            raise CharlmError(f"checkpoint {path} holds a Python object{what} that could run code when loaded; "
                              "refusing to load it (charlm checkpoints hold only tensors and plain values)") from None
        raise CharlmError(f"checkpoint {path} is damaged or not a charlm checkpoint (its contents cannot be read "
                          "as tensors and plain values)") from None
    except Exception as e:  # torch reports damage as RuntimeError, KeyError, EOFError, ...
        detail = (str(e).splitlines() or [""])[0][:120]
        raise CharlmError(f"checkpoint {path} is damaged, truncated or not a PyTorch checkpoint "
                          f"({type(e).__name__}: {detail})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CharlmError(f"{path} is a PyTorch file but not a charlm checkpoint (no format marker {FORMAT!r})")
    version = payload.get("format_version")
    writer = payload.get("charlm_version", "unknown")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        advice = "upgrade charlm to read it" if newer else "retrain it, or load it with the charlm that wrote it"
        raise CharlmError(f"checkpoint {path} has format version {version!r} (written by charlm {writer}); "
                          f"this charlm {__version__} reads format version {FORMAT_VERSION}: {advice}")
    for key, kind in (("config", dict), ("vocab", (list, tuple)), ("model", dict)):
        if not isinstance(payload.get(key), kind):
            raise CharlmError(f"checkpoint {path} (written by charlm {writer}) lacks a valid {key!r} entry; it is damaged")
    check_contents(payload, path)
    return payload


def check_contents(payload: dict, path) -> None:
    """Refuse a checkpoint whose settings, vocabulary or weights cannot be used (edited or damaged),
    blaming the file rather than flags the user never gave."""
    from charlm.models.limits import check_order
    from charlm.models import MODELS

    vocab = payload["vocab"]
    bad = next((c for c in vocab if not (isinstance(c, str) and len(c) == 1)), None)
    if not vocab or bad is not None or len(set(vocab)) != len(vocab):
        what = ("is empty" if not vocab else f"holds {bad!r}, which is not one character" if bad is not None
                else "repeats characters")
        raise CharlmError(f"checkpoint {path} is damaged or was edited: its vocabulary {what}")
    config = payload["config"]
    for f in fields(Config):
        if f.name not in config:
            continue
        value, default = config[f.name], field_default(f)
        expected = (type(default),) if default is not None else (str, type(None))
        if isinstance(default, str):
            expected = (str, type(None))
        elif isinstance(default, float):
            expected = (int, float)
        elif isinstance(default, tuple):
            expected = (list, tuple)
        if not isinstance(value, expected) or (isinstance(value, bool) and not isinstance(default, bool)):
            raise CharlmError(f"checkpoint {path} is damaged or was edited: its setting {f.name} is {value!r} "
                              f"({type(value).__name__}, not {expected[0].__name__})")
        if "choices" in f.metadata and value not in f.metadata["choices"]:
            raise CharlmError(f"checkpoint {path} is damaged or was edited: its setting {f.name} is {value!r}, "
                              f"not one of {', '.join(f.metadata['choices'])}")
    if config.get("model") is not None and config["model"] not in MODELS:
        raise CharlmError(f"checkpoint {path} holds a {config['model']!r} model, which this charlm does not know "
                          f"({', '.join(MODELS)}); it was edited, or written by another version")
    for key, kind in (("epoch", int), ("best_epoch", int), ("bad_epochs", int), ("metrics", list),
                      ("best_val_ppl", (int, float))):
        value = payload.get(key, 0 if kind is not list else [])
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
            raise CharlmError(f"checkpoint {path} is damaged or was edited: its {key} is {value!r}")
    try:
        restored = Config.from_dict(config).validate()
        check_order(restored, blame=f"its order {restored.order}")
    except CharlmError as e:
        raise CharlmError(f"checkpoint {path} is damaged or was edited: its settings are invalid ({e})") from None
    for name, tensor in payload["model"].items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CharlmError(f"checkpoint {path} holds NaN or infinite weights ({name}): the run diverged before "
                              "it was saved, or the file is damaged; use an earlier checkpoint or train again")


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
    from charlm.models.limits import check_model_fits

    config = Config.from_dict(payload["config"])
    vocab = Vocab(payload["vocab"])
    check_model_fits(config, len(vocab), blame="the checkpoint's sizes")
    model = build_model(config, len(vocab))
    try:
        model.load_state_dict(upgrade_state_dict(model, payload["model"]))  # older files: W_ih under its old name
    except (RuntimeError, KeyError) as e:
        # torch's first line only says "Error(s) in loading state_dict"; the next one names the tensor
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        detail = (lines[1] if len(lines) > 1 and lines[0].startswith("Error(s)") else lines[0] if lines else "")[:160]
        raise CharlmError(f"checkpoint weights do not fit a {config.model} model ({detail}); "
                          "the file is damaged or from another version") from None
    model.to(device).eval()
    return model, vocab, config


@dataclass(frozen=True)
class OpenedRun:
    """A checkpoint found, read and rebuilt for inference: what generate, evaluate and serve start from."""

    path: Path  # the .pt file itself
    payload: dict  # the checkpoint as stored
    model: torch.nn.Module  # on the device asked for, in eval mode
    vocab: Vocab
    config: Config


def open_checkpoint(path: str | Path | None, device="cpu") -> OpenedRun:
    """Find a checkpoint (a file, a run directory or the newest run; see find_checkpoint), load and rebuild it."""
    found = find_checkpoint(path)
    payload = load_checkpoint(found)
    model, vocab, config = model_from_checkpoint(payload, device)
    return OpenedRun(found, payload, model, vocab, config)


def default_prefixes(payload: dict, vocab) -> list[str]:
    """The run's own prefixes (its config's, chosen from its corpus at training time) that the vocabulary spells;
    a titled corpus's commonest titles for a run that kept the classic 分开 before titles were chosen."""
    saved = payload.get("config", {}).get("prefixes") or Config().prefixes  # the classic 分开, 不分开
    forms = (payload.get("forms") or {}).get("forms") or {}
    if tuple(saved) == tuple(Config().prefixes) and forms.get("titled") and forms.get("named"):
        # a run of titled pieces (Song ci) trained before its prefixes were its titles: its commonest title
        saved = [f["name"] + "\n" for f in forms["named"][:2]]
    kept = [p for p in saved if p and not vocab.unknown(p)]
    if not kept:
        raise CharlmError(f"none of the run's prefixes ({', '.join(map(repr, saved))}) is spelled by its vocabulary; "
                          "give one with --prefix")
    return kept


def training_corpus(payload: dict, corpus_path: str | None = None, log=None) -> Corpus:
    """The corpus a checkpoint was trained on (its train and validation text), checked by fingerprint.

    `corpus_path` points to the file when it has moved since training.
    """
    config = Config.from_dict(payload["config"])
    if corpus_path:
        config = replace(config, corpus=corpus_path)
    corpus = load_corpus(config, log)
    saved = payload.get("corpus", {})
    if saved.get("fingerprint") and corpus.fingerprint != saved["fingerprint"]:
        raise CharlmError(f"{corpus.source} is not the text this model was trained on (fingerprint {corpus.fingerprint}, "
                          f"trained on {saved.get('source')}, fingerprint {saved['fingerprint']}); "
                          "point --corpus to the training file")
    return corpus
