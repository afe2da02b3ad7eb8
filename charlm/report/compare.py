"""Run a grid of training runs (models x samplers x hidden sizes x seeds) and collect their metrics.

    grid:   models {rnn-scratch, rnn} x samplers {random, consecutive} x hidden {256} x seeds {0, 1, 2}
    runs:   OUT/runs/rnn-scratch-random-h256-seed0-3f9a0c1b2d/   metrics.jsonl, best.pt, last.pt, done.json
            OUT/runs/rnn-scratch-random-h256-seed1-.../          ... one directory per run, 12 in all

Every run is a plain `train()` into its own directory, named by its configuration
and a hash of every setting that changes its numbers (and of the corpus), so the
same command run again reuses finished runs and resumes an interrupted one from
its last.pt. Runs are seeded and independent, so `jobs` (parallel processes)
changes the wall time, not the results. Nothing here prints: lines go to `log`.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import multiprocessing
import os
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from charlm.config import Config, apply_preset
from charlm.data.batches import SAMPLERS
from charlm.data.corpus import Corpus, load_corpus
from charlm.errors import CharlmError
from charlm.models import MODELS, build_model
from charlm.models.limits import check_length, check_model_fits, check_order
from charlm.run.checkpoint import load_checkpoint
from charlm.run.metrics import SUMMARY, read_metrics, read_summary
from charlm.run.rundir import ensure_writable
from charlm.train.state import check_resumable
from charlm.train import loop as trainer  # looked up at each run, so a test can stand in for train()

# Settings that change what is printed or where files go, never a run's numbers: left out of the run key.
# The corpus path, member and encoding are replaced by the fingerprint of the text actually read.
NOT_IN_KEY = ("out", "preset", "pred_every", "pred_len", "prefixes", "corpus", "member", "encoding")
# Settings that decide the text every run sees: they must be the same for the whole grid.
DATA_FIELDS = ("corpus", "member", "encoding", "newlines", "max_chars", "val_fraction")
# Settings in which a stopped run's last.pt may differ from the run and still be resumed (all are in the key).
REUSE_MAY_DIFFER = ("epochs", "patience", "device")
DONE = "done.json"
# Torch threads per run. Grid runs are many small independent jobs: one thread each,
# with --jobs for more cores, is fastest (two threads per run on a busy 2-core machine
# measured 25x slower per epoch) and keeps every result independent of --jobs.
RUN_THREADS = 1
MAX_RUNS = 1000  # a bigger grid is a mistyped --seeds rather than an experiment


@dataclass(frozen=True)
class Grid:
    """The axes of a comparison: each (model, sampler, hidden) is one configuration, run once per seed."""

    models: tuple[str, ...]
    samplers: tuple[str, ...]
    hidden: tuple[int, ...] | None  # None: the preset's (or the default) hidden size
    seeds: int


def _split_list(text: str | None, flag: str) -> list[str]:
    items = [s.strip() for s in (text or "").split(",")]
    items = [s for s in items if s]
    if not items:
        raise CharlmError(f"{flag} is empty; give a comma-separated list, e.g. {flag} a,b")
    return list(dict.fromkeys(items))  # a repeated name would only rerun the same runs


def parse_names(text: str | None, flag: str, known) -> tuple[str, ...]:
    """A comma list of names, each checked against `known`; duplicates dropped, order kept."""
    names = _split_list(text, flag)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise CharlmError(f"unknown name{'s' if len(unknown) > 1 else ''} in {flag}: {', '.join(unknown)}; "
                          f"choose from: {', '.join(known)}")
    return tuple(names)


def parse_hidden(text: str | None) -> tuple[int, ...] | None:
    """The --hidden comma list as positive whole numbers; None (not given) keeps the preset's size."""
    if text is None:
        return None
    sizes = []
    for item in _split_list(text, "--hidden"):
        try:
            size = int(item)
        except ValueError:
            raise CharlmError(f"--hidden takes whole numbers separated by commas (e.g. 128,256), "
                              f"got {item!r}") from None
        if size <= 0:
            raise CharlmError(f"--hidden sizes must be positive, got {size}")
        sizes.append(size)
    return tuple(dict.fromkeys(sizes))


def make_grid(models: str, samplers: str, hidden: str | None, seeds: int) -> Grid:
    """Check the grid flags and return the Grid they describe (a CharlmError names the first bad one)."""
    if seeds < 1:
        raise CharlmError(f"--seeds must be 1 or more (the number of seeds per configuration), got {seeds}")
    grid = Grid(parse_names(models, "--models", list(MODELS)), parse_names(samplers, "--samplers", list(SAMPLERS)),
                parse_hidden(hidden), seeds)
    runs = len(grid.models) * len(grid.samplers) * len(grid.hidden or (0,)) * seeds
    if runs > MAX_RUNS:  # checked before the grid is expanded: 10**8 seeds would hang building the list
        raise CharlmError(f"the grid has {runs:,} runs, more than {MAX_RUNS:,} (each is a full training run); "
                          "lower --seeds or shorten --models, --samplers, --hidden")
    return grid


def expand_grid(base: Config, grid: Grid, explicit: set[str]) -> list[Config]:
    """One validated Config per run, ordered by model, sampler, hidden, then seed.

    The preset named in `base.preset` is applied per run (so each model gets its
    own optimiser settings); flags in `explicit` and the grid's own values win.
    Seeds are base.seed, base.seed + 1, ...
    """
    fixed = set(explicit) | {"model", "sampler", "seed"} | ({"hidden"} if grid.hidden else set())
    configs = []
    for model in grid.models:
        for sampler in grid.samplers:
            for hidden in grid.hidden or (None,):
                for i in range(grid.seeds):
                    config = replace(base, model=model, sampler=sampler, seed=base.seed + i,
                                     **({"hidden": hidden} if hidden else {}))
                    config = apply_preset(config, base.preset, fixed)
                    # compare writes its own continuations; a run's progress samples would go nowhere
                    configs.append(replace(config, out=None, pred_every=0).validate())
    return configs


def run_key(config: Config, fingerprint: str) -> str:
    """The run's directory name: readable labels plus a hash of every setting that changes its numbers."""
    settings = {k: v for k, v in config.to_dict().items() if k not in NOT_IN_KEY}
    settings["corpus_fingerprint"] = fingerprint
    blob = json.dumps(settings, sort_keys=True, ensure_ascii=False, default=list)
    digest = hashlib.sha256(blob.encode("utf-8")).hexdigest()[:10]
    return f"{config.model}-{config.sampler}-h{config.hidden}-seed{config.seed}-{digest}"


def describe(config: Config) -> str:
    """A configuration's label for humans: model · sampler · hidden size (the seed is not part of it)."""
    return f"{config.model} · {config.sampler} · h{config.hidden}"


@dataclass
class Run:
    """One run of the grid: its settings, its directory and, once collected, its metrics."""

    index: int  # 1-based position in the grid
    config: Config
    run_dir: Path
    status: str = "pending"  # pending, trained, reused or failed
    error: str | None = None
    metrics: list = field(default_factory=list)


@dataclass
class CompareResult:
    """Everything the report needs: the corpus all runs shared and every run with its metrics."""

    out_dir: Path
    corpus: Corpus
    runs: list
    jobs: int = 1

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.runs)

    @property
    def finished(self) -> list:
        return [r for r in self.runs if r.status in ("trained", "reused")]


def prepare_out_dir(out_dir: Path) -> Path:
    """Create `out_dir` (and its runs/ folder) and prove it writable, or say which directory to use instead."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CharlmError(f"--out {out_dir} is a file; give a directory")
    try:
        (out_dir / "runs").mkdir(parents=True, exist_ok=True)
        ensure_writable(out_dir)
    except OSError as e:
        raise CharlmError(f"cannot write to --out {out_dir} ({e.strerror or e}); choose another directory") from None
    return out_dir


def write_json(path: Path, data) -> None:
    """Write JSON through a temporary file and a rename, so a reader never sees half of it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1, default=list) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def is_finished(run_dir: Path) -> bool:
    """A run is finished once done.json exists (written only after its last epoch and checkpoint)."""
    return (run_dir / DONE).is_file() and (run_dir / "metrics.jsonl").is_file()


def _load_corpus(configs: list[Config], log=None) -> Corpus:
    data = {tuple(getattr(c, f) for f in DATA_FIELDS) for c in configs}
    if len(data) > 1:  # only a preset's per-model entries could do this
        raise CharlmError("the runs of this grid would read different texts (a preset sets data options per model); "
                          "give --max-chars, --newlines and --val-fraction explicitly")
    return load_corpus(configs[0], log)


def _check_runnable(configs: list[Config], corpus: Corpus) -> None:
    """Fail before any training when a run could not even start (text too short, bad model settings)."""
    for length in {c.pred_len for c in configs}:  # the report's continuations would decode for hours
        check_length(length, flag="--pred-len")
    for key in dict.fromkeys((c.model, c.hidden, c.batch_size, c.num_steps, c.random_offset) for c in configs):
        config = next(c for c in configs if (c.model, c.hidden, c.batch_size, c.num_steps, c.random_offset) == key)
        check_order(config, len(corpus.train))
        check_model_fits(config, len(corpus.vocab))  # before build_model allocates it
        model = build_model(config, len(corpus.vocab))
        if any(p.requires_grad for p in model.parameters()):  # a counting model (kn) needs no minibatches
            trainer.check_minibatch_fits(config, len(corpus.train))


def _same_run(saved: Config, config: Config) -> bool:
    skip = set(NOT_IN_KEY) | set(REUSE_MAY_DIFFER)
    a, b = saved.to_dict(), config.to_dict()
    return all(a.get(k) == b.get(k) for k in b if k not in skip)


def execute_run(config: Config, corpus: Corpus, run_dir: str | Path, threads: int = RUN_THREADS) -> dict:
    """Train one run to its end in `run_dir`, resuming its last.pt when an earlier attempt stopped midway.

    Writes done.json last, so a run without it is unfinished. Module-level so that
    worker processes can call it; torch uses `threads` threads during the run.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _execute_run(config, corpus, Path(run_dir))
    finally:
        torch.set_num_threads(previous)


def _execute_run(config: Config, corpus: Corpus, run_dir: Path) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", config.to_dict())
    payload, last = None, run_dir / "last.pt"
    if last.is_file():
        try:
            payload = load_checkpoint(last)
            check_resumable(payload, last)
        except CharlmError:
            payload = None  # damaged by the interruption: start this run again
        if payload is not None and not (_same_run(Config.from_dict(payload["config"]), config)
                                        and payload["corpus"]["fingerprint"] == corpus.fingerprint):
            payload = None
    if payload is None:
        for name in ("metrics.jsonl", "last.pt", "best.pt", SUMMARY):  # leftovers of a run that never saved an epoch
            (run_dir / name).unlink(missing_ok=True)
    # a counting model (kn) saves no optimizer: its one pass is the whole run, there is nothing to resume
    if payload is not None and (payload["epoch"] >= config.epochs or payload["optimizer"] is None):
        summary = {"best_val_ppl": payload["best_val_ppl"], "best_epoch": payload["best_epoch"], "stopped_early": False}
        summary.update({k: v for k, v in (read_summary(run_dir) or {}).items() if k in summary})  # best.pt's final figure
    else:
        result = trainer.train(config, corpus, run_dir, resume=payload)
        summary = {"best_val_ppl": result.best_val_ppl, "best_epoch": result.best_epoch,
                   "stopped_early": result.stopped_early}
    summary["resumed_after_epoch"] = payload["epoch"] if payload is not None else 0
    write_json(run_dir / DONE, summary)
    return summary


def run_compare(configs: list[Config], out_dir: str | Path, *, jobs: int = 1, log=lambda line: None) -> CompareResult:
    """Run (or reuse) every configuration's run under `out_dir`/runs and return them with their metrics.

    A run that fails with a CharlmError (e.g. a diverging loss) is marked failed and
    the others go on; the caller decides what to do about it.
    """
    if jobs < 1:
        raise CharlmError(f"--jobs must be 1 or more, got {jobs}")
    if not configs:
        raise CharlmError("the grid is empty; give at least one model, sampler and seed")
    out_dir = prepare_out_dir(Path(out_dir))
    corpus = _load_corpus(configs, lambda line: log(f"warning: {line}"))
    _check_runnable(configs, corpus)
    runs = [Run(i + 1, c, out_dir / "runs" / run_key(c, corpus.fingerprint)) for i, c in enumerate(configs)]
    n = len(runs)
    pending = []
    for run in runs:
        if is_finished(run.run_dir):
            run.status = "reused"
            log(f"run {run.index} of {n}: {describe(run.config)}, seed {run.config.seed}: finished earlier, reused")
        else:
            pending.append(run)

    began = {}

    def started(run):
        began[run.index] = time.monotonic()
        resumed = " (resuming)" if (run.run_dir / "last.pt").is_file() else ""
        log(f"run {run.index} of {n}: {describe(run.config)}, seed {run.config.seed}{resumed} ...")

    def ended(run, future_or_call):
        try:
            summary = future_or_call()
        except CharlmError as e:
            run.status, run.error = "failed", str(e)
            log(f"run {run.index} of {n} failed: {e}")
            return
        run.status = "trained"
        log(f"run {run.index} of {n} done: best validation perplexity {summary['best_val_ppl']:.3f} "
            f"at epoch {summary['best_epoch']} ({time.monotonic() - began[run.index]:.0f} s)")

    if jobs == 1 or len(pending) <= 1:
        for run in pending:
            started(run)
            ended(run, lambda: execute_run(run.config, corpus, run.run_dir))
    elif pending:
        _run_parallel(pending, corpus, jobs, started, ended)

    for run in runs:
        if (run.run_dir / "metrics.jsonl").is_file():
            run.metrics = read_metrics(run.run_dir / "metrics.jsonl")
    return CompareResult(out_dir, corpus, runs, jobs)


def _run_parallel(pending: list, corpus: Corpus, jobs: int, started, ended) -> None:
    """Keep `jobs` worker processes busy, starting the next run as soon as one finishes.

    Workers are started with "spawn", which is safe with torch's thread pools.
    """
    jobs = min(jobs, len(pending))
    context = multiprocessing.get_context("spawn")
    queue = list(pending)
    with cf.ProcessPoolExecutor(jobs, mp_context=context, initializer=_quiet_interrupt) as pool:
        running = {}
        try:
            while queue or running:
                while queue and len(running) < jobs:
                    run = queue.pop(0)
                    started(run)
                    running[_submit(pool, execute_run, run.config, corpus, str(run.run_dir))] = run
                done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                for future in done:
                    ended(running.pop(future), future.result)
        except BaseException:
            # the runs in progress end now (their last epoch's checkpoint is kept, and resumed next time);
            # before shutdown(), which forgets the worker processes
            terminate = getattr(pool, "terminate_workers", None)  # Python 3.14+
            if terminate is not None:
                terminate()
            else:
                for process in list((getattr(pool, "_processes", None) or {}).values()):
                    process.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _submit(pool, *args):
    """pool.submit with Ctrl-C ignored meanwhile: a worker it starts inherits that, so a Ctrl-C while the
    worker is still importing torch cannot print a traceback; once started it takes _quiet_interrupt's handler."""
    if threading.current_thread() is not threading.main_thread():
        return pool.submit(*args)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return pool.submit(*args)
    finally:
        signal.signal(signal.SIGINT, previous)


def _quiet_interrupt() -> None:
    """In a worker: Ctrl-C (sent to the whole process group) ends it at once, without a traceback;
    the parent reports the interrupt. Checkpoints are written by atomic rename, so nothing half-written stays."""
    signal.signal(signal.SIGINT, lambda signum, frame: os._exit(128 + signum))

