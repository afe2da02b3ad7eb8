"""Rhyme classes of characters, words and lines, read from real pronunciation data.

Two lines rhyme when their ends fall in the same rhyme class. The classes come from
dictionaries, never from a hand-made table of characters:

* Chinese: pypinyin gives each character's final in context (还有 hai, 还钱 huan: its phrase
  dictionary reads a line as a whole), and the final falls in one of the 13 groups of 十三辙,
  the rhyme groups of sung Chinese (Peking opera, folk song, pop lyrics). `ZH_FINALS` maps
  every final pypinyin writes, strict and non-strict, to its group.
* English: the CMU Pronouncing Dictionary (`pronouncing`) gives a word's phones; the class is
  the rhyming part, from the last stressed vowel on, without stress digits (day, away: "EY").
  A word it lacks gets a class guessed from its spelling, marked "~" so that it never equals
  a dictionary class, and `guessed` is True.

Other scripts have no rhyme data: `script_of` says None and `line_class` refuses them.
"""

from __future__ import annotations

import re
from functools import lru_cache

from charlm.errors import CharlmError

NO_RHYME = ("rhyme needs Chinese (pypinyin) or English (CMU dictionary) text; this text is neither, "
            "so line forms work but rhyme does not")

# 十三辙 by pypinyin final. pypinyin is asked for strict finals (`strict=True`): there ü is
# written v (ju -> v, jun -> vn) and the finals are whole (iou, uei, uen). Non-strict finals
# are listed too, so a caller holding them is not refused, but they are ambiguous: non-strict
# "u" is both zhu (姑苏) and ju (ü, 一七), so this module never reads them for "u".
ZH_FINALS: dict[str, str | None] = {
    "a": "发花", "ia": "发花", "ua": "发花",
    "o": "梭波", "uo": "梭波", "e": "梭波",
    "io": "梭波",  # yo (哟) in spellings that write it io
    "ie": "乜斜", "ve": "乜斜", "ue": "乜斜",  # ue: non-strict üe (jue, yue)
    "ê": "乜斜", "ea": "乜斜",  # ê (欸) as pypinyin writes it, and the spelling "ea" some tables use
    # i covers both the i of li and the apical i of zi ci si zhi chi shi ri (pypinyin writes
    # both "i"); 十三辙 practice sings them in one group, 一七, with ü and er.
    "i": "一七", "v": "一七", "er": "一七",
    "u": "姑苏",
    "ai": "怀来", "uai": "怀来",
    "ei": "灰堆", "uei": "灰堆", "ui": "灰堆",
    "ao": "遥条", "iao": "遥条",
    "ou": "油求", "iou": "油求", "iu": "油求",
    "an": "言前", "ian": "言前", "uan": "言前", "van": "言前",
    "en": "人辰", "in": "人辰", "uen": "人辰", "vn": "人辰", "un": "人辰",
    "ang": "江阳", "iang": "江阳", "uang": "江阳",
    "eng": "中东", "ing": "中东", "ong": "中东", "iong": "中东", "ueng": "中东",
    # syllabic nasals of interjections (嗯 n/ng, 哼 hng, 呒 m): strict finals are empty, so the
    # non-strict final is read for them; n sings with 人辰, ng (hng -> "g") with 中东, m with none
    "n": "人辰", "ng": "中东", "g": "中东",
    "m": None, "": None,
}
# the finals that have no group: empty (a strict nasal syllable, resolved through its non-strict
# final where pypinyin gives one) and m (呒, hm): a closed-lip hum rhymes with nothing
NO_RHYME_FINALS = frozenset(f for f, g in ZH_FINALS.items() if g is None)

ZH_GROUP_NAMES = ("发花", "梭波", "乜斜", "一七", "姑苏", "怀来", "灰堆", "遥条", "油求", "言前", "人辰", "江阳", "中东")
ZH_GROUPS: dict[str, tuple[str, ...]] = {
    name: tuple(f for f, g in ZH_FINALS.items() if g == name) for name in ZH_GROUP_NAMES
}

# Han characters (the CJK blocks pypinyin reads); a run of them is read as one phrase context
_HAN = "\u3007\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_HAN_RUN = re.compile(f"[{_HAN}]+")
_LATIN = re.compile("[A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f]")
_EDGES = re.compile(r"^[\W\d_]+|[\W\d_]+$")
_STRESS = re.compile(r"\d")


def zh_group(final: str) -> str | None:
    """The 十三辙 group of a pypinyin final (None for a final with no group, or one it does not know)."""
    return ZH_FINALS.get(final)


def _pinyin():
    # imported late: pypinyin loads its dictionaries (about a second) on first import, and only
    # rhyme needs them
    import pypinyin

    return pypinyin


@lru_cache(maxsize=65536)
def _run_classes(run: str) -> tuple[str | None, ...]:
    """Classes of a run of Han characters, read by pypinyin as one context."""
    pypinyin = _pinyin()
    finals = pypinyin.pinyin(run, style=pypinyin.Style.FINALS, strict=True)
    if len(finals) != len(run):  # a character pypinyin does not count as Han split the run
        return tuple(zh_char_class(c) for c in run)
    out = [ZH_FINALS.get(f[0]) for f in finals]
    if any(f[0] == "" for f in finals):  # a nasal syllable: its non-strict final says n or ng
        loose = pypinyin.pinyin(run, style=pypinyin.Style.FINALS, strict=False)
        if len(loose) == len(run):
            out = [ZH_FINALS.get(lf[0]) if f[0] == "" else g for f, lf, g in zip(finals, loose, out)]
    return tuple(out)


@lru_cache(maxsize=None)
def zh_char_class(ch: str) -> str | None:
    """The 十三辙 group of a lone character in its most common reading (None for a non-Han character)."""
    if len(ch) != 1 or not _HAN_RUN.fullmatch(ch):
        return None
    return _run_classes(ch)[0]


@lru_cache(maxsize=None)
def _context_free(ch: str) -> bool:
    """Whether every reading pypinyin lists for `ch` falls in one group, so context cannot change its class."""
    pypinyin = _pinyin()
    readings = pypinyin.pinyin(ch, style=pypinyin.Style.FINALS, strict=True, heteronym=True)[0]
    if "" in readings:
        return False
    return len({ZH_FINALS.get(f) for f in readings}) == 1


def zh_classes(text: str) -> list[str | None]:
    """The 十三辙 group of each character of `text`, read in context; None for non-Han characters."""
    out: list[str | None] = [None] * len(text)
    for m in _HAN_RUN.finditer(text):
        out[m.start():m.end()] = _run_classes(m.group())
    return out


def _zh_last_class(line: str) -> str | None:
    """The class of the last Han character of `line`, as `zh_classes(line)` reads it."""
    runs = _HAN_RUN.findall(line)
    if not runs:
        return None
    run = runs[-1]
    # most line ends have one reading: skip pypinyin's phrase pass for them (the cost on a big corpus)
    if _context_free(run[-1]):
        return zh_char_class(run[-1])
    return _run_classes(_last_phrase(run))[-1]


def _last_phrase(run: str) -> str:
    """The last word of a Han run as pypinyin segments it (it reads each word on its own, so the word
    alone reads the same, and words recur where whole lines do not: the cache catches them)."""
    try:
        from pypinyin.constants import RE_HANS
        from pypinyin.seg.mmseg import seg  # the segmenter pypinyin.pinyin itself uses on a Han run
    except ImportError:  # another pypinyin layout: read the whole run
        return run
    if not RE_HANS.match(run):  # pypinyin would split this run first
        return run
    words = list(seg.cut(run))
    return words[-1] if words and "".join(words) == run else run


def _candidates(word: str) -> list[str]:
    """Spellings to look up for a lower-cased word: possessive and elided forms first, then as written."""
    out = []
    if word.endswith("'s"):
        out.append(word[:-2])  # summer's -> summer
    elif word.endswith("'d"):
        out.append(word[:-2] + "ed")  # deserv'd -> deserved
    out.append(word)
    if "-" in word:  # self-love: the rhyme is the last part's
        last = _EDGES.sub("", word.rsplit("-", 1)[1])
        if any(c.isalpha() for c in last):
            out += _candidates(last)
    return out


def _spelling_class(word: str) -> str:
    """The last group of vowel letters and what follows it (sunken -> "en"); y is a vowel after a letter."""
    letters = "".join(c for c in word if c.isalpha())
    vowel = [c in "aeiou" or (c == "y" and i > 0) for i, c in enumerate(letters)]
    if not any(vowel):
        return letters
    end = max(i for i, v in enumerate(vowel) if v)
    start = end
    while start > 0 and vowel[start - 1]:
        start -= 1
    return letters[start:]


@lru_cache(maxsize=65536)
def en_word_class(word: str) -> tuple[str | None, bool]:
    """(rhyme class, guessed) of an English word: the CMU rhyming part without stress digits ("EY" for day
    and away), or for a word the dictionary lacks its spelling's last vowel group, "~"-prefixed, guessed=True;
    (None, False) for a string with no letters."""
    import pronouncing

    w = _EDGES.sub("", word.replace("\u2019", "'").replace("\u2018", "'").lower())
    if not any(c.isalpha() for c in w):
        return None, False
    cands = _candidates(w)
    for c in cands:
        phones = pronouncing.phones_for_word(c)
        if phones:
            return _STRESS.sub("", pronouncing.rhyming_part(phones[0])), False
    # spell the most specific form (deserv'd -> deserved, self-lov'd -> loved)
    last = _EDGES.sub("", w.rsplit("-", 1)[-1])
    base = last if any(c.isalpha() for c in last) else w
    return "~" + _spelling_class(_candidates(base)[0]), True


def script_of(text: str) -> str | None:
    """"zh" when Han characters are most of the letters of `text`, "en" when Latin letters are, else None."""
    letters = sum(map(str.isalpha, text))
    if not letters:
        return None
    han = sum(m.end() - m.start() for m in _HAN_RUN.finditer(text))
    if 2 * han > letters:
        return "zh"
    if 2 * len(_LATIN.findall(text)) > letters:
        return "en"
    return None


def _final_word(line: str) -> str | None:
    """The last whitespace-separated token of `line` with a letter in it."""
    for token in reversed(line.split()):
        if any(c.isalpha() for c in token):
            return token
    return None


def line_class(line: str, script: str | None) -> tuple[str | None, bool]:
    """(rhyme class, guessed) of a line's last rhyming unit: its last Han character read in the line's
    context for "zh", its last word for "en"; (None, False) when the line has none."""
    if script == "zh":
        return _zh_last_class(line), False
    if script == "en":
        word = _final_word(line)
        return en_word_class(word) if word else (None, False)
    raise CharlmError(NO_RHYME)


def rhymes(a_line: str, b_line: str, script: str | None) -> bool:
    """Whether two lines end in the same rhyme class (a line with no rhyming end rhymes with nothing)."""
    a = line_class(a_line, script)[0]
    return a is not None and a == line_class(b_line, script)[0]
