"""The command line end to end: train then generate, help texts, entry points, and the spine's bad inputs."""

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from charlm.cli.app import cli
from helpers import assert_one_line_error

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--hidden", "16", "--num-steps", "8", "--batch-size", "4", "--epochs", "2", "--pred-every", "1",
        "--pred-len", "5", "--val-fraction", "0.2", "--preset", "none"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])




def test_train_then_generate(tmp_path, small_corpus):
    out = tmp_path / "run"
    result = run("train", "--corpus", small_corpus, "--out", out, *TINY)
    assert result.exit_code == 0, result.output
    assert "epoch    2" in result.stdout and "val ppl" in result.stdout
    assert "-> 分开" in result.stdout  # progress continuation of the default prefix
    assert {"best.pt", "last.pt", "metrics.jsonl"} <= {p.name for p in out.iterdir()}
    gen = run("generate", "--checkpoint", out, "--prefix", "不分开", "--length", "12", "--seed", "3")
    assert gen.exit_code == 0, gen.output
    text = gen.stdout.rstrip("\n")
    assert text.startswith("不分开") and 3 < len(text) <= 3 + 12  # blank space at the end is dropped
    # a seed fixes the sample, and the .pt file works as well as the run directory
    assert run("generate", "--checkpoint", out / "best.pt", "--prefix", "不分开", "--length", "12",
               "--seed", "3").stdout == gen.stdout


def test_refuses_to_overwrite_a_run(tmp_path, small_corpus):
    out = tmp_path / "run"
    assert run("train", "--corpus", small_corpus, "--out", out, *TINY).exit_code == 0
    before = (out / "last.pt").read_bytes()
    assert_one_line_error(run("train", "--corpus", small_corpus, "--out", out, *TINY), "--resume")
    assert (out / "last.pt").read_bytes() == before


@pytest.mark.parametrize("command", ["train", "generate"])
def test_help_documents_every_flag_with_defaults(command):
    result = run(command, "--help")
    assert result.exit_code == 0
    if command == "train":
        for flag in ("--corpus", "--model", "--sampler", "--epochs", "--max-chars", "--val-fraction", "--hidden",
                     "--num-steps", "--batch-size", "--lr", "--optimizer", "--clip", "--seed", "--device",
                     "--prefix", "--pred-every", "--pred-len", "--out", "--preset"):
            assert flag in result.output
        assert "default: 35" in result.output  # --num-steps
    else:
        for flag in ("--checkpoint", "--prefix", "--length", "--seed"):
            assert flag in result.output


@pytest.mark.parametrize("entry", [["train.py"], ["generate.py"], ["-m", "charlm", "train"]])
def test_entry_points_share_the_commands(entry):
    result = subprocess.run([sys.executable, *entry, "--help"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "--prefix" in result.stdout


def test_bad_corpus_inputs(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9 ol\xe9 ".encode("latin-1") * 50)
    short = tmp_path / "short.txt"
    short.write_text("分开不分开", encoding="utf-8")
    out = tmp_path / "out"
    assert_one_line_error(run("train", "--corpus", tmp_path / "nope.txt", "--out", out), "does not exist")
    assert_one_line_error(run("train", "--corpus", tmp_path, "--out", out), "directory")
    assert_one_line_error(run("train", "--corpus", empty, "--out", out), "empty")
    assert_one_line_error(run("train", "--corpus", latin, "--out", out), "not valid utf-8", "--encoding")
    assert_one_line_error(run("train", "--corpus", short, "--out", out, "--val-fraction", "0.4"), "minibatch")


def test_bad_hyperparameters_and_names(small_corpus, tmp_path):
    out = tmp_path / "out"
    assert_one_line_error(run("train", "--corpus", small_corpus, "--out", out, "--epochs", "0"), "--epochs")
    assert_one_line_error(run("train", "--corpus", small_corpus, "--out", out, "--lr", "-1"), "--lr")
    assert_one_line_error(run("train", "--corpus", small_corpus, "--out", out, "--val-fraction", "1.5"), "--val-fraction")
    assert_one_line_error(run("train", "--corpus", small_corpus, "--out", out, "--model", "transformer"), "--model")
    assert_one_line_error(run("train", "--corpus", small_corpus, "--out", out, "--batch-size", "64"), "minibatch")
    assert not (out / "last.pt").exists()


def test_generate_bad_inputs(tmp_path, small_corpus):
    out = tmp_path / "run"
    assert run("train", "--corpus", small_corpus, "--out", out, *TINY).exit_code == 0
    assert_one_line_error(run("generate", "--checkpoint", out, "--prefix", "分开龘"), "龘")
    assert_one_line_error(run("generate", "--checkpoint", tmp_path / "missing.pt"), "does not exist")
