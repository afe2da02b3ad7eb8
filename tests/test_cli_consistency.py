"""The command line says what it does: help that matches a run, one name per concept, reports that do not overstate."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import zipfile
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import click
import pytest
from click.testing import CliRunner

from charlm.cli import generate as generate_module
from charlm.cli.app import cli, train_command
from charlm.report.compare import Run
from charlm.config import PRESETS, Config, field_default
from charlm.report.summary import Summary, conclusions
from helpers import assert_one_line_error

ROOT = Path(__file__).resolve().parents[1]
SKIPPED_FIELDS = ("corpus", "out", "preset")  # given by the test itself, or the thing being varied


def run(*args, **kwargs):
    return CliRunner().invoke(cli, [str(a) for a in args], **kwargs)


def commands() -> dict[str, click.Command]:
    return dict(cli.commands)


# --- -h and --help everywhere ------------------------------------------------------------

def test_h_is_help_on_every_command_and_entry_point():
    for name, command in commands().items():
        for flag in ("-h", "--help"):
            assert run(name, flag).exit_code == 0 and "Usage:" in run(name, flag).output, (name, flag)
        # the command on its own, as train.py and generate.py run it (no group above it)
        alone = CliRunner().invoke(command, ["-h"])
        assert alone.exit_code == 0 and "Usage:" in alone.output, name
    # the scripts themselves, in one interpreter (importing torch twice would double the test's time)
    both = ("import runpy, sys\n"
            "for script in ('train.py', 'generate.py'):\n"
            "    sys.argv = [script, '-h']\n"
            "    try:\n"
            "        runpy.run_path(script, run_name='__main__')\n"
            "    except SystemExit as e:\n"
            "        print(f'{script} exit {e.code}')\n")
    result = subprocess.run([sys.executable, "-c", both], cwd=ROOT, capture_output=True, text=True)
    assert "Usage: train.py" in result.stdout and "Usage: generate.py" in result.stdout, result.stderr
    assert "train.py exit 0" in result.stdout and "generate.py exit 0" in result.stdout, result.stdout


# --- help texts that hold what they promise -----------------------------------------------

def help_texts(command: click.Command) -> dict[str, str]:
    """flag -> the help line exactly as --help shows it (with its bracketed default)."""
    ctx = click.Context(command, info_name=command.name, **command.context_settings)
    texts = {}
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is not None:
            texts[param.opts[0]] = record[1]
    return texts


def test_no_help_points_to_a_list_that_is_not_there():
    for name, command in commands().items():
        for flag, text in help_texts(command).items():
            assert "see the list above" not in text, (name, flag)
    texts = help_texts(train_command)
    from charlm.config import PRESET_NAMES
    from charlm.models import MODELS

    assert all(m in texts["--model"] for m in MODELS)
    assert all(p in texts["--preset"] for p in PRESET_NAMES)


def parse_bracket(text: str) -> tuple[str | None, dict[str, object]]:
    """(the default as shown, {preset: value words or {model: words}}) from a help line's [default: ...; ...]."""
    if not text.endswith("]") or "[" not in text:
        return None, {}
    inner = text[text.rindex("[") + 1:-1]
    default, presets = None, {}
    for item in inner.split("; "):
        if item.startswith("default: "):
            default = item[len("default: "):]
            continue
        m = re.fullmatch(r"--preset (.+?)(?: \(the default\))? (?:sets|set) (.+)", item)
        if not m:
            continue
        words = m.group(2)
        if " for " in words:
            words = {model: value for value, model in (w.split(" for ") for w in words.split(", "))}
        for preset in m.group(1).split(", "):
            presets[preset] = words
    return default, presets


def same(shown: str | None, value) -> bool:
    if isinstance(value, bool):
        return shown in (("on", "True") if value else (None, "", "off", "False"))
    if value is None:
        return shown in (None, "")
    if isinstance(value, tuple):
        return shown == ", ".join(map(str, value)) or (not value and shown is None)  # an empty default shows none
    if isinstance(value, (int, float)):
        return shown is not None and float(shown) == pytest.approx(float(value))
    return shown == str(value)


def expected_from_help(texts: dict, field, preset: str | None, model: str) -> str | None:
    flag = field.metadata.get("flag") or "--" + field.name.replace("_", "-")
    default, presets = parse_bracket(texts[flag])
    said = presets.get(preset, default)
    if isinstance(said, dict):
        said = said.get(model, default)
    return said


def record_runs(monkeypatch) -> list:
    """Stand-in for trainer.train that records the config a run would train with (and trains nothing)."""
    import charlm.train.loop

    seen = []

    def fake_train(config, corpus, run_dir, **kwargs):
        seen.append(config)
        return SimpleNamespace(best_val_ppl=1.0, best_epoch=1)

    monkeypatch.setattr(charlm.train.loop, "train", fake_train)
    return seen


@pytest.fixture
def corpus_file(tmp_path):
    from conftest import SMALL_TEXT

    path = tmp_path / "text.txt"
    path.write_text(SMALL_TEXT * 10, encoding="utf-8")
    return path


@pytest.mark.parametrize("preset", ["none", *sorted(PRESETS)])
def test_train_help_defaults_are_what_a_run_records(preset, corpus_file, tmp_path, monkeypatch):
    seen = record_runs(monkeypatch)
    result = run("train", "--corpus", corpus_file, "--out", tmp_path / "run", "--preset", preset)
    assert result.exit_code == 0, result.output
    (config,) = seen
    texts = help_texts(train_command)

    for f in fields(Config):
        if f.name in SKIPPED_FIELDS:
            continue
        shown = expected_from_help(texts, f, preset, config.model)
        assert same(shown, getattr(config, f.name)), (preset, f.name, shown, getattr(config, f.name))


def test_train_with_no_preset_flag_changes_only_what_help_says_auto_chooses(corpus_file, tmp_path, monkeypatch):
    seen = record_runs(monkeypatch)
    result = run("train", "--corpus", corpus_file, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    (config,) = seen
    texts = help_texts(train_command)
    default_preset = field_default(next(f for f in fields(Config) if f.name == "preset"))

    for f in fields(Config):
        if f.name in SKIPPED_FIELDS:
            continue
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        if "--preset auto (the default) chooses it" in texts[flag]:
            continue  # the recipe's choice: the help says so
        shown = expected_from_help(texts, f, default_preset, config.model)
        assert same(shown, getattr(config, f.name)), (f.name, shown, getattr(config, f.name))


def test_compare_help_defaults_are_what_its_runs_record(corpus_file, tmp_path, monkeypatch):
    """`charlm compare` with no flags: every run's config is what --help says (its default preset included)."""
    import charlm.report.compare
    from charlm.errors import CharlmError

    seen = []

    def fake_run_compare(configs, out_dir, **kwargs):
        seen.extend(configs)
        raise CharlmError("stopped by the test")

    monkeypatch.setattr(charlm.report.compare, "run_compare", fake_run_compare)
    result = run("compare", "--corpus", corpus_file, "--out", tmp_path / "out")
    assert result.exit_code == 2 and "stopped by the test" in result.output
    command = cli.commands["compare"]
    texts = help_texts(command)
    default_preset = next(p for p in command.params if p.name == "preset").default
    assert f"--preset {default_preset} (the default) sets" in texts["--epochs"]
    assert f"{seen[0].epochs} epochs each, preset {default_preset}" in result.output
    flags = set(texts)

    assert {c.model for c in seen} == {"rnn-scratch", "rnn"}
    for config in seen:
        for f in fields(Config):
            flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
            if f.name in SKIPPED_FIELDS or flag not in flags or f.name in ("model", "sampler", "seed", "hidden"):
                continue
            shown = expected_from_help(texts, f, default_preset, config.model)
            assert same(shown, getattr(config, f.name)), (config.model, f.name, shown, getattr(config, f.name))
        assert f"({config.hidden} for {default_preset})" in texts["--hidden"]


# --- every flag a text names exists ----------------------------------------------------

FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9_]*(?:-[a-z0-9_]+)*)(?![\w>-])")
# flags of other programs that messages may name
FOREIGN = {"--nproc_per_node", "--nproc-per-node", "--nnodes", "--node-rank", "--master-addr", "--master-port", "--rdzv-backend",
           "--rdzv-endpoint", "--rdzv-id", "--standalone", "--extra-index-url", "--index-url", "--upgrade"}


def visible_flags(command: click.Command) -> set[str]:
    ctx = click.Context(command, info_name=command.name, **command.context_settings)
    return {o for p in command.get_params(ctx) if not getattr(p, "hidden", False) for o in p.opts + p.secondary_opts}


def test_every_flag_a_help_text_names_exists_on_that_command():
    all_flags = set().union(*(visible_flags(c) for c in commands().values()))
    bad = []
    for name, command in commands().items():
        own = visible_flags(command)
        for flag, text in [*help_texts(command).items(), ("(description)", command.help or "")]:
            for m in FLAG.finditer(text):
                mention = "--" + m.group(1)
                before = text[:m.start()]
                other = re.search(r"charlm (\w+)(?: [^;,.]*)?$", before)
                if other and other.group(1) in commands() and other.group(1) != name:
                    ok = mention in visible_flags(cli.commands[other.group(1)])
                else:
                    ok = mention in own
                if not ok:
                    bad.append(f"charlm {name} {flag}: {mention}" + (" (another command's)" if mention in all_flags else ""))
    assert not bad, bad


def string_constants(path: Path):
    """(line, text) of every string literal in a module (f-strings by their literal parts)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value


def test_every_flag_named_in_the_package_exists_on_some_command():
    known = set().union(*(visible_flags(c) for c in commands().values())) | visible_flags(cli) | FOREIGN
    # old spellings are declared (and named in their own notice) in cli.py; scripts/gen_cli_doc.py has --check
    known |= {o for c in commands().values() for p in c.params if getattr(p, "replaced_by", None) for o in p.opts}
    known |= {"--check"}
    bad = []
    for path in sorted((ROOT / "charlm").rglob("*.py")):
        for line, text in string_constants(path):
            for m in FLAG.finditer(text):
                if "--" + m.group(1) not in known:
                    bad.append(f"{path.relative_to(ROOT)}:{line}: --{m.group(1)}")
    assert not bad, bad


def test_one_spelling_per_concept_across_commands():
    """A parameter (by its name) is spelled the same on every command that has it, and old spellings are hidden."""
    spelled: dict[str, set] = {}
    choices: dict[str, set] = {}
    for command in commands().values():
        for p in command.params:
            if isinstance(p, click.Option) and not p.hidden:
                spelled.setdefault(p.name, set()).add(p.opts[0])
                if isinstance(p.type, click.Choice):
                    choices.setdefault(p.opts[0], set()).add(tuple(p.type.choices))
    assert {n: s for n, s in spelled.items() if len(s) > 1} == {}
    # a flag with choices offers the same ones wherever it appears (--device, --unknown, ...), --preset apart:
    # compare cannot choose a recipe per run of a grid
    assert {f: c for f, c in choices.items() if len(c) > 1 and f != "--preset"} == {}
    for command in ("generate", "evaluate"):
        assert "--num-samples" in visible_flags(cli.commands[command])
        assert "--samples" not in visible_flags(cli.commands[command])


def test_decoding_specs_are_spelled_as_the_flags():
    from charlm.generate.sampling import parse_decoding, parse_decodings
    from charlm.report.evaluate import DEFAULT_DECODINGS

    assert parse_decoding("top-k=5") == parse_decoding("top_k=5")
    assert parse_decoding("top-k=40+temperature=0.7+repetition-penalty=1.2").label() == \
        "temperature=0.7+top-k=40+repetition-penalty=1.2"
    generate_flags = visible_flags(cli.commands["generate"])
    for setting in parse_decodings(DEFAULT_DECODINGS + ",top-p=0.5+repetition-penalty=1.1"):
        for part in setting.label().split("+"):
            key = part.partition("=")[0]
            assert key == "greedy" or f"--{key}" in generate_flags, part
    assert DEFAULT_DECODINGS in help_texts(cli.commands["evaluate"])["--decoding"]


def test_old_samples_spelling_still_works_with_a_notice(tiny_run):
    run_dir, _ = tiny_run
    common = ["evaluate", "--checkpoint", run_dir, "--decoding", "top-k=2", "--length", "4", "--prefix", "分开"]
    new = run(*common, "--num-samples", "2")
    old = run(*common, "--samples", "2")
    assert new.exit_code == 0 and old.exit_code == 0, old.output
    assert "| top-k=2 | 2 |" in new.stdout
    assert old.stdout == new.stdout
    notice = [ln for ln in old.stderr.splitlines() if "--samples" in ln]
    assert notice == ["warning: --samples is deprecated and will be removed; use --num-samples"]
    assert "--samples" not in new.stderr
    assert_one_line_error(run(*common, "--samples", "2", "--num-samples", "3"), "--num-samples")


# --- docs/cli.md ------------------------------------------------------------------------

def test_docs_cli_md_is_generated_from_the_commands():
    from charlm.cli.clidoc import render

    text = render()
    for name, command in commands().items():
        assert f"## charlm {name}" in text
        for flag in visible_flags(command):
            assert f"`{flag}`" in text, (name, flag)
    assert "| `charlm evaluate --samples` | `--num-samples` |" in text
    doc = ROOT / "docs" / "cli.md"
    assert doc.read_text(encoding="utf-8") == text, "docs/cli.md is out of date: run python scripts/gen_cli_doc.py"


# --- report conclusions only where the seeds agree --------------------------------------

def summary(tmp_path, model, curves, sampler="random", hidden=8):
    """A Summary whose seed i has validation curve curves[i] (one value per epoch)."""
    runs = []
    for seed, curve in enumerate(curves):
        config = Config(model=model, sampler=sampler, hidden=hidden, seed=seed, epochs=len(curve))
        metrics = [{"epoch": e + 1, "train_ppl": v, "val_ppl": v, "seconds": 1.0, "chars_per_sec": 1.0}
                   for e, v in enumerate(curve)]
        runs.append(Run(seed + 1, config, tmp_path / f"{model}-{sampler}-{seed}", "trained", metrics=metrics))
    return Summary(model, sampler, hidden, "adam lr 0.002", runs)


def test_overfits_only_when_every_seed_rose(tmp_path):
    # seed 0 ended 15% above its best; seeds 1 and 2 were still falling at the last epoch (the case)
    mixed = summary(tmp_path, "rnn-scratch", [[200, 100, 150], [200, 150, 120], [200, 150, 125]])
    text = " ".join(conclusions([mixed]))
    assert "overfits" not in text
    assert "seeds disagree on overfitting" in text and "seed 0" in text and "seeds 1, 2" in text
    risen = summary(tmp_path, "rnn", [[200, 100, 150], [200, 110, 130], [200, 100, 140]])
    assert any(line.startswith("rnn · random · h8 overfits") for line in conclusions([risen]))


def test_best_is_claimed_only_when_the_seeds_support_it(tmp_path):
    # overlapping seeds: the lower mean is not called best, and the sentence names the seeds that disagree
    a = summary(tmp_path, "rnn", [[100], [130]], sampler="consecutive")
    b = summary(tmp_path, "rnn", [[120], [125]], sampler="random")
    lines = conclusions([a, b])
    assert not any("Best" in line for line in lines)
    assert lines[0].startswith("**Lowest mean: rnn · consecutive · h8**")
    assert "seed 0 of rnn · random · h8 (120.000) beat seed 1 of rnn · consecutive · h8 (130.000)" in lines[1]
    assert any(line.startswith("Sampler (") and "the seeds disagree" in line for line in lines)
    # every seed lower: a claim
    c = summary(tmp_path, "rnn", [[100], [101]], sampler="consecutive")
    lines = conclusions([c, b])
    assert lines[0].startswith("**Best: rnn · consecutive · h8**")
    assert "every seed of rnn · consecutive · h8 beat every seed of rnn · random · h8" in lines[1]
    assert any(line.startswith("Sampler (") and "consecutive is lower (every seed" in line for line in lines)
    # one seed each: no claim, and the way to make one
    lines = conclusions([summary(tmp_path, "rnn", [[100]]), summary(tmp_path, "gru", [[120]])])
    assert lines[0].startswith("**Lowest mean:") and "--seeds 2" in lines[1]


# --- generate --interactive in a terminal ------------------------------------------------

def test_interactive_terminal_says_how_to_leave_repeats_and_quits(tiny_run, monkeypatch):
    run_dir, _ = tiny_run
    monkeypatch.setattr(generate_module, "_is_terminal", lambda stream: True)
    result = run("generate", "--checkpoint", run_dir, "--interactive", "--length", "3",
                 input="分开\n\nquit\n不分开\n")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("Ctrl-D") == 1
    assert result.stdout.count("==> prefix '分开'") == 2  # the empty line asked again
    assert "不分开" not in result.stdout  # quit left before it
    assert "error" not in result.stderr


# --- the resume line ----------------------------------------------------------------------

def test_resume_says_where_in_the_epoch_it_continues(tmp_path, corpus_file):
    from charlm.data.corpus import load_corpus
    from charlm.train.loop import train
    from charlm.train.state import TrainingInterrupted

    config = Config(corpus=str(corpus_file), hidden=8, batch_size=4, num_steps=6, epochs=2, pred_every=0,
                    device="cpu", val_fraction=0.2, preset="none").validate()
    corpus = load_corpus(config)
    out = tmp_path / "run"
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] >= 5

    with pytest.raises(TrainingInterrupted) as info:
        train(config, corpus, out, should_stop=stop)
    e = info.value
    result = run("train", "--resume", out)
    assert result.exit_code == 0, result.output
    assert f"(resuming in epoch {e.epoch} at minibatch {e.batch + 1} of {e.total})" in result.stdout
    again = run("train", "--resume", out, "--epochs", "3")
    assert again.exit_code == 0, again.output
    assert "(resuming after epoch 2)" in again.stdout


# --- $CHARLM_DATA -------------------------------------------------------------------------

def test_a_missing_charlm_data_is_said_before_falling_back(tmp_path, monkeypatch, corpus_file):
    from charlm.data.corpus import DEFAULT_NAME, resolve_corpus

    work = tmp_path / "work"
    work.mkdir()
    shared = tmp_path / "shared" / "data"
    shared.mkdir(parents=True)
    with zipfile.ZipFile(shared / DEFAULT_NAME, "w") as zf:
        zf.writestr("jaychou_lyrics.txt", corpus_file.read_text(encoding="utf-8"))
    monkeypatch.chdir(work)
    monkeypatch.setenv("CHARLM_DATA", str(tmp_path / "nowhere"))
    said = []
    assert resolve_corpus(None, said.append) == Path("..") / "shared" / "data" / DEFAULT_NAME
    assert len(said) == 1 and str(tmp_path / "nowhere") in said[0] and "does not exist" in said[0]
    seen = record_runs(monkeypatch)
    result = run("train", "--out", tmp_path / "run", "--preset", "none", "--batch-size", "4", "--num-steps", "6")
    assert result.exit_code == 0, result.output
    warnings = [ln for ln in result.stderr.splitlines() if "CHARLM_DATA" in ln]
    assert len(warnings) == 1 and warnings[0].startswith("warning: $CHARLM_DATA=") and seen
    # set to a folder that holds the corpus: nothing to say
    monkeypatch.setenv("CHARLM_DATA", str(shared))
    said.clear()
    assert resolve_corpus(None, said.append) == shared / DEFAULT_NAME and said == []
