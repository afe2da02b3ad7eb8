"""Tests for the interpolated Kneser-Ney n-gram baseline (small hand-made sequences only)."""

import io
import math

import numpy as np
import pytest
import torch

from charlm.models.kneser_ney import KneserNey

TINY = [0, 1, 0, 1, 0, 2]  # V = 3


def _text(n=200, v=7, seed=0):
    return np.random.default_rng(seed).integers(0, v, size=n)


@pytest.mark.parametrize("order", [1, 2, 3, 5])
@pytest.mark.parametrize("discount", [None, 0.5])
def test_prob_dist_normalised_and_positive(order, discount):
    v = 9  # indices 7 and 8 never occur in training
    m = KneserNey(order, v, discount).fit(_text(v=7))
    contexts = [(), [3], [1, 2], [0, 1, 2, 3], [8, 8, 8, 8], [7], list(_text(10, 7, 1)),
                np.array([4, 5], dtype=np.int64)]
    for ctx in contexts:
        p = m.prob_dist(ctx)
        assert p.shape == (v,) and p.dtype == np.float64
        assert abs(p.sum() - 1.0) < 1e-12
        assert (p > 0).all()
    # An unfitted model is uniform.
    p = KneserNey(order, v).prob_dist([1, 2])
    np.testing.assert_allclose(p, np.full(v, 1 / v))


def test_order1_hand_calculation():
    # Order 1 (raw unigram counts, interpolated with uniform):
    #   P(w) = max(c(w) - D, 0) / N + D * T / N * 1/V
    # TINY: c = (3, 2, 1), N = 6, T = 3 distinct, V = 3, D = 0.5:
    #   P(0) = 2.5/6 + 0.5*3/6/3 = 5/12 + 1/12 = 1/2
    #   P(1) = 1.5/6 + 1/12 = 1/3
    #   P(2) = 0.5/6 + 1/12 = 1/6
    # Scored positions 1..5 have targets 1,0,1,0,2:
    #   product = (1/3)^2 (1/2)^2 (1/6) = 1/216 = 6^-3  ->  ppl = 6^(3/5)
    m = KneserNey(1, 3, discount=0.5).fit(TINY)
    np.testing.assert_allclose(m.prob_dist([]), [1 / 2, 1 / 3, 1 / 6], rtol=0, atol=1e-15)
    assert len(m.log_prob_sequence(TINY)) == 5
    assert m.perplexity(TINY) == pytest.approx(6 ** 0.6, rel=1e-12)


def test_order2_hand_calculation():
    # Top level: raw bigram counts of TINY: c(0,1)=2, c(1,0)=2, c(0,2)=1.
    #   context 0: total 3, 2 types;  context 1: total 2, 1 type;  context 2: unseen.
    # Unigram level uses continuation counts N1+(.w): 0 <- {1}, 1 <- {0}, 2 <- {0},
    #   so each is 1, total 3, 3 types:  P1(w) = 0.5/3 + 0.5*3/3 * 1/3 = 1/3 for all w.
    # With D = 0.5:
    #   P(1|0) = 1.5/3 + 0.5*2/3 * 1/3 = 1/2 + 1/9 = 11/18
    #   P(2|0) = 0.5/3 + 1/9 = 5/18,   P(0|0) = 1/9 = 2/18
    #   P(0|1) = 1.5/2 + 0.5*1/2 * 1/3 = 3/4 + 1/12 = 5/6,   P(1|1) = P(2|1) = 1/12
    #   P(.|2) = P1 = 1/3 each (unseen context falls through)
    # Scored: 1|0, 0|1, 1|0, 0|1, 2|0  ->  product = (11/18)^2 (5/6)^2 (5/18)
    #   = 121/324 * 25/36 * 5/18 = 15125/209952  ->  ppl = (209952/15125)^(1/5)
    m = KneserNey(2, 3, discount=0.5).fit(TINY)
    np.testing.assert_allclose(m.prob_dist([0]), [2 / 18, 11 / 18, 5 / 18], atol=1e-15)
    np.testing.assert_allclose(m.prob_dist([1]), [5 / 6, 1 / 12, 1 / 12], atol=1e-15)
    np.testing.assert_allclose(m.prob_dist([2]), [1 / 3] * 3, atol=1e-15)
    np.testing.assert_allclose(m.prob_dist([1, 0]), m.prob_dist([0]))  # only last item used
    expected = [math.log(11 / 18), math.log(5 / 6), math.log(11 / 18), math.log(5 / 6),
                math.log(5 / 18)]
    np.testing.assert_allclose(m.log_prob_sequence(TINY), expected, rtol=1e-12)
    assert m.perplexity(TINY) == pytest.approx((209952 / 15125) ** 0.2, rel=1e-12)


def test_estimated_discount():
    # Order 1 on TINY: counts (3, 2, 1) -> n1 = 1, n2 = 1 -> D = 1 / (1 + 2) = 1/3.
    assert KneserNey(1, 3).fit(TINY).discounts == [pytest.approx(1 / 3)]


def test_log_probs_batch_matches_sequence_scoring():
    seq = _text(120, 5, 3)
    m = KneserNey(3, 6).fit(_text(300, 5, 4))
    ctx = np.stack([seq[i - 2:i] for i in range(2, len(seq))])
    lb = m.log_probs_batch(ctx)
    assert lb.shape == (len(ctx), 6)
    np.testing.assert_allclose(lb[np.arange(len(ctx)), seq[2:]], m.log_prob_sequence(seq)[1:],
                               rtol=1e-12)
    assert m.log_probs_batch(np.zeros((2, 0), dtype=np.int64)).shape == (2, 6)


def test_state_dict_roundtrip_weights_only():
    m = KneserNey(4, 8).fit(_text(300, 7, 5))
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    m2 = KneserNey.from_state_dict(torch.load(buf, weights_only=True))
    assert m2.order == 4 and m2.vocab_size == 8 and m2.discounts == m.discounts
    for ctx in [(), [1], [2, 3], [0, 1, 2], [7, 7, 7], list(_text(6, 7, 6))]:
        np.testing.assert_array_equal(m2.prob_dist(ctx), m.prob_dist(ctx))


@pytest.mark.parametrize("order", [0, -1])
def test_bad_order_raises(order):
    with pytest.raises(ValueError):
        KneserNey(order, 5)


def test_higher_order_fits_periodic_text_better():
    seq = [0, 1, 2, 3, 2, 1] * 20
    ppl1 = KneserNey(1, 4).fit(seq).perplexity(seq)
    ppl3 = KneserNey(3, 4).fit(seq).perplexity(seq)
    assert ppl3 < ppl1
    assert ppl3 < 1.5  # the period is fully determined by two previous characters
