"""Which characters and words of a model's vocabulary rhyme, and in which class: the index a form's mask reads.

Chinese: a (classes, vocab) mask of the characters whose every reading falls in one 十三辙 class.
English: a trie of the training text's words that the CMU dictionary gives a rhyme, over character
indices, so that a rhyme slot can be spelled one character at a time and never reach a dead end.
"""

from __future__ import annotations

import functools
import re

import numpy as np

from charlm.forms import rhyme


def zh_class_masks(vocab) -> tuple[list[str], np.ndarray]:
    """(class names, (classes, V) bool): the characters whose every reading falls in the class.

    A character with readings in two classes (还 hai/huan, 落 luo/lao) belongs to neither, so a rhyme
    slot never depends on which reading a reader takes.
    """
    names = sorted(rhyme.ZH_GROUPS)
    masks = np.zeros((len(names), len(vocab)), dtype=bool)
    for i, ch in enumerate(vocab.idx_to_char):
        groups = zh_groups_of(ch)
        if len(groups) == 1:
            masks[names.index(next(iter(groups))), i] = True
    return names, masks


@functools.lru_cache(maxsize=None)
def zh_groups_of(ch: str) -> frozenset:
    if not ("\u3400" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff"):
        return frozenset()
    from pypinyin import Style, pinyin
    finals = pinyin(ch, style=Style.FINALS, heteronym=True, strict=True)[0]
    return frozenset(g for g in (rhyme.zh_group(f) for f in finals) if g)


class RhymeWords:
    """The rhyming words a vocabulary can spell, as a trie over character indices (English)."""

    def __init__(self, words, vocab):
        by_class: dict[str, set[str]] = {}
        spelled = {}
        for w in words:
            cls, guessed = rhyme.en_word_class(w)
            if cls is None or guessed or any(c not in vocab.char_to_idx for c in w):
                continue
            by_class.setdefault(cls, set()).add(w.lower())
            spelled[w] = cls
        # a class needs two different words, or its second line could only repeat the first one's word
        self.classes = sorted(c for c, ws in by_class.items() if len(ws) >= 2)
        ids = {c: k for k, c in enumerate(self.classes)}
        self.children: list[dict[int, int]] = [{}]
        self.below: list[dict[int, set]] = [{}]  # class -> the words (lower case) under each node
        self.ends: list[int] = [-1]  # the class of the word that ends at a node, -1: none
        self.word: list[str] = [""]  # the word (lower case) that ends at a node
        for w, cls in spelled.items():
            if cls not in ids:
                continue
            k, node, low = ids[cls], 0, w.lower()
            for c in w:
                self.below[node].setdefault(k, set()).add(low)
                nxt = self.children[node].get(vocab.char_to_idx[c])
                if nxt is None:
                    nxt = len(self.children)
                    self.children[node][vocab.char_to_idx[c]] = nxt
                    self.children.append({})
                    self.below.append({})
                    self.ends.append(-1)
                    self.word.append("")
                node = nxt
            self.below[node].setdefault(k, set()).add(low)
            self.ends[node], self.word[node] = k, low

    def class_id(self, name: str) -> int:
        return self.classes.index(name) if name in self.classes else -1

    def next_chars(self, node: int, cls: int, used=(), taken=()) -> list[int]:
        """Characters that continue a word of class `cls` (-1: any class but `taken`) from `node` towards a word
        not in `used`: looking ahead to whole words, so that a stream never spells itself into a dead end."""
        def open_(n):
            classes = ([ws for k, ws in self.below[n].items() if k not in taken] if cls < 0
                       else [self.below[n].get(cls, ())])
            return any(len(ws) > len(used) or any(w not in used for w in ws) for ws in classes)
        return [c for c, n in self.children[node].items() if open_(n)]

    def ends_word(self, node: int, cls: int, used=()) -> bool:
        """A word of class `cls` (-1: any) ends at `node`, and it is not one of `used` (no rhyme on the same word)."""
        k = self.ends[node]
        return k >= 0 and (cls < 0 or k == cls) and self.word[node] not in used


def words_of(text: str, limit: int = 20000) -> list[str]:
    """The distinct words of a text, most frequent first (at most `limit`)."""
    from collections import Counter
    counts = Counter(m.strip("'’-") for m in re.findall(r"[A-Za-z][A-Za-z'’-]*", text[:3_000_000]))
    return [w for w, _ in counts.most_common(limit) if w]
