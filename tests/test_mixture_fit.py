"""Mixture weights fitted on a tuning slice: never worse than either part there, bucketed, carried by checkpoints."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from charlm.run.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from charlm.config import Config
from charlm.data.corpus import load_corpus
from charlm.errors import CharlmError
from charlm.models import build_model, eval_mode
from charlm.models.mixture import MixtureModel, best_weight, fit_bucket_weights, fit_mixture

TINY = dict(model="mix", mix_neural="gru", hidden=16, embedding=8, order=3, num_steps=8, batch_size=4,
            val_fraction=0.2, pred_every=0)


def _corpus(small_corpus):
    config = Config(corpus=str(small_corpus), **TINY).validate()
    corpus = load_corpus(config)
    n = len(corpus.train) // 5
    return config, corpus.train[:-n], corpus.train[-n:], corpus


_TRAINED = {}  # (vocab size, steps) -> the network's state_dict: train once per test session


def _trained(config, vocab_size, train, steps=100):
    """A mixture whose network has learnt the training text a little (some Adam steps)."""
    torch.manual_seed(0)
    model = build_model(config, vocab_size)
    model.fit_counts(train)
    if (vocab_size, steps) in _TRAINED:
        model.neural.load_state_dict(_TRAINED[vocab_size, steps])
        return model
    opt = torch.optim.Adam(model.neural.parameters(), lr=0.02)
    data = torch.as_tensor(train)
    for step in range(steps):
        i = (step * 16) % (len(data) - 33)
        X, Y = data[i:i + 32].view(1, -1), data[i + 1:i + 33].view(1, -1)
        logits, _ = model.neural(X, model.neural.begin_state(1))
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), Y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    _TRAINED[vocab_size, steps] = {k: v.clone() for k, v in model.neural.state_dict().items()}
    return model


def test_best_weight_is_never_worse_than_either_end():
    rng = np.random.default_rng(0)
    for trial in range(20):
        lp_n = np.log(rng.uniform(1e-4, 1, 300)) - rng.uniform(0, 3) * (trial % 3 == 0)
        lp_k = np.log(rng.uniform(1e-4, 1, 300)) - rng.uniform(0, 3) * (trial % 3 == 1)
        lam = best_weight(lp_n, lp_k)
        assert 0 <= lam <= 1

        def total(w):
            with np.errstate(divide="ignore"):
                return np.logaddexp(lp_n + np.log(w), lp_k + np.log1p(-w)).sum()

        assert total(lam) >= max(total(0.0), total(1.0), total(0.5)) - 1e-9
    # one part always better: the fit picks it alone
    assert best_weight(np.full(50, -1.0), np.full(50, -3.0)) == 1.0
    assert best_weight(np.full(50, -3.0), np.full(50, -1.0)) == 0.0


def test_small_buckets_share_one_weight():
    rng = np.random.default_rng(1)
    lp_n, lp_k = np.log(rng.uniform(0.01, 1, 1000)), np.log(rng.uniform(0.01, 1, 1000))
    buckets = np.where(np.arange(1000) < 950, 0, np.where(np.arange(1000) < 980, 1, 2))
    w = fit_bucket_weights(lp_n, lp_k, buckets, 4, min_positions=100)
    assert w[1] == w[2] == w[3] == best_weight(lp_n[950:], lp_k[950:])
    assert w[0] == best_weight(lp_n[:950], lp_k[:950])


@pytest.mark.parametrize("how", ["global", "count"])
@pytest.mark.parametrize("spoil", ["network", "ngram"])
def test_fitted_mixture_never_worse_than_the_better_part_on_the_tuning_slice(small_corpus, how, spoil):
    config, train, tune, corpus = _corpus(small_corpus)
    V = len(corpus.vocab)
    model = _trained(config, V, train)
    if spoil == "network":  # confidently wrong: all mass on one character
        with torch.no_grad():
            model.neural.dense.bias.fill_(-20.0)
            model.neural.dense.bias[0] = 20.0
    else:  # counts of an unrelated random text
        model.kn.fit_counts(np.random.default_rng(2).integers(0, V, size=400))
    result = fit_mixture(model, tune, torch.device("cpu"), how)
    assert result["mix_ppl"] <= min(result["neural_ppl"], result["ngram_ppl"]) * (1 + 1e-9)
    assert result["mix_ppl"] <= result["before_ppl"] * (1 + 1e-9)  # better than the fixed λ = 0.5 it replaced
    worse = "neural_ppl" if spoil == "network" else "ngram_ppl"
    assert result["mix_ppl"] < result[worse] / 2  # the spoilt part was really bad, and the fit avoids it
    assert result["scheme"] == how and len(result["weights"]) == model.mix_weights.numel()
    # the figure it reports is what the model now gives on the slice, by the full forward path
    with eval_mode(model), torch.no_grad():
        data = torch.as_tensor(tune).view(1, -1)
        logp, _ = model(data[:, :-1], model.begin_state(1))
        ppl = math.exp(-logp.double().gather(-1, data[:, 1:].unsqueeze(-1)).mean().item())
    assert ppl == pytest.approx(result["mix_ppl"], rel=1e-4)


def test_bucketed_weights_round_trip_through_a_checkpoint_and_drive_generation(tmp_path, small_corpus):
    config, train, tune, corpus = _corpus(small_corpus)
    model = _trained(config, len(corpus.vocab), train, steps=40)
    model.set_weights(np.linspace(0.05, 0.95, 15), "count")
    save_checkpoint(tmp_path / "m.pt", {"config": config.to_dict(), "vocab": corpus.vocab.idx_to_char,
                                        "model": model.state_dict()})
    loaded, _, _ = model_from_checkpoint(load_checkpoint(tmp_path / "m.pt"))
    assert loaded.scheme == "count" and torch.equal(loaded.mix_weights, model.mix_weights)
    X = torch.as_tensor(corpus.val[:30]).view(2, 15)
    Y = torch.as_tensor(corpus.val[1:31]).view(2, 15)
    with eval_mode(model), eval_mode(loaded), torch.no_grad():
        out, _ = loaded(X, loaded.begin_state(2))
        torch.testing.assert_close(out, model(X, model.begin_state(2))[0])
        # each position mixes with its own bucket's weight
        lp_n = F.log_softmax(model.neural(X, model.neural.begin_state(2))[0], -1).double()
        lp_k, (level, total), _ = model.kn.forward_with_stats(X, model.kn.begin_state(2))
        w = model._position_weights((level, total)).unsqueeze(-1)
        expected = torch.log(w * lp_n.exp() + (1 - w) * lp_k.double().exp())
        torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-5)
        assert len(set(w.flatten().tolist())) > 1  # several buckets in use
        # the scoring fast path agrees with the full path
        fast, _ = loaded.target_log_probs(X, Y, loaded.begin_state(2))
        torch.testing.assert_close(fast, out.double().gather(-1, Y.unsqueeze(-1)).squeeze(-1), rtol=1e-4, atol=1e-5)


def test_mix_fit_none_keeps_the_fixed_weight_and_old_checkpoints_load(small_corpus):
    config, train, tune, corpus = _corpus(small_corpus)
    model = _trained(config, len(corpus.vocab), train, steps=5)
    assert fit_mixture(model, tune, how="none")["weights"] == [0.5]
    assert model.scheme == "global" and model.weight == 0.5
    assert Config().mix_fit == "none"
    old = {k: v for k, v in model.state_dict().items() if not k.startswith("mix_")}  # before fitted weights existed
    fresh = build_model(Config(**{**TINY, "mix_weight": 0.3}), len(corpus.vocab))
    fresh.load_state_dict(old)
    assert fresh.weight == pytest.approx(0.3)  # the checkpoint's config decides, as before
    with pytest.raises(CharlmError, match="mix-fit"):
        fit_mixture(model, tune, how="sometimes")


def test_fit_counts_passes_should_stop_on(small_corpus):
    config, train, tune, corpus = _corpus(small_corpus)
    model = build_model(config, len(corpus.vocab))
    assert isinstance(model, MixtureModel)
    with pytest.raises(CharlmError):
        model.fit_counts(train, should_stop=lambda: True)


def test_weight_attribute_sets_one_global_weight(small_corpus):
    config, train, tune, corpus = _corpus(small_corpus)
    model = build_model(config, len(corpus.vocab))
    model.set_weights([0.2, 0.9], "count")
    model.weight = 1.0  # what benchmarks/model_table.py does to read the network alone
    assert model.scheme == "global" and model.mix_weights.tolist() == [1.0]
    with pytest.raises(CharlmError):
        model.set_weights([1.5], "global")
