"""Exact resume: an interrupted and resumed run ends with the same parameters and metrics as one that never stopped."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import numpy as np
import pytest
import torch

from charlm.run.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from charlm.cli.app import main
from charlm.config import Config
from charlm.data.corpus import load_corpus
from charlm.train.loop import train
from charlm.train.state import TrainingInterrupted, rng_state, set_rng_state

TIMINGS = ("seconds", "val_seconds", "chars_per_sec", "elapsed")




def tiny_config(corpus_path, **overrides) -> Config:
    values = dict(corpus=str(corpus_path), hidden=12, batch_size=4, num_steps=6, epochs=4, lr=0.01,
                  pred_every=0, device="cpu", val_fraction=0.2)
    values.update(overrides)
    return Config(**values).validate()


def metrics_without_timings(run_dir) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMINGS} for line in lines]


def assert_same_state(a: dict, b: dict) -> None:
    """Bit-identical model and optimizer tensors and the same epoch bookkeeping."""
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for key, sa in a["optimizer"]["state"].items():
        for field, value in sa.items():
            other = b["optimizer"]["state"][key][field]
            assert torch.equal(value, other) if torch.is_tensor(value) else value == other, (key, field)
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert a["scheduler"] == b["scheduler"]
    for key in ("epoch", "best_epoch", "best_val_ppl", "bad_epochs"):
        assert a[key] == b[key], key
    assert [{k: v for k, v in r.items() if k not in TIMINGS} for r in a["metrics"]] == \
           [{k: v for k, v in r.items() if k not in TIMINGS} for r in b["metrics"]]


def resume_from(run_dir, config: Config, corpus, **kwargs):
    payload = load_checkpoint(run_dir / "last.pt")
    return train(config, corpus, run_dir, resume=payload, **kwargs)


class StopAfter:
    """A `should_stop` that turns true at its `n`-th call (the trainer asks once before every minibatch)."""

    def __init__(self, n: int):
        self.n, self.calls = n, 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.calls >= self.n


CASES = {
    "rnn-consecutive": dict(model="rnn", sampler="consecutive"),
    "rnn-random": dict(model="rnn", sampler="random"),
    "rnn-offset-plateau": dict(model="rnn", sampler="consecutive", random_offset=True, lr_schedule="plateau"),
    "scratch-random-sgd": dict(model="rnn-scratch", sampler="random", optimizer="sgd", lr=1.0),
    "ffn-consecutive": dict(model="ffn", sampler="consecutive", embedding=8),
}


@pytest.mark.parametrize("case", CASES)
def test_two_plus_two_epochs_equal_four(tmp_path, small_corpus, case):
    config = tiny_config(small_corpus, **CASES[case])
    corpus = load_corpus(config)
    train(config, corpus, tmp_path / "whole")

    train(replace(config, epochs=2), corpus, tmp_path / "split")
    assert load_checkpoint(tmp_path / "split" / "last.pt")["epoch"] == 2
    resume_from(tmp_path / "split", config, corpus)

    whole, split = load_checkpoint(tmp_path / "whole" / "last.pt"), load_checkpoint(tmp_path / "split" / "last.pt")
    assert_same_state(whole, split)
    assert metrics_without_timings(tmp_path / "whole") == metrics_without_timings(tmp_path / "split")
    assert len(metrics_without_timings(tmp_path / "split")) == 4


MID_EPOCH = {
    "rnn-consecutive": dict(model="rnn", sampler="consecutive"),
    "rnn-random": dict(model="rnn", sampler="random"),
    # a tuple hidden state carried across minibatches, and dropout drawing on torch's generator every step
    "lstm-dropout": dict(model="lstm", sampler="consecutive", dropout=0.3),
    # the feed-forward n-gram network's state is the last characters (integers), not a hidden vector
    "ffn-dropout": dict(model="ffn", sampler="consecutive", dropout=0.3),
}


@pytest.mark.parametrize("case", MID_EPOCH)
def test_interrupt_mid_epoch_then_resume_is_exact(tmp_path, small_corpus, case):
    config = tiny_config(small_corpus, epochs=3, **MID_EPOCH[case])
    corpus = load_corpus(config)
    train(config, corpus, tmp_path / "whole")

    stop = StopAfter(40)  # the first epoch has fewer minibatches: this lands inside epoch 2
    with pytest.raises(TrainingInterrupted) as info:
        train(config, corpus, tmp_path / "split", should_stop=stop)
    saved = load_checkpoint(tmp_path / "split" / "last.pt")
    assert info.value.epoch == 2 and info.value.batch is not None and 0 < info.value.batch < info.value.total
    assert saved["epoch"] == 1 and saved["partial"]["epoch"] == 2 and saved["partial"]["batch"] == info.value.batch
    carried = saved["partial"]["state"]
    assert (carried is not None) == (config.sampler == "consecutive")
    assert len(metrics_without_timings(tmp_path / "split")) == 1  # no line for the unfinished epoch

    resume_from(tmp_path / "split", config, corpus)
    assert_same_state(load_checkpoint(tmp_path / "whole" / "last.pt"), load_checkpoint(tmp_path / "split" / "last.pt"))
    assert metrics_without_timings(tmp_path / "whole") == metrics_without_timings(tmp_path / "split")


def test_interrupt_can_be_resumed_twice_and_between_epochs(tmp_path, small_corpus):
    config = tiny_config(small_corpus, epochs=4)
    corpus = load_corpus(config)
    train(config, corpus, tmp_path / "whole")
    run = tmp_path / "split"
    for n in (3, 5, 1):  # stop on the 1st call: before the first minibatch of the resumed position
        with pytest.raises(TrainingInterrupted):
            (train(config, corpus, run, should_stop=StopAfter(n)) if not (run / "last.pt").exists()
             else resume_from(run, config, corpus, should_stop=StopAfter(n)))
    resume_from(run, config, corpus)
    assert_same_state(load_checkpoint(tmp_path / "whole" / "last.pt"), load_checkpoint(run / "last.pt"))
    assert metrics_without_timings(tmp_path / "whole") == metrics_without_timings(run)


def test_stop_requested_during_validation_stops_after_the_epoch_checkpoint(tmp_path, small_corpus):
    config = tiny_config(small_corpus, epochs=3)
    corpus = load_corpus(config)
    calls = {"n": 0}

    def stop_after_first_epoch():
        # true once the first epoch's line is in metrics.jsonl, i.e. after its minibatches
        calls["n"] += 1
        return (tmp_path / "run" / "metrics.jsonl").exists()

    with pytest.raises(TrainingInterrupted) as info:
        train(config, corpus, tmp_path / "run", should_stop=stop_after_first_epoch)
    assert info.value.batch is None and info.value.epoch == 1
    saved = load_checkpoint(tmp_path / "run" / "last.pt")
    assert saved["epoch"] == 1 and saved["partial"] is None


def test_a_fresh_run_writes_an_epoch_zero_checkpoint_first(tmp_path, small_corpus):
    """So that a kill during the first epoch still leaves a last.pt that resumes."""
    config = tiny_config(small_corpus, epochs=2)
    corpus = load_corpus(config)
    with pytest.raises(TrainingInterrupted):
        train(config, corpus, tmp_path / "run", should_stop=lambda: True)
    saved = load_checkpoint(tmp_path / "run" / "last.pt")
    assert saved["epoch"] == 0 and saved["partial"]["batch"] == 0 and saved["metrics"] == []
    resume_from(tmp_path / "run", config, corpus)
    train(config, corpus, tmp_path / "whole")
    assert_same_state(load_checkpoint(tmp_path / "whole" / "last.pt"), load_checkpoint(tmp_path / "run" / "last.pt"))


def test_resume_removes_temporary_files_of_a_killed_save(tmp_path, small_corpus):
    config = tiny_config(small_corpus, epochs=2)
    corpus = load_corpus(config)
    train(replace(config, epochs=1), corpus, tmp_path / "run")
    stale = tmp_path / "run" / "last.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    resume_from(tmp_path / "run", config, corpus)
    assert not stale.exists()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["best.pt", "last.pt", "metrics.jsonl", "summary.json"]


def test_resume_drops_metrics_lines_written_after_the_checkpoint(tmp_path, small_corpus):
    """A kill between appending an epoch's line and saving its checkpoint must not duplicate that line."""
    config = tiny_config(small_corpus, epochs=3)
    corpus = load_corpus(config)
    train(config, corpus, tmp_path / "whole")
    run = tmp_path / "run"
    train(replace(config, epochs=1), corpus, run)
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"epoch": 2, "train_ppl": 1.0}) + "\n" + '{"epoch": 3, "tr')  # and a torn line
    resume_from(run, config, corpus)
    assert metrics_without_timings(tmp_path / "whole") == metrics_without_timings(run)


def test_rng_state_round_trips_through_a_checkpoint(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save_checkpoint(tmp_path / "rng.pt", {"config": {}, "vocab": ["a"], "model": {}, "rng": rng_state()})
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_checkpoint_records_format_config_vocab_fingerprint_and_version(tmp_path, small_corpus):
    import charlm

    config = tiny_config(small_corpus, epochs=1)
    corpus = load_corpus(config)
    train(config, corpus, tmp_path / "run")
    saved = load_checkpoint(tmp_path / "run" / "last.pt")
    assert saved["format_version"] == FORMAT_VERSION and saved["charlm_version"] == charlm.__version__
    assert Config.from_dict(saved["config"]) == config
    assert saved["vocab"] == corpus.vocab.idx_to_char
    assert saved["corpus"]["fingerprint"] == corpus.fingerprint and saved["corpus"]["chars"] == len(corpus.text)


# --- the CLI's resume checks ------------------------------------------------------------------

def cli(args, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


TRAIN = ["train", "--hidden", "8", "--batch-size", "4", "--num-steps", "6", "--pred-every", "0",
         "--device", "cpu", "--val-fraction", "0.2", "--lr", "0.01", "--preset", "none"]


@pytest.fixture
def finished_run(tmp_path, small_corpus, capsys):
    """A 1-epoch run made by the CLI (and the CLI's exit code 0 checked)."""
    run = tmp_path / "run"
    code, _, err = cli(TRAIN + ["--corpus", small_corpus, "--out", run, "--epochs", "1"], capsys)
    assert code == 0, err
    return run


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_cli_resume_with_more_epochs_matches_one_run(tmp_path, small_corpus, finished_run, capsys):
    code, out, err = cli(["train", "--resume", finished_run, "--epochs", "3"], capsys)
    assert code == 0, err
    assert "resuming after epoch 1" in out
    whole = tmp_path / "whole"
    code, _, err = cli(TRAIN + ["--corpus", small_corpus, "--out", whole, "--epochs", "3"], capsys)
    assert code == 0, err
    assert_same_state(load_checkpoint(whole / "last.pt"), load_checkpoint(finished_run / "last.pt"))
    assert metrics_without_timings(whole) == metrics_without_timings(finished_run)


def test_cli_resume_refuses_a_different_corpus(tmp_path, small_corpus, finished_run, capsys):
    small_corpus.write_text(small_corpus.read_text(encoding="utf-8") + "one more line\n", encoding="utf-8")
    code, _, err = cli(["train", "--resume", finished_run, "--epochs", "2"], capsys)
    line = one_error_line(err)
    assert code == 2 and "corpus differs" in line and "fingerprint" in line


def test_cli_resume_refuses_changed_flags_naming_them(finished_run, capsys):
    code, _, err = cli(["train", "--resume", finished_run, "--epochs", "2", "--hidden", "32", "--lr", "0.5"], capsys)
    line = one_error_line(err)
    assert code == 2
    assert "--hidden was 8, now 32" in line and "--lr was 0.01, now 0.5" in line and "--epochs" in line


def test_cli_resume_accepts_unchanged_flags_repeated(finished_run, capsys):
    code, _, err = cli(["train", "--resume", finished_run, "--epochs", "2", "--hidden", "8", "--pred-every", "1",
                        "--prefix", "分开"], capsys)
    assert code == 0, err


def test_cli_resume_of_a_finished_run_asks_for_more_epochs(finished_run, capsys):
    code, _, err = cli(["train", "--resume", finished_run], capsys)
    assert code == 2 and "raise --epochs" in one_error_line(err)


# A cosine run resumed with more --epochs trains on at its floor rate (issue #24):
# tests/test_hardening3.py::test_a_cosine_run_trains_longer_at_its_floor_rate.


def test_cli_resume_refuses_another_out_directory(tmp_path, finished_run, capsys):
    code, _, err = cli(["train", "--resume", finished_run, "--epochs", "2", "--out", tmp_path / "elsewhere"], capsys)
    assert code == 2 and "cannot move a resumed run" in one_error_line(err)


def test_cli_resume_of_a_missing_directory(tmp_path, capsys):
    code, _, err = cli(["train", "--resume", tmp_path / "nothing-here"], capsys)
    assert code == 2 and "no such run directory" in one_error_line(err)


def test_cli_resume_of_a_directory_without_last_pt(tmp_path, capsys):
    (tmp_path / "empty-run").mkdir()
    code, _, err = cli(["train", "--resume", tmp_path / "empty-run"], capsys)
    assert code == 2 and "holds no last.pt" in one_error_line(err)


def test_cli_refuses_to_overwrite_a_run(small_corpus, finished_run, capsys):
    before = (finished_run / "last.pt").read_bytes()
    code, _, err = cli(TRAIN + ["--corpus", small_corpus, "--out", finished_run, "--epochs", "1"], capsys)
    assert code == 2 and "--resume" in one_error_line(err)
    assert (finished_run / "last.pt").read_bytes() == before
