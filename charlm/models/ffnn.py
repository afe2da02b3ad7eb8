"""A feed-forward n-gram network (Bengio et al. 2003): the last k characters -> one hidden layer -> softmax.

    x_{t-k+1} .. x_t ─► embedding each (E) ─► concatenated (k·E) ─► dense ─► tanh ─► dropout ─► dense ─► logits

It reads exactly k characters, no more: on a text whose memory is short (a
Markov-like text, best KN order k + 1 or less) it learns the table of those
contexts without fitting noise in longer ones, as a recurrent network does, and
the shared embeddings let it generalise across contexts that a count keeps apart.

A table of contexts: where what follows depends on the k characters together
and not on any one of them (a random sparse Markov source), a sum of per-character
vectors must build every context's own distribution out of interactions through
the tanh, and training sat on the unigram (measured: perplexity 55-57 of 60 after
3,000 minibatches, docs/auto.md). So each whole context also gets a row of its
own, added before the tanh: `table` rows, the context's id (base V+1, modulo the
rows: exact while (V+1)^k fits, hashed beyond) picking the row.

With `--embedding 0` each of the k positions has its own lookup of width hidden,
summed: the one-hot input concatenated and multiplied by one (k·V, hidden) matrix,
without building it (`--onehot` builds it: the textbook path, same numbers).

The state is the last k characters of each stream (batch, k), padded with an
extra symbol V before the text starts, so the trainer, the decoder and the
mixture carry it exactly as they carry a hidden state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from charlm.errors import CharlmError
from charlm.models.base import CharModel

DEFAULT_CONTEXT = 4  # characters read when neither --context nor --order says
TABLE_MAX = 1 << 14  # rows of the context table at most (hidden wide each): exact contexts up to (V+1)^k <= this


class FeedForwardNGram(CharModel):
    """Bengio's neural n-gram over the last `context` characters; `embedding` 0: per-position lookups."""

    def __init__(self, vocab_size: int, hidden_size: int, context: int = DEFAULT_CONTEXT, dropout: float = 0.0,
                 embedding: int = 0, tie_weights: bool = False, onehot: bool = False, table: int | None = None):
        super().__init__()
        if context < 1 or not 0 <= dropout < 1 or embedding < 0:
            raise CharlmError(f"ffn needs --context >= 1, --dropout in [0, 1), --embedding >= 0; "
                              f"got {context}, {dropout}, {embedding}")
        if tie_weights and embedding != hidden_size:
            raise CharlmError(f"--tie-weights needs --embedding equal to --hidden ({hidden_size}), got {embedding}")
        if onehot and embedding:
            raise CharlmError(f"--onehot feeds one-hot vectors, --embedding {embedding} learned vectors; give only one")
        self.vocab_size, self.hidden_size, self.context = vocab_size, hidden_size, context
        self.dropout, self.onehot = dropout, onehot
        pad = vocab_size + 1  # index V: before the start of the text
        if embedding:
            self.embedding = nn.Embedding(pad, embedding)
            nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
            self.proj = nn.Linear(context * embedding, hidden_size)
        else:  # one lookup (V+1, hidden) per position, summed: a product with the concatenated one-hot inputs
            self.embedding = None
            self.lookup = nn.Parameter(torch.empty(context, pad, hidden_size).uniform_(-0.1, 0.1))
            self.bias = nn.Parameter(torch.zeros(hidden_size))
        rows = min((vocab_size + 1) ** context, TABLE_MAX) if table is None else table
        self.table = nn.Embedding(rows, hidden_size) if rows else None  # one row per whole context
        if self.table is not None:
            nn.init.zeros_(self.table.weight)  # starts as the plain network; each row learns its context
        self.dense = nn.Linear(hidden_size, vocab_size)
        if tie_weights:  # the output layer reads the embedding's first V rows (not the padding row)
            self.dense.weight = self.embedding.weight
        self.tied = tie_weights

    @classmethod
    def from_config(cls, config, vocab_size: int) -> "FeedForwardNGram":
        context = getattr(config, "context", 0) or max(1, getattr(config, "order", DEFAULT_CONTEXT + 1) - 1)
        if getattr(config, "layers", 1) != 1:
            raise CharlmError(f"ffn has one hidden layer; it cannot use --layers {config.layers} (use --model gru)")
        return cls(vocab_size, config.hidden, context=context, dropout=config.dropout, embedding=config.embedding,
                   tie_weights=config.tie_weights, onehot=config.onehot)

    @classmethod
    def fit_recipe(cls, values: dict, config) -> dict:
        """One layer (it has no stack of layers)."""
        return {**values, "layers": 1}

    @classmethod
    def recipe_words(cls, config, order_note: str = "") -> str:
        context = getattr(config, "context", 0) or max(1, config.order - 1)
        return f"ffn {config.hidden} over {context} characters, dropout {config.dropout:g}"

    def describe(self) -> str:
        return f"{sum(p.numel() for p in self.parameters()):,} parameters, {self.context} characters of context"

    def begin_state(self, batch_size: int, device=None) -> torch.Tensor:
        """Nothing read yet: k padding symbols per stream (batch, k)."""
        return torch.full((batch_size, self.context), self.vocab_size, dtype=torch.long,
                          device=device or self.dense.weight.device)

    def forward(self, X: torch.Tensor, state: torch.Tensor):
        full = torch.cat([state.to(X.device), X], dim=1)  # (B, k + T)
        windows = full.unfold(1, self.context, 1)[:, 1:]  # (B, T, k): the k characters up to and including X[:, t]
        if self.embedding is not None:
            inputs = F.dropout(self.embedding(windows), self.dropout, self.training)  # (B, T, k, E)
            h = self.proj(inputs.flatten(2))
        elif self.onehot:  # the textbook product: concatenated one-hot rows times the stacked lookups
            onehot = F.one_hot(windows, self.vocab_size + 1).to(self.lookup.dtype).flatten(2)  # (B, T, k(V+1))
            h = onehot @ self.lookup.reshape(-1, self.hidden_size) + self.bias
        else:
            positions = torch.arange(self.context, device=X.device)
            h = self.lookup[positions, windows].sum(2) + self.bias  # (B, T, hidden)
        if self.table is not None:
            h = h + self.table(self._context_ids(windows))
        h = F.dropout(torch.tanh(h), self.dropout, self.training)
        weight = self.dense.weight[:self.vocab_size] if self.tied else self.dense.weight
        return F.linear(h, weight, self.dense.bias), full[:, -self.context:]  # (B, T, V), (B, k)

    def _context_ids(self, windows: torch.Tensor) -> torch.Tensor:
        """Row of each window (B, T, k) in the context table: its digits in base V+1, modulo the rows."""
        rows = self.table.num_embeddings
        ids = torch.zeros(windows.shape[:2], dtype=torch.long, device=windows.device)
        for j in range(self.context):
            ids = (ids * (self.vocab_size + 1) + windows[..., j]) % rows
        return ids

    def extra_repr(self) -> str:
        return f"context={self.context}"
