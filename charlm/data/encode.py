"""The vectorised encoder behind `Vocab`: a text's distinct characters, its indices, and its fingerprint.

The text is cut into chunks of `CHUNK` characters, each chunk becomes a fixed-width array of
UTF-32 code points, and a lookup table indexed by code point turns it into vocabulary indices
in one numpy `take`. Only one chunk's temporaries exist at a time, so a 100 MB text encodes in
well under a second and needs a few tens of MB beyond the result:

    text ──chunks of CHUNK──> uint32 code points ──take(table)──> indices  (len(vocab) marks unknown)

`data/vocab.py` and `data/cache.py` both use it; it knows neither of them (a vocabulary is any
object with `idx_to_char`, `unknown` and `encode`).
"""

from __future__ import annotations

import hashlib

import numpy as np

from charlm.errors import CharlmError

CHUNK = 1 << 20  # characters per chunk: about 12 MB of temporaries at most


def _chunks(text: str):
    """UTF-32 code points of `text`, CHUNK characters at a time: (start, uint32 array)."""
    for start in range(0, len(text), CHUNK):
        yield start, np.frombuffer(text[start:start + CHUNK].encode("utf-32-le"), dtype="<u4")


def vocab_codes(text: str) -> np.ndarray:
    """The sorted distinct code points of `text` (a presence table, one pass, no sort of the text)."""
    seen = np.zeros(0x110000, dtype=bool)  # one flag per possible code point: 1.1 MB
    for _, codes in _chunks(text):
        seen[codes] = True
    return np.flatnonzero(seen).astype(np.uint32)


def fingerprint(text: str) -> str:
    """A short hash that identifies the exact text a model was trained on (stored in checkpoints and cache entries).

    The SHA-256 of the UTF-8 text, fed chunk by chunk so a large corpus needs no full UTF-8 copy;
    the bytes hashed are the same as `text.encode("utf-8")`.
    """
    digest = hashlib.sha256()
    for start in range(0, len(text), CHUNK):
        digest.update(text[start:start + CHUNK].encode("utf-8"))
    return digest.hexdigest()[:16]


def index_dtype(vocab_size: int) -> np.dtype:
    """The smallest integer type that holds every index of a vocabulary of this size."""
    if vocab_size < (1 << 8) - 1:  # one value stays free as the encoder's "not in the vocabulary" marker
        return np.dtype(np.uint8)
    if vocab_size < (1 << 16) - 1:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


def lookup_table(idx_to_char, dtype) -> np.ndarray | None:
    """code point -> index, with len(idx_to_char) marking characters not in it; None if not in code-point order."""
    codes = np.array([ord(c) for c in idx_to_char], dtype=np.int64)
    if len(codes) == 0 or np.any(codes[1:] <= codes[:-1]):
        return None
    table = np.full(int(codes[-1]) + 1, len(codes), dtype=dtype)  # len(codes) is never a valid index
    table[codes] = np.arange(len(codes))
    return table


def unknown_error(vocab, text: str) -> CharlmError:
    """The error for characters of `text` outside `vocab`, listed in order of first appearance."""
    return CharlmError(f"characters not in the vocabulary: {''.join(vocab.unknown(text))!r}")


def encode_into(text: str, vocab, dtype, sink=None, out=None) -> None:
    """Write the indices of `text` into `out`, or hand them chunk by chunk to sink(start, indices).

    Raises CharlmError on characters not in the vocabulary.
    """
    dtype = np.dtype(dtype)
    if dtype.kind not in "iu" or len(vocab) >= np.iinfo(dtype).max:
        raise ValueError(f"{dtype} cannot hold the indices of {len(vocab)} characters and a marker")
    table = lookup_table(vocab.idx_to_char, dtype)
    if table is None:  # a hand-made vocabulary not in code-point order: let Vocab decide
        idx = vocab.encode(text).astype(dtype, copy=False)
        if out is not None:
            out[:] = idx
        else:
            sink(0, idx)
        return
    buf = np.empty(min(len(text), CHUNK), dtype=dtype) if out is None else None
    for start, codes in _chunks(text):
        idx = buf[:len(codes)] if out is None else out[start:start + len(codes)]
        try:
            np.take(table, codes, out=idx)  # (chunk,): the whole encoding, one gather
        except IndexError:  # a code point beyond the largest in the vocabulary
            raise unknown_error(vocab, text) from None
        if idx.max() >= len(vocab):
            raise unknown_error(vocab, text)
        if out is None:
            sink(start, idx)


def encode_indices(text: str, vocab, dtype=np.int64) -> np.ndarray:
    """The indices of `text` as a (len(text),) array of `dtype`; equal to `vocab.encode(text)`."""
    out = np.empty(len(text), dtype=dtype)
    encode_into(text, vocab, dtype, out=out)
    return out
