"""Choosing the Kneser-Ney order and fitting its discounts on a tuning slice (never on validation text).

`choose_order` counts the training text once up to the highest order memory allows,
then scores the tuning slice for every order with the closed-form discounts and with
discounts fitted by coordinate-wise golden-section search (`fit_discounts`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from charlm.errors import CharlmError
from charlm.models.kn_counts import (_D_MAX, _D_MIN, _Level, _as_index_array, _check_stop, _count_discount,
                                     _estimate_discount, _find, count_ngrams)
from charlm.models.kneser_ney import KneserNey
from charlm.models.limits import MAX_ORDER


class OrderChoice(NamedTuple):
    """What `choose_order` found: the best order, the tuning perplexity of every order, its discounts."""

    order: int
    tune_ppl: dict  # {order: tuning-slice perplexity with the discounts below for that order}
    discounts: list  # one per level of the best order
    closed_form_ppl: dict  # {order: tuning perplexity with the closed-form discounts}
    single_ppl: float | None = None  # the best order's tuning perplexity with one discount a level
    single_discounts: list | None = None  # and those discounts (`discounts` holds triples with `modified`)


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
    single, single_discounts = tune_ppl[best], all_discounts[best]
    if modified and fit_discount:  # refine the best order only: 3 discounts per level cost 3x the fitting
        kn = KneserNey(best, V)
        kn.levels = [level(k, "cont") for k in range(1, best)] + \
            [_Level(keys[best - 1], raw[best], 1 if best == 1 else keys[best - 2].size, V)]
        triples, nll = fit_discounts(_tune_terms(kn, tune, modified=True), [[d, d, d] for d in all_discounts[best]], V)
        tune_ppl[best], all_discounts[best] = math.exp(nll), triples
        if log is not None:
            log(f"kn order {best}: tune ppl {tune_ppl[best]:.3f} with modified-KN discounts (D1, D2, D3+ per level)")
    return OrderChoice(best, tune_ppl, all_discounts[best], closed, single, single_discounts)
