"""Model families behind one interface: `forward(X, state) -> (logits, state)` and `begin_state(batch_size)`.

X is a LongTensor of character indices, (batch, num_steps); logits are
(batch, num_steps, vocab). Every family derives from charlm.models.base.CharModel,
whose capability hooks (`fit_counts`, `tune`, `target_log_probs`, `counts_ngrams`)
the trainer, the decoder and compare ask instead of the model's name. A new network
is one new file added to NETWORKS (charlm/models/registry.py); a new counting
family one added to MODELS below.
"""

from __future__ import annotations

import contextlib

import torch

from charlm.errors import CharlmError
from charlm.models.gru_scratch import GRUScratch
from charlm.models.kn import KNModel
from charlm.models.lstm_scratch import LSTMScratch
from charlm.models.mixture import MixtureModel
from charlm.models.recurrent_nn import GRUModel, LSTMModel, RNNModel, upgrade_state_dict
from charlm.models.registry import NETWORKS
from charlm.models.rnn_scratch import RNNScratch

MODELS = {**NETWORKS, "kn": KNModel, "mix": MixtureModel}  # the order of --model's choices


def build_model(config, vocab_size: int) -> torch.nn.Module:
    """A freshly initialised model of the family named by `config.model`."""
    if config.model not in MODELS:
        raise CharlmError(f"unknown model {config.model!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[config.model].from_config(config, vocab_size)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """Run a block with `model` in eval mode (no dropout), then give it back the mode it had."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def detach_state(state):
    """Cut the graph behind a hidden state (a tensor or a tuple of them) between consecutive minibatches."""
    if isinstance(state, torch.Tensor):
        return state.detach()
    return tuple(detach_state(s) for s in state)


def count_parameters(model: torch.nn.Module) -> int:
    """Number of weights (a counting model has none: its counts are buffers)."""
    return sum(p.numel() for p in model.parameters())
