"""Song forms in generation: exact by construction for every strategy, on Chinese and English, and one-line errors.

A tiny model writes poor text, which is the point: whatever it wants, every sample must still have
the form's line count, lengths, fixed characters and rhyme classes.
"""

import json

import pytest

from charlm.data.vocab import Vocab
from charlm.forms import rhyme
from charlm.forms.rhyme_index import zh_class_masks, zh_groups_of
from charlm.generate.sampling import DEFAULT_DECODING
from helpers import cli, fails, train_args

# lines that rhyme in pairs (言前, 江阳, 一七, 发花), with a title line per piece: a small titled corpus
ZH = ("春晓\n春风吹过天边的云烟，我在窗前想你的脸。\n明月照着故乡的河水，梦里回到旧时的家。\n\n"
      "夜行\n月光落在长长的路上，风声唱着远方的歌。\n山高水长不见你模样，一个人走过了江河。\n\n") * 6
EN = ("the night is long and the day is gone\nmy heart is light and the song is done\n"
      "i walk the road where the river goes\nand dream of you when the evening glows\n\n") * 8
STRATEGIES = [[], ["--greedy"], ["--num-beams", "3"], ["--temperature", "1.5", "--top-k", "20"]]


def _trained(tmp_path_factory, name: str, text: str):
    """A tiny GRU trained for two epochs on `text` (module-scoped: the tests only generate from it)."""
    from charlm.cli.app import main

    d = tmp_path_factory.mktemp(name)
    (d / "text.txt").write_text(text, encoding="utf-8")
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in train_args(d / "text.txt", d / "run", "--epochs", "2", "--model", "gru",
                                         "--embedding", "8")])
    assert info.value.code == 0
    return d / "run"


@pytest.fixture(scope="module")
def zh_run(tmp_path_factory):
    return _trained(tmp_path_factory, "zh", ZH)


@pytest.fixture(scope="module")
def en_run(tmp_path_factory):
    return _trained(tmp_path_factory, "en", EN)


def samples(run, capsys, *args):
    status, out, err = cli(["generate", "--checkpoint", run, "--format", "jsonl", "--seed", "3", *args], capsys)
    assert status == 0, err
    return [json.loads(line) for line in out.splitlines()]


def zh_class(ch):
    groups = zh_groups_of(ch)
    assert len(groups) == 1, (ch, groups)  # a rhyme slot only takes characters of one class
    return next(iter(groups))


@pytest.mark.parametrize("strategy", STRATEGIES, ids=["sample", "greedy", "beams", "hot"])
def test_template_is_exact_for_every_strategy(zh_run, capsys, strategy):
    template = "春风_____，______。/明月______，_______。"
    n = 1 if strategy and strategy[0] == "--greedy" else 3
    rows = samples(zh_run, capsys, "--prefix", "春风", "--template", template, "--rhyme-scheme", "AA",
                   "--num-samples", str(n), *strategy)
    assert len(rows) == n
    want = template.split("/")
    for row in rows:
        lines = (row["prefix"] + row["text"]).split("\n")
        assert len(lines) == 2, row["text"]
        for line, t in zip(lines, want):
            assert len(line) == len(t)
            for c, w in zip(line, t):
                if w == "_":
                    assert not rhyme_punct(c)
                else:
                    assert c == w  # fixed characters and punctuation kept
        ends = [line[t.rfind("_")] for line, t in zip(lines, want)]
        assert zh_class(ends[0]) == zh_class(ends[1])
        assert row["form"]["complete"] and row["form"]["scheme"] == "AA"


def rhyme_punct(c):
    from charlm.forms.template import is_punct
    return is_punct(c) or c.isspace()


def test_line_lengths_and_scheme_over_many_samples(zh_run, capsys):
    rows = samples(zh_run, capsys, "--prefix", "月光", "--line-lengths", "5,7,5,7", "--rhyme-scheme", "ABAB",
                   "--num-samples", "12", "--max-copy", "0")
    for row in rows:
        lines = (row["prefix"] + row["text"]).split("\n")
        assert [len(x) for x in lines] == [5, 7, 5, 7]
        classes = [zh_class(x[-1]) for x in lines]
        assert classes[0] == classes[2] and classes[1] == classes[3] and classes[0] != classes[1]  # B is a new rhyme
        assert row["form"]["line_classes"] == [rhyme.line_class(x, "zh")[0] for x in lines]


def test_rhyme_class_asked_by_name_or_character(zh_run, capsys):
    names, masks = zh_class_masks(Vocab.build(ZH))
    for asked in ("言前", "天"):
        rows = samples(zh_run, capsys, "--prefix", "春风", "--line-lengths", "6,6,6", "--rhyme", asked,
                       "--rhyme-scheme", "AAA", "--num-samples", "4")
        for row in rows:
            ends = [x[-1] for x in (row["prefix"] + row["text"]).split("\n")]
            assert {zh_class(c) for c in ends} == {"言前"}
    assert "言前" in names and masks[names.index("言前")].sum() >= 3


def test_named_form_of_a_titled_corpus_starts_with_its_title(zh_run, capsys):
    status, out, err = cli(["forms", "--checkpoint", zh_run], capsys)
    assert status == 0, err
    assert "春晓" in out and "夜行" in out and "titled" in out
    rows = samples(zh_run, capsys, "--form", "春晓", "--num-samples", "4")
    for row in rows:
        title, *body = (row["prefix"] + row["text"]).split("\n")
        assert title == "春晓"
        assert [len(x) for x in body] == [len("春风吹过天边的云烟，我在窗前想你的脸。"), len("明月照着故乡的河水，梦里回到旧时的家。")]
        assert all(x[9] == "，" and x[-1] == "。" for x in body)
        assert row["form"]["name"] == "春晓"


def test_seed_reproduces_a_formed_sample(zh_run, capsys):
    args = ("--prefix", "春风", "--rhyme-scheme", "AABB", "--lines", "4", "--num-samples", "2")
    assert samples(zh_run, capsys, *args) == samples(zh_run, capsys, *args)


def test_english_lines_count_words_and_rhyme_by_the_cmu_dictionary(en_run, capsys):
    for strategy in STRATEGIES:
        n = 1 if strategy and strategy[0] == "--greedy" else 3
        rows = samples(en_run, capsys, "--prefix", "the ", "--line-lengths", "5,5,5,5", "--rhyme-scheme", "ABAB",
                       "--num-samples", str(n), *strategy)
        for row in rows:
            lines = (row["prefix"] + row["text"]).split("\n")
            assert len(lines) == 4, row["text"]
            assert all(len(x.split()) == 5 for x in lines), lines
            last = [x.split()[-1].strip(",.;:!?") for x in lines]
            classes = [rhyme.en_word_class(w) for w in last]
            assert all(not guessed and cls for cls, guessed in classes), last
            assert classes[0][0] == classes[2][0] and classes[1][0] == classes[3][0], last
            assert classes[0][0] != classes[1][0], last  # B is another rhyme than A
            assert row["form"]["complete"]
            assert last[0].lower() != last[2].lower() and last[1].lower() != last[3].lower()  # no rhyme on itself


def test_stream_prints_the_same_form(zh_run, capsys):
    status, out, err = cli(["generate", "--checkpoint", zh_run, "--prefix", "春风", "--line-lengths", "4,4",
                            "--stream", "--seed", "1"], capsys)
    assert status == 0, err
    assert [len(x) for x in out.strip().split("\n")] == [4, 4]


@pytest.mark.parametrize("args, needle", [
    (["--form", "沁园春"], "春晓"),  # an unknown form lists the known ones
    (["--line-lengths", "5,0,5"], "--line-lengths must be whole numbers from 1"),
    (["--line-lengths", "5,x"], "separated by commas"),
    (["--template", "春风吹过。"], "no slot"),
    (["--rhyme", "ü"], "--rhyme"),
    (["--rhyme-scheme", "A1"], "--rhyme-scheme is letters"),
    (["--form", "春晓", "--line-lengths", "5,5"], "give one"),
])
def test_bad_forms_get_one_line(zh_run, capsys, args, needle):
    fails(["generate", "--checkpoint", zh_run, "--prefix", "春风", *args], capsys, needle)


def test_rhyme_on_a_script_without_rhyme_data(tmp_path, capsys):
    text = "καλημέρα σας φίλοι μου\nτο φως της μέρας έρχεται\n" * 30
    (tmp_path / "el.txt").write_text(text, encoding="utf-8")
    status, _, err = cli(train_args(tmp_path / "el.txt", tmp_path / "run"), capsys)
    assert status == 0, err
    fails(["generate", "--checkpoint", tmp_path / "run", "--rhyme-scheme", "AABB"], capsys, "rhyme needs Chinese")
    rows = samples(tmp_path / "run", capsys, "--line-lengths", "3,3")  # line forms still work
    assert [len(x.split()) for x in (rows[0]["prefix"] + rows[0]["text"]).split("\n")] == [3, 3]


def test_evaluate_reports_form_settings(zh_run, capsys, tmp_path):
    out = tmp_path / "eval.json"
    status, text, err = cli(["evaluate", "--checkpoint", zh_run, "--prefix", "春风", "--num-samples", "3",
                             "--decoding", "temperature=0.8,temperature=0.8+form=春晓,rhyme-scheme=AABB+lines=4",
                             "--json", out], capsys)
    assert status == 0, err
    rows = {row["decoding"]: row for row in json.loads(out.read_text(encoding="utf-8"))["rows"]}
    plain, named = rows["temperature=0.8"], rows["temperature=0.8+form=春晓"]
    rhymed = rows[DEFAULT_DECODING.label() + "+rhyme-scheme=AABB+lines=4"]  # no decoding key: generate's default
    assert "format_accuracy" not in plain and "fluency_cost" not in plain  # no form: no form columns
    assert named["format_accuracy"] == 1.0 and named.get("rhyme_accuracy", 1.0) == 1.0
    assert rhymed["format_accuracy"] == 1.0 and rhymed["rhyme_accuracy"] == 1.0
    assert all(isinstance(r["fluency_cost"], float) for r in (named, rhymed))
    assert "| format | rhyme | fluency cost |" in text and "the training text's own is" in text


@pytest.mark.parametrize("setting, needle", [
    ("rhyme-scheme=", "needs a value"),
    ("form=沁园春", "no form '沁园春'"),
    ("lines=two+rhyme-scheme=AA", "whole numbers"),
    ("line-lengths=5:0", "line-lengths must be whole numbers from 1"),
])
def test_evaluate_refuses_bad_form_settings(zh_run, capsys, setting, needle):
    fails(["evaluate", "--checkpoint", zh_run, "--prefix", "春风", "--decoding", setting], capsys, needle)


def test_the_copy_guard_default_follows_the_script(zh_run, en_run):
    """7 characters for Chinese; for English about three words (7 would split its words)."""
    from charlm.generate.copyguard import guard_path, load_guard, run_max_copy
    from charlm.run.checkpoint import open_checkpoint

    for run, want in ((zh_run, 7), (en_run, 16)):
        assert run_max_copy(open_checkpoint(run, "cpu").payload) == want
        assert load_guard(guard_path(run / "best.pt")).n == want  # the index training wrote is the default's


def test_the_page_uses_the_run_s_copy_guard_default(en_run):
    """The server's default span is the run's (16 for English), in its defaults and when a request gives none."""
    pytest.importorskip("starlette")
    from charlm.web.engine import Engine
    from charlm.web.fields import parse_request

    engine = Engine(en_run / "best.pt")
    assert engine.max_copy == 16 and engine.describe()["defaults"]["max_copy"] == 16
    assert parse_request({"prefix": "the "}, engine.vocab, max_copy=engine.max_copy).max_copy == 16
    assert parse_request({"prefix": "the ", "max_copy": 5}, engine.vocab, max_copy=engine.max_copy).max_copy == 5
