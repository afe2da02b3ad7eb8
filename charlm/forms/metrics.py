"""How well generated pieces keep a form: the measures `benchmarks/forms.py` prints (docs/forms.md defines them).

* format accuracy (SongNet's): a line counts when its length and its punctuation equal the template's line;
* rhyme accuracy: the share of rhyme slots (lines whose letter is not X) whose class is the class of
  their letter's first line (a guessed English word counts as a miss);
* adjacent rhyme rate: the share of neighbouring lines whose ends rhyme (compare with the corpus's);
* short lines: the share of lines of 1-3 characters (or 1-3 words);
* fluency cost: mean log-probability per character of unconstrained samples minus that of formed ones
  (the model's own log-probabilities, before any constraint renormalised them).
"""

from __future__ import annotations

from charlm.forms import rhyme
from charlm.forms.template import FREE, SLOT, is_punct


def format_accuracy(lines: list[str], template_lines: list[str]) -> float:
    """Share of the template's lines that the text's line of the same index matches in length and punctuation."""
    if not template_lines:
        return float("nan")
    def shape(s):
        return len(s), [(i, c) for i, c in enumerate(s) if is_punct(c)]
    hits = sum(1 for i, t in enumerate(template_lines)
               if i < len(lines) and shape(lines[i]) == (len(t), [(j, c) for j, c in enumerate(t) if c != SLOT
                                                                   and is_punct(c)]))
    return hits / len(template_lines)


def rhyme_hits(lines: list[str], scheme: str, script: str) -> tuple[int, int]:
    """(rhyme slots holding their letter's class, rhyme slots) of one piece: the first line of a letter sets it."""
    first: dict[str, str | None] = {}
    hits = slots = 0
    for line, letter in zip(lines, scheme):
        if letter == FREE:
            continue
        cls, guessed = rhyme.line_class(line, script)
        cls = None if guessed else cls
        if letter not in first:
            first[letter] = cls
            slots += 1
            hits += cls is not None
            continue
        slots += 1
        hits += cls is not None and cls == first[letter]
    return hits, slots


def adjacent_rhymes(lines: list[str], script: str) -> tuple[int, int]:
    """(neighbouring line pairs that rhyme, pairs whose both ends have a class)."""
    classes = [rhyme.line_class(x, script)[0] if x.strip() else None for x in lines]
    pairs = [(a, b) for a, b in zip(classes, classes[1:]) if a is not None and b is not None]
    return sum(a == b for a, b in pairs), len(pairs)


def short_lines(lines: list[str], units: str) -> tuple[int, int]:
    """(lines of 1-3 characters or words, non-empty lines)."""
    sizes = [len(x.split()) if units == "words" else len("".join(c for c in x if not is_punct(c) and not c.isspace()))
             for x in lines if x.strip()]
    return sum(1 <= n <= 3 for n in sizes), len(sizes)
