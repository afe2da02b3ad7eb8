"""Find, read and split the training text: a path becomes a `Corpus` of train and validation indices.

Reading understands .txt, .gz and .zip; every way a file can be unusable is
reported as a CharlmError that says what to do.
"""

from __future__ import annotations

import codecs
import errno
import gzip
import io
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


def _decode(raw: bytes, encoding: str, name: str, cut: bool = False) -> str:
    """`raw` as text; `cut`: the bytes stop where --max-chars stopped reading, maybe inside a character."""
    if raw[:2] == GZIP_MAGIC or raw[:4] == ZIP_MAGIC:  # a compressed file under a text name: say so, do not blame the encoding
        kind, ext = ("gzip", ".gz") if raw[:2] == GZIP_MAGIC else ("zip", ".zip")
        raise CharlmError(f"{name} holds {kind}-compressed data, not text; name it with {ext} (charlm then "
                          "decompresses it) or decompress it first")
    try:  # a cut read leaves the bytes of an unfinished last character to the incremental decoder
        text = codecs.getincrementaldecoder(encoding)().decode(raw, final=False) if cut else raw.decode(encoding)
    except LookupError:
        raise CharlmError(f"unknown --encoding {encoding!r}; try utf-8, gbk or latin-1") from None
    except UnicodeDecodeError as e:
        hint = ""
        if encoding.lower().replace("-", "") in ("utf8", "utf8sig"):
            try:
                raw.decode("gb18030") if not cut else codecs.getincrementaldecoder("gb18030")().decode(raw)
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


def _some(names: list[str], shown: int = 5) -> str:
    """'a.txt, b.txt, c.txt' or, for many, the first `shown` and how many more (an error stays one short line)."""
    if len(names) <= shown + 1:
        return ", ".join(names)
    return f"{', '.join(names[:shown])} and {len(names) - shown:,} more"


def _read_zip(path: Path, member: str | None, max_chars: int = 0, encoding: str = "utf-8") -> tuple[bytes, bool, str]:
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/") and not n.startswith("__MACOSX")]
            if member is not None:
                if member not in names:
                    raise CharlmError(f"{path} has no member {member!r}; it holds: {_some(names) or 'nothing'}")
            else:
                texts = [n for n in names if n.lower().endswith(".txt")] or names
                if not texts:
                    raise CharlmError(f"{path} holds no text file")
                if len(texts) > 1:
                    raise CharlmError(f"{path} holds several files ({_some(texts)}); choose one with --member NAME")
                member = texts[0]
            info = zf.getinfo(member)
            if info.flag_bits & 0x1:
                raise CharlmError(f"{path}:{member} is encrypted (password-protected); unzip it with its password "
                                  "and pass the text file with --corpus")
            if info.file_size > MAX_BYTES and not max_chars:
                raise _too_big(f"{path}:{member}")
            try:
                with zf.open(member) as f:
                    raw, cut = _read_bounded(f, max_chars, encoding)
            except NotImplementedError as e:  # e.g. a compression method zipfile does not know (deflate64, ppmd)
                raise CharlmError(f"{path}:{member} uses a compression method charlm cannot read ({e}); "
                                  "re-zip it with plain deflate or unzip it and pass the text file") from None
            except RuntimeError as e:  # zipfile's word for "encrypted" in some versions
                raise CharlmError(f"{path}:{member} cannot be read ({e}); unzip it and pass the text file") from None
            if len(raw) > MAX_BYTES:
                raise _too_big(f"{path}:{member}")
            return raw, cut, f"{path}:{member}"
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise CharlmError(f"{path} is not a readable zip file ({e}); re-download it") from None


def _read_bounded(f, max_chars: int, encoding: str) -> tuple[bytes, bool]:
    """At most MAX_BYTES + 1 bytes of `f`; with `max_chars`, stop once they surely hold that many characters.

    A character takes at most 4 bytes in the encodings charlm reads (utf-8, gbk, gb18030, latin-1),
    and line endings shrink by at most half ("\\r\\n" -> "\\n"), so 8 x max_chars bytes (+ a BOM)
    always hold the first max_chars characters: a huge compressed corpus is not decompressed whole.
    Returns (bytes, whether reading stopped there, perhaps inside a character).
    """
    if not max_chars or not _cuttable(encoding) or 8 * max_chars + 4 > MAX_BYTES:
        return f.read(MAX_BYTES + 1), False
    raw = f.read(8 * max_chars + 4)
    return raw, len(raw) == 8 * max_chars + 4


# Encodings of at most 4 bytes a character whose incremental decoder can stop anywhere; others
# (unicode_escape, utf-7: a character may take 10 bytes) are read whole before --max-chars cuts them.
CUTTABLE = ("utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be",
            "gbk", "gb2312", "gb18030", "big5", "latin-1", "iso8859-1", "ascii", "cp1252", "shift_jis", "euc_jp")


def _cuttable(encoding: str) -> bool:
    try:
        return codecs.lookup(encoding).name in CUTTABLE
    except LookupError:
        return False


def _check_readable(path: Path, what: str, flag: str) -> None:
    """Refuse in words what cannot be read as a file, before anything blocks on it."""
    if not path.exists():
        if path.is_symlink():
            try:
                os.stat(path)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise CharlmError(f"{what} {path} is a symlink loop (a link that leads back to itself); "
                                      f"pass {flag} with a text file") from None
            raise CharlmError(f"{what} {path} is a symlink to {os.readlink(path)}, which does not exist; "
                              f"pass {flag} with a text file") from None
        raise CharlmError(f"{what} {path} does not exist; pass {flag} with a text file")
    if path.is_dir():
        raise CharlmError(f"{what} {path} is a directory; pass {flag} with a text file inside it")
    mode = path.stat().st_mode
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISSOCK(mode):
        raise CharlmError(f"{what} {path} is a device, not a text file; pass {flag} with a text file")


def _open_pipe(path: Path, what: str, flag: str):
    """A FIFO opened for reading without waiting for a writer; one with no writer is refused (reading it
    would block for ever). A pipe that has one (`<(zcat big.gz)`, /dev/stdin) is read as usual."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        first = os.read(fd, 65536)
    except BlockingIOError:  # a writer is there, nothing written yet: wait for it as a blocking read would
        first = b""
    else:
        if not first:
            os.close(fd)
            raise CharlmError(f"{what} {path} is a named pipe (FIFO) with nothing writing to it; start the "
                              f"writer first, or pass {flag} with a text file")
    os.set_blocking(fd, True)
    return io.BufferedReader(_Prefixed(first, os.fdopen(fd, "rb", buffering=0)))


class _Prefixed(io.RawIOBase):
    """A raw stream that yields `first` (bytes already read) and then the rest of `f`."""

    def __init__(self, first: bytes, f):
        self.first, self.f = first, f

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.first:
            n = min(len(buffer), len(self.first))
            buffer[:n], self.first = self.first[:n], self.first[n:]
            return n
        return self.f.readinto(buffer)

    def close(self) -> None:
        self.f.close()
        super().close()


def read_text(path: str | Path, member: str | None = None, encoding: str = "utf-8",
              what: str = "corpus", flag: str = "--corpus", max_chars: int = 0) -> str:
    """The decoded text of a .txt, .gz or .zip file (with `member` choosing inside a zip).

    `what` and `flag` name the file in messages (e.g. "text", "--text" for `evaluate --text`).
    At most MAX_BYTES are read, and with `max_chars` only as many as that many characters need;
    devices (/dev/zero) and FIFOs without a writer are refused, pipes read up to that bound.
    """
    path = Path(path)
    _check_readable(path, what, flag)
    mode = path.stat().st_mode
    if stat.S_ISREG(mode) and path.suffix.lower() not in (".gz", ".zip") and path.stat().st_size > MAX_BYTES \
            and not max_chars:
        raise _too_big(str(path))
    if member is not None and path.suffix.lower() != ".zip":
        raise CharlmError(f"--member chooses a file inside a .zip, and {path} is not one; drop --member")
    name = str(path)
    if path.suffix.lower() == ".zip":
        raw, cut, name = _read_zip(path, member, max_chars, encoding)
    elif path.suffix.lower() == ".gz":
        try:
            with gzip.open(path, "rb") as f:
                raw, cut = _read_bounded(f, max_chars, encoding)
        except (OSError, EOFError, zlib.error) as e:
            raise CharlmError(f"{path} is not a readable gzip file ({e})") from None
    else:
        with (_open_pipe(path, what, flag) if stat.S_ISFIFO(mode) else open(path, "rb")) as f:
            raw, cut = _read_bounded(f, max_chars, encoding)  # bounded: a pipe may never end
    if len(raw) > MAX_BYTES:
        raise _too_big(name)
    text = _decode(raw, encoding, name, cut)
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
    text = prepare_text(read_text(path, config.member, config.encoding, max_chars=config.max_chars),
                        config.newlines, config.max_chars)
    encoded = load_encoded(key, text)  # reused from the cache when the file and options are unchanged
    train, val = split(np.asarray(encoded.indices, dtype=np.int64), config.val_fraction)
    return Corpus(text, encoded.vocab, train, val, str(path), encoded.fingerprint)

