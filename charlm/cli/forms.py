"""`charlm forms`: the forms a run learned from its corpus: line lengths, rhyme, and its named forms."""

from __future__ import annotations

import click

from charlm.cli.command import Command, warn
from charlm.cli.options import checkpoint_option
from charlm.errors import CharlmError


@click.command("forms", cls=Command)
@checkpoint_option
@click.option("--corpus", "corpus_path", type=click.Path(), default=None,
              help="The training corpus, if it has moved since training (an older run's forms are learned from it).")
@click.option("--top", type=click.IntRange(min=1), default=20, show_default=True, help="Named forms to list.")
def forms_command(checkpoint, corpus_path, top):
    """List the forms a run knows (line lengths, rhyme, named forms): what charlm generate can be asked to keep.

    \b
      charlm forms                                  # the newest run
      charlm forms --checkpoint checkpoints/ci-run  # a Song ci run: its tune names (词牌)
    """
    from charlm.generate.formed import run_forms
    from charlm.run.checkpoint import open_checkpoint, training_corpus

    run = open_checkpoint(checkpoint, "cpu")
    found = run_forms(run.payload, lambda: training_corpus(run.payload, corpus_path, log=warn).text)
    if found is None:
        raise CharlmError("this run stores no forms and its training text cannot be read; pass --corpus")
    if "forms" not in run.payload:
        warn("this run was trained before forms were stored: learned now from its training text")
    forms = found.forms
    lengths = forms.line_lengths
    total = sum(lengths.values())
    unit = "words" if forms.units == "words" else "characters"
    if total:
        ordered = sorted(lengths)
        median = next(k for k in ordered if sum(lengths[j] for j in ordered if j <= k) * 2 >= total)
        short = sum(n for k, n in lengths.items() if k <= 3) / total
        click.echo(f"lines: {total:,}, median {median} {unit}, {short:.1%} of 1-3 {unit}")
    if forms.adjacent_rate is None:
        click.echo("rhyme: no rhyme data for this script (line forms still work)")
    else:
        says = f"dominant scheme {forms.scheme}" if forms.scheme else "no scheme: it does not clearly rhyme"
        click.echo(f"rhyme: adjacent lines rhyme {forms.adjacent_rate:.1%} (lines shuffled: "
                   f"{forms.shuffled_rate:.1%}); {says}")
    if not forms.named:
        click.echo("named forms: none (no titled pieces, no pieces of one fixed length)")
        return
    click.echo(f"named forms ({len(forms.named)}{', titled pieces' if forms.titled else ''}):")
    width = max(len(f.name) for f in forms.named[:top])
    click.echo(f"  {'name':<{width}}  {'pieces':>6}  {'share':>6}  rhyme           pattern")
    for f in forms.named[:top]:
        click.echo(f"  {f.name:<{width}}  {f.pieces:>6}  {f.share:>6.0%}  {f.rhyme:<15} {f.pattern}")
