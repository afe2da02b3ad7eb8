"""Keep a large corpus's encoded index array on disk, and reuse it while the corpus is unchanged.

The encoding itself is `data/encode.py`'s; this module only decides where an entry lives,
whether it is still valid, and writes it so that no reader sees half of one.

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

from charlm.data.encode import encode_indices, encode_into, fingerprint, index_dtype
from charlm.data.vocab import Vocab
from charlm.errors import CharlmError

CACHE_ENV = "CHARLM_CACHE"
FORMAT = 1  # bump when the entry layout changes: old entries are then rebuilt
MIN_CACHED_CHARS = 1 << 20  # below this the cache costs more than encoding
_OFF = ("off", "0", "no", "none", "false")


def encode_to_file(text: str, vocab: Vocab, path: str | Path, dtype=None) -> Path:
    """Write the indices of `text` to a .npy file chunk by chunk, never holding the whole array in memory."""
    dtype = np.dtype(dtype or index_dtype(len(vocab)))
    path = Path(path)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": dtype.str, "fortran_order": False, "shape": (len(text),)})
        encode_into(text, vocab, dtype, lambda start, idx: f.write(idx.data))
    return path


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
    vocab = Vocab.build(text)
    hashed = fingerprint(text)
    if folder is not None:
        try:
            file = _write_entry(folder, key, text, vocab, hashed)
            return Encoded(vocab, np.load(file, mmap_mode="r"), hashed, file)
        except OSError:
            pass  # a full or read-only disk must not stop training: encode in memory instead
    return Encoded(vocab, encode_indices(text, vocab), hashed)
