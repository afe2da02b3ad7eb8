"""The neural + Kneser-Ney mixture: its distribution, training, checkpoints and CLI."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from charlm.run.checkpoint import load_checkpoint, model_from_checkpoint
from charlm.cli.app import cli
from charlm.config import Config, apply_preset
from charlm.data.corpus import load_corpus
from charlm.errors import CharlmError
from charlm.models import MODELS, build_model
from charlm.models.kn import KNModel
from charlm.models.mixture import MixtureModel
from charlm.models import RNNModel
from charlm.models.kneser_ney import KneserNey
from charlm.train.loop import train
from charlm.train.validate import perplexity as evaluate

TINY = dict(hidden=16, num_steps=8, batch_size=4, val_fraction=0.2, pred_every=0)


def _hand_set_mixture(weight, v=5):
    """A mixture whose network ignores its input and always predicts softmax(bias)."""
    neural = RNNModel(v, 3)
    with torch.no_grad():
        neural.dense.weight.zero_()
        neural.dense.bias.copy_(torch.tensor([2.0, 0.0, -1.0, 1.0, 0.5]))
    kn = KNModel(v, 3)
    kn.fit_counts([0, 1, 2, 0, 1, 3, 0, 1, 2, 4, 4, 0])
    return MixtureModel(neural, kn, weight).eval()


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_distribution_is_the_weighted_average(weight):
    model = _hand_set_mixture(weight)
    X = torch.tensor([[0, 1, 2, 4]])  # (1, 4)
    with torch.no_grad():
        logp, _ = model(X, model.begin_state(1))
    p_neural = torch.softmax(torch.tensor([2.0, 0.0, -1.0, 1.0, 0.5]), 0).numpy()
    for t, ctx in enumerate(([0], [0, 1], [1, 2], [2, 4])):
        expected = weight * p_neural + (1 - weight) * model.kn.kn.prob_dist(ctx)
        np.testing.assert_allclose(logp[0, t].exp().numpy(), expected, rtol=1e-5)


def test_training_mode_gives_the_network_alone():
    model = _hand_set_mixture(0.3).train()
    X = torch.tensor([[0, 1, 2]])
    logits, (_, context) = model(X, model.begin_state(1))
    torch.testing.assert_close(logits, model.neural(X, model.neural.begin_state(1))[0])
    assert context.tolist() == [[1, 2]]  # the n-gram context still advances


def test_built_from_config_and_bad_partners_refused():
    assert MODELS["mix"] is MixtureModel
    model = build_model(Config(model="mix", mix_neural="rnn-scratch", order=3, mix_weight=0.25, hidden=8), 7)
    assert type(model.neural) is MODELS["rnn-scratch"] and model.kn.order == 3 and model.weight == 0.25
    for partner in ("kn", "mix", "nope"):
        with pytest.raises(CharlmError, match="--mix-neural"):
            build_model(Config(model="mix", mix_neural=partner), 7)


def test_trains_network_and_counts(tmp_path, small_corpus):
    config = Config(corpus=str(small_corpus), model="mix", epochs=2, order=3, **TINY).validate()
    corpus = load_corpus(config)
    torch.manual_seed(config.seed)
    initial = build_model(config, len(corpus.vocab)).neural.state_dict()
    train(config, corpus, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    model, _, _ = model_from_checkpoint(load_checkpoint(tmp_path / "run" / "last.pt"))
    assert any(not torch.equal(initial[k], v) for k, v in model.neural.state_dict().items())  # gradient steps taken
    kn = KneserNey(3, len(corpus.vocab)).fit(corpus.train)
    assert model.kn.kn.state_dict()["discounts"] == kn.state_dict()["discounts"]  # counted on the training text
    assert records[-1]["val_ppl"] == pytest.approx(evaluate(model, corpus.val, torch.device("cpu")), rel=1e-5)


def test_checkpoint_round_trip_and_generate(tmp_path, small_corpus):
    out = tmp_path / "run"
    runner = CliRunner()
    args = ["train", "--model", "mix", "--mix-weight", "0.4", "--order", "3", "--corpus", str(small_corpus),
            "--hidden", "16", "--num-steps", "8", "--batch-size", "4", "--epochs", "1", "--val-fraction", "0.2",
            "--pred-every", "0", "--out", str(out)]
    trained = runner.invoke(cli, args)
    assert trained.exit_code == 0, trained.output
    payload = load_checkpoint(out / "best.pt")
    model, vocab, config = model_from_checkpoint(payload)
    assert config.mix_weight == 0.4 and model.weight == 0.4
    X = torch.tensor([vocab.encode("分开 不分开 我想").tolist()])
    again, _, _ = model_from_checkpoint(load_checkpoint(out / "best.pt"))
    torch.testing.assert_close(model(X, model.begin_state(1))[0], again(X, again.begin_state(1))[0])
    gen = runner.invoke(cli, ["generate", "--checkpoint", str(out), "--prefix", "我想", "--length", "10",
                              "--greedy", "--max-copy", "0"])  # deterministic: sampled text may end in a newline
    assert gen.exit_code == 0, gen.output
    text = gen.stdout.rstrip("\n")
    assert text.startswith("我想") and len(text) == 12


def test_resume_keeps_the_counts(tmp_path, small_corpus):
    config = Config(corpus=str(small_corpus), model="mix", epochs=1, order=3, **TINY).validate()
    corpus = load_corpus(config)
    first = train(config, corpus, tmp_path / "run")
    payload = load_checkpoint(tmp_path / "run" / "last.pt")
    more = Config(**{**config.to_dict(), "epochs": 2})
    second = train(more, corpus, tmp_path / "run", resume=payload)
    assert [r["epoch"] for r in second.metrics] == [1, 2] and first.metrics[0] == second.metrics[0]
    model, _, _ = model_from_checkpoint(load_checkpoint(tmp_path / "run" / "last.pt"))
    assert model.kn.kn.perplexity(corpus.val) == pytest.approx(
        KneserNey(3, len(corpus.vocab)).fit(corpus.train).perplexity(corpus.val))


def test_mix_weight_outside_unit_interval_is_one_line_error(tmp_path, small_corpus):
    result = CliRunner().invoke(cli, ["train", "--model", "mix", "--mix-weight", "1.5", "--corpus", str(small_corpus),
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --mix-weight"), result.stderr


def test_best_preset_builds_a_gru_kn_mixture():
    config = apply_preset(Config(), "best", explicit={"epochs"}).validate()
    assert config.preset == "best" and config.model == "mix" and config.epochs == Config().epochs
    model = build_model(config, 40)
    assert isinstance(model.neural, MODELS[config.mix_neural]) and model.kn.order == config.order
    assert model.neural.dense.weight is model.neural.embedding.weight  # tied, as the preset asks


def test_state_dict_round_trip_through_weights_only_file(tmp_path, small_corpus):
    from charlm.run.checkpoint import save_checkpoint

    config = Config(corpus=str(small_corpus), model="mix", mix_neural="gru", embedding=8, order=3, **TINY).validate()
    corpus = load_corpus(config)
    torch.manual_seed(1)
    model = build_model(config, len(corpus.vocab))
    model.fit_counts(corpus.train)
    save_checkpoint(tmp_path / "m.pt", {"config": config.to_dict(), "vocab": corpus.vocab.idx_to_char,
                                        "model": model.state_dict()})
    torch.manual_seed(2)  # a different initialisation, overwritten by the load
    loaded, _, _ = model_from_checkpoint(load_checkpoint(tmp_path / "m.pt"))
    X = torch.as_tensor(corpus.val[:24]).view(2, 12)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(X, loaded.begin_state(2))[0], model(X, model.begin_state(2))[0])
        fresh = build_model(config, len(corpus.vocab)).eval()
        assert not torch.allclose(fresh(X, fresh.begin_state(2))[0], model(X, model.begin_state(2))[0])
