"""The character vocabulary (`idx_to_char`, `char_to_idx`) and the textbook's `to_onehot`.

The vocabulary is the sorted set of characters, so the same text gives the same
indices in every process (the textbook's `list(set(text))` depends on
PYTHONHASHSEED). Encoding is vectorised with numpy on UTF-32 code points, in
chunks (data/encode.py), so a 100 MB corpus encodes in well under a second
without a Python loop.
"""

from __future__ import annotations

import numpy as np
import torch

from charlm.data.encode import encode_indices, unknown_error, vocab_codes
from charlm.errors import CharlmError


class Vocab:
    """Maps characters to indices and back; saved inside every checkpoint as `idx_to_char`."""

    def __init__(self, idx_to_char):
        self.idx_to_char = list(idx_to_char)
        self.char_to_idx = {c: i for i, c in enumerate(self.idx_to_char)}
        if len(self.char_to_idx) != len(self.idx_to_char):
            raise CharlmError("vocabulary has repeated characters; the checkpoint is damaged")
        codes = [ord(c) for c in self.idx_to_char]
        self._sorted = bool(codes) and all(a < b for a, b in zip(codes, codes[1:]))

    @classmethod
    def build(cls, text: str) -> "Vocab":
        """The sorted set of characters of `text` (same result as `sorted(set(text))`, but vectorised)."""
        return cls(chr(c) for c in vocab_codes(text))

    def __len__(self) -> int:
        return len(self.idx_to_char)

    def __contains__(self, char: str) -> bool:
        return char in self.char_to_idx

    def unknown(self, text: str) -> list[str]:
        """Characters of `text` that are not in the vocabulary, in order of first appearance."""
        return list(dict.fromkeys(c for c in text if c not in self.char_to_idx))

    def encode(self, text: str) -> np.ndarray:
        """Indices of the characters of `text` as an int64 array; raises CharlmError on unknown characters."""
        if self._sorted:
            return encode_indices(text, self)  # one gather through a code-point table, chunk by chunk
        # a vocabulary not in code-point order (e.g. hand-made): the dictionary
        try:
            return np.fromiter((self.char_to_idx[c] for c in text), dtype=np.int64, count=len(text))
        except KeyError:
            raise unknown_error(self, text) from None

    def decode(self, indices) -> str:
        """The text spelled by a sequence of indices."""
        return "".join(self.idx_to_char[int(i)] for i in indices)


def one_hot(x: torch.Tensor, n_class: int, dtype=torch.float32) -> torch.Tensor:
    """One-hot rows for a 1-D tensor of indices: (batch,) -> (batch, n_class)."""
    res = torch.zeros(x.shape[0], n_class, dtype=dtype, device=x.device)
    res.scatter_(1, x.long().view(-1, 1), 1)
    return res


def to_onehot(X: torch.Tensor, n_class: int, dtype=torch.float32) -> list[torch.Tensor]:
    """The textbook's input encoding: (batch, num_steps) indices -> num_steps tensors of (batch, n_class)."""
    return [one_hot(X[:, i], n_class, dtype) for i in range(X.shape[1])]
