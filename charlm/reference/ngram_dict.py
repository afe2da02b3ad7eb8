"""The first Kneser-Ney implementation, with per-context Python dicts: the oracle for charlm.models.kneser_ney.

Slow and memory-hungry (a dict per context), kept only so that the tests can check the
array implementation in charlm/ngram.py against it; nothing in charlm imports it.

Interpolated Kneser-Ney character n-gram model.

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
Below level 1 sits the uniform distribution 1/V, so every character has
probability > 0.  A context shorter than order-1 (the start of a text) is
predicted by the level matching its length.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict

import numpy as np
import torch

__all__ = ["KneserNey"]

# Clip for estimated discounts: D = 0 would give unseen characters zero mass,
# D = 1 would throw away every singleton.
_D_MIN, _D_MAX = 1e-3, 1.0 - 1e-3


def _as_int_list(indices) -> list[int]:
    if isinstance(indices, torch.Tensor):
        indices = indices.detach().cpu().numpy()
    arr = np.asarray(indices)
    if arr.ndim != 1:
        raise ValueError(f"expected a 1-D sequence of indices, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"expected integer indices, got dtype {arr.dtype}")
    return [int(x) for x in arr.tolist()]


def _ngrams(seq: list[int], n: int):
    return zip(*(seq[i:] for i in range(n)))


class _Level:
    """Counts of one order: context tuple -> (next indices, counts), plus totals and types."""

    __slots__ = ("table", "totals", "types", "arrays")

    def __init__(self, counts: dict[tuple[int, ...], int]):
        table: dict[tuple[int, ...], dict[int, int]] = {}
        for gram, c in counts.items():
            if c > 0:
                table.setdefault(gram[:-1], {})[gram[-1]] = c
        self.table = table
        self.totals = {h: sum(nx.values()) for h, nx in table.items()}
        self.types = {h: len(nx) for h, nx in table.items()}
        self.arrays: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}

    def arrays_for(self, h):
        # Numpy views are built lazily: only contexts actually queried need them.
        a = self.arrays.get(h)
        if a is None:
            nx = self.table[h]
            a = (np.fromiter(nx.keys(), dtype=np.int64, count=len(nx)),
                 np.fromiter(nx.values(), dtype=np.float64, count=len(nx)))
            self.arrays[h] = a
        return a

    def rows(self, k: int) -> torch.Tensor:
        """All entries as an int64 tensor of rows [context..., next, count], shape (M, k+1)."""
        flat = [list(h) + [w, c] for h, nx in self.table.items() for w, c in nx.items()]
        if not flat:
            return torch.zeros((0, k + 1), dtype=torch.int64)
        return torch.tensor(flat, dtype=torch.int64)


class KneserNey:
    """Interpolated Kneser-Ney character n-gram model over indices in [0, vocab_size).

    ``discount=None`` estimates one discount per order as D = n1 / (n1 + 2 n2) from the
    count-of-counts of the counts that order actually uses (raw at the top, continuation
    below), clipped into (0, 1).  A fixed ``discount`` must lie in (0, 1] and is used at
    every order.
    """

    def __init__(self, order: int, vocab_size: int, discount: float | None = None,
                 cache_size: int = 2048):
        if not isinstance(order, (int, np.integer)) or isinstance(order, bool) or order < 1:
            raise ValueError(f"order must be an integer >= 1, got {order!r}")
        if not isinstance(vocab_size, (int, np.integer)) or vocab_size < 1:
            raise ValueError(f"vocab_size must be an integer >= 1, got {vocab_size!r}")
        if discount is not None and not (0.0 < float(discount) <= 1.0):
            raise ValueError(f"discount must be in (0, 1], got {discount!r}")
        self.order = int(order)
        self.vocab_size = int(vocab_size)
        self.discount = None if discount is None else float(discount)
        self.cache_size = int(cache_size)
        # levels[k-1] holds order k; discounts[k-1] its D.
        self.levels: list[_Level] = [_Level({}) for _ in range(self.order)]
        self.discounts: list[float] = [self.discount if self.discount is not None else 0.5
                                       for _ in range(self.order)]
        # LRU of distributions keyed by (level, context): bounded because a distribution
        # is V floats and an evaluation touches thousands of contexts.
        self._cache: OrderedDict[tuple, np.ndarray] = OrderedDict()

    # ------------------------------------------------------------------ training
    def fit(self, indices) -> "KneserNey":
        """Count all n-grams of ``indices`` (1-D ints in [0, V)); replaces earlier counts."""
        seq = _as_int_list(indices)
        if seq and (min(seq) < 0 or max(seq) >= self.vocab_size):
            raise ValueError(f"indices must lie in [0, {self.vocab_size})")
        n = self.order
        level_counts: list[dict] = [None] * n  # type: ignore[list-item]
        level_counts[n - 1] = Counter(_ngrams(seq, n))
        for k in range(1, n):
            # Continuation count of a k-gram = number of distinct (k+1)-grams ending in it.
            distinct = level_counts[n - 1].keys() if k + 1 == n else set(_ngrams(seq, k + 1))
            level_counts[k - 1] = Counter(g[1:] for g in distinct)
        self.levels = [_Level(c) for c in level_counts]
        if self.discount is None:
            self.discounts = [self._estimate_discount(c) for c in level_counts]
        else:
            self.discounts = [self.discount] * n
        self._cache.clear()
        return self

    @staticmethod
    def _estimate_discount(counts: dict) -> float:
        n1 = sum(1 for c in counts.values() if c == 1)
        n2 = sum(1 for c in counts.values() if c == 2)
        if n1 + 2 * n2 == 0:
            return 0.5  # no statistics at all: a neutral choice
        return min(max(n1 / (n1 + 2 * n2), _D_MIN), _D_MAX)

    # ---------------------------------------------------------------- inference
    def _context(self, context) -> tuple[int, ...]:
        if self.order == 1 or context is None:
            return ()
        ctx = _as_int_list(context)
        return tuple(ctx[-(self.order - 1):]) if ctx else ()

    def _dist(self, k: int, h: tuple[int, ...]) -> np.ndarray:
        """P_k(. | h) with len(h) == k-1; level 0 is uniform. Cached, do not mutate."""
        if k == 0:
            key = (0, ())
        else:
            key = (k, h)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        if k == 0:
            p = np.full(self.vocab_size, 1.0 / self.vocab_size)
        else:
            lvl = self.levels[k - 1]
            lower = self._dist(k - 1, h[1:])
            total = lvl.totals.get(h, 0)
            if total == 0:
                p = lower  # unseen context: fall through entirely
            else:
                d = self.discounts[k - 1]
                nxt, cnt = lvl.arrays_for(h)
                p = lower * (d * lvl.types[h] / total)
                p[nxt] += np.maximum(cnt - d, 0.0) / total
        p.flags.writeable = False
        self._cache[key] = p
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return p

    def _prob(self, h: tuple[int, ...], w: int) -> float:
        """Scalar P(w | h) without building distributions (used for scoring)."""
        p = 1.0 / self.vocab_size
        for k in range(1, len(h) + 2):  # lowest to highest level
            lvl = self.levels[k - 1]
            hk = h[len(h) - (k - 1):] if k > 1 else ()
            total = lvl.totals.get(hk, 0)
            if total:
                d = self.discounts[k - 1]
                c = lvl.table[hk].get(w, 0)
                p = max(c - d, 0.0) / total + d * lvl.types[hk] / total * p
        return p

    def prob_dist(self, context=()) -> np.ndarray:
        """Next-character distribution (V,) float64 given the last order-1 items of ``context``."""
        h = self._context(context)
        return self._dist(len(h) + 1, h).copy()

    def log_probs_batch(self, contexts) -> np.ndarray:
        """Log distributions (B, V) for a batch of equal-length contexts (B, L), L may be 0."""
        if isinstance(contexts, torch.Tensor):
            contexts = contexts.detach().cpu().numpy()
        arr = np.asarray(contexts)
        if arr.ndim == 1 and arr.size == 0:
            arr = arr.reshape(0, 0)
        if arr.ndim != 2:
            raise ValueError(f"contexts must have shape (B, L), got {arr.shape}")
        out = np.empty((arr.shape[0], self.vocab_size), dtype=np.float64)
        for i, row in enumerate(arr.astype(np.int64).tolist()):
            h = self._context(row)
            out[i] = np.log(self._dist(len(h) + 1, h))
        return out

    def log_prob_sequence(self, indices) -> np.ndarray:
        """Natural-log probabilities of positions 1..N-1 (length N-1); position 0 is not scored.

        Position i is predicted from indices[max(0, i-order+1):i].
        """
        seq = _as_int_list(indices)
        if seq and (min(seq) < 0 or max(seq) >= self.vocab_size):
            raise ValueError(f"indices must lie in [0, {self.vocab_size})")
        m = self.order - 1
        out = np.empty(max(len(seq) - 1, 0), dtype=np.float64)
        for i in range(1, len(seq)):
            out[i - 1] = math.log(self._prob(tuple(seq[max(0, i - m):i]), seq[i]))
        return out

    def perplexity(self, indices) -> float:
        """exp(-mean log-probability) over positions 1..N-1; needs at least 2 items."""
        lp = self.log_prob_sequence(indices)
        if lp.size == 0:
            raise ValueError("perplexity needs a sequence of at least 2 indices")
        return float(math.exp(-lp.mean()))

    # ------------------------------------------------------------- persistence
    def state_dict(self) -> dict:
        """Plain types and int64 tensors only, so ``torch.load(weights_only=True)`` accepts it.

        ``tables[k-1]`` has rows [context (k-1 items)..., next, count] of the counts level k uses.
        """
        return {
            "order": self.order,
            "vocab_size": self.vocab_size,
            "discount": self.discount,
            "discounts": [float(d) for d in self.discounts],
            "tables": [lvl.rows(k) for k, lvl in enumerate(self.levels, start=1)],
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> "KneserNey":
        """Rebuild a model with the same probabilities as the one that made ``state``."""
        model = cls(int(state["order"]), int(state["vocab_size"]), state["discount"])
        tables = state["tables"]
        if len(tables) != model.order or len(state["discounts"]) != model.order:
            raise ValueError("state_dict tables/discounts do not match its order")
        levels = []
        for k, rows in enumerate(tables, start=1):
            rows = torch.as_tensor(rows, dtype=torch.int64).reshape(-1, k + 1).tolist()
            levels.append(_Level({tuple(r[:-1]): r[-1] for r in rows}))
        model.levels = levels
        model.discounts = [float(d) for d in state["discounts"]]
        return model
