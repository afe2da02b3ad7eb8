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

from ..errors import CharlmError
from ..ngram import KneserNey


class KNModel(nn.Module):
    """Interpolated Kneser-Ney character model of a given order, fitted by `fit_counts`, not by gradients."""

    def __init__(self, vocab_size: int, order: int = 5):
        super().__init__()
        if isinstance(order, bool) or not isinstance(order, int) or order < 1:
            raise CharlmError(f"--order must be a whole number of 1 or more, got {order!r}")
        self.vocab_size, self.order = vocab_size, order
        self.kn = KneserNey(order, vocab_size)
        # A zero-size, frozen parameter: it follows .to(device) and lets callers that ask
        # next(model.parameters()) for the device work, without adding anything to train.
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)

    @classmethod
    def from_config(cls, config, vocab_size: int) -> "KNModel":
        return cls(vocab_size, getattr(config, "order", 5))

    def fit_counts(self, train_indices) -> None:
        """Count the n-grams of the training text (replaces earlier counts)."""
        self.kn.fit(np.asarray(train_indices, dtype=np.int64))

    def begin_state(self, batch_size: int, device=None) -> torch.Tensor:
        """No context yet: an empty (batch, 0) index tensor."""
        return torch.zeros(batch_size, 0, dtype=torch.long, device=device or self.anchor.device)

    def forward(self, X: torch.Tensor, state: torch.Tensor):
        """Log-probabilities (B, T, V) of the next character after each position, and the new context."""
        m = self.order - 1
        full = torch.cat([state.to(X.device), X], dim=1).cpu().numpy()  # (B, L + T)
        L = state.shape[1]
        steps = []
        for t in range(X.shape[1]):
            end = L + t + 1
            steps.append(self.kn.log_probs_batch(full[:, max(0, end - m):end]))  # (B, V)
        out = torch.from_numpy(np.stack(steps, axis=1))  # (B, T, V) float64
        return out.to(device=X.device, dtype=torch.get_default_dtype()), self.advance(X, state)

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
        except (KeyError, ValueError, TypeError) as e:
            raise CharlmError(f"the n-gram counts in this checkpoint are damaged ({e})") from None
        if kn.order != self.order or kn.vocab_size != self.vocab_size:
            raise CharlmError(f"checkpoint counts are for order {kn.order} over {kn.vocab_size} characters, "
                              f"the model expects order {self.order} over {self.vocab_size}")
        self.kn = kn

    def extra_repr(self) -> str:
        return f"order={self.order}, vocab_size={self.vocab_size}"
