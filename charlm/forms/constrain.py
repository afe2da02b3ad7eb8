"""Form constraints on a batch of streams: which characters each stream may write next, step by step.

Exactness is structural, so a form never fails by chance: a line ends exactly at its length, a
template's fixed characters are written where it has them, and a rhyme slot takes only characters
(Chinese) or words (English) of its class. Fluency is left to the model: within what the form
allows, the decoder samples from the model's own distribution, so the class of a first rhyme is
chosen by the model's probability mass over each class's characters at that slot.

    character scripts (a template per line)         alphabetic scripts (words per line)
    _ _ _ _ _ _ 花 \\n                                 word word ... [rhyme word from the trie] [.,;] \\n
    ^ any non-punctuation character                   ^ no line break before the last word
                ^ only 发花 characters (rhyme A)                       ^ only spellings of class A's words

`FormState` is one of the decoder's rules (charlm/generate/decode.py `Rules`): `allowed()` gives a
(streams, vocab) mask, `step(chosen)` moves every stream on and says which streams keep their
character (a stream that has finished its last line ends there), `reorder(rows)` serves beam search.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from charlm.errors import CharlmError
from charlm.forms import rhyme
from charlm.forms.rhyme_index import RhymeWords, zh_class_masks, zh_groups_of
from charlm.forms.template import FREE, SLOT, Plan, is_punct

WORD_CHARS = "'’-"  # inside a word: summer's, self-love
MAX_TRAILING_PUNCT = 3
MAX_WORD = 14  # letters in one word: past it the word must end (greedy text can spell one word for ever)


# --- the state of a batch ----------------------------------------------------------------------

class FormState:
    """Per-stream form bookkeeping for a batch (all streams of one batch share `units`)."""

    def __init__(self, plans: list[Plan], bodies: list[str], vocab, words: RhymeWords | None = None):
        self.plans, self.vocab, self.V = plans, vocab, len(vocab)
        self.units = plans[0].units
        B = len(plans)
        self.newline = vocab.char_to_idx.get("\n", -1)
        if self.newline < 0 and any(len(p.lines) > 1 for p in plans):
            raise CharlmError("the model's vocabulary has no line break, so it cannot write lines; "
                              "forms need a corpus of lines")
        chars = vocab.idx_to_char
        self.is_punct = np.array([is_punct(c) for c in chars])
        self.is_space = np.array([c.isspace() for c in chars])
        self.content = ~self.is_punct & ~self.is_space  # what a slot may hold
        self.alive = np.ones(B, dtype=bool)
        self.end = np.full(B, np.iinfo(np.int64).max // 2)  # where each stream ended (not yet: past any length)
        self.t = 0
        self.line_classes: list[list[str | None]] = [[] for _ in range(B)]
        wants_rhyme = any(line.rhyme != FREE for p in plans for line in p.lines)
        self._written = [""] * B  # each stream's body so far
        if self.units == "chars":
            self._init_chars(plans, wants_rhyme)
        else:
            self._init_words(plans, words, wants_rhyme)
        for b, body in enumerate(bodies):  # the part of the body the prefix has written
            self._replay(b, body)

    # character scripts ------------------------------------------------------------------------
    def _init_chars(self, plans, wants_rhyme):
        self.class_names, masks = zh_class_masks(self.vocab) if wants_rhyme else ([], np.zeros((0, self.V), bool))
        if wants_rhyme and not masks.any():
            raise CharlmError(rhyme.NO_RHYME)
        # bank rows: 0 content, 1 any rhyming character, 2.. one per class
        self.bank = torch.from_numpy(np.concatenate([self.content[None], (masks.any(0) & self.content)[None],
                                                     masks & self.content[None]]))
        B = len(plans)
        templates = ["\n".join(line.slots for line in p.lines) for p in plans]
        T = max(len(t) for t in templates) + 1
        self.length = np.array([len(t) for t in templates])
        self.kind = np.full((B, T), 2, dtype=np.int64)  # 0 slot, 1 rhyme slot, 2 fixed
        self.fixed = np.full((B, T), self.newline, dtype=np.int64)
        self.letter = np.full((B, T), -1, dtype=np.int64)
        self.line_of = np.zeros((B, T), dtype=np.int64)
        letters = sorted({line.rhyme for p in plans for line in p.lines} - {FREE})
        self.bound = np.full((B, max(1, len(letters))), -1, dtype=np.int64)  # the class each letter has taken
        for b, p in enumerate(plans):
            pos = 0
            for i, line in enumerate(p.lines):
                r = line.slots.rfind(SLOT)
                for j, c in enumerate(line.slots):
                    self.line_of[b, pos] = i
                    if c == SLOT:
                        self.kind[b, pos] = 1 if (j == r and line.rhyme != FREE) else 0
                        if j == r and line.rhyme != FREE:
                            self.letter[b, pos] = letters.index(line.rhyme)
                    elif c not in self.vocab.char_to_idx:
                        raise CharlmError(f"the form's character {c!r} is not in the model's vocabulary")
                    else:
                        self.fixed[b, pos] = self.vocab.char_to_idx[c]
                    pos += 1
                self.line_of[b, pos] = i + 1
                pos += 1  # the line break (or, after the last line, the end)
            if p.rhyme_class and letters:
                self.bound[b, 0] = self._zh_class(p.rhyme_class)
        self.pos = np.zeros(B, dtype=np.int64)

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

    def _chars_allowed(self) -> torch.Tensor:
        B = len(self.plans)
        rows = np.arange(B)
        p = np.minimum(self.pos, self.kind.shape[1] - 1)
        kind, letter = self.kind[rows, p], self.letter[rows, p]
        cls = np.where(letter >= 0, self.bound[rows, np.maximum(letter, 0)], -1)
        bank_row = np.where(kind == 1, np.where(cls >= 0, 2 + cls, 1), 0)
        allowed = self.bank[torch.from_numpy(bank_row)].clone()  # (B, V)
        for b in np.flatnonzero((kind == 1) & (cls < 0) & (self.bound >= 0).any(1)):
            taken = self.bound[b][self.bound[b] >= 0]  # another letter's class: a new letter is a new rhyme
            allowed[b] &= ~self.bank[torch.from_numpy(2 + taken)].any(0)
        fixed = np.flatnonzero((kind == 2) | (self.pos >= self.length))
        if len(fixed):
            allowed[torch.from_numpy(fixed)] = False
            chars = self.fixed[fixed, p[fixed]]
            allowed[torch.from_numpy(fixed), torch.from_numpy(np.maximum(chars, 0))] = True
        return allowed

    def _chars_step(self, b: int, c: int) -> bool:
        """Take one character of stream b; False when it is past the end (the stream ends there)."""
        p = self.pos[b]
        if p >= self.length[b]:
            return False
        kind = self.kind[b, p]
        if kind == 2 and c != self.fixed[b, p]:
            want = self.vocab.idx_to_char[self.fixed[b, p]]
            raise CharlmError(f"the prefix does not fit the form: character {p + 1} of the body must be {want!r}")
        if kind != 2 and not self.content[c]:
            raise CharlmError(f"the prefix does not fit the form: character {p + 1} of the body is a slot for a "
                              f"character, not {self.vocab.idx_to_char[c]!r}")
        if kind == 1:
            k = next(iter(zh_groups_of(self.vocab.idx_to_char[c])), None)
            letter = self.letter[b, p]
            if self.bound[b, letter] < 0 and k in self.class_names:
                self.bound[b, letter] = self.class_names.index(k)
        if c == self.newline and kind == 2 or p + 1 == self.length[b]:  # a line is complete
            self._note_line_class(b, "zh")
        self.pos[b] += 1
        return True

    # alphabetic scripts -----------------------------------------------------------------------
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

    # the rule's interface ---------------------------------------------------------------------
    def _note_line_class(self, b: int, script: str) -> None:
        """The rhyme class the line just completed ends in (None when it ends in no rhyming unit)."""
        text = self._written[b]
        text = text[:-1] if text.endswith("\n") else text
        line = text.rsplit("\n", 1)[-1]
        self.line_classes[b].append(rhyme.line_class(line, script)[0] if line.strip() else None)

    def _replay(self, b: int, body: str) -> None:
        """Walk the prefix's part of the body through the form (binding any rhyme it already has)."""
        for ch in body:
            c = self.vocab.char_to_idx.get(ch)
            if c is None:
                raise CharlmError(f"the prefix character {ch!r} is not in the model's vocabulary")
            if self._ended(b):
                raise CharlmError("the prefix is longer than the form")
            self._written[b] += ch
            if not self._take(b, c):
                raise CharlmError("the prefix is longer than the form")

    def _ended(self, b: int) -> bool:
        if self.units == "chars":
            return self.pos[b] >= self.length[b]
        return self.line[b] >= len(self.plans[b].lines)

    def _take(self, b: int, c: int) -> bool:
        return self._chars_step(b, c) if self.units == "chars" else self._words_step(b, c)

    def allowed(self) -> torch.Tensor:
        """(B, V) bool: what each stream may write next (all False never happens while a stream is alive)."""
        if self.units == "chars":
            return self._chars_allowed()
        return torch.from_numpy(np.stack([self._words_allowed_row(b) for b in range(len(self.plans))]))

    def step(self, nxt) -> np.ndarray:
        """Take the chosen characters; returns which streams keep theirs (the others have ended)."""
        keep = self.alive.copy()
        for b in np.flatnonzero(self.alive):
            c = int(nxt[b])
            kept = not self._ended(b)
            if kept:
                self._written[b] += self.vocab.idx_to_char[c]
                kept = self._take(b, c)
                if not kept:
                    self._written[b] = self._written[b][:-1]
            if not kept:
                keep[b] = False
                self.end[b] = self.t
        self.alive = keep
        self.t += 1
        return keep

    def report(self, b: int) -> dict:
        """What a sample says about its form: the plan, each finished line's rhyme class, complete or not."""
        return {**self.plans[b].describe(), "line_classes": list(self.line_classes[b]), "complete": bool(self._ended(b))}

    def reorder(self, rows: np.ndarray) -> None:
        """Beam search: each new beam inherits its parent's bookkeeping."""
        rows = np.asarray(rows)
        pick = lambda xs: [copy.deepcopy(xs[r]) for r in rows]  # noqa: E731
        for name in ("alive", "end", "pos", "bound", "kind", "fixed", "letter", "line_of", "length",
                     "line", "done", "in_word", "phase", "node", "punct_run"):
            if hasattr(self, name):
                setattr(self, name, getattr(self, name)[rows])
        for name in ("line_classes", "_written", "last_word", "bound_w", "used"):
            if hasattr(self, name):
                setattr(self, name, pick(getattr(self, name)))
        self.plans = [self.plans[r] for r in rows]
