"""`charlm compare` end to end on a tiny grid: CSV, report, plots, reuse, resume, seeds, --jobs and bad input."""

import csv
import json
import re
import shutil
import statistics
import subprocess
import sys
from dataclasses import replace

import pytest
from click.testing import CliRunner

from charlm.train import loop as trainer
from charlm.cli.app import cli
from helpers import assert_one_line_error
from charlm.report.compare import Run, expand_grid, make_grid, run_key
from charlm.config import Config
from charlm.run.metrics import read_metrics
from charlm.report.summary import Summary, conclusions, results_table

# 2 models x 2 samplers x 2 seeds, 2 epochs, on a text of a few hundred characters
TINY = ["--epochs", "2", "--seeds", "2", "--hidden", "8", "--batch-size", "4", "--num-steps", "8",
        "--pred-len", "5"]
CONFIG_KEYS = ("model", "sampler", "hidden", "seed")


def run(*args):
    return CliRunner().invoke(cli, ["compare", *map(str, args)])




def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def run_dirs(out):
    """(model, sampler, hidden, seed) -> run directory, from each run's config.json."""
    found = {}
    for d in (out / "runs").iterdir():
        c = json.loads((d / "config.json").read_text(encoding="utf-8"))
        found[(c["model"], c["sampler"], str(c["hidden"]), str(c["seed"]))] = d
    return found


def curves_of(rows):
    """(model, sampler, hidden, seed) -> [(epoch, train_ppl, val_ppl)] from CSV rows."""
    curves = {}
    for r in rows:
        curves.setdefault(tuple(r[k] for k in CONFIG_KEYS), []).append(
            (int(r["epoch"]), float(r["train_ppl"]), float(r["val_ppl"])))
    return curves


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """One tiny compare run shared by the tests that only read its output."""
    from conftest import SMALL_TEXT

    root = tmp_path_factory.mktemp("compare")
    corpus = root / "small.txt"
    corpus.write_text(SMALL_TEXT, encoding="utf-8")
    args = ["--corpus", corpus, *TINY]
    result = run(*args, "--out", root / "out")
    assert result.exit_code == 0, result.output
    return {"root": root, "out": root / "out", "args": args, "result": result}


def test_results_csv_has_one_row_per_run_per_epoch_matching_metrics(grid):
    rows = read_csv(grid["out"] / "results.csv")
    assert list(rows[0]) == ["model", "sampler", "hidden", "seed", "epoch", "train_ppl", "val_ppl", "seconds",
                             "chars_per_sec"]
    assert len(rows) == 2 * 2 * 2 * 2
    expected = {(m, s, "8", str(seed)) for m in ("rnn-scratch", "rnn") for s in ("random", "consecutive")
                for seed in (0, 1)}
    assert set(curves_of(rows)) == expected
    dirs = run_dirs(grid["out"])
    for key, curve in curves_of(rows).items():
        assert [e for e, _, _ in curve] == [1, 2]
        metrics = read_metrics(dirs[key] / "metrics.jsonl")
        assert [(m["epoch"], m["train_ppl"], m["val_ppl"]) for m in metrics] == curve
        assert {"best.pt", "last.pt"} <= {p.name for p in dirs[key].iterdir()}
    # the textbook preset gives each model its own optimiser
    assert json.loads((dirs[("rnn-scratch", "random", "8", "0")] / "config.json").read_text())["optimizer"] == "sgd"
    assert json.loads((dirs[("rnn", "random", "8", "0")] / "config.json").read_text())["optimizer"] == "adam"


def parse_table(report: str) -> dict:
    """(model, sampler, hidden) -> {column: cell} from the results table of report.md."""
    lines = [ln for ln in report.splitlines() if ln.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    table = {}
    for line in lines[1:]:
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
        if "final val ppl" in cells:
            table[(cells["model"], cells["sampler"], cells["hidden"])] = cells
    return table


def mean_and_std(cell: str):
    mean, std = cell.split(" ± ")
    return float(mean), float(std)


def test_report_table_agrees_with_csv(grid):
    rows = read_csv(grid["out"] / "results.csv")
    report = (grid["out"] / "report.md").read_text(encoding="utf-8")
    table = parse_table(report)
    assert len(table) == 4
    by_config = {}
    for key, curve in curves_of(rows).items():
        by_config.setdefault(key[:3], []).append(curve)
    best_means = {}
    for config, curves in by_config.items():
        cells = table[config]
        finals = [c[-1][2] for c in curves]
        bests = [min(v for _, _, v in c) for c in curves]
        for column, values in (("final val ppl", finals), ("best val ppl", bests),
                               ("final train ppl", [c[-1][1] for c in curves])):
            mean, std = mean_and_std(cells[column])
            assert mean == pytest.approx(statistics.mean(values), abs=6e-4), column
            assert std == pytest.approx(statistics.stdev(values), abs=6e-4), column
        assert cells["epoch of best"] == ", ".join(str(min(c, key=lambda r: r[2])[0]) for c in curves)
        assert cells["seeds"] == "2"
        best_means[config] = statistics.mean(bests)
        config_rows = [r for r in rows if (r["model"], r["sampler"], r["hidden"]) == config]
        assert float(cells["s/epoch"]) == pytest.approx(statistics.mean(float(r["seconds"]) for r in config_rows),
                                                        abs=6e-3)
    winner = min(best_means, key=best_means.get)
    # named best only when the seeds support it; else named as the lowest mean (tests/test_cli_consistency.py)
    label = f"{winner[0]} · {winner[1]} · h{winner[2]}**"
    assert f"**Best: {label}" in report or f"**Lowest mean: {label}" in report
    # a continuation of each default prefix from each configuration's best checkpoint
    assert report.count(", best.pt (epoch ") == 4
    section = report.split("## Continuations")[1]
    assert section.count("\n分开") >= 4 and section.count("\n不分开") >= 4
    assert "## Song form" not in report  # the textbook preset joins lines with spaces: no lines to measure


def test_plots_are_written_when_matplotlib_is_present(grid):
    pytest.importorskip("matplotlib")
    for name in ("curves.png", "curves_time.png"):
        path = grid["out"] / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in (grid["out"] / "report.md").read_text(encoding="utf-8")


def test_rerun_reuses_finished_runs(grid):
    files = [p for d in run_dirs(grid["out"]).values() for p in d.iterdir() if p.suffix in (".jsonl", ".pt")]
    before = {p: p.stat().st_mtime_ns for p in files}
    result = run(*grid["args"], "--out", grid["out"])
    assert result.exit_code == 0, result.output
    assert result.stdout.count("finished earlier, reused") == 8
    assert "run 8 of 8" in result.stdout
    assert {p: p.stat().st_mtime_ns for p in files} == before
    assert "0 trained now, 8 reused" in (grid["out"] / "report.md").read_text(encoding="utf-8")


def test_seeds_differ_and_jobs_do_not_change_results(grid):
    curves = curves_of(read_csv(grid["out"] / "results.csv"))
    for model in ("rnn-scratch", "rnn"):
        for sampler in ("random", "consecutive"):
            assert curves[(model, sampler, "8", "0")] != curves[(model, sampler, "8", "1")]
    out = grid["root"] / "jobs2"
    result = run(*grid["args"], "--models", "rnn", "--samplers", "random", "--out", out, "--jobs", "2")
    assert result.exit_code == 0, result.output
    again = curves_of(read_csv(out / "results.csv"))
    assert len(again) == 2
    for key, curve in again.items():
        assert curve == curves[key]  # same seed, another process: identical to the last digit


def test_interrupted_compare_resumes_where_it_stopped(grid, monkeypatch):
    out = grid["root"] / "resume"
    args = [*grid["args"], "--models", "rnn", "--samplers", "consecutive", "--seeds", "1", "--out", out]
    calls = []
    evaluate = trainer.perplexity

    def interrupt_in_epoch_2(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return evaluate(*a, **k)

    monkeypatch.setattr(trainer, "perplexity", interrupt_in_epoch_2)
    stopped = run(*args)
    assert stopped.exit_code == 130 and "run the same command again" in stopped.stderr.lower()
    (run_dir,) = run_dirs(out).values()
    assert len(read_metrics(run_dir / "metrics.jsonl")) == 1 and not (run_dir / "done.json").exists()
    monkeypatch.setattr(trainer, "perplexity", evaluate)
    resumed = run(*args)
    assert resumed.exit_code == 0, resumed.output
    assert "(resuming)" in resumed.stdout
    assert curves_of(read_csv(out / "results.csv")) == {
        k: v for k, v in curves_of(read_csv(grid["out"] / "results.csv")).items() if k[:2] == ("rnn", "consecutive")
        and k[3] == "0"}


def test_without_matplotlib_the_report_says_how_to_get_plots(grid, monkeypatch):
    out = grid["root"] / "noplot"
    shutil.copytree(grid["out"] / "runs", out / "runs")
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # import now fails, as when it is not installed
    result = run(*grid["args"], "--out", out)
    assert result.exit_code == 0, result.output
    assert "charlm[plot]" in result.stdout
    assert not (out / "curves.png").exists() and (out / "results.csv").exists()
    assert "pip install 'charlm[plot]'" in (out / "report.md").read_text(encoding="utf-8")


def test_python_m_charlm_compare_is_the_same_command():
    result = subprocess.run([sys.executable, "-m", "charlm", "compare", "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "--samplers" in result.stdout and "--jobs" in result.stdout and "--max-chars" in result.stdout
    assert "--sampler " not in result.stdout  # the grid flag replaces train's single-value one


@pytest.mark.parametrize("flags, fragment", [
    (["--samplers", "random,shuffled"], "unknown name in --samplers: shuffled"),
    (["--models", "rnn,transformer"], "unknown name in --models: transformer"),
    (["--models", ""], "--models is empty"),
    (["--samplers", " , "], "--samplers is empty"),
    (["--hidden", ""], "--hidden is empty"),
    (["--hidden", "8,big"], "--hidden takes whole numbers"),
    (["--seeds", "0"], "--seeds must be 1 or more"),
    (["--jobs", "0"], "--jobs must be 1 or more"),
    (["--epochs", "0"], "--epochs must be a positive whole number"),
])
def test_bad_grid_flags_fail_in_one_line_and_keep_finished_runs(grid, flags, fragment):
    before = sorted(p.name for p in (grid["out"] / "runs").iterdir())
    results_mtime = (grid["out"] / "results.csv").stat().st_mtime_ns
    result = run(*grid["args"], "--out", grid["out"], *flags)
    assert_one_line_error(result, fragment)
    assert sorted(p.name for p in (grid["out"] / "runs").iterdir()) == before
    assert (grid["out"] / "results.csv").stat().st_mtime_ns == results_mtime


def test_unwritable_output_directory_fails_in_one_line(grid, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert_one_line_error(run(*grid["args"], "--out", blocker / "out"), "cannot write to --out")
    assert_one_line_error(run(*grid["args"], "--out", blocker), "is a file")


def test_a_failing_run_is_reported_and_the_others_kept(grid, monkeypatch):
    out = grid["root"] / "diverge"
    train = trainer.train

    def diverge_on_seed_1(config, *a, **k):
        if config.seed == 1:
            raise trainer.NonFiniteLoss("the loss became nan in epoch 1; lower --lr")
        return train(config, *a, **k)

    monkeypatch.setattr(trainer, "train", diverge_on_seed_1)
    result = run(*grid["args"], "--models", "rnn", "--samplers", "random", "--out", out)
    assert_one_line_error(result, "1 of 2 runs failed", "seed 1", "the loss became nan")
    dirs = run_dirs(out)
    assert (dirs[("rnn", "random", "8", "0")] / "done.json").exists()
    assert not (dirs[("rnn", "random", "8", "1")] / "done.json").exists()
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "failed: the loss became nan" in report and "| rnn | random | 8 |" in report
    assert {r["seed"] for r in read_csv(out / "results.csv")} == {"0"}


def test_grid_expansion_gives_each_model_the_presets_optimiser_unless_overridden():
    grid = make_grid("rnn-scratch,rnn", "random", "8,16", 2)
    configs = expand_grid(Config(preset="textbook", seed=5), grid, explicit=set())
    assert len(configs) == 2 * 1 * 2 * 2
    assert [(c.model, c.hidden, c.seed) for c in configs[:4]] == [("rnn-scratch", 8, 5), ("rnn-scratch", 8, 6),
                                                                 ("rnn-scratch", 16, 5), ("rnn-scratch", 16, 6)]
    assert {(c.model, c.optimizer, c.lr) for c in configs} == {("rnn-scratch", "sgd", 100.0), ("rnn", "adam", 0.001)}
    assert all(c.max_chars == 10000 and c.clip == 0.01 for c in configs)
    overridden = expand_grid(Config(preset="textbook", lr=0.5), grid, explicit={"lr"})
    assert {c.lr for c in overridden} == {0.5}
    assert make_grid("rnn,rnn", "random", None, 1).models == ("rnn",)
    assert expand_grid(Config(hidden=32), make_grid("rnn", "random", None, 1), set())[0].hidden == 32


def test_run_key_changes_with_what_changes_the_numbers_only():
    c = Config(model="rnn", sampler="random", hidden=8)
    assert run_key(c, "abc") == run_key(replace(c, out="/elsewhere", pred_len=9, prefixes=("x",)), "abc")
    assert run_key(c, "abc") != run_key(replace(c, seed=1), "abc")
    assert run_key(c, "abc") != run_key(replace(c, lr=0.1), "abc")
    assert run_key(c, "abc") != run_key(c, "abd")  # another text
    assert re.fullmatch(r"rnn-random-h8-seed0-[0-9a-f]{10}", run_key(c, "abc"))


def test_a_once_evaluated_model_is_a_reference_line(tmp_path):
    """A counting baseline (one metrics record however many epochs) is a horizontal line and a table row."""
    def fake(model, val, seed, n_records):
        config = Config(model=model, sampler="random", hidden=8, seed=seed, epochs=3)
        metrics = [{"epoch": e, "train_ppl": val + 5.0, "val_ppl": val - e, "seconds": 0.5, "chars_per_sec": 100.0}
                   for e in range(1, n_records + 1)]
        return Run(seed + 1, config, tmp_path / f"{model}{seed}", "trained", metrics=metrics)

    ref = Summary("kn", "random", 8, "sgd lr 1", [fake("kn", 40.0, 0, 1), fake("kn", 40.0, 1, 1)])
    net = Summary("rnn", "random", 8, "adam lr 0.001", [fake("rnn", 50.0, 0, 3), fake("rnn", 52.0, 1, 3)])
    assert ref.reference and not net.reference
    assert any(line.startswith("| kn | random | 8 |") for line in results_table([ref, net]))
    assert "Best: kn · random · h8" in conclusions([ref, net])[0]
    pytest.importorskip("matplotlib")
    from charlm.report.plots import plot_curves

    paths = plot_curves([net, ref], tmp_path)
    assert all(p.stat().st_size > 0 for p in paths)


def test_the_report_measures_how_each_configuration_keeps_lines_and_rhyme(tmp_path):
    """On a text of rhyming lines, kept as lines: a row per configuration, with the formed row's rhyme exact."""
    from charlm.cli.app import main

    text = ("春风吹过天边的云烟\n我在窗前想你的脸\n明月照着故乡的家\n梦里回到旧时的花\n"
            "山高水长路茫茫\n一个人走在远方\n风吹过了小河里\n你穿着红色的衣\n") * 15
    (tmp_path / "rhyme.txt").write_text(text, encoding="utf-8")
    with pytest.raises(SystemExit) as info:
        main(["compare", "--corpus", str(tmp_path / "rhyme.txt"), "--out", str(tmp_path / "out"), "--models", "gru",
              "--samplers", "random,consecutive", "--preset", "none", "--newlines", "keep", "--epochs", "1",
              "--seeds", "1", "--hidden", "8", "--batch-size", "4", "--num-steps", "8", "--pred-len", "5"])
    assert info.value.code == 0
    report = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    form = report.split("## Song form")[1].split("## Continuations")[0]
    assert "scheme AABB" in form
    rows = [line.split(" | ") for line in form.splitlines() if line.startswith("| ") and "·" in line]
    assert len(rows) == 2
    for cells in rows:
        assert 0 <= float(cells[1].rstrip("%")) <= 100 and 0 <= float(cells[2].rstrip("%")) <= 100
        assert cells[3] == "100.0%"  # under the corpus's scheme every rhyme slot holds its class
        float(cells[4].rstrip(" |"))  # the fluency cost is a number
