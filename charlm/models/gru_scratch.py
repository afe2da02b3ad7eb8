"""The gated recurrent unit written by hand, with the textbook's names for every gate and parameter."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from charlm.data.vocab import to_onehot
from charlm.models.scratch_common import ScratchRecipe, check_scratch_config, normal, zeros
from charlm.models.base import CharModel


class GRUScratch(ScratchRecipe, CharModel):
    """The textbook GRU, one layer on one-hot input:

        Z_t = σ(X_t W_xz + H_{t-1} W_hz + b_z)                 update gate
        R_t = σ(X_t W_xr + H_{t-1} W_hr + b_r)                 reset gate
        H~_t = tanh(X_t W_xh + (R_t ⊙ H_{t-1}) W_hh + b_h)     candidate state
        H_t = Z_t ⊙ H_{t-1} + (1 − Z_t) ⊙ H~_t
        O_t = H_t W_hq + b_q

    torch.nn.GRU (and cuDNN) applies the reset gate *after* the product and has
    a second candidate bias: H~_t = tanh(X_t W_xh + b_h + R_t ⊙ (H_{t-1} W_hh + b_hh)).
    The two are different functions, so no copying of weights makes the
    textbook GRU equal nn.GRU. `reset_after=True` selects the nn.GRU variant
    (adding the parameter b_hh); with it this model equals nn.GRU to rounding
    error given the same weights. The default, and what `--model gru-scratch`
    trains, is the textbook variant.

    Like RNNScratch it has two paths with the same numbers: `onehot=True`
    multiplies one-hot vectors step by step as the chapter does; the default
    looks up the rows of W_xz, W_xr, W_xh for all steps at once and applies the
    output layer to all steps in one product. `dropout` acts on H_t before the
    output layer, in training mode only.
    """

    def __init__(self, vocab_size: int, hidden_size: int, onehot: bool = False, dropout: float = 0.0,
                 reset_after: bool = False):
        super().__init__()
        V, H = vocab_size, hidden_size
        self.vocab_size, self.hidden_size, self.onehot, self.dropout = V, H, onehot, dropout
        self.reset_after = reset_after
        self.W_xz, self.W_hz, self.b_z = normal(V, H), normal(H, H), zeros(H)  # update gate
        self.W_xr, self.W_hr, self.b_r = normal(V, H), normal(H, H), zeros(H)  # reset gate
        self.W_xh, self.W_hh, self.b_h = normal(V, H), normal(H, H), zeros(H)  # candidate state
        if reset_after:
            self.b_hh = zeros(H)
        self.W_hq, self.b_q = normal(H, V), zeros(V)  # output layer

    @classmethod
    def from_config(cls, config, vocab_size: int) -> "GRUScratch":
        check_scratch_config(config, "gru-scratch")
        return cls(vocab_size, config.hidden, onehot=config.onehot, dropout=config.dropout)

    def begin_state(self, batch_size: int, device=None) -> torch.Tensor:
        return torch.zeros(batch_size, self.hidden_size, dtype=self.W_hh.dtype, device=device or self.W_hh.device)

    def _candidate(self, XH: torch.Tensor, R: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
        """H~_t from the input term XH = X_t W_xh + b_h, in the chosen variant."""
        if self.reset_after:
            return torch.tanh(XH + R * (H @ self.W_hh + self.b_hh))
        return torch.tanh(XH + (R * H) @ self.W_hh)

    def forward(self, X: torch.Tensor, state: torch.Tensor):
        if self.onehot:
            return self._forward_textbook(X, state)
        H = state  # (batch, hidden)
        # onehot(X) @ W is a row lookup; do it for every step before the loop
        XZR = torch.cat([F.embedding(X, self.W_xz) + self.b_z,
                         F.embedding(X, self.W_xr) + self.b_r], -1)  # (batch, steps, 2 hidden)
        XH = F.embedding(X, self.W_xh) + self.b_h  # (batch, steps, hidden)
        W_hzr = torch.cat([self.W_hz, self.W_hr], 1)  # (hidden, 2 hidden): both gates in one product
        hs = []
        for t in range(X.shape[1]):
            Z, R = torch.sigmoid(XZR[:, t] + H @ W_hzr).chunk(2, 1)  # (batch, hidden) each
            H = Z * H + (1 - Z) * self._candidate(XH[:, t], R, H)  # (batch, hidden)
            hs.append(H)
        Hs = F.dropout(torch.stack(hs, 1), self.dropout, self.training)  # (batch, steps, hidden)
        return Hs @ self.W_hq + self.b_q, H  # (batch, steps, vocab)

    def _forward_textbook(self, X, state):
        H = state
        outputs = []
        for x in to_onehot(X, self.vocab_size, self.W_xz.dtype):  # x: (batch, vocab)
            Z = torch.sigmoid(x @ self.W_xz + H @ self.W_hz + self.b_z)
            R = torch.sigmoid(x @ self.W_xr + H @ self.W_hr + self.b_r)
            H_tilda = self._candidate(x @ self.W_xh + self.b_h, R, H)
            H = Z * H + (1 - Z) * H_tilda
            outputs.append(F.dropout(H, self.dropout, self.training) @ self.W_hq + self.b_q)
        return torch.stack(outputs, 1), H
