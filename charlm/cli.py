"""The `charlm` command line: click commands over the library, and the only place that prints.

Every user mistake ends as one `error: ...` line on stderr with exit status 2
(no traceback unless `--debug` is given); Ctrl-C exits with status 130.
"""

from __future__ import annotations

import sys
import time
import traceback
from dataclasses import fields
from pathlib import Path

import click
from click.core import ParameterSource

from . import __version__
from .config import PRESETS, Config, apply_preset, field_default
from .errors import CharlmError
from .models import MODELS

EXPLICIT_SOURCES = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


def _fail(message: str, code: int = 2):
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class OneLineErrors:
    """Mixin for click commands: user errors become one line on stderr, never a traceback."""

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
        return click.Choice(sorted(PRESETS))
    default = field_default(f)
    if isinstance(default, bool):
        return None
    return type(default) if isinstance(default, (int, float)) else str


def config_options(func):
    """Add one click option per Config field, with the field's help and default."""
    for f in reversed(fields(Config)):
        default = field_default(f)
        help_text = f.metadata["help"]
        if f.name == "model":
            help_text = f"Model family: {', '.join(MODELS)}."
        if f.name == "preset":
            help_text += f" Presets: {', '.join(sorted(PRESETS))}."
        kwargs = dict(default=default, show_default=default not in (None, "", ()), help=help_text)
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


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
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


def _prepare_run_dir(run_dir: Path, resuming: bool) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise CharlmError(f"--out {run_dir} is a file; give a directory")
    if not resuming and (run_dir / "last.pt").exists():
        raise CharlmError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise CharlmError(f"cannot write to run directory {run_dir} ({e.strerror}); choose another --out") from None


def build_train_config(ctx: click.Context, values: dict) -> tuple[Config, set[str]]:
    """A validated Config from click's values: defaults, then the preset, then the flags given."""
    names = [f.name for f in fields(Config)]
    explicit = explicit_params(ctx, names)
    config = Config(**{n: values[n] for n in names})
    return apply_preset(config, config.preset, explicit), explicit


@cli.command("train")
@config_options
@click.option("--resume", type=click.Path(), default=None,
              help="Continue the run in this directory from its last.pt (only --epochs, --patience, "
                   "--pred-every, --pred-len, --prefix and --device may change).")
@click.pass_context
def train_command(ctx, resume, **values):
    """Train a character-level model; print perplexity every epoch and save checkpoints."""
    from .checkpoint import find_checkpoint, load_checkpoint
    from .corpus import load_corpus
    from .models import count_parameters, build_model
    from .trainer import resume_config, train

    config, explicit = build_train_config(ctx, values)
    payload = None
    if resume:
        resume_path = Path(resume)
        payload = load_checkpoint(resume_path / "last.pt" if resume_path.is_dir() else resume_path)
        config = resume_config(Config.from_dict(payload["config"]), config, explicit)
        run_dir = resume_path if resume_path.is_dir() else resume_path.parent
    else:
        run_dir = Path(config.out) if config.out else _default_run_dir(config)
    config.validate()
    corpus = load_corpus(config)
    if payload is not None:
        if corpus.fingerprint != payload["corpus"]["fingerprint"]:
            raise CharlmError(f"the corpus differs from the one {run_dir} was trained on "
                              f"({corpus.source}: fingerprint {corpus.fingerprint}, saved {payload['corpus']['fingerprint']})")
        if payload["epoch"] >= config.epochs:
            raise CharlmError(f"{run_dir} already finished epoch {payload['epoch']} of {config.epochs}; "
                              "raise --epochs to train further")
    _prepare_run_dir(run_dir, resuming=payload is not None)

    n_params = count_parameters(build_model(config, len(corpus.vocab)))
    click.echo(f"corpus {corpus.source}: {len(corpus.text):,} characters ({len(corpus.train):,} train, "
               f"{len(corpus.val):,} validation), vocabulary {len(corpus.vocab):,}")
    click.echo(f"model {config.model}: {n_params:,} parameters, hidden {config.hidden}; sampler {config.sampler}, "
               f"{config.optimizer} lr {config.lr:g}, clip {config.clip:g}; run directory {run_dir}"
               + (f" (resuming after epoch {payload['epoch']})" if payload else ""))
    try:
        result = train(config, corpus, run_dir, resume=payload, log=click.echo,
                       progress=Progress(sys.stderr.isatty()))
    except KeyboardInterrupt:
        last = run_dir / "last.pt"
        if last.exists():
            click.echo(f"\ninterrupted; {last} holds the last finished epoch. Resume with: "
                       f"charlm train --resume {run_dir}", err=True)
        else:
            click.echo("\ninterrupted before the first epoch finished; nothing was saved", err=True)
        sys.exit(130)
    click.echo(f"best validation perplexity {result.best_val_ppl:.3f} at epoch {result.best_epoch}; "
               f"checkpoints in {run_dir}/ (best.pt, last.pt)")
    click.echo(f"generate with: charlm generate --checkpoint {run_dir} --prefix {config.prefixes[0] if config.prefixes else '分开'}")


@cli.command("generate")
@click.option("--checkpoint", type=click.Path(), default=None,
              help="A .pt file or a run directory (its best.pt). Default: the newest run under checkpoints/.")
@click.option("--prefix", "prefixes", multiple=True, default=("分开",), show_default=True,
              help="Text to continue (repeat the flag for several).")
@click.option("--length", type=click.IntRange(min=0), default=100, show_default=True, help="Characters to generate.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (for sampling strategies).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto uses CUDA when present.")
def generate_command(checkpoint, prefixes, length, seed, device):
    """Continue a prefix with a trained model (greedy arg-max decoding, as in the textbook)."""
    import torch

    from .checkpoint import find_checkpoint, load_checkpoint, model_from_checkpoint
    from .decoding import encode_prefix, predict
    from .trainer import pick_device

    dev = pick_device(device)
    model, vocab, _ = model_from_checkpoint(load_checkpoint(find_checkpoint(checkpoint)), dev)
    for prefix in prefixes:
        encode_prefix(prefix, vocab)  # fail on every bad prefix before printing anything
    torch.manual_seed(seed)
    for prefix in prefixes:
        click.echo(predict(prefix, length, model, vocab, dev))


def main(argv=None):
    """Entry point of the `charlm` console script."""
    cli.main(args=argv, prog_name="charlm")
