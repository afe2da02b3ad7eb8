"""The bad-input catalogue of docs/errors.md: one test per row.

Every row must end with exactly one line on stderr that starts with "error:",
a non-zero exit status, no traceback, and nothing already saved lost. Most rows
run the CLI in this process (fast); a few run `python -m charlm` as a real
process to check the same at the level of the interpreter.
"""

from __future__ import annotations

import errno
import gzip
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from charlm.run.checkpoint import load_checkpoint
from charlm.errors import CharlmError
from charlm.models import MODELS
from helpers import TRAIN, cli, fails, train_args  # noqa: F401


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Run in a temporary directory (default run directories land there)."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def trained(tmp_path, small_corpus, capsys) -> Path:
    """A finished 1-epoch run; its last.pt is the base of the checkpoint rows."""
    run = tmp_path / "trained"
    status, _, err = cli(train_args(small_corpus, run), capsys)
    assert status == 0, err
    return run


# --- the corpus ------------------------------------------------------------------------------

def test_missing_corpus(tmp_path, capsys):
    fails(train_args(tmp_path / "nope.txt", tmp_path / "run"), capsys, "does not exist", "--corpus")


def test_corpus_is_a_directory(tmp_path, capsys):
    (tmp_path / "folder").mkdir()
    fails(train_args(tmp_path / "folder", tmp_path / "run"), capsys, "is a directory")


def test_empty_corpus(tmp_path, capsys):
    (tmp_path / "empty.txt").write_bytes(b"")
    fails(train_args(tmp_path / "empty.txt", tmp_path / "run"), capsys, "is empty")


def test_whitespace_only_corpus(tmp_path, capsys):
    (tmp_path / "blank.txt").write_text(" \n\t\n  \n", encoding="utf-8")
    fails(train_args(tmp_path / "blank.txt", tmp_path / "run"), capsys, "only whitespace")


def test_gbk_corpus_suggests_the_encoding_and_encoding_gbk_reads_it(tmp_path, small_text, capsys):
    path = tmp_path / "gbk.txt"
    path.write_bytes(small_text.encode("gbk"))
    fails(train_args(path, tmp_path / "run"), capsys, "not valid utf-8", "--encoding gbk")
    status, out, err = cli(train_args(path, tmp_path / "run", "--encoding", "gbk"), capsys)
    assert status == 0, err
    assert load_checkpoint(tmp_path / "run" / "last.pt")["vocab"].count("分") == 1


def test_unknown_encoding(small_corpus, tmp_path, capsys):
    fails(train_args(small_corpus, tmp_path / "run", "--encoding", "klingon-8"), capsys, "unknown --encoding")


def test_zip_without_a_text_member(tmp_path, capsys):
    path = tmp_path / "nothing.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("folder/", "")
    fails(train_args(path, tmp_path / "run"), capsys, "holds no text file")


def test_zip_with_several_texts_needs_member(tmp_path, small_text, capsys):
    path = tmp_path / "two.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a.txt", small_text)
        zf.writestr("b.txt", small_text.upper())
    fails(train_args(path, tmp_path / "run"), capsys, "a.txt", "b.txt", "--member")
    status, _, err = cli(train_args(path, tmp_path / "run", "--member", "b.txt"), capsys)
    assert status == 0, err


def test_zip_member_that_is_not_there(tmp_path, small_text, capsys):
    path = tmp_path / "one.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a.txt", small_text)
    fails(train_args(path, tmp_path / "run", "--member", "c.txt"), capsys, "no member 'c.txt'", "a.txt")


def test_corrupt_zip(tmp_path, small_text, capsys):
    path = tmp_path / "broken.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a.txt", small_text)
    path.write_bytes(path.read_bytes()[:40])
    fails(train_args(path, tmp_path / "run"), capsys, "not a readable zip file")


def test_corrupt_gzip(tmp_path, small_text, capsys):
    path = tmp_path / "broken.txt.gz"
    path.write_bytes(gzip.compress(small_text.encode("utf-8"))[:30])
    fails(train_args(path, tmp_path / "run"), capsys, "not a readable gzip file")


def test_corpus_shorter_than_one_minibatch(tmp_path, capsys):
    path = tmp_path / "short.txt"
    path.write_text("abcdefghijklmnopqrstuvwxyz" * 2, encoding="utf-8")
    fails(train_args(path, tmp_path / "run", "--batch-size", "8"), capsys, "shorter than one minibatch",
          "--batch-size 8")
    assert not (tmp_path / "run" / "last.pt").exists()  # refused before anything was written


def test_corpus_too_short_for_validation(tmp_path, capsys):
    path = tmp_path / "tiny.txt"
    path.write_text("abc", encoding="utf-8")
    fails(train_args(path, tmp_path / "run"), capsys, "too short", "--val-fraction")


# --- hyperparameters -------------------------------------------------------------------------

@pytest.mark.parametrize("flag,value,needle", [
    ("--epochs", "0", "--epochs must be a positive"),
    ("--epochs", "-3", "--epochs must be a positive"),
    ("--batch-size", "0", "--batch-size must be a positive"),
    ("--batch-size", "-1", "--batch-size must be a positive"),
    ("--hidden", "0", "--hidden must be a positive"),
    ("--hidden", "-8", "--hidden must be a positive"),
    ("--num-steps", "0", "--num-steps must be a positive"),
    ("--num-steps", "-6", "--num-steps must be a positive"),
    ("--lr", "0", "--lr must be positive"),
    ("--lr", "-0.1", "--lr must be positive"),
    ("--val-fraction", "0", "strictly between 0 and 1"),
    ("--val-fraction", "1", "strictly between 0 and 1"),
    ("--val-fraction", "1.5", "strictly between 0 and 1"),
    ("--val-fraction", "-0.2", "strictly between 0 and 1"),
    ("--clip", "-1", "--clip must be 0 or more"),
    ("--weight-decay", "-0.5", "--weight-decay must be 0 or more"),
    ("--max-chars", "-5", "--max-chars must be 0 or more"),
    ("--patience", "-1", "--patience must be 0 or more"),
    ("--epochs", "ten", "'ten' is not a valid integer"),
])
def test_bad_hyperparameter(small_corpus, tmp_path, capsys, flag, value, needle):
    fails(train_args(small_corpus, tmp_path / "run", flag, value), capsys, needle)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag,value", [("--model", "transformer"), ("--sampler", "shuffled"),
                                        ("--preset", "fastest"), ("--optimizer", "adamw")])
def test_unknown_name(small_corpus, tmp_path, capsys, flag, value):
    fails(train_args(small_corpus, tmp_path / "run", flag, value), capsys, flag, repr(value))


def test_cuda_asked_for_without_a_gpu(small_corpus, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    fails(train_args(small_corpus, tmp_path / "run", "--device", "cuda"), capsys, "--device cpu")


# --- prefixes --------------------------------------------------------------------------------

def test_empty_prefix(trained, capsys):
    fails(["generate", "--checkpoint", trained, "--prefix", ""], capsys, "prefix is empty")


def test_prefix_of_unknown_characters(trained, capsys):
    fails(["generate", "--checkpoint", trained, "--prefix", "☃☄"], capsys, "not in the model's vocabulary", "☃")


def test_train_refuses_a_bad_prefix_before_training(small_corpus, tmp_path, capsys):
    fails(train_args(small_corpus, tmp_path / "run", "--prefix", "分☃"), capsys, "never occur in the corpus: ☃")
    fails(train_args(small_corpus, tmp_path / "run", "--prefix", ""), capsys, "prefix is empty")
    assert not (tmp_path / "run" / "last.pt").exists()


# --- checkpoints -----------------------------------------------------------------------------

def test_missing_checkpoint(tmp_path, capsys):
    fails(["generate", "--checkpoint", tmp_path / "none.pt"], capsys, "does not exist")


def test_run_directory_without_checkpoints(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    fails(["generate", "--checkpoint", tmp_path / "run"], capsys, "holds no best.pt or last.pt")


def test_empty_checkpoint(tmp_path, capsys):
    (tmp_path / "empty.pt").write_bytes(b"")
    fails(["generate", "--checkpoint", tmp_path / "empty.pt"], capsys, "is empty")


def test_truncated_checkpoint(trained, tmp_path, capsys):
    data = (trained / "last.pt").read_bytes()
    (tmp_path / "half.pt").write_bytes(data[: len(data) // 2])
    fails(["generate", "--checkpoint", tmp_path / "half.pt"], capsys, "truncated")


def test_garbage_checkpoint(tmp_path, capsys):
    (tmp_path / "noise.pt").write_bytes(bytes(range(256)) * 40)
    fails(["generate", "--checkpoint", tmp_path / "noise.pt"], capsys, "not a checkpoint file")


def test_zip_that_is_not_a_checkpoint(tmp_path, small_text, capsys):
    with zipfile.ZipFile(tmp_path / "lyrics.pt", "w") as zf:
        zf.writestr("lyrics.txt", small_text)
    fails(["generate", "--checkpoint", tmp_path / "lyrics.pt"], capsys, "not a PyTorch checkpoint")


def test_pytorch_file_that_is_not_a_charlm_checkpoint(tmp_path, capsys):
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pt")
    fails(["generate", "--checkpoint", tmp_path / "other.pt"], capsys, "not a charlm checkpoint")


@pytest.mark.parametrize("version,advice", [(99, "upgrade charlm"), (0, "retrain")])
def test_wrong_format_version(trained, tmp_path, capsys, version, advice):
    payload = load_checkpoint(trained / "last.pt")
    payload["format_version"], payload["charlm_version"] = version, "9.9.9"
    torch.save(payload, tmp_path / "other-version.pt")
    fails(["generate", "--checkpoint", tmp_path / "other-version.pt"], capsys,
          f"format version {version}", "charlm 9.9.9", advice)


def test_checkpoint_whose_weights_do_not_fit_its_config(trained, tmp_path, capsys):
    payload = load_checkpoint(trained / "last.pt")
    payload["config"]["hidden"] = 32
    torch.save(payload, tmp_path / "mismatch.pt")
    fails(["generate", "--checkpoint", tmp_path / "mismatch.pt"], capsys, "do not fit", "size mismatch")


def test_resume_from_a_checkpoint_that_cannot_resume(trained, tmp_path, capsys):
    payload = load_checkpoint(trained / "last.pt")
    del payload["optimizer"], payload["rng"]
    (tmp_path / "bare").mkdir()
    torch.save(payload, tmp_path / "bare" / "last.pt")
    fails(["train", "--resume", tmp_path / "bare", "--epochs", "2"], capsys, "cannot be resumed", "optimizer")


class RunsCode:
    """Unpickling this calls open(marker, "w"): a stand-in for any code an attacker would run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def malicious_checkpoint(trained: Path, path: Path, marker: Path) -> Path:
    """A real checkpoint with a code-running object hidden in it, saved as torch.save would."""
    payload = load_checkpoint(trained / "last.pt")
    payload["metrics"] = [RunsCode(marker)]
    torch.save(payload, path)
    return path


def test_malicious_checkpoint_is_refused_and_its_code_does_not_run(trained, tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = malicious_checkpoint(trained, tmp_path / "evil.pt", marker)
    # the payload is live: an unsafe load does run it (so the assertions below can fail)
    torch.load(evil, weights_only=False)
    assert marker.exists()
    marker.unlink()

    fails(["generate", "--checkpoint", evil], capsys, "could run code", "refusing")
    assert not marker.exists()
    (tmp_path / "evil-run").mkdir()
    evil.rename(tmp_path / "evil-run" / "last.pt")
    fails(["train", "--resume", tmp_path / "evil-run", "--epochs", "3"], capsys, "could run code")
    assert not marker.exists()


def test_malicious_raw_pickle_is_refused_unread(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"format": "charlm-checkpoint", "x": RunsCode(marker)}, protocol=2))
    fails(["generate", "--checkpoint", path], capsys, "not a checkpoint file")
    assert not marker.exists()
    with pytest.raises(CharlmError):
        load_checkpoint(path)
    assert not marker.exists()


# --- the output directory and the disk -------------------------------------------------------

def test_out_is_a_file(small_corpus, tmp_path, capsys):
    (tmp_path / "taken").write_text("x")
    fails(train_args(small_corpus, tmp_path / "taken"), capsys, "is a file")


def test_out_cannot_be_created(small_corpus, tmp_path, capsys):
    """Works as root too: no directory can be made below a regular file."""
    (tmp_path / "file").write_text("x")
    fails(train_args(small_corpus, tmp_path / "file" / "run"), capsys, "cannot write to run directory", "--out")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes through chmod 0o500")
def test_out_without_write_permission(small_corpus, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        fails(train_args(small_corpus, locked / "run"), capsys, "cannot write to run directory", "Permission denied")
    finally:
        locked.chmod(0o700)


def test_full_disk_while_saving_keeps_the_previous_checkpoint(small_corpus, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    real_save = torch.save
    seen = {}

    def save_until_the_disk_fills(payload, f, *args, **kwargs):
        if payload.get("epoch") == 2 and payload.get("partial") is None:  # (other files, e.g. copyguard.pt, have no epoch)
            seen["before"] = (run / "last.pt").read_bytes()
            f.write(b"\0" * 1000)  # part of the file reached the disk, then the disk was full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(payload, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_the_disk_fills)
    fails(train_args(small_corpus, run, "--epochs", "3"), capsys, "No space left on device",
          "previous last.pt is unchanged", f"charlm train --resume {run}")
    assert (run / "last.pt").read_bytes() == seen["before"]
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "copyguard.pt", "last.pt", "metrics.jsonl"]  # no temporary left

    monkeypatch.setattr(torch, "save", real_save)
    status, _, err = cli(["train", "--resume", run], capsys)  # once there is room again, nothing was lost
    assert status == 0, err
    assert load_checkpoint(run / "last.pt")["epoch"] == 3


# --- numerical faults ------------------------------------------------------------------------

def test_diverging_training_names_the_epoch_and_keeps_the_checkpoint(small_corpus, tmp_path, capsys):
    run = tmp_path / "run"
    fails(train_args(small_corpus, run, "--optimizer", "sgd", "--lr", "1e38", "--clip", "0"), capsys,
          "in epoch 1", "--lr", "--clip 1", "last.pt is unchanged")
    assert load_checkpoint(run / "last.pt")["epoch"] == 0  # the state before the first step, still loadable


def test_overflowing_perplexity_is_a_divergence_not_a_crash(small_corpus, tmp_path, capsys):
    fails(train_args(small_corpus, tmp_path / "run", "--optimizer", "sgd", "--lr", "1e20", "--clip", "0"), capsys,
          "epoch 1", "--lr")


def test_nan_in_a_later_epoch_leaves_last_and_best_untouched(trained, capsys, monkeypatch):
    before = {name: (trained / name).read_bytes() for name in ("last.pt", "best.pt", "metrics.jsonl")}
    model_class = MODELS["rnn"]
    real_forward = model_class.forward

    def poisoned(self, X, state):
        logits, state = real_forward(self, X, state)
        return (logits * float("nan") if self.training else logits), state

    monkeypatch.setattr(model_class, "forward", poisoned)
    fails(["train", "--resume", trained, "--epochs", "3"], capsys, "became nan in epoch 2", "--lr")
    assert {name: (trained / name).read_bytes() for name in before} == before


# --- the --debug escape hatch and the real process -------------------------------------------

def test_debug_shows_the_traceback(tmp_path, capsys):
    status, _, err = cli(["--debug"] + train_args(tmp_path / "nope.txt", tmp_path / "run"), capsys)
    assert status == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")


def charlm_process(*args, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default"}
    return subprocess.run([sys.executable, "-m", "charlm", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_real_process_prints_one_line_and_runs_no_code(trained, tmp_path):
    marker = tmp_path / "pwned"
    evil = malicious_checkpoint(trained, tmp_path / "evil.pt", marker)
    for args, needle in ((["train", "--corpus", tmp_path / "nope.txt"], "does not exist"),
                         (["generate", "--checkpoint", evil], "could run code")):
        done = charlm_process(*args, cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ") and needle in done.stderr, done.stderr
        assert "Traceback" not in done.stdout + done.stderr
    assert not marker.exists()
