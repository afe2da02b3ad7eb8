"""Song forms as evaluate settings: `--decoding form=浣溪沙`, `rhyme-scheme=AABB+lines=8`, and the form columns.

A setting is a decoding (as generate's flags spell it) plus, optionally, a form:

    top-p=0.9+rhyme-scheme=AABB+lines=8      form keys: form, rhyme-scheme, rhyme, lines,
    form=浣溪沙                               line-lengths (7:7:7:7, since commas separate settings),
                                             candidates; no decoding key: generate's default decoding

Every row gets the line measures (adjacent rhyme rate, 1-3 character lines) of its complete lines;
a formed row also gets format accuracy, rhyme accuracy and its fluency cost: the mean log-probability
per character of the same decoding without the form, minus its own (forms/metrics.py defines them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from charlm.errors import CharlmError
from charlm.forms import metrics
from charlm.forms.template import SLOT, FormRequest, parse_lengths
from charlm.generate.sampling import DEFAULT_DECODING, Decoding, parse_decoding

FORM_KEYS = ("form", "rhyme-scheme", "rhyme", "lines", "line-lengths", "candidates")


@dataclass(frozen=True)
class Setting:
    """One row of evaluate's table: how to decode, and under which form (inactive: none)."""

    decoding: Decoding
    form: FormRequest = field(default_factory=FormRequest)
    lines: int = 0
    spec: str = ""  # the form keys as given, for the label

    def label(self) -> str:
        return self.decoding.label() + (f"+{self.spec}" if self.spec else "")


def parse_setting(spec: str) -> Setting:
    """'top-k=5+rhyme-scheme=AABB+lines=8' -> Setting; the decoding keys go to sampling.parse_decoding."""
    decoding_parts, form_parts, values = [], [], {}
    for part in spec.strip().split("+"):
        key, _, raw = part.strip().partition("=")
        if key.strip() not in FORM_KEYS:
            decoding_parts.append(part)
            continue
        if not raw.strip():
            raise CharlmError(f"{key.strip()} needs a value in {spec!r}, e.g. rhyme-scheme=AABB")
        form_parts.append(part.strip())
        values[key.strip().replace("-", "_")] = raw.strip()
    decoding = parse_decoding("+".join(decoding_parts)) if decoding_parts else DEFAULT_DECODING
    if not form_parts:
        return Setting(decoding)
    try:
        lines = int(values.pop("lines", 0))
        candidates = int(values.pop("candidates", FormRequest.candidates))
    except ValueError:
        raise CharlmError(f"lines and candidates need whole numbers in {spec!r}") from None
    lengths = parse_lengths(values.pop("line_lengths", "").replace(":", ","), "line-lengths")
    scheme = values.pop("rhyme_scheme", None)
    form = FormRequest(form=values.pop("form", None), line_lengths=lengths,
                       rhyme_scheme=scheme.upper() if scheme else None, rhyme=values.pop("rhyme", None),
                       candidates=candidates).check(lambda f: f.replace("_", "-"))
    if lines < 0:
        raise CharlmError(f"lines must be 0 or more in {spec!r}")
    return Setting(decoding, form, lines, "+".join(form_parts))


def parse_settings(specs: str) -> list[Setting]:
    """Comma-separated settings (see the module docstring)."""
    parts = [s for s in specs.split(",") if s.strip()]
    if not parts:
        raise CharlmError("--decoding is empty; give e.g. greedy,temperature=0.8")
    return [parse_setting(s) for s in parts]


def complete_lines(sample) -> list[str]:
    """The sample's lines that it finished (an unformed sample's last line is cut by its length)."""
    lines = (sample.prefix + sample.text).split("\n")
    if not (sample.form and sample.form.get("complete")) and not sample.text.endswith("\n"):
        lines = lines[:-1]
    return [x for x in lines if x.strip()]


def _line_fits(line: str, want, units: str) -> bool:
    if units == "words":
        return len(line.split()) == want
    if isinstance(want, str) and SLOT not in want and "-" in want:  # a flexible line: "lo-hi" characters
        lo, hi = map(int, want.split("-"))
        return lo <= len(line.replace(" ", "")) <= hi
    return metrics.format_accuracy([line], [want]) == 1.0


def line_columns(samples, script: str | None, units: str) -> dict:
    """Adjacent rhyme rate and the share of 1-3 character (or word) lines, over the samples' complete lines."""
    row = {}
    short = lines = adj = pairs = 0
    for s in samples:
        done = complete_lines(s)
        a, b = metrics.short_lines(done, units)
        short, lines = short + a, lines + b
        if script:
            a, b = metrics.adjacent_rhymes(done, script)
            adj, pairs = adj + a, pairs + b
    if lines:
        row["short_lines"] = short / lines
    if pairs:
        row["adjacent_rhyme"] = adj / pairs
    return row


def form_columns(samples, script: str | None) -> dict:
    """Format and rhyme accuracy of formed samples (their plans are in `sample.form`)."""
    fits = want = hits = slots = 0
    for s in samples:
        plan = s.form
        lines = (s.prefix + s.text).split("\n")
        if plan.get("name") and lines and lines[0] == plan["name"]:
            lines = lines[1:]  # a titled form's title line is not part of the body
        fits += sum(i < len(lines) and _line_fits(lines[i], w, plan["units"]) for i, w in enumerate(plan["lines"]))
        want += len(plan["lines"])
        if script and plan["scheme"].strip("X"):
            h, k = metrics.rhyme_hits(lines, plan["scheme"], script)
            hits, slots = hits + h, slots + k
    row = {"format_accuracy": fits / want if want else float("nan")}
    if slots:
        row["rhyme_accuracy"] = hits / slots
    return row
