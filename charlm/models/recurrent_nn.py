"""The concise recurrent networks: torch.nn.RNN, GRU or LSTM, an optional embedding, and a dense output layer.

    index ─► [lookup: column of W_ih (gates·H) │ embedding (E) ─► dropout] ─► layer 1 ─► dropout ─► … ─► layer L ─► dropout ─► dense ─► logits

With `embedding == 0` the input is the textbook's one-hot vector, and
onehot(x) @ W_ih^T is column x of the first layer's input weights W_ih
(gates·hidden, vocab). The model keeps W_ih^T as `lookup`, an nn.Embedding
(vocab, gates·hidden), and the first torch layer takes the looked-up column
as its input, through an identity as its own input weights (a fixed buffer,
not a parameter: an exact product, it adds zeros). Two paths give the same numbers:

    onehot=True   the textbook path: one-hot tensors (batch, steps, vocab) multiplied by W_ih^T
    onehot=False  the default path: the columns are looked up; no one-hot tensor is ever built

Where the recurrence runs (the only device-specific switch):

    one-layer rnn, lookup path, on the CPU  charlm.models.fastrnn.tanh_recurrence (a hand-written backward,
                                            measured faster there than torch's kernel)
    everything else, and every model on     torch's own nn.RNN / GRU / LSTM modules (cuDNN on a GPU);
    CUDA                                    their weights sit in one flat chunk (flatten_parameters
                                            runs whenever the model moves)

Checkpoints written before `lookup` existed stored W_ih as `rnn.weight_ih_l0`;
`load_state_dict` accepts them (see `upgrade_state_dict`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from charlm.errors import CharlmError
from charlm.models.fastrnn import tanh_recurrence
from charlm.models.base import CharModel

# cell name -> (torch module, gates per unit)
_CELLS = {"rnn": (nn.RNN, 1), "gru": (nn.GRU, 3), "lstm": (nn.LSTM, 4)}


def _column_input(module: nn.RNNBase) -> torch.Tensor:
    """Take the first input weights W_ih (gates·hidden, vocab) out of `module`; return them as rows (vocab, gates·hidden).

    In their place the module gets a fixed identity (gates·hidden)² buffer and
    that input size, so it takes looked-up columns as its input. The buffer is
    not saved (it is rebuilt), not a parameter (not counted, not optimised),
    and moves and flattens with the module's weights, so cuDNN sees one chunk.
    The module was built with the vocabulary as input size, so the random
    initialisation draws the same numbers as a plain one-hot nn module.
    """
    W_ih = module.weight_ih_l0.detach()  # (gates*hidden, vocab)
    n = W_ih.shape[0]
    del module.weight_ih_l0
    module.input_size = n
    eye = torch.eye(n, dtype=W_ih.dtype, device=W_ih.device)  # (n, n)
    module.register_buffer("weight_ih_l0", eye, persistent=False)
    setattr(module, "weight_ih_l0", eye)  # RNNBase.__setattr__ updates the module's list of kernel weights
    module.flatten_parameters()
    return W_ih.t().contiguous()


class RecurrentNN(CharModel):
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
        module, self.gates = _CELLS[self.cell]
        self.vocab_size, self.hidden_size, self.layers = vocab_size, hidden_size, layers
        self.dropout, self.onehot = dropout, onehot
        self.embedding = nn.Embedding(vocab_size, embedding) if embedding else None
        if self.embedding is not None:
            # small uniform values (word_language_model's choice): N(0, 1) rows would swamp a tied output layer
            nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        # nn modules apply their own dropout only between layers (and warn if asked to with one layer)
        rnn = module(embedding or vocab_size, hidden_size, num_layers=layers,
                     dropout=dropout if layers > 1 else 0.0, batch_first=True)
        # registered before `rnn`, so the parameters keep the order they had when W_ih lived in `rnn`
        self.lookup = None if embedding else nn.Embedding.from_pretrained(_column_input(rnn), freeze=False)
        self.rnn = rnn
        self.dense = nn.Linear(hidden_size, vocab_size)
        if tie_weights:
            self.dense.weight = self.embedding.weight  # (vocab, hidden): one matrix, two uses

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
        elif self.onehot:
            # the textbook product onehot(X) @ W_ih^T, for all steps at once
            inputs = F.one_hot(X, self.vocab_size).to(self.lookup.weight.dtype) @ self.lookup.weight  # (batch, steps, gates*hidden)
        else:
            inputs = self.lookup(X)  # (batch, steps, gates*hidden): column X of W_ih, no one-hot
            if self.cell == "rnn" and self.layers == 1 and X.device.type == "cpu":
                Y, h = self._tanh_on_cpu(inputs, state)
                return self.dense(F.dropout(Y, self.dropout, self.training)), h
        Y, state = self.rnn(inputs, state)  # (batch, steps, hidden)
        return self.dense(F.dropout(Y, self.dropout, self.training)), state  # (batch, steps, vocab)

    def _tanh_on_cpu(self, XW: torch.Tensor, state):
        """One tanh layer through the hand-written recurrence (charlm.models.fastrnn), faster than torch's kernel on the CPU."""
        rnn = self.rnn
        Y, h = tanh_recurrence(XW + (rnn.bias_ih_l0 + rnn.bias_hh_l0), state[0], rnn.weight_hh_l0.t())
        return Y, h.unsqueeze(0)  # (batch, steps, hidden), (1, batch, hidden)

    def load_state_dict(self, state_dict, strict: bool = True, **kwargs):
        """torch's load_state_dict, also accepting checkpoints that stored W_ih as `rnn.weight_ih_l0`."""
        return super().load_state_dict(upgrade_state_dict(self, state_dict), strict=strict, **kwargs)


def upgrade_state_dict(model: nn.Module, state_dict: dict) -> dict:
    """`state_dict` with the one-hot models' W_ih under its present name (`lookup.weight`, transposed).

    Before the lookup was an nn.Embedding, the first layer's input weights
    (gates·hidden, vocab) were stored as `rnn.weight_ih_l0`; this finds every
    RecurrentNN inside `model` (a mixture holds one) and renames its entry.
    """
    renames = {}
    for prefix, module in model.named_modules():
        if isinstance(module, RecurrentNN) and module.lookup is not None:
            dot = f"{prefix}." if prefix else ""
            old, new = f"{dot}rnn.weight_ih_l0", f"{dot}lookup.weight"
            value = state_dict.get(old)
            if isinstance(value, torch.Tensor) and value.dim() == 2 and new not in state_dict:
                renames[old] = new
    if not renames:
        return state_dict
    return {renames.get(k, k): (v.t() if k in renames else v) for k, v in state_dict.items()}


class RNNModel(RecurrentNN):
    """torch.nn.RNN (tanh) + nn.Linear: the textbook's concise RNN."""

    cell = "rnn"


class GRUModel(RecurrentNN):
    """torch.nn.GRU + nn.Linear (note: nn.GRU applies the reset gate after W_hh; see GRUScratch)."""

    cell = "gru"


class LSTMModel(RecurrentNN):
    """torch.nn.LSTM + nn.Linear; the state is the pair (h, c)."""

    cell = "lstm"
