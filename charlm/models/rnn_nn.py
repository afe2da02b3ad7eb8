"""The textbook's concise recurrent network: torch.nn.RNN on one-hot inputs and a dense output layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RNNModel(nn.Module):
    """torch.nn.RNN (tanh) + nn.Linear, behind the same interface as the scratch model."""

    def __init__(self, vocab_size: int, hidden_size: int):
        super().__init__()
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        self.rnn = nn.RNN(input_size=vocab_size, hidden_size=hidden_size, batch_first=True)
        self.dense = nn.Linear(hidden_size, vocab_size)

    @classmethod
    def from_config(cls, config, vocab_size: int) -> "RNNModel":
        return cls(vocab_size, config.hidden)

    def begin_state(self, batch_size: int, device=None) -> torch.Tensor:
        weight = self.dense.weight
        return torch.zeros(1, batch_size, self.hidden_size, dtype=weight.dtype, device=device or weight.device)

    def forward(self, X: torch.Tensor, state: torch.Tensor):
        inputs = F.one_hot(X, self.vocab_size).to(self.dense.weight.dtype)  # (batch, steps, vocab)
        Y, state = self.rnn(inputs, state)  # Y: (batch, steps, hidden)
        return self.dense(Y), state  # (batch, steps, vocab)
