"""Drafts and songs (issue #27): clean endings, a line rewritten from the text above it, song sections,
titles as the default prefix of a titled corpus, and the API's words for the page's controls."""

import json

import numpy as np

import pytest
import torch

from charlm.generate.sections import Section, parse_sections
from charlm.generate.verse import Shape, ShapeState, corpus_prefixes
from charlm.errors import CharlmError

starlette = pytest.importorskip("starlette", reason="the web extra is not installed: pip install -e '.[web]'")
pytest.importorskip("httpx", reason="the web extra is not installed: pip install -e '.[web]'")
pytestmark = pytest.mark.filterwarnings("ignore:.*httpx")


@pytest.fixture(scope="module")
def client(tiny_run):
    import warnings

    from charlm.web.app import create_app
    from charlm.web.engine import Engine

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient
    with TestClient(create_app(Engine(tiny_run[0] / "best.pt")), base_url="http://127.0.0.1") as c:
        yield c


def post(client, **body):
    return client.post("/api/generate", json=body)


# --- clean endings -----------------------------------------------------------------------------

class _Vocab:
    idx_to_char = list("ab \n。")
    char_to_idx = {c: i for i, c in enumerate(idx_to_char)}

    def __len__(self):
        return len(self.idx_to_char)


def _run(shape: Shape, text: str, length: int):
    state = ShapeState(shape, ["x"], _Vocab(), length)
    for ch in text[:length]:
        if not state.step(np.array([_Vocab.char_to_idx[ch]]))[0]:
            break
    return int(state.end[0])


def test_a_line_break_past_stop_after_ends_the_stream():
    shape = Shape(stop_after=3, clean_end=True)
    assert _run(shape, "ab\nab ab\nab", 20) == 8  # past 3 characters the next line break ends it, unwritten


def test_the_length_limit_cuts_back_to_the_last_line_end():
    assert _run(Shape(clean_end=True), "abab\nababab", 9) == 4  # not "abab\nabab": mid-line
    assert _run(Shape(clean_end=True), "ab a。bab", 7) == 5  # no line break: the last sentence end
    assert _run(Shape(), "abab\nababab", 9) == 9  # --length: exactly that many


def test_default_samples_end_at_a_line_end(client):
    texts = [s["text"] for s in post(client, prefix="分开", num_samples=8, seed=3).json()["samples"]]
    exact = [s["text"] for s in post(client, prefix="分开", num_samples=8, seed=3, length=120).json()["samples"]]
    d = post(client, prefix="分开", seed=3).json()["decoding"]
    assert d["stop_after"] == 100 and d["length"] == 300
    assert all(len(t) < 300 for t in texts)  # each stopped at a line break (song end, or past 100)
    assert all(len(t) == 120 for t in exact)  # an exact count stays available


# --- a line rewritten --------------------------------------------------------------------------

def test_a_line_rewritten_from_the_text_above_keeps_its_template_and_rhyme(client):
    above = "分开 不分开 我想就这样牵着你的手不放开\n爱可不可以简简单单没有伤害\n"
    r = post(client, prefix="", context=above, template="___ ___", rhyme_scheme="A", rhyme="怀来",
             candidates=4, seed=5)
    assert r.status_code == 200, r.text
    s = r.json()["samples"][0]
    assert len(s["text"]) == 7 and s["text"][3] == " " and "\n" not in s["text"]
    assert s["classes"] == ["怀来"] and s["form"]["complete"]
    assert r.json()["prefix"] == "" and r.json()["decoding"]["form"]["rhyme"] == "怀来"


def test_the_context_is_read_but_not_counted(client):
    above = "像这样的生活 我爱你 你爱我\n你靠着我的肩膀\n"
    a = post(client, prefix="爱", context=above, lines=2, seed=9, length=40).json()["samples"][0]["text"]
    assert a.count("\n") <= 1  # lines counts the prefix's line and the new ones, not the context's
    streamed = client.get("/api/generate/stream", params={"prefix": "爱", "context": above, "lines": 2, "seed": 9,
                                                          "length": 40}).text
    end = [b for b in streamed.split("\n\n") if b.startswith("event: end")][0]
    assert json.loads(end.split("data: ", 1)[1])["samples"][0]["text"] == a  # the batch and the lone run agree


def test_continue_from_a_context_without_a_prefix(client):
    r = post(client, prefix="", context="分开 不分开\n", seed=1, length=10)
    assert r.status_code == 200 and len(r.json()["samples"][0]["text"]) == 10
    r = post(client, prefix="", seed=1)
    assert r.status_code == 400 and "Prefix is empty" in r.json()["error"]


def test_rhymes_of_edited_lines(client):
    r = client.post("/api/rhymes", json={"lines": ["我想就这样牵着你的手不放开", "", "abc"]})
    assert r.json() == {"classes": ["怀来", None, None]}
    assert client.post("/api/rhymes", json={"lines": "x"}).status_code == 400


# --- the page's words ----------------------------------------------------------------------------

@pytest.mark.parametrize("body, words", [
    ({"prefix": "分开", "top_k": -1}, "only the k likeliest (top_k)"),
    ({"prefix": "分开", "strategy": "greedy", "temperature": 0.5}, "randomness (temperature) applies to sampling"),
    ({"prefix": "分开€"}, 'set unknown characters to "drop"'),
    ({"prefix": "分开", "num_samples": 99}, "samples (num_samples)"),
    ({"prefix": "分开", "line_lengths": [0]}, "line lengths (line_lengths)"),
    ({"prefix": "", "context": "分开\n", "line_lengths": [3], "rhyme": "zz"}, "rhyme class (rhyme) 'zz'"),
    ({"prefix": "分开", "sections": "chorus"}, "song sections (sections)"),
    ({"prefix": "分开", "sections": "verse:2", "length": 5}, "drop characters (length)"),
])
def test_errors_name_the_pages_controls(client, body, words):
    r = post(client, **body)
    assert r.status_code == 400 and words in r.json()["error"], r.json()
    assert "--" not in r.json()["error"]


def test_checkpoint_offers_the_form_picker(client):
    info = client.get("/api/checkpoint").json()
    assert info["forms"]["script"] == "zh" and "江阳" in info["forms"]["classes"]
    assert info["defaults"]["temperature"] == 0.8 and info["val_ppl_source"] in ("summary.json", "checkpoint")


# --- sections ----------------------------------------------------------------------------------

def test_parse_sections():
    assert parse_sections("verse:4,chorus:4,verse:4,chorus") == (
        Section("verse", 4), Section("chorus", 4), Section("verse", 4), Section("chorus", 0))
    for bad, words in (("chorus", "not written before"), ("verse:0", "1 to 32"), ("verse:4,4x", "not a section"),
                       (",".join(["a:1"] * 17), "at most 16")):
        with pytest.raises(CharlmError, match=words):
            parse_sections(bad)


def test_a_song_in_sections_over_the_api(client):
    s = post(client, prefix="分开", sections="verse:3,chorus:2,verse:3,chorus", seed=2).json()["samples"][0]
    parts = ("分开" + s["text"]).split("\n\n")
    assert [len(p.split("\n")) for p in parts] == [3, 2, 3, 2]
    assert parts[1] == parts[3] and parts[0] != parts[2]
    assert [x["name"] for x in s["form"]["sections"]] == ["verse", "chorus", "verse", "chorus"]


def test_generate_sections_from_the_cli(tiny_run):
    from click.testing import CliRunner

    from charlm.cli.app import cli

    args = ["generate", "--checkpoint", str(tiny_run[0]), "--sections", "verse:2,chorus:2,verse:2,chorus",
            "--seed", "3", "--num-samples", "2", "--format", "jsonl"]
    out = CliRunner().invoke(cli, args)
    assert out.exit_code == 0, out.output
    for line in out.stdout.strip().splitlines():
        row = json.loads(line)
        parts = (row["prefix"] + row["text"]).split("\n\n")
        assert len(parts) == 4 and parts[1] == parts[3]
        assert len(row["logprobs"]) == len(row["text"])
    bad = CliRunner().invoke(cli, ["generate", "--checkpoint", str(tiny_run[0]), "--sections", "verse:2",
                                   "--line-lengths", "3,3"])
    assert bad.exit_code == 2 and "--sections lays out the song's lines itself" in bad.stderr


# --- defaults from the corpus --------------------------------------------------------------------

class _AllVocab:
    def unknown(self, text):
        return []


def test_titled_corpus_prefixes_are_its_titles():
    ci = "\n\n".join(f"{'浣溪沙' if i % 3 else '菩萨蛮'}\n一曲新词酒一杯。\n去年天气旧亭台。" for i in range(30))
    assert corpus_prefixes(ci, _AllVocab()) == ["浣溪沙\n", "菩萨蛮\n"]  # never 分开 for Song ci
    lyrics = "分开 不分开\n我想就这样\n" * 5
    assert corpus_prefixes(lyrics, _AllVocab()) == ["分开", "不分开"]
    assert corpus_prefixes("我想就这样\n你靠着我\n" * 5, _AllVocab()) == ["我想", "你靠"]


def test_an_old_titled_run_defaults_to_its_commonest_title():
    from charlm.data.vocab import Vocab
    from charlm.run.checkpoint import default_prefixes

    payload = {"config": {"prefixes": ["分开", "不分开"]},
               "forms": {"forms": {"titled": True, "named": [{"name": "浣溪沙"}, {"name": "菩萨蛮"}]}}}
    vocab = Vocab(sorted(set("分开不浣溪沙菩萨蛮\n")))
    assert default_prefixes(payload, vocab) == ["浣溪沙\n", "菩萨蛮\n"]
    assert torch.is_tensor(torch.zeros(1))
