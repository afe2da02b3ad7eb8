"""The `charlm` command line: the click group over one module per command, and the only place that prints.

    charlm train | generate | forms | evaluate | compare | serve     cli/train.py, generate.py, forms.py, ...
    flags shared by several commands                        cli/options.py
    one-line errors and exit statuses                       cli/command.py

Every user mistake ends as one `error: ...` line on stderr with exit status 2
(no traceback unless `--debug` is given); Ctrl-C exits with status 130 and
SIGTERM with 143, `train` first saving its state (see docs/errors.md).
"""

from __future__ import annotations

import click

from charlm import __version__
from charlm.cli.command import CommandGroup
from charlm.cli.compare import compare_command
from charlm.cli.evaluate import evaluate_command
from charlm.cli.forms import forms_command
from charlm.cli.generate import generate_command
from charlm.cli.serve import serve_command
from charlm.cli.train import train_command


@click.group(cls=CommandGroup)
@click.version_option(__version__, prog_name="charlm")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error.")
def cli(debug):
    """charlm: train character-level language models and generate text from a prefix.

    \b
      charlm train                      # the default job on the Jay Chou lyrics
      charlm generate --prefix 分开      # continue a prefix with the newest run
    """


for _command in (train_command, generate_command, forms_command, evaluate_command, compare_command, serve_command):
    cli.add_command(_command)


def main(argv=None):
    """Entry point of the `charlm` console script."""
    cli.main(args=argv, prog_name="charlm")
