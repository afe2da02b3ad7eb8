"""Synthetic Markov texts whose best possible perplexity is known exactly: a yardstick for the models.

An order-k text draws each character from p(x_t | x_{t-k} .. x_{t-1}) given by a
small random "teacher" (fixed by the seed):

    logits(next) = zipf_bias + sharpness * W @ tanh(U_1[x_{t-1}] + ... + U_k[x_{t-k}])

with U_j random V x rank embeddings, W a random V x rank output matrix and a
Zipf-like bias (common and rare characters, as in real text). Similar contexts
share predictions through the rank-wide bottleneck, as in natural text, so a
network can learn the chain from a few hundred thousand characters while a
pure counting model, which cannot share, sees most order-k contexts a few
times at most.

Because the true p is known, the best perplexity any model can reach on the
held-out part is computed exactly: exp of the mean of -log p_true(x_t | its k
previous characters) over the held-out positions (`best_perplexity`).
The symbols are printable CJK characters (U+4E00 on), so the text looks like
any other charlm corpus. The rank sets how much there is to learn: with 1,000
symbols an order-3 teacher has 4,000 x rank + 1,000 free parameters, and from
180,000 characters even its own family fits to 1.035 x the best possible at
rank 2 but only 1.23 x at rank 16 (benchmarks/markov_oracle.py).
"""

from __future__ import annotations

import math

import numpy as np

FIRST_SYMBOL = 0x4E00


def _teacher(order: int, vocab: int, rank: int, sharpness: float, seed: int):
    rng = np.random.default_rng(seed)
    U = rng.normal(0.0, 1.0, size=(order, vocab, rank))
    W = rng.normal(0.0, 1.0 / math.sqrt(rank), size=(vocab, rank))
    bias = -0.8 * np.log1p(rng.permutation(vocab))  # Zipf-like: rank r gets weight ~ r^-0.8
    return U, W, bias, sharpness


def _log_probs(teacher, context: np.ndarray) -> np.ndarray:
    """log p(. | context) for contexts (N, order), most recent character last: (N, V)."""
    U, W, bias, sharpness = teacher
    order = U.shape[0]
    h = sum(U[j][context[:, order - 1 - j]] for j in range(order))  # U_1 reads the most recent
    logits = bias + sharpness * np.tanh(h) @ W.T
    logits -= logits.max(axis=1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))


def markov_indices(order: int, vocab: int, length: int, seed: int = 0, rank: int = 16,
                   sharpness: float = 4.0) -> tuple[np.ndarray, object]:
    """`length` symbol indices drawn from an order-`order` chain, and the teacher that defines the chain."""
    teacher = _teacher(order, vocab, rank, sharpness, seed)
    rng = np.random.default_rng(seed + 1)
    out = np.empty(length, dtype=np.int64)
    out[:order] = rng.integers(0, vocab, size=order)
    uniform = rng.random(length)
    for t in range(order, length):
        p = np.exp(_log_probs(teacher, out[None, t - order:t])[0])
        out[t] = min(int(np.searchsorted(np.cumsum(p), uniform[t] * p.sum())), vocab - 1)
    return out, teacher


def best_perplexity(indices: np.ndarray, teacher, start: int) -> float:
    """exp(mean -log p_true(x_t | previous `order` symbols)) over positions t >= max(start, order)."""
    order = teacher[0].shape[0]
    t = np.arange(max(start, order), len(indices))
    contexts = np.stack([indices[t - order + j] for j in range(order)], axis=1)  # (N, order), oldest first
    total = 0.0
    for lo in range(0, len(t), 4096):  # chunks keep the (N, V) block small for V = 1000
        lp = _log_probs(teacher, contexts[lo:lo + 4096])
        total -= lp[np.arange(lp.shape[0]), indices[t[lo:lo + 4096]]].sum()
    return math.exp(total / len(t))


def to_text(indices: np.ndarray) -> str:
    return "".join(chr(FIRST_SYMBOL + int(i)) for i in indices)


def make_markov_text(order: int, vocab: int, length: int = 200_000, seed: int = 0,
                     val_fraction: float = 0.1, **teacher) -> tuple[str, float]:
    """The text and the best possible perplexity on its last `val_fraction` (charlm's validation split)."""
    indices, t = markov_indices(order, vocab, length, seed, **teacher)
    n_val = max(2, int(round(length * val_fraction)))
    # charlm's evaluate predicts validation positions 1.. (the first one has no context): same positions here
    return to_text(indices), best_perplexity(indices, t, length - n_val + 1)


# --- sparse random Markov sources: a table of contexts, each with a few successors ------------------------------
def sparse_markov_indices(order: int, vocab: int, successors: int, length: int, seed: int = 0,
                          alpha: float = 1.0) -> tuple[np.ndarray, dict]:
    """`length` indices from an order-`order` chain where each context allows only `successors` symbols.

    Each context's successor set is drawn uniformly (without replacement), its probabilities from a
    symmetric Dirichlet(`alpha`); contexts are drawn when first met, so only those the text visits exist.
    Returns the indices and the table {context tuple: (successor array, probability array)}.
    """
    rng = np.random.default_rng(seed)
    table: dict = {}
    out = np.empty(length, dtype=np.int64)
    out[:order] = rng.integers(0, vocab, size=order)
    uniform = rng.random(length)
    for t in range(order, length):
        key = tuple(out[t - order:t].tolist())
        entry = table.get(key)
        if entry is None:
            entry = table[key] = (rng.choice(vocab, size=successors, replace=False),
                                  np.cumsum(rng.dirichlet(np.full(successors, alpha))))
        out[t] = entry[0][min(int(np.searchsorted(entry[1], uniform[t] * entry[1][-1])), successors - 1)]
    return out, table


def sparse_floor(indices: np.ndarray, order: int, successors: int, start: int, alpha: float = 1.0) -> float:
    """The learnable floor: perplexity of the Bayes estimate that knows every context's successor set.

    Counted on positions before `start` (the training text), the posterior predictive of a successor w
    of context h is (c(h w) + alpha) / (c(h) + successors * alpha), exact under the Dirichlet prior the
    source was drawn from; scored on positions t >= max(start, order), as charlm's validation is.
    """
    ctx_counts: dict = {}
    pair_counts: dict = {}
    for t in range(order, start):
        h = tuple(indices[t - order:t].tolist())
        ctx_counts[h] = ctx_counts.get(h, 0) + 1
        pair_counts[h, int(indices[t])] = pair_counts.get((h, int(indices[t])), 0) + 1
    total = 0.0
    positions = range(max(start, order), len(indices))
    for t in positions:
        h = tuple(indices[t - order:t].tolist())
        c = pair_counts.get((h, int(indices[t])), 0)
        total -= math.log((c + alpha) / (ctx_counts.get(h, 0) + successors * alpha))
    return math.exp(total / len(positions))


def make_sparse_markov_text(order: int, vocab: int, successors: int, length: int = 200_000, seed: int = 0,
                            val_fraction: float = 0.1) -> tuple[str, float, float]:
    """The text, its learnable floor (`sparse_floor`) and its true-table perplexity on the validation part."""
    indices, table = sparse_markov_indices(order, vocab, successors, length, seed)
    n_val = max(2, int(round(length * val_fraction)))
    start = length - n_val + 1
    true = 0.0
    for t in range(start, length):
        succ, cum = table[tuple(indices[t - order:t].tolist())]
        j = int(np.flatnonzero(succ == indices[t])[0])
        true -= math.log(cum[j] - (cum[j - 1] if j else 0.0))
    return to_text(indices), sparse_floor(indices, order, successors, start), math.exp(true / (length - start))
