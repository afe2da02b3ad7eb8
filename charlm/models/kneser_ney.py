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

The counting and its tables are in charlm/models/kn_counts.py; choosing the order and
fitting the discounts on a tuning slice in charlm/models/kn_tuning.py.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from charlm.models.kn_counts import (_Level, _as_index_array, _check_level_discount, _count_discount,
                                     _estimate_discount, _estimate_modified, _find, _tables_to_arrays,
                                     count_ngrams)
from charlm.models.limits import MAX_ORDER

# Rows of (rows, V) float64 distributions built at once, so scoring never holds positions x V in memory.
_DIST_CHUNK_FLOATS = 1 << 22


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
    below), clipped into (0, 1); with ``modified`` Chen & Goodman's triple (D1, D2, D3+).  A fixed ``discount`` in (0, 1] is used at every order;
    a list of ``order`` of them (as `choose_order` fits) gives one per order.
    """

    def __init__(self, order: int, vocab_size: int, discount=None, modified: bool = False):
        self.order = _check_order(order)
        self.modified = bool(modified)  # closed-form estimates are (D1, D2, D3+) triples
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
        estimate = _estimate_modified if self.modified else _estimate_discount
        self.discounts = self._fixed_discounts() or [estimate(c) for c in counts]
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
