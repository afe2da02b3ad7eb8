"""Find, read and split the training text: a path becomes a `Corpus` of train and validation indices.

Reading understands .txt, .gz and .zip; every way a file can be unusable is
reported as a CharlmError that says what to do.
"""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from charlm.data.cache import corpus_key, load_encoded, sha256_file
from charlm.errors import CharlmError
from charlm.data.vocab import Vocab

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


def resolve_corpus(path: str | None, log=None) -> Path:
    """The corpus file to read: --corpus, then data/, then $CHARLM_DATA, then ../shared/data/, then a download.

    A $CHARLM_DATA that is consulted but holds no corpus is said in one line to `log`
    (the user set it for a reason) before the next place is tried.
    """
    if path:
        return Path(path)
    candidates = [Path("data")]
    if os.environ.get("CHARLM_DATA"):
        candidates.append(Path(os.environ["CHARLM_DATA"]))
    candidates.append(Path("..") / "shared" / "data")
    for i, folder in enumerate(candidates):
        # $CHARLM_DATA may name the file itself rather than its folder
        found = folder if folder.is_file() else folder / DEFAULT_NAME
        if found.is_file():
            return found
        if log is not None and i == 1 and os.environ.get("CHARLM_DATA"):
            fallback = "../shared/data/, then a download" if i + 1 < len(candidates) else "a download"
            why = "does not exist" if not folder.exists() else f"holds no {DEFAULT_NAME}"
            log(f"$CHARLM_DATA={folder} {why}; looking in {fallback}")
    return _download_default(Path("data") / DEFAULT_NAME)


# The most bytes charlm reads from one corpus file (or decompresses from one .gz / zip member): beyond
# this the text, its index array (8 bytes a character) and the vocabulary pass would not fit a laptop.
MAX_BYTES = 1 << 30
GZIP_MAGIC, ZIP_MAGIC = b"\x1f\x8b", b"PK\x03\x04"


def _too_big(name: str) -> CharlmError:
    return CharlmError(f"{name} holds more than {MAX_BYTES >> 20:,} MiB of text, the most charlm reads; "
                       f"train on a part of it (e.g. head -c 500M FILE > part.txt)")


def _decode(raw: bytes, encoding: str, name: str) -> str:
    if raw[:2] == GZIP_MAGIC or raw[:4] == ZIP_MAGIC:  # a compressed file under a text name: say so, do not blame the encoding
        kind, ext = ("gzip", ".gz") if raw[:2] == GZIP_MAGIC else ("zip", ".zip")
        raise CharlmError(f"{name} holds {kind}-compressed data, not text; name it with {ext} (charlm then "
                          "decompresses it) or decompress it first")
    try:
        text = raw.decode(encoding)
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
    except (ValueError, TypeError) as e:  # a codec that is not a text encoding, e.g. --encoding hex or rot13
        raise CharlmError(f"--encoding {encoding} cannot decode {name} ({e}); try utf-8, gbk or latin-1") from None
    if not isinstance(text, str):
        raise CharlmError(f"--encoding {encoding} is not a text encoding; try utf-8, gbk or latin-1")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # e.g. a lone surrogate "\\ud800" read with --encoding unicode_escape
        raise CharlmError(f"{name} read as {encoding} gives character {e.start} = {text[e.start]!r}, a lone "
                          "surrogate that is not a real character; fix the text or use another --encoding") from None
    return text


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
            info = zf.getinfo(member)
            if info.flag_bits & 0x1:
                raise CharlmError(f"{path}:{member} is encrypted (password-protected); unzip it with its password "
                                  "and pass the text file with --corpus")
            if info.file_size > MAX_BYTES:
                raise _too_big(f"{path}:{member}")
            try:
                with zf.open(member) as f:
                    raw = f.read(MAX_BYTES + 1)
            except NotImplementedError as e:  # e.g. a compression method zipfile does not know (deflate64, ppmd)
                raise CharlmError(f"{path}:{member} uses a compression method charlm cannot read ({e}); "
                                  "re-zip it with plain deflate or unzip it and pass the text file") from None
            except RuntimeError as e:  # zipfile's word for "encrypted" in some versions
                raise CharlmError(f"{path}:{member} cannot be read ({e}); unzip it and pass the text file") from None
            if len(raw) > MAX_BYTES:
                raise _too_big(f"{path}:{member}")
            return raw, f"{path}:{member}"
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise CharlmError(f"{path} is not a readable zip file ({e}); re-download it") from None


def read_text(path: str | Path, member: str | None = None, encoding: str = "utf-8",
              what: str = "corpus", flag: str = "--corpus") -> str:
    """The decoded text of a .txt, .gz or .zip file (with `member` choosing inside a zip).

    `what` and `flag` name the file in messages (e.g. "text", "--text" for `evaluate --text`).
    At most MAX_BYTES are read; devices (/dev/zero) are refused, pipes read up to that bound.
    """
    path = Path(path)
    if not path.exists():
        raise CharlmError(f"{what} {path} does not exist; pass {flag} with a text file")
    if path.is_dir():
        raise CharlmError(f"{what} {path} is a directory; pass {flag} with a text file inside it")
    mode = path.stat().st_mode
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISSOCK(mode):
        raise CharlmError(f"{what} {path} is a device, not a text file; pass {flag} with a text file")
    if stat.S_ISREG(mode) and path.suffix.lower() not in (".gz", ".zip") and path.stat().st_size > MAX_BYTES:
        raise _too_big(str(path))
    if member is not None and path.suffix.lower() != ".zip":
        raise CharlmError(f"--member chooses a file inside a .zip, and {path} is not one; drop --member")
    name = str(path)
    if path.suffix.lower() == ".zip":
        raw, name = _read_zip(path, member)
    elif path.suffix.lower() == ".gz":
        try:
            with gzip.open(path, "rb") as f:
                raw = f.read(MAX_BYTES + 1)
        except (OSError, EOFError, zlib.error) as e:
            raise CharlmError(f"{path} is not a readable gzip file ({e})") from None
    else:
        with open(path, "rb") as f:  # bounded: a pipe or FIFO may never end
            raw = f.read(MAX_BYTES + 1)
    if len(raw) > MAX_BYTES:
        raise _too_big(name)
    text = _decode(raw, encoding, name)
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip():
        raise CharlmError(f"{what} {name} is {'empty' if not text else 'only whitespace'}; give a file with text in it")
    return text


def prepare_text(text: str, newlines: str = "keep", max_chars: int = 0) -> str:
    """Normalise line endings, optionally replace them with spaces, and keep the first `max_chars` characters."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if newlines == "space":
        text = text.replace("\n", " ")
    return text[:max_chars] if max_chars else text


@dataclass
class Corpus:
    """The prepared text, its vocabulary, and the train / validation index arrays."""

    text: str
    vocab: Vocab
    train: np.ndarray  # (n_train,) int64
    val: np.ndarray  # (n_val,) int64
    source: str
    fingerprint: str
    # The tuning slice (see carve_tune): the end of the training text, which `train` then excludes.
    tune: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def train_text(self) -> str:
        return self.text[: len(self.train)]


def carve_tune(corpus: Corpus, fraction: float, cap: int = 0) -> Corpus:
    """`corpus` with the last `fraction` of its training text (at most `cap` characters if given) moved to `tune`.

    The slice comes off the end of the training part, so it never touches the
    validation text: text = train | tune | val, in that order.
    """
    if fraction <= 0 or len(corpus.tune):
        return corpus
    whole = corpus.train
    n = int(round(len(whole) * fraction))
    n = max(2, min(n, cap) if cap else n)
    if n >= len(whole) // 2:
        raise CharlmError(f"the training text ({len(whole)} characters) is too short to carve a tuning slice "
                          f"of {n}; lower --tune-fraction or use 0")
    return replace(corpus, train=whole[:-n], tune=whole[-n:])


def split(indices: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Hold out the last `val_fraction` of the indices, contiguously."""
    n_val = max(2, int(round(len(indices) * val_fraction)))
    if n_val >= len(indices) - 1:
        raise CharlmError(f"corpus of {len(indices)} characters is too short to hold out --val-fraction {val_fraction}")
    return indices[:-n_val], indices[-n_val:]


def load_corpus(config, log=None) -> Corpus:
    """Resolve, read, prepare, encode and split the corpus named by a Config (`log` gets warnings)."""
    path = resolve_corpus(config.corpus, log)
    key = corpus_key(path, config)  # stat and hash before reading: see data/cache.py
    text = prepare_text(read_text(path, config.member, config.encoding), config.newlines, config.max_chars)
    encoded = load_encoded(key, text)  # reused from the cache when the file and options are unchanged
    train, val = split(np.asarray(encoded.indices, dtype=np.int64), config.val_fraction)
    return Corpus(text, encoded.vocab, train, val, str(path), encoded.fingerprint)

