"""The form rules of alphabetic scripts (English): a line is a number of words, the last one rhyming.

    word word ... [rhyme word from the trie] [.,;] \n
                  ^ no line break before the last word; only spellings of the class's words

A mixin of forms.constrain.FormState: it keeps one small state machine per stream (which word of
the line it is in, where in the rhyme trie its last word has got to).
"""

from __future__ import annotations

import numpy as np

from charlm.errors import CharlmError
from charlm.forms import rhyme
from charlm.forms.template import FREE

WORD_CHARS = "'’-"  # inside a word: summer's, self-love
MAX_TRAILING_PUNCT = 3
MAX_WORD = 14  # letters in one word: past it the word must end (greedy text can spell one word for ever)


class WordsForm:
    """Words per line and rhyming last words, stream by stream (see the module docstring)."""

    def _init_words(self, plans, words, wants_rhyme):
        chars = self.vocab.idx_to_char
        self.letter_mask = np.array([c.isalpha() or c in WORD_CHARS for c in chars])
        self.is_alpha = np.array([c.isalpha() for c in chars])
        if wants_rhyme and (words is None or not words.classes):
            raise CharlmError("none of the words this model can spell is in the CMU dictionary with a rhyme; "
                              "rhyme needs English words of the training text")
        self.words = words
        B = len(plans)
        self.line = np.zeros(B, dtype=np.int64)
        self.done = np.zeros(B, dtype=np.int64)  # words finished in the line
        self.in_word = np.zeros(B, dtype=bool)
        self.phase = np.zeros(B, dtype=np.int64)  # 0 before the last word, 1 in it, 2 after it
        self.node = np.zeros(B, dtype=np.int64)
        self.punct_run = np.zeros(B, dtype=np.int64)
        self.last_word = [""] * B
        self.bound_w: list[dict[str, int]] = [{} for _ in range(B)]
        self.used: list[dict[str, set]] = [{} for _ in range(B)]  # rhyme letter -> the words that took it
        for b, p in enumerate(plans):
            if p.rhyme_class and words is not None:
                k = words.class_id(rhyme.en_word_class(p.rhyme_class)[0] or p.rhyme_class)
                if k < 0:
                    raise CharlmError(f"--rhyme {p.rhyme_class!r}: no word of the training text rhymes with it")
                first = next((line.rhyme for line in p.lines if line.rhyme != FREE), None)
                if first:
                    self.bound_w[b][first] = k
            self._enter_line(b)

    def _plan_line(self, b):
        lines = self.plans[b].lines
        return lines[self.line[b]] if self.line[b] < len(lines) else None

    def _enter_line(self, b):
        self.done[b], self.in_word[b], self.phase[b], self.node[b], self.punct_run[b] = 0, False, 0, 0, 0
        self.last_word[b] = ""
        line = self._plan_line(b)
        if line is not None and line.words <= 1:
            self.phase[b] = 1

    def _class_wanted(self, b) -> int:
        line = self._plan_line(b)
        if line is None or line.rhyme == FREE:
            return -2  # no rhyme
        return self.bound_w[b].get(line.rhyme, -1)

    def _taken(self, b) -> set:
        """Classes other letters hold: an unbound letter may not take them."""
        return set(self.bound_w[b].values())

    def _words_allowed_row(self, b) -> np.ndarray:
        allowed = np.zeros(self.V, dtype=bool)
        line = self._plan_line(b)
        if line is None:
            if self.newline >= 0:
                allowed[self.newline] = True  # the end: this character is dropped
            return allowed
        if self.phase[b] == 0:
            allowed[:] = True
            if self.newline >= 0:
                allowed[self.newline] = False
            if self._written[b][-1:] == " " and (self.done[b] or self.in_word[b] or self._indent(b) >= 4):
                allowed &= ~self.is_space  # one space between words (a short indent at the line's start)
            if self.punct_run[b] >= MAX_TRAILING_PUNCT:
                allowed &= ~(self.is_punct & ~self.letter_mask)
            if self.in_word[b] and self._word_length(b) >= MAX_WORD:
                allowed &= ~self.letter_mask
            if self.done[b] == line.words - 1 and not self.in_word[b]:
                allowed &= ~self.letter_mask  # the last word starts after a space
            return allowed
        nl = [self.newline] if self.newline >= 0 else []
        if self.phase[b] == 2:  # after the last word: its punctuation, then the line break
            if self.punct_run[b] < MAX_TRAILING_PUNCT:
                allowed |= self.is_punct & ~self.letter_mask
            allowed[nl] = True
            return allowed
        cls = self._class_wanted(b)
        if cls == -2:  # a free last word: letters, then punctuation or the line break
            allowed |= self.letter_mask if self.in_word[b] else self.is_alpha
            if self._word_length(b) >= MAX_WORD:
                allowed &= ~self.letter_mask
            if self.in_word[b]:
                allowed |= self.is_punct & ~self.letter_mask
                allowed[nl] = True
            return allowed
        node, used = self.node[b], self.used[b].get(self._plan_line(b).rhyme, ())
        taken = self._taken(b) if cls < 0 else ()
        allowed[self.words.next_chars(node, cls, used, taken)] = True
        if node and self.words.ends_word(node, cls, used) and self.words.ends[node] not in taken:
            allowed |= self.is_punct & ~self.letter_mask
            allowed[nl] = True
        return allowed

    def _words_step(self, b: int, c: int) -> bool:
        line = self._plan_line(b)
        if line is None:
            return False
        ch = self.vocab.idx_to_char[c]
        is_letter = bool(self.letter_mask[c])
        if c == self.newline:
            if self.phase[b] == 1 and self.in_word[b] or self.phase[b] == 2:
                self._finish_word(b)
            self._note_line_class(b, "en")
            self.line[b] += 1
            last = self.line[b] >= len(self.plans[b].lines)
            self._enter_line(b)
            return not last  # the break after the last line is not written: the piece ends there
        if self.phase[b] == 0:
            self.punct_run[b] = self.punct_run[b] + 1 if self.is_punct[c] and not is_letter else 0
            if is_letter and not self.in_word[b]:
                self.in_word[b] = True
            elif not is_letter and self.in_word[b]:
                self.in_word[b] = False
                self.done[b] += 1
            if self.done[b] == line.words - 1 and not self.in_word[b] and ch == " ":
                self.phase[b] = 1
            return True
        if self.phase[b] == 1:
            if is_letter:
                self.in_word[b] = True
                self.last_word[b] += ch
                kids = self.words.children[self.node[b]] if self.words is not None else {}
                self.node[b] = kids.get(c, 0)
            else:
                self._finish_word(b)
                self.phase[b], self.punct_run[b] = 2, 1
            return True
        self.punct_run[b] += 1
        return True

    def _word_length(self, b) -> int:
        """Letters at the end of the stream's text: the word being written."""
        text = self._written[b]
        n = 0
        while n < len(text) and self.letter_mask[self.vocab.char_to_idx[text[-1 - n]]]:
            n += 1
        return n

    def _indent(self, b) -> int:
        line = self._written[b].rsplit("\n", 1)[-1]
        return len(line) - len(line.lstrip(" "))

    def _finish_word(self, b):
        line = self._plan_line(b)
        if line is None or line.rhyme == FREE or self.words is None:
            return
        k = self.words.ends[self.node[b]]
        if k >= 0 and line.rhyme not in self.bound_w[b]:
            self.bound_w[b][line.rhyme] = k
        self.used[b].setdefault(line.rhyme, set()).add(self.last_word[b].lower())
