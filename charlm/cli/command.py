"""The click classes every `charlm` command is made of: one-line errors, exit statuses, -h as --help.

Every user mistake ends as one `error: ...` line on stderr with exit status 2
(no traceback unless `--debug` is given); Ctrl-C exits with status 130 and
SIGTERM with 143, `train` first saving its state (see docs/errors.md).
"""

from __future__ import annotations

import os
import sys
import traceback

import click

from charlm.cli.options import DeprecatedAlias
from charlm.errors import CharlmError


def warn(line: str) -> None:
    """Print a `warning: ...` line on stderr."""
    click.echo(f"warning: {line}", err=True)


def _fail(message: str, code: int = 2):
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


HELP_OPTIONS = ["-h", "--help"]


class OneLineErrors:
    """Mixin for click commands: user errors become one line on stderr, never a traceback; -h is --help."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # on the command itself, not only on the group: `python train.py -h` runs the command alone
        self.context_settings = {"help_option_names": HELP_OPTIONS, **self.context_settings}

    def parse_args(self, ctx, args):
        rest = super().parse_args(ctx, args)
        for param in self.params:
            if isinstance(param, DeprecatedAlias):
                param.hand_over(ctx)
        return rest

    def main(self, args=None, prog_name=None, **extra):
        extra.pop("standalone_mode", None)
        argv = list(sys.argv[1:] if args is None else args)
        debug = "--debug" in argv
        try:
            rv = super().main(args=argv, prog_name=prog_name, standalone_mode=False, **extra)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except click.exceptions.Abort:
            click.echo("\ninterrupted", err=True)
            sys.exit(130)
        except click.ClickException as e:
            if debug:
                traceback.print_exc()
            _fail(e.format_message().replace("\n", " "), 2)
        except CharlmError as e:
            if debug:
                traceback.print_exc()
            _fail(str(e), 2)
        except OutputClosed:  # `charlm ... | head -1`: the reader is gone; leave quietly, as `cat` would
            sys.exit(128 + 13)
        except KeyboardInterrupt:
            click.echo("\ninterrupted", err=True)
            sys.exit(130)
        except OSError as e:
            if debug:
                traceback.print_exc()
            where = f": {e.filename}" if e.filename else ""
            _fail(f"{e.strerror or e}{where}", 2)
        except Exception as e:  # a bug of ours: still one line, with the way to see more
            if debug:
                traceback.print_exc()
            _fail(f"internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", 1)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            raise OutputClosed() from None


class OutputClosed(Exception):
    """stdout was closed by its reader (EPIPE); raised in place of BrokenPipeError so that click does not
    turn it into a silent exit status 1."""

    def __init__(self):
        super().__init__("stdout was closed (broken pipe)")
        silence_stdout()


def silence_stdout() -> None:
    """Point stdout at /dev/null once its reader is gone, so later prints and the final flush do not fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


class Command(OneLineErrors, click.Command):
    """A `charlm` command (also run alone, as `python train.py`)."""


class CommandGroup(OneLineErrors, click.Group):
    """The `charlm` group: its commands are `Command`s."""

    command_class = Command
