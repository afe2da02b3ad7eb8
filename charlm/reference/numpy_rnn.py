"""Plain-numpy RNN with hand-written backpropagation through time.

This is the oracle for the PyTorch from-scratch RNN: no autograd, just the
textbook equations, in float64.

Shapes: V = vocabulary size, H = hidden size, B = batch, T = time steps.

    H_t = tanh(onehot(X[:, t]) @ W_xh + H_{t-1} @ W_hh + b_h)
    O_t = H_t @ W_hq + b_q
    loss = mean cross-entropy over all B*T characters
"""

import numpy as np

PARAM_NAMES = ("W_xh", "W_hh", "b_h", "W_hq", "b_q")


def init_params(vocab_size, hidden, seed=0):
    """Textbook init: weights ~ normal(0, 0.01), biases zero, all float64."""
    rng = np.random.default_rng(seed)
    V, H = vocab_size, hidden
    return {
        "W_xh": rng.normal(0.0, 0.01, size=(V, H)),  # (V, H)
        "W_hh": rng.normal(0.0, 0.01, size=(H, H)),  # (H, H)
        "b_h": np.zeros(H),  # (H,)
        "W_hq": rng.normal(0.0, 0.01, size=(H, V)),  # (H, V)
        "b_q": np.zeros(V),  # (V,)
    }


def _one_hot(idx, V):
    """One-hot rows in float64 so that matmuls stay in double precision."""
    return np.eye(V, dtype=np.float64)[idx]  # (B, V)


def rnn_forward(params, X, h0):
    """Run the RNN over X (B, T) from state h0 (B, H).

    Returns logits (B, T, V) and hidden states hs (B, T, H), where hs[:, t]
    is H_t (the state after reading X[:, t]).
    """
    X = np.asarray(X)
    W_xh, W_hh, b_h = params["W_xh"], params["W_hh"], params["b_h"]
    W_hq, b_q = params["W_hq"], params["b_q"]
    V, Hd = W_xh.shape
    B, T = X.shape
    hs = np.empty((B, T, Hd), dtype=np.float64)  # (B, T, H)
    logits = np.empty((B, T, V), dtype=np.float64)  # (B, T, V)
    h = np.asarray(h0, dtype=np.float64)  # (B, H)
    for t in range(T):
        x = _one_hot(X[:, t], V)  # (B, V)
        h = np.tanh(x @ W_xh + h @ W_hh + b_h)  # (B, H)
        hs[:, t] = h
        logits[:, t] = h @ W_hq + b_q  # (B, V)
    return logits, hs


def _log_softmax(logits):
    """Log-softmax over the last axis; subtracting the max avoids overflow."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def rnn_loss_and_grads(params, X, Y, h0):
    """Mean cross-entropy loss and its gradients by hand-written BPTT.

    Returns (loss, grads, hT): grads has the keys of params plus "h0";
    hT (B, H) is the final hidden state, to carry into the next batch.
    """
    X = np.asarray(X)
    Y = np.asarray(Y)
    h0 = np.asarray(h0, dtype=np.float64)  # (B, H)
    W_hh, W_hq = params["W_hh"], params["W_hq"]
    V = params["W_xh"].shape[0]
    B, T = X.shape
    N = B * T  # the loss is a mean over every character

    logits, hs = rnn_forward(params, X, h0)  # (B, T, V), (B, T, H)
    logp = _log_softmax(logits)  # (B, T, V)
    b_idx, t_idx = np.meshgrid(np.arange(B), np.arange(T), indexing="ij")
    loss = float(-logp[b_idx, t_idx, Y].mean())

    # d loss / d logits = (softmax - onehot(Y)) / N, the classic shortcut.
    dO = np.exp(logp)  # (B, T, V)
    dO[b_idx, t_idx, Y] -= 1.0
    dO /= N

    grads = {k: np.zeros_like(params[k], dtype=np.float64) for k in PARAM_NAMES}
    dh_next = np.zeros_like(h0)  # (B, H) gradient flowing back from step t+1
    for t in reversed(range(T)):
        h = hs[:, t]  # (B, H)
        h_prev = hs[:, t - 1] if t > 0 else h0  # (B, H)
        do = dO[:, t]  # (B, V)
        grads["W_hq"] += h.T @ do  # (H, V)
        grads["b_q"] += do.sum(axis=0)  # (V,)
        # H_t feeds both the output at t and the recurrence into t+1.
        dh = do @ W_hq.T + dh_next  # (B, H)
        da = dh * (1.0 - h * h)  # (B, H) back through tanh
        grads["W_xh"] += _one_hot(X[:, t], V).T @ da  # (V, H)
        grads["W_hh"] += h_prev.T @ da  # (H, H)
        grads["b_h"] += da.sum(axis=0)  # (H,)
        dh_next = da @ W_hh.T  # (B, H)
    grads["h0"] = dh_next  # (B, H)

    hT = hs[:, -1].copy() if T > 0 else h0.copy()  # (B, H)
    return loss, grads, hT
