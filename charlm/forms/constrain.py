"""Form constraints on a batch of streams: which characters each stream may write next, step by step.

Exactness is structural, so a form never fails by chance: a line ends exactly at its length (or,
for lengths drawn from the corpus rather than asked for, within a few characters of it), a
template's fixed characters are written where it has them, and a rhyme slot takes only characters
(Chinese) or words (English) of its class. Fluency is left to the model: within what the form
allows, the decoder samples from the model's own distribution, so the class of a first rhyme is
chosen by the model's probability mass over each class's characters at that slot.

    character scripts (a template per line)         alphabetic scripts (words per line)
    _ _ _ _ _ _ 花 \\n                                 word word ... [rhyme word from the trie] [.,;] \\n
    ^ any non-punctuation character                   ^ no line break before the last word
                ^ only 发花 characters (rhyme A)                       ^ only spellings of class A's words

The two scripts' rules are mixins in forms/chars_form.py and forms/words_form.py.
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
from charlm.forms.chars_form import CharsForm
from charlm.forms.rhyme_index import RhymeWords
from charlm.forms.template import FREE, Plan, is_punct
from charlm.forms.words_form import WordsForm


# --- the state of a batch ----------------------------------------------------------------------

class FormState(CharsForm, WordsForm):
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
        for name in ("alive", "end", "pos", "bound", "kind", "fixed", "letter", "line_of", "length", "prev",
                     "spaces", "line_letter", "may_end", "line_end",
                     "line", "done", "in_word", "phase", "node", "punct_run"):
            if hasattr(self, name):
                setattr(self, name, getattr(self, name)[rows])
        for name in ("line_classes", "_written", "last_word", "bound_w", "used"):
            if hasattr(self, name):
                setattr(self, name, pick(getattr(self, name)))
        self.plans = [self.plans[r] for r in rows]
