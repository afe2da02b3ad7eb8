"""`charlm generate` end to end: decoding flags, batched samples, formats, streaming, interactive mode, bad input."""

import json

import pytest
from click.testing import CliRunner

from charlm.cli.app import cli
from helpers import assert_one_line_error as one_line_error


@pytest.fixture(scope="module")
def run_dir(tiny_run):
    """A run directory holding an nn.RNN (hidden 16) trained 3 epochs through the CLI."""
    return tiny_run[0]


def gen(run_dir, *args, input=None):
    return CliRunner().invoke(cli, ["generate", "--checkpoint", str(run_dir), "--device", "cpu", *map(str, args)],
                              input=input)


def ok(result):
    assert result.exit_code == 0, result.output
    return result.stdout




def test_one_sample_is_the_text_alone(run_dir):
    out = ok(gen(run_dir, "--prefix", "不分开", "--length", 20, "--seed", 1))
    # the text and one line end (blank space at the very end of a sample is dropped)
    assert out.startswith("不分开") and out.endswith("\n") and len(out) <= 3 + 20 + 1
    assert ok(gen(run_dir, "--prefix", "不分开", "--length", 20, "--seed", 1)) == out


def test_top_k_1_and_one_beam_equal_greedy(run_dir):
    greedy = ok(gen(run_dir, "--prefix", "分开", "--length", 30, "--greedy"))
    assert ok(gen(run_dir, "--prefix", "分开", "--length", 30, "--top-k", 1, "--seed", 5)) == greedy
    assert ok(gen(run_dir, "--prefix", "分开", "--length", 30, "--num-beams", 1, "--greedy")) == greedy


def test_jsonl_parses_with_prefix_text_and_logprobs(run_dir):
    out = ok(gen(run_dir, "--prefix", "分开", "--prefix", "我", "--length", 15, "--temperature", 0.9,
                 "--num-samples", 3, "--format", "jsonl"))
    records = [json.loads(line) for line in out.splitlines()]
    assert [(r["prefix"], r["sample"]) for r in records] == [(p, i) for p in ("分开", "我") for i in (1, 2, 3)]
    for r in records:
        assert 0 < len(r["text"]) <= 15 and len(r["logprobs"]) == len(r["text"])
        assert all(lp <= 0 for lp in r["logprobs"])
        assert r["logprob"] == pytest.approx(sum(r["logprobs"]), abs=1e-3)
        assert r["decoding"] == "temperature=0.9+top-p=0.9"  # the default top-p applies


def test_several_samples_get_parseable_headers_and_seeds_reproduce(run_dir):
    args = ("--prefix", "分开", "--length", 25, "--top-p", 0.95, "--num-samples", 4)
    out = ok(gen(run_dir, *args, "--seed", 1))
    headers = [line for line in out.splitlines() if line.startswith("==> ")]
    assert headers == [f"==> prefix '分开', sample {i} of 4 <==" for i in (1, 2, 3, 4)]
    assert ok(gen(run_dir, *args, "--seed", 1)) == out
    assert ok(gen(run_dir, *args, "--seed", 2)) != out


def test_stream_prints_the_same_text(run_dir):
    args = ("--prefix", "分开", "--length", 25, "--temperature", 0.8, "--seed", 3)
    assert ok(gen(run_dir, *args, "--stream")) == ok(gen(run_dir, *args))


def test_interactive_answers_each_line(run_dir):
    out = ok(gen(run_dir, "--interactive", "--length", 12, "--greedy", input="分开\n\n不分开\n我\n"))
    # each answer has a header line (the samples may hold line breaks of their own); the blank line is skipped
    headers = [line for line in out.splitlines() if line.startswith("==> ")]
    assert headers == [f"==> prefix '{p}', sample 1 of 1 <==" for p in ("分开", "不分开", "我")]
    batch = ok(gen(run_dir, "--prefix", "分开", "--prefix", "不分开", "--prefix", "我", "--length", 12, "--greedy"))
    assert out == batch  # the same text and headers as the prefixes given as flags


def test_interactive_reports_a_bad_line_and_goes_on(run_dir):
    result = gen(run_dir, "--interactive", "--length", 8, "--seed", 0, input="分开龘\n不分开\n")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [line for line in result.stderr.strip().splitlines()
                                                  if line.startswith("error: ")]
    assert "龘" in result.stderr
    assert result.stdout.startswith("==> prefix '不分开', sample 1 of 1 <==\n不分开")


def test_unknown_prefix_character_is_one_line_error(run_dir):
    one_line_error(gen(run_dir, "--prefix", "分开龘", "--length", 5), "龘", "--unknown skip")


def test_unknown_skip_warns_and_generates(run_dir):
    result = gen(run_dir, "--prefix", "分开龘", "--length", 10, "--unknown", "skip", "--seed", 2)
    assert result.exit_code == 0, result.output
    assert "warning" in result.stderr and "龘" in result.stderr
    assert result.stdout == ok(gen(run_dir, "--prefix", "分开", "--length", 10, "--seed", 2))
    one_line_error(gen(run_dir, "--prefix", "龘", "--unknown", "skip"), "nothing is left")


@pytest.mark.parametrize("args, fragment", [
    (("--greedy", "--temperature", "0.5"), "--greedy"),
    (("--num-beams", "4", "--top-k", "5"), "beam search does not sample"),
    (("--temperature", "0"), "--temperature"),
    (("--top-p", "0"), "--top-p"),
    (("--num-beams", "2", "--num-samples", "3"), "at most --num-beams"),
    (("--stream", "--format", "jsonl"), "--stream"),
    (("--stream", "--num-beams", "2"), "--stream"),
    (("--interactive", "--prefix", "分开"), "--interactive"),
    (("--repetition-penalty", "0"), "--repetition-penalty"),
])
def test_conflicting_or_bad_flags_are_one_line_errors(run_dir, args, fragment):
    one_line_error(gen(run_dir, *args), fragment)


def test_repetition_penalty_changes_greedy_text(run_dir):
    plain = ok(gen(run_dir, "--prefix", "分开", "--length", 40, "--greedy"))
    penalised = ok(gen(run_dir, "--prefix", "分开", "--length", 40, "--greedy", "--repetition-penalty", 3.0))
    assert penalised != plain
    # more distinct characters once repeats are discouraged
    assert len(set(penalised.rstrip("\n"))) > len(set(plain.rstrip("\n")))
