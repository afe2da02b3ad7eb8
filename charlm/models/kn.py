"""The Kneser-Ney n-gram baseline as a model family: counts instead of weights, same interface as the RNNs.

The state is the recent context, the last (order - 1) character indices of
each stream, so the trainer, the decoder and compare carry it across calls
exactly as they carry a hidden state:

    state (B, <= order-1)   X (B, T)
    [ c  d  e  f ]  +  [ g  h  i ]   ->  predict after g from "d e f g" (order 5),
                                         after h from "e f g h", after i from "f g h i"
    new state = [ f g h i ]

`forward` returns log-probabilities in place of logits: log-softmax leaves a
normalised log-distribution unchanged, so cross-entropy, perplexity and
arg-max decoding need no special case.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from charlm.errors import CharlmError
from charlm.models.base import CharModel
from charlm.models.kneser_ney import KneserNey
from charlm.models.limits import MAX_ORDER


class KNModel(CharModel):
    """Interpolated Kneser-Ney character model of a given order, fitted by `fit_counts`, not by gradients."""

    counts_ngrams = True
    fast_targets = True

    def __init__(self, vocab_size: int, order: int = 5, modified: bool = False):
        super().__init__()
        if isinstance(order, bool) or not isinstance(order, int) or order < 1:
            raise CharlmError(f"--order must be a whole number of 1 or more, got {order!r}")
        if order > MAX_ORDER:
            raise CharlmError(f"--order must be at most {MAX_ORDER} (character n-grams gain nothing beyond; "
                              f"6-8 is usually best), got {order}")
        self.vocab_size, self.order = vocab_size, order
        self.modified = modified  # --kn-discounts 3: three discounts per level
        self.kn = KneserNey(order, vocab_size, modified=modified)
        # A zero-size, frozen parameter: it follows .to(device) and lets callers that ask
        # next(model.parameters()) for the device work, without adding anything to train.
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)

    @classmethod
    def from_config(cls, config, vocab_size: int) -> "KNModel":
        return cls(vocab_size, getattr(config, "order", 5), getattr(config, "kn_discount_kinds", 1) == 3)

    @classmethod
    def recipe_words(cls, config, order_note: str = "") -> str:
        return f"KN-{config.order}{' modified' if getattr(config, 'kn_discount_kinds', 1) == 3 else ''}{order_note}"

    def describe(self) -> str:
        return f"order {self.order}{', modified (3 discounts a level)' if self.modified else ''}, fitted by counting"

    def fit_counts(self, train_indices, discounts=None, should_stop=None) -> bool:
        """Count the n-grams of the training text (replaces earlier counts), then use `discounts` if given.

        `discounts` are the ones fitted on the tuning slice (--kn-discount); empty or None
        keeps the closed-form estimate. `should_stop()` is asked between orders; when it
        turns true, counting stops with charlm.models.kn_counts.CountingInterrupted (a
        CharlmError) and the earlier counts stay.
        """
        train = np.asarray(train_indices, dtype=np.int64)
        if train.size < self.order:
            raise CharlmError(f"--order {self.order} is longer than the training text ({train.size} characters); "
                              "use a lower --order or a longer text")
        self.kn.modified = self.modified
        self.kn.fit(train, should_stop=should_stop)
        if discounts:
            self.set_discounts([float(d) for d in discounts])
        return True

    def set_discounts(self, discounts) -> None:
        """Use these discounts (one per order, e.g. `kn_tuning.choose_order(...).discounts`), also after a refit."""
        try:
            self.kn.set_discounts(discounts)
        except ValueError as e:
            raise CharlmError(f"bad n-gram discounts: {e}") from None

    def begin_state(self, batch_size: int, device=None) -> torch.Tensor:
        """No context yet: an empty (batch, 0) index tensor."""
        return torch.zeros(batch_size, 0, dtype=torch.long, device=device or self.anchor.device)

    def forward(self, X: torch.Tensor, state: torch.Tensor):
        """Log-probabilities (B, T, V) of the next character after each position, and the new context."""
        full = torch.cat([state.to(X.device), X], dim=1).cpu().numpy()  # (B, L + T)
        out = torch.from_numpy(self.kn.stream_log_probs(full, state.shape[1]))  # (B, T, V) float64
        return out.to(device=X.device, dtype=torch.get_default_dtype()), self.advance(X, state)

    def target_log_probs(self, X: torch.Tensor, Y: torch.Tensor, state: torch.Tensor, with_stats: bool = False):
        """log P(Y[b, t] | context up to X[b, t]) (B, T) float64 and the new context, without V-wide rows.

        The scoring fast path: the same numbers as gathering Y from `forward`'s output,
        but it never builds a (B, T, V) array.  Evaluation may call it on any model that
        has it (kn, mix) in place of forward + cross-entropy.  `with_stats` adds
        `context_stats`' pair: (logp, (level, total), state).
        """
        full = torch.cat([state.to(X.device), X], dim=1).cpu().numpy()  # (B, L + T)
        out = self.kn.stream_log_probs(full, state.shape[1], Y.cpu().numpy(), with_stats=with_stats)
        if not with_stats:
            return torch.from_numpy(out).to(X.device), self.advance(X, state)
        logp, level, total = (torch.from_numpy(a).to(X.device) for a in out)
        return logp, (level, total), self.advance(X, state)

    def forward_with_stats(self, X: torch.Tensor, state: torch.Tensor):
        """`forward`'s log-probabilities, `context_stats`' (level, total) and the new context, from one lookup."""
        full = torch.cat([state.to(X.device), X], dim=1).cpu().numpy()
        logp, level, total = self.kn.stream_log_probs(full, state.shape[1], with_stats=True)
        logp = torch.from_numpy(logp).to(device=X.device, dtype=torch.get_default_dtype())
        stats = (torch.from_numpy(level).to(X.device), torch.from_numpy(total).to(X.device))
        return logp, stats, self.advance(X, state)

    def context_stats(self, X: torch.Tensor, state: torch.Tensor):
        """(longest seen n-gram level, that context's count a_k(h .)) after each position, each (B, T).

        Level 0 and count 0: no context seen at all (an unfitted model).  The mixture
        buckets its weights by these, as they depend on the context only.
        """
        full = torch.cat([state.to(X.device), X], dim=1).cpu().numpy()
        level, total = self.kn.stream_context_stats(full, state.shape[1])
        return torch.from_numpy(level).to(X.device), torch.from_numpy(total).to(X.device)

    def advance(self, X: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """The context after reading X, without computing any probability."""
        full = torch.cat([state.to(X.device), X], dim=1)  # (B, L + T)
        m = min(self.order - 1, full.shape[1])
        return full[:, full.shape[1] - m:]  # (B, <= order-1)

    # The counts travel inside state_dict() as "extra state": plain ints, floats and
    # int64 tensors, which torch.load(weights_only=True) accepts.
    def get_extra_state(self) -> dict:
        return self.kn.state_dict()

    def set_extra_state(self, state: dict) -> None:
        try:
            kn = KneserNey.from_state_dict(state)
        except (KeyError, ValueError, TypeError, IndexError, RuntimeError) as e:
            raise CharlmError(f"the n-gram counts in this checkpoint are damaged ({e})") from None
        if kn.order != self.order or kn.vocab_size != self.vocab_size:
            raise CharlmError(f"checkpoint counts are for order {kn.order} over {kn.vocab_size} characters, "
                              f"the model expects order {self.order} over {self.vocab_size}")
        self.kn = kn

    def extra_repr(self) -> str:
        return f"order={self.order}, vocab_size={self.vocab_size}"
