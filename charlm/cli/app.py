"""The `charlm` command line: click commands over the library, and the only place that prints.

Every user mistake ends as one `error: ...` line on stderr with exit status 2
(no traceback unless `--debug` is given); Ctrl-C exits with status 130 and
SIGTERM with 143, `train` first saving its state (see docs/errors.md).
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
import time
import traceback
from dataclasses import MISSING, fields
from pathlib import Path

import click
from click.core import ParameterSource

from charlm import __version__, defaults
from charlm.config import PRESET_NAMES, PRESETS, Config, apply_preset, field_default
from charlm.errors import CharlmError
from charlm.models import MODELS

EXPLICIT_SOURCES = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


def _warn(line: str) -> None:
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


class DeprecatedAlias(click.Option):
    """A hidden old spelling of a flag, kept for a release: its value goes to the new flag, with a one-line notice.

        @click.option("--samples", cls=DeprecatedAlias, replaced_by="num_samples", type=int)
    """

    def __init__(self, *args, replaced_by: str, **kwargs):
        kwargs.update(hidden=True, default=None, show_default=False)
        super().__init__(*args, **kwargs)
        self.replaced_by = replaced_by

    def hand_over(self, ctx: click.Context) -> None:
        value = ctx.params.pop(self.name, None)
        if value is None or value == ():
            return
        new = next(p for p in ctx.command.params if p.name == self.replaced_by)
        if ctx.get_parameter_source(new.name) in EXPLICIT_SOURCES:
            raise CharlmError(f"{self.opts[0]} is the old spelling of {new.opts[0]}; give only {new.opts[0]}")
        click.echo(f"warning: {self.opts[0]} is deprecated and will be removed; use {new.opts[0]}", err=True)
        ctx.params[new.name] = value
        ctx.set_parameter_source(new.name, ParameterSource.COMMANDLINE)


class Command(OneLineErrors, click.Command):
    pass


class Group(OneLineErrors, click.Group):
    command_class = Command


def _flag(f) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _click_type(f):
    if "choices" in f.metadata:
        return click.Choice(f.metadata["choices"])
    if f.name == "model":
        return click.Choice(list(MODELS))
    if f.name == "preset":
        return click.Choice(PRESET_NAMES)
    default = field_default(f)
    if isinstance(default, bool):
        return None
    return type(default) if isinstance(default, (int, float)) else str


class NotedOption(click.Option):
    """An option whose help adds `note` to its `[default: ...]`: what a preset or the auto recipe sets instead."""

    def __init__(self, *args, note: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.note = note

    def get_help_record(self, ctx):
        record = super().get_help_record(ctx)
        if record is None or not self.note:
            return record
        spec, text = record
        if text.endswith("]") and "  [" in text:
            return spec, f"{text[:-1]}; {self.note}]"
        return spec, f"{text}  [{self.note}]" if text else f"[{self.note}]"


def config_options(func=None, *, default_preset=MISSING, with_auto=True):
    """Add one click option per Config field, with the field's help and default.

    Each help also says which presets (and the auto recipe) set the field, naming
    first `default_preset`, the preset a run uses when --preset is not given
    (train: the Config default; compare passes its own), and whether --preset auto is offered.
    """
    from charlm.cli.helpnotes import preset_note

    if func is None:
        return lambda f: config_options(f, default_preset=default_preset, with_auto=with_auto)
    if default_preset is MISSING:
        default_preset = field_default(next(f for f in fields(Config) if f.name == "preset"))
    for f in reversed(fields(Config)):
        default = field_default(f)
        help_text = f.metadata["help"]
        if f.name == "model":
            help_text = f"{help_text.rstrip('.')}: {', '.join(MODELS)}."
        if f.name == "preset":
            help_text += f" Presets: {', '.join(PRESET_NAMES)}."
        kwargs = dict(default=default, show_default=default not in (None, "", ()), help=help_text,
                      cls=NotedOption, note=preset_note(f.name, default_preset, with_auto))
        if isinstance(default, bool):
            kwargs["is_flag"] = True
        elif f.metadata.get("multiple"):
            kwargs.update(multiple=True, type=str)
        else:
            kwargs["type"] = _click_type(f)
        func = click.option(_flag(f), f.name, **kwargs)(func)
    return func


def explicit_params(ctx: click.Context, names) -> set[str]:
    """The parameters the user actually gave (so presets and resume know what not to override)."""
    return {n for n in names if ctx.get_parameter_source(n) in EXPLICIT_SOURCES}


class Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, enabled: bool):
        self.enabled, self.last = enabled, 0.0

    def __call__(self, done: int, total: int | None):
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.2 and done != total):
            return
        self.last = now
        total = total or done
        filled = int(30 * done / max(total, 1))
        click.echo(f"\r  [{'#' * filled}{'.' * (30 - filled)}] {done}/{total} minibatches", err=True, nl=False)
        if done >= total:
            click.echo("\r" + " " * 60 + "\r", err=True, nl=False)


@click.group(cls=Group)
@click.version_option(__version__, prog_name="charlm")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error.")
def cli(debug):
    """charlm: train character-level language models and generate text from a prefix.

    \b
      charlm train                      # the default job on the Jay Chou lyrics
      charlm generate --prefix 分开      # continue a prefix with the newest run
    """


def _default_run_dir(config: Config) -> Path:
    return Path("checkpoints") / f"{time.strftime('%Y%m%d-%H%M%S')}-{config.model}-{config.sampler}"


def lock_run_dir(ctx: click.Context, run_dir: Path, what: str = "run directory"):
    """Take the run directory's lock until the command ends (charlm/rundir.py); a stale one is reported and taken over."""
    from charlm.run.rundir import RunLock, stale_message

    if run_dir.exists() and not run_dir.is_dir():
        raise CharlmError(f"--out {run_dir} is a file; give a directory")
    lock = ctx.with_resource(RunLock(run_dir, what))
    if stale_message(lock):
        click.echo(f"warning: {stale_message(lock)}", err=True)
    return lock


def _prepare_run_dir(ctx: click.Context, run_dir: Path, resuming: bool, overwrite: bool = False, lock=None):
    """Lock the run directory (unless `lock` is held already) and refuse to write over another run
    unless resuming it or told to --overwrite it (its files are then moved aside, never deleted)."""
    from charlm.run.rundir import held_run_files, set_aside

    lock = lock or lock_run_dir(ctx, run_dir)
    held = [] if resuming else held_run_files(run_dir)
    if held and not overwrite:
        raise CharlmError(f"{run_dir} already holds a run ({', '.join(held)}); continue it with --resume {run_dir}, "
                          "replace it with --overwrite (its files are moved aside), or choose another --out")
    if held:
        aside = set_aside(run_dir)
        click.echo(f"--overwrite: moved the earlier run's {', '.join(held)} to {aside}/", err=True)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise CharlmError(f"cannot write to run directory {run_dir} ({e.strerror}); choose another --out") from None
    return lock


def build_train_config(ctx: click.Context, values: dict) -> tuple[Config, set[str]]:
    """A validated Config from click's values: defaults, then the preset, then the flags given."""
    names = [f.name for f in fields(Config)]
    explicit = explicit_params(ctx, names)
    config = Config(**{n: values[n] for n in names})
    return apply_preset(config, config.preset, explicit), explicit


class StopOnSignal:
    """Ctrl-C or SIGTERM during training: the first asks the trainer to save its state and stop, a second exits at once.

    Exiting at once is safe: checkpoints are replaced by an atomic rename, so a
    save cut short leaves only a temporary file, which the next run removes.
    Call the object to ask whether a stop was requested.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

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
            os.write(2, b"\nsecond interrupt: exiting now; the checkpoints on disk are intact\n")
            os._exit(128 + signum)
        self.signum = signum
        os.write(2, b"\ninterrupt: saving the current state after this minibatch (interrupt again to quit at once)\n")

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


def resume_position(payload: dict, config: Config, n_train: int) -> str:
    """Where a resumed run picks up: 'resuming in epoch 1 at minibatch 31 of 50' or 'resuming after epoch 3'."""
    from charlm.data.batches import num_batches

    partial = payload.get("partial")
    if partial:
        return (f"resuming in epoch {partial['epoch']} at minibatch {partial['batch'] + 1} of "
                f"{num_batches(n_train, config)}")
    return f"resuming after epoch {payload['epoch']}"


@cli.command("train")
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
    from charlm.train import distributed
    from charlm.run.checkpoint import CheckpointWriteError, load_checkpoint
    from charlm.data.corpus import carve_tune, load_corpus
    from charlm.models import count_parameters, build_model
    from charlm.models.kneser_ney import CountingInterrupted
    from charlm.train.recipe import resolve_auto
    from charlm.train.loop import TrainingInterrupted, check_resumable, resume_config, train

    from charlm.models.limits import check_length, check_model_fits, check_order, inapplicable_flags
    from charlm.run.rundir import resume_target

    config, explicit = build_train_config(ctx, values)
    payload, lock = None, None
    if resume:
        if overwrite:
            raise CharlmError("--overwrite starts a new run and --resume continues one; give only one")
        run_dir, ckpt = resume_target(resume)
        if "out" in explicit and values["out"] and Path(values["out"]).resolve() != run_dir.resolve():
            raise CharlmError(f"--out {values['out']} cannot move a resumed run: it continues in {run_dir}; drop --out")
        if distributed.from_env().is_main:  # before reading last.pt: no other process may be writing it
            lock = lock_run_dir(ctx, run_dir)
        payload = load_checkpoint(ckpt)
        check_resumable(payload, ckpt)
        saved_preset = payload["config"].get("preset")
        if "preset" in explicit and values.get("preset") != saved_preset:
            raise CharlmError(f"--preset {values.get('preset')} does not apply on resume: the run keeps its own "
                              f"settings (preset {saved_preset}); drop --preset")
        config = resume_config(Config.from_dict(payload["config"]), config, explicit)
    else:
        run_dir = Path(config.out) if config.out else _default_run_dir(config)
    config.validate()
    group = distributed.from_env()  # this process's rank under torchrun; the single process without it
    group.check_batch_size(config.batch_size)
    group.check_rendezvous()  # before the run directory is created
    group.silence_others()  # only rank 0 prints
    corpus = load_corpus(config, log=_warn)
    auto_line = None
    if payload is None and config.preset == "auto":  # needs the corpus: resolved here, stored in the checkpoint
        config, corpus, auto_line = resolve_auto(config, corpus, explicit)
        group.check_batch_size(config.batch_size)
        if not config.out:
            run_dir = _default_run_dir(config)
    corpus = carve_tune(corpus, config.tune_fraction)  # on resume: the same slice as the run was fitted on
    if payload is not None:
        saved = payload["corpus"]
        if corpus.fingerprint != saved["fingerprint"]:
            raise CharlmError(f"the corpus differs from the one {run_dir} was trained on: now {corpus.source}, "
                              f"{len(corpus.text):,} characters, fingerprint {corpus.fingerprint}; then "
                              f"{saved.get('source')}, {saved.get('chars', 0):,} characters, fingerprint "
                              f"{saved['fingerprint']}; resume with the same text (--corpus, --member, --encoding, "
                              "--newlines, --max-chars)")
        if payload["epoch"] >= config.epochs:
            raise CharlmError(f"{run_dir} already finished epoch {payload['epoch']} of {config.epochs}; "
                              "raise --epochs to train further")
    if "prefixes" in explicit:  # fail now rather than skip a prefix the progress samples cannot encode
        for prefix in config.prefixes:
            if not prefix:
                raise CharlmError("--prefix is empty; give at least one character, e.g. --prefix 分开")
            if corpus.vocab.unknown(prefix):
                raise CharlmError(f"--prefix {prefix!r} has characters that never occur in the corpus: "
                                  f"{' '.join(corpus.vocab.unknown(prefix))}; choose a prefix from the text")
    elif payload is None and any(corpus.vocab.unknown(p) for p in config.prefixes):
        from dataclasses import replace

        from charlm.generate.verse import corpus_prefixes

        # the default 分开 is not in this corpus: its own line openings serve the progress samples, the hint
        # and (stored in the run's config) generate and evaluate
        config = replace(config, prefixes=tuple(corpus_prefixes(corpus.text, corpus.vocab)))
    check_order(config, len(corpus.train))
    check_model_fits(config, len(corpus.vocab))  # before anything is allocated
    check_length(config.pred_len, flag="--pred-len")
    if payload is None:
        for line in inapplicable_flags(config, explicit):
            click.echo(f"warning: {line}", err=True)
    n_params = count_parameters(build_model(config, len(corpus.vocab)))  # refuses bad model flags before any write
    if group.is_main:  # only rank 0 writes the run directory
        lock = _prepare_run_dir(ctx, run_dir, resuming=payload is not None, overwrite=overwrite, lock=lock)
        from charlm.generate.copyguard import write_run_guard

        write_run_guard(run_dir, corpus)  # the copy guard's index of the corpus, once per run

    tuning = f"{len(corpus.tune):,} tuning slice, " if len(corpus.tune) else ""
    click.echo(f"corpus {corpus.source}: {len(corpus.text):,} characters ({len(corpus.train):,} train, "
               f"{tuning}{len(corpus.val):,} validation), vocabulary {len(corpus.vocab):,}")
    if auto_line:
        click.echo(auto_line)
    learns = (f"{n_params:,} parameters, hidden {config.hidden}; sampler {config.sampler}, "
              f"{config.optimizer} lr {config.lr:g}, clip {config.clip:g}") if n_params else f"order {config.order}, fitted by counting"
    click.echo(f"model {config.model}: {learns}; run directory {run_dir}"
               + (f" ({resume_position(payload, config, len(corpus.train))})" if payload else ""))
    resume_command = f"charlm train --resume {shlex.quote(str(run_dir))}"
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
            result = train(config, corpus, run_dir, resume=payload, log=log,
                           progress=Progress(sys.stderr.isatty()), dist=group, should_stop=stop)
    except RuntimeError as e:  # under torchrun: a collective failed because another rank died or hung
        raise distributed.explain(group, e) from None
    except TrainingInterrupted as e:
        if group.is_main and stop.signum == signal.SIGPIPE:
            click.echo(f"stdout was closed (broken pipe): stopped; the state is saved in {e.path}; "
                       f"resume with: {resume_command}", err=True)
        elif group.is_main:
            click.echo(f"{e}\nresume with: {resume_command}", err=True)
        code = 128 + (stop.signum or signal.SIGINT)
        if lock is not None:
            lock.release()
        if group.launched:  # torchrun: leave through atexit, which closes the process group
            sys.exit(code)
        # Everything is saved: skip the interpreter's teardown, during which another signal would kill
        # the process without this status or print a KeyboardInterrupt traceback from an atexit hook.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    except CountingInterrupted:
        if lock is not None:
            lock.release()
        click.echo(f"interrupted while counting n-grams; nothing was saved (the count is the whole {config.model} "
                   "run: start it again)", err=True)
        sys.exit(128 + (stop.signum or signal.SIGINT))
    except CheckpointWriteError as e:
        hint = f"; once there is room, resume with: {resume_command}" if (run_dir / "last.pt").exists() else ""
        raise CharlmError(f"{e}{hint}") from None
    except KeyboardInterrupt:  # only when the handler could not be installed (not the main thread)
        last = run_dir / "last.pt"
        if last.exists():
            click.echo(f"\ninterrupted; {last} holds the last finished epoch. Resume with: {resume_command}", err=True)
        else:
            click.echo("\ninterrupted before the first epoch finished; nothing was saved", err=True)
        sys.exit(130)
    click.echo(f"best validation perplexity {result.best_val_ppl:.3f} at epoch {result.best_epoch}; "
               f"checkpoints in {run_dir}/ (best.pt, last.pt)")
    hint_prefix = config.prefixes[0] if config.prefixes else "分开"
    click.echo(f"generate with: charlm generate --checkpoint {shlex.quote(str(run_dir))} --prefix {shlex.quote(hint_prefix)}")
    group.exit_now(0)  # under torchrun: exit now, skipping a teardown that can abort (see distributed.py)


# `generate --interactive` in a terminal: said once at the start
INTERACTIVE_HINT = ("type a prefix and press Enter; an empty line repeats the last prefix; "
                    "Ctrl-D (or quit) leaves")
LEAVE_WORDS = ("quit", "exit")


def _is_terminal(stream) -> bool:
    """Whether `stream` is a terminal (a person typing), not a pipe or a file."""
    return stream.isatty()


@cli.command("generate")
@click.option("--checkpoint", type=click.Path(), default=None,
              help="A .pt file or a run directory (its best.pt). Default: the newest run under checkpoints/.")
@click.option("--prefix", "prefixes", multiple=True, default=(),
              help="Text to continue (repeat the flag for several). Default: the run's own first prefix "
                   "(分开 for the lyrics; for a corpus without it, a common opening of its lines).")
@click.option("--length", type=click.IntRange(min=0), default=None,
              help=f"Characters to generate. Default: at most {defaults.LENGTH} ({defaults.LINES_LENGTH} with "
                   "--lines), stopping at the end of a song (a blank line); given, exactly that many (fewer only "
                   "with --lines), running on through the ends of songs.")
@click.option("--lines", type=click.IntRange(min=0), default=0, show_default=True,
              help="Stop once the text (prefix included) has this many lines (0 = no limit).")
@click.option("--max-copy", type=click.IntRange(min=0), default=defaults.MAX_COPY, show_default=True,
              help="Copy guard: no span of more than N characters of the corpus in the text, a span begun in "
                   "the prefix included (0 = off).")
@click.option("--greedy", is_flag=True,
              help="Arg-max decoding, as in the textbook (the default is sampling: "
                   f"--temperature {defaults.TEMPERATURE} --top-p {defaults.TOP_P}).")
@click.option("--temperature", type=float, default=defaults.TEMPERATURE, show_default=True,
              help="Sample, dividing the logits by this first: below 1 is safer, above 1 wilder.")
@click.option("--top-k", type=int, default=0, show_default=True,
              help="Sample from the K most probable characters only (0 = off).")
@click.option("--top-p", type=float, default=defaults.TOP_P, show_default=True,
              help="Sample from the smallest set of characters whose probability reaches P (1.0 = off).")
@click.option("--num-beams", type=int, default=1, show_default=True,
              help="Beam search with this many beams: the most probable text, not a sample (1 = off).")
@click.option("--repetition-penalty", type=float, default=1.0, show_default=True,
              help="Make characters already in the text less likely (1.0 = off; 1.2 is a common choice).")
@click.option("--num-samples", type=click.IntRange(min=1), default=1, show_default=True,
              help="Samples per prefix, generated as one batch (with --num-beams: the best N beams).")
@click.option("--seed", type=int, default=None,
              help="Random seed of the sampling; without it each run draws one and prints it on stderr.")
@click.option("--format", "fmt", type=click.Choice(["text", "jsonl"]), default="text", show_default=True,
              help="text: the sample alone (several get '==> ... <==' headers); jsonl: one JSON object per sample "
                   "with prefix, text and per-character log-probabilities.")
@click.option("--stream", is_flag=True, help="Print characters as they are produced (samples one after another).")
@click.option("--interactive", is_flag=True,
              help="Read one prefix per line from stdin and answer each until end of input (Ctrl-D); in a "
                   "terminal an empty line repeats the last prefix and quit or exit leaves.")
@click.option("--unknown", type=click.Choice(["error", "skip"]), default="error", show_default=True,
              help="Prefix characters outside the vocabulary: stop with an error, or drop them with a warning.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto uses CUDA when present.")
@click.pass_context
def generate_command(ctx, checkpoint, prefixes, length, lines, max_copy, greedy, temperature, top_k, top_p, num_beams,
                     repetition_penalty, num_samples, seed, fmt, stream, interactive, unknown, device):
    """Continue a prefix with a trained model: sampling with a copy guard (default), arg-max or beam search.

    \b
      charlm generate --prefix 分开                          # sampled, never reciting more than --max-copy
      charlm generate --prefix 分开 --greedy --max-copy 0     # the textbook's arg-max, unguarded
      charlm generate --prefix 分开 --temperature 0.8 --top-k 5 --num-samples 4 --lines 4
      charlm generate --num-beams 4 --prefix 不分开
      echo 分开 | charlm generate --interactive --top-p 0.9 --format jsonl
    """
    import json

    import torch

    from charlm.run.checkpoint import find_checkpoint, load_checkpoint, model_from_checkpoint
    from charlm.models.limits import MAX_LENGTH, check_length, check_seed
    from charlm.generate.copyguard import guard_for_run
    from charlm.generate.decode import Decoding, drop_unknown, encode_prefix, generate
    from charlm.report.evaluate import default_prefixes, training_corpus
    from charlm.train.loop import pick_device
    from charlm.generate.verse import Shape

    sampling = explicit_params(ctx, ["temperature", "top_k", "top_p"])
    if greedy and sampling:
        raise CharlmError(f"--greedy cannot be combined with {', '.join('--' + s.replace('_', '-') for s in sorted(sampling))}")
    if greedy and num_beams > 1:
        raise CharlmError("--greedy cannot be combined with --num-beams; choose one")
    decoding = Decoding(not greedy and (num_beams == 1 or bool(sampling)), temperature, top_k, top_p, num_beams,
                        repetition_penalty).validate()
    if decoding.deterministic and num_beams == 1 and num_samples > 1:
        raise CharlmError(f"--greedy gives the same text every time, so --num-samples {num_samples} would repeat it; "
                          "drop --greedy to sample, or use --num-beams K for the K best texts")
    shape = Shape(lines=lines, song_end=length is None, tidy=True)
    if length is None:
        length = defaults.LINES_LENGTH if lines else defaults.LENGTH
    check_length(length, num_samples)
    check_seed(seed)
    if interactive and "prefixes" in explicit_params(ctx, ["prefixes"]):
        raise CharlmError("--interactive reads the prefixes from stdin; drop --prefix")
    if stream and fmt == "jsonl":
        raise CharlmError("--stream prints text as it comes; it cannot be combined with --format jsonl")
    if stream and num_beams > 1:
        raise CharlmError("--stream cannot follow beam search: the best beam is known only at the end")

    dev = pick_device(device)
    path = find_checkpoint(checkpoint)
    payload = load_checkpoint(path)
    model, vocab, _ = model_from_checkpoint(payload, dev)
    prefixes = prefixes or default_prefixes(payload, vocab)[:1]
    guard = guard_for_run(path, payload, max_copy, corpus_loader=lambda: training_corpus(payload, log=_warn),
                          log=lambda line: click.echo(line, err=True))
    drawn = seed is None and decoding.sample  # say the seed drawn, once, when the first sample is made
    if seed is None:
        import secrets

        seed = secrets.randbelow(2**31)
    generator = torch.Generator(device=dev).manual_seed(seed)  # one stream of draws for the whole run
    gave_way = {"steps": 0}
    count = {"done": 0}

    def clean(prefix: str) -> str:
        if unknown == "skip":
            kept, dropped = drop_unknown(prefix, vocab)
            if not kept:
                raise CharlmError(f"nothing is left of prefix {prefix!r} once its unknown characters are dropped")
            if dropped:
                click.echo(f"warning: dropped {' '.join(map(repr, dropped))} from prefix {prefix!r}: "
                           "not in the model's vocabulary", err=True)
            prefix = kept
        encode_prefix(prefix, vocab)
        return prefix

    def header(prefix: str, i: int, n: int, total: int) -> None:
        if total > 1 or interactive:  # several samples: a line to split them by (they hold line breaks)
            click.echo(("\n" if count["done"] else "") + f"==> prefix {prefix!r}, sample {i} of {n} <==")
        count["done"] += 1

    def answer(batch: list[str], total: int) -> None:
        """Generate and print the samples of `batch` (the prefixes of one run or of one stdin line)."""
        nonlocal drawn
        if drawn:
            click.echo(f"seed {seed} (reproduce with --seed {seed})", err=True)
            drawn = False
        if stream:
            for prefix in batch:
                for i in range(num_samples):
                    header(prefix, i + 1, num_samples, total)
                    click.echo(prefix, nl=False)
                    held = []  # blank space is printed only once something visible follows it (samples end visibly)

                    def show(idx):
                        if int(idx[0]) < 0:  # the stream has ended
                            return
                        held.append(vocab.idx_to_char[int(idx[0])])
                        if not held[-1].isspace():
                            click.echo("".join(held), nl=False)
                            held.clear()
                    samples = generate(model, vocab, prefix, length, decoding, 1, generator, dev, on_step=show,
                                       guard=guard, shape=shape)
                    gave_way["steps"] += samples[0].gave_way
                    click.echo()
            return
        samples = generate(model, vocab, batch, length, decoding, num_samples, generator, dev, guard=guard, shape=shape)
        gave_way["steps"] += sum(s.gave_way for s in samples)
        for k, s in enumerate(samples):
            if fmt == "jsonl":
                click.echo(json.dumps({"prefix": s.prefix, "sample": k % num_samples + 1, "decoding": decoding.label(),
                                       "text": s.text, "logprob": round(s.logprob, 4),
                                       "logprobs": [round(x, 4) for x in s.logprobs]}, ensure_ascii=False))
            else:
                header(s.prefix, k % num_samples + 1, num_samples, total)
                click.echo(s.prefix + s.text)

    def tell_gave_way() -> None:
        if gave_way["steps"]:
            click.echo(f"warning: at {gave_way['steps']} steps the copy guard and the line rules left no character "
                       f"of the {len(vocab)} to choose, so those steps chose without them", err=True)

    if not interactive:
        batch = [clean(p) for p in prefixes]  # fail on every bad prefix before printing anything
        answer(batch, len(batch) * num_samples)
        tell_gave_way()
        return
    failed = False
    stdin = sys.stdin
    prompt = _is_terminal(stdin)
    last = None  # the last prefix answered: an empty line in a terminal asks for it again
    if prompt:
        click.echo(INTERACTIVE_HINT, err=True)
    while True:
        if prompt:
            click.echo("prefix> ", nl=False, err=True)
        line = stdin.readline(MAX_LENGTH + 1)  # bounded: stdin may be a file without line breaks (/dev/zero)
        if len(line) > MAX_LENGTH and not line.endswith("\n"):
            raise CharlmError(f"a line of stdin is longer than {MAX_LENGTH:,} characters; give one prefix per line")
        if not line:
            if prompt:
                click.echo(err=True)  # end the prompt's line
            break
        line = line.rstrip("\r\n")
        if prompt and line.strip().lower() in LEAVE_WORDS:
            break
        if not line:
            if not prompt or last is None:
                continue
            line = last
        try:
            answer([clean(line)], num_samples)
            last = line
        except CharlmError as e:  # one bad line does not end the session
            leave = "; to leave, end the input (Ctrl-D)" if line.strip().lower() in LEAVE_WORDS else ""
            click.echo(f"error: {e}{leave}", err=True)
            failed = True
    tell_gave_way()
    if failed:
        sys.exit(2)


@cli.command("evaluate")
@click.option("--checkpoint", type=click.Path(), default=None,
              help="A .pt file or a run directory (its best.pt). Default: the newest run under checkpoints/.")
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
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto uses CUDA when present.")
def evaluate_command(checkpoint, text_path, text_member, text_encoding, corpus_path, decodings, num_samples, length,
                     prefixes, max_copy, seed, unknown, json_path, show_samples, device):
    """Perplexity on a text, and per decoding setting how varied and how copied the samples are (markdown table)."""
    import json

    from charlm.run.checkpoint import find_checkpoint, load_checkpoint, model_from_checkpoint
    from charlm.models.limits import MAX_LENGTH, check_length, check_seed
    from charlm.generate.decode import parse_decodings
    from charlm.report.evaluate import evaluate_model, markdown_table
    from charlm.train.loop import pick_device

    settings = parse_decodings(decodings)
    check_length(length, num_samples * max(len(prefixes), 1) * max(len(settings), 1))
    check_seed(seed)
    if (text_member or text_encoding) and not text_path:
        raise CharlmError("--member and --encoding apply to --text; give --text FILE (the training corpus is "
                          "read as it was in training)")
    dev = pick_device(device)
    path = find_checkpoint(checkpoint)
    payload = load_checkpoint(path)
    model, vocab, _ = model_from_checkpoint(payload, dev)
    result = evaluate_model(model, vocab, payload, text_path=text_path, corpus_path=corpus_path, unknown=unknown,
                            decodings=settings, prefixes=prefixes, num_samples=num_samples, length=length, seed=seed,
                            device=dev, warn=lambda line: click.echo(f"warning: {line}", err=True),
                            text_member=text_member, text_encoding=text_encoding, max_copy=max_copy)
    ppl = result["perplexity"]
    click.echo(f"perplexity {ppl['value']:.3f} on the {ppl['text']} ({ppl['characters']:,} characters"
               + (f", {ppl['skipped']:,} skipped" if ppl["skipped"] else "") + f"); checkpoint {path}\n")
    click.echo(markdown_table(result["rows"]))
    if show_samples:
        click.echo()
        for row in result["rows"]:
            ex = row["example"]
            click.echo(f"- **{row['decoding']}**: {ex['prefix']}{ex['text']}".replace("\n", " / "))
    if json_path:
        result["checkpoint"] = str(path)
        Path(json_path).write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


# --- compare ---------------------------------------------------------------
# The grid axes, the output folder and --preset (whose default differs here) are
# compare's own options; the Config fields of the same names are left out.
_COMPARE_OWN = ("model", "sampler", "hidden", "out", "preset")
_COMPARE_UNUSED = ("pred_every",)  # compare writes its own continuations; a run's progress samples would go nowhere
_COMPARE_HELP = {
    "prefixes": "Prefix to continue in the report's continuations from each configuration (repeat the flag for several).",
    "pred_len": "Characters in each of the report's continuations.",
}
COMPARE_PRESET = "textbook"  # what `charlm compare` with no --preset runs: the chapter's grid
COMPARE_PRESETS = sorted(PRESETS) + ["none"]


def compare_options(func):
    """Every `train` flag except the grid's own, then the grid flags of `charlm compare`."""
    from charlm.cli.helpnotes import preset_summary

    func = config_options(func, default_preset=COMPARE_PRESET, with_auto="auto" in COMPARE_PRESETS)
    func.__click_params__ = [p for p in func.__click_params__ if p.name not in _COMPARE_OWN + _COMPARE_UNUSED]
    for p in func.__click_params__:  # in a grid these feed the report's continuations, not progress lines
        p.help = _COMPARE_HELP.get(p.name, p.help)
    grid_options = [
        click.option("--models", default="rnn-scratch,rnn", show_default=True,
                     help=f"Models to compare, comma-separated; any of: {', '.join(MODELS)}."),
        click.option("--samplers", default="random,consecutive", show_default=True,
                     help="Samplers to compare, comma-separated: random, consecutive."),
        click.option("--hidden", "hidden_sizes", default=None,
                     help="Hidden size, or a comma list for a sweep (e.g. 128,256). Default: the preset's "
                          f"({PRESETS[COMPARE_PRESET].get('hidden', Config().hidden)} for {COMPARE_PRESET})."),
        click.option("--seeds", type=int, default=3, show_default=True,
                     help="Seeds per configuration (--seed, --seed+1, ...): the spread shows what is noise."),
        click.option("--jobs", type=int, default=1, show_default=True,
                     help="Runs trained at once in parallel processes; results do not depend on it."),
        click.option("--out", "out_dir", type=click.Path(), default="compare-results", show_default=True,
                     help="Folder for results.csv, report.md, the plots and runs/ (finished runs there are reused)."),
        click.option("--preset", type=click.Choice(COMPARE_PRESETS), default=COMPARE_PRESET, show_default=True,
                     help=f"Hyperparameters of every run ({COMPARE_PRESET}: {preset_summary(COMPARE_PRESET)}); "
                          "flags given override it."),
    ]
    for option in reversed(grid_options):
        func = option(func)
    return func


def _command_line(ctx: click.Context) -> str:
    """The command as the user gave it (the flags given explicitly), for the report."""
    import shlex

    parts = [ctx.command_path]
    for p in ctx.command.params:
        if ctx.get_parameter_source(p.name) not in EXPLICIT_SOURCES:
            continue
        value, flag = ctx.params[p.name], p.opts[0]
        if getattr(p, "is_flag", False):
            parts.append(flag if value else (p.secondary_opts or [flag])[0])
        else:
            parts += [part for v in (value if p.multiple else [value]) for part in (flag, shlex.quote(str(v)))]
    return " ".join(parts)


@cli.command("compare")
@compare_options
@click.pass_context
def compare_command(ctx, models, samplers, hidden_sizes, seeds, jobs, out_dir, preset, **values):
    """Train models x samplers x hidden sizes over several seeds and write a report of the results.

    \b
      charlm compare --epochs 30                    # the textbook grid: 2 models x 2 samplers x 3 seeds
      charlm compare --models rnn --hidden 64,128,256 --seeds 2 --jobs 2

    Writes OUT/results.csv, report.md, curves.png, curves_time.png and runs/
    (one directory per run). Every train flag applies to every run. Finished
    runs are reused, so the same command run again continues where it stopped.
    """
    from charlm.report.compare import describe, expand_grid, make_grid, run_compare
    from charlm.report.summary import PLOT_HINT, conclusions, summarize, write_outputs

    grid = make_grid(models, samplers, hidden_sizes, seeds)
    if jobs < 1:
        raise CharlmError(f"--jobs must be 1 or more, got {jobs}")
    names = [f.name for f in fields(Config) if f.name in values]
    base = Config(**{n: values[n] for n in names}, preset=None if preset == "none" else preset)
    configs = expand_grid(base, grid, explicit_params(ctx, names))
    click.echo(f"{len(configs) // seeds} configurations x {seeds} seeds = {len(configs)} runs, "
               f"{configs[0].epochs} epochs each, preset {preset}; output in {out_dir}/")
    lock_run_dir(ctx, Path(out_dir), "--out")  # one compare per folder at a time
    try:
        result = run_compare(configs, out_dir, jobs=jobs, log=click.echo)
    except KeyboardInterrupt:
        if jobs > 1 and threading.current_thread() is threading.main_thread():
            # a second Ctrl-C must not interrupt the way out: the exit joins the worker pool's thread,
            # and a KeyboardInterrupt there prints a threading traceback
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        click.echo(f"\ninterrupted; finished runs are kept in {out_dir}/runs/. "
                   "Run the same command again to continue from them.", err=True)
        sys.exit(130)
    paths = write_outputs(result, command=_command_line(ctx))
    click.echo("")
    for line in conclusions(summarize(result)):
        click.echo(line.replace("**", ""))
    click.echo(f"\nwrote {paths['results']}, {paths['report']}"
               + "".join(f", {p}" for p in paths["plots"]))
    if not paths["plots"]:
        click.echo(f"no plots: matplotlib is not installed; {PLOT_HINT}")
    failed = result.count("failed")
    if failed:
        first = next(r for r in result.runs if r.status == "failed")
        raise CharlmError(f"{failed} of {len(result.runs)} runs failed (first: {describe(first.config)}, "
                          f"seed {first.config.seed}: {first.error}); the others are kept and in the report; "
                          "run the same command again to retry")


@cli.command("serve")
@click.option("--checkpoint", type=click.Path(), default=None,
              help="A .pt file or a run directory (its best.pt). Default: the newest run under checkpoints/.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 0.0.0.0 opens the page to the network (there is no login).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port (0: any free one).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="Torch threads per generation; requests run in parallel threads already (docs/serve.md).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto uses CUDA when present.")
def serve_command(checkpoint, host, port, threads, device):
    """A local web page for generating from a checkpoint, streamed as it is written (API: docs/serve.md).

    \b
      charlm serve                                   # the newest run, on http://127.0.0.1:8000/
      charlm serve --checkpoint checkpoints/RUN --port 8080
    """
    import torch

    from charlm.run.checkpoint import find_checkpoint
    from charlm.train.loop import pick_device

    try:
        from charlm.web import app as serve
    except ImportError as e:
        raise CharlmError(f"charlm serve needs the web extra ({e.name} is missing): pip install -e '.[web]'") from None
    path = find_checkpoint(checkpoint)
    engine = serve.Engine(path, pick_device(device))
    torch.set_num_threads(threads)
    sock = serve.bind(host, port)
    _, note = engine.guard(serve.FIELDS["max_copy"][1])  # index the corpus now, not on the first request
    if note:
        click.echo(f"warning: {note}", err=True)
    click.echo(f"serving {engine.name} ({engine.describe()['model']}) on {serve.url_of(sock)}  (Ctrl-C stops)")
    serve.run_server(serve.create_app(engine), sock)


def main(argv=None):
    """Entry point of the `charlm` console script."""
    cli.main(args=argv, prog_name="charlm")
