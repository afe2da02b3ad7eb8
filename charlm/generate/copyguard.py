"""The copy guard: an index of the corpus that tells the decoder which next characters would recite it.

A generated text must not hold a span of more than N characters that occurs in the corpus.
The index holds one 64-bit key per distinct (N+1)-gram of the corpus text:

    key = top bits of hash(the N characters)  |  the (N+1)-th character (low `char_bits` bits)

sorted, so at every step one `np.searchsorted` per stream finds the key range of the hash of
that stream's last N characters, and the low bits of the keys in the range are the characters
that would complete a copied (N+1)-gram; the decoder then gives them probability 0 (sampling)
or takes the next best (greedy, beam search):

    stream:  ... 我 们 的 爱 给 的 爱 | ?        last N = 7 characters -> h = hash(们的爱给的爱 ...)
    keys:    [..., h|12, h|87, h|301, h'|5, ...] -> banned: 12, 87, 301

Hash collisions can only ban too much (a character continuing another N-gram with the same
hash), never too little: every (N+1)-gram of the corpus has its key. The index is built in
chunks (keys of a few million positions at a time, sorted and de-duplicated, then merged), so
memory is about 8 bytes per distinct (N+1)-gram plus a chunk; it is written once per run, to
RUN/copyguard.pt, as an int64 tensor that loads with `weights_only=True`.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from charlm import defaults
from charlm.errors import CharlmError
from charlm.models.limits import MAX_LENGTH

FILE_NAME = "copyguard.pt"
DEFAULT_MAX_COPY = defaults.MAX_COPY  # chosen by measurement: see docs/decoding.md
# 7 characters is a word and a half of English and splits its words (60% real words on the sonnets
# against 96% unguarded); 16, about three words, keeps them (95%): benchmarks/forms.py, docs/forms.md
ALPHABETIC_MAX_COPY = 16


def max_copy_for(units: str | None) -> int:
    """The copy guard's default span for a corpus whose forms count `units` ("words": alphabetic)."""
    return ALPHABETIC_MAX_COPY if units == "words" else DEFAULT_MAX_COPY


def run_max_copy(payload: dict) -> int:
    """The default span for a checkpoint: by the units of the forms it stores (older ones: characters)."""
    saved = (payload.get("forms") or {}).get("forms") or {}
    return max_copy_for(saved.get("units"))
CHUNK = 1 << 22  # positions hashed at a time while building (32 MiB of uint64 keys)
_PRIME = np.uint64(0x100000001B3)  # FNV's 64-bit prime: multiplier of the polynomial hash


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads the polynomial hash over all 64 bits (in place, uint64 wraps)."""
    h ^= h >> np.uint64(30)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    return h


def _char_bits(vocab_size: int) -> int:
    return max(1, int(vocab_size - 1).bit_length())


def context_hashes(windows: np.ndarray) -> np.ndarray:
    """Hashes of rows of N character indices: (rows, N) -> (rows,) uint64, high bits meaningful."""
    h = np.zeros(windows.shape[0], dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(windows.shape[1]):
            h = h * _PRIME + windows[:, j].astype(np.uint64) + np.uint64(1)
        return _mix(h)


def _chunk_keys(indices: np.ndarray, n: int, bits: int) -> np.ndarray:
    """Sorted distinct keys of every (n+1)-gram inside one stretch of indices."""
    count = len(indices) - n
    h = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):  # the polynomial hash of indices[i : i+n] for every i of the stretch
            h = h * _PRIME + indices[j: j + count].astype(np.uint64) + np.uint64(1)
        _mix(h)
    h &= ~np.uint64((1 << bits) - 1)
    h |= indices[n: n + count].astype(np.uint64)
    return np.unique(h)


def _union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The sorted union of two sorted distinct arrays, in about twice the memory of the result
    (np.unique of the concatenation would sort a copy: four times)."""
    if not len(a):
        return b
    pos = np.searchsorted(a, b)
    new = ~((pos < len(a)) & (a[np.minimum(pos, len(a) - 1)] == b))
    b, pos = b[new], pos[new]
    out = np.empty(len(a) + len(b), dtype=a.dtype)
    at = pos + np.arange(len(b))  # where each new key lands in the union
    from_a = np.ones(len(out), dtype=bool)
    from_a[at] = False
    out[at] = b
    out[from_a] = a
    return out


def _merge(parts) -> np.ndarray:
    """Union of the chunks' keys, one chunk at a time (only one chunk's keys exist at once)."""
    keys = np.zeros(0, dtype=np.uint64)
    for part in parts:
        keys = _union(keys, part)
    return keys


def build_keys(indices: np.ndarray, n: int, vocab_size: int, chunk: int = CHUNK) -> np.ndarray:
    """The sorted, distinct keys of every (n+1)-gram of `indices` (the corpus as vocabulary indices)."""
    if n < 1:
        raise CharlmError(f"the copy guard needs N >= 1, got {n}")
    indices, bits = np.asarray(indices), _char_bits(vocab_size)
    total = len(indices) - n  # number of (n+1)-grams
    return _merge(_chunk_keys(indices[start: min(start + chunk, total) + n], n, bits)
                  for start in range(0, max(total, 0), chunk))


def build_keys_from_text(text: str, vocab, n: int, chunk: int = CHUNK) -> np.ndarray:
    """`build_keys` of a text, encoding it a chunk at a time (never the whole text's indices at once)."""
    if n < 1:
        raise CharlmError(f"the copy guard needs N >= 1, got {n}")
    if n > MAX_LENGTH:  # each stream keeps its last N characters: refused before (streams x N) is allocated
        raise CharlmError(f"--max-copy {n:,} is more than {MAX_LENGTH:,}, the longest sample: a guard that long "
                          "guards nothing; give a span of a few characters, or 0 to turn the guard off")
    bits, total = _char_bits(len(vocab)), len(text) - n
    return _merge(_chunk_keys(vocab.encode(text[start: min(start + chunk, total) + n]), n, bits)
                  for start in range(0, max(total, 0), chunk))


@dataclass
class CopyGuard:
    """The index of one corpus for one N: which next characters would make a copy longer than N."""

    keys: np.ndarray  # (distinct (n+1)-grams,) uint64, sorted
    n: int  # the longest span that may be copied
    vocab_size: int
    fingerprint: str = ""  # of the corpus text it indexes
    source: str = ""  # "corpus" (train + validation) or "train"

    @classmethod
    def build(cls, indices, n: int, vocab_size: int, fingerprint: str = "", source: str = "corpus") -> "CopyGuard":
        return cls(build_keys(indices, n, vocab_size), n, vocab_size, fingerprint, source)

    @classmethod
    def from_text(cls, text: str, vocab, n: int, fingerprint: str = "", source: str = "corpus") -> "CopyGuard":
        """The index of a text, encoded a chunk at a time (the memory of a chunk, not of the whole text)."""
        return cls(build_keys_from_text(text, vocab, n), n, len(vocab), fingerprint, source)

    @property
    def nbytes(self) -> int:
        return int(self.keys.nbytes)

    def banned(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, chars) of the banned next characters, given each stream's last N indices, (streams, N)."""
        bits = _char_bits(self.vocab_size)
        low = np.uint64((1 << bits) - 1)
        h = context_hashes(windows) & ~low  # (streams,)
        lo = np.searchsorted(self.keys, h, side="left")
        hi = np.searchsorted(self.keys, h | low, side="right")
        counts = hi - lo
        total = int(counts.sum())
        if total == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        rows = np.repeat(np.arange(len(h)), counts)
        offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)  # position inside each range
        chars = (self.keys[np.repeat(lo, counts) + offsets] & low).astype(np.int64)
        return rows, chars

    def to_dict(self) -> dict:
        """Plain values and an int64 tensor: loadable with torch.load(weights_only=True)."""
        return {"format": "charlm-copyguard", "version": 1, "n": self.n, "vocab_size": self.vocab_size,
                "fingerprint": self.fingerprint, "source": self.source,
                "keys": torch.from_numpy(self.keys.view(np.int64))}

    @classmethod
    def from_dict(cls, d: dict) -> "CopyGuard":
        if not isinstance(d, dict) or d.get("format") != "charlm-copyguard":
            raise CharlmError("not a charlm copy-guard index")
        keys = d["keys"].numpy().view(np.uint64)
        return cls(keys, int(d["n"]), int(d["vocab_size"]), d.get("fingerprint", ""), d.get("source", ""))


def save_guard(path: str | Path, guard: CopyGuard) -> None:
    """Write the index atomically (temporary file, then rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp makes 0600; runs are meant to be shared
            torch.save(guard.to_dict(), f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_guard(path: str | Path) -> CopyGuard | None:
    """The index stored at `path`, or None when there is none (or it cannot be read)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return CopyGuard.from_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception:
        return None


def write_run_guard(run_dir: str | Path, corpus, n: int | None = None) -> Path:
    """Build the index of the whole corpus text (training and validation: the user's file is what must
    not be recited) and write it to RUN/copyguard.pt, unless a run's index for this corpus is there.
    `n` None: the default span for the corpus's script (max_copy_for)."""
    from charlm.forms.extract import units_of

    n = max_copy_for(units_of(corpus.text)) if n is None else n
    path = Path(run_dir) / FILE_NAME
    stored = load_guard(path)
    if stored is None or stored.n != n or stored.fingerprint != corpus.fingerprint:
        save_guard(path, CopyGuard.from_text(corpus.text, corpus.vocab, n, corpus.fingerprint))
    return path


def guard_path(checkpoint: str | Path) -> Path:
    """Where the index of the run holding `checkpoint` lives: beside it."""
    return Path(checkpoint).parent / FILE_NAME


def guard_for_run(checkpoint: str | Path, payload: dict, n: int, corpus_loader=None, log=lambda line: None):
    """The copy guard for decoding with `--max-copy n` from `checkpoint`, or None (with one line to `log`).

    Uses RUN/copyguard.pt when it was built for this n and this corpus; otherwise builds the index
    from the corpus text when `corpus_loader()` can still read it (it returns a Corpus or raises
    CharlmError); otherwise says there is no guard.
    """
    if n <= 0:
        return None
    fingerprint = payload.get("corpus", {}).get("fingerprint", "")
    stored = load_guard(guard_path(checkpoint))
    vocab_size = len(payload["vocab"])
    if stored is not None and stored.n == n and stored.vocab_size == vocab_size and \
            (not fingerprint or not stored.fingerprint or stored.fingerprint == fingerprint):
        return stored
    why = (f"the run's index is for --max-copy {stored.n}" if stored is not None
           else f"the run has no {FILE_NAME} (trained before the copy guard, or copied without it)")
    if corpus_loader is not None:
        try:
            corpus = corpus_loader()
        except CharlmError:
            corpus = None
        if corpus is not None:
            return CopyGuard.from_text(corpus.text, corpus.vocab, n, fingerprint)
    log(f"warning: no copy guard: {why} and the training text is not available to index; "
        "generating without it (samples may recite the corpus)")
    return None
