"""Verse shape for generated text (lines, end of song, blank lines) and default prefixes taken from a corpus.

`Shape` says when a stream stops and which line breaks and spaces it may not write;
`ShapeState` follows every stream of a batch step by step:

    ... 给的爱 \\n 差异一直存在 \\n \\n          (a line with only spaces is empty too)
              ^ line 2 ends   ^ line 3 ends ^ an empty line ends: the end of a song

* `lines K`: the text (prefix included) holds at most K lines; the line break that would start
  line K+1 ends the stream and is not part of the text.
* `song_end`: the line break that completes an empty line ends the stream (a song ends with a
  blank line), once the stream has finished MIN_SONG_LINES lines of its own: before that an
  empty line is not allowed (a weak model ends its songs after one line; a song is longer).
* `stop_after N`: once a stream has N characters, its next line break ends it (a sample that ends
  at the end of a line, not mid-word, however long the line).
* `clean_end`: a stream stopped by the length limit is cut back to its last line end (else its last
  sentence end or space), so even the longest line never leaves a sample ending mid-line.
* `solid`: no empty line at all (one section of a song in sections).
* `tidy`: never two empty lines in a row, never an empty line before the first visible
  character, at most MAX_INDENT spaces before a line's first visible character, and no trailing
  whitespace at the end of a sample.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass

import numpy as np

MAX_INDENT = 4
MIN_SONG_LINES = 4  # a song has at least this many lines of text (Song ci: 4 or more in almost every poem)
CLASSIC_PREFIXES = ("分开", "不分开")
SENTENCE_ENDS = "。！？；.!?;…"  # where a line of Song ci or prose may end, when no line break is left to end at


@dataclass(frozen=True)
class Shape:
    """How generated text is shaped: Shape() changes nothing (the textbook's behaviour)."""

    lines: int = 0  # stop after this many lines (0: no limit)
    song_end: bool = False  # stop at the end of a song (a blank line)
    tidy: bool = False  # no runs of empty lines, no blank opening, no trailing whitespace
    stop_after: int = 0  # after this many characters, the next line break ends the stream (0: off)
    clean_end: bool = False  # a stream cut by the length limit ends at its last line end instead
    solid: bool = False  # no empty line at all (a section of a song: sections are what blank lines divide)

    @property
    def active(self) -> bool:
        return bool(self.lines or self.song_end or self.tidy or self.stop_after or self.clean_end)


class ShapeState:
    """Per-stream line bookkeeping for a batch: what to ban next and where each stream ended."""

    def __init__(self, shape: Shape, prefixes: list[str], vocab, length: int):
        self.shape = shape
        self.newline = vocab.char_to_idx.get("\n", -1)
        space = np.zeros(len(vocab), dtype=bool)
        for i, c in enumerate(vocab.idx_to_char):
            space[i] = c.isspace() and c != "\n"
        self.is_space = space
        self.space_idx = np.flatnonzero(space)
        B = len(prefixes)
        last_line = [p.rsplit("\n", 1)[-1] for p in prefixes]
        self.lines = np.array([p.count("\n") + 1 for p in prefixes])  # lines begun so far
        self.indent = np.array([len(s) if not s.strip() else -1 for s in last_line])  # -1: the line has text
        prev_empty = [len(p.split("\n")) >= 2 and not p.split("\n")[-2].strip() for p in prefixes]
        # empty lines just ended before the current line
        self.empty_run = np.array([int(e and i >= 0) for e, i in zip(prev_empty, self.indent)])
        self.visible = np.zeros(B, dtype=bool)  # the stream has written a visible character
        self.own_lines = np.zeros(B, dtype=np.int64)  # lines with text the stream has finished
        self.end = np.full(B, length)  # characters kept per stream
        self.alive = np.ones(B, dtype=bool)
        self.t = np.zeros(B, dtype=np.int64)  # steps taken, per stream (streams of a merged batch began apart)
        self.last_break = np.full(B, -1, dtype=np.int64)  # characters before the stream's last line break
        self.last_stop = np.full(B, -1, dtype=np.int64)  # characters up to its last sentence end or space
        self.is_stop = np.array([c in SENTENCE_ENDS or c == " " for c in vocab.idx_to_char], dtype=bool)

    def bans(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, chars) that tidy text may not take next."""
        if not self.shape.tidy:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        blank_line = self.indent >= 0
        rows, chars = [], []
        if self.newline >= 0:  # an empty line may not follow an empty line, nor come before any text
            too_soon = self.own_lines < MIN_SONG_LINES if self.shape.song_end else ~self.visible
            too_soon = too_soon | self.shape.solid
            r = np.flatnonzero(blank_line & ((self.empty_run >= 1) | too_soon))
            rows.append(r)
            chars.append(np.full(len(r), self.newline))
        if len(self.space_idx):
            r = np.flatnonzero(blank_line & (self.indent >= MAX_INDENT))
            rows.append(np.repeat(r, len(self.space_idx)))
            chars.append(np.tile(self.space_idx, len(r)))
        if not rows:  # a vocabulary with neither a line break nor a space (DNA, one line of Chinese): nothing to ban
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return np.concatenate(rows).astype(np.int64), np.concatenate(chars).astype(np.int64)

    def step(self, nxt: np.ndarray) -> np.ndarray:
        """Take each stream's next character; returns which streams keep it (False: ended, or the stop)."""
        keep = self.alive.copy()
        is_nl = nxt == self.newline
        blank_line = self.indent >= 0
        if self.shape.lines:
            stop = is_nl & (self.lines >= self.shape.lines)
            keep &= ~stop
        if self.shape.song_end:
            stop = is_nl & blank_line & (self.own_lines >= MIN_SONG_LINES)
            keep &= ~stop
        if self.shape.stop_after:
            keep &= ~(is_nl & (self.t >= self.shape.stop_after))
        ended = self.alive & ~keep
        self.end[ended] = self.t[ended]
        self.alive = keep
        self._mark_ends(nxt, is_nl, keep)
        # line bookkeeping for the streams that go on
        self.empty_run = np.where(is_nl, np.where(blank_line, self.empty_run + 1, 0), self.empty_run)
        self.own_lines += is_nl & ~blank_line
        self.lines = self.lines + is_nl
        space = self.is_space[nxt]
        indent = np.where(blank_line & space, self.indent + 1, np.where(space, self.indent, -1))
        self.indent = np.where(is_nl, 0, indent)
        self.visible |= ~is_nl & ~space
        self.t += 1
        return keep

    def _mark_ends(self, nxt: np.ndarray, is_nl: np.ndarray, keep: np.ndarray) -> None:
        """Remember each stream's last line end; at the length limit, cut a stream back to it (clean_end)."""
        self.last_break = np.where(is_nl & keep, self.t, self.last_break)
        self.last_stop = np.where(self.is_stop[nxt] & keep, self.t + 1, self.last_stop)
        if not self.shape.clean_end:
            return
        cut = keep & (self.t + 1 >= self.end) & ~is_nl  # the limit falls mid-line
        fallback = np.where(self.last_stop > 0, self.last_stop, self.end)
        self.end = np.where(cut, np.where(self.last_break > 0, self.last_break, fallback), self.end)

    ROWS = ("lines", "indent", "empty_run", "visible", "own_lines", "end", "alive", "t", "last_break",
            "last_stop")  # per-stream arrays

    def reorder(self, rows: np.ndarray) -> None:
        """Beam search: the new beams inherit their parents' bookkeeping (also: keep only `rows`)."""
        for name in self.ROWS:
            setattr(self, name, getattr(self, name)[rows])

    @classmethod
    def concat(cls, states: list["ShapeState"]) -> "ShapeState":
        """One state for the streams of `states` (same shape and vocabulary), in order: a batch that others join."""
        out = copy.copy(states[0])
        for name in cls.ROWS:
            setattr(out, name, np.concatenate([getattr(s, name) for s in states]))
        return out


def common_titles(text: str, count: int = 2) -> list[str]:
    """The commonest titles of a corpus of titled pieces (a title line, then lines; pieces between blank
    lines, as Song ci's tune names), or [] when its pieces do not share titles."""
    pieces = [p.strip("\n") for p in text[:4_000_000].split("\n\n") if p.strip()]
    titles = Counter(p.split("\n", 1)[0].strip() for p in pieces if "\n" in p)
    shared = sum(n for n in titles.values() if n >= 2)
    if len(pieces) < 20 or shared < len(pieces) / 2:
        return []
    return [t for t, n in titles.most_common(count) if n >= 2 and t and len(t) <= 12]


def corpus_prefixes(text: str, vocab, count: int = 2) -> list[str]:
    """Default prefixes for a corpus: 分开 and 不分开 when its lines open with them (the lyrics); for titled
    pieces (Song ci) their commonest titles, each with its line break; otherwise the most common openings
    of its lines (the first word and its space for spaced scripts, else 2 characters)."""
    lines = text[:2_000_000].split("\n")
    if all(not vocab.unknown(p) for p in CLASSIC_PREFIXES) and any(s.startswith(CLASSIC_PREFIXES[0]) for s in lines):
        return list(CLASSIC_PREFIXES)
    titles = common_titles(text, count)
    if titles:
        return [t + "\n" for t in titles]
    openings: Counter = Counter()
    for line in lines:
        line = line.strip()
        if not line:
            continue
        word = line.split(" ", 1)[0]
        if " " in line and 1 <= len(word) <= 12:
            openings[word + " "] += 1
        else:
            openings[line[:2]] += 1
    found = [p for p, _ in openings.most_common(count)]
    return found or [vocab.idx_to_char[0]]
