"""Issue 16, "nothing lost, second round": one writer per run directory, no silent overwrites, bounded work,
and every error a clean line. One test per row of the second-round tables in docs/errors.md.

Each error row checks the catalogue contract (exit status 2, exactly one `error:` line on
stderr, no traceback) and that nothing already saved changed.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from charlm.run.checkpoint import load_checkpoint, save_checkpoint
from helpers import TRAIN, cli, default_sigint, fails, train_args  # noqa: F401

LOCK_NAME = ".lock"  # charlm/rundir.py's


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def snapshot(run: Path) -> dict:
    return {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}


@pytest.fixture
def trained(tmp_path, small_corpus, capsys) -> Path:
    run = tmp_path / "trained"
    status, _, err = cli(train_args(small_corpus, run, "--epochs", "2"), capsys)
    assert status == 0, err
    return run


# --- lost work -------------------------------------------------------------------------------

def test_second_writer_of_a_run_directory_is_refused(small_corpus, tmp_path, capsys):
    from charlm.run.rundir import RunLock

    run = tmp_path / "run"
    with RunLock(run):  # another process training into it (flock conflicts between open files, even in one process)
        line = fails(train_args(small_corpus, run), capsys, "in use by another charlm process", f"pid {os.getpid()}")
        assert not (run / "last.pt").exists() and "host" in line
    assert not (run / LOCK_NAME).exists()  # the owner removes its lock when done


def test_second_compare_into_one_out_is_refused(small_corpus, tmp_path, capsys):
    from charlm.run.rundir import RunLock

    out = tmp_path / "cmp"
    with RunLock(out):
        fails(["compare", "--corpus", small_corpus, "--models", "rnn", "--samplers", "random", "--seeds", "1",
               "--epochs", "1", "--hidden", "8", "--out", out], capsys, "in use by another charlm process")


def test_stale_lock_of_a_dead_process_is_reported_and_taken_over(small_corpus, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).write_text("pid 999999 host elsewhere since 2026-01-01T00:00:00\n")  # nobody holds its flock
    status, _, err = cli(train_args(small_corpus, run), capsys)
    assert status == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "pid 999999" in warnings[0] and "taking it over" in warnings[0]
    assert not (run / LOCK_NAME).exists()


def test_out_holding_a_run_without_last_pt_is_refused(trained, small_corpus, capsys):
    (trained / "last.pt").unlink()  # best.pt and metrics.jsonl are still an earlier run's work
    before = snapshot(trained)
    fails(train_args(small_corpus, trained), capsys, "already holds a run", "best.pt", "--resume", "--overwrite")
    assert snapshot(trained) == before


def test_overwrite_moves_the_earlier_run_aside(trained, small_corpus, capsys):
    before = snapshot(trained)
    status, _, err = cli(train_args(small_corpus, trained, "--overwrite", "--seed", "3"), capsys)
    assert status == 0, err
    (aside,) = [p for p in trained.iterdir() if p.is_dir() and p.name.startswith("replaced-")]
    assert snapshot(aside) == {k: v for k, v in before.items() if k != LOCK_NAME}  # nothing deleted
    assert [r["epoch"] for r in map(json.loads, (trained / "metrics.jsonl").read_text().splitlines())] == [1]


def test_resume_from_best_pt_is_refused(trained, capsys):
    before = snapshot(trained)
    fails(["train", "--resume", trained / "best.pt", "--epochs", "3"], capsys, "best.pt", "rewind",
          f"--resume {trained}")
    fails(["train", "--resume", trained / "metrics.jsonl", "--epochs", "3"], capsys, "give a run directory")
    assert snapshot(trained) == before


def test_metrics_never_run_ahead_of_last_pt(small_corpus, tmp_path, capsys, monkeypatch):
    """A save that fails (or a kill between the two writes) must not leave an epoch in metrics.jsonl that
    last.pt does not hold."""
    run = tmp_path / "run"
    real_save = torch.save

    def fail_at_epoch_2(payload, f, *args, **kwargs):
        if payload.get("epoch") == 2:
            raise OSError(28, "No space left on device")
        return real_save(payload, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fail_at_epoch_2)
    fails(train_args(small_corpus, run, "--epochs", "3"), capsys, "No space left on device")
    epochs = [r["epoch"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]
    assert epochs == [r["epoch"] for r in load_checkpoint(run / "last.pt")["metrics"]] == [1]


def test_full_disk_in_torchs_own_writer_is_a_clean_line(small_corpus, tmp_path, capsys, monkeypatch):
    """On a full disk torch's zip writer raises RuntimeError('[enforce fail at inline_container.cc...]')."""
    run = tmp_path / "run"
    real_save = torch.save

    def writer_fails_at_epoch_2(payload, f, *args, **kwargs):
        if payload.get("epoch") == 2:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1728 vs 1664")
        return real_save(payload, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", writer_fails_at_epoch_2)
    fails(train_args(small_corpus, run, "--epochs", "3"), capsys, "cannot write checkpoint",
          "previous last.pt is unchanged", f"resume with: charlm train --resume {run}")
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    assert not list(run.glob("*.tmp"))


def test_closed_stdout_saves_the_epoch_and_says_so(small_corpus, tmp_path):
    """`charlm train ... | head -3`: the epoch that was being printed is saved, and the way out is one line."""
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "charlm", *map(str, train_args(small_corpus, run, "--epochs", "50"))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    for _ in range(3):  # the corpus line, the model line, epoch 1
        proc.stdout.readline()
    proc.stdout.close()  # the reader goes away
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 128 + signal.SIGPIPE, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "broken pipe" in lines[0] and "resume with" in lines[0], err
    payload = load_checkpoint(run / "last.pt")
    assert payload["epoch"] >= 1 and payload["epoch"] < 50
    logged = [r["epoch"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]
    assert logged == [r["epoch"] for r in payload["metrics"]]


# --- wrong output without a word ---------------------------------------------------------------

def edited_checkpoint(trained: Path, path: Path, edit) -> Path:
    payload = load_checkpoint(trained / "last.pt")
    edit(payload)
    save_checkpoint(path, {k: v for k, v in payload.items() if k not in ("format", "format_version", "charlm_version")})
    return path


def test_checkpoint_with_nan_weights_is_refused(trained, tmp_path, capsys):
    def poison(p):
        name = next(iter(p["model"]))
        p["model"][name] = torch.full_like(p["model"][name], math.nan)

    bad = edited_checkpoint(trained, tmp_path / "nan.pt", poison)
    fails(["generate", "--checkpoint", bad, "--prefix", "分开"], capsys, "NaN or infinite weights")
    fails(["evaluate", "--checkpoint", bad], capsys, "NaN or infinite weights")


def test_preset_on_resume_is_refused(trained, capsys):
    fails(["train", "--resume", trained, "--epochs", "3", "--preset", "textbook"], capsys,
          "--preset textbook does not apply on resume")


def test_flags_that_do_not_apply_to_kn_are_named(small_corpus, tmp_path, capsys):
    status, _, err = cli(train_args(small_corpus, tmp_path / "run", "--model", "kn", "--order", "3",
                                    "--embedding", "16", "--dropout", "0.5"), capsys)
    assert status == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "--embedding" in warnings[0] and "--dropout" in warnings[0], err
    assert "--order" not in warnings[0]


def test_member_on_a_plain_text_file_is_refused(small_corpus, tmp_path, capsys):
    fails(train_args(small_corpus, tmp_path / "run", "--member", "a.txt"), capsys, "--member", "not one")


# --- hangs -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra", [[], ["--num-beams", "4"]])
def test_generate_length_is_bounded(trained, capsys, extra):
    fails(["generate", "--checkpoint", trained, "--length", 10**9, *extra], capsys, "--length 1,000,000,000",
          "100,000")


def test_compare_grid_size_is_bounded(small_corpus, tmp_path, capsys):
    fails(["compare", "--corpus", small_corpus, "--seeds", 100_000_000, "--out", tmp_path / "cmp"], capsys,
          "400,000,000 runs", "--seeds")
    assert not (tmp_path / "cmp").exists()


def test_kn_order_is_bounded(small_corpus, tmp_path, capsys):
    fails(train_args(small_corpus, tmp_path / "run", "--model", "kn", "--order", 10**9), capsys, "--order", "1000000000")
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_a_device_as_corpus_is_refused(tmp_path, capsys):
    fails(train_args("/dev/zero", tmp_path / "run"), capsys, "/dev/zero is a device")


# --- internal errors that are input errors ------------------------------------------------------

def test_encrypted_zip_member(tmp_path, small_text, capsys):
    path = tmp_path / "secret.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("lyrics.txt", small_text)
    raw = bytearray(path.read_bytes())
    local, central = raw.find(b"PK\x03\x04"), raw.find(b"PK\x01\x02")
    raw[local + 6] |= 0x1  # the "encrypted" bit of the general-purpose flags, as an encrypting zip tool sets it
    raw[central + 8] |= 0x1
    path.write_bytes(bytes(raw))
    fails(train_args(path, tmp_path / "run"), capsys, "encrypted")


def test_zip_with_an_unsupported_compression_method(tmp_path, small_text, capsys):
    path = tmp_path / "deflate64.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("lyrics.txt", small_text)
    raw = bytearray(path.read_bytes())
    local, central = raw.find(b"PK\x03\x04"), raw.find(b"PK\x01\x02")
    raw[local + 8:local + 10] = raw[central + 10:central + 12] = (9).to_bytes(2, "little")  # 9: deflate64
    path.write_bytes(bytes(raw))
    fails(train_args(path, tmp_path / "run"), capsys, "compression method")


def test_lone_surrogate_from_unicode_escape(tmp_path, small_text, capsys):
    path = tmp_path / "escaped.txt"
    path.write_text(small_text.encode("unicode_escape").decode("ascii") + "\\ud800", encoding="ascii")
    fails(train_args(path, tmp_path / "run", "--encoding", "unicode_escape"), capsys, "lone surrogate")


@pytest.mark.parametrize("seed", [2**64, -1])
def test_seed_out_of_range(small_corpus, tmp_path, capsys, seed):
    fails(train_args(small_corpus, tmp_path / "run", "--seed", seed), capsys, "--seed must lie in")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag", ["--lr", "--clip", "--weight-decay", "--dropout", "--val-fraction", "--mix-weight"])
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_float_flags(small_corpus, tmp_path, capsys, flag, value):
    fails(train_args(small_corpus, tmp_path / "run", flag, value), capsys, f"{flag} must", value)
    assert not (tmp_path / "run").exists()


def test_hidden_too_big_for_memory_is_refused_before_allocating(small_corpus, tmp_path, capsys):
    fails(train_args(small_corpus, tmp_path / "run", "--hidden", 10**9), capsys, "parameters", "GiB", "--hidden")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("edit,needle", [
    (lambda p: p["config"].update(hidden=-5), "--hidden must be"),
    (lambda p: p["config"].update(hidden="32"), "hidden is '32'"),
    (lambda p: p["config"].update(layers=0), "--layers must be"),
    (lambda p: p["config"].update(model="kn", order=10**9), "order"),
    (lambda p: p["config"].update(hidden=10**9), "GiB"),
    (lambda p: p.update(vocab=["ab"] + p["vocab"][1:]), "'ab'"),
    (lambda p: p.update(vocab=[5] + p["vocab"][1:]), "5"),
    (lambda p: p.update(vocab=[]), "empty"),
])
def test_edited_checkpoint_blames_the_checkpoint(trained, tmp_path, capsys, edit, needle):
    bad = edited_checkpoint(trained, tmp_path / "edited.pt", edit)
    line = fails(["generate", "--checkpoint", bad, "--prefix", "分"], capsys, needle)
    assert "checkpoint" in line and ("edited" in line or "damaged" in line)


def test_rank_without_master_addr_is_refused_before_the_run_directory(small_corpus, tmp_path, capsys, monkeypatch):
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    fails(train_args(small_corpus, tmp_path / "run"), capsys, "$MASTER_ADDR", "torchrun")
    assert not (tmp_path / "run").exists()


# --- messages that mislead ---------------------------------------------------------------------

def test_evaluate_missing_text_names_text(trained, tmp_path, capsys):
    fails(["evaluate", "--checkpoint", trained, "--text", tmp_path / "nope.txt"], capsys,
          "text", "does not exist", "--text")


def test_evaluate_reads_a_zip_member_with_member_and_encoding(trained, tmp_path, small_text, capsys):
    path = tmp_path / "two.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a.txt", small_text)
        zf.writestr("b.txt", small_text[:200])
    fails(["evaluate", "--checkpoint", trained, "--text", path, "--decoding", "greedy", "--length", 5], capsys,
          "--member")
    status, out, err = cli(["evaluate", "--checkpoint", trained, "--text", path, "--member", "b.txt",
                            "--encoding", "utf-8", "--decoding", "greedy", "--length", 5], capsys)
    assert status == 0, err
    assert "two.zip" in out


def test_gzip_data_in_a_txt_file_is_named_as_such(tmp_path, small_text, capsys):
    path = tmp_path / "really-gzip.txt"
    path.write_bytes(gzip.compress(small_text.encode("utf-8")))
    line = fails(train_args(path, tmp_path / "run"), capsys, "gzip-compressed", ".gz")
    assert "--encoding" not in line


def test_metrics_log_that_is_a_directory_is_named_and_no_tmp_is_left(small_corpus, tmp_path, capsys):
    run = tmp_path / "run"
    status, _, err = cli(train_args(small_corpus, run, "--epochs", "1"), capsys)
    assert status == 0, err
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").mkdir()
    line = fails(["train", "--resume", run, "--epochs", "2"], capsys, "metrics.jsonl is not a regular file")
    assert "metrics.jsonl.tmp" not in line
    assert not (run / "metrics.jsonl.tmp").exists()
    assert load_checkpoint(run / "last.pt")["epoch"] == 1


def test_legacy_torch_file_is_not_called_truncated(tmp_path, capsys):
    path = tmp_path / "old.pt"
    torch.save({"format": "charlm-checkpoint"}, path, _use_new_zipfile_serialization=False)
    line = fails(["generate", "--checkpoint", path], capsys, "legacy")
    assert "truncated" not in line


def test_sigterm_while_counting_ngrams_is_acted_on(small_corpus, tmp_path):
    """The counting pass of --model kn asks should_stop() between orders (it used to run to its end)."""
    from charlm.config import Config
    from charlm.data.corpus import load_corpus
    from charlm.models.kn_counts import CountingInterrupted
    from charlm.train.loop import train

    config = Config(corpus=str(small_corpus), model="kn", order=3, val_fraction=0.2, pred_every=0, device="cpu",
                    preset="none")
    asked = []

    def stop():
        asked.append(1)
        return True

    with pytest.raises(CountingInterrupted):
        train(config, load_corpus(config), tmp_path / "run", should_stop=stop)
    assert asked and not (tmp_path / "run" / "best.pt").exists()


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_ctrl_c_twice_on_a_parallel_compare_prints_no_traceback(small_corpus, tmp_path):
    import time

    proc = subprocess.Popen([sys.executable, "-m", "charlm", "compare", "--corpus", str(small_corpus), "--models", "rnn",
                             "--samplers", "random,consecutive", "--seeds", "1", "--jobs", "2", "--epochs", "500",
                             "--hidden", "8", "--batch-size", "4", "--num-steps", "6", "--val-fraction", "0.2",
                             "--out", str(tmp_path / "cmp")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=default_sigint)
    try:
        started = 0
        while started < 2:  # both runs handed to the worker pool
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            started += line.startswith("run ")
        time.sleep(1.0)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground process group
        time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        try:  # whatever happened, no worker outlives the test
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "run the same command again" in err.lower()


def test_closed_stdout_of_generate_exits_quietly(trained):
    proc = subprocess.Popen([sys.executable, "-m", "charlm", "generate", "--checkpoint", str(trained), "--prefix", "分开",
                             "--temperature", "1", "--num-samples", "3000", "--length", "100", "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.stdout.readline()
    proc.stdout.close()  # `| head -1`: well before the 300,000 characters are written
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 128 + signal.SIGPIPE, err
    assert "error" not in err and "Traceback" not in err and "Exception" not in err, err


# --- beyond the list: the same classes tried on every command ---------------------------

@pytest.mark.parametrize("command", ["generate", "evaluate"])
def test_generate_and_evaluate_seed_out_of_range(trained, capsys, command):
    fails([command, "--checkpoint", trained, "--seed", 2**64], capsys, "--seed must lie in")


def test_train_pred_len_is_bounded(small_corpus, tmp_path, capsys):
    fails(train_args(small_corpus, tmp_path / "run", "--pred-len", 10**9), capsys, "--pred-len 1,000,000,000")
    assert not (tmp_path / "run").exists()


def test_compare_hidden_too_big_is_refused_before_allocating(small_corpus, tmp_path, capsys):
    fails(["compare", "--corpus", small_corpus, "--models", "rnn", "--samplers", "random", "--seeds", "1",
           "--hidden", 10**9, "--epochs", "1", "--out", tmp_path / "cmp"], capsys, "GiB", "--hidden")


@pytest.mark.parametrize("edit,needle", [
    (lambda p: p["config"].update(model="transformer"), "'transformer' model"),
    (lambda p: p["config"].update(sampler="shuffled"), "sampler is 'shuffled'"),
    (lambda p: p.update(epoch="x"), "epoch is 'x'"),
    (lambda p: p.update(metrics=None), "metrics is None"),
])
def test_edited_checkpoint_on_resume_blames_the_checkpoint(trained, capsys, edit, needle):
    edited_checkpoint(trained, trained / "last.pt", edit)
    before = snapshot(trained)
    line = fails(["train", "--resume", trained, "--epochs", "5"], capsys, needle)
    assert "checkpoint" in line
    assert {k: v for k, v in snapshot(trained).items() if k != LOCK_NAME} == before


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_interactive_generate_from_a_stream_without_line_breaks(trained):
    with open("/dev/zero", "rb") as zero:
        done = subprocess.run([sys.executable, "-m", "charlm", "generate", "--checkpoint", str(trained),
                               "--interactive", "--device", "cpu"], stdin=zero, capture_output=True, text=True,
                              timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2 and "longer than 100,000 characters" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("value", ["inf", "nan", "1e300"])
def test_distributed_timeout_must_be_a_usable_number(monkeypatch, value):
    from charlm.train.distributed import collective_timeout
    from charlm.errors import CharlmError

    monkeypatch.setenv("CHARLM_DIST_TIMEOUT", value)
    with pytest.raises(CharlmError, match="CHARLM_DIST_TIMEOUT"):
        collective_timeout()
