"""compare's "Song form" section: how each configuration keeps the corpus's lines and rhyme.

For each configuration's best checkpoint, SAMPLES pieces of LINES lines from its first prefix (that its
vocabulary can spell; else the corpus's commonest line opening),
decoded as `generate` decodes by default: unformed (what the model learned of line lengths and
rhyme by itself) and under the corpus's own rhyme scheme (what keeping it costs: the fluency cost).
The measures are evaluate's (report/form_rows.py, forms/metrics.py).
"""

from __future__ import annotations

from charlm.errors import CharlmError
from charlm.forms.template import FormRequest
from charlm.generate.formed import run_forms
from charlm.generate.sampling import DEFAULT_DECODING
from charlm.generate.verse import Shape, corpus_prefixes
from charlm.report.evaluate import decoding_rows
from charlm.report.form_rows import Setting
from charlm.run.checkpoint import load_checkpoint, model_from_checkpoint

SAMPLES = 8
LINES = 8
LENGTH = 400  # characters enough for LINES lines of any corpus of the panel


def _measure(run, text: str) -> dict:
    payload = load_checkpoint(run.run_dir / "best.pt")
    model, vocab, _ = model_from_checkpoint(payload)
    forms = run_forms(payload, lambda: text)
    if forms is None or forms.forms.script is None:
        return {}
    settings = [Setting(DEFAULT_DECODING)]
    if forms.forms.rhymes and forms.forms.scheme:
        settings.append(Setting(DEFAULT_DECODING, FormRequest(rhyme_scheme=forms.forms.scheme), LINES,
                                f"rhyme-scheme={forms.forms.scheme}"))
    prefix = next((p for p in run.config.prefixes if not vocab.unknown(p)), None) \
        or corpus_prefixes(text, vocab, 1)[0]  # the corpus's own opening when the configured ones cannot be spelled
    rows = decoding_rows(model, vocab, text, settings, [prefix], SAMPLES, LENGTH, seed=run.config.seed,
                         guard=None, shape=Shape(lines=LINES, tidy=True), forms=forms)
    out = {"adjacent": rows[0].get("adjacent_rhyme"), "short": rows[0].get("short_lines")}
    if len(rows) > 1:
        out.update(scheme=forms.forms.scheme, rhyme=rows[1].get("rhyme_accuracy"), cost=rows[1]["fluency_cost"])
    return out


def form_section(summaries, text: str) -> list[str]:
    """The report's lines (none when the corpus has no rhyme data: not Chinese or English)."""
    from charlm.forms.extract import learn_forms

    corpus = learn_forms(text)
    if corpus.script is None or corpus.adjacent_rate is None:
        return []
    lines = ["## Song form", "",
             f"The corpus: neighbouring lines rhyme {corpus.adjacent_rate:.1%} of the time ({corpus.shuffled_rate:.1%} "
             f"with its lines shuffled){f', dominant scheme {corpus.scheme}' if corpus.scheme else ''}. For each "
             f"configuration's best checkpoint, {SAMPLES} pieces of {LINES} lines from its first prefix, "
             "generate's default decoding, no copy guard: unformed (what the model learned of lines and rhyme "
             "on its own) and, where the corpus rhymes, under its scheme (the fluency cost of keeping it, nat/char; "
             "docs/forms.md).", "",
             "| configuration | adjacent rhyme, unformed | 1-3 character lines, unformed | rhyme accuracy, formed "
             "| fluency cost |", "|---|---:|---:|---:|---:|"]
    pct = lambda x: "" if x is None else f"{x:.1%}"  # noqa: E731
    for s in summaries:
        try:
            m = _measure(s.best_run, text)
        except CharlmError as e:
            lines.append(f"| {s.label} | ({e}) | | | |")
            continue
        cost = f"{m['cost']:+.3f}" if m.get("cost") is not None else ""
        lines.append(f"| {s.label} | {pct(m.get('adjacent'))} | {pct(m.get('short'))} | {pct(m.get('rhyme'))} "
                     f"| {cost} |")
    return lines + [""]
