"""The Kneser-Ney n-gram as a model family: interface, trainer hook, checkpoints and CLI."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from charlm.run.checkpoint import load_checkpoint, model_from_checkpoint
from charlm.cli.app import cli
from charlm.config import Config
from charlm.data.corpus import load_corpus
from charlm.errors import CharlmError
from charlm.models import MODELS, build_model, count_parameters
from charlm.models.kn import KNModel
from charlm.models.kneser_ney import KneserNey
from charlm.train.loop import train
from charlm.train.validate import perplexity as evaluate


def _seq(n=300, v=6, seed=0):
    # a repetitive text with some noise, so higher orders have something to find
    base = np.tile(np.arange(v), n // v + 1)[:n]
    noise = np.random.default_rng(seed).integers(0, v, size=n)
    return np.where(np.random.default_rng(seed + 1).random(n) < 0.3, noise, base).astype(np.int64)


def _config(corpus_path, tmp_path, **extra):
    values = dict(corpus=str(corpus_path), model="kn", val_fraction=0.2, pred_every=0, out=str(tmp_path / "run"))
    values.update(extra)
    return Config(**values).validate()


def test_registered_and_built_from_config():
    assert MODELS["kn"] is KNModel
    model = build_model(Config(model="kn", order=3), 11)
    assert model.order == 3 and model.kn.vocab_size == 11
    assert count_parameters(model) == 0 and not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("order", [1, 2, 4])
def test_forward_gives_normalised_kn_distributions(order):
    v = 8  # 6 and 7 never occur in training
    model = KNModel(v, order)
    model.fit_counts(_seq())
    X = torch.tensor([[0, 1, 2, 3, 7], [5, 5, 4, 6, 0]])  # (2, 5)
    state = model.begin_state(2)
    logp, state = model(X, state)
    assert logp.shape == (2, 5, v)
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(2, 5), atol=1e-5, rtol=0)
    # position t is predicted from the last order-1 characters up to and including X[:, t]
    for b in range(2):
        for t in range(5):
            ctx = X[b, max(0, t + 2 - order):t + 1].tolist() if order > 1 else []
            np.testing.assert_allclose(logp[b, t].exp().numpy(), model.kn.prob_dist(ctx), rtol=1e-5)
    assert state.shape == (2, order - 1)
    assert state.tolist() == X[:, X.shape[1] - (order - 1):].tolist()


def test_state_carries_context_across_calls():
    model = KNModel(6, 4)
    model.fit_counts(_seq())
    X = torch.tensor([[0, 1, 2, 3, 4, 5, 0, 1, 3]])
    whole, _ = model(X, model.begin_state(1))
    state, parts = model.begin_state(1), []
    for piece in (X[:, :2], X[:, 2:3], X[:, 3:]):  # shorter and longer than the context
        out, state = model(piece, state)
        parts.append(out)
    torch.testing.assert_close(torch.cat(parts, 1), whole)


@pytest.mark.parametrize("chunk", [5, 256])
def test_evaluate_matches_kneser_ney_perplexity(chunk):
    train_idx, val_idx = _seq(400, seed=2), _seq(120, seed=3)
    model = KNModel(6, 5)
    model.fit_counts(train_idx)
    reference = KneserNey(5, 6).fit(train_idx).perplexity(val_idx)  # position 0 unscored, as in evaluate
    assert evaluate(model, val_idx, torch.device("cpu"), chunk=chunk) == pytest.approx(reference, rel=1e-5)


def test_trains_by_counting_and_writes_one_metrics_line(tmp_path, small_corpus):
    config = _config(small_corpus, tmp_path, order=3)
    corpus = load_corpus(config)
    lines = []
    result = train(config, corpus, tmp_path / "run", log=lines.append)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1 and len(lines) == 1 and "val ppl" in lines[0]
    rec = records[0]
    assert set(rec) >= {"epoch", "train_ppl", "val_ppl", "seconds", "chars_per_sec"} and rec["epoch"] == 1
    expected = KneserNey(3, len(corpus.vocab)).fit(corpus.train)
    assert rec["val_ppl"] == pytest.approx(expected.perplexity(corpus.val), rel=1e-5)
    assert rec["train_ppl"] == pytest.approx(expected.perplexity(corpus.train), rel=1e-5)
    assert rec["train_ppl"] < rec["val_ppl"]  # the counts remember the training text
    assert result.best_val_ppl == rec["val_ppl"] and result.best_epoch == 1
    payload = load_checkpoint(tmp_path / "run" / "best.pt")
    assert payload["optimizer"] is None and payload["epoch"] == 1


def test_checkpoint_round_trip_gives_same_log_probs(tmp_path, small_corpus):
    config = _config(small_corpus, tmp_path, order=4)
    corpus = load_corpus(config)
    train(config, corpus, tmp_path / "run")
    model, vocab, saved = model_from_checkpoint(load_checkpoint(tmp_path / "run" / "last.pt"))
    assert saved.order == 4 and vocab.idx_to_char == corpus.vocab.idx_to_char
    fresh = KNModel(len(corpus.vocab), 4)
    fresh.fit_counts(corpus.train)
    X = torch.as_tensor(corpus.val[:40]).view(2, 20)
    torch.testing.assert_close(model(X, model.begin_state(2))[0], fresh(X, fresh.begin_state(2))[0])
    # an untrained model differs, so the equality above is the counts' doing
    blank = KNModel(len(corpus.vocab), 4)
    assert not torch.allclose(blank(X, blank.begin_state(2))[0], fresh(X, fresh.begin_state(2))[0])


def test_loading_counts_of_another_order_fails_in_words():
    source = KNModel(6, 3)
    source.fit_counts(_seq())
    with pytest.raises(CharlmError, match="order 3"):
        KNModel(6, 5).load_state_dict(source.state_dict())


def test_generate_cli_from_kn_checkpoint(tmp_path, small_corpus):
    out = tmp_path / "run"
    runner = CliRunner()
    trained = runner.invoke(cli, ["train", "--model", "kn", "--order", "3", "--corpus", str(small_corpus),
                                  "--val-fraction", "0.2", "--pred-every", "0", "--out", str(out)])
    assert trained.exit_code == 0, trained.output
    assert "epoch    1" in trained.stdout and "epoch    2" not in trained.stdout
    gen = runner.invoke(cli, ["generate", "--checkpoint", str(out), "--prefix", "分开", "--length", "15",
                              "--greedy", "--max-copy", "0"])
    assert gen.exit_code == 0, gen.output
    # greedy decoding by hand with the counting model itself
    corpus = load_corpus(_config(small_corpus, tmp_path, order=3))
    kn = KneserNey(3, len(corpus.vocab)).fit(corpus.train)
    idx = corpus.vocab.encode("分开").tolist()
    for _ in range(15):
        idx.append(int(np.argmax(kn.prob_dist(idx))))
    assert gen.stdout.rstrip("\n") == corpus.vocab.decode(idx)


@pytest.mark.parametrize("order", ["0", "-2"])
def test_order_below_one_is_one_line_error(tmp_path, small_corpus, order):
    result = CliRunner().invoke(cli, ["train", "--model", "kn", "--order", order, "--corpus", str(small_corpus),
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --order must be 1 or more"), result.stderr
    assert not (tmp_path / "run" / "last.pt").exists()


def test_resuming_a_counted_run_returns_its_result(tmp_path, small_corpus):
    config = _config(small_corpus, tmp_path, order=3)
    corpus = load_corpus(config)
    first = train(config, corpus, tmp_path / "run")
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    again = train(config, corpus, tmp_path / "run", resume=load_checkpoint(tmp_path / "run" / "last.pt"))
    assert again.best_val_ppl == first.best_val_ppl and again.metrics == first.metrics
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before  # no second line
