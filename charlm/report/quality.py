"""Measures of generated-sample quality: how varied is it, and how much is copied from training?

Everything works on Python ``str`` at the character level, so any script (Latin, Chinese, ...)
is handled the same way. No torch needed.
"""

from __future__ import annotations

from collections.abc import Iterable


def _ngrams(text: str, n: int) -> list[str]:
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    return [text[i : i + n] for i in range(len(text) - n + 1)]


def distinct_n(texts: str | Iterable[str], n: int) -> float:
    """Unique character n-grams / total n-grams, pooled over ``texts``; 0.0 when there are none.

    N-grams are taken inside each text only, so they never straddle two samples.
    """
    if isinstance(texts, str):
        texts = [texts]
    total = 0
    unique: set[str] = set()
    for text in texts:
        grams = _ngrams(text, n)
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else 0.0


def repeated_ngram_fraction(text: str, n: int = 4) -> float:
    """Fraction of n-gram occurrences in ``text`` that repeat an earlier one: (total - unique) / total."""
    grams = _ngrams(text, n)
    if not grams:
        return 0.0
    return (len(grams) - len(set(grams))) / len(grams)


class CopyIndex:
    """Answers "which parts of a sample occur verbatim in the training text?".

    Built on a suffix automaton of the training text: linear time and memory to build, and
    matching statistics for a sample take time linear in the sample's length.
    """

    def __init__(self, training_text: str):
        # Parallel lists rather than node objects: far less memory and faster for ~1e5 states.
        nxt: list[dict[str, int]] = [{}]
        link: list[int] = [-1]
        length: list[int] = [0]
        last = 0
        for ch in training_text:
            cur = len(length)
            nxt.append({})
            length.append(length[last] + 1)
            link.append(0)
            p = last
            while p != -1 and ch not in nxt[p]:
                nxt[p][ch] = cur
                p = link[p]
            if p != -1:
                q = nxt[p][ch]
                if length[p] + 1 == length[q]:
                    link[cur] = q
                else:
                    clone = len(length)
                    nxt.append(dict(nxt[q]))
                    length.append(length[p] + 1)
                    link.append(link[q])
                    while p != -1 and nxt[p].get(ch) == q:
                        nxt[p][ch] = clone
                        p = link[p]
                    link[q] = clone
                    link[cur] = clone
            last = cur
        self._next = nxt
        self._link = link
        self._len = length

    def matching_lengths(self, sample: str) -> list[int]:
        """For each end position i, the length of the longest suffix of sample[:i+1] found in training."""
        nxt, link, length = self._next, self._link, self._len
        state, cur_len = 0, 0
        out: list[int] = []
        for ch in sample:
            # Shorten the current match (follow suffix links) until it can be extended by ch.
            while state != 0 and ch not in nxt[state]:
                state = link[state]
                cur_len = length[state]
            if ch in nxt[state]:
                state = nxt[state][ch]
                cur_len += 1
            else:
                state, cur_len = 0, 0
            out.append(cur_len)
        return out

    def longest_copy(self, sample: str) -> tuple[int, str]:
        """Length and text of the longest substring of ``sample`` occurring verbatim in training."""
        best_len, best_end = 0, 0
        for i, m in enumerate(self.matching_lengths(sample)):
            if m > best_len:  # strict: the earliest longest copy wins ties
                best_len, best_end = m, i + 1
        return best_len, sample[best_end - best_len : best_end]

    def copied_chars(self, sample: str, min_len: int = 8) -> int:
        """Number of sample characters inside some copied span of length >= ``min_len``."""
        covered = 0
        covered_to = 0  # exclusive end of the union so far
        for i, m in enumerate(self.matching_lengths(sample)):
            if m >= min_len:
                # Span starts never decrease (L[i+1] <= L[i] + 1), so the union is built by
                # extending one running interval, counting each character once.
                start = max(i + 1 - m, covered_to)
                covered += i + 1 - start
                covered_to = i + 1
        return covered

    def copied_fraction(self, sample: str, min_len: int = 8) -> float:
        """Fraction of ``sample``'s characters inside verbatim training spans of length >= ``min_len``."""
        return self.copied_chars(sample, min_len) / len(sample) if sample else 0.0


def sample_report(samples: list[str], copy_index: CopyIndex, min_copy: int = 8) -> dict:
    """Aggregate quality numbers for a batch of samples, ready for a table row."""
    total_chars = sum(len(s) for s in samples)
    copied = sum(copy_index.copied_chars(s, min_copy) for s in samples)
    return {
        "distinct_1": distinct_n(samples, 1),
        "distinct_2": distinct_n(samples, 2),
        "distinct_3": distinct_n(samples, 3),
        "repeat_4": (
            sum(repeated_ngram_fraction(s, 4) for s in samples) / len(samples) if samples else 0.0
        ),
        "longest_copy": max((copy_index.longest_copy(s)[0] for s in samples), default=0),
        # Character-weighted, so a long mostly-copied sample is not drowned by short ones.
        "copied_fraction": copied / total_chars if total_chars else 0.0,
    }
