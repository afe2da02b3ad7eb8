"""Find, read and split the training text: a path becomes a `Corpus` of train and validation indices.

Reading understands .txt, .gz and .zip; every way a file can be unusable is
reported as a CharlmError that says what to do.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .encode_cache import corpus_key, load_encoded, sha256_file
from .errors import CharlmError
from .vocab import Vocab

DEFAULT_NAME = "jaychou_lyrics.txt.zip"
DEFAULT_SHA256 = "3cfedd7d174111cdad5a27eaffaa6a2432a2842cf2590a03dd8a97610ea07043"
# The d2l-zh project's public copy, pinned to one commit; checked against DEFAULT_SHA256.
DEFAULT_URL = ("https://raw.githubusercontent.com/d2l-ai/d2l-zh/"
               "89403b9792861d86a0f1735cdd4a3d60c423f5a2/data/jaychou_lyrics.txt.zip")


def _download_default(dest: Path) -> Path:
    """Fetch the default corpus into `dest`, keeping it only if the checksum matches."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        with urllib.request.urlopen(DEFAULT_URL, timeout=15) as response, open(tmp, "wb") as f:
            shutil.copyfileobj(response, f)
        if sha256_file(tmp) != DEFAULT_SHA256:
            raise CharlmError(f"the downloaded {DEFAULT_NAME} has the wrong checksum; put a good copy in data/")
        os.replace(tmp, dest)
        return dest
    except (OSError, ValueError) as e:  # URLError is an OSError; offline machines end here
        raise CharlmError(
            f"no corpus given and the default {DEFAULT_NAME} was not found (download failed: "
            f"{getattr(e, 'reason', e)}); put it in data/ or in $CHARLM_DATA, or pass --corpus PATH") from None
    finally:
        tmp.unlink(missing_ok=True)


def resolve_corpus(path: str | None) -> Path:
    """The corpus file to read: --corpus, then data/, then $CHARLM_DATA, then ../shared/data/, then a download."""
    if path:
        return Path(path)
    candidates = [Path("data")]
    if os.environ.get("CHARLM_DATA"):
        candidates.append(Path(os.environ["CHARLM_DATA"]))
    candidates.append(Path("..") / "shared" / "data")
    for folder in candidates:
        # $CHARLM_DATA may name the file itself rather than its folder
        found = folder if folder.is_file() else folder / DEFAULT_NAME
        if found.is_file():
            return found
    return _download_default(Path("data") / DEFAULT_NAME)


def _decode(raw: bytes, encoding: str, name: str) -> str:
    try:
        return raw.decode(encoding)
    except LookupError:
        raise CharlmError(f"unknown --encoding {encoding!r}; try utf-8, gbk or latin-1") from None
    except UnicodeDecodeError as e:
        hint = ""
        if encoding.lower().replace("-", "") in ("utf8", "utf8sig"):
            try:
                raw.decode("gb18030")
                hint = "; it looks like Chinese in GBK: add --encoding gbk"
            except UnicodeDecodeError:
                hint = "; pass --encoding with the file's encoding"
        raise CharlmError(f"{name} is not valid {encoding} (byte {e.start}){hint}") from None


def _read_zip(path: Path, member: str | None) -> tuple[bytes, str]:
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/") and not n.startswith("__MACOSX")]
            if member is not None:
                if member not in names:
                    raise CharlmError(f"{path} has no member {member!r}; it holds: {', '.join(names) or 'nothing'}")
            else:
                texts = [n for n in names if n.lower().endswith(".txt")] or names
                if not texts:
                    raise CharlmError(f"{path} holds no text file")
                if len(texts) > 1:
                    raise CharlmError(f"{path} holds several files ({', '.join(texts)}); choose one with --member NAME")
                member = texts[0]
            return zf.read(member), f"{path}:{member}"
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise CharlmError(f"{path} is not a readable zip file ({e}); re-download it") from None


def read_text(path: str | Path, member: str | None = None, encoding: str = "utf-8") -> str:
    """The decoded text of a .txt, .gz or .zip file (with `member` choosing inside a zip)."""
    path = Path(path)
    if not path.exists():
        raise CharlmError(f"corpus {path} does not exist; pass --corpus with a text file")
    if path.is_dir():
        raise CharlmError(f"corpus {path} is a directory; pass --corpus with a text file inside it")
    name = str(path)
    if path.suffix.lower() == ".zip":
        raw, name = _read_zip(path, member)
    elif path.suffix.lower() == ".gz":
        try:
            with gzip.open(path, "rb") as f:
                raw = f.read()
        except (OSError, EOFError) as e:
            raise CharlmError(f"{path} is not a readable gzip file ({e})") from None
    else:
        raw = path.read_bytes()
    text = _decode(raw, encoding, name)
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip():
        raise CharlmError(f"corpus {name} is {'empty' if not text else 'only whitespace'}; give a file with text in it")
    return text


def prepare_text(text: str, newlines: str = "keep", max_chars: int = 0) -> str:
    """Normalise line endings, optionally replace them with spaces, and keep the first `max_chars` characters."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if newlines == "space":
        text = text.replace("\n", " ")
    return text[:max_chars] if max_chars else text


def fingerprint(text: str) -> str:
    """A short hash that identifies the exact text a model was trained on."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass
class Corpus:
    """The prepared text, its vocabulary, and the train / validation index arrays."""

    text: str
    vocab: Vocab
    train: np.ndarray  # (n_train,) int64
    val: np.ndarray  # (n_val,) int64
    source: str
    fingerprint: str

    @property
    def train_text(self) -> str:
        return self.text[: len(self.train)]


def split(indices: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Hold out the last `val_fraction` of the indices, contiguously."""
    n_val = max(2, int(round(len(indices) * val_fraction)))
    if n_val >= len(indices) - 1:
        raise CharlmError(f"corpus of {len(indices)} characters is too short to hold out --val-fraction {val_fraction}")
    return indices[:-n_val], indices[-n_val:]


def load_corpus(config) -> Corpus:
    """Resolve, read, prepare, encode and split the corpus named by a Config."""
    path = resolve_corpus(config.corpus)
    key = corpus_key(path, config)  # stat and hash before reading: see charlm/encode_cache.py
    text = prepare_text(read_text(path, config.member, config.encoding), config.newlines, config.max_chars)
    encoded = load_encoded(key, text)  # reused from the cache when the file and options are unchanged
    train, val = split(np.asarray(encoded.indices, dtype=np.int64), config.val_fraction)
    return Corpus(text, encoded.vocab, train, val, str(path), encoded.fingerprint)

