"""Tests for charlm.report.quality; expected values are worked out by hand in the comments."""

import random

import pytest

from charlm.report.quality import CopyIndex, distinct_n, repeated_ngram_fraction, sample_report


# ---------------------------------------------------------------- distinct-n


def test_distinct_n_single_string():
    # "abab": 1-grams a,b,a,b -> 2 unique / 4 = 0.5
    assert distinct_n("abab", 1) == pytest.approx(0.5)
    # 2-grams ab,ba,ab -> 2 unique / 3
    assert distinct_n("abab", 2) == pytest.approx(2 / 3)
    # 3-grams aba,bab -> 2 / 2 = 1.0
    assert distinct_n("abab", 3) == pytest.approx(1.0)
    # no 5-grams in a 4-char string
    assert distinct_n("abab", 5) == 0.0


def test_distinct_n_pools_without_crossing_boundaries():
    # ["aa","ab"]: 1-grams a,a,a,b -> 2 unique / 4 = 0.5
    assert distinct_n(["aa", "ab"], 1) == pytest.approx(0.5)
    # 2-grams "aa","ab" -> 2 / 2 = 1.0 (joined "aaab" would give aa,aa,ab -> 2/3)
    assert distinct_n(["aa", "ab"], 2) == pytest.approx(1.0)
    # neither sample has a 3-gram
    assert distinct_n(["aa", "ab"], 3) == 0.0
    assert distinct_n([], 1) == 0.0
    assert distinct_n("", 1) == 0.0


def test_distinct_n_chinese():
    # "分开分开": 1-grams 分,开,分,开 -> 2 / 4 = 0.5
    assert distinct_n("分开分开", 1) == pytest.approx(0.5)
    # 2-grams 分开,开分,分开 -> 2 / 3
    assert distinct_n("分开分开", 2) == pytest.approx(2 / 3)
    # 3-grams 分开分,开分开 -> 2 / 2
    assert distinct_n("分开分开", 3) == pytest.approx(1.0)


def test_distinct_n_rejects_bad_n():
    with pytest.raises(ValueError):
        distinct_n("abc", 0)


# ---------------------------------------------------------------- repeated n-grams


def test_repeated_ngram_fraction():
    # "abcabcabc" 4-grams: abca,bcab,cabc,abca,bcab,cabc -> (6 - 3) / 6 = 0.5
    assert repeated_ngram_fraction("abcabcabc") == pytest.approx(0.5)
    # "abcdefgh": 5 distinct 4-grams -> 0 / 5
    assert repeated_ngram_fraction("abcdefgh") == 0.0
    # "aaaaaa": aaaa x3 -> (3 - 1) / 3
    assert repeated_ngram_fraction("aaaaaa") == pytest.approx(2 / 3)
    # "abab", n=2: ab,ba,ab -> (3 - 2) / 3
    assert repeated_ngram_fraction("abab", n=2) == pytest.approx(1 / 3)
    # "开开开开开" (5 chars), 4-grams: 开开开开 x2 -> (2 - 1) / 2
    assert repeated_ngram_fraction("开开开开开") == pytest.approx(0.5)
    # too short for any 4-gram
    assert repeated_ngram_fraction("abc") == 0.0
    assert repeated_ngram_fraction("") == 0.0


# ---------------------------------------------------------------- copy index

TRAIN = "abcdefghijklmnop"  # 16 distinct letters; X, Y, Z, Q never occur


def test_longest_copy_and_fraction_with_long_copy():
    idx = CopyIndex(TRAIN)
    sample = "XYZabcdefghijQQ"  # 15 chars, "abcdefghij" (10) copied
    assert idx.longest_copy(sample) == (10, "abcdefghij")
    # 10 copied chars / 15 = 2/3
    assert idx.copied_fraction(sample) == pytest.approx(2 / 3)


def test_short_overlaps_only():
    idx = CopyIndex(TRAIN)
    sample = "abcXdefXghiXjkl"  # 15 chars, four 3-char pieces of training
    # all four pieces have length 3; the first one wins the tie
    assert idx.longest_copy(sample) == (3, "abc")
    assert idx.copied_fraction(sample) == 0.0  # nothing reaches min_len=8
    # with min_len=3: 4 pieces * 3 chars = 12 / 15 = 0.8
    assert idx.copied_fraction(sample, min_len=3) == pytest.approx(0.8)


def test_fully_copied_and_unseen():
    idx = CopyIndex(TRAIN)
    assert idx.copied_fraction("cdefghijk") == 1.0  # 9 chars, all a training substring
    assert idx.longest_copy("cdefghijk") == (9, "cdefghijk")
    assert idx.copied_fraction("XYZQXYZQXYZ") == 0.0
    assert idx.longest_copy("XYZ") == (0, "")
    assert idx.matching_lengths("XYZ") == [0, 0, 0]
    assert idx.copied_fraction("") == 0.0
    assert idx.longest_copy("") == (0, "")


def test_overlapping_spans_counted_once():
    # Two training pieces that overlap on "ghij" when glued together in the sample.
    idx = CopyIndex("abcdefghij|ghijklmnop")
    sample = "abcdefghijklmnop"
    # a..j grow the match 1..10; at 'k' the longest suffix found is "ghijk" (5),
    # which then grows to "ghijklmnop" (10) at 'p'.
    assert idx.matching_lengths(sample) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 5, 6, 7, 8, 9, 10]
    # spans [0,9] and [6,15] overlap on 4 chars: union 16 of 16 (not (10 + 10) / 16 = 1.25)
    assert idx.copied_fraction(sample) == 1.0
    # "X" + sample + "X": union 16 of 18 = 8/9
    assert idx.copied_fraction("X" + sample + "X") == pytest.approx(8 / 9)
    # no copy of 11+ chars exists
    assert idx.copied_fraction(sample, min_len=11) == 0.0
    # two copies of length 10 tie; the earlier one is reported
    assert idx.longest_copy(sample) == (10, "abcdefghij")


def test_matching_lengths_small_by_hand():
    idx = CopyIndex("abcab")
    # c -> "c" (1); a -> "ca" (2); b -> "cab" (3); x -> 0
    assert idx.matching_lengths("cabx") == [1, 2, 3, 0]
    # b -> 1; b -> "bb" absent, "b" (1); c -> "bc" (2); a -> "bca" (3); b -> "bcab" (4)
    assert idx.matching_lengths("bbcab") == [1, 1, 2, 3, 4]


def _brute_matching_lengths(train: str, sample: str) -> list[int]:
    out = []
    for i in range(len(sample)):
        best = 0
        for length in range(1, i + 2):
            if sample[i + 1 - length : i + 1] in train:
                best = length
            else:
                break  # if a suffix is absent, every longer suffix is absent too
        out.append(best)
    return out


def _brute_copied_fraction(train: str, sample: str, min_len: int) -> float:
    covered = [False] * len(sample)
    for start in range(len(sample)):
        for end in range(start + min_len, len(sample) + 1):
            if sample[start:end] in train:
                for k in range(start, end):
                    covered[k] = True
    return sum(covered) / len(sample) if sample else 0.0


def test_matching_lengths_against_brute_force():
    rng = random.Random(1234)
    for _ in range(400):
        alphabet = "abc"[: rng.randint(1, 3)]
        train = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        sample = "".join(rng.choice("abcd") for _ in range(rng.randint(0, 25)))
        idx = CopyIndex(train)
        expected = _brute_matching_lengths(train, sample)
        assert idx.matching_lengths(sample) == expected, (train, sample)
        best = max(expected, default=0)
        length, text = idx.longest_copy(sample)
        assert length == best and len(text) == best and text in train
        min_len = rng.randint(1, 5)
        assert idx.copied_fraction(sample, min_len) == pytest.approx(
            _brute_copied_fraction(train, sample, min_len)
        ), (train, sample, min_len)


def test_large_training_text():
    rng = random.Random(0)
    train = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz .,") for _ in range(60_000))
    idx = CopyIndex(train)
    sample = train[30_000:30_200]
    assert idx.longest_copy(sample) == (200, sample)
    assert idx.copied_fraction(sample) == 1.0
    assert idx.copied_fraction("#" * 50) == 0.0


# ---------------------------------------------------------------- report


def test_sample_report():
    idx = CopyIndex("abcdefghij|ghijklmnop")
    report = sample_report(["abcdefghijklmnop", "zzzzz"], idx)
    # 21 chars, unique: a..p (16) + z = 17 -> 17/21
    assert report["distinct_1"] == pytest.approx(17 / 21)
    # bigrams: 15 distinct + zz x4 = 19 total, 16 unique -> 16/19
    assert report["distinct_2"] == pytest.approx(16 / 19)
    # trigrams: 14 distinct + zzz x3 = 17 total, 15 unique -> 15/17
    assert report["distinct_3"] == pytest.approx(15 / 17)
    # repeat_4: first 0 (13 distinct), "zzzzz" zzzz x2 -> 1/2; mean (0 + 0.5) / 2
    assert report["repeat_4"] == pytest.approx(0.25)
    assert report["longest_copy"] == 10
    # copied chars: 16 (union, see above) + 0 over 21 chars
    assert report["copied_fraction"] == pytest.approx(16 / 21)
    assert set(report) == {
        "distinct_1", "distinct_2", "distinct_3", "repeat_4", "longest_copy", "copied_fraction",
    }


def test_sample_report_empty():
    report = sample_report([], CopyIndex("abc"))
    assert report == {
        "distinct_1": 0.0, "distinct_2": 0.0, "distinct_3": 0.0,
        "repeat_4": 0.0, "longest_copy": 0, "copied_fraction": 0.0,
    }
