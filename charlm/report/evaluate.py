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
from charlm.generate.copyguard import DEFAULT_MAX_COPY, CopyGuard
from charlm.generate.decode import generate
from charlm.generate.prefix import check_prefix, drop_unknown, dropped_note
from charlm.generate.sampling import DEFAULT_DECODING, Decoding
from charlm.generate.verse import CLASSIC_PREFIXES, Shape
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


def decoding_rows(model, vocab, training_text: str | CopyIndex, decodings: list[Decoding], prefixes, num_samples: int,
                  length: int, seed: int = 0, device=None, min_copy: int = MIN_COPY,
                  guard: CopyGuard | None = None, shape: Shape = Shape()) -> list[dict]:
    """One row of sample-quality measures per decoding setting.

    Each sampling setting draws `num_samples` continuations of `length` characters per prefix (all
    in one batch, its own generator seeded with `seed`, so rows do not depend on their order);
    greedy and beam search are deterministic, so they give one continuation per prefix. Only the
    continuation is measured: the prefix is copied from the training text on purpose. With a
    `guard`, every setting is run twice, with the copy guard and without it (the `_unguarded`
    columns), from the same seed.
    """
    copy_index = training_text if isinstance(training_text, CopyIndex) else CopyIndex(training_text)
    device = device or next(model.parameters()).device
    prefixes = list(prefixes)
    for p in prefixes:
        check_prefix(p, vocab)

    def measure(decoding: Decoding, with_guard) -> tuple[dict, list]:
        generator = torch.Generator(device=device).manual_seed(seed)
        n = 1 if decoding.deterministic else num_samples
        samples = generate(model, vocab, prefixes, length, decoding, n, generator, device,
                           guard=with_guard, shape=shape)
        chars = sum(len(s.logprobs) for s in samples)
        report = sample_report([s.text for s in samples], copy_index, min_copy)
        report["mean_logprob"] = sum(s.logprob for s in samples) / chars if chars else float("nan")
        report["blank_samples"] = sum(not s.text.strip() for s in samples)
        return report, samples

    rows = []
    for decoding in decodings:
        report, samples = measure(decoding, guard)
        row = {"decoding": decoding.label(), "samples": len(samples), **report}
        plain = measure(decoding, None)[0] if guard is not None else report  # guard off: the same numbers
        row.update({f"{k}_unguarded": plain[k] for k in ("longest_copy", "copied_fraction", "mean_logprob")})
        row["gave_way"] = sum(s.gave_way for s in samples)
        row["example"] = {"prefix": samples[0].prefix, "text": samples[0].text}
        rows.append(row)
    return rows


def evaluate_model(model, vocab, payload: dict, *, text_path: str | None = None, corpus_path: str | None = None,
                   unknown: str = "error", decodings: list[Decoding], prefixes=None, num_samples: int = 8,
                   length: int = 100, seed: int = 0, device=None, warn=lambda line: None,
                   text_member: str | None = None, text_encoding: str | None = None,
                   max_copy: int = DEFAULT_MAX_COPY) -> dict:
    """Everything `charlm evaluate` reports for a loaded checkpoint, as one JSON-ready dict.

    Perplexity is measured on `text_path` (read and prepared as the training text was) or, by
    default, on the checkpoint's own validation text; copies are looked up in its whole corpus text
    (training and validation: the user's file is what must not be recited). `max_copy` N > 0 runs
    every setting with the copy guard at N (built here from that text) and without it; `prefixes`
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
    if max_copy > 0:
        guard = CopyGuard.from_text(corpus.text, corpus.vocab, max_copy, corpus.fingerprint)
    rows = decoding_rows(model, vocab, CopyIndex(corpus.text), decodings, kept, num_samples, length, seed, device,
                         guard=guard, shape=Shape(tidy=True))
    return {
        "perplexity": {"value": perplexity_on(model, indices, device), "text": source,
                       "characters": int(len(indices)), "skipped": skipped},
        "settings": {"prefixes": kept, "samples": num_samples, "length": length, "seed": seed,
                     "min_copy": MIN_COPY, "training_chars": len(corpus.train_text),
                     "corpus_chars": len(corpus.text), "max_copy": max_copy},
        "rows": rows,
    }


def markdown_table(rows: list[dict]) -> str:
    """The rows as a GitHub-flavoured markdown table (the `example` field is left out)."""
    lines = ["| " + " | ".join(h for _, h, _ in COLUMNS) + " |",
             "|" + "|".join("---" if k == "decoding" else "---:" for k, _, _ in COLUMNS) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt.format(row[k]) if k in row else "" for k, _, fmt in COLUMNS) + " |")
    return "\n".join(lines)
