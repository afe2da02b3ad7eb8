"""Rhyme classes: 十三辙 from pypinyin finals (read in context), English from the CMU dictionary."""

import pytest

from charlm.errors import CharlmError
from charlm.forms.rhyme import (NO_RHYME, NO_RHYME_FINALS, ZH_FINALS, ZH_GROUPS, en_word_class, line_class,
                                rhymes, script_of, zh_char_class, zh_classes, zh_group)


@pytest.mark.parametrize("chars, group", [
    ("花家下", "发花"),
    ("天前年", "言前"),
    ("东风中", "中东"),  # pypinyin writes 风 "eng": 中东 holds eng, ing, ong, iong, ueng
    ("爱来", "怀来"),
    ("子日知鱼儿衣", "一七"),  # apical i, i, ü and er sing together
    ("月雪夜", "乜斜"),
    ("水泪归", "灰堆"),
])
def test_characters_fall_in_their_group(chars, group):
    assert [zh_char_class(c) for c in chars] == [group] * len(chars)
    assert zh_classes(chars) == [group] * len(chars)


def test_lines_rhyme_by_their_last_han_character():
    assert rhymes("春来看落花", "明月照人家。", "zh")
    assert rhymes("长亭外，古道边", "芳草碧连天", "zh")
    assert rhymes("一夜东风", "落叶满城中", "zh")
    assert not rhymes("我的爱", "蓝蓝的天", "zh")
    assert rhymes("春风又来", "等你的爱 oh", "zh")  # non-Han text after the last Han character is not the end
    assert line_class("hello", "zh") == (None, False)


def test_groups_cover_the_finals_once():
    assert list(ZH_GROUPS) == ["发花", "梭波", "乜斜", "一七", "姑苏", "怀来", "灰堆", "遥条", "油求", "言前",
                               "人辰", "江阳", "中东"]
    finals = [f for fs in ZH_GROUPS.values() for f in fs]
    assert len(finals) == len(set(finals))
    assert set(finals) | NO_RHYME_FINALS == set(ZH_FINALS)
    assert zh_group("iou") == "油求" and zh_group("uen") == "人辰" and zh_group("v") == "一七"
    assert zh_group("ueng") == "中东" and zh_group("van") == "言前" and zh_group("nonsense") is None


def test_readings_in_context():
    # pypinyin's phrase dictionary reads a polyphone by its neighbours
    assert zh_classes("还有") == ["怀来", "油求"]  # hai
    assert zh_classes("还钱") == ["言前", "言前"]  # huan
    assert zh_classes("音乐")[1] == "乜斜" and zh_classes("快乐")[1] == "梭波"  # yue / le
    assert zh_classes("落叶")[0] == "梭波" and zh_classes("落下")[0] == "发花"  # luo / la
    # a line end is read with its line as context, as zh_classes reads it
    assert line_class("今夜听音乐", "zh") == ("乜斜", False)
    assert line_class("人生多快乐", "zh") == ("梭波", False)
    assert line_class("午后睡觉", "zh")[0] == "遥条" and line_class("我总觉得", "zh")[0] == "梭波"
    for line in ("借了不还", "把钱还了", "我还要还钱给你还", "天长地久", "丢三落四"):
        assert line_class(line, "zh")[0] == [c for c in zh_classes(line) if c][-1]


def test_long_reads_zhang_or_chang_but_rhymes_the_same():
    from pypinyin import Style, pinyin

    assert pinyin("长大", style=Style.NORMAL)[0] == ["zhang"]
    assert pinyin("长城", style=Style.NORMAL)[0] == ["chang"]
    assert zh_classes("长大")[0] == zh_classes("长城")[0] == "江阳"  # the final is ang either way


def test_one_class_per_character_with_non_han_text():
    text = "你好abc 世界！ok"
    classes = zh_classes(text)
    assert len(classes) == len(text)
    assert classes == ["一七", "遥条", None, None, None, None, "一七", "乜斜", None, None, None]
    assert zh_classes("") == []
    assert zh_char_class("a") is None and zh_char_class("。") is None and zh_char_class("你好") is None


def test_interjections():
    assert zh_char_class("嗯") == "人辰"  # n: strict final is empty, the non-strict final says n
    assert zh_classes("嗯") == ["人辰"]


def test_char_class_is_cached():
    zh_char_class("花")
    before = zh_char_class.cache_info().hits
    zh_char_class("花")
    assert zh_char_class.cache_info().hits == before + 1


def test_every_final_in_pypinyins_dictionary_has_a_group():
    from pypinyin import Style, pinyin
    from pypinyin.pinyin_dict import pinyin_dict

    seen, unrhymed = set(), []
    for code in pinyin_dict:
        ch = chr(code)
        for strict in (True, False):
            for final in pinyin(ch, style=Style.FINALS, strict=strict, heteronym=True)[0]:
                seen.add(final)
                assert final in ZH_FINALS, (ch, final, strict)
                if strict and ZH_FINALS[final] is None:
                    unrhymed.append(ch)
    assert NO_RHYME_FINALS == {"", "m"}
    assert len(set(unrhymed)) <= 10  # only syllabic nasals (嗯 呒 哼 in some readings) have no group
    assert {"iou", "uei", "uen", "ueng", "v", "ve", "van", "vn", "er", "i", "ê"} <= seen


def test_english_classes_from_the_cmu_dictionary():
    assert en_word_class("day") == en_word_class("away") == en_word_class("say") == ("EY", False)
    assert en_word_class("love")[0] != en_word_class("prove")[0]  # an eye rhyme, not a rhyme, in CMU
    assert en_word_class("summer's") == en_word_class("summer") == ("AH M ER", False)
    assert en_word_class("deserv'd") == en_word_class("deserved")
    assert en_word_class("Eyes,") == en_word_class("eyes") == ("AY Z", False)
    assert en_word_class("\u2018tis") == en_word_class("tis")
    assert en_word_class("self-love") == en_word_class("love")


def test_unknown_english_words_are_guessed_from_spelling():
    cls, guessed = en_word_class("niggarding")
    assert guessed and cls == "~ing"
    assert en_word_class("sunkenest")[0] == "~est"
    assert en_word_class("zzzblorpen") == ("~en", True)
    assert en_word_class("...") == (None, False) and en_word_class("42") == (None, False)


def test_english_lines():
    assert rhymes("I saw her yesterday", "and then she went away.", "en")
    assert not rhymes("For all the things I love", "I have nothing to prove", "en")
    assert line_class("the end --", "en") == ("EH N D", False)
    assert line_class("-- 42 --", "en") == (None, False)


def test_script_of():
    assert script_of("窗前明月光，疑是地上霜。") == "zh"
    assert script_of("Shall I compare thee to a summer's day?") == "en"
    assert script_of("我爱你 I love you so much") == "en"  # letters: 3 Han, 13 Latin
    assert script_of("我爱你 ok") == "zh"
    assert script_of("Я помню чудное мгновенье") is None
    assert script_of("1234 ...") is None and script_of("") is None


def test_no_rhyme_data_for_other_scripts():
    assert NO_RHYME == ("rhyme needs Chinese (pypinyin) or English (CMU dictionary) text; this text is neither, "
                        "so line forms work but rhyme does not")
    with pytest.raises(CharlmError) as e:
        line_class("Я помню чудное мгновенье", None)
    assert str(e.value) == NO_RHYME
    with pytest.raises(CharlmError):
        rhymes("a", "b", None)
