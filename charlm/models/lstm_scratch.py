"""Long short-term memory written by hand, with the textbook's names for every gate and parameter."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from charlm.data.vocab import to_onehot
from charlm.models.scratch_common import ScratchRecipe, check_scratch_config, normal, zeros
from charlm.models.base import CharModel


class LSTMScratch(ScratchRecipe, CharModel):
    """The textbook LSTM, one layer on one-hot input; the state is the pair (H, C):

        I_t = σ(X_t W_xi + H_{t-1} W_hi + b_i)         input gate
        F_t = σ(X_t W_xf + H_{t-1} W_hf + b_f)         forget gate
        O_t = σ(X_t W_xo + H_{t-1} W_ho + b_o)         output gate
        C~_t = tanh(X_t W_xc + H_{t-1} W_hc + b_c)     candidate memory cell
        C_t = F_t ⊙ C_{t-1} + I_t ⊙ C~_t
        H_t = O_t ⊙ tanh(C_t)
        Y_t = H_t W_hq + b_q

    These are torch.nn.LSTM's equations too (its gates are stacked as i, f, g, o
    with g = C~, and it splits each bias in two), so copied weights give equal logits.
    Two paths, as in RNNScratch: `onehot=True` multiplies one-hot vectors step by
    step; the default looks up the rows of the four input matrices for all
    steps at once, computes the four hidden products as one, and applies the
    output layer to all steps in one product. `dropout` acts on H_t before the
    output layer, in training mode only.
    """

    def __init__(self, vocab_size: int, hidden_size: int, onehot: bool = False, dropout: float = 0.0):
        super().__init__()
        V, H = vocab_size, hidden_size
        self.vocab_size, self.hidden_size, self.onehot, self.dropout = V, H, onehot, dropout
        self.W_xi, self.W_hi, self.b_i = normal(V, H), normal(H, H), zeros(H)  # input gate
        self.W_xf, self.W_hf, self.b_f = normal(V, H), normal(H, H), zeros(H)  # forget gate
        self.W_xo, self.W_ho, self.b_o = normal(V, H), normal(H, H), zeros(H)  # output gate
        self.W_xc, self.W_hc, self.b_c = normal(V, H), normal(H, H), zeros(H)  # candidate memory cell
        self.W_hq, self.b_q = normal(H, V), zeros(V)  # output layer

    @classmethod
    def from_config(cls, config, vocab_size: int) -> "LSTMScratch":
        check_scratch_config(config, "lstm-scratch")
        return cls(vocab_size, config.hidden, onehot=config.onehot, dropout=config.dropout)

    def begin_state(self, batch_size: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        zeros_ = torch.zeros(batch_size, self.hidden_size, dtype=self.W_hi.dtype, device=device or self.W_hi.device)
        return zeros_, zeros_.clone()

    def forward(self, X: torch.Tensor, state):
        if self.onehot:
            return self._forward_textbook(X, state)
        H, C = state  # (batch, hidden) each
        # onehot(X) @ W is a row lookup; do it for every gate and step before the loop
        XW = torch.cat([F.embedding(X, W) + b for W, b in ((self.W_xi, self.b_i), (self.W_xf, self.b_f),
                                                           (self.W_xo, self.b_o), (self.W_xc, self.b_c))],
                       -1)  # (batch, steps, 4 hidden)
        W_h = torch.cat([self.W_hi, self.W_hf, self.W_ho, self.W_hc], 1)  # (hidden, 4 hidden)
        hs = []
        for t in range(X.shape[1]):
            gates = XW[:, t] + H @ W_h  # (batch, 4 hidden)
            I, F_, O = torch.sigmoid(gates[:, :3 * self.hidden_size]).chunk(3, 1)  # (batch, hidden) each
            C_tilda = torch.tanh(gates[:, 3 * self.hidden_size:])
            C = F_ * C + I * C_tilda
            H = O * torch.tanh(C)
            hs.append(H)
        Hs = F.dropout(torch.stack(hs, 1), self.dropout, self.training)  # (batch, steps, hidden)
        return Hs @ self.W_hq + self.b_q, (H, C)  # (batch, steps, vocab)

    def _forward_textbook(self, X, state):
        H, C = state
        outputs = []
        for x in to_onehot(X, self.vocab_size, self.W_xi.dtype):  # x: (batch, vocab)
            I = torch.sigmoid(x @ self.W_xi + H @ self.W_hi + self.b_i)
            F_ = torch.sigmoid(x @ self.W_xf + H @ self.W_hf + self.b_f)
            O = torch.sigmoid(x @ self.W_xo + H @ self.W_ho + self.b_o)
            C_tilda = torch.tanh(x @ self.W_xc + H @ self.W_hc + self.b_c)
            C = F_ * C + I * C_tilda
            H = O * torch.tanh(C)
            outputs.append(F.dropout(H, self.dropout, self.training) @ self.W_hq + self.b_q)
        return torch.stack(outputs, 1), (H, C)
