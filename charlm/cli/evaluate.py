"""`charlm evaluate`: perplexity on a text and, per decoding setting, how varied and how copied the samples are."""

from __future__ import annotations

import json
from pathlib import Path

import click

from charlm import defaults
from charlm.cli.command import Command, warn
from charlm.cli.options import DeprecatedAlias, checkpoint_option, device_option
from charlm.errors import CharlmError


@click.command("evaluate", cls=Command)
@checkpoint_option
@click.option("--text", "text_path", type=click.Path(), default=None,
              help="Measure perplexity on this file (.txt, .gz, .zip). Default: the checkpoint's validation text.")
@click.option("--member", "text_member", default=None, help="Which member of a --text .zip to read.")
@click.option("--encoding", "text_encoding", default=None,
              help="Text encoding of --text. Default: the training corpus's.")
@click.option("--corpus", "corpus_path", type=click.Path(), default=None,
              help="The training corpus, if it has moved since training (needed for the copy measures).")
@click.option("--decoding", "decodings", default="greedy,temperature=0.8,top-k=5,top-p=0.9,num-beams=4,"
                                                  f"temperature={defaults.TEMPERATURE:g}+top-p={defaults.TOP_P:g}",
              show_default=True, help="Decoding settings to compare, comma-separated, each named as generate's "
                                      "flags are; join several keys of one setting with '+', e.g. "
                                      "top-k=40+temperature=0.7. A song form is a setting too: form=NAME, "
                                      "rhyme-scheme=AABB, rhyme=CLASS, lines=N, line-lengths=7:7:7:7, "
                                      "candidates=K (e.g. top-p=0.9+rhyme-scheme=AABB+lines=8); such rows add "
                                      "format and rhyme accuracy and the fluency cost (docs/forms.md).")
@click.option("--num-samples", type=click.IntRange(min=1), default=8, show_default=True,
              help="Samples per prefix for each sampling setting (greedy and beam search give one).")
@click.option("--samples", cls=DeprecatedAlias, replaced_by="num_samples", type=click.IntRange(min=1))
@click.option("--length", type=click.IntRange(min=1), default=100, show_default=True, help="Characters per sample.")
@click.option("--prefix", "prefixes", multiple=True, default=(),
              help="Prefix to continue (repeat the flag for several). Default: the run's own prefixes "
                   "(分开 and 不分开 for the lyrics; openings of the corpus's lines otherwise).")
@click.option("--max-copy", type=click.IntRange(min=0), default=None,
              help="Run every setting with the copy guard at N and without it, and report both (0 = only "
                   f"without). Default: generate's ({defaults.MAX_COPY} for character scripts, 16 for alphabetic).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed for the sampling settings.")
@click.option("--unknown", type=click.Choice(["error", "skip"]), default="error", show_default=True,
              help="Characters of --text or a prefix outside the vocabulary: an error, or drop them with a count.")
@click.option("--json", "json_path", type=click.Path(), default=None, help="Also write every number to this JSON file.")
@click.option("--show-samples", is_flag=True, help="After the table, print the first sample of each setting.")
@device_option
def evaluate_command(checkpoint, text_path, text_member, text_encoding, corpus_path, decodings, num_samples, length,
                     prefixes, max_copy, seed, unknown, json_path, show_samples, device):
    """Perplexity on a text, and per decoding setting how varied and how copied the samples are (markdown table)."""
    from charlm.report.form_rows import parse_settings
    from charlm.models.limits import check_length, check_seed
    from charlm.report.evaluate import evaluate_model, markdown_table
    from charlm.run.checkpoint import open_checkpoint
    from charlm.device import pick_device

    settings = parse_settings(decodings)
    check_length(length, num_samples * max(len(prefixes), 1) * max(len(settings), 1))
    check_seed(seed)
    if (text_member or text_encoding) and not text_path:
        raise CharlmError("--member and --encoding apply to --text; give --text FILE (the training corpus is "
                          "read as it was in training)")
    dev = pick_device(device)
    run = open_checkpoint(checkpoint, dev)
    settings = _beams_within(settings, len(run.vocab), click.get_current_context().get_parameter_source(
        "decodings") is not click.core.ParameterSource.DEFAULT)
    result = evaluate_model(run.model, run.vocab, run.payload, text_path=text_path, corpus_path=corpus_path,
                            unknown=unknown, decodings=settings, prefixes=prefixes, num_samples=num_samples,
                            length=length, seed=seed, device=dev, warn=warn, text_member=text_member,
                            text_encoding=text_encoding, max_copy=max_copy)
    ppl = result["perplexity"]
    recorded = _recorded(run)
    if recorded is not None:
        result["recorded"] = recorded
    click.echo(f"perplexity {ppl['value']:.3f} on the {ppl['text']} ({ppl['characters']:,} characters"
               + (f", {ppl['skipped']:,} skipped" if ppl["skipped"] else "") + f"); checkpoint {run.path}"
               + (f" (training reported validation perplexity {recorded['best_val_ppl']:.3f} at epoch "
                  f"{recorded.get('best_epoch')}, {run.path.parent / 'summary.json'})" if recorded else "") + "\n")
    click.echo(markdown_table(result["rows"]))
    corpus_rate = result["settings"].get("corpus_adjacent_rhyme")
    if corpus_rate is not None and any("adjacent_rhyme" in row for row in result["rows"]):
        click.echo(f"\nadjacent rhyme: share of neighbouring complete lines whose ends rhyme; the training "
                   f"text's own is {corpus_rate:.1%}")
    if show_samples:
        click.echo()
        for row in result["rows"]:
            ex = row["example"]
            click.echo(f"- **{row['decoding']}**: {ex['prefix']}{ex['text']}".replace("\n", " / "))
    if json_path:
        result["checkpoint"] = str(run.path)
        Path(json_path).write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _recorded(run):
    """The run's final figure (RUN/summary.json) when the checkpoint evaluated is the one it names; else None."""
    from charlm.run.metrics import read_summary

    recorded = read_summary(run.path.parent, (run.payload.get("corpus") or {}).get("fingerprint"))
    return recorded if recorded is not None and recorded.get("checkpoint") == run.path.name else None


def _beams_within(settings, vocab_size: int, given: bool):
    """The default settings with beam search narrowed to a vocabulary smaller than its beams (DNA has 4
    characters; a one-character text none: its greedy row is the same); a --decoding given stays as given."""
    from dataclasses import replace

    if given:
        return settings
    kept = []
    for s in settings:
        if s.decoding.num_beams > vocab_size:
            if vocab_size < 2:
                continue
            s = replace(s, decoding=replace(s.decoding, num_beams=vocab_size))
        kept.append(s)
    return kept
