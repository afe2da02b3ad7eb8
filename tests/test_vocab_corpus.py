"""Vocabulary determinism, one-hot encoding, and reading/splitting corpora."""

import gzip
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from charlm.config import Config
from charlm.data.corpus import load_corpus, prepare_text, read_text, split
from charlm.errors import CharlmError
from charlm.data.vocab import Vocab, one_hot, to_onehot

VOCAB_SNIPPET = (
    "import sys; from charlm.data.vocab import Vocab; "
    "print(Vocab.build(open(sys.argv[1], encoding='utf-8').read()).idx_to_char)"
)


def test_vocab_is_identical_across_hash_seeds(small_corpus):
    outputs = set()
    for hash_seed in ("1", "2", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", VOCAB_SNIPPET, str(small_corpus)],
                             capture_output=True, text=True, env=env, check=True).stdout
        outputs.add(out)
    assert len(outputs) == 1


def test_vocab_is_sorted_set_and_round_trips(small_text):
    vocab = Vocab.build(small_text)
    assert vocab.idx_to_char == sorted(set(small_text))
    assert all(vocab.char_to_idx[c] == i for i, c in enumerate(vocab.idx_to_char))
    idx = vocab.encode(small_text)
    assert idx.dtype == np.int64 and idx.shape == (len(small_text),)
    assert vocab.decode(idx) == small_text
    assert [vocab.char_to_idx[c] for c in small_text] == idx.tolist()


def test_encode_rejects_unknown_characters(small_text):
    vocab = Vocab.build(small_text)
    with pytest.raises(CharlmError, match="龘"):
        vocab.encode("分开龘")


def test_to_onehot_matches_the_textbook():
    X = torch.tensor([[0, 2, 1], [3, 3, 0]])  # (batch 2, steps 3)
    inputs = to_onehot(X, 4)
    assert len(inputs) == 3
    for t, x in enumerate(inputs):
        assert x.shape == (2, 4)
        assert torch.equal(x.sum(1), torch.ones(2))
        assert torch.equal(x.argmax(1), X[:, t])
    assert torch.equal(one_hot(torch.tensor([0, 2]), 3), torch.tensor([[1., 0, 0], [0, 0, 1]]))


def test_reads_txt_gz_and_zip_alike(tmp_path, small_text):
    (tmp_path / "a.txt").write_text(small_text, encoding="utf-8")
    with gzip.open(tmp_path / "a.txt.gz", "wt", encoding="utf-8") as f:
        f.write(small_text)
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        zf.writestr("lyrics.txt", small_text.encode("utf-8"))
    for name in ("a.txt", "a.txt.gz", "a.zip"):
        assert read_text(tmp_path / name) == small_text


def test_zip_with_several_members_needs_member(tmp_path):
    with zipfile.ZipFile(tmp_path / "two.zip", "w") as zf:
        zf.writestr("a.txt", "分开分开".encode())
        zf.writestr("b.txt", "hello".encode())
    with pytest.raises(CharlmError, match="--member"):
        read_text(tmp_path / "two.zip")
    assert read_text(tmp_path / "two.zip", member="b.txt") == "hello"


def test_gbk_file_suggests_encoding(tmp_path):
    path = tmp_path / "gbk.txt"
    path.write_bytes("我想就这样牵着你的手不放开".encode("gbk"))
    with pytest.raises(CharlmError, match="--encoding gbk"):
        read_text(path)
    assert read_text(path, encoding="gbk") == "我想就这样牵着你的手不放开"


def test_prepare_text_newlines_and_max_chars():
    assert prepare_text("a\r\nb\nc", "keep") == "a\nb\nc"
    assert prepare_text("a\nb\nc", "space") == "a b c"
    assert prepare_text("abcdef", "keep", max_chars=3) == "abc"


def test_split_holds_out_the_last_fraction_contiguously():
    idx = np.arange(100)
    train, val = split(idx, 0.1)
    assert train.tolist() == list(range(90)) and val.tolist() == list(range(90, 100))


def test_load_corpus_builds_vocab_over_the_whole_text(small_corpus):
    corpus = load_corpus(Config(corpus=str(small_corpus), val_fraction=0.2))
    assert len(corpus.train) + len(corpus.val) == len(corpus.text)
    assert corpus.vocab.decode(np.concatenate([corpus.train, corpus.val])) == corpus.text
    assert corpus.train_text == corpus.text[:len(corpus.train)]
