"""The automatic recipe (--preset auto), the time budget's plan, the tuning slice and the Markov yardstick."""

import math
from dataclasses import fields

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from charlm.train import budget as budget_module
from charlm.train.budget import FLOOR, MEASURE_STEPS, Budget
from charlm.run.checkpoint import load_checkpoint
from charlm.cli.app import cli
from charlm.config import Config, apply_preset, field_default
from charlm.data.corpus import Corpus, carve_tune
from charlm.train.recipe import (AUTO_FIELDS, SHORT_DROPOUT, SHORT_EPOCHS, SHORT_MIN_CHARS, SHORT_ORDER, SHORT_WEIGHT_DECAY,
                           CorpusStats, DeviceInfo, choose_recipe, repeated_share, resolve_auto)
from charlm.data.synthetic import _log_probs, best_perplexity, markov_indices
from charlm.data.vocab import Vocab

CPU = DeviceInfo("cpu", 2)


def stats(chars, distinct=100, repeated=0.1):
    return CorpusStats(chars, distinct, repeated)


def test_auto_fields_are_config_fields():
    names = {f.name for f in fields(Config)}
    # mix_fit arrives with the fitted mixture; every other field auto may choose exists now
    assert set(AUTO_FIELDS) - {"mix_fit"} <= names


def test_a_larger_text_gets_a_larger_model_and_less_dropout():
    small, _ = choose_recipe(stats(10_000), CPU)
    large, _ = choose_recipe(stats(2_000_000), CPU)
    assert large["hidden"] > small["hidden"]
    assert small["dropout"] > large["dropout"]  # a tiny text gets more regularisation
    assert large["time_budget"] > small["time_budget"]
    assert all(key in AUTO_FIELDS for key in small)


def test_dropout_never_grows_with_more_text():
    drops = [choose_recipe(stats(n), CPU)[0]["dropout"] for n in (1_000, 30_000, 60_000, 200_000, 2_000_000)]
    assert drops == sorted(drops, reverse=True) and drops[0] > drops[-1]


def test_an_explicit_budget_is_kept_and_the_tuning_slice_is_capped():
    values, reason = choose_recipe(stats(2_000_000), CPU, time_budget_min=1.5)
    assert values["time_budget"] == 1.5
    assert 0 < values["tune_fraction"] * 2_000_000 <= 20_001
    assert "2,000,000" in reason
    assert choose_recipe(stats(1_000), CPU)[0]["tune_fraction"] == 0  # too short to carve anything off


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_the_budget_bounds_the_planned_steps(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(budget_module.time, "perf_counter", clock)
    plan = Budget(minutes=1.0, max_steps=10**6, cosine=True)
    assert plan.lr_factor() < 1  # warming up
    while not plan.over():
        clock.now += 0.1  # every minibatch takes 0.1 s
        plan.step()
    assert plan.planned <= 60 / 0.1 and plan.done <= 60 / 0.1
    assert plan.planned >= MEASURE_STEPS
    assert plan.lr_factor() == pytest.approx(FLOOR, abs=0.01)  # the schedule ends where the budget does
    # a budget never plans past the epochs it was given
    small = Budget(minutes=1.0, max_steps=50, cosine=False)
    for _ in range(MEASURE_STEPS):
        clock.now += 0.1
        small.step()
    assert small.planned == 50 and small.lr_factor() == 1.0


def test_budget_state_survives_a_resume(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(budget_module.time, "perf_counter", clock)
    plan = Budget(minutes=2.0, max_steps=1000, cosine=True)
    for _ in range(30):
        clock.now += 0.5
        plan.step()
    again = Budget(minutes=2.0, max_steps=1000, cosine=True, saved=plan.state())
    assert (again.done, again.planned) == (plan.done, plan.planned)
    assert again.elapsed() == pytest.approx(plan.elapsed())


def _corpus(n=1000, val=100):
    text = "".join(chr(0x4E00 + i % 37) for i in range(n))
    vocab = Vocab(sorted(set(text)))
    idx = np.arange(n, dtype=np.int64)  # the index array is the position: overlap shows up as shared values
    return Corpus(text, vocab, idx[:-val], idx[-val:], "mem", "fp")


def test_tuning_slice_comes_off_the_training_text_and_never_overlaps_validation():
    corpus = carve_tune(_corpus(), 0.1)
    assert len(corpus.tune) == 90
    assert not set(corpus.tune) & set(corpus.val) and not set(corpus.tune) & set(corpus.train)
    assert np.array_equal(np.concatenate([corpus.train, corpus.tune, corpus.val]), np.arange(1000))
    assert corpus.tune.max() < corpus.val.min()
    assert carve_tune(corpus, 0.1) is corpus  # carving twice (resume) does not cut a second slice
    assert len(carve_tune(_corpus(), 0.0).tune) == 0


def test_preset_none_keeps_the_plain_defaults():
    plain = Config(preset="none")
    assert apply_preset(plain, "none", set()) == plain
    defaults = {f.name: field_default(f) for f in fields(Config)}
    for name in AUTO_FIELDS:
        if name in defaults:
            assert getattr(plain, name) == defaults[name]
    assert (plain.model, plain.hidden, plain.epochs, plain.time_budget, plain.tune_fraction) == ("rnn", 256, 20, 0.0, 0.0)


def test_repeated_share():
    assert repeated_share(np.arange(100)) == 0.0
    assert repeated_share(np.tile(np.arange(10), 50)) > 0.9


def test_markov_best_perplexity_is_the_true_chain_entropy():
    idx, teacher = markov_indices(order=2, vocab=7, length=400, seed=3)
    # by hand: the mean -log p_true over positions 200.. from the teacher's own distributions
    nll = [-_log_probs(teacher, idx[None, t - 2:t])[0, idx[t]] for t in range(200, 400)]
    assert best_perplexity(idx, teacher, 200) == pytest.approx(math.exp(np.mean(nll)), rel=1e-9)
    again, _ = markov_indices(order=2, vocab=7, length=400, seed=3)
    assert np.array_equal(idx, again)  # the seed fixes the text
    assert 1 < best_perplexity(idx, teacher, 200) < 7


def _markov_corpus(n: int, order: int = 1, vocab: int = 40) -> Corpus:
    idx, _ = markov_indices(order=order, vocab=vocab, length=n, seed=5)
    vocab_ = Vocab([chr(0x4E00 + i) for i in range(vocab)])
    n_val = n // 10
    return Corpus("", vocab_, idx[:-n_val], idx[-n_val:], "mem", "fp")


def test_a_long_text_with_short_memory_gets_more_regularisation_and_passes():
    config = Config(device="cpu")  # preset auto
    n = SHORT_MIN_CHARS + 20_000
    plain = choose_recipe(stats(n * 9 // 10), CPU)[0]
    resolved, corpus, line = resolve_auto(config, _markov_corpus(n), set())
    assert len(corpus.tune) > 0 and resolved.order <= SHORT_ORDER  # an order-1 chain: nothing past a few characters
    assert (resolved.dropout, resolved.weight_decay, resolved.epochs) == (SHORT_DROPOUT, SHORT_WEIGHT_DECAY, SHORT_EPOCHS)
    assert resolved.dropout > plain["dropout"] and resolved.epochs > plain["epochs"]
    assert resolved.hidden == plain["hidden"] and "short memory (best order" in line
    # explicit flags win; a shorter text (its low order may only mean too few characters) keeps the size rules
    kept, _, line = resolve_auto(config, _markov_corpus(n), {"dropout", "epochs"})
    assert (kept.dropout, kept.epochs, kept.weight_decay) == (config.dropout, config.epochs, SHORT_WEIGHT_DECAY)
    short_text, _, line = resolve_auto(config, _markov_corpus(SHORT_MIN_CHARS // 2), set())
    assert short_text.dropout == choose_recipe(stats(SHORT_MIN_CHARS // 2 * 9 // 10), CPU)[0]["dropout"] != SHORT_DROPOUT
    assert "short memory" not in line


TEXT = ("分开 不分开 我想就这样牵着你的手不放开\n爱可不可以简简单单没有伤害\n"
        "你靠着我的肩膀 你在我胸口睡着\n像这样的生活 我爱你 你爱我\n"
        "the quick brown fox jumps over the lazy dog\n") * 60  # about 6,600 characters: enough for a tuning slice


def test_auto_end_to_end_stores_its_choice_in_the_checkpoint(tmp_path):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", "--corpus", str(corpus), "--out", str(out), "--time-budget", "0.05",
                                      "--hidden", "16", "--epochs", "2", "--num-steps", "8", "--batch-size", "4",
                                      "--pred-every", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    auto_lines = [line for line in result.stdout.splitlines() if line.startswith("auto: ")]
    assert len(auto_lines) == 1, result.stdout
    assert "tuning slice" in result.stdout
    best = load_checkpoint(out / "best.pt")
    config = best["config"]
    assert config["preset"] == "auto" and config["model"] == "mix" and config["mix_neural"] == "gru"
    assert len(config["kn_discounts"]) == config["order"]  # fitted on the tuning slice
    assert "recounted_val_ppl" in best and "n-gram part recounted with the tuning slice" in result.stdout
    assert config["hidden"] == 16 and config["embedding"] == 16  # explicit flags win; the tied embedding follows
    assert config["time_budget"] == 0.05 and config["tune_fraction"] > 0
    metrics = [line for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    assert metrics and '"elapsed"' in metrics[0] and '"tune_ppl"' in metrics[0]


def test_preset_none_trains_todays_default_model(tmp_path, small_corpus):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", "--preset", "none", "--corpus", str(small_corpus), "--out", str(out),
                                      "--hidden", "8", "--epochs", "1", "--num-steps", "8", "--batch-size", "4",
                                      "--pred-every", "0", "--device", "cpu", "--val-fraction", "0.2"])
    assert result.exit_code == 0, result.output
    assert "auto: " not in result.stdout
    config = load_checkpoint(out / "best.pt")["config"]
    assert (config["model"], config["time_budget"], config["tune_fraction"], config["dropout"]) == ("rnn", 0.0, 0.0, 0.0)


def test_the_teacher_family_fit_learns_an_easy_markov_text():
    """benchmarks/markov_oracle.py, the learnability yardstick, fits a small chain to near its best possible."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "markov_oracle.py"
    spec = importlib.util.spec_from_file_location("markov_oracle", path)
    oracle = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(oracle)
    torch.manual_seed(0)
    r = oracle.fit_teacher_family(order=2, vocab=7, rank=2, sharpness=4.0, length=6_000, epochs=100)
    assert r["d"] == 2 * 7 * 2 + 7 * 2 + 7 and r["n"] == 6_000 - 600 - 2 + 1
    assert r["best_possible"] < 7 and r["fitted"] < 1.05 * r["best_possible"]
