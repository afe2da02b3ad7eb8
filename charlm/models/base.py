"""The one interface every model family answers, with the defaults of a pure network.

    forward(X, state) -> (logits, state)        X (batch, steps) indices; logits (batch, steps, vocab)
    begin_state(batch_size, device)             the state before the first character
    target_log_probs(X, Y, state)               log P(Y | ...) (batch, steps) float64, and the new state
    fit_counts(indices, discounts=...)          count n-grams (kn, mix); a network has none: False
    tune(tune_indices, how, device, log)        fit what the tuning slice decides (mix: λ); else None
    describe()                                  one line for the training log

The class attributes answer config-level questions before a model is built (the
auto recipe, the mixture's choice of network), so no caller compares model names.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CharModel(nn.Module):
    """Base of every registered model: the capability hooks and their defaults for a pure network."""

    counts_ngrams = False  # fitted (partly) by counting n-grams: fit_counts does work, best.pt is recounted
    fast_targets = False  # target_log_probs is cheaper than forward (no vocabulary-wide rows): validation uses it

    def fit_counts(self, train_indices, discounts=None, should_stop=None) -> bool:
        """Count the n-grams of the training text, then use `discounts` if given; False: nothing to count."""
        return False

    def tune(self, tune_indices, how: str = "none", device=None, log=None) -> dict | None:
        """Fit what is fitted on the tuning slice (never on validation text); None: nothing to fit.

        Returns {"tune_ppl": the slice's perplexity after fitting, other figures for metrics.jsonl ...}.
        """
        return None

    def target_log_probs(self, X: torch.Tensor, Y: torch.Tensor, state):
        """log P(Y[b, t] | X[b, :t+1]) (B, T) float64 and the new state, gathered from `forward`."""
        logits, state = self(X, state)  # (B, T, V)
        return F.log_softmax(logits.double(), dim=-1).gather(-1, Y.unsqueeze(-1)).squeeze(-1), state

    def describe(self) -> str:
        """What the model is, in a few words (its size)."""
        return f"{sum(p.numel() for p in self.parameters()):,} parameters"

    @classmethod
    def uses_ngram(cls) -> bool:
        """Whether this family has an n-gram part whose order the auto recipe chooses on the tuning slice."""
        return cls.counts_ngrams

    @classmethod
    def fit_recipe(cls, values: dict, config) -> dict:
        """The auto recipe's `values` made fit for this family under `config` (its own choices; the defaults: none)."""
        return values

    @classmethod
    def recipe_words(cls, config, order_note: str = "") -> str:
        """How the auto recipe's line names this family under `config` ('gru 128, dropout 0.5')."""
        return f"{config.model} {config.hidden}, dropout {config.dropout:g}"
