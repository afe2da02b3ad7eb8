"""The vectorised encoder and the on-disk encode cache: same vocabulary and indices, reused only while valid."""

import os

import numpy as np
import pytest

from charlm.data import cache as encode_cache
from charlm.data import encode
from charlm.config import Config
from charlm.data.corpus import load_corpus
from charlm.data.cache import Encoded, cache_dir, corpus_key, encode_to_file, load_encoded
from charlm.data.encode import encode_indices, fingerprint
from charlm.data.encode import fingerprint as text_fingerprint
from charlm.errors import CharlmError
from charlm.data.vocab import Vocab

# 4-byte characters (emoji, a CJK extension-B ideograph), Chinese, Latin with accents,
# Cyrillic, combining marks (e + U+0301, a + U+0308), a zero-width joiner sequence.
MIXED = ("分开 不分开 😀🎉 𠀋 naïve café Привет мир e\u0301a\u0308 "
         "👩\u200d💻 ǅ ß Ωmega 日本語\n\t" * 7)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """Point the cache at a fresh folder and cache texts of any length."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("CHARLM_CACHE", str(folder))
    monkeypatch.setattr(encode_cache, "MIN_CACHED_CHARS", 0)
    return folder


def _corpus(tmp_path, text, name="corpus.txt"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _load(path, config=None):
    config = config or Config(corpus=str(path))
    key = corpus_key(path, config)
    return load_encoded(key, path.read_text(encoding="utf-8"))


def test_mixed_scripts_and_emoji_round_trip_exactly():
    vocab = Vocab.build(MIXED)
    assert vocab.idx_to_char == Vocab.build(MIXED).idx_to_char == sorted(set(MIXED))
    indices = encode_indices(MIXED, vocab)
    assert indices.dtype == np.int64
    assert np.array_equal(indices, vocab.encode(MIXED))
    assert np.array_equal(indices, [vocab.char_to_idx[c] for c in MIXED])
    assert vocab.decode(indices) == MIXED
    assert "😀" in vocab and "\u0301" in vocab  # astral and combining characters are characters of their own


def test_chunked_encoding_matches_whole_text(monkeypatch, tmp_path):
    monkeypatch.setattr(encode, "CHUNK", 5)  # many chunks, with boundaries inside every script
    vocab = Vocab.build(MIXED)
    assert vocab.idx_to_char == sorted(set(MIXED))
    assert np.array_equal(encode_indices(MIXED, vocab, np.uint16), vocab.encode(MIXED))
    assert text_fingerprint(MIXED) == fingerprint(MIXED)
    out = encode_to_file(MIXED, vocab, tmp_path / "x.npy")
    on_disk = np.load(out, mmap_mode="r")
    assert on_disk.dtype == np.uint8 and vocab.decode(on_disk) == MIXED  # < 256 characters: one byte each


def test_fingerprint_hashes_exactly_the_utf8_text(monkeypatch):
    """The fingerprint is stored in checkpoints and cache entries: chunking must not change a byte of it."""
    import hashlib

    monkeypatch.setattr(encode, "CHUNK", 5)
    assert fingerprint(MIXED) == hashlib.sha256(MIXED.encode("utf-8")).hexdigest()[:16]
    assert fingerprint("") == hashlib.sha256(b"").hexdigest()[:16]


def test_unknown_characters_are_refused_in_words():
    vocab = Vocab.build("abc")
    with pytest.raises(CharlmError, match="not in the vocabulary: 'xz'"):
        encode_indices("abxcz", vocab)
    with pytest.raises(CharlmError, match="not in the vocabulary"):
        encode_indices("ab😀", vocab)  # a code point beyond the lookup table


def test_hand_made_vocabulary_out_of_code_point_order_still_encodes(tmp_path):
    vocab = Vocab(["b", "a", "c"])
    assert encode_indices("abcab", vocab).tolist() == [1, 0, 2, 1, 0]
    assert np.load(encode_to_file("abcab", vocab, tmp_path / "x.npy")).tolist() == [1, 0, 2, 1, 0]


def test_cache_is_written_then_read_not_rebuilt(tmp_path, cache, monkeypatch):
    path = _corpus(tmp_path, MIXED)
    first = _load(path)
    assert not first.reused and first.file is not None and first.file.parent == cache
    assert np.array_equal(first.indices, Vocab.build(MIXED).encode(MIXED))

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cache was rebuilt although the corpus is unchanged")
    monkeypatch.setattr(Vocab, "build", no_rebuild)
    monkeypatch.setattr(encode_cache, "encode_to_file", no_rebuild)
    second = _load(path)
    assert second.reused and second.file == first.file
    assert isinstance(second.indices, np.memmap)  # read from disk, memory-mapped
    assert second.vocab.idx_to_char == first.vocab.idx_to_char
    assert np.array_equal(second.indices, first.indices)
    assert second.fingerprint == fingerprint(MIXED)


def test_same_size_content_change_is_rebuilt_even_with_the_old_mtime(tmp_path, cache):
    path = _corpus(tmp_path, "abcdefgh" * 20)
    before = os.stat(path)
    first = _load(path)
    path.write_text("abcdefgx" * 20, encoding="utf-8")  # same size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the same mtime: only the hash differs
    assert os.stat(path).st_size == before.st_size and os.stat(path).st_mtime_ns == before.st_mtime_ns
    second = _load(path)
    assert not second.reused
    assert second.vocab.decode(second.indices) == "abcdefgx" * 20
    assert "x" in second.vocab and "h" not in second.vocab
    assert not first.file.exists() or first.file == second.file  # the stale index file is gone
    assert _load(path).reused


def test_mtime_change_alone_is_rebuilt(tmp_path, cache):
    path = _corpus(tmp_path, MIXED)
    _load(path)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert not _load(path).reused
    assert _load(path).reused


def test_options_are_part_of_the_key(tmp_path, cache):
    path = _corpus(tmp_path, "ab\ncd\n" * 30)
    _load(path, Config(corpus=str(path)))
    other = Config(corpus=str(path), newlines="space")
    assert not _load(path, other).reused
    assert _load(path, other).reused and _load(path, Config(corpus=str(path))).reused


def test_damaged_entry_is_rebuilt(tmp_path, cache):
    path = _corpus(tmp_path, MIXED)
    first = _load(path)
    first.file.write_bytes(b"not an npy file")
    again = _load(path)
    assert not again.reused and again.vocab.decode(again.indices) == MIXED
    next(cache.glob("*.json")).write_text("{broken", encoding="utf-8")
    assert not _load(path).reused


def test_load_corpus_is_identical_with_and_without_the_cache(tmp_path, cache, monkeypatch):
    path = _corpus(tmp_path, MIXED)
    config = Config(corpus=str(path), val_fraction=0.2)
    cold, warm = load_corpus(config), load_corpus(config)
    monkeypatch.setenv("CHARLM_CACHE", "off")
    assert cache_dir() is None
    plain = load_corpus(config)
    for c in (cold, warm):
        assert c.vocab.idx_to_char == plain.vocab.idx_to_char
        assert c.train.dtype == np.int64 and np.array_equal(c.train, plain.train)
        assert np.array_equal(c.val, plain.val)
        assert c.fingerprint == plain.fingerprint == fingerprint(plain.text)
    assert len(list(cache.glob("*.json"))) == 1


def test_small_texts_are_not_cached_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("CHARLM_CACHE", str(tmp_path / "cache"))
    path = _corpus(tmp_path, MIXED)
    result = _load(path)
    assert isinstance(result, Encoded) and result.file is None and not result.reused
    assert not list((tmp_path / "cache").glob("*"))


def test_unwritable_cache_folder_falls_back_to_a_writable_one(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("CHARLM_CACHE", str(blocker / "cache"))  # cannot be created: a file is in the way
    folder = cache_dir()
    assert folder is not None and folder != blocker / "cache" and os.access(folder, os.W_OK)
