"""Shared fixtures: small corpora written into a temporary directory by each test."""

import pytest

LYRICS = ("分开 不分开 我想就这样牵着你的手不放开\n爱可不可以简简单单没有伤害\n"
          "你靠着我的肩膀 你在我胸口睡着\n像这样的生活 我爱你 你爱我\n") * 6

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


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny test models run faster on one thread, and a busy machine does not make two threads wait on each other."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """(run directory, corpus path) of an nn.RNN (hidden 16) trained 3 epochs through the CLI, shared read-only."""
    from click.testing import CliRunner

    from charlm.cli.app import cli

    tmp = tmp_path_factory.mktemp("tiny-run")
    corpus = tmp / "tiny.txt"
    corpus.write_text(LYRICS, encoding="utf-8")
    out = tmp / "run"
    result = CliRunner().invoke(cli, ["train", "--corpus", str(corpus), "--out", str(out), "--hidden", "16",
                                      "--epochs", "3", "--num-steps", "8", "--batch-size", "4",
                                      "--val-fraction", "0.2", "--pred-every", "0", "--device", "cpu",
                                      "--preset", "none"])
    assert result.exit_code == 0, result.output
    return out, corpus
