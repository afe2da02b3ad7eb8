"""The random and consecutive samplers: shapes, shifts, coverage and stream continuity."""

from collections import Counter

import numpy as np
import pytest

from charlm.data.batches import data_iter_consecutive, data_iter_random, epoch_batches, num_batches
from charlm.config import Config
from charlm.errors import CharlmError


@pytest.mark.parametrize("sampler", ["random", "consecutive"])
def test_y_is_x_shifted_by_one(sampler):
    corpus = np.arange(203)
    config = Config(sampler=sampler, batch_size=4, num_steps=5)
    batches = list(epoch_batches(corpus, config, epoch=1))
    assert len(batches) == num_batches(len(corpus), config)
    for X, Y in batches:
        assert X.shape == Y.shape == (4, 5)
        # corpus[i] == i, so the target of every position is its input plus one
        assert (Y == X + 1).all()


def test_random_visits_each_subsequence_exactly_once():
    num_steps, batch_size = 5, 4
    corpus = np.arange(num_steps * batch_size * 6 + 1)  # 24 subsequences = 6 whole minibatches
    starts = Counter()
    for X, _ in data_iter_random(corpus, batch_size, num_steps, np.random.default_rng(0)):
        starts.update(X[:, 0].tolist())
    assert sorted(starts) == list(range(0, 24 * num_steps, num_steps))
    assert set(starts.values()) == {1}


def test_random_order_depends_on_the_generator():
    corpus = np.arange(401)
    a = [X for X, _ in data_iter_random(corpus, 4, 5, np.random.default_rng(0))]
    b = [X for X, _ in data_iter_random(corpus, 4, 5, np.random.default_rng(0))]
    c = [X for X, _ in data_iter_random(corpus, 4, 5, np.random.default_rng(1))]
    assert all((x == y).all() for x, y in zip(a, b))
    assert any((x != y).any() for x, y in zip(a, c))


def test_consecutive_continues_each_stream():
    corpus = np.arange(203)
    batches = list(data_iter_consecutive(corpus, batch_size=4, num_steps=5))
    for (X1, _), (X2, _) in zip(batches, batches[1:]):
        # each row picks up exactly where the same row of the previous minibatch stopped
        assert (X2[:, 0] == X1[:, -1] + 1).all()
    streams = np.concatenate([X.numpy() for X, _ in batches], axis=1)
    for row in streams:
        assert (np.diff(row) == 1).all()


def test_too_short_corpus_is_a_clear_error():
    with pytest.raises(CharlmError, match="fewer than one minibatch"):
        list(data_iter_consecutive(np.arange(50), batch_size=4, num_steps=20))
    with pytest.raises(CharlmError, match="fewer than one minibatch"):
        list(data_iter_random(np.arange(50), 4, 20, np.random.default_rng(0)))
