"""Decoding strategies: exact properties on a tiny trained model and on known distributions."""


import pytest
import torch

from charlm.run.checkpoint import load_checkpoint, model_from_checkpoint
from charlm.config import Config
from charlm.data.corpus import load_corpus
from charlm.generate.decode import beam_search, generate, predict, score
from charlm.generate.sampling import (Decoding, Sampler, apply_repetition_penalty, parse_decoding, parse_decodings,
                                      top_k_filter, top_p_filter)
from charlm.errors import CharlmError
from charlm.models import build_model
from charlm.train.loop import train
from charlm.data.vocab import Vocab

TEXT = ("分开 不分开 我想就这样牵着你的手不放开\n爱可不可以简简单单没有伤害\n"
        "你靠着我的肩膀 你在我胸口睡着\n像这样的生活 我爱你 你爱我\n") * 6
PREFIXES = ["分开", "不分开", "我"]


def _train(tmp_path, model="rnn", **extra):
    path = tmp_path / "tiny.txt"
    path.write_text(TEXT, encoding="utf-8")
    config = Config(corpus=str(path), model=model, hidden=16, epochs=3, num_steps=8, batch_size=4,
                    val_fraction=0.2, pred_every=0, device="cpu", **extra)
    train(config, load_corpus(config), tmp_path / "run")
    return model_from_checkpoint(load_checkpoint(tmp_path / "run" / "last.pt"))[:2]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(model, vocab) of an nn.RNN with 16 hidden units, trained 3 epochs on a few hundred characters."""
    return _train(tmp_path_factory.mktemp("dec"))


def texts(samples):
    return [s.text for s in samples]


def test_greedy_generate_matches_textbook_predict_batched_or_not(trained):
    model, vocab = trained
    batched = generate(model, vocab, PREFIXES, 20, num_samples=2)
    expected = [predict(p, 20, model, vocab)[len(p):] for p in PREFIXES for _ in range(2)]
    assert texts(batched) == expected
    assert [s.prefix for s in batched] == [p for p in PREFIXES for _ in range(2)]
    assert texts(generate(model, vocab, "分开", 20)) == expected[:1]


def test_top_k_1_equals_greedy(trained):
    model, vocab = trained
    g = torch.Generator().manual_seed(3)
    sampled = generate(model, vocab, PREFIXES, 25, Decoding(sample=True, top_k=1), 3, g)
    assert texts(sampled) == texts(generate(model, vocab, PREFIXES, 25, num_samples=3))


def test_small_temperature_equals_greedy(trained):
    model, vocab = trained
    g = torch.Generator().manual_seed(3)
    sampled = generate(model, vocab, PREFIXES, 25, Decoding(sample=True, temperature=1e-4), 3, g)
    assert texts(sampled) == texts(generate(model, vocab, PREFIXES, 25, num_samples=3))


def test_one_beam_equals_greedy(trained):
    model, vocab = trained
    greedy_samples = generate(model, vocab, PREFIXES, 25)
    beams = beam_search(model, vocab, PREFIXES, 25, num_beams=1)  # the beam loop itself, with K = 1
    assert texts(beams) == texts(greedy_samples)
    assert texts(generate(model, vocab, PREFIXES, 25, Decoding(num_beams=1))) == texts(greedy_samples)
    assert [b.logprob for b in beams] == pytest.approx([s.logprob for s in greedy_samples], abs=1e-4)


def test_four_beams_score_at_least_greedy_and_report_true_logprobs(trained):
    model, vocab = trained
    for length in (5, 30):
        greedy_samples = generate(model, vocab, PREFIXES, length)
        beams = beam_search(model, vocab, PREFIXES, length, num_beams=4, num_return=4)
        assert len(beams) == 4 * len(PREFIXES)
        for i, g in enumerate(greedy_samples):
            mine = beams[4 * i:4 * i + 4]
            assert mine[0].logprob >= g.logprob - 1e-4
            assert [b.logprob for b in mine] == sorted((b.logprob for b in mine), reverse=True)
            for b in mine:  # the reported log-probabilities are the model's, character by character
                assert b.logprobs == pytest.approx(score(model, vocab, b.prefix, b.text), abs=1e-4)


def test_wide_beam_finds_the_most_probable_two_characters(trained):
    """With as many beams as characters, two steps of beam search are exhaustive: compare with brute force."""
    model, vocab = trained
    V = len(vocab)
    best = beam_search(model, vocab, "分开", 2, num_beams=V)[0]
    with torch.no_grad():
        prefix = vocab.encode("分开").tolist()
        X = torch.tensor([prefix + [c] for c in range(V)])  # (V, 3): every first character
        lp = model(X, model.begin_state(V))[0].log_softmax(-1)  # (V, 3, V)
        totals = lp[:, -2].diagonal()[:, None] + lp[:, -1]  # (V, V): first char c, second char d
    c, d = divmod(int(totals.argmax()), V)
    assert best.text == vocab.decode([c, d])
    assert best.logprob == pytest.approx(float(totals.max()), abs=1e-4)


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    logits = probs.log()
    kept = lambda p: set(torch.isfinite(top_p_filter(logits, p))[0].nonzero().view(-1).tolist())
    assert kept(0.4) == {1}  # 0.5 alone reaches 0.4
    assert kept(0.75) == {1, 3}  # 0.5 + 0.3
    assert kept(0.81) == {1, 3, 2}  # 0.5 + 0.3 + 0.15
    assert kept(0.97) == {0, 1, 2, 3}
    assert kept(1.0) == {0, 1, 2, 3}
    # exactly at the boundary (powers of two are exact in float64): 0.5 + 0.25 reaches 0.75, so nothing more
    dyadic = torch.tensor([[0.25, 0.5, 0.125, 0.125]], dtype=torch.float64).log()
    assert torch.isfinite(top_p_filter(dyadic, 0.75))[0].tolist() == [True, True, False, False]
    assert torch.isfinite(top_p_filter(dyadic, 0.5))[0].tolist() == [False, True, False, False]
    # the kept logits are unchanged, so their renormalised probabilities keep their ratios
    assert top_p_filter(logits, 0.75)[0, 1] == logits[0, 1]


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[0.1, 2.0, -1.0, 1.5, 0.3]])
    kept = torch.isfinite(top_k_filter(logits, 2))[0].nonzero().view(-1).tolist()
    assert kept == [1, 3]
    assert torch.equal(top_k_filter(logits, 0), logits)


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits():
    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0]])
    seen = torch.tensor([[True, True, False, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -2.0, 0.5, -3.0]]


def test_sampling_with_a_seed_is_reproducible(trained):
    model, vocab = trained
    setting = Decoding(sample=True, temperature=1.5, top_p=0.95)
    run = lambda seed: texts(generate(model, vocab, PREFIXES, 30, setting, 4, torch.Generator().manual_seed(seed)))
    first = run(7)
    assert run(7) == first
    assert run(8) != first
    assert len(set(first)) > 1  # the streams of one batch are different samples


# Upper 0.1% critical values of the chi-square distribution (NIST/SEMATECH e-Handbook of Statistical
# Methods, section 1.3.6.7.4, "Critical Values of the Chi-Square Distribution"): P(X > value) = 0.001.
CHI2_CRITICAL_0_001 = {2: 13.816, 4: 18.467}


def _chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


@pytest.mark.parametrize("sampler, expected", [
    (Sampler(), torch.tensor([0.4, 0.25, 0.15, 0.12, 0.08])),
    (Sampler(temperature=2.0), torch.tensor([0.4, 0.25, 0.15, 0.12, 0.08]).sqrt() / torch.tensor([0.4, 0.25, 0.15, 0.12, 0.08]).sqrt().sum()),
    (Sampler(top_k=3), torch.tensor([0.4, 0.25, 0.15]) / 0.8),
])
def test_sampled_frequencies_pass_chi_square(sampler, expected):
    probs = torch.tensor([0.4, 0.25, 0.15, 0.12, 0.08])
    n = 20000
    draws = sampler(probs.log().expand(n, 5), torch.Generator().manual_seed(1234))  # (n,)
    counts = torch.bincount(draws, minlength=5).double()
    k = len(expected)
    assert counts[k:].sum() == 0  # nothing outside the kept set
    dof = k - 1
    assert _chi_square(counts[:k], expected.double()) < CHI2_CRITICAL_0_001[dof]
    # and the test has power: the same counts against a uniform distribution fail it
    assert _chi_square(counts[:k], torch.full((k,), 1.0 / k, dtype=torch.double)) > CHI2_CRITICAL_0_001[dof]


def test_parse_decoding_reads_labels_back():
    for spec in ("greedy", "temperature=0.8", "top_k=5", "top_p=0.9", "num_beams=4",
                 "temperature=0.7+top_k=40", "greedy+repetition_penalty=1.2"):
        d = parse_decoding(spec)
        assert parse_decoding(d.label()) == d
    assert parse_decoding("top_k=5") == Decoding(sample=True, top_k=5)
    assert parse_decoding("top-p=0.9").top_p == 0.9
    # labels are spelled as generate's flags, whichever spelling the spec used
    assert [d.label() for d in parse_decodings("greedy,temperature=0.8,top_k=5,top_p=0.9,num_beams=4")] == \
        ["greedy", "temperature=0.8", "top-k=5", "top-p=0.9", "num-beams=4"]
    assert parse_decoding("top-k=40+temperature=0.7+repetition-penalty=1.2") == \
        parse_decoding("top_k=40+temperature=0.7+repetition_penalty=1.2")


@pytest.mark.parametrize("spec, fragment", [
    ("temprature=0.8", "cannot read"), ("top_k=five", "int"), ("temperature=0", "--temperature"),
    ("top_p=1.5", "--top-p"), ("num_beams=4+top_k=5", "beam search does not sample"),
    ("greedy+temperature=0.5", "choose one"), ("repetition_penalty=-1", "--repetition-penalty"),
])
def test_bad_decoding_specs_are_charlm_errors(spec, fragment):
    with pytest.raises(CharlmError, match=fragment):
        parse_decoding(spec)


def test_unknown_prefix_character_is_named(trained):
    model, vocab = trained
    with pytest.raises(CharlmError, match="龘"):
        generate(model, vocab, ["分开", "分开龘"], 5)


def _random_model(name, vocab_size, **extra):
    torch.manual_seed(0)
    return build_model(Config(model=name, hidden=8, **extra), vocab_size).eval()


@pytest.mark.parametrize("name", ["rnn-scratch", "lstm-scratch", "gru", "lstm"])
def test_batched_generation_follows_each_models_state_layout(name):
    """Tensor, tuple and (layers, batch, hidden) states are batched and beam-reordered alike."""
    vocab = Vocab("abcdefgh")
    model = _random_model(name, len(vocab))
    prefixes = ["abc", "h", "gg"]
    batched = generate(model, vocab, prefixes, 12, num_samples=2)
    assert texts(batched) == [predict(p, 12, model, vocab)[len(p):] for p in prefixes for _ in range(2)]
    for b in beam_search(model, vocab, prefixes, 6, num_beams=3):
        assert b.logprobs == pytest.approx(score(model, vocab, b.prefix, b.text), abs=1e-5)


def test_counting_model_with_prefixes_of_different_context_lengths(tmp_path):
    """The n-gram model's state is the last few characters, so prefixes shorter than its order
    give states of different widths; each width is generated as its own batch."""
    model, vocab = _train(tmp_path, model="kn", order=4)
    prefixes = ["分", "不分开", "分开"]
    together = generate(model, vocab, prefixes, 15, Decoding(sample=True, top_k=1), 2, torch.Generator().manual_seed(0))
    assert texts(together) == [predict(p, 15, model, vocab)[len(p):] for p in prefixes for _ in range(2)]
    beams = beam_search(model, vocab, prefixes, 4, num_beams=2)
    assert [b.prefix for b in beams] == prefixes


def test_bad_arguments():
    vocab = Vocab("abc")
    model = _random_model("rnn-scratch", 3)
    with pytest.raises(CharlmError, match="--num-beams 4 exceeds"):
        beam_search(model, vocab, "a", 3, num_beams=4)
    with pytest.raises(CharlmError, match="at most --num-beams"):
        generate(model, vocab, "a", 3, Decoding(num_beams=2), num_samples=3)
    with pytest.raises(CharlmError, match="empty"):
        generate(model, vocab, "", 3)
    assert texts(generate(model, vocab, ["a", "b"], 0)) == ["", ""]
