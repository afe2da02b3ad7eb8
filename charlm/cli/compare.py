"""`charlm compare`: train a grid of models x samplers x hidden sizes over several seeds, and report it."""

from __future__ import annotations

import shlex
import signal
import sys
import threading
from dataclasses import fields
from pathlib import Path

import click

from charlm.cli.command import Command, warn
from charlm.cli.options import EXPLICIT_SOURCES, config_options, explicit_params
from charlm.config import PRESETS, Config
from charlm.errors import CharlmError
from charlm.models import MODELS

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


@click.command("compare", cls=Command)
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
    from charlm.train.start import lock_run_dir

    grid = make_grid(models, samplers, hidden_sizes, seeds)
    if jobs < 1:
        raise CharlmError(f"--jobs must be 1 or more, got {jobs}")
    names = [f.name for f in fields(Config) if f.name in values]
    base = Config(**{n: values[n] for n in names}, preset=None if preset == "none" else preset)
    configs = expand_grid(base, grid, explicit_params(ctx, names))
    click.echo(f"{len(configs) // seeds} configurations x {seeds} seeds = {len(configs)} runs, "
               f"{configs[0].epochs} epochs each, preset {preset}; output in {out_dir}/")
    lock_run_dir(Path(out_dir), "--out", hold=ctx.with_resource, warn=warn)  # one compare per folder at a time
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
