"""Forms learned from a corpus: titled forms, fixed-length forms, line lengths, rhyme rates and schemes."""

import gzip
import random
import time
import zipfile
from pathlib import Path

import pytest
import torch

from charlm.errors import CharlmError
from charlm.forms.extract import CorpusForms, NamedForm, learn_forms

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BODY = "春江花月夜山水清明风雨楼台烟柳画桥人间岁月长空万里云"  # filler: any real characters
# line ends chosen from single-reading characters, so the ends' classes do not depend on the filler
FAHUA = "花家沙霞纱茶瓜麻芽"  # 发花
YANQIAN = "天年前山边烟田间船"  # 言前
ZHONGDONG = "风中东空红声城灯钟"  # 中东
LOOSE = "月水石竹酒雪"  # 乜斜 灰堆 一七 姑苏 油求 乜斜: never two of one class on line 3


def _line(rng, layout, end):
    """A line of `layout` (e.g. "5，5。"): digits are runs of filler characters, the last one ends in `end`."""
    out, runs = [], []
    for ch in layout:
        if ch.isdigit():
            runs.append(len(out))
            out.append("".join(rng.choice(BODY) for _ in range(int(ch))))
        else:
            out.append(ch)
    out[runs[-1]] = out[runs[-1]][:-1] + end
    return "".join(out)


def _titled_corpus():
    rng = random.Random(1)
    pieces = []
    for i in range(6):  # 春江令: 4 lines, lines 1, 2 and 4 rhyme, line 3 does not
        ends = [FAHUA[i], FAHUA[i + 1], LOOSE[i], FAHUA[i + 2]]
        lines = [_line(rng, lay, e) for lay, e in zip(["5，5。", "7。", "5，5。", "7。"], ends)]
        pieces.append("春江令\n" + "\n".join(lines))
    # a 春江令 in another layout: counted in pieces, not in share
    pieces.append("春江令\n" + "\n".join(_line(rng, "7。", e) for e in "花家沙"))
    for i in range(5):  # 秋山曲: AABB
        ends = [YANQIAN[i], YANQIAN[i + 1], ZHONGDONG[i], ZHONGDONG[i + 1]]
        lines = [_line(rng, lay, e) for lay, e in zip(["7。", "7，7。", "7。", "7。"], ends)]
        pieces.append("秋山曲\n" + "\n".join(lines))
    pieces.insert(3, "孤雁\n" + "\n".join(_line(rng, "5。", e) for e in "天年"))  # one piece: not a form
    return "\n\n".join(pieces) + "\n"


STANZAS = [
    ("The morning sun is bright and warm today,", "The river runs along the ancient stone,",
     "The children laugh and then they run away,", "The old man walks the dusty road alone."),
    ("I saw the stars come out at night,", "Above the waves of the deep sea,",
     "And all the world was full of light,", "And every bird was flying free."),
    ("We waited long for the summer rain,", "And stood together by the door,",
     "It fell at last upon the plain,", "And then it fell a little more."),
    ("The eagle climbs into the sky,", "The wind is blowing hard and cold,",
     "It turns and circles very high,", "Above the mountains grey and old."),
    ("She sang to me a quiet song,", "With all the passion of her heart,",
     "The evening hours were very long,", "And then we had to go apart."),
    ("He wrote in stone his secret name,", "And sat beside the dying fire,",
     "Until at last the morning came,", "And took away his last desire."),
]


def test_titled_corpus_gives_one_form_per_recurring_title():
    forms = learn_forms(_titled_corpus())
    assert forms.script == "zh" and forms.units == "chars" and forms.titled
    assert [f.name for f in forms.named] == ["春江令", "秋山曲"]  # 孤雁 has one piece
    chun, qiu = forms.named
    assert (chun.pieces, chun.share) == (7, pytest.approx(6 / 7))
    assert chun.template == "_____，_____。\n_______。\n_____，_____。\n_______。"
    assert chun.pattern == "5，5。/7。/5，5。/7。" and chun.lines == 4
    assert chun.rhyme == "AAXA"
    assert (qiu.pieces, qiu.share) == (5, 1.0)
    assert qiu.pattern == "7。/7，7。/7。/7。" and qiu.rhyme == "AABB"
    assert forms.get("秋山曲") is qiu


def test_line_length_histogram_leaves_out_titles_blank_lines_and_punctuation():
    forms = learn_forms(_titled_corpus())
    # 春江令 6 x (10 7 10 7), its deviant 7 7 7, 秋山曲 5 x (7 14 7 7), 孤雁 5 5
    assert forms.line_lengths == {5: 2, 7: 30, 10: 12, 14: 5}
    draws = forms.sample_lengths(200, random.Random(0))
    assert len(draws) == 200 and set(draws) <= {5, 7, 10, 14} and draws.count(7) > draws.count(14)
    assert draws == forms.sample_lengths(200, random.Random(0))


def test_unknown_form_names_the_known_ones():
    forms = learn_forms(_titled_corpus())
    with pytest.raises(CharlmError, match="no form '孤雁' in this corpus; known forms: 春江令, 秋山曲$"):
        forms.get("孤雁")


def test_untitled_fixed_length_english_corpus():
    text = "\n\n".join("\n".join(s) for s in STANZAS) + "\n"
    forms = learn_forms(text)
    assert forms.script == "en" and forms.units == "words" and not forms.titled
    assert [f.name for f in forms.named] == ["4 lines"]
    form = forms.get("4 lines")
    assert (form.pieces, form.share, form.units) == (6, 1.0, "words")
    assert form.rhyme == "ABAB"
    assert form.line_words == [7, 7, 6, 6] and form.pattern == "7w/7w/6w/6w"  # the commonest count of each line
    assert form.template == ",\n,\n,\n."  # words: the punctuation of each line only
    # ABAB: no adjacent pair rhymes, every pair two apart does; the scheme says so
    assert forms.adjacent_rate == 0.0 and forms.alternate_rate == 1.0
    assert forms.shuffled_rate < 0.5 and forms.scheme == "ABAB" and forms.rhymes
    assert sum(forms.line_lengths.values()) == 24


def test_one_piece_without_blank_lines_has_no_named_forms_but_rhyme_rates():
    # lyrics-style file: couplets that rhyme, no blank lines, no titles
    lines = []
    for a, b in zip(FAHUA + YANQIAN, FAHUA[1:] + YANQIAN[1:] + "天"):
        lines += ["我在远方想着" + a, "你在窗前看着" + b]
    forms = learn_forms("\n".join(lines))
    assert forms.named == [] and not forms.titled
    assert forms.adjacent_rate > 0.9 and forms.shuffled_rate < forms.adjacent_rate / 2
    assert forms.scheme == "AAAA" and forms.rhymes
    with pytest.raises(CharlmError, match="no named forms"):
        forms.get("浣溪沙")


def test_script_without_rhyme_data():
    words = "помню чудное мгновенье передо мной явилась ты как мимолетное виденье гений чистой красоты".split()
    rng = random.Random(2)
    text = "\n\n".join("\n".join(" ".join(rng.sample(words, 3)) for _ in range(3)) for _ in range(5))
    forms = learn_forms(text)
    assert forms.script is None and forms.units == "words"
    assert forms.adjacent_rate is None and forms.scheme is None and not forms.rhymes
    assert [(f.name, f.rhyme) for f in forms.named] == [("3 lines", "XXX")]
    assert forms.line_lengths == {3: 15}


def test_no_scheme_when_rhyme_is_at_chance_level():
    rng = random.Random(3)
    ends = FAHUA + YANQIAN + ZHONGDONG + LOOSE + "酒人心"
    lines = ["".join(rng.choice(BODY) for _ in range(6)) + rng.choice(ends) for _ in range(400)]
    forms = learn_forms("\n".join(lines))
    assert forms.adjacent_rate is not None and forms.adjacent_rate < 2 * forms.shuffled_rate
    assert forms.scheme is None and not forms.rhymes


def test_round_trip_through_a_weights_only_checkpoint(tmp_path):
    forms = learn_forms(_titled_corpus())
    d = forms.to_dict()
    path = tmp_path / "forms.pt"
    torch.save({"forms": d}, path)
    back = CorpusForms.from_dict(torch.load(path, weights_only=True)["forms"])
    assert back == forms
    assert isinstance(back.named[0], NamedForm) and back.named[0].pattern == forms.named[0].pattern
    with pytest.raises(CharlmError, match="damaged"):
        CorpusForms.from_dict({"script": "zh"})


def test_max_chars_cuts_at_a_piece_boundary():
    text = _titled_corpus()
    full = learn_forms(text)
    for n in (len(text) // 2, len(text) - 3):
        cut = learn_forms(text, max_chars=n)
        assert sum(cut.line_lengths.values()) < sum(full.line_lengths.values())
        assert set(cut.line_lengths) <= set(full.line_lengths)  # no line cut in two
        assert all(f.share == 1.0 for f in cut.named if f.name == "秋山曲")  # nor a piece


def test_empty_text():
    forms = learn_forms("")
    assert forms.named == [] and forms.line_lengths == {} and forms.script is None
    with pytest.raises(CharlmError, match="no lines"):
        forms.sample_lengths(3, random.Random(0))


def test_real_corpora():
    paths = [DATA / "songci.txt.gz", DATA / "sonnets.txt.gz", DATA / "jaychou_lyrics.txt.zip"]
    if not all(p.exists() for p in paths):
        pytest.skip(f"corpora not found in {DATA}")
    start = time.perf_counter()
    songci = learn_forms(gzip.open(paths[0], "rt", encoding="utf-8").read())
    form = songci.get("浣溪沙")
    assert songci.titled and form.share >= 0.9
    assert form.pattern.replace("/", "") == "7。7。7。7，7。7。"
    sonnets = learn_forms(gzip.open(paths[1], "rt", encoding="utf-8").read())
    assert sonnets.get("14 lines").rhyme == "ABABCDCDEFEFGG"
    lyrics = learn_forms(zipfile.ZipFile(paths[2]).read("jaychou_lyrics.txt").decode("utf-8"))
    # the figures: adjacent lines rhyme 56%, 9% once shuffled
    assert lyrics.adjacent_rate == pytest.approx(0.56, abs=0.03)
    assert lyrics.shuffled_rate == pytest.approx(0.09, abs=0.03)
    assert time.perf_counter() - start < 20
