"""A song in sections: `verse:4,chorus:4,verse:4,chorus` -> a verse, a chorus, a second verse, the chorus again.

    verse:4   ─ run_request(prefix, 4 lines) ──────────────────────────────> text 1
    chorus:4  ─ run_request(context = song so far + blank line, 4 lines) ──> text 2
    verse:4   ─ the same, a new verse ─────────────────────────────────────> text 3
    chorus    ─ no count: the chorus written above, repeated verbatim ─────> text 2 again

Sections are separated by one blank line. A repeated section is copied, not generated, so the copy
guard (which keeps the song from reciting the corpus) never sees the song's own chorus as a copy.
Each new section is one batch for every song asked for; a corpus that rhymes lends its rhyme scheme
to every section (with drawn line lengths), and `--rhyme-scheme` / `--rhyme` apply to each section.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from charlm import defaults
from charlm.errors import CharlmError
from charlm.forms.template import FormRequest, default_scheme
from charlm.generate.verse import Shape

MAX_SECTIONS = 16
MAX_SECTION_LINES = 32
_SPEC = re.compile(r"([^\W\d_][\w-]{0,23})(?::(\d{1,3}))?", re.UNICODE)


@dataclass(frozen=True)
class Section:
    """One section of a song: its name and its lines (0: the earlier section of this name, repeated)."""

    name: str
    lines: int = 0

    def spec(self) -> str:
        return f"{self.name}:{self.lines}" if self.lines else self.name


def parse_sections(text: str | None, name: str = "--sections") -> tuple[Section, ...]:
    """'verse:4,chorus:4,verse:4,chorus' -> the sections, or one line saying what is wrong."""
    if not text or not text.strip():
        return ()
    example = "e.g. verse:4,chorus:4,verse:4,chorus (a name without a count repeats that section)"
    out, seen = [], set()
    for part in text.replace(" ", "").split(","):
        m = _SPEC.fullmatch(part)
        if not m:
            raise CharlmError(f"{name}: {part!r} is not a section; write name:lines, {example}")
        count = int(m.group(2)) if m.group(2) else 0
        if m.group(2) and not 1 <= count <= MAX_SECTION_LINES:
            raise CharlmError(f"{name}: {part!r} asks for {count} lines; a section has 1 to {MAX_SECTION_LINES}")
        if not count and m.group(1) not in seen:
            raise CharlmError(f"{name}: {part!r} repeats a section not written before; give its lines first, {example}")
        seen.add(m.group(1))
        out.append(Section(m.group(1), count))
    if len(out) > MAX_SECTIONS:
        raise CharlmError(f"{name} lists {len(out)} sections; at most {MAX_SECTIONS}")
    return tuple(out)


def check_sections(sections, form: FormRequest, length, lines: int, name) -> None:
    """Refuse what sections cannot be combined with (they set every line themselves)."""
    if not sections:
        return
    clash = next((f for f in ("form", "line_lengths", "template") if getattr(form, f)), None)
    if clash:
        raise CharlmError(f"{name('sections')} lays out the song's lines itself; drop {name(clash)} "
                          f"({name('rhyme_scheme')} and {name('rhyme')} apply to each section)")
    if length is not None or lines:
        raise CharlmError(f"{name('sections')} sets each section's lines; drop "
                          f"{name('length') if length is not None else name('lines')}")


def _section_request(req, lines: int, forms):
    """The request that writes one new section of `lines` lines."""
    form = replace(req.form)
    if not form.active and forms is not None and default_scheme(forms.forms) is not None:
        form = FormRequest(rhyme_scheme=default_scheme(forms.forms), candidates=form.candidates)
    shape = Shape(lines=lines, tidy=True, clean_end=not form.active, solid=True)  # a form counts its own lines
    return replace(req, form=form, shape=shape, length=defaults.LINES_LENGTH, num_samples=1, sections=(),
                   context="")


def write_songs(model, vocab, req, prefixes, generator, device, *, guard=None, forms=None):
    """One song per (prefix, sample), prefix-major, as decode.Sample: the song in `text`, its sections in `form`."""
    from charlm.generate.decode import Sample, score
    from charlm.generate.request import run_request

    prefixes = [prefixes] if isinstance(prefixes, str) else list(prefixes)
    songs = [{"prefix": p, "parts": []} for p in prefixes for _ in range(req.num_samples)]
    written: dict[str, int] = {}  # section name -> the index of its first (written) part
    for i, section in enumerate(req.sections):
        if not section.lines:  # repeated verbatim
            for song in songs:
                song["parts"].append(song["parts"][written[section.name]])
            continue
        written.setdefault(section.name, i)
        sub = _section_request(req, section.lines, forms)
        contexts = ["" if not s["parts"] else s["prefix"] + "\n\n".join(s["parts"]) + "\n\n" for s in songs]
        bodies = [s["prefix"] if not s["parts"] else "" for s in songs]
        by_lines: dict[int, list[int]] = {}  # without a form, `lines` counts from the context's end: one batch
        for k, c in enumerate(contexts):  # per count of context lines
            by_lines.setdefault(c.count("\n") if not sub.form.active else 0, []).append(k)
        for rows in by_lines.values():
            samples = run_request(model, vocab, sub, [bodies[k] for k in rows], generator, device, guard=guard,
                                  forms=forms, contexts=[contexts[k] for k in rows])
            for k, s in zip(rows, samples):
                text = s.text.strip("\n")
                songs[k]["parts"].append(text if songs[k]["parts"] else s.prefix + text)
    out = []
    for song in songs:
        whole = "\n\n".join(song["parts"])
        text = whole[len(song["prefix"]):]
        logprobs = score(model, vocab, song["prefix"] or "\n", text, device) if text else []
        layout = [{"name": s.name, "repeat": not s.lines, "text": part}
                  for s, part in zip(req.sections, song["parts"])]
        out.append(Sample(song["prefix"], text, logprobs, 0, {"sections": layout}))
    return out
