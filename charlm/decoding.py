"""Turn a model and a prefix into text: the textbook's `predict`, feeding one index per step.

The prefix goes through the model in one call to build the hidden state; then
each new character is chosen from the last logits by `choose` and fed back.
`greedy` (arg-max) is the textbook's rule; other rules plug in as `choose`.
"""

from __future__ import annotations

import torch

from .errors import CharlmError


def greedy(logits: torch.Tensor, generator=None) -> torch.Tensor:
    """Arg-max over the vocabulary: (batch, vocab) -> (batch,)."""
    return logits.argmax(dim=-1)


def encode_prefix(prefix: str, vocab) -> list[int]:
    """Indices of a prefix, or a CharlmError listing the characters the model has never seen."""
    if not prefix:
        raise CharlmError("the prefix is empty; give at least one character, e.g. --prefix 分开")
    unknown = vocab.unknown(prefix)
    if unknown:
        raise CharlmError(f"prefix {prefix!r} has characters not in the model's vocabulary: {' '.join(unknown)}")
    return [vocab.char_to_idx[c] for c in prefix]


@torch.no_grad()
def predict(prefix: str, num_chars: int, model, vocab, device=None, choose=greedy, generator=None) -> str:
    """Continue `prefix` by `num_chars` characters and return prefix + continuation."""
    was_training = model.training
    model.eval()
    try:
        device = device or next(model.parameters()).device
        idx = encode_prefix(prefix, vocab)
        state = model.begin_state(1, device)
        logits, state = model(torch.tensor([idx], device=device), state)  # (1, len(prefix), vocab)
        out = []
        for _ in range(num_chars):
            nxt = choose(logits[:, -1], generator)  # (1,)
            out.append(int(nxt))
            logits, state = model(nxt.view(1, 1), state)
        return prefix + vocab.decode(out)
    finally:
        model.train(was_training)
