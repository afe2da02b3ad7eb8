"""Interpolated Kneser-Ney character n-gram model: the counting baseline for the neural models.

Formulation (Chen & Goodman 1998, interpolated KN with one discount per order).
Level k (1 <= k <= order) predicts a character from the previous k-1 characters.

* The top level (k = order) uses raw counts c(h w).
* Lower levels use continuation counts N1+(. h w): the number of distinct characters
  seen immediately before the k-gram h w in the training text.  (No start-of-text
  symbol is added, so a k-gram seen only at position 0 has continuation count 0.)

With a_k(h w) the count used at level k, a_k(h .) = sum_w a_k(h w) and
T_k(h) = |{w : a_k(h w) > 0}|:

    P_k(w | h) = max(a_k(h w) - D_k, 0) / a_k(h .)
                 + D_k * T_k(h) / a_k(h .) * P_{k-1}(w | h[1:])

and P_k(w | h) = P_{k-1}(w | h[1:]) when a_k(h .) = 0 (context never seen).

Modified Kneser-Ney (Chen & Goodman's D1, D2, D3+) is available as an option: a
level's discount may be a triple, so that a count of 1, 2 or 3+ loses D1, D2 or
D3+, and the lower level gets (D1 N1(h) + D2 N2(h) + D3+ N3+(h)) / a_k(h .),
where Nj(h) counts the next characters seen j (3: 3 or more) times after h.  A
triple (d, d, d) is the same model as the single discount d.
Below level 1 sits the uniform distribution 1/V, so every character has
probability > 0.  A context shorter than order-1 (the start of a text) is
predicted by the level matching its length.

Storage: numpy arrays, no Python object per n-gram.  Each distinct k-gram gets a
dense id, its rank among the sorted keys of level k, where

    key_k(w_1 .. w_k) = id_{k-1}(w_1 .. w_{k-1}) * V + w_k        (id_0 of the empty gram = 0)

so every level is one sorted int64 array (no overflow: ids < text length, so
keys < length * V), with the count a_k beside it.  The entries of one context are
contiguous and sorted by next character; a lookup is a chain of np.searchsorted,
one per order, vectorised over all positions at once.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from charlm.errors import CharlmError

__all__ = ["KneserNey", "CountingInterrupted", "OrderChoice", "choose_order", "count_ngrams", "MAX_ORDER"]

# Clip for estimated discounts: D = 0 would give unseen characters zero mass,
# D = 1 would throw away every singleton.
_D_MIN, _D_MAX = 1e-3, 1.0 - 1e-3
# Orders above this find nothing new in character text and only cost memory (one array per order).
MAX_ORDER = 16
# Rows of (rows, V) float64 distributions built at once, so scoring never holds positions x V in memory.
_DIST_CHUNK_FLOATS = 1 << 22


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


def _check_order(order) -> int:
    if not isinstance(order, (int, np.integer)) or isinstance(order, bool) or order < 1:
        raise ValueError(f"order must be an integer >= 1, got {order!r}")
    if order > MAX_ORDER:
        raise ValueError(f"order must be at most {MAX_ORDER}, got {order!r}")
    return int(order)


class KneserNey:
    """Interpolated Kneser-Ney character n-gram model over indices in [0, vocab_size).

    ``discount=None`` estimates one discount per order as D = n1 / (n1 + 2 n2) from the
    count-of-counts of the counts that order actually uses (raw at the top, continuation
    below), clipped into (0, 1).  A fixed ``discount`` in (0, 1] is used at every order;
    a list of ``order`` of them (as `choose_order` fits) gives one per order.
    """

    def __init__(self, order: int, vocab_size: int, discount=None):
        self.order = _check_order(order)
        if not isinstance(vocab_size, (int, np.integer)) or vocab_size < 1:
            raise ValueError(f"vocab_size must be an integer >= 1, got {vocab_size!r}")
        self.vocab_size = int(vocab_size)
        self.discount = self._check_discount(discount)
        self.levels: list[_Level] = [_Level.empty(self.vocab_size, 1 if k == 1 else 0)
                                     for k in range(1, self.order + 1)]
        self.discounts: list[float] = self._fixed_discounts() or [0.5] * self.order

    def _check_discount(self, discount):
        if discount is None:
            return None
        if not isinstance(discount, (list, tuple)):
            return _check_level_discount(discount)
        values = list(discount)
        if len(values) == 3 * self.order and all(not isinstance(d, (list, tuple)) for d in values):
            values = [values[i:i + 3] for i in range(0, len(values), 3)]  # flat D1, D2, D3+ per level
        if len(values) != self.order:
            raise ValueError(f"need {self.order} discounts (one per order, or three per order for modified KN), "
                             f"got {len(values)}")
        return [_check_level_discount(d) for d in values]

    def _fixed_discounts(self) -> list | None:
        if self.discount is None:
            return None
        return list(self.discount) if isinstance(self.discount, list) else [self.discount] * self.order

    # ------------------------------------------------------------------ training
    def fit(self, indices, should_stop=None) -> "KneserNey":
        """Count all n-grams of ``indices`` (1-D ints in [0, V)); replaces earlier counts.

        ``should_stop()`` is asked between orders; when true, CountingInterrupted is
        raised and the earlier counts are kept.
        """
        seq = _as_index_array(indices, self.vocab_size)
        keys, raw, cont = count_ngrams(seq, self.vocab_size, self.order, should_stop=should_stop)
        counts = [cont[k] for k in range(1, self.order)] + [raw[self.order]]
        self._set_tables(keys, counts)
        self.discounts = self._fixed_discounts() or [_estimate_discount(c) for c in counts]
        return self

    def _set_tables(self, keys: list, counts: list) -> None:
        self.levels = [_Level(keys[k - 1], counts[k - 1], 1 if k == 1 else keys[k - 2].size, self.vocab_size)
                       for k in range(1, self.order + 1)]

    def set_discounts(self, discounts) -> None:
        """Use these discounts from now on, also after a refit.

        One per order, each in (0, 1]; or for modified KN a triple (D1, D2, D3+) per order
        (given as triples or as one flat list of 3 x order numbers), in (0, 1], (0, 2], (0, 3].
        """
        self.discount = self._check_discount(list(discounts))
        self.discounts = list(self.discount)

    # ---------------------------------------------------------------- inference
    def _gram_ids(self, rows: np.ndarray, longest: int) -> list[np.ndarray]:
        """ids[j] (B, W-j+1): the id of the j-gram starting at each position of `rows` (B, W), -1 if unseen."""
        B, W = rows.shape
        ids = [np.zeros((B, W + 1), dtype=np.int64)]
        for j in range(1, min(longest, W) + 1):
            prev = ids[j - 1][:, :W - j + 1]
            idx, found = _find(self.levels[j - 1].keys, np.maximum(prev, 0) * self.vocab_size + rows[:, j - 1:])
            ids.append(np.where(found & (prev >= 0), idx, -1))
        return ids

    def _stream_contexts(self, rows: np.ndarray, first: int) -> list[np.ndarray]:
        """Context ids per level (each (B, W-first)) for predicting after positions first..W-1 of `rows`.

        The context after position p is rows[p-k+2 .. p] at level k, -1 where the row is
        too short or the gram was never seen; level 1's empty context is always id 0.
        """
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        B, W = rows.shape
        ids = self._gram_ids(rows, self.order - 1)
        pos = np.arange(first, W)
        out = []
        for k in range(1, self.order + 1):
            start = pos - (k - 2)  # where the (k-1)-gram ending at p begins
            if k == 1:
                out.append(np.zeros((B, pos.size), dtype=np.int64))
            elif k - 1 >= len(ids):
                out.append(np.full((B, pos.size), -1, dtype=np.int64))
            else:
                ok = start >= 0
                col = np.where(ok, start, 0)
                out.append(np.where(ok[None, :], ids[k - 1][:, col], -1))
        return out

    def _target_probs(self, ctx: list[np.ndarray], targets: np.ndarray) -> np.ndarray:
        """P(target | context) for flat arrays: ctx[k-1] (n,) context ids of level k, targets (n,)."""
        V = self.vocab_size
        p = np.full(targets.shape, 1.0 / V)
        for k, (lvl, c) in enumerate(zip(self.levels, ctx), start=1):
            usable = c >= 0
            c = np.where(usable, c, 0)
            total = lvl.totals[c] if lvl.totals.size else np.zeros(c.shape)
            usable &= total > 0
            if not usable.any():
                continue
            safe = np.where(usable, total, 1.0)
            idx, found = _find(lvl.keys, c * V + targets)
            a = np.where(found, lvl.counts[idx] if lvl.counts.size else 0.0, 0.0)
            d = self.discounts[k - 1]
            if isinstance(d, list):  # modified KN
                n1, n2, n3 = lvl.by_count
                gamma = (d[0] * n1[c] + d[1] * n2[c] + d[2] * n3[c]) / safe
                p = np.where(usable, np.maximum(a - _count_discount(a, d), 0.0) / safe + gamma * p, p)
            else:
                p = np.where(usable, np.maximum(a - d, 0.0) / safe + d * lvl.types[c] / safe * p, p)
        return p

    def _distributions(self, ctx: list[np.ndarray]) -> np.ndarray:
        """P(. | context) (n, V) for flat context ids ctx[k-1] (n,)."""
        V = self.vocab_size
        n = ctx[0].shape[0]
        # Level 1 has one context (the empty one, id 0) shared by every row: build it once, not n times.
        unigram = np.full(V, 1.0 / V)
        lvl, d = self.levels[0], self.discounts[0]
        if lvl.totals.size and lvl.totals[0] > 0:
            total = lvl.totals[0]
            unigram *= self._gamma(lvl, d, np.zeros(1, dtype=np.int64))[0] / total
            unigram[lvl.keys % V] += np.maximum(lvl.counts - _count_discount(lvl.counts, d), 0.0) / total
        p = np.empty((n, V))
        p[:] = unigram
        for k in range(2, self.order + 1):
            lvl, c = self.levels[k - 1], ctx[k - 1]
            if lvl.totals.size == 0:
                continue
            usable = c >= 0
            usable[usable] = lvl.totals[c[usable]] > 0
            rows = np.flatnonzero(usable)
            if rows.size == 0:
                continue
            cr = c[rows]
            total = lvl.totals[cr]
            d = self.discounts[k - 1]
            p[rows] *= (self._gamma(lvl, d, cr) / total)[:, None]
            begin, end = lvl.starts[cr], lvl.starts[cr + 1]
            lens = end - begin
            which = np.repeat(np.arange(rows.size), lens)  # entry -> its row among `rows`
            entry = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens) + np.repeat(begin, lens)
            a = lvl.counts[entry]
            p[rows[which], lvl.keys[entry] % V] += np.maximum(a - _count_discount(a, d), 0.0) / total[which]
        return p

    @staticmethod
    def _gamma(lvl: _Level, d, c: np.ndarray) -> np.ndarray:
        """The mass a level passes down, times a_k(h .): D T(h), or D1 N1 + D2 N2 + D3+ N3+ (modified KN)."""
        if isinstance(d, list):
            n1, n2, n3 = lvl.by_count
            return d[0] * n1[c] + d[1] * n2[c] + d[2] * n3[c]
        return d * lvl.types[c]

    def _context_stats(self, ctx: list[np.ndarray]):
        """(longest level whose context was seen, its total a_k(h .)) per flat position; (0, 0) if none."""
        level = np.zeros(ctx[0].shape, dtype=np.int64)
        total = np.zeros(ctx[0].shape)
        for k, (lvl, c) in enumerate(zip(self.levels, ctx), start=1):
            usable = c >= 0
            t = np.where(usable, lvl.totals[np.where(usable, c, 0)], 0.0) if lvl.totals.size else np.zeros(c.shape)
            seen = t > 0
            level = np.where(seen, k, level)
            total = np.where(seen, t, total)
        return level, total

    def stream_log_probs(self, rows, first: int = 0, targets=None, with_stats: bool = False):
        """Natural-log predictions after positions first..W-1 of each row of `rows` (B, W).

        The context after position p is the last order-1 characters up to p (fewer at
        the start of a row).  Without `targets`: distributions (B, W-first, V).  With
        `targets` (B, W-first): only their log-probabilities (B, W-first), without
        building a V-wide row (the fast path for scoring).  `with_stats` also returns
        `stream_context_stats`' two arrays, from the same lookups: (logp, level, total).
        """
        rows = np.asarray(rows, dtype=np.int64)
        B, W = rows.shape
        T = W - first
        flat = [c.reshape(-1) for c in self._stream_contexts(rows, first)]
        if targets is not None:
            out = np.log(self._target_probs(flat, np.asarray(targets, dtype=np.int64).reshape(-1))).reshape(B, T)
        else:
            out = np.empty((B * T, self.vocab_size))
            step = max(1, _DIST_CHUNK_FLOATS // self.vocab_size)
            for i in range(0, B * T, step):
                out[i:i + step] = np.log(self._distributions([c[i:i + step] for c in flat]))
            out = out.reshape(B, T, self.vocab_size)
        if not with_stats:
            return out
        level, total = self._context_stats(flat)
        return out, level.reshape(B, T), total.reshape(B, T)

    def stream_context_stats(self, rows, first: int = 0):
        """(longest seen level, its total) (each (B, W-first)) of the contexts after positions first..W-1."""
        rows = np.asarray(rows, dtype=np.int64)
        B, W = rows.shape
        level, total = self._context_stats([c.reshape(-1) for c in self._stream_contexts(rows, first)])
        return level.reshape(B, W - first), total.reshape(B, W - first)

    def _last_context_ids(self, contexts) -> list[np.ndarray]:
        if isinstance(contexts, torch.Tensor):
            contexts = contexts.detach().cpu().numpy()
        arr = np.asarray(contexts)
        if arr.ndim == 1 and arr.size == 0:
            arr = arr.reshape(0, 0)
        if arr.ndim != 2:
            raise ValueError(f"contexts must have shape (B, L), got {arr.shape}")
        arr = arr[:, max(0, arr.shape[1] - (self.order - 1)):] if self.order > 1 else arr[:, :0]
        B, L = arr.shape
        if L == 0:  # only level 1's empty context
            return [np.zeros(B, dtype=np.int64)] + [np.full(B, -1, dtype=np.int64) for _ in range(self.order - 1)]
        return [c[:, 0] for c in self._stream_contexts(arr.astype(np.int64), L - 1)]

    def prob_dist(self, context=()) -> np.ndarray:
        """Next-character distribution (V,) float64 given the last order-1 items of ``context``."""
        ctx = _as_index_array([] if context is None else context, self.vocab_size)
        return self._distributions(self._last_context_ids(ctx[None, :]))[0]

    def log_probs_batch(self, contexts) -> np.ndarray:
        """Log distributions (B, V) for a batch of equal-length contexts (B, L), L may be 0."""
        return np.log(self._distributions(self._last_context_ids(contexts)))

    def log_prob_targets(self, contexts, targets) -> np.ndarray:
        """log P(targets[b] | contexts[b]) (B,) for equal-length contexts (B, L), vectorised."""
        return np.log(self._target_probs(self._last_context_ids(contexts), np.asarray(targets, np.int64).reshape(-1)))

    def log_prob_sequence(self, indices) -> np.ndarray:
        """Natural-log probabilities of positions 1..N-1 (length N-1); position 0 is not scored.

        Position i is predicted from indices[max(0, i-order+1):i].
        """
        seq = _as_index_array(indices, self.vocab_size)
        if seq.size < 2:
            return np.zeros(0)
        return self.stream_log_probs(seq[None, :-1], 0, seq[None, 1:])[0]

    def perplexity(self, indices) -> float:
        """exp(-mean log-probability) over positions 1..N-1; needs at least 2 items."""
        lp = self.log_prob_sequence(indices)
        if lp.size == 0:
            raise ValueError("perplexity needs a sequence of at least 2 indices")
        return float(math.exp(-lp.mean()))

    # ------------------------------------------------------------- persistence
    def state_dict(self) -> dict:
        """Plain types and int64 tensors only, so ``torch.load(weights_only=True)`` accepts it.

        ``keys[k-1]`` are level k's sorted keys and ``counts[k-1]`` the count a_k of each.
        """
        return {
            "format": 2,
            "order": self.order,
            "vocab_size": self.vocab_size,
            "discount": self.discount,
            "discounts": [list(d) if isinstance(d, list) else float(d) for d in self.discounts],
            # shared with the model's arrays, not copied: they are never changed in place
            "keys": [torch.from_numpy(lvl.keys) for lvl in self.levels],
            "counts": [torch.from_numpy(lvl.counts) for lvl in self.levels],
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> "KneserNey":
        """Rebuild a model with the same probabilities as the one that made ``state``.

        Also reads the first format (``tables`` of rows [context..., next, count]).
        """
        model = cls(int(state["order"]), int(state["vocab_size"]), state["discount"])
        if len(state["discounts"]) != model.order:
            raise ValueError("state_dict discounts do not match its order")
        if "tables" in state:
            keys, counts = _tables_to_arrays(state["tables"], model.order, model.vocab_size)
        else:
            keys = [torch.as_tensor(k, dtype=torch.int64).numpy() for k in state["keys"]]
            counts = [torch.as_tensor(c, dtype=torch.int64).numpy() for c in state["counts"]]
            if len(keys) != model.order or len(counts) != model.order or \
                    any(k.shape != c.shape or k.ndim != 1 for k, c in zip(keys, counts)):
                raise ValueError("state_dict keys/counts do not match its order")
            if any(k.size > 1 and bool((np.diff(k) <= 0).any()) for k in keys):
                raise ValueError("state_dict keys are not sorted")
        model._set_tables(keys, counts)
        model.discounts = [_check_level_discount(d) for d in state["discounts"]]
        return model


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


# ------------------------------------------------------------------ fitting order and discounts
class OrderChoice(NamedTuple):
    """What `choose_order` found: the best order, the tuning perplexity of every order, its discounts."""

    order: int
    tune_ppl: dict  # {order: tuning-slice perplexity with the discounts below for that order}
    discounts: list  # one per level of the best order
    closed_form_ppl: dict  # {order: tuning perplexity with the closed-form discounts}


def max_order_for_memory(n_chars: int, budget_bytes: float = 1.5e9) -> int:
    """The highest order `choose_order` counts within `budget_bytes`.

    A text of n characters has at most n distinct n-grams per order, each with a key,
    raw and continuation counts and per-context totals and types (8 bytes each), plus
    np.unique's temporaries while counting: measured 28 bytes per character per order on
    Song ci (1.8M characters, 8 orders: 655 MB peak with torch loaded), so 40 is a margin.
    The bound depends on the text's length, not on V (keys are pairs, not V-wide rows).
    """
    per_order = 40 * max(n_chars, 1)
    return int(max(1, min(MAX_ORDER, budget_bytes // per_order)))


def _tune_terms(kn: KneserNey, tune: np.ndarray, modified: bool = False):
    """Per level, the discount-free terms of the tuning positions: (usable, a, total, types, by_count).

    by_count is (N1, N2, N3+) of each position's context with `modified`, else None.
    """
    flat = [c.reshape(-1) for c in kn._stream_contexts(tune[None, :-1], 0)]
    targets = tune[1:]
    terms = []
    for lvl, c in zip(kn.levels, flat):
        usable = c >= 0
        c = np.where(usable, c, 0)
        total = lvl.totals[c] if lvl.totals.size else np.zeros(c.shape)
        usable &= total > 0
        idx, found = _find(lvl.keys, c * kn.vocab_size + targets)
        a = np.where(found, lvl.counts[idx] if lvl.counts.size else 0.0, 0.0)
        safe = np.where(usable, total, 1.0)
        types = lvl.types[c] if lvl.types.size else np.zeros(c.shape)
        by_count = tuple(n[c] for n in lvl.by_count) if modified and lvl.totals.size else None
        terms.append((usable, a, safe, types, by_count))
    return terms


def _tune_nll(terms, discounts, V: int) -> float:
    p = np.full(terms[0][1].shape, 1.0 / V)
    for (usable, a, total, types, by_count), d in zip(terms, discounts):
        if isinstance(d, list):
            gamma = d[0] * by_count[0] + d[1] * by_count[1] + d[2] * by_count[2] if by_count else 0.0
            p = np.where(usable, np.maximum(a - _count_discount(a, d), 0.0) / total + gamma / total * p, p)
        else:
            p = np.where(usable, np.maximum(a - d, 0.0) / total + d * types / total * p, p)
    return float(-np.log(p).mean())


def _golden(f, lo: float, hi: float, iters: int = 20) -> tuple[float, float]:
    """Minimum of a unimodal f on [lo, hi] by golden-section search: (x, f(x))."""
    g = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iters):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return (c, fc) if fc < fd else (d, fd)


def fit_discounts(terms, start: list, V: int, sweeps: int = 2) -> tuple[list, float]:
    """Discounts minimising the tuning loss, by coordinate-wise golden section from `start`.

    `start` has one discount per level, or a modified-KN triple per level (then each of
    D1, D2, D3+ is fitted, in (0, 1), (0, 2), (0, 3)). Never worse than `start` on the
    tuning positions: a coordinate only moves when that helps.
    """
    best = [list(d) if isinstance(d, (list, tuple)) else d for d in start]
    best_nll = _tune_nll(terms, best, V)
    for _ in range(sweeps):
        for k in range(len(best)):
            coords = range(3) if isinstance(best[k], list) else [None]
            for j in coords:
                def trial(x, k=k, j=j):
                    out = [list(d) if isinstance(d, list) else d for d in best]
                    if j is None:
                        out[k] = x
                    else:
                        out[k][j] = x
                    return out

                x, nll = _golden(lambda x: _tune_nll(terms, trial(x), V), _D_MIN, (j or 0) + _D_MAX)
                if nll < best_nll:
                    best, best_nll = trial(x), nll
    return best, best_nll


def choose_order(train_idx, tune_idx, vocab_size: int, max_order: int = 8, log=None, should_stop=None,
                 fit_discount: bool = True, modified: bool = False) -> OrderChoice:
    """The KN order (and per-level discounts) with the lowest perplexity on a tuning slice.

    Counts `train_idx` once up to `max_order` (raw and continuation counts at every
    level, so each order reuses the lower levels), then scores `tune_idx` as one
    stream for every order 1..max_order: with the closed-form discounts, and with
    `fit_discount` also with discounts fitted on the tuning slice (kept only where
    they are better there).  With `modified` (and `fit_discount`) the best order's
    discounts are then refined to modified-KN triples (D1, D2, D3+) per level, again
    only where that lowers the tuning loss; `discounts` then holds a triple per level, which
    `KneserNey.set_discounts` and `KNModel.set_discounts` take as they are or
    flattened.  `max_order` is lowered to what `max_order_for_memory`
    allows for the text's length, and to the text's length.  `log(line)` gets one line
    per order.
    """
    train = _as_index_array(train_idx, vocab_size)
    tune = _as_index_array(tune_idx, vocab_size)
    if tune.size < 2:
        raise CharlmError("the tuning slice needs at least 2 characters to choose an n-gram order")
    V = int(vocab_size)
    top = max(1, min(int(max_order), max_order_for_memory(train.size), train.size))
    keys, raw, cont = count_ngrams(train, V, top, raw_levels=range(1, top + 1), cont_levels=range(1, top),
                                   should_stop=should_stop)
    cont_levels, raw_levels = {}, {}

    def level(k: int, kind: str) -> _Level:
        cache, counts = (raw_levels, raw) if kind == "raw" else (cont_levels, cont)
        if k not in cache:
            cache[k] = _Level(keys[k - 1], counts[k], 1 if k == 1 else keys[k - 2].size, V)
        return cache[k]

    tune_ppl, closed, all_discounts = {}, {}, {}
    for order in range(1, top + 1):
        _check_stop(should_stop)
        kn = KneserNey(order, V)
        kn.levels = [level(k, "cont") for k in range(1, order)] + [level(order, "raw")]
        counts = [cont[k] for k in range(1, order)] + [raw[order]]
        kn.discounts = [_estimate_discount(c) for c in counts]
        terms = _tune_terms(kn, tune)
        nll = _tune_nll(terms, kn.discounts, V)
        closed[order] = math.exp(nll)
        discounts = list(kn.discounts)
        if fit_discount:
            discounts, nll = fit_discounts(terms, kn.discounts, V)
        tune_ppl[order], all_discounts[order] = math.exp(nll), discounts
        if log is not None:
            log(f"kn order {order}: tune ppl {closed[order]:.3f} (closed-form discounts)"
                + (f", {tune_ppl[order]:.3f} (fitted)" if fit_discount else ""))
        raw_levels.pop(order, None)  # the raw top of this order is not reused by higher orders
    best = min(tune_ppl, key=tune_ppl.get)
    if modified and fit_discount:  # refine the best order only: 3 discounts per level cost 3x the fitting
        kn = KneserNey(best, V)
        kn.levels = [level(k, "cont") for k in range(1, best)] + \
            [_Level(keys[best - 1], raw[best], 1 if best == 1 else keys[best - 2].size, V)]
        triples, nll = fit_discounts(_tune_terms(kn, tune, modified=True), [[d, d, d] for d in all_discounts[best]], V)
        tune_ppl[best], all_discounts[best] = math.exp(nll), triples
        if log is not None:
            log(f"kn order {best}: tune ppl {tune_ppl[best]:.3f} with modified-KN discounts (D1, D2, D3+ per level)")
    return OrderChoice(best, tune_ppl, all_discounts[best], closed)
