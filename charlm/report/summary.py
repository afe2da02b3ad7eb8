"""Turn a finished comparison into results.csv, report.md and (with matplotlib) the learning-curve plots.

Every number comes from the runs' own metrics.jsonl records, and every sentence
of the conclusions is computed from those numbers when the report is written.
"""

from __future__ import annotations

import csv
import os
import statistics
from dataclasses import dataclass, field, fields
from pathlib import Path

from charlm.config import Config
from charlm.errors import CharlmError
from charlm.generate.decode import predict
from charlm.report.compare import NOT_IN_KEY, CompareResult, Run, describe
from charlm.report.form_report import form_section
from charlm.report.plots import PlotsUnavailable, plot_curves
from charlm.run.checkpoint import load_checkpoint, model_from_checkpoint
from charlm.run.metrics import read_summary

CSV_COLUMNS = ("model", "sampler", "hidden", "seed", "epoch", "train_ppl", "val_ppl", "seconds", "chars_per_sec")
PLOT_HINT = ("pip install 'charlm[plot]'  (or: pip install matplotlib), then run the same command again: "
             "finished runs are reused, so only the report and the plots are made")
# Shared settings always named in the report; other settings are named only when not at their default.
ALWAYS_SHOWN = ("epochs", "num_steps", "batch_size", "clip", "newlines")
# Shown elsewhere in the report (grid axes, optimiser column, corpus line) or never changing a result.
NOT_IN_REPORT = ("model", "sampler", "hidden", "seed", "optimizer", "lr", "max_chars", "val_fraction") + NOT_IN_KEY


@dataclass
class Summary:
    """One configuration (model, sampler, hidden) over its finished seeds."""

    model: str
    sampler: str
    hidden: int
    optimizer: str
    runs: list = field(default_factory=list)

    @property
    def label(self) -> str:
        return describe(self.runs[0].config)

    @property
    def seeds(self) -> list[int]:
        return [r.config.seed for r in self.runs]

    @property
    def final_val(self) -> list[float]:
        return [r.metrics[-1]["val_ppl"] for r in self.runs]

    @property
    def final_train(self) -> list[float]:
        return [r.metrics[-1]["train_ppl"] for r in self.runs]

    @property
    def best_val(self) -> list[float]:
        """Each run's final figure: summary.json's (best.pt, recounted), else its best epoch's line."""
        return [final_figure(r)[0] for r in self.runs]

    @property
    def best_epoch_val(self) -> list[float]:
        """The lowest epoch line, which the last epoch is measured against (overfitting)."""
        return [min(m["val_ppl"] for m in r.metrics) for r in self.runs]

    @property
    def best_epoch(self) -> list[int]:
        return [final_figure(r)[1] for r in self.runs]

    @property
    def seconds_per_epoch(self) -> float:
        return statistics.fmean(m["seconds"] for r in self.runs for m in r.metrics)

    @property
    def chars_per_sec(self) -> float:
        return statistics.fmean(m["chars_per_sec"] for r in self.runs for m in r.metrics)

    @property
    def reference(self) -> bool:
        """A model evaluated once per run (e.g. a counting n-gram baseline): drawn as a horizontal line."""
        return all(len(r.metrics) == 1 and r.config.epochs > 1 for r in self.runs)

    @property
    def best_run(self) -> Run:
        """The seed whose best checkpoint has the lowest validation perplexity."""
        return min(self.runs, key=lambda r: final_figure(r)[0])


def final_figure(run: Run) -> tuple[float, int]:
    """(validation perplexity, epoch) of the run's best.pt as training reported it: RUN/summary.json, or for a
    run without one (older runs) the first epoch line reaching the minimum, as the trainer's best.pt does."""
    recorded = read_summary(run.run_dir)
    if recorded is not None:
        return recorded["best_val_ppl"], recorded.get("best_epoch")
    best = min(run.metrics, key=lambda m: m["val_ppl"])
    return best["val_ppl"], best["epoch"]


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value: the spread is unknown)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def fmt(values: list[float], digits: int = 3) -> str:
    m, s = mean_std(values)
    return f"{m:.{digits}f}" if s is None else f"{m:.{digits}f} ± {s:.{digits}f}"


def summarize(result: CompareResult) -> list[Summary]:
    """The finished runs grouped by configuration, in grid order."""
    groups: dict[tuple, Summary] = {}
    for run in result.finished:
        if not run.metrics:
            continue
        c = run.config
        key = (c.model, c.sampler, c.hidden)
        if key not in groups:
            groups[key] = Summary(c.model, c.sampler, c.hidden, f"{c.optimizer} lr {c.lr:g}")
        groups[key].runs.append(run)
    for s in groups.values():
        if s.reference:  # counted, not trained: no optimiser took part
            s.optimizer = "none (counts)"
    return list(groups.values())


def write_results_csv(result: CompareResult, path: Path) -> Path:
    """One row per finished run per epoch, the values exactly as in the run's metrics.jsonl."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for run in result.finished:
            c = run.config
            for m in run.metrics:
                writer.writerow([c.model, c.sampler, c.hidden, c.seed, m["epoch"], m["train_ppl"], m["val_ppl"],
                                 m["seconds"], m["chars_per_sec"]])
    os.replace(tmp, path)
    return path


def _versus(a: Summary, b: Summary, values=lambda s: s.best_val) -> tuple[float, float | None, bool]:
    """(lead of a over b, the seed-to-seed spread sd_a + sd_b or None, whether every seed of a beat every seed of b)."""
    (ma, sa), (mb, sb) = mean_std(values(a)), mean_std(values(b))
    spread = None if sa is None or sb is None else sa + sb
    return mb - ma, spread, max(values(a)) < min(values(b))


def _seed_value(s: Summary, pick, values=lambda s: s.best_val) -> tuple[int, float]:
    """(seed, value) of the seed of `s` that `pick` (min or max) chooses by `values`."""
    return pick(zip(s.seeds, values(s)), key=lambda sv: sv[1])


def beats(a: Summary, b: Summary, values=lambda s: s.best_val) -> tuple[bool, str]:
    """Whether the seeds support "a is lower than b" (every seed of a below every seed of b, or a mean lead larger
    than the seed-to-seed spread), and the words that say why, or what the seeds disagree on."""
    lead, spread, every_seed = _versus(a, b, values)
    if spread is None:
        return False, ("with one seed per configuration the seed-to-seed spread is unknown; "
                       "run --seeds 2 or more to tell whether this lead is real")
    beyond = lead > spread
    spread_words = (f"the lead of {lead:.3f} is {'larger than' if beyond else 'within'} the seed-to-seed spread "
                    f"({spread:.3f}, the two standard deviations added)")
    if every_seed:
        return True, f"every seed of {a.label} beat every seed of {b.label}, and {spread_words}"
    (seed_b, best_b), (seed_a, worst_a) = _seed_value(b, min, values), _seed_value(a, max, values)
    disagree = f"seed {seed_b} of {b.label} ({best_b:.3f}) beat seed {seed_a} of {a.label} ({worst_a:.3f})"
    if beyond:
        return True, f"{spread_words}, although {disagree}"
    return False, f"the seeds disagree: {disagree}, and {spread_words}, so these seeds cannot tell the two apart"


def conclusions(summaries: list[Summary]) -> list[str]:
    """Sentences computed from the results: the best configuration, its lead, the effect of each grid axis and
    overfitting; each claim is made only when every seed, or the mean and its spread, supports it."""
    if not summaries:
        return ["No run finished, so there is nothing to compare yet."]
    ranked = sorted(summaries, key=lambda s: mean_std(s.best_val)[0])
    best = ranked[0]
    n_seeds = f"{len(best.runs)} seed{'s' if len(best.runs) > 1 else ''}"
    if len(ranked) == 1:
        return [f"**Only configuration: {best.label}** ({best.optimizer}) with a best validation perplexity of "
                f"{fmt(best.best_val)} over {n_seeds}."] + _overfitting(summaries)
    second = ranked[1]
    supported, why = beats(best, second)
    if supported:
        lines = [f"**Best: {best.label}** ({best.optimizer}) with a best validation perplexity of "
                 f"{fmt(best.best_val)} over {n_seeds}.",
                 f"Runner-up: {second.label} with {fmt(second.best_val)}; {why}."]
    else:
        lines = [f"**Lowest mean: {best.label}** ({best.optimizer}) with a best validation perplexity of "
                 f"{fmt(best.best_val)} over {n_seeds}; not shown to be the best.",
                 f"Next: {second.label} with {fmt(second.best_val)}; {why}."]
    for axis in ("sampler", "model", "hidden"):
        lines += _axis_effect(summaries, axis)
    return lines + _overfitting(summaries)


def _seed_list(s: Summary, idx: list[int]) -> str:
    return f"seed{'s' if len(idx) > 1 else ''} {', '.join(str(s.seeds[i]) for i in idx)}"


def _overfitting(summaries: list[Summary]) -> list[str]:
    """"X overfits" when every seed ended more than 1% above its best epoch; otherwise what the seeds disagree on."""
    lines = []
    for s in summaries:
        if s.reference:
            continue
        rise = [100 * (final / best - 1) for final, best in zip(s.final_val, s.best_epoch_val)]
        up = [i for i, r in enumerate(rise) if r > 1.0]
        down = [i for i, r in enumerate(rise) if r <= 1.0]
        if not up:
            continue
        if not down:
            lines.append(f"{s.label} overfits: validation perplexity was lowest at epoch "
                         f"{', '.join(map(str, s.best_epoch))} and ended {', '.join(f'{r:.1f}%' for r in rise)} "
                         f"higher ({_seed_list(s, up) + '; ' if len(s.runs) > 1 else ''}best.pt keeps the best epoch).")
            continue
        still = all(s.best_epoch[i] == s.runs[i].metrics[-1]["epoch"] for i in down)
        lines.append(f"{s.label}: the seeds disagree on overfitting: {_seed_list(s, up)} ended "
                     f"{', '.join(f'{rise[i]:.1f}%' for i in up)} above {'their' if len(up) > 1 else 'its'} best "
                     f"(epoch {', '.join(str(s.best_epoch[i]) for i in up)}), while {_seed_list(s, down)} "
                     + ("had the best epoch at the last one, still improving" if still
                        else f"ended within 1% of the best ({', '.join(f'{rise[i]:.1f}%' for i in down)})")
                     + "; more epochs or seeds would tell.")
    return lines


def _axis_effect(summaries: list[Summary], axis: str) -> list[str]:
    """For each setting of the other axes, which value of `axis` did best and whether the seeds support it."""
    others = [a for a in ("model", "sampler", "hidden") if a != axis]
    groups: dict[tuple, list[Summary]] = {}
    for s in summaries:
        if not s.reference:
            groups.setdefault(tuple(getattr(s, a) for a in others), []).append(s)
    lines = []
    for key, group in groups.items():
        if len(group) < 2:
            continue
        a, b = sorted(group, key=lambda s: mean_std(s.best_val)[0])[:2]
        lead, spread, every_seed = _versus(a, b)
        supported, _ = beats(a, b)
        where = ", ".join(f"{name} {v}" for name, v in zip(others, key))
        if spread is None:
            verdict = "unknown spread (one seed)."
        elif supported:
            verdict = (f"{getattr(a, axis)} is lower ({'every seed' if every_seed else 'beyond the spread'}, "
                       f"spread {spread:.3f}).")
        else:
            verdict = f"the seeds disagree, within the spread ({spread:.3f})."
        lines.append(f"{axis.capitalize()} ({where}): {getattr(a, axis)} {fmt(a.best_val)} "
                     f"vs {getattr(b, axis)} {fmt(b.best_val)}: lower by {lead:.3f} on average; {verdict}")
    return lines


def results_table(summaries: list[Summary]) -> list[str]:
    """The markdown table of report.md: one row per configuration, mean ± sample std over seeds."""
    rows = ["| model | sampler | hidden | optimiser | final val ppl | best val ppl | epoch of best | "
            "final train ppl | s/epoch | chars/s | seeds |",
            "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summaries:
        rows.append(f"| {s.model} | {s.sampler} | {s.hidden} | {s.optimizer} | {fmt(s.final_val)} | "
                    f"{fmt(s.best_val)} | "
                    f"{', '.join(map(str, s.best_epoch))} | {fmt(s.final_train)} | {s.seconds_per_epoch:.2f} | "
                    f"{s.chars_per_sec:.0f} | {len(s.runs)} |")
    return rows


def continuations(run: Run, checkpoint: str) -> list[str]:
    """Greedy continuations of each prefix from one checkpoint file (best.pt or last.pt) of `run`."""
    try:
        model, vocab, _ = model_from_checkpoint(load_checkpoint(run.run_dir / checkpoint))
    except CharlmError as e:
        return [f"(no continuation: {e})"]
    lines = []
    for prefix in run.config.prefixes:
        try:
            lines.append(predict(prefix, run.config.pred_len, model, vocab).replace("\n", " / "))
        except CharlmError as e:
            lines.append(f"(prefix {prefix!r}: {e})")
    return lines


def shared_settings(result: CompareResult) -> str:
    """The settings every run shared: the usual ones always, any other only where it differs from the default."""
    configs = [r.config for r in result.runs]
    defaults = Config()
    parts = [f"preset {configs[0].preset or 'none'}"]
    for f in fields(Config):
        if f.name in NOT_IN_REPORT:
            continue
        values = {getattr(c, f.name) for c in configs}
        if len(values) == 1:
            value = values.pop()
            if f.name in ALWAYS_SHOWN or value != getattr(defaults, f.name):
                parts.append(f"{f.name.replace('_', '-')} {value:g}" if isinstance(value, float)
                             else f"{f.name.replace('_', '-')} {value}")
    return ", ".join(parts)


def write_report(result: CompareResult, path: Path, *, command: str | None = None,
                 plots: list | None = None, plot_error: str | None = None) -> Path:
    """Write report.md: settings, the results table, computed conclusions, plots, song form and continuations."""
    summaries = summarize(result)
    corpus = result.corpus
    n_seeds = {len(s.runs) for s in summaries}
    lines = ["# charlm compare", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    max_chars = result.runs[0].config.max_chars
    lines += [f"Corpus: {corpus.source}, {len(corpus.text):,} characters"
              + (f" (--max-chars {max_chars})" if max_chars else "")
              + f": {len(corpus.train):,} train, {len(corpus.val):,} validation (the last "
              f"{result.runs[0].config.val_fraction:.0%} of the text, the same for every run); "
              f"vocabulary {len(corpus.vocab):,}.",
              f"Every run: {shared_settings(result)}.",
              f"{len(result.runs)} runs: {len(summaries)} configurations x "
              f"{'/'.join(map(str, sorted(n_seeds))) or 0} seeds "
              f"({result.count('trained')} trained now, {result.count('reused')} reused, "
              f"{result.count('failed')} failed). "
              f"Runs trained {result.jobs} at a time (--jobs); timings come from the run's own metrics and "
              "vary with the load on the machine.", "",
              "## Results", "",
              "Validation perplexity on the held-out text, mean ± sample standard deviation over seeds; "
              "epoch of best lists each seed's.", ""]
    lines += results_table(summaries)
    refs = [s for s in summaries if s.reference]
    if refs:
        lines += ["", f"{', '.join(s.label for s in refs)}: one evaluation per run (no epochs of training); "
                      "drawn as a horizontal reference line in the plots."]
    lines += ["", "## What the numbers say", ""] + [f"- {line}" for line in conclusions(summaries)]
    lines += ["", "## Learning curves", ""]
    if plots:
        lines += [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    else:
        lines += [f"No plots: {plot_error or 'matplotlib is not installed'}. To get curves.png and curves_time.png: "
                  f"{PLOT_HINT}."]
    lines += [""] + form_section([s for s in summaries if not s.reference], corpus.text)
    lines += ["## Continuations", "",
              "Greedy continuation of each prefix from each configuration's best checkpoint (best.pt of its best "
              "seed: the epoch of lowest validation perplexity), then from the same run's last epoch (last.pt), "
              "to show what the epochs after the best one learned.", ""]
    for s in summaries:
        run = s.best_run
        best_ppl, best_epoch = final_figure(run)
        lines += [f"**{s.label}**, seed {run.config.seed}, best.pt (epoch {best_epoch}, "
                  f"validation perplexity {best_ppl:.3f}):", "", "```"]
        lines += continuations(run, "best.pt") + ["```", ""]
        last = run.metrics[-1]
        if last["epoch"] != best_epoch:
            lines += [f"last.pt (epoch {last['epoch']}, validation perplexity {last['val_ppl']:.3f}):", "", "```"]
            lines += continuations(run, "last.pt") + ["```", ""]
    lines += ["## Runs", "", "| configuration | seed | status | directory |", "|---|---:|---|---|"]
    for run in result.runs:
        status = run.status + (f": {run.error}" if run.error else "")
        lines.append(f"| {describe(run.config)} | {run.config.seed} | {status} | "
                     f"runs/{run.run_dir.name} |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_outputs(result: CompareResult, *, command: str | None = None) -> dict:
    """Write results.csv, the plots when matplotlib is importable, and report.md; return their paths."""
    out = result.out_dir
    paths = {"results": write_results_csv(result, out / "results.csv")}
    plots, plot_error = [], None
    try:
        plots = plot_curves(summarize(result), out)
    except PlotsUnavailable:
        plot_error = "matplotlib is not installed"
    paths["plots"] = plots
    paths["report"] = write_report(result, out / "report.md", command=command, plots=plots, plot_error=plot_error)
    return paths
