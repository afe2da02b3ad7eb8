"""Early stopping judges a mixture's network part by its own tuning perplexity (charlm/train/stopping.py)."""

import json

import pytest

import charlm.train.loop as loop
from charlm.config import Config
from charlm.data.corpus import carve_tune, load_corpus
from charlm.train.stopping import Progress


def test_progress_continues_while_the_network_improves_and_the_mixture_does_not():
    progress = Progress(patience=2)
    for epoch in range(10):  # the mixture flat, its network part still learning
        progress.update(epoch == 0, {"tune_ppl": 9.2, "tune_neural_ppl": 55.0 / (1 + epoch)})
        assert not progress.converged()
    for _ in range(2):  # now the network is flat too (a drift below MIN_GAIN is not progress)
        progress.update(False, {"tune_ppl": 9.2, "tune_neural_ppl": 5.5 * (1 - 1e-5)})
    assert progress.converged()


def test_a_model_without_parts_stops_as_before():
    progress = Progress(patience=2)
    progress.update(True, {"tune_ppl": 9.0})
    progress.update(False, {"tune_ppl": 9.1})
    assert not progress.converged()
    progress.update(False, {"tune_ppl": 9.1})
    assert progress.converged()


def _scripted_tune(network):
    """A tune_perplexity that reports a flat mixture and the network figures `network(epoch)`."""
    calls = []

    def tune_perplexity(config, model, tune, device, parts=None):
        calls.append(1)
        if parts is not None:
            parts.update(tune_neural_ppl=network(len(calls)), tune_ngram_ppl=9.3)
        return 9.2 - (0.1 if len(calls) == 1 else 0.0)
    return tune_perplexity


@pytest.mark.parametrize("network, epochs, reason", [
    (lambda e: 50.0 / e, 6, "epochs"),  # the network keeps improving: all 6 epochs, though the mixture is flat
    (lambda e: 20.0, 3, "converged"),  # nothing improves after epoch 1: patience 2 ends it after epoch 3
])
def test_a_mixture_trains_on_while_its_network_part_improves(tmp_path, small_corpus, monkeypatch, network, epochs,
                                                             reason):
    monkeypatch.setattr(loop, "tune_perplexity", _scripted_tune(network))
    config = Config(corpus=str(small_corpus), model="mix", mix_neural="gru", hidden=8, batch_size=4, num_steps=6,
                    epochs=6, patience=2, tune_fraction=0.2, pred_every=0, device="cpu", lr=0.01).validate()
    corpus = carve_tune(load_corpus(config), config.tune_fraction)
    lines = []
    result = loop.train(config, corpus, tmp_path / "run", log=lines.append)
    assert len(result.metrics) == epochs and result.stop_reason == reason
    assert any(line.startswith("training ended: " + ("converged" if reason == "converged" else "all 6"))
               for line in lines), lines
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stop_reason"] == reason
