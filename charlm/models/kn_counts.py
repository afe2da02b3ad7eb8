"""Counting character n-grams into sorted arrays: the tables behind charlm.models.kneser_ney.KneserNey.

Storage: numpy arrays, no Python object per n-gram.  Each distinct k-gram gets a
dense id, its rank among the sorted keys of level k, where

    key_k(w_1 .. w_k) = id_{k-1}(w_1 .. w_{k-1}) * V + w_k        (id_0 of the empty gram = 0)

so every level is one sorted int64 array (no overflow: ids < text length, so
keys < length * V), with the count a_k beside it.  The entries of one context are
contiguous and sorted by next character; a lookup is a chain of np.searchsorted,
one per order, vectorised over all positions at once.
"""

from __future__ import annotations

import numpy as np
import torch

from charlm.errors import CharlmError

# Clip for estimated discounts: D = 0 would give unseen characters zero mass,
# D = 1 would throw away every singleton.
_D_MIN, _D_MAX = 1e-3, 1.0 - 1e-3


class CountingInterrupted(CharlmError):
    """`should_stop()` turned true while counting; the model keeps the counts it had before."""


def _as_index_array(indices, vocab_size: int | None = None) -> np.ndarray:
    if isinstance(indices, torch.Tensor):
        indices = indices.detach().cpu().numpy()
    arr = np.asarray(indices)
    if arr.ndim != 1:
        raise ValueError(f"expected a 1-D sequence of indices, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"expected integer indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if vocab_size is not None and arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
        raise ValueError(f"indices must lie in [0, {vocab_size})")
    return arr


def _check_stop(should_stop) -> None:
    if should_stop is not None and should_stop():
        raise CountingInterrupted("n-gram counting stopped on request")


def _find(keys: np.ndarray, query: np.ndarray):
    """Positions of `query` in the sorted `keys` and whether each was there."""
    idx = np.searchsorted(keys, query)
    if keys.size == 0:
        return idx, np.zeros(query.shape, dtype=bool)
    idx = np.minimum(idx, keys.size - 1)
    return idx, keys[idx] == query


def count_ngrams(seq, vocab_size: int, order: int, *, raw_levels=None, cont_levels=None, should_stop=None):
    """Sorted keys of every level 1..order and the counts asked for, by np.unique on whole arrays.

    Returns (keys, raw, cont): keys[k-1] the sorted distinct keys of level k (see the
    module docstring), raw[k] the raw counts c(h w) and cont[k] the continuation counts
    N1+(. h w) of the levels named in `raw_levels` / `cont_levels` (default: raw at
    the top, continuation below, as one KN model of `order` needs).  `should_stop()`
    is asked before each level; CountingInterrupted is raised when it is true.
    """
    seq = _as_index_array(seq, vocab_size)
    V, N = int(vocab_size), len(seq)
    raw_levels = {order} if raw_levels is None else set(raw_levels)
    cont_levels = set(range(1, order)) if cont_levels is None else set(cont_levels)
    keys, raw, cont = [], {}, {}
    prev_ids = np.zeros(N + 1, dtype=np.int64)  # id of the empty gram at every position
    for k in range(1, order + 1):
        _check_stop(should_stop)
        m = N - k + 1  # k-grams start at positions 0 .. m-1
        if m <= 0:
            keys.append(np.zeros(0, dtype=np.int64))
            raw[k] = cont[k] = np.zeros(0, dtype=np.int64)
            prev_ids = np.zeros(0, dtype=np.int64)
            continue
        uniq, inv = np.unique(prev_ids[:m] * V + seq[k - 1:], return_inverse=True)
        inv = inv.reshape(-1).astype(np.int64, copy=False)  # (m,) id of the k-gram starting at each position
        keys.append(uniq)
        if k in raw_levels:
            raw[k] = np.bincount(inv, minlength=uniq.size)
        if k in cont_levels:
            # distinct (character before, k-gram) pairs = distinct (k+1)-grams ending in each k-gram
            pairs = np.unique(inv[1:] * V + seq[:m - 1]) if m > 1 else np.zeros(0, dtype=np.int64)
            cont[k] = np.bincount(pairs // V, minlength=uniq.size)
            del pairs
        prev_ids = inv
    return keys, raw, cont


class _Level:
    """One order's table: sorted keys, the count a_k of each, and per-context totals and types."""

    __slots__ = ("keys", "counts", "totals", "types", "_starts", "_by_count", "vocab_size")

    def __init__(self, keys: np.ndarray, counts: np.ndarray, n_contexts: int, vocab_size: int):
        self.keys = np.ascontiguousarray(keys, dtype=np.int64)
        self.counts = np.ascontiguousarray(counts, dtype=np.int64)
        self.vocab_size = vocab_size
        ctx = self.keys // vocab_size
        self.totals = np.bincount(ctx, weights=self.counts, minlength=n_contexts)  # a_k(h .), float64
        self.types = np.bincount(ctx, weights=self.counts > 0, minlength=n_contexts)  # T_k(h), float64
        del ctx
        self._starts = None
        self._by_count = None

    @property
    def by_count(self) -> tuple:
        """(N1, N2, N3+) per context: next characters seen once, twice, 3+ times (modified KN; built on first use)."""
        if self._by_count is None:
            ctx, n = self.keys // self.vocab_size, self.totals.size
            self._by_count = tuple(np.bincount(ctx, weights=w, minlength=n) for w in
                                   (self.counts == 1, self.counts == 2, self.counts >= 3))
        return self._by_count

    @property
    def starts(self) -> np.ndarray:
        """starts[c]: first entry of context c; its entries end at starts[c + 1] (built on first use)."""
        if self._starts is None:
            n = self.totals.size
            self._starts = np.searchsorted(self.keys, np.arange(n + 1, dtype=np.int64) * self.vocab_size)
        return self._starts

    @classmethod
    def empty(cls, vocab_size: int, n_contexts: int = 0) -> "_Level":
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), n_contexts, vocab_size)


def _estimate_discount(counts: np.ndarray) -> float:
    n1 = int(np.count_nonzero(counts == 1))
    n2 = int(np.count_nonzero(counts == 2))
    if n1 + 2 * n2 == 0:
        return 0.5  # no statistics at all: a neutral choice
    return min(max(n1 / (n1 + 2 * n2), _D_MIN), _D_MAX)


def _estimate_modified(counts: np.ndarray) -> list:
    """Chen & Goodman's closed-form (D1, D2, D3+) from the counts of counts n1..n4: D_j = j - (j+1) Y n_{j+1} / n_j.

    Y = n1 / (n1 + 2 n2); a level without the statistics gets the single estimate three times.
    """
    n = [int(np.count_nonzero(counts == j)) for j in range(1, 5)]
    single = _estimate_discount(counts)
    if min(n) == 0:
        return [single] * 3
    y = n[0] / (n[0] + 2 * n[1])
    return [min(max(j - (j + 1) * y * n[j] / n[j - 1], _D_MIN), j - _D_MIN) for j in (1, 2, 3)]


def _check_level_discount(d):
    """One level's discount: a number in (0, 1], or a modified-KN triple in (0, 1] x (0, 2] x (0, 3]."""
    if isinstance(d, (list, tuple)):
        if len(d) != 3 or not all(0.0 < float(x) <= limit for x, limit in zip(d, (1.0, 2.0, 3.0))):
            raise ValueError(f"a modified-KN discount is (D1, D2, D3+) in (0, 1], (0, 2], (0, 3], got {d!r}")
        return [float(x) for x in d]
    if not (0.0 < float(d) <= 1.0):
        raise ValueError(f"discount must be in (0, 1], got {d!r}")
    return float(d)


def _count_discount(a: np.ndarray, d) -> np.ndarray | float:
    """What a count a loses: D, or for modified KN D1, D2 or D3+ by a = 1, 2, 3+ (0 for a = 0)."""
    if not isinstance(d, list):
        return d
    return np.where(a >= 3, d[2], np.where(a == 2, d[1], np.where(a == 1, d[0], 0.0)))



def _tables_to_arrays(tables, order: int, V: int):
    """Convert the first format (rows [context..., next, count] per level) to sorted keys and counts.

    Every prefix of every context becomes a key of its level (count 0 if it had none),
    so that the id chain reaches every context the old tables held.
    """
    if len(tables) != order:
        raise ValueError("state_dict tables do not match its order")
    rows = [torch.as_tensor(t, dtype=torch.int64).reshape(-1, k + 1).numpy() for k, t in enumerate(tables, start=1)]
    keys, counts = [], []
    for j in range(1, order + 1):
        grams = [rows[j - 1][:, :j]] + [rows[k - 1][:, :j] for k in range(j + 1, order + 1)]  # contexts' prefixes
        grams = np.concatenate(grams, axis=0).reshape(-1, j)
        grams = np.unique(grams, axis=0).reshape(-1, j) if grams.size else grams

        def key_of(g):
            return _key_of(g, keys, V)

        level_keys = np.sort(key_of(grams))
        level_counts = np.zeros(level_keys.size, dtype=np.int64)
        if rows[j - 1].size:
            idx, _ = _find(level_keys, key_of(rows[j - 1][:, :j]))
            level_counts[idx] = rows[j - 1][:, j]
        keys.append(level_keys)
        counts.append(level_counts)
    return keys, counts


def _key_of(grams: np.ndarray, keys: list, V: int) -> np.ndarray:
    """Level-j keys of the j-grams (M, j), j = len(keys) (all their prefixes must be known)."""
    ids = np.zeros(grams.shape[0], dtype=np.int64)
    for j in range(1, grams.shape[1] + 1):
        q = ids * V + grams[:, j - 1]
        if j == grams.shape[1]:
            return q
        idx, found = _find(keys[j - 1], q)
        if not found.all():
            raise ValueError("state_dict tables are not closed under prefixes")
        ids = idx
    return ids
