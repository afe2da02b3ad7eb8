"""Learning-curve plots of a comparison: curves.png (perplexity per epoch) and curves_time.png (per second).

matplotlib comes from the `plot` extra and is imported only when a plot is
drawn, through its Agg canvas (no window, no global pyplot state). Each
configuration is one line, the mean over seeds, with the spread between the
lowest and highest seed shaded. A model evaluated once per run (a counting
baseline such as Kneser-Ney) is a dashed horizontal reference line.
"""

from __future__ import annotations

import statistics
from pathlib import Path


class PlotsUnavailable(ImportError):
    """matplotlib is not installed: the report says how to get the plots."""


def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise PlotsUnavailable(str(e)) from None
    return Figure, FigureCanvasAgg


def _by_epoch(summary, key: str, x=lambda run, i: run.metrics[i]["epoch"]):
    """(x, mean, low, high) lists over the seeds of one configuration, seeds aligned by epoch number."""
    points: dict[int, list] = {}
    for run in summary.runs:
        elapsed = 0.0
        for i, m in enumerate(run.metrics):
            elapsed += m["seconds"]
            points.setdefault(m["epoch"], []).append((x(run, i) if x else elapsed, m[key]))
    xs, mean, low, high = [], [], [], []
    for epoch in sorted(points):
        pts = points[epoch]
        xs.append(statistics.fmean(p[0] for p in pts))
        values = [p[1] for p in pts]
        mean.append(statistics.fmean(values))
        low.append(min(values))
        high.append(max(values))
    return xs, mean, low, high


def _draw(ax, summaries, key: str, color_of, x=lambda run, i: run.metrics[i]["epoch"]):
    for s in summaries:
        color = color_of(s)
        if s.reference:
            value = statistics.fmean(r.metrics[-1][key] for r in s.runs)
            ax.axhline(value, color=color, linestyle="--", linewidth=1.5, label=f"{s.label} (reference)")
            continue
        xs, mean, low, high = _by_epoch(s, key, x)
        ax.plot(xs, mean, color=color, linewidth=1.6, label=s.label)
        if len(s.runs) > 1:
            ax.fill_between(xs, low, high, color=color, alpha=0.2, linewidth=0)


def _log_axis(ax):
    """A log-scale perplexity axis labelled with plain numbers (20, 30, 50, 100) instead of powers of ten.

    Call it after everything is drawn: the tick spacing follows the span of the data.
    """
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    low, high = ax.get_ylim()  # the log scale's own limits
    subs = tuple(range(1, 10)) if high / max(low, 1e-12) < 10 else (1, 2, 3, 5)
    ax.yaxis.set_major_locator(LogLocator(subs=subs))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="major", alpha=0.3)


def plot_curves(summaries: list, out_dir: str | Path) -> list[Path]:
    """Draw curves.png and curves_time.png into `out_dir` and return their paths.

    Raises PlotsUnavailable when matplotlib is not installed.
    """
    Figure, FigureCanvasAgg = _matplotlib()
    from matplotlib.ticker import MaxNLocator

    out_dir = Path(out_dir)
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
               "#bcbd22", "#17becf"]
    colors = {s.label: palette[i % len(palette)] for i, s in enumerate(summaries)}
    color_of = lambda s: colors[s.label]  # noqa: E731
    seeds = sorted({len(s.runs) for s in summaries})
    shade = "shaded: lowest to highest seed" if max(seeds, default=1) > 1 else "one seed"

    fig = Figure(figsize=(12, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    val_ax, train_ax = fig.subplots(1, 2, sharey=True)
    _draw(val_ax, summaries, "val_ppl", color_of)
    _draw(train_ax, summaries, "train_ppl", color_of)
    _log_axis(val_ax)  # the y axis is shared: one call sets both
    val_ax.set(title="validation perplexity", xlabel="epoch", ylabel="perplexity (log scale)")
    train_ax.set(title="training perplexity", xlabel="epoch")
    for ax in (val_ax, train_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    train_ax.yaxis.set_tick_params(labelleft=True)
    val_ax.legend(fontsize=8)
    fig.suptitle(f"mean over {'/'.join(map(str, seeds))} seeds; {shade}")
    curves = out_dir / "curves.png"
    fig.savefig(curves, dpi=110)

    fig = Figure(figsize=(7, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    _draw(ax, summaries, "val_ppl", color_of, x=None)
    _log_axis(ax)
    ax.set(title="validation perplexity against training time",
           xlabel="seconds of training (cumulative, mean over seeds)", ylabel="perplexity (log scale)")
    fig.suptitle(shade, fontsize=9)
    ax.legend(fontsize=8)
    curves_time = out_dir / "curves_time.png"
    fig.savefig(curves_time, dpi=110)
    return [curves, curves_time]
