"""Perplexity and the per-epoch metrics log (`metrics.jsonl`)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from charlm.errors import CharlmError


def perplexity(total_loss: float, n_chars: int) -> float:
    """exp(total cross-entropy / total characters): weighted by characters, not averaged over batches."""
    return math.exp(total_loss / n_chars) if n_chars else float("nan")


class MetricsLog:
    """Appends one JSON object per epoch to RUN_DIR/metrics.jsonl, each line written whole."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def append(self, record: dict) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        # one write() of the whole line on an O_APPEND descriptor, then fsync: a crash leaves whole lines
        self._check_is_file()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise CharlmError(f"cannot append to {self.path} ({e.strerror or e}); the checkpoints are saved, "
                              "and resuming rewrites this log from last.pt") from None

    def truncate_to(self, records: list[dict]) -> None:
        """Rewrite the log to hold exactly `records` (used on resume, dropping epochs after the checkpoint)."""
        self._check_is_file()
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as e:
            if tmp.is_file():
                tmp.unlink()
            raise CharlmError(f"cannot rewrite {self.path} ({e.strerror or e}); it is left as it was") from None

    def _check_is_file(self) -> None:
        if self.path.is_dir() or (self.path.exists() and not self.path.is_file()):
            raise CharlmError(f"{self.path} is not a regular file (a directory?); move it away so that the "
                              "metrics log can be written")


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl file (an unfinished last line, if any, is skipped)."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


# The run's final figure, written once training ends: the epoch lines above stop at the last epoch's
# validation perplexity, while the run reports best.pt's (its n-gram part recounted with the tuning slice).
SUMMARY = "summary.json"


def write_summary(run_dir: str | Path, summary: dict) -> Path:
    """Write RUN/summary.json whole (a temporary file, fsync, rename), so a reader sees the old file or the new."""
    path = Path(run_dir) / SUMMARY
    tmp = path.with_name(path.name + ".tmp")
    data = (json.dumps(summary, ensure_ascii=False, indent=1) + "\n").encode("utf-8")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise CharlmError(f"cannot write {path} ({e.strerror or e}); the checkpoints and metrics.jsonl are "
                          "saved") from None
    return path


def read_summary(run_dir: str | Path, fingerprint: str | None = None) -> dict | None:
    """RUN/summary.json when it is whole and (given `fingerprint`) of this corpus; None for runs without one."""
    try:
        data = json.loads((Path(run_dir) / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("best_val_ppl"), (int, float)):
        return None
    if fingerprint is not None and data.get("fingerprint") not in (None, fingerprint):
        return None
    return data


def discard_summary(run_dir: str | Path) -> None:
    """Training goes on (a resume): the final figure of the earlier session no longer holds."""
    try:
        (Path(run_dir) / SUMMARY).unlink(missing_ok=True)
    except OSError:
        pass
