"""The concise recurrent networks: torch.nn.RNN, GRU or LSTM, an optional embedding, and a dense output layer.

    index ─► [one-hot (V) │ embedding (E)] ─► dropout* ─► layer 1 ─► dropout ─► … ─► layer L ─► dropout ─► dense ─► logits
                                              *embedding only

With `embedding == 0` the input is the textbook's one-hot vector, so the first
layer's input weights `rnn.weight_ih_l0` have shape (gates·hidden, vocab) and
there are two paths to the same numbers:

    onehot=True   the textbook path: one-hot tensors (batch, steps, vocab) fed to the nn module
    onehot=False  the default path: onehot(x) @ W_ih^T is column x of W_ih, so the columns are
                  looked up for all steps and handed to torch's own recurrent kernel in place of
                  the inputs, with an identity matrix as first-layer input weights (an exact
                  product: it adds zeros); no one-hot tensor is ever built

Both paths use the same parameters, so a checkpoint trained on one runs on the other.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import _VF, nn

from ..errors import CharlmError
from ..fastrnn import tanh_recurrence

# cell name -> (torch module, gates per unit, the fused kernel the module itself calls)
_CELLS = {
    "rnn": (nn.RNN, 1, _VF.rnn_tanh),
    "gru": (nn.GRU, 3, _VF.gru),
    "lstm": (nn.LSTM, 4, _VF.lstm),
}


class RecurrentNN(nn.Module):
    """torch.nn.RNN / GRU / LSTM (`cell`) with `layers`, `dropout`, `embedding` and `tie_weights`.

    Dropout (training mode only) acts on the embedded input, between stacked
    layers and before the output layer. `tie_weights` makes the output layer
    use the embedding matrix (V, E) as its weight, so it needs E == hidden; no
    projection is added.
    """

    cell = "rnn"

    def __init__(self, vocab_size: int, hidden_size: int, layers: int = 1, dropout: float = 0.0,
                 embedding: int = 0, tie_weights: bool = False, onehot: bool = False):
        super().__init__()
        if layers < 1 or not 0 <= dropout < 1 or embedding < 0:
            raise CharlmError(f"need --layers >= 1, --dropout in [0, 1), --embedding >= 0; "
                              f"got {layers}, {dropout}, {embedding}")
        if tie_weights and embedding != hidden_size:
            raise CharlmError(f"--tie-weights needs --embedding equal to --hidden ({hidden_size}), got {embedding}")
        module, self.gates, self._kernel = _CELLS[self.cell]
        self.vocab_size, self.hidden_size, self.layers = vocab_size, hidden_size, layers
        self.dropout, self.onehot = dropout, onehot
        self.embedding = nn.Embedding(vocab_size, embedding) if embedding else None
        if self.embedding is not None:
            # small uniform values (word_language_model's choice): N(0, 1) rows would swamp a tied output layer
            nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        # nn modules apply their own dropout only between layers (and warn if asked to with one layer)
        self.rnn = module(embedding or vocab_size, hidden_size, num_layers=layers,
                          dropout=dropout if layers > 1 else 0.0, batch_first=True)
        self.dense = nn.Linear(hidden_size, vocab_size)
        if tie_weights:
            self.dense.weight = self.embedding.weight  # (vocab, hidden): one matrix, two uses
        self._eye = None  # identity for the lookup path, made on first use in the right dtype and device

    @classmethod
    def from_config(cls, config, vocab_size: int) -> "RecurrentNN":
        return cls(vocab_size, config.hidden, layers=config.layers, dropout=config.dropout,
                   embedding=config.embedding, tie_weights=config.tie_weights, onehot=config.onehot)

    def begin_state(self, batch_size: int, device=None):
        weight = self.dense.weight
        h = torch.zeros(self.layers, batch_size, self.hidden_size, dtype=weight.dtype, device=device or weight.device)
        return (h, h.clone()) if self.cell == "lstm" else h

    def forward(self, X: torch.Tensor, state):
        if self.embedding is not None:
            inputs = F.dropout(self.embedding(X), self.dropout, self.training)  # (batch, steps, embedding)
            Y, state = self.rnn(inputs, state)  # (batch, steps, hidden)
        elif self.onehot:
            inputs = F.one_hot(X, self.vocab_size).to(self.dense.weight.dtype)  # (batch, steps, vocab)
            Y, state = self.rnn(inputs, state)
        else:
            Y, state = self._forward_lookup(X, state)
        return self.dense(F.dropout(Y, self.dropout, self.training)), state  # (batch, steps, vocab)

    def _forward_lookup(self, X: torch.Tensor, state):
        """The one-hot model without one-hot vectors: the kernel nn.RNN/GRU/LSTM call, fed looked-up columns."""
        weights = [w for layer in self.rnn.all_weights for w in layer]  # W_ih, W_hh, b_ih, b_hh per layer
        if self.cell == "rnn" and self.layers == 1:
            # one tanh layer: the hand-written recurrence (charlm.fastrnn) beats torch's kernel on the CPU
            W_ih, W_hh, b_ih, b_hh = weights
            XW = F.embedding(X, W_ih.t()) + (b_ih + b_hh)  # (batch, steps, hidden)
            Y, h = tanh_recurrence(XW, state[0], W_hh.t())
            return Y, h.unsqueeze(0)  # (batch, steps, hidden), (1, batch, hidden)
        XW = F.embedding(X, weights[0].t())  # (batch, steps, gates*hidden) = onehot(X) @ W_ih^T
        n = self.gates * self.hidden_size
        if self._eye is None or self._eye.dtype != XW.dtype or self._eye.device != XW.device:
            self._eye = torch.eye(n, dtype=XW.dtype, device=XW.device)  # (n, n)
        args = (XW, state, [self._eye] + weights[1:], True, self.layers, self.rnn.dropout, self.training, False, True)
        if self.cell == "lstm":
            Y, h, c = self._kernel(*args)
            return Y, (h, c)
        return self._kernel(*args)  # Y: (batch, steps, hidden), h: (layers, batch, hidden)


class RNNModel(RecurrentNN):
    """torch.nn.RNN (tanh) + nn.Linear: the textbook's concise RNN."""

    cell = "rnn"


class GRUModel(RecurrentNN):
    """torch.nn.GRU + nn.Linear (note: nn.GRU applies the reset gate after W_hh; see GRUScratch)."""

    cell = "gru"


class LSTMModel(RecurrentNN):
    """torch.nn.LSTM + nn.Linear; the state is the pair (h, c)."""

    cell = "lstm"
