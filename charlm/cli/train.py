"""`charlm train`: parse the flags, start the run (charlm/train/start.py), train, print, map the ending to a status.

Ctrl-C, SIGTERM or SIGHUP saves the state and exits with 128 + the signal; a closed stdout (`| head`) stops the
run as a signal would, its epoch saved (see docs/errors.md).
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
from dataclasses import fields

import click

from charlm.cli.command import Command, silence_stdout, warn
from charlm.cli.options import Progress, config_options, explicit_params
from charlm.config import Config
from charlm.errors import CharlmError


class StopOnSignal:
    """Ctrl-C, SIGTERM or SIGHUP (the terminal closed) during training: the first asks the trainer to save
    its state and stop, a second exits at once.

    Exiting at once is safe: checkpoints are replaced by an atomic rename, so a
    save cut short leaves only a temporary file, which the next run removes.
    Call the object to ask whether a stop was requested.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def __call__(self) -> bool:
        return self.signum is not None

    def request(self, signum: int) -> None:
        """Ask for a stop as a signal would (e.g. SIGPIPE once stdout's reader is gone)."""
        if self.signum is None:
            self.signum = signum

    def _handle(self, signum, frame):
        if self.signum is not None:
            _say(b"\nsecond interrupt: exiting now; the checkpoints on disk are intact\n")
            os._exit(128 + signum)
        self.signum = signum
        _say(b"\ninterrupt: saving the current state after this minibatch (interrupt again to quit at once)\n")

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        if self.signum is not None:
            return  # the process is on its way out: a second signal must still end it at once, not raise
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()


def _say(line: bytes) -> None:
    """Write to stderr from a signal handler; after SIGHUP the terminal may be gone, and that must not stop the save."""
    try:
        os.write(2, line)
    except OSError:
        pass


@click.command("train", cls=Command)
@config_options
@click.option("--resume", type=click.Path(), default=None,
              help="Continue the run in this directory from its last.pt (only --epochs, --patience, "
                   "--pred-every, --pred-len, --prefix and --device may change).")
@click.option("--overwrite", is_flag=True,
              help="Start a new run in an --out directory that holds one; the earlier run's files are moved "
                   "into OUT/replaced-<time>/, not deleted.")
@click.pass_context
def train_command(ctx, resume, overwrite, **values):
    """Train a character-level model; print perplexity every epoch and save checkpoints."""
    from charlm.train.start import start_run

    explicit = explicit_params(ctx, [f.name for f in fields(Config)])
    run = start_run(values, explicit, resume, overwrite, hold=ctx.with_resource, warn=warn,
                    tell=lambda line: click.echo(line, err=True))
    for line in _summary(run):
        click.echo(line)
    result = _train(run)
    click.echo(f"best validation perplexity {result.best_val_ppl:.3f} at epoch {result.best_epoch}; "
               f"checkpoints in {run.run_dir}/ (best.pt, last.pt)")
    hint_prefix = run.config.prefixes[0] if run.config.prefixes else "分开"
    # a titled corpus's prefix is a title and its line break (浣溪沙\n): its form says the same on one line
    hint = (f"--form {shlex.quote(hint_prefix[:-1])}" if hint_prefix.endswith("\n")
            else f"--prefix {shlex.quote(hint_prefix)}")
    click.echo(f"generate with: charlm generate --checkpoint {shlex.quote(str(run.run_dir))} {hint}")
    run.group.exit_now(0)  # under torchrun: exit now, skipping a teardown that can abort (see distributed.py)


def _summary(run) -> list[str]:
    """The lines said before training: the corpus, the auto recipe's choice, the model and where it goes."""
    from charlm.train.start import resume_position

    corpus, config = run.corpus, run.config
    tuning = f"{len(corpus.tune):,} tuning slice, " if len(corpus.tune) else ""
    lines = [f"corpus {corpus.source}: {len(corpus.text):,} characters ({len(corpus.train):,} train, "
             f"{tuning}{len(corpus.val):,} validation), vocabulary {len(corpus.vocab):,}"]
    if run.auto_line:
        lines.append(run.auto_line)
    learns = (f"{run.n_params:,} parameters, hidden {config.hidden}; sampler {config.sampler}, "
              f"{config.optimizer} lr {config.lr:g}, clip {config.clip:g}") if run.n_params \
        else f"order {config.order}, fitted by counting"
    lines.append(f"model {config.model}: {learns}; run directory {run.run_dir}"
                 + (f" ({resume_position(run.payload, config, len(corpus.train))})" if run.payload else ""))
    return lines


def _train(run):
    """train() under StopOnSignal; every way it can end short becomes its message and exit status."""
    from charlm.models.kn_counts import CountingInterrupted
    from charlm.run.checkpoint import CheckpointWriteError
    from charlm.train import distributed
    from charlm.train.loop import train
    from charlm.train.state import TrainingInterrupted

    resume_command = f"charlm train --resume {shlex.quote(str(run.run_dir))}"
    stop = StopOnSignal()

    def log(line: str) -> None:
        """click.echo that, once stdout's reader is gone (`| head`), stops the run as a signal would:
        the epoch just finished is saved, not lost."""
        try:
            click.echo(line)
        except BrokenPipeError:
            silence_stdout()
            stop.request(signal.SIGPIPE)

    try:
        with stop:
            return train(run.config, run.corpus, run.run_dir, resume=run.payload, log=log,
                         progress=Progress(sys.stderr.isatty()), dist=run.group, should_stop=stop)
    except RuntimeError as e:  # under torchrun: a collective failed because another rank died or hung
        raise distributed.explain(run.group, e) from None
    except TrainingInterrupted as e:
        _stopped(run, e, stop, resume_command)
    except CountingInterrupted:
        if run.lock is not None:
            run.lock.release()
        click.echo(f"interrupted while counting n-grams; nothing was saved (the count is the whole "
                   f"{run.config.model} run: start it again)", err=True)
        sys.exit(128 + (stop.signum or signal.SIGINT))
    except CheckpointWriteError as e:
        hint = f"; once there is room, resume with: {resume_command}" if (run.run_dir / "last.pt").exists() else ""
        raise CharlmError(f"{e}{hint}") from None
    except KeyboardInterrupt:  # only when the handler could not be installed (not the main thread)
        last = run.run_dir / "last.pt"
        if last.exists():
            click.echo(f"\ninterrupted; {last} holds the last finished epoch. Resume with: {resume_command}", err=True)
        else:
            click.echo("\ninterrupted before the first epoch finished; nothing was saved", err=True)
        sys.exit(130)


def _stopped(run, e, stop: StopOnSignal, resume_command: str) -> None:
    """A signal (or a closed stdout) stopped training with its state saved: say how to resume, and exit."""
    group = run.group
    try:  # after SIGHUP stderr may be a closed terminal: the state is saved either way
        if group.is_main and stop.signum == signal.SIGPIPE:
            click.echo(f"stdout was closed (broken pipe): stopped; the state is saved in {e.path}; "
                       f"resume with: {resume_command}", err=True)
        elif group.is_main:
            click.echo(f"{e}\nresume with: {resume_command}", err=True)
    except OSError:
        pass
    code = 128 + (stop.signum or signal.SIGINT)
    if run.lock is not None:
        run.lock.release()
    if group.launched:  # torchrun: leave through atexit, which closes the process group
        sys.exit(code)
    # Everything is saved: skip the interpreter's teardown, during which another signal would kill
    # the process without this status or print a KeyboardInterrupt traceback from an atexit hook.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
