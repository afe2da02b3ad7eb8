"""The click classes every `charlm` command is made of: one-line errors, exit statuses, -h as --help.

Every user mistake ends as one `error: ...` line on stderr with exit status 2
(no traceback unless `--debug` is given); Ctrl-C exits with status 130 and
SIGTERM with 143, `train` first saving its state (see docs/errors.md).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import traceback

import click

from charlm.cli.options import DeprecatedAlias
from charlm.errors import CharlmError


def warn(line: str) -> None:
    """Print a `warning: ...` line on stderr."""
    click.echo(f"warning: {line}", err=True)


def _fail(message: str, code: int = 2):
    click.echo(f"error: {one_line(message)}", err=True)
    sys.exit(code)


def one_line(message: str) -> str:
    """`message` with its line breaks and other control characters escaped (a path may hold them):
    an error stays one line, and a terminal escape in a file name is shown, not obeyed."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in message)


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
        replace_unencodable()
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
        except Terminated as e:  # SIGTERM, SIGHUP (the terminal closed): nothing to save outside `train`
            line = f"\nstopped by {signal.Signals(e.signum).name}"
            _quietly(lambda: click.echo(line, err=True))
            _quietly(sys.stdout.flush)
            sys.exit(128 + e.signum)
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
            with _ending_on_signals(not isinstance(self, click.Group) and self.name not in OWN_SIGNALS):
                return super().invoke(ctx)
        except BrokenPipeError:
            raise OutputClosed() from None


# Commands that handle SIGTERM and SIGHUP themselves: train saves its state (cli/train.py), serve lets its
# server finish open requests (web/app.py). The others end at once on them, in one line with 128 + signal.
OWN_SIGNALS = ("serve",)
ENDING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived; a BaseException, so that no `except Exception` swallows it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum, frame):
    raise Terminated(signum)


@contextlib.contextmanager
def _ending_on_signals(enabled: bool):
    """While the command runs, SIGTERM and SIGHUP raise Terminated (main thread only: where handlers live)."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise_terminated) for s in ENDING_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def replace_unencodable() -> None:
    """Let stdout and stderr write what their encoding lacks as '?' (PYTHONIOENCODING=latin-1, a C locale):
    a sample of Chinese must not end `generate` with a UnicodeEncodeError, nor `train` at a progress line."""
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "").replace("_", "")
        if encoding.startswith("utf") or not hasattr(stream, "reconfigure"):
            continue  # every character encodes (or the stream is not a text file: nothing to set)
        _quietly(lambda: stream.reconfigure(errors="replace"))


def _quietly(action) -> None:
    """Do `action`, ignoring a stream the signal took away (a closed terminal after SIGHUP)."""
    try:
        action()
    except (OSError, ValueError):
        pass


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
