"""The textbook's recurrent network written by hand: our own parameters and our own loop over time."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from charlm.models.fastrnn import tanh_recurrence
from charlm.data.vocab import to_onehot
from charlm.models.scratch_common import ScratchRecipe, check_scratch_config, normal, zeros
from charlm.models.base import CharModel


class RNNScratch(ScratchRecipe, CharModel):
    """H_t = tanh(X_t W_xh + H_{t-1} W_hh + b_h);  O_t = H_t W_hq + b_q.

    Two paths give the same numbers: the textbook path (`onehot=True`) multiplies
    a one-hot matrix by W_xh at every step; the default path looks the rows up
    (a one-hot product *is* a row lookup) for all steps at once and applies the
    output layer to all steps in one product, leaving only H W_hh in the loop
    (`charlm.models.fastrnn.tanh_recurrence`, whose backward is written by hand).
    `dropout` acts on H_t before the output layer, in training mode only.
    """

    def __init__(self, vocab_size: int, hidden_size: int, onehot: bool = False, dropout: float = 0.0):
        super().__init__()
        self.vocab_size, self.hidden_size, self.onehot, self.dropout = vocab_size, hidden_size, onehot, dropout
        self.W_xh = normal(vocab_size, hidden_size)
        self.W_hh = normal(hidden_size, hidden_size)
        self.b_h = zeros(hidden_size)
        self.W_hq = normal(hidden_size, vocab_size)
        self.b_q = zeros(vocab_size)

    @classmethod
    def from_config(cls, config, vocab_size: int) -> "RNNScratch":
        check_scratch_config(config, "rnn-scratch")
        return cls(vocab_size, config.hidden, onehot=config.onehot, dropout=config.dropout)

    def begin_state(self, batch_size: int, device=None) -> torch.Tensor:
        return torch.zeros(batch_size, self.hidden_size, dtype=self.W_hh.dtype, device=device or self.W_hh.device)

    def forward(self, X: torch.Tensor, state: torch.Tensor):
        if self.onehot:
            return self._forward_textbook(X, state)
        XW = F.embedding(X, self.W_xh) + self.b_h  # (batch, steps, hidden): onehot(X) @ W_xh, as a lookup
        # H_t = tanh(XW_t + H_{t-1} W_hh) for every t, with a hand-written backward through time
        Hs, H = tanh_recurrence(XW, state, self.W_hh)  # Hs: (batch, steps, hidden), H: (batch, hidden)
        Hs = F.dropout(Hs, self.dropout, self.training)
        return Hs @ self.W_hq + self.b_q, H  # (batch, steps, vocab)

    def _forward_textbook(self, X, state):
        H = state
        outputs = []
        for x in to_onehot(X, self.vocab_size, self.W_xh.dtype):  # x: (batch, vocab)
            H = torch.tanh(x @ self.W_xh + H @ self.W_hh + self.b_h)
            outputs.append(F.dropout(H, self.dropout, self.training) @ self.W_hq + self.b_q)
        return torch.stack(outputs, 1), H
