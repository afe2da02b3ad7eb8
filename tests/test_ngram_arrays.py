"""The array Kneser-Ney (charlm.models.kneser_ney) against the first, dict-based implementation (charlm.reference.ngram_dict)."""

import io

import numpy as np
import pytest
import torch

from charlm.errors import CharlmError
from charlm.models.kn import KNModel
from charlm.models.kn_counts import CountingInterrupted, count_ngrams
from charlm.models.kn_tuning import choose_order
from charlm.models.kneser_ney import KneserNey
from charlm.models.limits import MAX_ORDER
from charlm.reference.ngram_dict import KneserNey as DictKneserNey

TEXT = ("分开 不分开 我不能再想 我不 我不 我不能 爱情来的太快就像龙卷风 离不开暴风圈来不及逃\n"
        "the quick brown fox jumps over the lazy dog; the dog sleeps, the fox runs.\n"
        "分开以后 我们的爱 给的爱 the fox and the dog 不分开\n")
CHARS = sorted(set(TEXT))
SEQ = np.array([CHARS.index(ch) for ch in TEXT], dtype=np.int64)
V = len(CHARS) + 2  # two characters never seen in training


def _contexts(order):
    """Every context of the training text of each length up to order-1, plus unseen and mixed ones."""
    seen = {tuple(SEQ[i:i + n].tolist()) for n in range(order) for i in range(len(SEQ) - n + 1)}
    unseen = [(V - 1,), (V - 2, V - 1), tuple(SEQ[:3][::-1].tolist()), (V - 1,) + tuple(SEQ[5:9].tolist()),
              tuple(SEQ[5:9].tolist()) + (V - 2,), tuple(SEQ[40:48].tolist())]
    return sorted(seen) + unseen


@pytest.mark.parametrize("order", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize("discount", [None, 0.7])
def test_same_probabilities_as_the_dict_implementation(order, discount):
    arrays = KneserNey(order, V, discount).fit(SEQ)
    oracle = DictKneserNey(order, V, discount).fit(SEQ)
    assert arrays.discounts == pytest.approx(oracle.discounts, rel=1e-15)
    contexts = _contexts(order)
    for ctx in contexts:
        np.testing.assert_allclose(arrays.prob_dist(ctx), oracle.prob_dist(ctx), rtol=1e-12, atol=0)
    # batched forms: whole distributions and the target-only fast path
    width = min(order - 1, 3)
    tails = [c[len(c) - width:] for c in contexts if len(c) >= width]
    batch = np.array(tails, dtype=np.int64).reshape(len(tails), width)
    lb = arrays.log_probs_batch(batch)
    np.testing.assert_allclose(lb, oracle.log_probs_batch(batch), rtol=1e-12)
    targets = np.arange(len(batch)) % V
    np.testing.assert_allclose(arrays.log_prob_targets(batch, targets), lb[np.arange(len(batch)), targets], rtol=1e-12)
    held_out = np.concatenate([SEQ[::-1][:50], [V - 1, V - 2], SEQ[10:60]])
    np.testing.assert_allclose(arrays.log_prob_sequence(held_out), oracle.log_prob_sequence(held_out), rtol=1e-12)


def test_counts_match_a_direct_count():
    keys, raw, cont = count_ngrams(SEQ, V, 3, raw_levels=[1, 2, 3], cont_levels=[1, 2])
    grams = [tuple(SEQ[i:i + 3].tolist()) for i in range(len(SEQ) - 2)]
    assert sum(raw[3]) == len(grams) and len(keys[2]) == len(set(grams))
    # continuation count of a bigram = distinct characters seen before it
    bigram = tuple(SEQ[1:3].tolist())
    before = {SEQ[i - 1] for i in range(1, len(SEQ) - 1) if tuple(SEQ[i:i + 2].tolist()) == bigram}
    kn = KneserNey(3, V).fit(SEQ)
    ids = kn._gram_ids(np.array([bigram]), 2)
    assert cont[2][ids[2][0, 0]] == len(before)


def test_old_dict_format_checkpoint_loads_with_the_same_probabilities():
    for order in (1, 3, 5):
        oracle = DictKneserNey(order, V).fit(SEQ)
        buf = io.BytesIO()
        torch.save(oracle.state_dict(), buf)
        buf.seek(0)
        converted = KneserNey.from_state_dict(torch.load(buf, weights_only=True))
        for ctx in _contexts(order)[::7]:
            np.testing.assert_allclose(converted.prob_dist(ctx), oracle.prob_dist(ctx), rtol=1e-12)


def test_new_state_dict_round_trip_and_damage_refused():
    m = KneserNey(4, V).fit(SEQ)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    again = KneserNey.from_state_dict(state)
    np.testing.assert_array_equal(again.log_prob_sequence(SEQ), m.log_prob_sequence(SEQ))
    state["keys"] = state["keys"][:2]
    with pytest.raises(ValueError):
        KneserNey.from_state_dict(state)


def test_should_stop_interrupts_counting_and_keeps_old_counts():
    m = KneserNey(4, V).fit(SEQ[:40])
    before = m.log_prob_sequence(SEQ)
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(CountingInterrupted):
        m.fit(SEQ, should_stop=stop)
    assert isinstance(CountingInterrupted("x"), CharlmError)
    np.testing.assert_array_equal(m.log_prob_sequence(SEQ), before)
    model = KNModel(V, 3)
    with pytest.raises(CharlmError):
        model.fit_counts(SEQ, should_stop=lambda: True)


def test_absurd_orders_refused_without_allocating():
    with pytest.raises(ValueError, match="at most"):
        KneserNey(10 ** 9, V)
    with pytest.raises(CharlmError, match="at most"):
        KNModel(V, 10 ** 9)
    with pytest.raises(CharlmError, match="longer than the training text"):
        KNModel(V, MAX_ORDER).fit_counts(SEQ[:5])


def test_config_refuses_the_same_orders_as_the_models():
    """config.py cannot import the models (it is the bottom room), so it repeats MAX_ORDER as a literal."""
    from charlm.config import Config

    Config(model="kn", order=MAX_ORDER).validate()
    with pytest.raises(CharlmError, match=f"at most {MAX_ORDER}"):
        Config(model="kn", order=MAX_ORDER + 1).validate()


def test_choose_order_scores_every_order_and_fitted_discounts_never_hurt():
    rng = np.random.default_rng(0)
    # an order-2 Markov chain: each character depends only on the previous one
    table = rng.dirichlet(np.full(8, 0.1), size=8)
    seq = [0]
    for _ in range(3000):
        seq.append(int(rng.choice(8, p=table[seq[-1]])))
    seq = np.array(seq)
    train, tune = seq[:2500], seq[2500:]
    choice = choose_order(train, tune, 8, max_order=5, fit_discount=True)
    assert set(choice.tune_ppl) == {1, 2, 3, 4, 5}
    assert choice.order == min(choice.tune_ppl, key=choice.tune_ppl.get)
    assert choice.order >= 2 and choice.tune_ppl[2] < choice.tune_ppl[1]
    for k in choice.tune_ppl:
        assert choice.tune_ppl[k] <= choice.closed_form_ppl[k] * (1 + 1e-12)
        # the closed-form figure is the plain model's perplexity on the tuning slice
        assert choice.closed_form_ppl[k] == pytest.approx(KneserNey(k, 8).fit(train).perplexity(tune), rel=1e-10)
    fitted = KneserNey(choice.order, 8, choice.discounts).fit(train)
    assert fitted.perplexity(tune) == pytest.approx(choice.tune_ppl[choice.order], rel=1e-10)
    plain = choose_order(train, tune, 8, max_order=3, fit_discount=False)
    assert plain.tune_ppl == plain.closed_form_ppl


def test_kn_model_fast_path_equals_forward_and_reports_context_stats():
    model = KNModel(V, 4)
    model.fit_counts(SEQ)
    X = torch.as_tensor(np.stack([SEQ[:12], SEQ[30:42]]))
    Y = torch.as_tensor(np.stack([SEQ[1:13], np.r_[SEQ[31:42], V - 1]]))  # an unseen character too
    state = model.begin_state(2)
    full, after = model(X[:, :5], state)
    full2, _ = model(X[:, 5:], after)
    logp = torch.cat([full, full2], 1).double()
    fast, _ = model.target_log_probs(X[:, :5], Y[:, :5], state)
    fast2, _ = model.target_log_probs(X[:, 5:], Y[:, 5:], after)
    torch.testing.assert_close(torch.cat([fast, fast2], 1), logp.gather(-1, Y.unsqueeze(-1)).squeeze(-1),
                               rtol=1e-5, atol=1e-6)
    level, total = model.context_stats(X, state)
    assert level[:, 0].tolist() == [2, 2]  # one character of context at the start of a row
    assert (level[:, 3:] == 4).all()  # seen training text: the full order-1 context matches
    assert (total > 0).all()


def test_modified_kn_triples():
    held_out = np.concatenate([SEQ[::-1][:50], [V - 1], SEQ[10:60]])
    single = KneserNey(4, V, 0.6).fit(SEQ)
    same = KneserNey(4, V, [[0.6, 0.6, 0.6]] * 4).fit(SEQ)  # (d, d, d) is the single discount d
    np.testing.assert_allclose(same.log_prob_sequence(held_out), single.log_prob_sequence(held_out), rtol=1e-12)
    np.testing.assert_allclose(same.prob_dist(SEQ[3:6]), single.prob_dist(SEQ[3:6]), rtol=1e-12)
    modified = KneserNey(4, V).fit(SEQ)
    modified.set_discounts([0.5, 0.9, 1.4] * 4)  # flat: D1, D2, D3+ per level
    assert modified.discounts == [[0.5, 0.9, 1.4]] * 4
    for ctx in _contexts(4)[::5]:
        p = modified.prob_dist(ctx)
        assert abs(p.sum() - 1) < 1e-12 and (p > 0).all()
    batch = np.stack([SEQ[i:i + 3] for i in range(0, 60, 3)])
    targets = SEQ[3:63:3]
    np.testing.assert_allclose(modified.log_prob_targets(batch, targets),
                               modified.log_probs_batch(batch)[np.arange(len(batch)), targets], rtol=1e-12)
    assert not np.allclose(modified.log_prob_sequence(held_out), single.log_prob_sequence(held_out))
    buf = io.BytesIO()
    torch.save(modified.state_dict(), buf)
    buf.seek(0)
    again = KneserNey.from_state_dict(torch.load(buf, weights_only=True))
    np.testing.assert_array_equal(again.log_prob_sequence(held_out), modified.log_prob_sequence(held_out))
    with pytest.raises(ValueError):
        modified.set_discounts([[0.5, 0.9, 3.5]] * 4)


def test_choose_order_with_modified_discounts_is_never_worse():
    rng = np.random.default_rng(3)
    seq = np.concatenate([SEQ] * 6)[rng.random(len(SEQ) * 6) > 0.05]  # a repetitive text with gaps
    train, tune = seq[:-200], seq[-200:]
    plain = choose_order(train, tune, V, max_order=4)
    modified = choose_order(train, tune, V, max_order=4, modified=True)
    assert modified.order == plain.order
    assert modified.tune_ppl[modified.order] <= plain.tune_ppl[plain.order] * (1 + 1e-12)
    assert all(isinstance(d, list) and len(d) == 3 for d in modified.discounts)
    kn = KneserNey(modified.order, V, modified.discounts).fit(train)
    assert kn.perplexity(tune) == pytest.approx(modified.tune_ppl[modified.order], rel=1e-10)
