"""`charlm evaluate`: perplexity on a text and per-setting sample-quality rows, library and CLI."""

import json
import math

import pytest
from click.testing import CliRunner

from charlm.run.checkpoint import load_checkpoint, model_from_checkpoint
from charlm.cli.app import cli
from charlm.data.corpus import load_corpus
from charlm.generate.decode import generate
from charlm.generate.sampling import parse_decodings
from charlm.errors import CharlmError
from charlm.report.evaluate import (COLUMNS, DEFAULT_DECODINGS, decoding_rows, evaluate_model, markdown_table,
                             text_indices)
from charlm.train.validate import perplexity as carried_perplexity

from conftest import LYRICS as TEXT


@pytest.fixture(scope="module")
def run(tiny_run):
    """(run directory, corpus path) of an nn.RNN (hidden 16) trained 3 epochs through the CLI."""
    return tiny_run


def evaluate_cli(run_dir, *args):
    return CliRunner().invoke(cli, ["evaluate", "--checkpoint", str(run_dir), "--device", "cpu", *map(str, args)])


def loaded(run_dir):
    payload = load_checkpoint(run_dir / "best.pt")
    model, vocab, config = model_from_checkpoint(payload)
    return payload, model, vocab, config


def test_rows_count_samples_and_measure_only_the_continuation(run):
    run_dir, _ = run
    _, model, vocab, _ = loaded(run_dir)
    settings = parse_decodings("greedy,temperature=0.8,num_beams=3")
    greedy_text = generate(model, vocab, "分开", 30)[0].text
    # with the greedy continuation itself as "training text", greedy copies everything and the prefix is not counted
    rows = decoding_rows(model, vocab, greedy_text, settings, ["分开"], num_samples=5, length=30, seed=0)
    assert [r["decoding"] for r in rows] == ["greedy", "temperature=0.8", "num-beams=3"]
    assert [r["samples"] for r in rows] == [1, 5, 1]
    assert rows[0]["longest_copy"] == 30 and rows[0]["copied_fraction"] == 1.0
    assert rows[0]["example"] == {"prefix": "分开", "text": greedy_text}
    for r in rows:
        for key in ("distinct_1", "distinct_2", "distinct_3", "repeat_4", "copied_fraction"):
            assert 0.0 <= r[key] <= 1.0
        assert r["mean_logprob"] < 0
    assert rows[0]["mean_logprob"] == pytest.approx(generate(model, vocab, "分开", 30)[0].logprob / 30, abs=1e-5)
    # seeded per setting: a row does not depend on which settings come before it
    alone = decoding_rows(model, vocab, greedy_text, settings[1:2], ["分开"], num_samples=5, length=30, seed=0)
    assert alone[0] == rows[1]


def test_text_indices_reports_or_skips_unknown_characters(run):
    _, _, vocab, _ = loaded(run[0])
    with pytest.raises(CharlmError, match="2 distinct characters.*'龘'.*'X'"):
        text_indices("分开龘X龘", vocab)
    indices, skipped = text_indices("分开龘X龘", vocab, unknown="skip")
    assert skipped == 3 and vocab.decode(indices) == "分开"


def test_evaluate_model_defaults_to_the_validation_text(run, tmp_path):
    run_dir, corpus_path = run
    payload, model, vocab, config = loaded(run_dir)
    corpus = load_corpus(config)
    result = evaluate_model(model, vocab, payload, decodings=parse_decodings("greedy"), prefixes=["分开"],
                            num_samples=2, length=10)
    assert result["perplexity"]["value"] == pytest.approx(carried_perplexity(model, corpus.val))
    assert result["perplexity"]["characters"] == len(corpus.val)
    assert result["settings"]["training_chars"] == len(corpus.train)
    # a moved corpus that is a different text is refused by fingerprint
    other = tmp_path / "other.txt"
    other.write_text(TEXT[::-1], encoding="utf-8")
    with pytest.raises(CharlmError, match="not the text this model was trained on"):
        evaluate_model(model, vocab, payload, corpus_path=str(other), decodings=parse_decodings("greedy"))


def test_markdown_table_has_a_row_per_setting():
    row = {"decoding": "top_k=5", "samples": 16, "distinct_1": 0.5, "distinct_2": 0.75, "distinct_3": 0.875,
           "repeat_4": 0.0, "longest_copy": 7, "copied_fraction": 0.0, "mean_logprob": -2.5,
           "longest_copy_unguarded": 9, "copied_fraction_unguarded": 0.25, "mean_logprob_unguarded": -2.25,
           "example": {}}
    lines = markdown_table([row, {**row, "decoding": "greedy"}]).splitlines()
    shown = [c for c in COLUMNS if c[0] in row]  # no form setting: no form columns
    assert len(shown) == 12 and len(lines) == 4 and all(line.count("|") == len(shown) + 1 for line in lines)
    assert lines[2] == "| top_k=5 | 16 | 0.500 | 0.750 | 0.875 | 0.000 | 7 | 0.000 | -2.500 | 9 | 0.250 | -2.250 |"


def test_cli_default_decodings_are_the_library_default():
    param = next(p for p in cli.commands["evaluate"].params if p.name == "decodings")
    assert param.default == DEFAULT_DECODINGS


def test_cli_prints_table_and_writes_json(run, tmp_path):
    run_dir, _ = run
    out_json = tmp_path / "eval.json"
    result = evaluate_cli(run_dir, "--num-samples", 3, "--length", 20, "--json", out_json, "--show-samples")
    assert result.exit_code == 0, result.output
    data = json.loads(out_json.read_text(encoding="utf-8"))
    labels = [d.label() for d in parse_decodings(DEFAULT_DECODINGS)]
    assert [r["decoding"] for r in data["rows"]] == labels
    assert [r["samples"] for r in data["rows"]] == [2, 6, 6, 6, 2, 6]  # two default prefixes
    for r in data["rows"]:  # the guard on (default --max-copy) and off, from the same seed
        assert r["longest_copy"] <= data["settings"]["max_copy"] and r["copied_fraction"] == 0.0
        assert r["longest_copy_unguarded"] >= 0 and r["mean_logprob_unguarded"] < 0
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(labels)
    for row, line in zip(data["rows"], table[1:]):
        assert line.startswith(f"| {row['decoding']} | {row['samples']} | {row['distinct_1']:.3f} |")
    assert f"perplexity {data['perplexity']['value']:.3f}" in result.stdout
    assert math.isfinite(data["perplexity"]["value"])
    assert sum(line.startswith("- **") for line in result.stdout.splitlines()) == len(labels)


def test_cli_text_file_with_unknown_characters(run, tmp_path):
    run_dir, _ = run
    text = tmp_path / "eval.txt"
    text.write_text("分开 我爱你 龘龘 你爱我\n", encoding="utf-8")
    result = evaluate_cli(run_dir, "--text", text, "--decoding", "greedy", "--length", 5)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "龘" in result.stderr and "--unknown skip" in result.stderr
    skipped = evaluate_cli(run_dir, "--text", text, "--decoding", "greedy", "--length", 5, "--unknown", "skip",
                           "--json", tmp_path / "e.json")
    assert skipped.exit_code == 0, skipped.output
    assert "skipped 2 characters" in skipped.stderr
    data = json.loads((tmp_path / "e.json").read_text(encoding="utf-8"))
    assert data["perplexity"]["skipped"] == 2 and data["perplexity"]["characters"] == len("分开 我爱你  你爱我\n")


@pytest.mark.parametrize("args, fragment", [
    (("--decoding", "top_q=3"), "cannot read"),
    (("--prefix", "龘"), "龘"),
    (("--text", "/nonexistent/file.txt"), "does not exist"),
])
def test_cli_bad_input_is_one_line_error(run, args, fragment):
    result = evaluate_cli(run[0], *args, "--length", 5)
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and fragment in result.stderr
