"""Encode a large corpus once, keep the index array on disk, and reuse it while the corpus is unchanged.

Encoding is vectorised: the text is cut into chunks of `CHUNK` characters,
each chunk becomes a fixed-width array of UTF-32 code points, and a lookup
table indexed by code point turns it into vocabulary indices in one numpy
`take`. Only one chunk's temporaries exist at a time, so encoding a 100 MB
text needs a few tens of MB beyond the result.

The cache (for texts of at least `MIN_CACHED_CHARS` characters; smaller ones
encode in milliseconds and are never written anywhere):

    folder   $CHARLM_CACHE, else $XDG_CACHE_HOME/charlm, else ~/.cache/charlm,
             else <tmp>/charlm-cache-<uid>: the first one that is writable.
             CHARLM_CACHE=off turns the cache off.
    entry    <key>.json   the vocabulary, the text fingerprint and what the
                          entry is valid for: the corpus file's resolved path,
                          size, modification time (ns) and SHA-256, and the
                          options that shape the text (member, encoding,
                          newlines, max_chars)
             <key>-<sha>.npy  the index array, in the smallest unsigned type
                          that holds the vocabulary (uint16 for Chinese text),
                          memory-mappable with np.load(mmap_mode="r")
    key      a hash of the resolved path and those options, so each
             (corpus, options) pair has one entry that is replaced when the file
             changes.

Every file is written to a temporary name in the same folder and renamed into
place, so a reader never sees half an entry; the index file's name carries the
content hash, so a renamed-in JSON never points at another version's indices.
The key (stat and hash) is taken before the text is read, so a file that changes
while it is being read is rebuilt next time rather than trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charlm.errors import CharlmError
from charlm.data.vocab import Vocab

CACHE_ENV = "CHARLM_CACHE"
FORMAT = 1  # bump when the entry layout changes: old entries are then rebuilt
CHUNK = 1 << 20  # characters per chunk: about 12 MB of temporaries at most
MIN_CACHED_CHARS = 1 << 20  # below this the cache costs more than encoding
_OFF = ("off", "0", "no", "none", "false")


# --- encoding ------------------------------------------------------------------

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


def build_vocab(text: str) -> Vocab:
    """The same vocabulary as `Vocab.build(text)` (the sorted set of characters), built faster."""
    return Vocab(chr(c) for c in vocab_codes(text))


def index_dtype(vocab_size: int) -> np.dtype:
    """The smallest integer type that holds every index of a vocabulary of this size."""
    if vocab_size < (1 << 8) - 1:  # one value stays free as the encoder's "not in the vocabulary" marker
        return np.dtype(np.uint8)
    if vocab_size < (1 << 16) - 1:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


def _lookup_table(vocab: Vocab, dtype) -> np.ndarray | None:
    """code point -> index, with len(vocab) marking characters not in it; None if the vocab is not sorted."""
    codes = np.array([ord(c) for c in vocab.idx_to_char], dtype=np.int64)
    if len(codes) == 0 or np.any(codes[1:] <= codes[:-1]):
        return None
    table = np.full(int(codes[-1]) + 1, len(codes), dtype=dtype)  # len(codes) is never a valid index
    table[codes] = np.arange(len(codes))
    return table


def _unknown_error(vocab: Vocab, text: str) -> CharlmError:
    return CharlmError(f"characters not in the vocabulary: {''.join(vocab.unknown(text))!r}")


def _encode_into(text: str, vocab: Vocab, dtype, sink=None, out=None) -> None:
    """Write the indices of `text` into `out`, or hand them chunk by chunk to sink(start, indices).

    Raises CharlmError on characters not in the vocabulary.
    """
    dtype = np.dtype(dtype)
    if dtype.kind not in "iu" or len(vocab) >= np.iinfo(dtype).max:
        raise ValueError(f"{dtype} cannot hold the indices of {len(vocab)} characters and a marker")
    table = _lookup_table(vocab, dtype)
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
            raise _unknown_error(vocab, text) from None
        if idx.max() >= len(vocab):
            raise _unknown_error(vocab, text)
        if out is None:
            sink(start, idx)


def encode_indices(text: str, vocab: Vocab, dtype=np.int64) -> np.ndarray:
    """The indices of `text` as a (len(text),) array of `dtype`; equal to `vocab.encode(text)`."""
    out = np.empty(len(text), dtype=dtype)
    _encode_into(text, vocab, dtype, out=out)
    return out


def encode_to_file(text: str, vocab: Vocab, path: str | Path, dtype=None) -> Path:
    """Write the indices of `text` to a .npy file chunk by chunk, never holding the whole array in memory."""
    dtype = np.dtype(dtype or index_dtype(len(vocab)))
    path = Path(path)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": dtype.str, "fortran_order": False, "shape": (len(text),)})
        _encode_into(text, vocab, dtype, lambda start, idx: f.write(idx.data))
    return path


def text_fingerprint(text: str) -> str:
    """Same value as `charlm.data.corpus.fingerprint(text)`, hashed chunk by chunk without a full UTF-8 copy."""
    digest = hashlib.sha256()
    for start in range(0, len(text), CHUNK):
        digest.update(text[start:start + CHUNK].encode("utf-8"))
    return digest.hexdigest()[:16]


# --- the cache -----------------------------------------------------------------

def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK | os.X_OK)


def cache_dir() -> Path | None:
    """The folder that holds cache entries (see the module docstring), or None when the cache is off."""
    env = os.environ.get(CACHE_ENV)
    if env is not None and env.strip().lower() in _OFF:
        return None
    if env:
        candidates = [Path(env).expanduser()]
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        candidates = [Path(base) / "charlm"]
    candidates.append(Path(tempfile.gettempdir()) / f"charlm-cache-{os.getuid() if hasattr(os, 'getuid') else 'user'}")
    for folder in candidates:
        if _writable(folder):
            return folder
    return None


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file, read in 1 MB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class CacheKey:
    """What a cache entry is valid for: one corpus file, in one state, read with one set of options."""

    path: str  # resolved
    size: int
    mtime_ns: int
    sha256: str
    options: tuple  # ((name, value), ...) sorted

    @property
    def name(self) -> str:
        """The entry's file stem: the same for every state of the file under these options."""
        ident = json.dumps([FORMAT, self.path, self.options])
        return hashlib.sha256(ident.encode("utf-8")).hexdigest()[:24]

    def matches(self, meta: dict) -> bool:
        return (meta.get("format") == FORMAT and meta.get("path") == self.path and meta.get("size") == self.size
                and meta.get("mtime_ns") == self.mtime_ns and meta.get("sha256") == self.sha256
                and [list(o) for o in self.options] == meta.get("options"))


def corpus_key(path: str | Path, config) -> CacheKey | None:
    """Stat and hash the corpus file (before it is read); None when it cannot be read (reading will say why)."""
    path = Path(path)
    options = tuple(sorted((name, getattr(config, name, None)) for name in ("member", "encoding", "newlines", "max_chars")))
    try:
        st = os.stat(path)
        if not os.path.isfile(path):
            return None
        return CacheKey(str(path.resolve()), st.st_size, st.st_mtime_ns, sha256_file(path), options)
    except OSError:
        return None


@dataclass
class Encoded:
    """A corpus's vocabulary and index array, and where they came from."""

    vocab: Vocab
    indices: np.ndarray  # (n,) integer indices; a read-only memory map when cached
    fingerprint: str
    file: Path | None = None  # the .npy holding `indices`, when cached
    reused: bool = False  # True when read from the cache rather than rebuilt


def _read_entry(folder: Path, key: CacheKey, n_chars: int | None) -> Encoded | None:
    meta_path = folder / f"{key.name}.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or not key.matches(meta):
            return None
        file = folder / meta["indices"]
        indices = np.load(file, mmap_mode="r")
        vocab = Vocab(meta["vocab"])
    except (OSError, ValueError, KeyError, TypeError, CharlmError):
        return None  # missing, damaged or from another version: rebuild
    if indices.shape != (meta.get("chars"),) or (n_chars is not None and n_chars != meta.get("chars")):
        return None
    return Encoded(vocab, indices, meta["fingerprint"], file, reused=True)


def _atomic_write(folder: Path, final: Path, write) -> None:
    """Call write(tmp_path) on a temporary file in `folder`, then rename it to `final` in one step."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=final.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_entry(folder: Path, key: CacheKey, text: str, vocab: Vocab, fingerprint: str) -> Path:
    file = folder / f"{key.name}-{key.sha256[:16]}.npy"
    _atomic_write(folder, file, lambda tmp: encode_to_file(text, vocab, tmp))
    meta = {"format": FORMAT, "path": key.path, "size": key.size, "mtime_ns": key.mtime_ns, "sha256": key.sha256,
            "options": [list(o) for o in key.options], "chars": len(text), "indices": file.name,
            "fingerprint": fingerprint, "vocab": vocab.idx_to_char}
    _atomic_write(folder, folder / f"{key.name}.json",
                  lambda tmp: tmp.write_text(json.dumps(meta, ensure_ascii=True), encoding="utf-8"))
    for old in folder.glob(f"{key.name}-*.npy"):  # earlier versions of this corpus (open maps keep their data)
        if old != file:
            old.unlink(missing_ok=True)
    return file


def load_encoded(key: CacheKey | None, text: str, min_chars: int | None = None) -> Encoded:
    """The vocabulary, indices and fingerprint of `text`, read from the cache when `key` still matches.

    `key` must come from `corpus_key` taken before `text` was read. A miss on a
    text of at least `min_chars` characters (default MIN_CACHED_CHARS) writes a
    new entry; if the cache cannot be written, the result is built in memory.
    """
    min_chars = MIN_CACHED_CHARS if min_chars is None else min_chars
    folder = cache_dir() if key is not None and len(text) >= min_chars else None
    if folder is not None:
        found = _read_entry(folder, key, len(text))
        if found is not None:
            return found
    vocab = build_vocab(text)
    fingerprint = text_fingerprint(text)
    if folder is not None:
        try:
            file = _write_entry(folder, key, text, vocab, fingerprint)
            return Encoded(vocab, np.load(file, mmap_mode="r"), fingerprint, file)
        except OSError:
            pass  # a full or read-only disk must not stop training: encode in memory instead
    return Encoded(vocab, encode_indices(text, vocab), fingerprint)
