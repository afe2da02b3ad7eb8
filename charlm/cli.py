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


@cli.command("train")
@config_options
@click.option("--resume", type=click.Path(), default=None,
              help="Continue the run in this directory from its last.pt (only --epochs, --patience, "
                   "--pred-every, --pred-len, --prefix and --device may change).")
@click.pass_context
def train_command(ctx, resume, **values):
    """Train a character-level model; print perplexity every epoch and save checkpoints."""
    from . import distributed
    from .checkpoint import CheckpointWriteError, load_checkpoint
    from .corpus import load_corpus
    from .models import count_parameters, build_model
    from .trainer import TrainingInterrupted, check_resumable, resume_config, train

    config, explicit = build_train_config(ctx, values)
    payload = None
    if resume:
        resume_path = Path(resume)
        if not resume_path.exists():
            raise CharlmError(f"--resume {resume}: no such run directory; give the --out directory of an earlier run")
        if resume_path.is_dir() and not (resume_path / "last.pt").exists():
            raise CharlmError(f"--resume {resume}: the directory holds no last.pt, so there is no run to continue; "
                              f"start one with --out {resume}")
        ckpt = resume_path / "last.pt" if resume_path.is_dir() else resume_path
        payload = load_checkpoint(ckpt)
        check_resumable(payload, ckpt)
        config = resume_config(Config.from_dict(payload["config"]), config, explicit)
        run_dir = resume_path if resume_path.is_dir() else resume_path.parent
        if "out" in explicit and values["out"] and Path(values["out"]).resolve() != run_dir.resolve():
            raise CharlmError(f"--out {values['out']} cannot move a resumed run: it continues in {run_dir}; drop --out")
    else:
        run_dir = Path(config.out) if config.out else _default_run_dir(config)
    config.validate()
    group = distributed.from_env()  # this process's rank under torchrun; the single process without it
    group.check_batch_size(config.batch_size)
    group.silence_others()  # only rank 0 prints
    corpus = load_corpus(config)
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
    n_params = count_parameters(build_model(config, len(corpus.vocab)))  # refuses bad model flags before any write
    if group.is_main:  # only rank 0 writes the run directory
        _prepare_run_dir(run_dir, resuming=payload is not None)

    click.echo(f"corpus {corpus.source}: {len(corpus.text):,} characters ({len(corpus.train):,} train, "
               f"{len(corpus.val):,} validation), vocabulary {len(corpus.vocab):,}")
    learns = (f"{n_params:,} parameters, hidden {config.hidden}; sampler {config.sampler}, "
              f"{config.optimizer} lr {config.lr:g}, clip {config.clip:g}") if n_params else f"order {config.order}, fitted by counting"
    click.echo(f"model {config.model}: {learns}; run directory {run_dir}"
               + (f" (resuming after epoch {payload['epoch']})" if payload else ""))
    resume_command = f"charlm train --resume {shlex.quote(str(run_dir))}"
    stop = StopOnSignal()
    try:
        with stop:
            result = train(config, corpus, run_dir, resume=payload, log=click.echo,
                           progress=Progress(sys.stderr.isatty()), dist=group, should_stop=stop)
    except RuntimeError as e:  # under torchrun: a collective failed because another rank died or hung
        raise distributed.explain(group, e) from None
    except TrainingInterrupted as e:
        if group.is_main:
            click.echo(f"{e}\nresume with: {resume_command}", err=True)
        code = 128 + (stop.signum or signal.SIGINT)
        if group.launched:  # torchrun: leave through atexit, which closes the process group
            sys.exit(code)
        # Everything is saved: skip the interpreter's teardown, during which another signal would kill
        # the process without this status or print a KeyboardInterrupt traceback from an atexit hook.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
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
    click.echo(f"generate with: charlm generate --checkpoint {run_dir} --prefix {config.prefixes[0] if config.prefixes else '分开'}")
    group.exit_now(0)  # under torchrun: exit now, skipping a teardown that can abort (see distributed.py)


@cli.command("generate")
@click.option("--checkpoint", type=click.Path(), default=None,
              help="A .pt file or a run directory (its best.pt). Default: the newest run under checkpoints/.")
@click.option("--prefix", "prefixes", multiple=True, default=("分开",), show_default=True,
              help="Text to continue (repeat the flag for several).")
@click.option("--length", type=click.IntRange(min=0), default=100, show_default=True, help="Characters to generate.")
@click.option("--greedy", is_flag=True,
              help="Arg-max decoding, as in the textbook (the default when no sampling flag is given).")
@click.option("--temperature", type=float, default=1.0, show_default=True,
              help="Sample, dividing the logits by this first: below 1 is safer, above 1 wilder.")
@click.option("--top-k", type=int, default=0, show_default=True,
              help="Sample from the K most probable characters only (0 = off).")
@click.option("--top-p", type=float, default=1.0, show_default=True,
              help="Sample from the smallest set of characters whose probability reaches P (1.0 = off).")
@click.option("--num-beams", type=int, default=1, show_default=True,
              help="Beam search with this many beams: the most probable text, not a sample (1 = off).")
@click.option("--repetition-penalty", type=float, default=1.0, show_default=True,
              help="Make characters already in the text less likely (1.0 = off; 1.2 is a common choice).")
@click.option("--num-samples", type=click.IntRange(min=1), default=1, show_default=True,
              help="Samples per prefix, generated as one batch (with --num-beams: the best N beams).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (for sampling strategies).")
@click.option("--format", "fmt", type=click.Choice(["text", "jsonl"]), default="text", show_default=True,
              help="text: the sample alone (several get '==> ... <==' headers); jsonl: one JSON object per sample "
                   "with prefix, text and per-character log-probabilities.")
@click.option("--stream", is_flag=True, help="Print characters as they are produced (samples one after another).")
@click.option("--interactive", is_flag=True,
              help="Read one prefix per line from stdin and answer each until end of input.")
@click.option("--unknown", type=click.Choice(["error", "skip"]), default="error", show_default=True,
              help="Prefix characters outside the vocabulary: stop with an error, or drop them with a warning.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto uses CUDA when present.")
@click.pass_context
def generate_command(ctx, checkpoint, prefixes, length, greedy, temperature, top_k, top_p, num_beams,
                     repetition_penalty, num_samples, seed, fmt, stream, interactive, unknown, device):
    """Continue a prefix with a trained model: arg-max (default), sampling or beam search.

    \b
      charlm generate --prefix 分开                          # greedy, as in the textbook
      charlm generate --prefix 分开 --temperature 0.8 --top-k 5 --num-samples 4
      charlm generate --num-beams 4 --prefix 不分开
      echo 分开 | charlm generate --interactive --top-p 0.9 --format jsonl
    """
    import json

    import torch

    from .checkpoint import find_checkpoint, load_checkpoint, model_from_checkpoint
    from .decoding import Decoding, drop_unknown, encode_prefix, generate
    from .trainer import pick_device

    sampling = explicit_params(ctx, ["temperature", "top_k", "top_p"])
    if greedy and sampling:
        raise CharlmError(f"--greedy cannot be combined with {', '.join('--' + s.replace('_', '-') for s in sorted(sampling))}")
    if greedy and num_beams > 1:
        raise CharlmError("--greedy cannot be combined with --num-beams; choose one")
    decoding = Decoding(bool(sampling), temperature, top_k, top_p, num_beams, repetition_penalty).validate()
    if interactive and "prefixes" in explicit_params(ctx, ["prefixes"]):
        raise CharlmError("--interactive reads the prefixes from stdin; drop --prefix")
    if stream and fmt == "jsonl":
        raise CharlmError("--stream prints text as it comes; it cannot be combined with --format jsonl")
    if stream and num_beams > 1:
        raise CharlmError("--stream cannot follow beam search: the best beam is known only at the end")

    dev = pick_device(device)
    model, vocab, _ = model_from_checkpoint(load_checkpoint(find_checkpoint(checkpoint)), dev)
    generator = torch.Generator(device=dev).manual_seed(seed)  # one stream of draws for the whole run
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
        if stream:
            for prefix in batch:
                for i in range(num_samples):
                    header(prefix, i + 1, num_samples, total)
                    click.echo(prefix, nl=False)
                    generate(model, vocab, prefix, length, decoding, 1, generator, dev,
                             on_step=lambda idx: click.echo(vocab.idx_to_char[int(idx[0])], nl=False))
                    click.echo()
            return
        samples = generate(model, vocab, batch, length, decoding, num_samples, generator, dev)
        for k, s in enumerate(samples):
            if fmt == "jsonl":
                click.echo(json.dumps({"prefix": s.prefix, "sample": k % num_samples + 1, "decoding": decoding.label(),
                                       "text": s.text, "logprob": round(s.logprob, 4),
                                       "logprobs": [round(x, 4) for x in s.logprobs]}, ensure_ascii=False))
            else:
                header(s.prefix, k % num_samples + 1, num_samples, total)
                click.echo(s.prefix + s.text)

    if not interactive:
        batch = [clean(p) for p in prefixes]  # fail on every bad prefix before printing anything
        answer(batch, len(batch) * num_samples)
        return
    failed = False
    stdin = sys.stdin
    prompt = stdin.isatty()
    while True:
        if prompt:
            click.echo("prefix> ", nl=False, err=True)
        line = stdin.readline()
        if not line:
            break
        line = line.rstrip("\r\n")
        if not line:
            continue
        try:
            answer([clean(line)], num_samples)
        except CharlmError as e:  # one bad line does not end the session
            click.echo(f"error: {e}", err=True)
            failed = True
    if failed:
        sys.exit(2)


@cli.command("evaluate")
@click.option("--checkpoint", type=click.Path(), default=None,
              help="A .pt file or a run directory (its best.pt). Default: the newest run under checkpoints/.")
@click.option("--text", "text_path", type=click.Path(), default=None,
              help="Measure perplexity on this file (.txt, .gz, .zip). Default: the checkpoint's validation text.")
@click.option("--corpus", "corpus_path", type=click.Path(), default=None,
              help="The training corpus, if it has moved since training (needed for the copy measures).")
@click.option("--decoding", "decodings", default="greedy,temperature=0.8,top_k=5,top_p=0.9,num_beams=4",
              show_default=True, help="Decoding settings to compare, comma-separated; join several keys of one "
                                      "setting with '+', e.g. top_k=40+temperature=0.7.")
@click.option("--samples", type=click.IntRange(min=1), default=8, show_default=True,
              help="Samples per prefix for each sampling setting (greedy and beam search give one).")
@click.option("--length", type=click.IntRange(min=1), default=100, show_default=True, help="Characters per sample.")
@click.option("--prefix", "prefixes", multiple=True, default=("分开", "不分开"), show_default=True,
              help="Prefix to continue (repeat the flag for several).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed for the sampling settings.")
@click.option("--unknown", type=click.Choice(["error", "skip"]), default="error", show_default=True,
              help="Characters of --text or a prefix outside the vocabulary: an error, or drop them with a count.")
@click.option("--json", "json_path", type=click.Path(), default=None, help="Also write every number to this JSON file.")
@click.option("--show-samples", is_flag=True, help="After the table, print the first sample of each setting.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto uses CUDA when present.")
def evaluate_command(checkpoint, text_path, corpus_path, decodings, samples, length, prefixes, seed, unknown,
                     json_path, show_samples, device):
    """Perplexity on a text, and per decoding setting how varied and how copied the samples are (markdown table)."""
    import json

    from .checkpoint import find_checkpoint, load_checkpoint, model_from_checkpoint
    from .decoding import parse_decodings
    from .evaluate import evaluate_model, markdown_table
    from .trainer import pick_device

    settings = parse_decodings(decodings)
    dev = pick_device(device)
    path = find_checkpoint(checkpoint)
    payload = load_checkpoint(path)
    model, vocab, _ = model_from_checkpoint(payload, dev)
    result = evaluate_model(model, vocab, payload, text_path=text_path, corpus_path=corpus_path, unknown=unknown,
                            decodings=settings, prefixes=prefixes, num_samples=samples, length=length, seed=seed,
                            device=dev, warn=lambda line: click.echo(f"warning: {line}", err=True))
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


def compare_options(func):
    """Every `train` flag except the grid's own, then the grid flags of `charlm compare`."""
    func = config_options(func)
    func.__click_params__ = [p for p in func.__click_params__ if p.name not in _COMPARE_OWN]
    grid_options = [
        click.option("--models", default="rnn-scratch,rnn", show_default=True,
                     help=f"Models to compare, comma-separated; any of: {', '.join(MODELS)}."),
        click.option("--samplers", default="random,consecutive", show_default=True,
                     help="Samplers to compare, comma-separated: random, consecutive."),
        click.option("--hidden", "hidden_sizes", default=None,
                     help="Hidden size, or a comma list for a sweep (e.g. 128,256). Default: the preset's (256)."),
        click.option("--seeds", type=int, default=3, show_default=True,
                     help="Seeds per configuration (--seed, --seed+1, ...): the spread shows what is noise."),
        click.option("--jobs", type=int, default=1, show_default=True,
                     help="Runs trained at once in parallel processes; results do not depend on it."),
        click.option("--out", "out_dir", type=click.Path(), default="compare-results", show_default=True,
                     help="Folder for results.csv, report.md, the plots and runs/ (finished runs there are reused)."),
        click.option("--preset", type=click.Choice(sorted(PRESETS) + ["none"]), default="textbook", show_default=True,
                     help="Hyperparameters of every run (textbook: first 10,000 characters, SGD lr 100 for "
                          "rnn-scratch and Adam lr 0.001 for rnn, 250 epochs); flags given override it."),
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
    from .compare import describe, expand_grid, make_grid, run_compare
    from .report import PLOT_HINT, conclusions, summarize, write_outputs

    grid = make_grid(models, samplers, hidden_sizes, seeds)
    if jobs < 1:
        raise CharlmError(f"--jobs must be 1 or more, got {jobs}")
    names = [f.name for f in fields(Config) if f.name in values]
    base = Config(**{n: values[n] for n in names}, preset=None if preset == "none" else preset)
    configs = expand_grid(base, grid, explicit_params(ctx, names))
    click.echo(f"{len(configs) // seeds} configurations x {seeds} seeds = {len(configs)} runs, "
               f"{configs[0].epochs} epochs each, preset {preset}; output in {out_dir}/")
    try:
        result = run_compare(configs, out_dir, jobs=jobs, log=click.echo)
    except KeyboardInterrupt:
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


def main(argv=None):
    """Entry point of the `charlm` console script."""
    cli.main(args=argv, prog_name="charlm")
