"""Signals delivered to a real training process: Ctrl-C, SIGTERM, a second Ctrl-C, and SIGKILL at random moments.

Each test trains a tiny model in a `python -m charlm train` subprocess and
waits until training has really begun before signalling it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from charlm.run.checkpoint import load_checkpoint
from charlm.cli.app import main

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")

TRAIN = ["train", "--hidden", "12", "--batch-size", "4", "--num-steps", "8", "--pred-every", "0",
         "--device", "cpu", "--val-fraction", "0.1", "--lr", "0.01", "--preset", "none"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}




@pytest.fixture
def corpus(tmp_path, small_text) -> Path:
    """About 2,600 characters: some 70 minibatches, a fraction of a second per epoch."""
    path = tmp_path / "lyrics.txt"
    path.write_text(small_text * 4, encoding="utf-8")
    return path


def start(args, cwd) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "charlm", *map(str, args)], cwd=cwd, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"training ended early ({proc.returncode}): {proc.communicate()[1]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("training did not get going in time")
        time.sleep(0.02)


def metrics_lines(run: Path) -> int:
    path = run / "metrics.jsonl"
    return len(path.read_text(encoding="utf-8").splitlines()) if path.exists() else 0


def assert_run_is_sound(run: Path) -> dict:
    """last.pt loads and every metrics line parses; returns the checkpoint."""
    payload = load_checkpoint(run / "last.pt")
    if (run / "metrics.jsonl").exists():
        for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
            json.loads(line)
    return payload


def resume_in_process(run: Path, epochs: int, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "--resume", str(run), "--epochs", str(epochs)])
    err = capsys.readouterr().err
    assert info.value.code == 0, err


@pytest.mark.parametrize("signum,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_saves_the_current_state_and_prints_the_resume_command(corpus, tmp_path, capsys, signum, status):
    run = tmp_path / "run"
    proc = start(TRAIN + ["--corpus", corpus, "--out", run, "--epochs", "500"], tmp_path)
    wait_for(lambda: metrics_lines(run) >= 1, proc)
    time.sleep(random.Random(signum).uniform(0.0, 0.2))
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    assert "Traceback" not in out + err
    assert f"resume with: charlm train --resume {run}" in err
    payload = assert_run_is_sound(run)
    assert payload["epoch"] >= 1 and payload["epoch"] == metrics_lines(run)
    if payload["partial"] is not None:  # stopped inside an epoch: the position says where
        assert payload["partial"]["epoch"] == payload["epoch"] + 1 and payload["partial"]["batch"] >= 0
    resume_in_process(run, payload["epoch"] + 1, capsys)
    assert load_checkpoint(run / "last.pt")["epoch"] == payload["epoch"] + 1


def test_second_interrupt_exits_at_once_and_corrupts_nothing(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    proc = start(TRAIN + ["--corpus", corpus, "--out", run, "--epochs", "500"], tmp_path)
    wait_for(lambda: metrics_lines(run) >= 1, proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.005)  # the second may land during the first one's save: that must be harmless too
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in out + err
    payload = assert_run_is_sound(run)
    resume_in_process(run, payload["epoch"] + 1, capsys)  # and it removes any temporary file left behind
    assert not list(run.glob("*.tmp"))


def test_second_signal_handler_exits_immediately():
    """The handler itself, deterministically: the second signal ends the process with 128 + signum at once."""
    script = textwrap.dedent("""
        import os, signal, time
        from charlm.cli.train import StopOnSignal
        with StopOnSignal() as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            while not stop():
                time.sleep(0.001)
            print("first seen", flush=True)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
            print("still running", flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=ENV)
    assert done.returncode == 130, done.stderr
    assert done.stdout == "first seen\n"
    assert "second interrupt" in done.stderr and "Traceback" not in done.stderr


def test_sigkill_at_random_moments_leaves_a_checkpoint_that_resumes_exactly(corpus, tmp_path, capsys):
    epochs, kills = 8, 3
    run, whole = tmp_path / "run", tmp_path / "whole"
    rng = random.Random(8)
    mtime = lambda: (run / "last.pt").stat().st_mtime_ns if (run / "last.pt").exists() else None  # noqa: E731
    args = TRAIN + ["--corpus", corpus, "--out", run, "--epochs", str(epochs)]
    for k in range(kills):
        before = mtime()
        proc = start(args if before is None else ["train", "--resume", run], tmp_path)
        wait_for(lambda: mtime() != before, proc)  # this process has written a checkpoint: it is training
        time.sleep(rng.uniform(0.0, 0.4))
        if proc.poll() is not None:
            break  # it finished first
        proc.kill()
        proc.wait(timeout=30)
        payload = assert_run_is_sound(run)
        if payload["epoch"] >= epochs:
            break
    payload = assert_run_is_sound(run)
    if payload["epoch"] < epochs:
        resume_in_process(run, epochs, capsys)

    with pytest.raises(SystemExit) as info:
        main([str(a) for a in TRAIN + ["--corpus", corpus, "--out", whole, "--epochs", str(epochs)]])
    assert info.value.code == 0
    a, b = load_checkpoint(whole / "last.pt"), load_checkpoint(run / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("seconds", "val_seconds", "chars_per_sec", "elapsed")} for r in rs]  # noqa: E731
    assert strip(a["metrics"]) == strip(b["metrics"]) and len(b["metrics"]) == epochs


def test_sigkill_in_the_middle_of_a_checkpoint_write(corpus, tmp_path, capsys):
    """SIGKILL after half of the second epoch's last.pt reached the disk: the first epoch's last.pt stays."""
    run = tmp_path / "run"
    script = textwrap.dedent("""
        import os, signal, sys, torch
        from charlm.cli.app import main
        real_save = torch.save
        def save_then_die(payload, f, *args, **kwargs):
            if payload.get("epoch") == 2:
                f.write(b"half a checkpoint" * 100)
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return real_save(payload, f, *args, **kwargs)
        torch.save = save_then_die
        main(sys.argv[1:])
    """)
    args = TRAIN + ["--corpus", corpus, "--out", run, "--epochs", "3"]
    done = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                          timeout=120, env=ENV)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert len(list(run.glob("last.pt.*.tmp"))) == 1  # the half-written file, under a temporary name
    assert assert_run_is_sound(run)["epoch"] == 1
    resume_in_process(run, 3, capsys)
    assert not list(run.glob("*.tmp")) and load_checkpoint(run / "last.pt")["epoch"] == 3
