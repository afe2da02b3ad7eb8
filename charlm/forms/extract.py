"""Forms learned from a corpus: line lengths, how often line ends rhyme, and the named forms it repeats.

Why: a model trained on Jay Chou's lyrics writes lines whose ends rhyme at chance level (11.5% of
adjacent lines) where the corpus rhymes 56% of the time (9% once its lines are shuffled). To make
generated text keep the corpus's forms, first measure them from the text itself:

* `line_lengths`: the histogram of line lengths (characters without spaces and punctuation for
  Chinese, words for spaced scripts), so generation can draw lines as long as the corpus's.
* `adjacent_rate` / `shuffled_rate`: the share of adjacent lines of a piece whose ends rhyme, and
  the same after shuffling the lines (chance), with `alternate_rate` for lines two apart (ABAB
  rhymes no adjacent pair). `scheme`: the commonest rhyme scheme of 4-line groups, only when the
  corpus rhymes clearly above chance.
* `named`: the forms a corpus repeats. A titled corpus (Song ci: each piece is its tune name, then
  its lines) gives one form per recurring title, e.g. 浣溪沙 "7。/7。/7。/7，7。/7。"; an untitled
  corpus of equal-length pieces (the Sonnets) gives one form, "14 lines". A form's template is
  the modal layout of its pieces, and its rhyme letters say which line ends rhyme together.

Pieces are separated by blank lines; a file without blank lines (the lyrics file) is one piece:
it still has line lengths and rhyme rates, but no named forms.
"""

from __future__ import annotations

import random
import re
import string
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field

from charlm.errors import CharlmError
from charlm.forms.rhyme import line_class, script_of

MIN_PIECES = 5  # a name needs this many pieces to be a form (fewer: too few to say what its layout is)
MIN_SHARE = 0.5  # and most of them must share one layout
MAX_FORMS = 50
SHUFFLE_SEED = 0
ZH_TITLE_CHARS = 8  # a Chinese title line is this short (tune names: 3 characters, 7 with a subtitle)
TITLE_REPEAT = 0.2  # share of pieces whose title another piece also has, for a corpus to count as titled
SLOT = "_"
_LETTERS = [c for c in string.ascii_uppercase if c != "X"] + list(string.ascii_lowercase)
_SLOT_RUN = re.compile(f"{SLOT}+")
_IN_WORD = re.compile(r"(?<=\w)['\u2019\-](?=\w)")  # apostrophes and hyphens inside words are spelling


@dataclass
class NamedForm:
    """One form of a corpus: its modal layout and which of its line ends rhyme together."""

    name: str  # the title (浣溪沙), or "14 lines" for an untitled corpus of equal-length pieces
    pieces: int  # pieces with this name
    share: float  # share of them that follow the modal layout
    template: str  # chars: the body with every slot "_"; words: each line's punctuation only
    rhyme: str  # a letter per line: lines with the same letter rhyme, X rhymes with none
    units: str = "chars"  # "chars": the template's slots are characters; "words": see line_words
    line_words: list[int] = field(default_factory=list)  # words: the modal word count of each line

    @property
    def lines(self) -> int:
        return self.template.count("\n") + 1

    @property
    def pattern(self) -> str:
        """Compact layout: "7。7。7。/7，7。7。" (digits: runs of slots, /: line break), "10w/10w/..." for words."""
        if self.units == "words":
            return "/".join(f"{n}w" for n in self.line_words)
        return _SLOT_RUN.sub(lambda m: str(len(m.group())), self.template).replace("\n", "/")


@dataclass
class CorpusForms:
    """What `learn_forms` measured; stored in checkpoints as `to_dict()` (plain types only)."""

    script: str | None  # "zh", "en", or None (no rhyme data for the script)
    units: str  # "chars" or "words": what line_lengths counts
    line_lengths: dict[int, int]  # line length -> lines of that length (blank and title lines left out)
    adjacent_rate: float | None  # share of adjacent line pairs of a piece whose ends rhyme (None: no script)
    shuffled_rate: float | None  # the same on the corpus's lines in shuffled order: chance
    scheme: str | None  # commonest scheme of 4-line groups ("AABB", "ABAB", "XAXA"), None if no clear rhyme
    named: list[NamedForm]  # most pieces first
    titled: bool  # pieces start with a title line
    alternate_rate: float | None = None  # as adjacent_rate, for lines two apart

    @property
    def rhymes(self) -> bool:
        return self.adjacent_rate is not None and self.scheme is not None

    def to_dict(self) -> dict:
        """Only dict/list/str/int/float/bool/None, so `torch.load(weights_only=True)` reads it back."""
        return {
            "script": self.script,
            "units": self.units,
            "line_lengths": [[int(k), int(v)] for k, v in sorted(self.line_lengths.items())],
            "adjacent_rate": self.adjacent_rate,
            "alternate_rate": self.alternate_rate,
            "shuffled_rate": self.shuffled_rate,
            "scheme": self.scheme,
            "titled": self.titled,
            "named": [asdict(f) for f in self.named],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "CorpusForms":
        try:
            return cls(script=d["script"], units=d["units"],
                       line_lengths={int(k): int(v) for k, v in d["line_lengths"]},
                       adjacent_rate=d["adjacent_rate"], shuffled_rate=d["shuffled_rate"], scheme=d["scheme"],
                       named=[NamedForm(**f) for f in d["named"]], titled=bool(d["titled"]),
                       alternate_rate=d.get("alternate_rate"))
        except (KeyError, TypeError, ValueError) as e:
            raise CharlmError(f"the saved song forms are damaged or from another version ({e!r})") from None

    def get(self, name: str) -> NamedForm:
        """The form called `name`; CharlmError naming the known forms when there is none."""
        for form in self.named:
            if form.name == name:
                return form
        if not self.named:
            raise CharlmError(f"no form {name!r}: this corpus has no named forms (it needs at least {MIN_PIECES} "
                              f"pieces, separated by blank lines, that share a title or a line count)")
        names = [f.name for f in self.named]
        more = f" and {len(names) - 20} more" if len(names) > 20 else ""
        raise CharlmError(f"no form {name!r} in this corpus; known forms: {', '.join(names[:20])}{more}")

    def sample_lengths(self, n: int, generator: random.Random) -> list[int]:
        """`n` line lengths drawn from the corpus's histogram."""
        if not self.line_lengths:
            raise CharlmError("the corpus has no lines of text to take line lengths from")
        lengths = sorted(self.line_lengths)
        return generator.choices(lengths, weights=[self.line_lengths[k] for k in lengths], k=n)


def _is_punct(c: str) -> bool:
    return unicodedata.category(c).startswith("P")


def _pieces(text: str) -> list[list[str]]:
    """Runs of non-blank lines (stripped), split at blank lines."""
    pieces, cur = [], []
    for line in text.split("\n"):
        line = line.strip()
        if line:
            cur.append(line)
        elif cur:
            pieces.append(cur)
            cur = []
    if cur:
        pieces.append(cur)
    return pieces


def _title_like(line: str, script: str | None) -> bool:
    # a title is short, or does not end like a sentence; whether titles are really titles is
    # decided over the corpus: they must recur (_titled)
    return (script == "zh" and len(line) <= ZH_TITLE_CHARS) or not _is_punct(line[-1])


def _titled(pieces: list[list[str]], script: str | None) -> bool:
    multi = [p for p in pieces if len(p) >= 2]
    if len(pieces) < 2 or 2 * sum(_title_like(p[0], script) for p in multi) <= len(pieces):
        return False
    names = Counter(p[0] for p in multi)
    return sum(c for c in names.values() if c >= 2) >= TITLE_REPEAT * len(multi)


def _words(line: str) -> list[str]:
    return [w for w in line.split() if any(c.isalnum() for c in w)]


def _skeleton(line: str) -> str:
    """A line's punctuation between words (spelling's apostrophes and hyphens left out)."""
    return "".join(c for c in _IN_WORD.sub("", line) if _is_punct(c))


def _modal(values):
    """The commonest value; ties go to the first seen, so the result does not depend on hashing."""
    return Counter(values).most_common(1)[0][0]


def _pair_rate(class_lists: list[list], gap: int) -> float | None:
    """Share of line pairs `gap` apart within a piece whose ends rhyme (pairs with an unknown end left out)."""
    hits = total = 0
    for cl in class_lists:
        for a, b in zip(cl, cl[gap:]):
            if a is not None and b is not None:
                total += 1
                hits += a == b
    return hits / total if total else None


def _shuffled(class_lists: list[list]) -> list[list]:
    """The same pieces, each line's class drawn from a fixed-seed shuffle of all lines: chance rhyme."""
    flat = [c for cl in class_lists for c in cl]
    random.Random(SHUFFLE_SEED).shuffle(flat)
    out, i = [], 0
    for cl in class_lists:
        out.append(flat[i:i + len(cl)])
        i += len(cl)
    return out


def _scheme_of(classes: list) -> str:
    """Letters for a group of lines: lines sharing a class share a letter, in order; X rhymes with no other."""
    counts = Counter(c for c in classes if c is not None)
    letters: dict = {}
    out = []
    for c in classes:
        if c is None or counts[c] < 2:
            out.append("X")
        else:
            out.append(letters.setdefault(c, _LETTERS[min(len(letters), len(_LETTERS) - 1)]))
    return "".join(out)


def _dominant_scheme(class_lists: list[list]) -> str | None:
    schemes = Counter()
    for cl in class_lists:
        for i in range(0, len(cl) - 3, 4):
            s = _scheme_of(cl[i:i + 4])
            if s != "XXXX":  # says nothing about the form
                schemes[s] += 1
    return schemes.most_common(1)[0][0] if schemes else None


def _rhyme_letters(class_lists: list[list], n: int) -> str:
    """Letters for a form's n lines: lines whose ends rhyme in most pieces share a letter (grouped
    transitively), lines that rhyme with no other line are X."""
    parent = list(range(n))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            hits = sum(1 for cl in class_lists if cl[i] is not None and cl[i] == cl[j])
            if 2 * hits > len(class_lists):
                parent[root(j)] = root(i)
    size = Counter(root(i) for i in range(n))
    letters: dict = {}
    out = []
    for i in range(n):
        r = root(i)
        out.append("X" if size[r] < 2 else letters.setdefault(r, _LETTERS[min(len(letters), len(_LETTERS) - 1)]))
    return "".join(out)


def _named_form(name: str, bodies: list[list[str]], classes: list[list] | None, units: str,
                slots: dict) -> NamedForm:
    """The modal layout of `bodies` (all with this name) and the rhyme letters of the pieces that follow it."""
    if units == "chars":
        keys = ["\n".join(b).translate(slots) for b in bodies]
    else:
        keys = [len(b) for b in bodies]  # a spaced form's layout is its line count; words vary line to line
    modal = _modal(keys)
    follow = [i for i, k in enumerate(keys) if k == modal]
    n = len(bodies[follow[0]])
    line_words: list[int] = []
    if units == "chars":
        template = modal
    else:
        template = "\n".join(_modal(_skeleton(bodies[i][j]) for i in follow) for j in range(n))
        line_words = [_modal(len(_words(bodies[i][j])) for i in follow) for j in range(n)]
    rhyme = _rhyme_letters([classes[i] for i in follow], n) if classes is not None else "X" * n
    return NamedForm(name=name, pieces=len(bodies), share=len(follow) / len(bodies), template=template,
                     rhyme=rhyme, units=units, line_words=line_words)


def _cut(text: str, max_chars: int) -> str:
    """At most `max_chars`, ending at a piece boundary (or a line's end) so no piece is cut in two."""
    if len(text) <= max_chars:
        return text
    text = text[:max_chars]
    cut = text.rfind("\n\n")
    if cut < max_chars // 2:
        cut = text.rfind("\n")
    return text[:cut] if cut > 0 else text


def _units(script: str | None, lines: list[str]) -> str:
    spaced = 2 * sum(" " in line for line in lines) > len(lines)
    return "words" if script == "en" or (script is None and spaced) else "chars"


def units_of(text: str, max_chars: int = 200_000) -> str:
    """"words" for an alphabetic text (English, Greek ...: words are spaced), "chars" for Chinese and the like."""
    text = text[:max_chars]
    return _units(script_of(text), [line for line in text.splitlines() if line.strip()])


def learn_forms(text: str, max_chars: int = 3_000_000) -> CorpusForms:
    """Measure the forms of a corpus (see the module docstring); reads at most `max_chars` of it."""
    text = _cut(text.replace("\r\n", "\n").replace("\r", "\n"), max_chars)
    script = script_of(text)
    pieces = _pieces(text)
    titled = _titled(pieces, script)
    if titled:
        titles = [p[0] for p in pieces if len(p) >= 2]
        bodies = [p[1:] for p in pieces if len(p) >= 2]
    else:
        titles, bodies = [], pieces
    lines = [line for b in bodies for line in b]
    units = _units(script, lines)

    chars = set(text)
    layout = {c for c in chars if c != SLOT and (c.isspace() or _is_punct(c))}  # kept as is in templates
    slots = {ord(c): SLOT for c in chars if c not in layout}
    unslotted = {ord(c): None for c in layout}
    lengths: Counter = Counter()
    for line in lines:
        lengths[len(_words(line)) if units == "words" else len(line.translate(unslotted))] += 1

    # only line ends matter for rhyme: one class per line, from its last Han character or word
    classes = [[line_class(line, script)[0] for line in b] for b in bodies] if script else None
    adjacent = alternate = shuffled = scheme = None
    if classes is not None:
        adjacent = _pair_rate(classes, 1)
        alternate = _pair_rate(classes, 2)
        shuffled = _pair_rate(_shuffled(classes), 1)
        best = max(r for r in (adjacent, alternate, 0.0) if r is not None)
        # rhyme clearly above chance: lines next to each other, or two apart (ABAB), rhyme at least twice
        # as often as shuffled lines
        if shuffled is not None and best > 0 and best >= 2 * shuffled:
            scheme = _dominant_scheme(classes)

    # which pieces share a name: their title, or (untitled) their line count when most pieces have one
    groups: dict[str, list[int]] = {}
    if titled:
        for i, t in enumerate(titles):
            groups.setdefault(t, []).append(i)
    elif len(bodies) >= MIN_PIECES:
        n, count = Counter(len(b) for b in bodies).most_common(1)[0]
        if 2 * count > len(bodies):
            groups[f"{n} lines"] = [i for i, b in enumerate(bodies) if len(b) == n]
    named = []
    for name, idx in groups.items():
        if len(idx) < MIN_PIECES:
            continue
        form = _named_form(name, [bodies[i] for i in idx], [classes[i] for i in idx] if classes else None,
                           units, slots)
        if form.share >= MIN_SHARE:
            named.append(form)
    named.sort(key=lambda f: (-f.pieces, f.name))
    return CorpusForms(script=script, units=units, line_lengths=dict(sorted(lengths.items())),
                       adjacent_rate=adjacent, shuffled_rate=shuffled, scheme=scheme, named=named[:MAX_FORMS],
                       titled=titled, alternate_rate=alternate)
