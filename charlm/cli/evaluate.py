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
                                      "top-k=40+temperature=0.7.")
@click.option("--num-samples", type=click.IntRange(min=1), default=8, show_default=True,
              help="Samples per prefix for each sampling setting (greedy and beam search give one).")
@click.option("--samples", cls=DeprecatedAlias, replaced_by="num_samples", type=click.IntRange(min=1))
@click.option("--length", type=click.IntRange(min=1), default=100, show_default=True, help="Characters per sample.")
@click.option("--prefix", "prefixes", multiple=True, default=(),
              help="Prefix to continue (repeat the flag for several). Default: the run's own prefixes "
                   "(分开 and 不分开 for the lyrics; openings of the corpus's lines otherwise).")
@click.option("--max-copy", type=click.IntRange(min=0), default=defaults.MAX_COPY, show_default=True,
              help="Run every setting with the copy guard at N and without it, and report both (0 = only without).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed for the sampling settings.")
@click.option("--unknown", type=click.Choice(["error", "skip"]), default="error", show_default=True,
              help="Characters of --text or a prefix outside the vocabulary: an error, or drop them with a count.")
@click.option("--json", "json_path", type=click.Path(), default=None, help="Also write every number to this JSON file.")
@click.option("--show-samples", is_flag=True, help="After the table, print the first sample of each setting.")
@device_option
def evaluate_command(checkpoint, text_path, text_member, text_encoding, corpus_path, decodings, num_samples, length,
                     prefixes, max_copy, seed, unknown, json_path, show_samples, device):
    """Perplexity on a text, and per decoding setting how varied and how copied the samples are (markdown table)."""
    from charlm.generate.sampling import parse_decodings
    from charlm.models.limits import check_length, check_seed
    from charlm.report.evaluate import evaluate_model, markdown_table
    from charlm.run.checkpoint import open_checkpoint
    from charlm.device import pick_device

    settings = parse_decodings(decodings)
    check_length(length, num_samples * max(len(prefixes), 1) * max(len(settings), 1))
    check_seed(seed)
    if (text_member or text_encoding) and not text_path:
        raise CharlmError("--member and --encoding apply to --text; give --text FILE (the training corpus is "
                          "read as it was in training)")
    dev = pick_device(device)
    run = open_checkpoint(checkpoint, dev)
    result = evaluate_model(run.model, run.vocab, run.payload, text_path=text_path, corpus_path=corpus_path,
                            unknown=unknown, decodings=settings, prefixes=prefixes, num_samples=num_samples,
                            length=length, seed=seed, device=dev, warn=warn, text_member=text_member,
                            text_encoding=text_encoding, max_copy=max_copy)
    ppl = result["perplexity"]
    click.echo(f"perplexity {ppl['value']:.3f} on the {ppl['text']} ({ppl['characters']:,} characters"
               + (f", {ppl['skipped']:,} skipped" if ppl["skipped"] else "") + f"); checkpoint {run.path}\n")
    click.echo(markdown_table(result["rows"]))
    if show_samples:
        click.echo()
        for row in result["rows"]:
            ex = row["example"]
            click.echo(f"- **{row['decoding']}**: {ex['prefix']}{ex['text']}".replace("\n", " / "))
    if json_path:
        result["checkpoint"] = str(run.path)
        Path(json_path).write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
