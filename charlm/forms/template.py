"""What form a generated piece takes: the user's form flags, resolved into one plan of lines per sample.

    --form 浣溪沙 | --line-lengths 7,7,7 | --template 春风_____，_______。 | --rhyme-scheme AABB | --rhyme 花
                        │  FormRequest (checked once, JSON-able: the CLI and the page send the same)
                        ▼
    make_plans(request, forms, script, prefix, lines, count, rng) -> [Plan]   (one per sample)

A `Plan` is a title (the form's tune name and a line break, for a titled corpus) and its lines.
On a character script each line is a template: `_` a slot the model fills, every other character
fixed (punctuation kept, as in SongNet's templates). On an alphabetic script a line is a number of
words, since a character count would cut words. Each line carries a rhyme letter: lines with the
same letter end in the same rhyme class, `X` is free. A scheme shorter than the piece repeats.
"""

from __future__ import annotations

import random
import re
import unicodedata
from dataclasses import asdict, dataclass, field

from charlm.errors import CharlmError

SLOT = "_"
FREE = "X"
MAX_LINES = 64
MAX_LINE_LENGTH = 200  # characters (character scripts) or words (alphabetic)
DEFAULT_LINES = 4  # rhyme asked without a line count or a form
DEFAULT_CANDIDATES = 8  # samples drawn per requested one under a form; the most probable is kept (docs/forms.md)
DEFAULT_SONG_LINES = 8  # lines of a sample when the corpus's own form is the default
MIN_LINES_TO_JUDGE = 200  # a corpus with fewer lines cannot show that it rhymes: no default form
FLEX = 3  # a drawn line length n lets the line end anywhere from n - FLEX to n + FLEX characters
SHORT_LINE = 4  # ... but not below this (nor below n): 1-3 character lines are fragments


def is_punct(ch: str) -> bool:
    """Punctuation and symbols: kept where a template has them, never written into a slot."""
    return unicodedata.category(ch)[0] in "PS"


@dataclass(frozen=True)
class FormRequest:
    """The form flags as given (none given: no form). `check()` refuses what cannot make a plan."""

    form: str | None = None
    line_lengths: tuple[int, ...] = ()
    template: str | None = None
    rhyme_scheme: str | None = None
    rhyme: str | None = None
    candidates: int = DEFAULT_CANDIDATES

    @property
    def active(self) -> bool:
        return bool(self.form or self.line_lengths or self.template or self.rhyme_scheme or self.rhyme)

    @property
    def wants_rhyme(self) -> bool:
        return bool(self.rhyme or (self.rhyme_scheme and self.rhyme_scheme.strip(FREE)))

    def check(self, name=lambda f: "--" + f.replace("_", "-")) -> "FormRequest":
        """Refuse impossible flags, one line each, naming them as `name` spells a field."""
        given = [f for f in ("form", "line_lengths", "template") if getattr(self, f)]
        if len(given) > 1:
            raise CharlmError(f"{name(given[0])} and {name(given[1])} both say how long the lines are; give one")
        if any(n < 1 or n > MAX_LINE_LENGTH for n in self.line_lengths):
            raise CharlmError(f"{name('line_lengths')} must be whole numbers from 1 to {MAX_LINE_LENGTH}, "
                              f"got {','.join(map(str, self.line_lengths))}")
        if len(self.line_lengths) > MAX_LINES:
            raise CharlmError(f"{name('line_lengths')} gives {len(self.line_lengths)} lines; at most {MAX_LINES}")
        if self.template is not None:
            if SLOT not in self.template:
                raise CharlmError(f"{name('template')} has no slot: write {SLOT} where the model should write a "
                                  f"character, e.g. 春风_____，_______。")
            if len(self.template) > MAX_LINES * MAX_LINE_LENGTH:
                raise CharlmError(f"{name('template')} is longer than {MAX_LINES * MAX_LINE_LENGTH} characters")
        if self.rhyme_scheme is not None and not re.fullmatch(r"[A-WYZ X]+", self.rhyme_scheme):
            raise CharlmError(f"{name('rhyme_scheme')} is letters, one per line (same letter: same rhyme, "
                              f"{FREE}: free), e.g. AABB or ABAB; got {self.rhyme_scheme!r}")
        if self.candidates < 1 or self.candidates > 32:
            raise CharlmError(f"{name('candidates')} must be from 1 to 32, got {self.candidates}")
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["line_lengths"] = list(self.line_lengths)
        return d


def parse_lengths(text: str | None, name: str = "--line-lengths") -> tuple[int, ...]:
    """'7,7,7,7' -> (7, 7, 7, 7); one line for anything else."""
    if not text:
        return ()
    try:
        return tuple(int(x) for x in text.replace(" ", "").split(","))
    except ValueError:
        raise CharlmError(f"{name} is whole numbers separated by commas, e.g. 7,7,7,7; got {text!r}") from None


def read_template(text: str) -> str:
    """A template from the command line: '\\n' or '/' between lines, as well as real line breaks."""
    return text.replace("\\n", "\n").replace("/", "\n")


@dataclass
class LinePlan:
    """One line: its template (character scripts) or its word count (alphabetic), and its rhyme letter."""

    slots: str = ""  # e.g. "_______，_______。": `_` slots, other characters fixed
    words: int = 0
    rhyme: str = FREE
    shortest: int = 0  # a flexible line may end after this many slots (0: exactly at its length)


@dataclass
class Plan:
    """The form of one sample: `title` comes first (it becomes part of the prefix), then `lines`."""

    lines: list[LinePlan]
    units: str = "chars"  # chars: templates; words: word counts
    title: str = ""
    name: str | None = None
    rhyme_class: str | None = None  # the class asked for the first rhyme letter (--rhyme)
    notes: list[str] = field(default_factory=list)

    @property
    def scheme(self) -> str:
        return "".join(line.rhyme for line in self.lines)

    def describe(self) -> dict:
        """What jsonl and the page report about the form of a sample."""
        return {"name": self.name, "units": self.units, "scheme": self.scheme,
                "lines": [self._line(line) for line in self.lines]}

    def _line(self, line: LinePlan):
        if self.units == "words":
            return line.words
        return line.slots if not line.shortest else f"{line.shortest}-{len(line.slots)}"


def letters_for(scheme: str | None, n: int) -> str:
    """A scheme laid over n lines: repeated when shorter, cut when longer; no scheme: all free."""
    scheme = (scheme or "").replace(" ", "")
    if not scheme:
        return FREE * n
    return (scheme * (n // len(scheme) + 1))[:n]


def rhyme_slot(slots: str) -> int:
    """Where a template line rhymes: its last slot (the character before the line's closing punctuation)."""
    return slots.rfind(SLOT)


def _templated(lines: list[str], scheme: str, units: str) -> list[LinePlan]:
    letters = letters_for(scheme, len(lines))
    out = []
    for text, letter in zip(lines, letters):
        if units == "chars" and letter != FREE and SLOT not in text:
            letter = FREE  # a line of fixed characters has nothing to rhyme with
        out.append(LinePlan(slots=text, rhyme=letter))
    return out


def default_scheme(forms) -> str | None:
    """The corpus's own rhyme scheme when it clearly rhymes and has lines enough to tell; None: no default form."""
    if not forms.rhymes or sum(forms.line_lengths.values()) < MIN_LINES_TO_JUDGE:
        return None
    return forms.scheme


def default_named(forms) -> str | None:
    """The one named form most of an untitled corpus's pieces follow (the sonnets' 14 lines), if any:
    a sample then takes it whole, rhyme and all, when no form flag is given."""
    if forms.titled or len(forms.named) != 1 or forms.named[0].share < 0.8 or default_scheme(forms) is None:
        return None
    return forms.named[0].name


def make_plans(req: FormRequest, forms, script: str | None, prefix: str, lines: int, count: int,
               rng: random.Random, default_scheme: str | None = None) -> list[Plan]:
    """One plan per sample (`count` of them): the named form, the lengths or the template asked for,
    or lengths drawn from the corpus (`forms.sample_lengths`) when only rhyme or a default asks for a form.

    `prefix` is the user's text: under a form it is the start of the body and must fit it.
    `default_scheme` is the corpus's own scheme, used when no form flag is given at all.
    """
    units = forms.units  # words for spaced scripts (English, Greek ...), characters otherwise
    scheme = req.rhyme_scheme or None
    if req.rhyme and not scheme and not req.form:  # a rhyme asked alone: the corpus's scheme, or every line
        scheme = default_scheme or forms.scheme or "A"
    plans = []
    for _ in range(count):
        title, name = "", None
        if req.form:
            named = forms.get(req.form)
            name = named.name
            title = (named.name + "\n") if forms.titled else ""
            if units == "chars":
                body = _templated(named.template.split("\n"), scheme or named.rhyme, units)
            else:
                letters = letters_for(scheme or named.rhyme, len(named.line_words))
                body = [LinePlan(words=w, rhyme=r) for w, r in zip(named.line_words, letters)]
        elif req.template:
            if units == "words":
                raise CharlmError("--template fills characters one by one, which suits Chinese and other character "
                                  "scripts; for English use --line-lengths (words per line) or --form")
            body = _templated(req.template.split("\n"), scheme or "", units)
        else:
            n = (len(req.line_lengths) or lines or (len(scheme) if scheme else 0)
                 or (DEFAULT_SONG_LINES if default_scheme else DEFAULT_LINES))
            lengths = list(req.line_lengths) or forms.sample_lengths(n, rng)
            lengths = _fit_first_line(lengths, prefix, units, bool(req.line_lengths))
            letters = letters_for(scheme or default_scheme, n)
            if units == "words":
                body = [LinePlan(words=k, rhyme=r) for k, r in zip(lengths, letters)]
            elif req.line_lengths:
                body = [LinePlan(slots=SLOT * k, rhyme=r) for k, r in zip(lengths, letters)]
            else:  # drawn, not asked for: the model chooses where, near the drawn length, the line ends
                first = len(prefix.split("\n", 1)[0])
                body = [LinePlan(slots=SLOT * (k + FLEX), rhyme=r,
                                 shortest=max(min(k, SHORT_LINE), k - FLEX, first + 1 if i == 0 else 1))
                        for i, (k, r) in enumerate(zip(lengths, letters))]
        plans.append(Plan(body, units, title, name, req.rhyme))
    return plans


def _fit_first_line(lengths: list[int], prefix: str, units: str, given: bool) -> list[int]:
    """Drawn lengths make room for the prefix's first line (and two characters or a word after it)."""
    first = prefix.split("\n", 1)[0]
    need = len(first.split()) + 1 if units == "words" else len(first) + 2
    if first and lengths and lengths[0] < need:
        if given:
            raise CharlmError(f"the prefix {first!r} does not fit a first line of {lengths[0]} "
                              f"{'words' if units == 'words' else 'characters'}")
        lengths[0] = need
    return lengths
