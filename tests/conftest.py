"""Shared fixtures: small corpora written into a temporary directory by each test."""

import pytest

SMALL_TEXT = (
    "分开 不分开 我想就这样牵着你的手不放开\n爱可不可以简简单单没有伤害\n"
    "你靠着我的肩膀 你在我胸口睡着\n像这样的生活 我爱你 你爱我\n"
    "the quick brown fox jumps over the lazy dog\n"
) * 6


@pytest.fixture
def small_text():
    return SMALL_TEXT


@pytest.fixture
def small_corpus(tmp_path):
    """A few hundred characters of Chinese and English in a .txt file."""
    path = tmp_path / "small.txt"
    path.write_text(SMALL_TEXT, encoding="utf-8")
    return path
