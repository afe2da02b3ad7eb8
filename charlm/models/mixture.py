"""A neural model interpolated with the Kneser-Ney n-gram: p = λ·p_neural + (1−λ)·p_kn.

The two models make different mistakes (the n-gram remembers exact phrases,
the network generalises across similar contexts), so their average predicts
better than either. λ is fixed by `--mix-weight`; it is never fitted on the
validation text.

Training and evaluation differ, as with dropout:

    model.train():  logits of the neural part alone   -> the trainer's loss trains it as usual
    model.eval():   log(λ·softmax(neural) + (1−λ)·p_kn) -> validation, generation, compare

The n-gram part is fitted by counting (`fit_counts`) on the training text;
its counts travel in the checkpoint with the network's weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CharlmError
from .kn import KNModel


class MixtureModel(nn.Module):
    """Linear interpolation of a registered neural model (`--mix-neural`) and a KN n-gram (`--order`)."""

    def __init__(self, neural: nn.Module, kn: KNModel, weight: float):
        super().__init__()
        if not 0.0 <= weight <= 1.0:
            raise CharlmError(f"--mix-weight must lie in [0, 1], got {weight}")
        self.neural, self.kn, self.weight = neural, kn, float(weight)

    @classmethod
    def from_config(cls, config, vocab_size: int) -> "MixtureModel":
        from . import MODELS  # here, not at the top: the registry imports this module

        name = getattr(config, "mix_neural", "rnn")
        if name not in MODELS or hasattr(MODELS[name], "fit_counts"):
            usable = [n for n, m in MODELS.items() if not hasattr(m, "fit_counts")]
            raise CharlmError(f"--mix-neural must name a neural model ({', '.join(usable)}), got {name!r}")
        neural = MODELS[name].from_config(config, vocab_size)
        return cls(neural, KNModel.from_config(config, vocab_size), getattr(config, "mix_weight", 0.5))

    def fit_counts(self, train_indices) -> None:
        """Count the n-grams of the training text for the KN part (the network is trained by the trainer)."""
        self.kn.fit_counts(train_indices)

    def begin_state(self, batch_size: int, device=None):
        return self.neural.begin_state(batch_size, device), self.kn.begin_state(batch_size, device)

    def forward(self, X: torch.Tensor, state):
        neural_state, context = state
        logits, neural_state = self.neural(X, neural_state)  # (B, T, V)
        if self.training:
            return logits, (neural_state, self.kn.advance(X, context))
        kn_logp, context = self.kn(X, context)  # (B, T, V), already normalised
        # log(λ p_n + (1-λ) p_kn) computed in log space; log 0 = -inf makes λ = 0 or 1 exact
        log_w = math.log(self.weight) if self.weight > 0 else -math.inf
        log_1mw = math.log1p(-self.weight) if self.weight < 1 else -math.inf
        mixed = torch.logaddexp(F.log_softmax(logits, dim=-1) + log_w, kn_logp.to(logits.dtype) + log_1mw)
        return mixed, (neural_state, context)  # (B, T, V)

    def extra_repr(self) -> str:
        return f"weight={self.weight}"
