"""Modified Kneser-Ney (--kn-discounts 3): three discounts a level, proper distributions, chosen on the tuning slice."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from charlm.cli.app import cli
from charlm.config import Config
from charlm.models import build_model
from charlm.models.kn_counts import _estimate_modified
from charlm.models.kn_tuning import choose_order
from charlm.models.kneser_ney import KneserNey

V = 11


def _text(n=4000, seed=0):
    """A skewed order-2 chain: counts of 1, 2 and 3+ at every level."""
    rng = np.random.default_rng(seed)
    out = [0, 1]
    table = rng.dirichlet(np.full(V, 0.3), size=(V, V))
    for _ in range(n):
        out.append(int(rng.choice(V, p=table[out[-2], out[-1]])))
    return np.array(out)


@pytest.mark.parametrize("order", [1, 2, 3, 5])
@pytest.mark.parametrize("fitted", [False, True], ids=["closed-form", "fitted"])
def test_modified_probabilities_sum_to_one_at_every_order(order, fitted):
    text = _text()
    train, tune = text[:3500], text[3500:]
    if fitted:
        choice = choose_order(train, tune, V, order, modified=True)
        kn = KneserNey(order, V, choice.discounts if choice.order == order else None, modified=True).fit(train)
    else:
        kn = KneserNey(order, V, modified=True).fit(train)
    assert all(isinstance(d, list) and len(d) == 3 for d in kn.discounts)
    rng = np.random.default_rng(1)
    seen = np.stack([text[i:i + order + 2] for i in rng.integers(0, 3000, 100)])  # contexts from the text
    unseen = rng.integers(0, V, (100, order + 2))  # and random ones, mostly never seen at the top
    for L in range(0, order + 2):  # every context length, down to the empty one
        for contexts in (seen[:, :L], unseen[:, :L]):
            p = np.exp(kn.log_probs_batch(contexts))
            np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=0, atol=1e-12)
            assert (p > 0).all()


def test_closed_form_triples_follow_chen_and_goodman():
    counts = np.array([1] * 50 + [2] * 20 + [3] * 10 + [4] * 5 + [9] * 3)
    y = 50 / (50 + 2 * 20)
    assert _estimate_modified(counts) == pytest.approx([1 - 2 * y * 20 / 50, 2 - 3 * y * 10 / 20, 3 - 4 * y * 5 / 10])


def test_the_kn_model_from_config_uses_three_discounts_and_its_rows_sum_to_one():
    text = _text(1500)
    model = build_model(Config(model="kn", order=3, kn_discount_kinds=3), V)
    model.fit_counts(text)
    assert all(len(d) == 3 for d in model.kn.discounts)
    model.fit_counts(text, [0.5, 1.0, 1.5] * 3)  # --kn-discount, flat: D1, D2, D3+ per level
    assert model.kn.discounts == [[0.5, 1.0, 1.5]] * 3
    logp, _ = model(torch.as_tensor(text[None, :200]), model.begin_state(1))
    torch.testing.assert_close(logp.double().exp().sum(-1), torch.ones(1, 200, dtype=torch.float64), atol=1e-6, rtol=0)


@pytest.mark.parametrize("args, message", [
    (["--kn-discounts", "2"], "--kn-discounts must be 1"),
    (["--kn-discounts", "3", "--order", "2", "--kn-discount", "0.5", "--kn-discount", "0.6"], "needs 6 (three per level"),
    (["--kn-discounts", "3", "--order", "1", "--kn-discount", "0.5", "--kn-discount", "2.5", "--kn-discount", "1"],
     "D1, D2, D3+ per level"),
])
def test_bad_discount_options_give_one_line(small_corpus, tmp_path, args, message):
    result = CliRunner().invoke(cli, ["train", "--corpus", str(small_corpus), "--out", str(tmp_path / "run"),
                                      "--model", "kn", "--preset", "none", *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


def test_auto_fits_modified_discounts_when_asked(small_corpus, tmp_path):
    result = CliRunner().invoke(cli, ["train", "--corpus", str(small_corpus), "--out", str(tmp_path / "run"),
                                      "--model", "kn", "--kn-discounts", "3", "--tune-fraction", "0.2"])
    assert result.exit_code == 0, result.output
    from charlm.run.checkpoint import load_checkpoint
    config = load_checkpoint(tmp_path / "run" / "best.pt")["config"]
    assert config["kn_discount_kinds"] == 3 and len(config["kn_discounts"]) == 3 * config["order"]
    assert "KN-" in result.output and "modified" in result.output
