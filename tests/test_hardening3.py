"""Hardening round 3 (issue #24): the textbook's models by name, a record that holds the printed figure,
training a cosine run longer, signals and output encodings, and inputs that made a trained model unusable.

Each test failed on the code before the round; docs/errors.md lists them with their lines and exit codes.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import signal
import subprocess
import sys
import threading
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from charlm.config import Config
from charlm.data.corpus import load_corpus, read_text
from charlm.models import MODELS, build_model
from charlm.run.checkpoint import load_checkpoint
from charlm.train.budget import FLOOR
from charlm.train.recipe import resolve_auto
from helpers import TRAIN, cli, fails, train_args
from test_signals import ENV, assert_run_is_sound, metrics_lines, start, wait_for

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX signals, FIFOs and symlinks")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def text4(tmp_path, small_text) -> Path:
    """About 2,600 characters: enough for a few minibatches of the auto recipe's sizes."""
    path = tmp_path / "text4.txt"
    path.write_text(small_text * 4, encoding="utf-8")
    return path


def trained(corpus, run, capsys, *extra) -> Path:
    status, _, err = cli(train_args(corpus, run, *extra), capsys)
    assert status == 0, err
    return run


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


# --- the textbook's models by name: the auto recipe fills only what was left open -------------------

@pytest.mark.parametrize("model,extra", [(m, ()) for m in MODELS] + [("rnn-scratch", ("--sampler", "random")),
                                                                     ("gru-scratch", ("--sampler", "random"))])
def test_every_model_family_trains_alone_under_the_auto_recipe(small_corpus, tmp_path, capsys, model, extra):
    """`--model M --epochs 1` alone, on a text shorter than the recipe's minibatch (it shrinks it, never the user)."""
    run = tmp_path / "run"
    status, _, err = cli(["train", "--corpus", small_corpus, "--out", run, "--model", model, "--epochs", "1",
                          "--pred-every", "0", "--device", "cpu", *extra], capsys)
    assert status == 0, err
    config = Config.from_dict(load_checkpoint(run / "best.pt")["config"])
    assert config.model == model and config.preset == "auto"
    if model.endswith("-scratch"):
        assert (config.embedding, config.tie_weights, config.layers) == (0, False, 1)


EXPLICIT = [  # flags the recipe's own choices could contradict, given together
    {"model": "rnn-scratch", "hidden": 16},
    {"model": "lstm-scratch", "sampler": "random"},
    {"model": "mix", "mix_neural": "gru-scratch"},
    {"model": "gru", "onehot": True},
    {"model": "mix", "mix_weight": 0.3},
    {"model": "gru", "optimizer": "sgd"},
    {"model": "kn", "kn_discounts": (0.5, 0.6, 0.7)},
    {"model": "gru", "embedding": 24},
    {"model": "gru", "hidden": 24, "tie_weights": True},
    {"model": "rnn", "batch_size": 4},
    {"model": "gru-scratch", "dropout": 0.1, "num_steps": 8},
]


@pytest.mark.parametrize("given", EXPLICIT, ids=lambda d: "+".join(d))
def test_the_auto_recipe_never_contradicts_explicit_flags(text4, given):
    config = replace(Config(corpus=str(text4), device="cpu"), **given)
    corpus = load_corpus(config)
    resolved, corpus, line = resolve_auto(config, corpus, set(given))
    assert all(getattr(resolved, k) == v for k, v in given.items())
    resolved.validate()
    build_model(resolved, len(corpus.vocab))  # the family accepts what the recipe chose
    if "mix_weight" in given:
        assert resolved.mix_fit == "none" and "λ 0.3" in line
    if "optimizer" in given:
        assert resolved.lr >= 0.1  # SGD's rate, not Adam's 0.004
    if "kn_discounts" in given:
        assert resolved.order == 3


# --- the record carries the printed figure (summary.json) ------------------------------------------

def test_the_run_records_the_figure_it_prints_and_its_readers_show_it(text4, tmp_path, capsys):
    from charlm.report.compare import Run
    from charlm.report.summary import final_figure
    from charlm.run.metrics import read_metrics

    run = tmp_path / "run"
    status, out, err = cli(train_args(text4, run, "--model", "mix", "--tune-fraction", "0.2", "--epochs", "2"), capsys)
    assert status == 0, err
    printed = float(out.split("best validation perplexity ")[1].split()[0])
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert f"{summary['best_val_ppl']:.3f}" == f"{printed:.3f}" and summary["checkpoint"] == "best.pt"
    assert summary["recounted"] and summary["val_ppl_before_recount"] != summary["best_val_ppl"]
    assert all(f"{m['val_ppl']:.3f}" != f"{printed:.3f}" for m in metrics(run))  # the epochs' lines do not hold it
    assert not list(run.glob("*.tmp"))
    record = Run(1, Config.from_dict(load_checkpoint(run / "last.pt")["config"]), run)
    record.metrics = read_metrics(run / "metrics.jsonl")
    assert final_figure(record) == (summary["best_val_ppl"], summary["best_epoch"])  # compare's report
    status, out, err = cli(["evaluate", "--checkpoint", run, "--num-samples", "1", "--length", "5",
                            "--decoding", "greedy", "--max-copy", "0"], capsys)
    assert status == 0, err
    assert f"training reported validation perplexity {printed:.3f}" in out
    pytest.importorskip("fastapi")
    from charlm.web.engine import Engine

    assert Engine(run).describe()["val_ppl"] == summary["best_val_ppl"]  # the page's header
    (run / "summary.json").unlink()  # a run from before summary.json: the epochs' lines, as before
    assert final_figure(record)[0] == min(m["val_ppl"] for m in record.metrics)


# --- train longer: a cosine run resumed with more epochs --------------------------------------------

@pytest.mark.parametrize("budget", [(), ("--time-budget", "5")], ids=["per-epoch", "time-budget"])
def test_a_cosine_run_trains_longer_at_its_floor_rate(small_corpus, tmp_path, capsys, budget):
    run = trained(small_corpus, tmp_path / "run", capsys, "--lr-schedule", "cosine", "--epochs", "2", *budget)
    assert (run / "summary.json").is_file()
    status, out, err = cli(["train", "--resume", run, "--epochs", "4"], capsys)
    assert status == 0, err
    assert "extending a cosine run from 2 to 4 epochs" in err and f"floor {0.01 * FLOOR:g}" in err
    lrs = [m["lr"] for m in metrics(run)]
    assert len(lrs) == 4 and lrs[2] == lrs[3] == pytest.approx(0.01 * FLOOR)
    assert json.loads((run / "summary.json").read_text(encoding="utf-8"))["epochs"] == 4
    status, _, err = cli(["train", "--resume", run, "--epochs", "4"], capsys)  # finished: as before
    assert status == 2 and "raise --epochs" in err


# --- signals and output encodings -------------------------------------------------------------------

@posix_only
def test_sighup_during_train_saves_and_prints_the_resume_command(text4, tmp_path):
    run = tmp_path / "run"
    proc = start(["train", *TRAIN[1:], "--corpus", text4, "--out", run, "--epochs", "500"], tmp_path)
    wait_for(lambda: metrics_lines(run) >= 1, proc)
    proc.send_signal(signal.SIGHUP)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 129, err
    assert "Traceback" not in out + err and f"resume with: charlm train --resume {run}" in err
    assert assert_run_is_sound(run)["epoch"] >= 1


@posix_only
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_generate_ends_cleanly_on_sigterm_and_sighup(small_corpus, tmp_path, capsys, signum):
    run = trained(small_corpus, tmp_path / "run", capsys)
    proc = subprocess.Popen([sys.executable, "-m", "charlm", "generate", "--checkpoint", str(run), "--interactive",
                             "--length", "3", "--seed", "1"], cwd=tmp_path, env=ENV, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdin.write("分开\n")
    proc.stdin.flush()
    assert proc.stdout.readline()  # answered: now it waits for the next line
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err
    assert err.strip().splitlines()[-1] == f"stopped by {signal.Signals(signum).name}" and "Traceback" not in err


@pytest.mark.parametrize("command", ["generate", "train"])
def test_an_output_that_cannot_encode_the_corpus_never_aborts(small_corpus, tmp_path, capsys, monkeypatch, command):
    """PYTHONIOENCODING=latin-1: Chinese samples print as '?', and neither command ends with UnicodeEncodeError."""
    run = trained(small_corpus, tmp_path / "run", capsys)
    from charlm.cli.app import main

    args = (["generate", "--checkpoint", run, "--prefix", "分开", "--length", "8"] if command == "generate"
            else train_args(small_corpus, tmp_path / "again", "--pred-every", "1"))
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="latin-1")
    monkeypatch.setattr(sys, "stdout", stdout)
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    stdout.flush()
    printed = stdout.buffer.getvalue().decode("latin-1")
    assert info.value.code == 0, capsys.readouterr().err
    assert "??" in printed


@posix_only
def test_a_fifo_without_a_writer_is_refused_and_a_pipe_with_one_is_read(tmp_path, small_text, capsys):
    fifo = tmp_path / "corpus.fifo"
    os.mkfifo(fifo)
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.update(line=fails(train_args(fifo, tmp_path / "r"), capsys,
                                                                       "named pipe (FIFO)", "nothing writing")))
    worker.start()
    worker.join(30)
    if worker.is_alive():  # blocked in open(): give it a writer so that the test can end
        with open(fifo, "w"):
            pass
        worker.join()
        pytest.fail("reading a FIFO without a writer blocked")
    assert "line" in outcome
    read, write = os.pipe()  # a pipe with its writer (as <(zcat big.gz) or /dev/stdin give): read as usual
    os.write(write, small_text.encode("utf-8"))
    os.close(write)
    try:
        assert read_text(f"/dev/fd/{read}") == small_text
    finally:
        os.close(read)


# --- inputs that made a trained model unusable ------------------------------------------------------

@pytest.mark.parametrize("text", ["ACGTTGCAAGCT" * 250, "a" * 3000, "分开不分开我想就这样牵着你的手不放开爱可不可以简简单单" * 100],
                         ids=["dna", "one-letter", "chinese-one-line"])
def test_a_vocabulary_without_space_or_line_break_generates_and_evaluates(tmp_path, capsys, text):
    from charlm.generate.request import make_request, run_request
    from charlm.run.checkpoint import open_checkpoint

    corpus = tmp_path / "text.txt"
    corpus.write_text(text, encoding="utf-8")
    run = trained(corpus, tmp_path / "run", capsys)
    status, out, err = cli(["generate", "--checkpoint", run, "--length", "12", "--seed", "3"], capsys)
    assert status == 0, err
    status, out, err = cli(["evaluate", "--checkpoint", run, "--num-samples", "1", "--length", "6"], capsys)
    assert status == 0, err
    assert "num-beams" not in out or len(set(text)) >= 2
    opened = open_checkpoint(run)  # what the page's engine runs for every request
    req = make_request(length=10, seed=1, num_samples=2)
    samples = run_request(opened.model, opened.vocab, req, text[:2], torch.Generator().manual_seed(1), "cpu")
    assert len(samples) == 2 and all(set(s.text) <= set(text) for s in samples)


@pytest.mark.parametrize("args,needle", [
    (["serve", "--threads", "99999999999"], "1<=x<=1024"),
    (["generate", "--max-copy", "100000000000"], "--max-copy 100,000,000,000 is more than 100,000"),
    (["evaluate", "--max-copy", "100000000000", "--decoding", "greedy"], "--max-copy 100,000,000,000"),
], ids=["serve-threads", "generate-max-copy", "evaluate-max-copy"])
def test_numeric_options_of_the_checkpoint_commands_are_bounded(small_corpus, tmp_path, capsys, args, needle):
    run = trained(small_corpus, tmp_path / "run", capsys)
    fails([*args, "--checkpoint", run], capsys, needle)


@pytest.mark.parametrize("args,needle", [
    (["--weight-decay", "1e308"], "--weight-decay must be at most 1"),
], ids=["weight-decay"])
def test_numeric_options_of_train_and_compare_are_bounded(small_corpus, tmp_path, capsys, args, needle):
    fails(train_args(small_corpus, tmp_path / "run", *args), capsys, needle)
    fails(["compare", "--corpus", small_corpus, "--models", "rnn", "--samplers", "random", "--seeds", "1",
           "--out", tmp_path / "cmp", *args], capsys, needle)
    fails(["compare", "--corpus", small_corpus, "--models", "rnn", "--samplers", "random", "--seeds", "1",
           "--out", tmp_path / "cmp", "--pred-len", "100000000000"], capsys, "--pred-len 100,000,000,000")


@posix_only
def test_a_symlink_loop_and_a_dangling_symlink_are_named(tmp_path, capsys):
    (tmp_path / "a.txt").symlink_to(tmp_path / "b.txt")
    (tmp_path / "b.txt").symlink_to(tmp_path / "a.txt")
    (tmp_path / "gone.txt").symlink_to(tmp_path / "nowhere.txt")
    fails(train_args(tmp_path / "a.txt", tmp_path / "r"), capsys, "is a symlink loop")
    fails(train_args(tmp_path / "gone.txt", tmp_path / "r"), capsys, "is a symlink to", "which does not exist")


def test_a_zip_of_many_members_names_a_few_and_counts_the_rest(tmp_path, capsys):
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(2000):
            zf.writestr(f"part{i:04d}.txt", "abc")
    for extra in ((), ("--member", "nope.txt")):
        line = fails(train_args(path, tmp_path / "r", *extra), capsys, "part0000.txt", "and 1,995 more")
        assert len(line) < 300 and "part0005.txt" not in line


def test_a_path_with_a_line_break_stays_one_line(tmp_path, capsys):
    line = fails(train_args(tmp_path / "two\nlines.txt", tmp_path / "r"), capsys, "does not exist")
    assert "two\\nlines.txt" in line


@pytest.mark.parametrize("errors,needle", [("surrogateescape", "this line of stdin is not valid utf-8 (byte 0xff)"),
                                           ("strict", "stdin is not valid utf-8 (byte 0xff)")])
def test_interactive_stdin_that_is_not_utf8_is_called_so(small_corpus, tmp_path, capsys, monkeypatch, errors, needle):
    run = trained(small_corpus, tmp_path / "run", capsys)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"\xff\xfe\n"), encoding="utf-8", errors=errors))
    fails(["generate", "--checkpoint", run, "--interactive", "--length", "3"], capsys, needle)


def test_max_chars_stops_reading_a_compressed_corpus_early(tmp_path, capsys, small_text):
    """The gzip stream is cut short after a few MB: reading it whole fails, --max-chars 3000 never gets there."""
    whole = gzip.compress((small_text * 3000).encode("utf-8"))
    path = tmp_path / "big.txt.gz"
    path.write_bytes(whole[: len(whole) // 2])
    fails(train_args(path, tmp_path / "r"), capsys, "is not a readable gzip file")
    assert read_text(path, max_chars=3000)[:3000] == (small_text * 10)[:3000]
    status, out, err = cli(train_args(path, tmp_path / "run", "--max-chars", "3000"), capsys)
    assert status == 0, err
    assert "3,000 characters" in out
