"""Who may write a run directory: one process at a time, and never over another run by accident.

    RUN/.lock       "pid 4242 host box-1 since 2026-11-30T20:01:02"   held with flock() while training
    RUN/last.pt     \\
    RUN/best.pt      > a run: `--out RUN` refuses it unless --resume or --overwrite
    RUN/metrics.jsonl/

The lock is an advisory `fcntl.flock` on RUN/.lock, so the kernel drops it when
its process dies however it dies (SIGKILL included): a lock file whose flock is
free is stale, and the next writer reports it in one line and takes it over.
The file names the owner (pid and host) for the message a second writer gets.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from charlm.errors import CharlmError

LOCK_NAME = ".lock"
RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl")  # any of these means the directory holds a run
OTHER_RUN_FILES = ("done.json", "config.json", "metrics.jsonl.tmp", "summary.json")  # also a run's, moved aside with it by --overwrite

try:
    import fcntl
except ImportError:  # Windows: no flock; the lock file is then created with O_EXCL only
    fcntl = None


class RunDirLocked(CharlmError):
    """Another live process writes this run directory."""


class RunLock:
    """The lock on one run directory, held from `acquire()` to `release()` (or use it as a context manager).

    `stale` is the owner line of a lock left by a process that died (None if there was none);
    the caller reports it.
    """

    def __init__(self, run_dir: str | Path, what: str = "run directory"):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.what = what
        self.fd: int | None = None
        self.stale: str | None = None

    def acquire(self) -> "RunLock":
        """Create the directory if needed and lock it, or raise RunDirLocked naming the owner."""
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CharlmError(f"cannot write to {self.what} {self.run_dir} ({e.strerror or e}); choose another --out") from None
        for _ in range(20):  # retried only when the file was replaced between open and flock (a racing release)
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise CharlmError(f"cannot write to {self.what} {self.run_dir} ({e.strerror or e}); "
                                  "choose another --out") from None
            if fcntl is None:
                os.close(fd)
                return self._acquire_exclusive()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                owner = _read_owner(fd)
                os.close(fd)
                raise RunDirLocked(f"{self.what} {self.run_dir} is in use by another charlm process ({owner}); "
                                   "wait for it to finish or choose another --out") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the owner released (and removed) the file after we opened it: lock the new one
                os.close(fd)
                continue
            previous = _read_owner(fd)
            if previous and previous != "unknown":
                self.stale = previous
            self.fd = fd
            self._write_owner()
            return self
        raise RunDirLocked(f"{self.what} {self.run_dir}: could not take its lock {self.path}; try again")

    def _acquire_exclusive(self) -> "RunLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise RunDirLocked(f"{self.what} {self.run_dir} is in use by another charlm process "
                               f"(its lock {self.path} exists; delete it if no process uses the directory)") from None
        self.fd = fd
        self._write_owner()
        return self

    def _write_owner(self) -> None:
        line = f"pid {os.getpid()} host {socket.gethostname()} since {time.strftime('%Y-%m-%dT%H:%M:%S')}\n"
        try:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, line.encode("utf-8"), 0)
        except OSError:
            pass  # the owner line only improves a message; a full disk must not stop the lock

    def release(self) -> None:
        """Remove the lock file and drop the lock (safe to call twice)."""
        if self.fd is None:
            return
        try:
            os.unlink(self.path)  # while still locked: a waiting process then re-opens the new file
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire() if self.fd is None else self

    def __exit__(self, *exc) -> None:
        self.release()


def _read_owner(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text.splitlines()[0] if text else "unknown"


def stale_message(lock: RunLock) -> str | None:
    """The one-line warning for a lock taken over from a process that died, or None."""
    if lock.stale is None:
        return None
    return (f"{lock.path} was left by a process that is gone ({lock.stale}); "
            "taking it over (the checkpoints are whole: each is written by an atomic rename)")


def ensure_writable(folder: str | Path) -> None:
    """Create `folder` (and its parents) and prove it writable by writing and removing a probe file;
    raises the OSError otherwise, for the caller to word (a read-only mount passes mkdir but not this)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / ".write-test"
    probe.write_bytes(b"")
    probe.unlink()


def held_run_files(run_dir: str | Path) -> list[str]:
    """Which of last.pt, best.pt, metrics.jsonl exist in `run_dir`."""
    run_dir = Path(run_dir)
    return [name for name in RUN_FILES if os.path.lexists(run_dir / name)]


def set_aside(run_dir: str | Path) -> Path:
    """Move an earlier run's files (its .pt files, metrics.jsonl, done.json, config.json) into
    RUN/replaced-<time>/ (for --overwrite), so nothing is deleted; return that folder."""
    run_dir = Path(run_dir)
    aside = run_dir / f"replaced-{time.strftime('%Y%m%d-%H%M%S')}"
    n = 1
    while aside.exists():
        n += 1
        aside = run_dir / f"replaced-{time.strftime('%Y%m%d-%H%M%S')}-{n}"
    try:
        aside.mkdir()
        # the run's own files only: --out may be a folder that holds other things too
        names = {p.name for p in run_dir.glob("*.pt")} | {p.name for p in run_dir.glob("*.pt.*.tmp")}
        for name in sorted(names | set(RUN_FILES) | set(OTHER_RUN_FILES)):
            if os.path.lexists(run_dir / name):
                os.replace(run_dir / name, aside / name)
    except OSError as e:
        raise CharlmError(f"--overwrite could not move the earlier run in {run_dir} aside ({e.strerror or e}); "
                          "nothing was deleted") from None
    return aside


def resume_target(resume: str | Path) -> tuple[Path, Path]:
    """(run directory, its last.pt) for `--resume PATH`; PATH must be a run directory or its last.pt."""
    path = Path(resume)
    if not path.exists():
        raise CharlmError(f"--resume {resume}: no such run directory; give the --out directory of an earlier run")
    if path.is_dir():
        if not (path / "last.pt").exists():
            raise CharlmError(f"--resume {resume}: the directory holds no last.pt, so there is no run to continue; "
                              f"start one with --out {resume}")
        return path, path / "last.pt"
    if path.name == "best.pt":
        raise CharlmError(f"--resume {resume}: best.pt is a copy of the best epoch, not the run's latest state; "
                          f"resuming it would rewind the run and overwrite its last.pt; give the run directory "
                          f"--resume {path.parent}")
    if path.name != "last.pt":
        raise CharlmError(f"--resume {resume}: give a run directory (or its last.pt), not another file")
    return path.parent, path
