"""The neural families by name: what `--model` and `--mix-neural` may name as a network.

A leaf of the models room: the mixture imports it to build its network part, and
charlm.models adds the counting families (kn, mix) to make MODELS, so that no
module has to import the registry from inside a function.
"""

from __future__ import annotations

from charlm.models.ffnn import FeedForwardNGram
from charlm.models.gru_scratch import GRUScratch
from charlm.models.lstm_scratch import LSTMScratch
from charlm.models.recurrent_nn import GRUModel, LSTMModel, RNNModel
from charlm.models.rnn_scratch import RNNScratch

NETWORKS = {
    "rnn-scratch": RNNScratch,
    "gru-scratch": GRUScratch,
    "lstm-scratch": LSTMScratch,
    "rnn": RNNModel,
    "gru": GRUModel,
    "lstm": LSTMModel,
    "ffn": FeedForwardNGram,  # Bengio's feed-forward n-gram network over the last --context characters
}
