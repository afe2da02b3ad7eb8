"""Plain-numpy reference implementations, used as oracles in the tests."""

from charlm.reference.numpy_rnn import init_params, rnn_forward, rnn_loss_and_grads

__all__ = ["init_params", "rnn_forward", "rnn_loss_and_grads"]
