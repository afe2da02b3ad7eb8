"""Acceptance test for crash safety: SIGKILL a training run at 20 random moments, resuming each time.

    python scripts/kill_test.py                 # from the repository root; about a minute or two
    python scripts/kill_test.py --kills 50 --seed 3

A small model trains on the first few thousand characters of the default
corpus. First one uninterrupted run gives the reference. Then the same run is
started, killed with SIGKILL at a random moment (seeded), checked (last.pt
must load, every metrics.jsonl line must parse) and resumed with
`charlm train --resume`, over and over; after the last kill it is resumed to
the end. The script prints how many kills left a loadable last.pt (must be
all of them) and whether the final parameters are bit-identical
(torch.equal on every tensor) to the reference run's. Exit status 0 only if both hold.

About one kill in four lands at a random moment of a resumed process's
start-up (importing, loading, resuming; at the latest right after its first
save); the others at a random point up to 1.5 epochs after that process wrote
its first checkpoint, i.e. in training.
Kills that happen to hit a checkpoint write are counted by the temporary file
they leave behind (tests/test_signals.py kills one mid-write on purpose).

Two more checks follow (`--no-extra` skips them):
* two writers: two `charlm train --out W` processes started together (and then two
  `--resume W` together): exactly one may write W, the other must be refused in one
  line, and W's metrics.jsonl must list each epoch once and agree with its last.pt;
* a full disk: a run in a tmpfs too small for its third checkpoint must stop with the
  documented line (exit 2, "No space left on device", the resume command), keep a
  loadable last.pt and leave no temporary file; after the tmpfs is enlarged the resume
  finishes. This needs root to mount the tmpfs and is skipped (saying so) otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from charlm.run.checkpoint import load_checkpoint  # noqa: E402
from charlm.data.corpus import resolve_corpus  # noqa: E402
from charlm.errors import CharlmError  # noqa: E402

TIMINGS = ("seconds", "val_seconds", "chars_per_sec", "elapsed")
# One thread everywhere: bit-identical results need the same thread count in every process.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--seed", type=int, default=0, help="seed for the kill moments")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--max-chars", type=int, default=3000)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--corpus", default=None, help="default: the Jay Chou lyrics, found as charlm finds them")
    p.add_argument("--workdir", default=None, help="where the two runs go (default: a fresh temporary folder)")
    p.add_argument("--no-extra", action="store_true", help="skip the two-writers and full-disk checks")
    return p.parse_args()


def charlm(args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "charlm", *map(str, args)], cwd=REPO, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kwargs)


def mtime(path: Path):
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def check(run: Path) -> tuple[bool, str]:
    """Does last.pt load and does every metrics line parse? Returns (ok, what was found)."""
    try:
        payload = load_checkpoint(run / "last.pt")
    except CharlmError as e:
        return False, f"last.pt does not load: {e}"
    try:
        lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if (run / "metrics.jsonl").exists() else []
        for line in lines:
            json.loads(line)
    except (ValueError, UnicodeDecodeError) as e:
        return False, f"metrics.jsonl has a broken line: {e}"
    partial = payload.get("partial")
    where = f", mid-epoch position {partial['batch']}" if partial else ""
    if len(lines) > payload["epoch"]:  # appended only after last.pt: the log may lag it (resume rewrites it), never lead
        return False, f"metrics.jsonl has {len(lines)} lines but last.pt only {payload['epoch']} epochs"
    return True, f"last.pt loads (epoch {payload['epoch']}{where}), {len(lines)} metrics lines parse"


def same_state(a: dict, b: dict) -> tuple[bool, bool, bool, int]:
    """(parameters equal, optimizer state equal, metrics equal apart from timings, number of tensors)."""
    params = a["model"].keys() == b["model"].keys() and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    opt = True
    for key, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            other = b["optimizer"]["state"][key][name]
            opt &= bool(torch.equal(value, other)) if torch.is_tensor(value) else value == other
    strip = lambda rs: [{k: v for k, v in r.items() if k not in TIMINGS} for r in rs]  # noqa: E731
    return params, opt, strip(a["metrics"]) == strip(b["metrics"]), len(a["model"])


def main() -> int:
    args = parse_args()
    os.chdir(REPO)
    corpus = resolve_corpus(args.corpus).resolve()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="charlm-kill-test-"))
    work.mkdir(parents=True, exist_ok=True)
    reference, run = work / "reference", work / "killed"
    train = ["train", "--corpus", corpus, "--max-chars", args.max_chars, "--hidden", args.hidden,
             "--batch-size", 8, "--num-steps", 16, "--epochs", args.epochs, "--pred-every", 0, "--device", "cpu",
             "--seed", 0, "--preset", "none", "--model", "rnn"]
    print(f"kill test: {args.kills} SIGKILLs across a {args.epochs}-epoch run (rnn, hidden {args.hidden}, first "
          f"{args.max_chars:,} characters of {corpus.name}), kill moments seeded with {args.seed}; runs in {work}")

    began = time.monotonic()
    proc = charlm(train + ["--out", reference])
    if proc.wait() != 0:
        print(f"the reference run failed: {proc.stderr.read()}")
        return 1
    reference_s = time.monotonic() - began
    epoch_s = sum(r["seconds"] for r in load_checkpoint(reference / "last.pt")["metrics"]) / args.epochs
    startup_s = max(reference_s - epoch_s * args.epochs, 0.5)
    print(f"reference run: {reference_s:.1f} s in all, about {epoch_s:.2f} s per epoch and {startup_s:.1f} s to start")

    rng = random.Random(args.seed)
    loadable, phases, mid_save, kills = 0, {"from start": 0, "in training": 0}, 0, 0
    while kills < args.kills:
        before = mtime(run / "last.pt")
        if before is not None and load_checkpoint(run / "last.pt")["epoch"] >= args.epochs:
            print(f"the run reached its last epoch before kill {kills + 1}; use more --epochs for {args.kills} kills")
            break
        stale = set(run.glob("*.tmp"))  # left by an earlier kill, removed once a process gets going
        proc = charlm(train + ["--out", run] if before is None else ["train", "--resume", run])
        spawned = time.monotonic()
        early = before is not None and rng.random() < 0.25  # the first process must save before it can be killed
        if early:  # a random moment of start-up, loading and resuming, cut short by the process's first save
            deadline = spawned + rng.uniform(0.0, startup_s)
            while time.monotonic() < deadline and mtime(run / "last.pt") == before and proc.poll() is None:
                time.sleep(0.002)
        else:  # a random moment of training, once this process has saved a checkpoint
            while mtime(run / "last.pt") == before and proc.poll() is None:
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 1.5 * epoch_s))
        if proc.poll() is not None:
            if proc.returncode == 0:
                print(f"the run finished before kill {kills + 1}; use more --epochs for {args.kills} kills")
                break
            print(f"the training process failed by itself ({proc.returncode}): {proc.stderr.read().strip()}")
            return 1
        proc.kill()
        proc.wait()
        kills += 1
        phase = "from start" if early else "in training"
        phases[phase] += 1
        temporaries = set(run.glob("*.tmp")) - stale
        mid_save += bool(temporaries)
        ok, found = check(run)
        loadable += ok
        note = f", {len(temporaries)} temporary file(s) left: killed mid-save" if temporaries else ""
        print(f"kill {kills:2d} at {time.monotonic() - spawned:5.2f} s into a process ({phase}): {found}{note}")

    proc = charlm(["train", "--resume", run])
    if proc.wait() != 0:
        print(f"the final resume failed: {proc.stderr.read().strip()}")
        return 1
    params, opt, metrics, n = same_state(load_checkpoint(reference / "last.pt"), load_checkpoint(run / "last.pt"))
    print(f"kills that left a loadable last.pt: {loadable}/{kills}")
    print(f"kills at a random time from start: {phases['from start']}, in training: {phases['in training']}, "
          f"mid-save (temporary file left, removed by the next resume): {mid_save}")
    print(f"final parameters equal the uninterrupted run's (torch.equal on all {n} tensors): {params}")
    print(f"optimizer state equal: {opt}; metrics equal apart from timings: {metrics}")
    ok = loadable == kills == args.kills and params and opt and metrics
    if not args.no_extra:
        short = [str(a) for a in train]
        short[short.index("--epochs") + 1] = "6"
        ok &= two_writers(short, work / "two-writers")
        ok &= full_disk(short, work / "full-disk")
    return 0 if ok else 1


def logged_epochs(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    return [json.loads(line)["epoch"] for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def two_writers(train: list[str], run: Path) -> bool:
    """Start two trainings into one --out together, then two resumes of it together: one writer each time."""
    ok = True
    other = list(train)
    other[other.index("--seed") + 1] = "1"
    for label, commands in (("two fresh runs", [train + ["--out", run], other + ["--out", run]]),
                            ("two resumes", [["train", "--resume", run, "--epochs", "9"]] * 2)):
        procs = [charlm(c) for c in commands]
        results = [(p.wait(), p.stderr.read().strip()) for p in procs]
        winners = [r for r in results if r[0] == 0]
        refused = [r for r in results if r[0] == 2 and len(r[1].splitlines()) == 1
                   and ("in use by another charlm process" in r[1] or "already holds a run" in r[1])]
        payload = load_checkpoint(run / "last.pt")
        epochs = logged_epochs(run)
        agree = epochs == [r["epoch"] for r in payload["metrics"]] == list(range(1, payload["epoch"] + 1))
        this_ok = len(winners) == 1 and len(refused) == 1 and agree
        ok &= this_ok
        print(f"{label} into one directory: exit statuses {[r[0] for r in results]}; the refused one said: "
              f"{refused[0][1] if refused else [r[1] for r in results]}; metrics.jsonl epochs {epochs} agree with "
              f"last.pt (epoch {payload['epoch']}): {agree} -> {'ok' if this_ok else 'FAILED'}")
    return ok


def full_disk(train: list[str], run: Path) -> bool:
    """Train in a tmpfs too small for the third checkpoint; the run must stop cleanly and resume once there is room."""
    if os.geteuid() != 0:
        print("full disk: skipped (mounting a small tmpfs needs root)")
        return True
    mount = run.parent / "tmpfs"
    mount.mkdir(parents=True, exist_ok=True)
    probe = charlm(train + ["--epochs", "1", "--out", run.parent / "size-probe"])
    if probe.wait() != 0:
        print(f"full disk: the size probe failed: {probe.stderr.read().strip()}")
        return False
    size = (run.parent / "size-probe" / "last.pt").stat().st_size
    # last.pt (epoch 0), then per epoch a temporary beside the old last.pt, and best.pt: the third save finds no room
    limit = int(size * 2.5) + 64 * 1024
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={limit}", "tmpfs", str(mount)]).returncode != 0:
        print("full disk: skipped (mount -t tmpfs failed)")
        return True
    try:
        target = mount / "run"
        proc = charlm(train + ["--out", target])
        status, err = proc.wait(), proc.stderr.read().strip()
        lines = err.splitlines()
        loads, found = check(target)
        temporaries = list(target.glob("*.tmp"))
        clean = (status == 2 and len(lines) == 1 and "No space left on device" in lines[0]
                 and f"charlm train --resume {target}" in lines[0] and loads and not temporaries)
        print(f"full disk (tmpfs of {limit:,} bytes, checkpoints of {size:,}): exit {status}, stderr {lines}; "
              f"{found}; temporary files left: {len(temporaries)} -> {'ok' if clean else 'FAILED'}")
        subprocess.run(["mount", "-o", f"remount,size={limit * 4}", str(mount)], check=True)
        resumed = charlm(["train", "--resume", target])
        status, err = resumed.wait(), resumed.stderr.read().strip()
        done = status == 0 and load_checkpoint(target / "last.pt")["epoch"] == int(train[train.index("--epochs") + 1])
        agree = logged_epochs(target) == [r["epoch"] for r in load_checkpoint(target / "last.pt")["metrics"]]
        print(f"full disk, resumed once there is room: exit {status}{' ' + err if err else ''}, finished all epochs: "
              f"{done}, metrics.jsonl agrees with last.pt: {agree}")
        return clean and done and agree
    finally:
        subprocess.run(["umount", str(mount)])


if __name__ == "__main__":
    sys.exit(main())
