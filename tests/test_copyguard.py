"""The copy guard, verse shape, default prefixes and seeds: brute force on small texts, and `generate` end to end."""

import json
import re
import shlex

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from charlm.run.checkpoint import load_checkpoint
from charlm.cli.app import cli
from charlm.config import Config
from charlm.generate.copyguard import FILE_NAME, CopyGuard, build_keys, load_guard, save_guard
from charlm.data.corpus import load_corpus
from charlm.generate.decode import generate
from charlm.generate.sampling import Decoding, Sampler, apply_repetition_penalty
from charlm.models import build_model
from charlm.generate.verse import MIN_SONG_LINES, corpus_prefixes
from charlm.data.vocab import Vocab
from helpers import assert_one_line_error

TEXT = ("分开 不分开 我想就这样牵着你的手不放开\n爱可不可以简简单单没有伤害\n"
        "你靠着我的肩膀 你在我胸口睡着\n像这样的生活 我爱你 你爱我\n") * 6
SONGS = ("The sun is up\nthe day is long\nour road is wide\nwe sing along\nall day long\n\n"
         "The night is cold\nand the stars are out\nthe moon is high\nwe go home\nno doubt\n\n") * 8
STRATEGIES = [Decoding(), Decoding(sample=True, temperature=0.7), Decoding(sample=True, top_k=3),
              Decoding(sample=True, temperature=0.7, top_p=0.9), Decoding(num_beams=3)]


def counted_model(tmp_path, text, order=6):
    """A Kneser-Ney model of `order`: it memorises a small text, so unguarded greedy decoding recites it."""
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    config = Config(corpus=str(path), model="kn", order=order, val_fraction=0.2, device="cpu")
    corpus = load_corpus(config)
    model = build_model(config, len(corpus.vocab))
    model.fit_counts(corpus.train)
    return model.eval(), corpus


def copies_longer_than(n, prefix, text, corpus_text):
    """Spans of more than n characters of the corpus in prefix + text that contain a generated character."""
    full, start = prefix + text, len(prefix)
    return [full[i:i + n + 1] for i in range(max(0, start - n), len(full) - n) if full[i:i + n + 1] in corpus_text]


@pytest.fixture(scope="module")
def memoriser(tmp_path_factory):
    return counted_model(tmp_path_factory.mktemp("kn"), TEXT)


@pytest.mark.parametrize("n", [2, 4, 7])
def test_guard_bans_every_copy_longer_than_n_for_every_strategy(memoriser, n):
    model, corpus = memoriser
    guard = CopyGuard.build(corpus.vocab.encode(corpus.text), n, len(corpus.vocab))
    for decoding in STRATEGIES:
        samples = generate(model, corpus.vocab, ["分开", "我", "你靠着我的肩膀"], 40, decoding,
                           2 if decoding.num_beams > 1 else (3 if decoding.sample else 1),
                           torch.Generator().manual_seed(n), guard=guard)
        for s in samples:
            assert s.gave_way == 0
            assert len(s.text) == 40
            assert copies_longer_than(n, s.prefix, s.text, corpus.text) == [], (decoding.label(), s.text)


def test_without_the_guard_the_memoriser_recites(memoriser):
    model, corpus = memoriser
    for decoding in (Decoding(), Decoding(num_beams=3)):
        s = generate(model, corpus.vocab, "分开", 40, decoding)[0]
        assert len(copies_longer_than(7, s.prefix, s.text, corpus.text)) > 10  # so the test above can fail


def test_the_prefix_is_exempt_but_a_span_from_it_into_the_text_counts(memoriser):
    model, corpus = memoriser
    prefix = "我想就这样牵着你的手不放开\n爱可不"  # 17 characters of the corpus
    guard = CopyGuard.build(corpus.vocab.encode(corpus.text), 4, len(corpus.vocab))
    s = generate(model, corpus.vocab, prefix, 20, guard=guard)[0]
    assert s.gave_way == 0 and len(s.text) == 20  # a recited prefix is the user's right
    assert (prefix[-4:] + s.text[0]) not in corpus.text  # ... but the text may not continue its copy
    plain = generate(model, corpus.vocab, prefix, 20)[0]
    assert (prefix[-4:] + plain.text[0]) in corpus.text


def test_hash_collisions_only_ban_more():
    """Keys squeezed into few bits collide; every true continuation must still be banned."""
    rng = np.random.default_rng(0)
    indices = rng.integers(0, 5, size=3000)
    text = "".join("abcde"[i] for i in indices)
    n = 3
    guard = CopyGuard(build_keys(indices, n, 5), n, 5)
    windows = rng.integers(0, 5, size=(200, n))
    rows, chars = guard.banned(windows)
    banned = {(int(r), int(c)) for r, c in zip(rows, chars)}
    for r, w in enumerate(windows):
        context = "".join("abcde"[i] for i in w)
        for c in range(5):
            if context + "abcde"[c] in text:
                assert (r, c) in banned


def test_every_character_banned_gives_way_and_counts_it():
    vocab = Vocab("ab")
    torch.manual_seed(0)
    model = build_model(Config(model="rnn", hidden=4), 2).eval()
    guard = CopyGuard(build_keys(np.array([0, 0, 0, 1, 1, 0, 1, 0, 0, 1]), 1, 2), 1, 2)  # every pair occurs
    s = generate(model, vocab, "a", 10, guard=guard)[0]
    assert len(s.text) == 10 and s.gave_way == 10


def test_tiny_temperature_and_penalty_do_not_overflow_into_the_last_character():
    logits = torch.tensor([[1.0, 5.0, 2.0, -3.0]])
    for t in (1e-40, 1e-300, 5e-324):
        draws = [int(Sampler(temperature=t)(logits, torch.Generator().manual_seed(s))) for s in range(20)]
        assert set(draws) == {1}
    penalised = apply_repetition_penalty(logits, torch.tensor([[True, False, True, False]]), 1e-40)
    assert torch.isfinite(penalised).all() and int(penalised.argmax()) in (0, 2)
    assert Decoding(sample=True, temperature=1e-40, repetition_penalty=1e-40).validate()


def test_index_round_trips_through_a_file_loaded_with_weights_only(memoriser, tmp_path):
    _, corpus = memoriser
    guard = CopyGuard.build(corpus.vocab.encode(corpus.text), 5, len(corpus.vocab), corpus.fingerprint)
    save_guard(tmp_path / FILE_NAME, guard)
    raw = torch.load(tmp_path / FILE_NAME, weights_only=True)
    assert raw["keys"].dtype == torch.int64 and raw["n"] == 5
    back = load_guard(tmp_path / FILE_NAME)
    assert np.array_equal(back.keys, guard.keys) and (back.n, back.vocab_size, back.fingerprint) == \
        (5, len(corpus.vocab), corpus.fingerprint)
    assert load_guard(tmp_path / "missing.pt") is None


def test_default_prefixes_come_from_the_corpus():
    assert corpus_prefixes(TEXT, Vocab(sorted(set(TEXT)))) == ["分开", "不分开"]
    assert corpus_prefixes(SONGS, Vocab(sorted(set(SONGS)))) == ["The ", "the "]


# --- the command line -------------------------------------------------------------------------

def run(*args, input=None):
    return CliRunner().invoke(cli, [*map(str, args)], input=input)


@pytest.fixture(scope="module")
def song_run(tmp_path_factory):
    """A counted 6-gram model of short English songs separated by blank lines, trained through the CLI."""
    tmp = tmp_path_factory.mktemp("songs")
    corpus = tmp / "songs.txt"
    corpus.write_text(SONGS, encoding="utf-8")
    out = tmp / "run"
    result = run("train", "--corpus", corpus, "--out", out, "--model", "kn", "--order", 6, "--val-fraction", 0.2,
                 "--device", "cpu")
    assert result.exit_code == 0, result.output
    return out, corpus, result


def gen(run_dir, *args, input=None):
    return run("generate", "--checkpoint", run_dir, "--device", "cpu", *args, input=input)


def test_train_writes_the_index_and_quotes_the_hint(song_run):
    out, _, result = song_run
    assert (out / FILE_NAME).is_file()
    assert torch.load(out / FILE_NAME, weights_only=True)["format"] == "charlm-copyguard"
    hint = [line for line in result.output.splitlines() if line.startswith("generate with: ")][-1]
    assert shlex.split(hint)[-2:] == ["--prefix", "The "]  # the trailing space survives the shell
    assert "The " in result.output.replace("-> ", "")  # the progress samples used the corpus's own prefix


def test_default_generate_samples_from_the_runs_prefix_prints_the_seed_and_seed_reproduces(song_run):
    out, _, _ = song_run
    first = gen(out)
    assert first.exit_code == 0, first.output
    assert first.stdout.startswith("The ")
    seed = re.fullmatch(r"seed (\d+) \(reproduce with --seed \1\)", first.stderr.strip()).group(1)
    again = gen(out, "--seed", seed)
    assert again.stdout == first.stdout and again.stderr == ""


def test_songs_end_at_a_blank_line_unless_length_asks_for_more(song_run):
    out, corpus, _ = song_run
    texts = [gen(out, "--seed", s, "--max-copy", 0).stdout.rstrip("\n") for s in range(6)]
    for t in texts:  # one song: at least MIN_SONG_LINES lines, and it stops at the blank line
        assert "\n\n" not in t and len(t.split("\n")) >= MIN_SONG_LINES, t
    assert sum(len(t) < 90 for t in texts) >= 4  # most stopped at a song's end, before the 100 characters
    long = gen(out, "--seed", 1, "--max-copy", 0, "--length", 300).stdout.rstrip("\n")
    assert "\n\n" in long and "\n\n\n" not in long  # on through the end of a song, one empty line between
    assert len(long) > 200


@pytest.mark.parametrize("mode", [(), ("--stream",), ("--format", "jsonl"), ("--num-samples", 3)])
def test_lines_holds_in_every_output_mode(song_run, mode):
    out, _, _ = song_run
    result = gen(out, "--lines", 2, "--length", 300, "--seed", 4, *mode)
    assert result.exit_code == 0, result.output
    if "jsonl" in mode:
        samples = [r["prefix"] + r["text"] for r in map(json.loads, result.stdout.splitlines())]
    else:
        samples = [s for s in re.split(r"\n?==> .* <==\n", result.stdout) if s.strip()]
    assert samples
    for s in samples:
        assert len(s.rstrip("\n").split("\n")) <= 2, s


def test_lines_and_song_end_in_interactive_mode_and_stream_matches_batch(song_run):
    out, _, _ = song_run
    inter = gen(out, "--interactive", "--lines", 2, "--seed", 3, input="The \nand \n")
    assert inter.exit_code == 0, inter.output
    answers = [s for s in re.split(r"\n?==> .* <==\n", inter.stdout) if s.strip()]
    assert len(answers) == 2 and all(len(a.rstrip("\n").split("\n")) <= 2 for a in answers)
    for seed in range(3):
        assert gen(out, "--seed", seed, "--stream").stdout == gen(out, "--seed", seed).stdout


def test_greedy_with_several_samples_is_refused_but_beams_give_the_best(song_run):
    out, _, _ = song_run
    assert_one_line_error(gen(out, "--greedy", "--num-samples", 2), "--num-samples")
    beams = gen(out, "--num-beams", 3, "--num-samples", 2, "--format", "jsonl", "--length", 20)
    assert beams.exit_code == 0, beams.output
    assert len(beams.stdout.splitlines()) == 2


def test_a_run_without_index_or_corpus_generates_unguarded_with_one_line(song_run, tmp_path):
    out, corpus, _ = song_run
    old = tmp_path / "old"
    old.mkdir()
    (old / "best.pt").write_bytes((out / "best.pt").read_bytes())
    payload = load_checkpoint(old / "best.pt")
    payload["config"]["corpus"] = str(tmp_path / "gone.txt")
    torch.save(payload, old / "best.pt")
    result = gen(old, "--seed", 1)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no copy guard" in lines[0]
