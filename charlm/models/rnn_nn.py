"""The concise RNN now lives in recurrent_nn.py beside the GRU and LSTM; this name keeps old imports working."""

from .recurrent_nn import RNNModel

__all__ = ["RNNModel"]
