"""The form rules of character scripts (Chinese): a line is a template of slots and fixed characters.

    _ _ _ _ _ _ 花 \\n        a slot takes any non-punctuation character; the rhyme slot only its class
    _ _ _ _ [_ _ _ _] \\n     a flexible line (lengths drawn from the corpus, not asked for) may end
                              after any of its last slots, at a character of its rhyme class, where
                              the model itself wants the line to end

A flexible line also lets the model put a space between phrases, as lyrics do ("我的爱 你懂吗"),
without the space taking a slot. Both exist for fluency: docs/forms.md measured what forcing a
line break at a drawn length, and banning the lyrics' spaces, cost in log-probability.

A mixin of forms.constrain.FormState: position arrays over each stream's template, stepped with
numpy for the whole batch.
"""

from __future__ import annotations

import numpy as np
import torch

from charlm.errors import CharlmError
from charlm.forms import rhyme
from charlm.forms.rhyme_index import zh_class_masks, zh_groups_of
from charlm.forms.template import FREE, SLOT

MAX_INNER_SPACES = 3  # spaces a flexible line may hold between its phrases

SLOT_KIND, RHYME_KIND, FIXED_KIND = 0, 1, 2


class CharsForm:
    """Templates per stream: slot kinds by position, rhyme letters bound as they are written."""

    def _init_chars(self, plans, wants_rhyme):
        self.class_names, masks = zh_class_masks(self.vocab) if wants_rhyme else ([], np.zeros((0, self.V), bool))
        if wants_rhyme and not masks.any():
            raise CharlmError(rhyme.NO_RHYME)
        # bank rows: 0 content, 1 any rhyming character, 2.. one per class
        self.bank = torch.from_numpy(np.concatenate([self.content[None], (masks.any(0) & self.content)[None],
                                                     masks & self.content[None]]))
        self.char_class = np.where(masks.any(0), masks.argmax(0), -1) if len(masks) else np.full(self.V, -1)
        self.space = self.vocab.char_to_idx.get(" ", -1)
        B = len(plans)
        templates = ["\n".join(line.slots for line in p.lines) for p in plans]
        T = max(len(t) for t in templates) + 1
        self.length = np.array([len(t) for t in templates])
        self.kind = np.full((B, T), FIXED_KIND, dtype=np.int64)
        self.fixed = np.full((B, T), self.newline, dtype=np.int64)
        self.letter = np.full((B, T), -1, dtype=np.int64)  # at a rhyme slot: its letter's index
        self.line_letter = np.full((B, T), -1, dtype=np.int64)  # every position: its line's letter (-1 free)
        self.may_end = np.zeros((B, T), dtype=bool)  # a flexible line may end here (a break instead of a slot)
        self.line_end = np.zeros((B, T), dtype=np.int64)  # where the position's line break is
        self.line_of = np.zeros((B, T), dtype=np.int64)
        letters = sorted({line.rhyme for p in plans for line in p.lines} - {FREE})
        self.bound = np.full((B, max(1, len(letters))), -1, dtype=np.int64)  # the class each letter has taken
        for b, p in enumerate(plans):
            self._lay_out(b, p, letters)
            if p.rhyme_class and letters:
                self.bound[b, 0] = self._zh_class(p.rhyme_class)
        self.pos = np.zeros(B, dtype=np.int64)
        self.prev = np.full(B, -1, dtype=np.int64)  # the last character written in the line (-1: none yet)
        self.spaces = np.zeros(B, dtype=np.int64)  # spaces in the current line

    def _lay_out(self, b, plan, letters):
        pos = 0
        for i, line in enumerate(plan.lines):
            r = line.slots.rfind(SLOT)
            k = letters.index(line.rhyme) if line.rhyme != FREE else -1
            start, end = pos, pos + len(line.slots)
            self.line_end[b, start:end + 1] = end
            self.line_letter[b, start:end + 1] = k
            if line.shortest:
                self.may_end[b, start + line.shortest:end] = True
            for j, c in enumerate(line.slots):
                self.line_of[b, pos] = i
                if c == SLOT:
                    self.kind[b, pos] = RHYME_KIND if (j == r and k >= 0) else SLOT_KIND
                    if j == r and k >= 0:
                        self.letter[b, pos] = k
                elif c not in self.vocab.char_to_idx:
                    raise CharlmError(f"the form's character {c!r} is not in the model's vocabulary")
                else:
                    self.fixed[b, pos] = self.vocab.char_to_idx[c]
                pos += 1
            self.line_of[b, pos] = i + 1
            pos += 1  # the line break (or, after the last line, the end)

    def _zh_class(self, asked: str) -> int:
        """--rhyme: a class name (江阳) or a character of the class (光)."""
        name = asked if asked in self.class_names else next(iter(zh_groups_of(asked)), None) if len(asked) == 1 else None
        if name is None or name not in self.class_names:
            raise CharlmError(f"--rhyme {asked!r} is neither a rhyme class ({' '.join(self.class_names)}) nor a "
                              "Chinese character with one rhyme class")
        k = self.class_names.index(name)
        if not self.bank[2 + k].any():
            raise CharlmError(f"no character of the vocabulary rhymes in {name}")
        return k

    def _rhymes_here(self, b: int, c: int, k: int) -> bool:
        """Whether character c may close a line of letter index k (-1: a free line) for stream b."""
        if c < 0 or not self.content[c]:
            return False
        if k < 0:
            return True
        cls = self.bound[b, k]
        if cls >= 0:
            return bool(self.bank[2 + cls, c])
        taken = self.bound[b][self.bound[b] >= 0]
        return self.char_class[c] >= 0 and self.char_class[c] not in taken  # a new letter is a new rhyme

    def _chars_allowed(self) -> torch.Tensor:
        B = len(self.plans)
        rows = np.arange(B)
        p = np.minimum(self.pos, self.kind.shape[1] - 1)
        kind, letter = self.kind[rows, p], self.letter[rows, p]
        cls = np.where(letter >= 0, self.bound[rows, np.maximum(letter, 0)], -1)
        bank_row = np.where(kind == RHYME_KIND, np.where(cls >= 0, 2 + cls, 1), 0)
        allowed = self.bank[torch.from_numpy(bank_row)].clone()  # (B, V)
        for b in np.flatnonzero((kind == RHYME_KIND) & (cls < 0) & (self.bound >= 0).any(1)):
            taken = self.bound[b][self.bound[b] >= 0]  # another letter's class: a new letter is a new rhyme
            allowed[b] &= ~self.bank[torch.from_numpy(2 + taken)].any(0)
        fixed = np.flatnonzero((kind == FIXED_KIND) | (self.pos >= self.length))
        if len(fixed):
            allowed[torch.from_numpy(fixed)] = False
            chars = self.fixed[fixed, p[fixed]]
            allowed[torch.from_numpy(fixed), torch.from_numpy(np.maximum(chars, 0))] = True
        flexible = np.flatnonzero(self.may_end[rows, p] & (self.pos < self.length))
        for b in flexible:
            if self._rhymes_here(b, self.prev[b], self.line_letter[b, p[b]]):
                allowed[b, self.newline] = True
        if self.space >= 0:
            spaced = np.flatnonzero((kind == SLOT_KIND) & (self.prev >= 0) & (self.prev != self.space)
                                    & (self.spaces < MAX_INNER_SPACES) & self._flexible_line(rows, p))
            allowed[torch.from_numpy(spaced), self.space] = True
        return allowed

    def _flexible_line(self, rows, p) -> np.ndarray:
        return self.may_end[rows, self.line_end[rows, p] - 1]

    def _chars_step(self, b: int, c: int) -> bool:
        """Take one character of stream b; False when it is past the end (the stream ends there)."""
        p = self.pos[b]
        if p >= self.length[b]:
            return False
        kind = self.kind[b, p]
        if c == self.newline and kind != FIXED_KIND:
            return self._end_line_early(b, p)
        if c == self.space and kind == SLOT_KIND and self.may_end[b, self.line_end[b, p] - 1] and self.prev[b] >= 0 \
                and self.prev[b] != self.space:
            self.spaces[b] += 1  # a space between phrases takes no slot
            self.prev[b] = c
            return True
        if kind == FIXED_KIND and c != self.fixed[b, p]:
            want = self.vocab.idx_to_char[self.fixed[b, p]]
            raise CharlmError(f"the prefix does not fit the form: character {p + 1} of the body must be {want!r}")
        if kind != FIXED_KIND and not self.content[c]:
            raise CharlmError(f"the prefix does not fit the form: character {p + 1} of the body is a slot for a "
                              f"character, not {self.vocab.idx_to_char[c]!r}")
        if kind == RHYME_KIND:
            self._bind(b, self.letter[b, p], c)
        if c == self.newline and kind == FIXED_KIND or p + 1 == self.length[b]:  # a line is complete
            self._note_line_class(b, "zh")
        self.pos[b] += 1
        self.prev[b] = -1 if c == self.newline else c
        if c == self.newline:
            self.spaces[b] = 0
        return True

    def _bind(self, b: int, letter: int, c: int) -> None:
        k = next(iter(zh_groups_of(self.vocab.idx_to_char[c])), None)
        if letter >= 0 and self.bound[b, letter] < 0 and k in self.class_names:
            self.bound[b, letter] = self.class_names.index(k)

    def _end_line_early(self, b: int, p: int) -> bool:
        """A flexible line ends here: its last character is its rhyme."""
        if not self.may_end[b, p] or not self._rhymes_here(b, self.prev[b], self.line_letter[b, p]):
            raise CharlmError(f"the prefix does not fit the form: a line break at character {p + 1} of the body")
        self._bind(b, self.line_letter[b, p], self.prev[b])
        self._note_line_class(b, "zh")
        end = self.line_end[b, p]
        self.prev[b], self.spaces[b] = -1, 0
        if end >= self.length[b]:  # the last line: the piece ends here and the break is not written
            self.pos[b] = self.length[b]
            return False
        self.pos[b] = end + 1
        return True
