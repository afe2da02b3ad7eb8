"""What `charlm evaluate` measures: perplexity on a text, and per decoding setting how varied its samples are
and how much of them is copied verbatim from the training text ("creative versus memorised").

Nothing here prints: the functions return numbers and rows, `markdown_table` returns a string,
and the CLI writes them out.
"""

from __future__ import annotations

import numpy as np
import torch

from charlm.config import Config
from charlm.data.corpus import prepare_text, read_text
from charlm.errors import CharlmError
from charlm.generate.copyguard import CopyGuard, run_max_copy
from charlm.generate.decode import generate
from charlm.generate.formed import run_forms
from charlm.generate.prefix import check_prefix, drop_unknown, dropped_note
from charlm.generate.sampling import DEFAULT_DECODING, Decoding
from charlm.generate.request import GenerationRequest, run_request
from charlm.generate.verse import CLASSIC_PREFIXES, Shape
from charlm.models.limits import MAX_LENGTH
from charlm.report.form_rows import Setting, form_columns, line_columns
from charlm.report.quality import CopyIndex, sample_report
from charlm.run.checkpoint import default_prefixes, training_corpus
from charlm.train.validate import perplexity as carried_perplexity

DEFAULT_DECODINGS = "greedy,temperature=0.8,top-k=5,top-p=0.9,num-beams=4," + DEFAULT_DECODING.label()
DEFAULT_PREFIXES = CLASSIC_PREFIXES
MIN_COPY = 8  # a copied span this long or longer counts as memorised

# (row key, table header, format): the markdown table shows these, in this order
COLUMNS = (
    ("decoding", "decoding", "{}"),
    ("samples", "samples", "{}"),
    ("distinct_1", "distinct-1", "{:.3f}"),
    ("distinct_2", "distinct-2", "{:.3f}"),
    ("distinct_3", "distinct-3", "{:.3f}"),
    ("repeat_4", "repeated 4-grams", "{:.3f}"),
    ("longest_copy", "longest copy", "{}"),
    ("copied_fraction", f"copied (spans ≥{MIN_COPY})", "{:.3f}"),
    ("mean_logprob", "log-prob/char", "{:.3f}"),
    ("longest_copy_unguarded", "longest copy, no guard", "{}"),
    ("copied_fraction_unguarded", "copied, no guard", "{:.3f}"),
    ("mean_logprob_unguarded", "log-prob/char, no guard", "{:.3f}"),
    ("adjacent_rhyme", "adjacent rhyme", "{:.1%}"),
    ("short_lines", "1-3 char lines", "{:.1%}"),
    ("format_accuracy", "format", "{:.1%}"),
    ("rhyme_accuracy", "rhyme", "{:.1%}"),
    ("fluency_cost", "fluency cost", "{:+.3f}"),
)


def text_indices(text: str, vocab, unknown: str = "error") -> tuple[np.ndarray, int]:
    """Indices of `text` and how many characters were dropped.

    Characters outside the vocabulary are an error listing them (`unknown='error'`), or are
    removed and counted (`unknown='skip'`).
    """
    missing = vocab.unknown(text)
    if missing:
        if unknown != "skip":
            shown = " ".join(repr(c) for c in missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
            raise CharlmError(f"the text has {len(missing)} distinct characters outside the model's vocabulary: {shown} "
                              "(skip them with --unknown skip)")
        kept, _ = drop_unknown(text, vocab)
        return vocab.encode(kept), len(text) - len(kept)
    return vocab.encode(text), 0


def perplexity_on(model, indices, device=None) -> float:
    """Perplexity of the model on one index stream, the hidden state carried over the whole text."""
    if len(indices) < 2:
        raise CharlmError(f"the text has {len(indices)} usable characters; perplexity needs at least 2")
    return carried_perplexity(model, indices, device)


def decoding_rows(model, vocab, training_text: str | CopyIndex, decodings: list, prefixes, num_samples: int,
                  length: int, seed: int = 0, device=None, min_copy: int = MIN_COPY,
                  guard: CopyGuard | None = None, shape: Shape = Shape(), forms=None) -> list[dict]:
    """One row of sample-quality measures per decoding setting (a Decoding, or a form_rows.Setting).

    Each sampling setting draws `num_samples` continuations of `length` characters per prefix (all
    in one batch, its own generator seeded with `seed`, so rows do not depend on their order);
    greedy and beam search are deterministic, so they give one continuation per prefix. Only the
    continuation is measured: the prefix is copied from the training text on purpose. With a
    `guard`, every setting is run twice, with the copy guard and without it (the `_unguarded`
    columns), from the same seed. A setting with a form needs the run's `forms`
    (generate.formed.RunForms); its samples are as long as the form makes them.
    """
    copy_index = training_text if isinstance(training_text, CopyIndex) else CopyIndex(training_text)
    device = device or next(model.parameters()).device
    prefixes = list(prefixes)
    for p in prefixes:
        check_prefix(p, vocab)
    settings = [d if isinstance(d, Setting) else Setting(d) for d in decodings]
    script, units = (forms.forms.script, forms.forms.units) if forms is not None else (None, "chars")

    def measure(setting: Setting, with_guard, formed: bool = True, chars: int = length) -> tuple[dict, list]:
        generator = torch.Generator(device=device).manual_seed(seed)
        n = 1 if setting.decoding.deterministic else num_samples
        if formed and setting.form.active:
            samples = run_request(model, vocab, _form_request(setting, n, seed), prefixes, generator, device,
                                  guard=with_guard, forms=_forms_of(forms))
        else:
            samples = generate(model, vocab, prefixes, chars, setting.decoding, n, generator, device,
                               guard=with_guard, shape=shape)
        total = sum(len(s.logprobs) for s in samples)
        report = sample_report([s.text for s in samples], copy_index, min_copy)
        report["mean_logprob"] = sum(s.logprob for s in samples) / total if total else float("nan")
        report["blank_samples"] = sum(not s.text.strip() for s in samples)
        return report, samples

    rows = []
    for setting in settings:
        report, samples = measure(setting, guard)
        row = {"decoding": setting.label(), "samples": len(samples), **report,
               **line_columns(samples, script, units)}
        plain = measure(setting, None)[0] if guard is not None else report  # guard off: the same numbers
        row.update({f"{k}_unguarded": plain[k] for k in ("longest_copy", "copied_fraction", "mean_logprob")})
        if setting.form.active:
            row.update(form_columns(samples, script))
            free = measure(setting, guard, formed=False, chars=max(1, round(sum(len(s.text) for s in samples)
                                                                          / max(1, len(samples)))))[0]
            row["fluency_cost"] = free["mean_logprob"] - report["mean_logprob"]
        row["gave_way"] = sum(s.gave_way for s in samples)
        row["example"] = {"prefix": samples[0].prefix, "text": samples[0].text}
        rows.append(row)
    return rows


def _forms_of(forms):
    if forms is None:
        raise CharlmError("a form setting needs the run's song forms: this checkpoint has none stored and its "
                          "training text cannot be read; pass --corpus with it")
    return forms


def _form_request(setting: Setting, n: int, seed: int) -> GenerationRequest:
    d = setting.decoding
    strategy = "beam" if d.num_beams > 1 else "sample" if d.sample else "greedy"
    return GenerationRequest(strategy, d, MAX_LENGTH, Shape(lines=setting.lines, song_end=False, tidy=True), n,
                             seed, False, 0, form=setting.form)


def evaluate_model(model, vocab, payload: dict, *, text_path: str | None = None, corpus_path: str | None = None,
                   unknown: str = "error", decodings: list[Decoding], prefixes=None, num_samples: int = 8,
                   length: int = 100, seed: int = 0, device=None, warn=lambda line: None,
                   text_member: str | None = None, text_encoding: str | None = None,
                   max_copy: int | None = None) -> dict:
    """Everything `charlm evaluate` reports for a loaded checkpoint, as one JSON-ready dict.

    Perplexity is measured on `text_path` (read and prepared as the training text was) or, by
    default, on the checkpoint's own validation text; copies are looked up in its whole corpus text
    (training and validation: the user's file is what must not be recited). `max_copy` N > 0 runs
    every setting with the copy guard at N (built here from that text; None: the run's default) and without it; `prefixes`
    None takes the run's own. With `unknown='skip'`, characters outside the vocabulary are dropped
    (and `warn` is told).
    """
    corpus = training_corpus(payload, corpus_path, warn)
    if text_path:
        config = Config.from_dict(payload["config"])
        text = prepare_text(read_text(text_path, text_member, text_encoding or config.encoding, what="text",
                                      flag="--text"), config.newlines)
        indices, skipped = text_indices(text, vocab, unknown)
        if skipped:
            warn(f"skipped {skipped:,} characters of {text_path} that are not in the model's vocabulary")
        source = f"text {text_path}"
    else:
        indices, skipped, source = corpus.val, 0, f"validation text of {corpus.source}"
    kept = []
    for prefix in (prefixes or default_prefixes(payload, vocab)):
        cleaned, dropped = check_prefix(prefix, vocab, unknown)
        if dropped:
            warn(dropped_note(prefix, dropped))
        kept.append(cleaned)
    guard = None
    max_copy = run_max_copy(payload) if max_copy is None else max_copy  # None: generate's default for the script
    if max_copy > 0:
        guard = CopyGuard.from_text(corpus.text, corpus.vocab, max_copy, corpus.fingerprint)
    forms = run_forms(payload, lambda: corpus.text)
    rows = decoding_rows(model, vocab, CopyIndex(corpus.text), decodings, kept, num_samples, length, seed, device,
                         guard=guard, shape=Shape(tidy=True), forms=forms)
    return {
        "perplexity": {"value": perplexity_on(model, indices, device), "text": source,
                       "characters": int(len(indices)), "skipped": skipped},
        "settings": {"prefixes": kept, "samples": num_samples, "length": length, "seed": seed,
                     "min_copy": MIN_COPY, "training_chars": len(corpus.train_text),
                     "corpus_chars": len(corpus.text), "max_copy": max_copy,
                     "corpus_adjacent_rhyme": forms.forms.adjacent_rate if forms is not None else None},
        "rows": rows,
    }


def markdown_table(rows: list[dict]) -> str:
    """The rows as a GitHub-flavoured markdown table (the `example` field is left out, and so is a column
    that no row has, such as the form columns when no setting has a form)."""
    columns = [c for c in COLUMNS if any(c[0] in row for row in rows)] or list(COLUMNS)
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |",
             "|" + "|".join("---" if k == "decoding" else "---:" for k, _, _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt.format(row[k]) if k in row else "" for k, _, fmt in columns) + " |")
    return "\n".join(lines)
