"""Start a run: the Config from the flags, the corpus, the state to resume and the run directory,
checked before anything is written, so that `train()` gets a run that can go ahead.

    flags ─> Config (preset, auto recipe) ─┐
    --resume RUN ─> last.pt ───────────────┼─> checks (corpus fingerprint, prefixes, sizes)
    corpus file ─> Corpus ─────────────────┘      ─> run directory locked, prepared, copy guard written
                                                  ─> StartedRun: what train() needs

Nothing here prints: warnings go to `warn`, other notes to `tell` (the CLI writes both to stderr).
The run directory's lock is held through `hold(lock)` (click's `ctx.with_resource`), so it is
released when the command ends however it ends.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

from charlm.config import Config, apply_preset
from charlm.data.batches import num_batches
from charlm.data.corpus import Corpus, carve_tune, load_corpus
from charlm.errors import CharlmError
from charlm.models import build_model, count_parameters
from charlm.models.limits import check_length, check_model_fits, check_order, inapplicable_flags
from charlm.run.checkpoint import load_checkpoint
from charlm.run.rundir import RunLock, ensure_writable, held_run_files, resume_target, set_aside, stale_message
from charlm.train import distributed


def _silent(line: str) -> None:
    pass


def _hold_here(lock: RunLock) -> RunLock:
    return lock.acquire()


@dataclass
class StartedRun:
    """A run ready to train: its settings, text, directory (locked) and, when resuming, the saved state."""

    config: Config
    corpus: Corpus
    run_dir: Path
    payload: dict | None  # the last.pt being resumed, None for a new run
    lock: RunLock | None  # held by this process (rank 0 only)
    group: distributed.ProcessGroup  # this process's place under torchrun (the single process without it)
    n_params: int  # 0 for a counting model (kn)
    auto_line: str | None  # what --preset auto chose, in one line


def default_run_dir(config: Config) -> Path:
    """checkpoints/<time>-<model>-<sampler>: where a run without --out goes."""
    return Path("checkpoints") / f"{time.strftime('%Y%m%d-%H%M%S')}-{config.model}-{config.sampler}"


def lock_run_dir(run_dir: Path, what: str = "run directory", hold=_hold_here, warn=_silent) -> RunLock:
    """Take a directory's lock (charlm/run/rundir.py) through `hold`; a stale one is reported and taken over."""
    if run_dir.exists() and not run_dir.is_dir():
        raise CharlmError(f"--out {run_dir} is a file; give a directory")
    lock = hold(RunLock(run_dir, what))
    if stale_message(lock):
        warn(stale_message(lock))
    return lock


def prepare_run_dir(run_dir: Path, resuming: bool, overwrite: bool = False, lock=None, hold=_hold_here,
                    warn=_silent, tell=_silent) -> RunLock:
    """Lock the run directory (unless `lock` is held already) and refuse to write over another run
    unless resuming it or told to --overwrite it (its files are then moved aside, never deleted)."""
    lock = lock or lock_run_dir(run_dir, hold=hold, warn=warn)
    held = [] if resuming else held_run_files(run_dir)
    if held and not overwrite:
        raise CharlmError(f"{run_dir} already holds a run ({', '.join(held)}); continue it with --resume {run_dir}, "
                          "replace it with --overwrite (its files are moved aside), or choose another --out")
    if held:
        aside = set_aside(run_dir)
        tell(f"--overwrite: moved the earlier run's {', '.join(held)} to {aside}/")
    try:
        ensure_writable(run_dir)
    except OSError as e:
        raise CharlmError(f"cannot write to run directory {run_dir} ({e.strerror}); choose another --out") from None
    return lock


def resume_position(payload: dict, config: Config, n_train: int) -> str:
    """Where a resumed run picks up: 'resuming in epoch 1 at minibatch 31 of 50' or 'resuming after epoch 3'."""
    partial = payload.get("partial")
    if partial:
        return (f"resuming in epoch {partial['epoch']} at minibatch {partial['batch'] + 1} of "
                f"{num_batches(n_train, config)}")
    return f"resuming after epoch {payload['epoch']}"


def _resumed(resume, config: Config, values: dict, explicit: set[str], overwrite: bool, hold, warn):
    """(config, run directory, saved state, lock) for --resume: the saved settings with the flags that may change."""
    from charlm.train.state import check_resumable, resume_config

    if overwrite:
        raise CharlmError("--overwrite starts a new run and --resume continues one; give only one")
    run_dir, ckpt = resume_target(resume)
    if "out" in explicit and values["out"] and Path(values["out"]).resolve() != run_dir.resolve():
        raise CharlmError(f"--out {values['out']} cannot move a resumed run: it continues in {run_dir}; drop --out")
    lock = None
    if distributed.from_env().is_main:  # before reading last.pt: no other process may be writing it
        lock = lock_run_dir(run_dir, hold=hold, warn=warn)
    payload = load_checkpoint(ckpt)
    check_resumable(payload, ckpt)
    saved_preset = payload["config"].get("preset")
    if "preset" in explicit and values.get("preset") != saved_preset:
        raise CharlmError(f"--preset {values.get('preset')} does not apply on resume: the run keeps its own "
                          f"settings (preset {saved_preset}); drop --preset")
    return resume_config(Config.from_dict(payload["config"]), config, explicit), run_dir, payload, lock


def _check_same_corpus(payload: dict, corpus: Corpus, config: Config, run_dir: Path) -> None:
    """A resumed run must read the text it was trained on, and have epochs left."""
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


def _progress_prefixes(config: Config, corpus: Corpus, explicit: set[str], resuming: bool) -> Config:
    """Refuse a --prefix the corpus cannot spell; without one, a corpus lacking 分开 gets its own line openings."""
    if "prefixes" in explicit:  # fail now rather than skip a prefix the progress samples cannot encode
        for prefix in config.prefixes:
            if not prefix:
                raise CharlmError("--prefix is empty; give at least one character, e.g. --prefix 分开")
            if corpus.vocab.unknown(prefix):
                raise CharlmError(f"--prefix {prefix!r} has characters that never occur in the corpus: "
                                  f"{' '.join(corpus.vocab.unknown(prefix))}; choose a prefix from the text")
    elif not resuming and tuple(config.prefixes) == tuple(Config().prefixes):
        from charlm.generate.verse import corpus_prefixes

        # 分开 only for a corpus whose lines open with it; otherwise its titles or line openings serve the progress samples, the hint
        # and (stored in the run's config) generate and evaluate
        config = replace(config, prefixes=tuple(corpus_prefixes(corpus.text, corpus.vocab)))
    return config


def start_run(values: dict, explicit: set[str], resume=None, overwrite: bool = False, *, hold=_hold_here,
              warn=_silent, tell=_silent) -> StartedRun:
    """Everything `charlm train` does before training: `values` are the Config fields as given (click's),
    `explicit` those the user named; refuses in words anything that would fail later."""
    from charlm.generate.copyguard import write_run_guard
    from charlm.train.recipe import resolve_auto

    config = Config(**{f.name: values[f.name] for f in fields(Config)})
    config = apply_preset(config, config.preset, explicit)
    payload, lock, extended = None, None, None
    if resume:
        from charlm.train.state import extend_cosine

        config, run_dir, payload, lock = _resumed(resume, config, values, explicit, overwrite, hold, warn)
        config, extended = extend_cosine(payload, config, explicit)  # said once every check has passed
    else:
        run_dir = Path(config.out) if config.out else default_run_dir(config)
    config.validate()
    group = distributed.from_env()  # this process's rank under torchrun; the single process without it
    group.check_batch_size(config.batch_size)
    group.check_rendezvous()  # before the run directory is created
    group.silence_others()  # only rank 0 prints
    corpus = load_corpus(config, log=warn)
    auto_line = None
    if payload is None and config.preset == "auto":  # needs the corpus: resolved here, stored in the checkpoint
        config, corpus, auto_line = resolve_auto(config, corpus, explicit)
        group.check_batch_size(config.batch_size)
        if not config.out:
            run_dir = default_run_dir(config)
    corpus = carve_tune(corpus, config.tune_fraction)  # on resume: the same slice as the run was fitted on
    if payload is not None:
        _check_same_corpus(payload, corpus, config, run_dir)
    config = _progress_prefixes(config, corpus, explicit, resuming=payload is not None)
    check_order(config, len(corpus.train))
    check_model_fits(config, len(corpus.vocab))  # before anything is allocated
    check_length(config.pred_len, flag="--pred-len")
    if payload is None:
        for line in inapplicable_flags(config, explicit):
            warn(line)
    n_params = count_parameters(build_model(config, len(corpus.vocab)))  # refuses bad model flags before any write
    if group.is_main:  # only rank 0 writes the run directory
        lock = prepare_run_dir(run_dir, resuming=payload is not None, overwrite=overwrite, lock=lock, hold=hold,
                               warn=warn, tell=tell)
        write_run_guard(run_dir, corpus)  # the copy guard's index of the corpus, once per run
    if extended:
        tell(extended)
    return StartedRun(config, corpus, run_dir, payload, lock, group, n_params, auto_line)
