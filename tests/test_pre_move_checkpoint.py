"""A checkpoint written by the code before the move into stage folders still loads and gives the same figures.

`tests/data/pre-move-gru.pt` (49 KB, the one checkpoint the repo holds) was trained at commit 8f74470 with
`python train.py --corpus tiny.txt --preset none --model gru --hidden 12 --embedding 12 --epochs 2
--batch-size 4 --num-steps 8 --seed 1` on the text below; the expected figures were printed by that code.
"""

import json
from pathlib import Path

import pytest

from helpers import cli

CHECKPOINT = Path(__file__).parent / "data" / "pre-move-gru.pt"
TEXT = ("分开 不分开 我想就这样牵着你的手不放开\n爱可不可以简简单单没有伤害\n" * 6
        + "shall i compare thee to a summer's day\nthou art more lovely and more temperate\n" * 4)
EXPECTED_TEXT = "没d牵有着dh想 这单分'就想分这就 着开n 放这a以开nten 不有手简'v这"
EXPECTED_LOGPROB = -147.5539


def test_pre_move_checkpoint_generates_the_same_sample(capsys):
    status, out, err = cli(["generate", "--checkpoint", CHECKPOINT, "--prefix", "分开", "--length", "40",
                            "--seed", "5", "--max-copy", "0", "--format", "jsonl"], capsys)
    assert status == 0, err
    row = json.loads(out.splitlines()[0])
    assert row["text"] == EXPECTED_TEXT
    assert row["logprob"] == pytest.approx(EXPECTED_LOGPROB, abs=1e-3)


def test_pre_move_checkpoint_scores_the_same_perplexity(tmp_path, capsys):
    text = tmp_path / "tiny.txt"
    text.write_text(TEXT, encoding="utf-8")
    # --corpus: the training text the checkpoint names (/tmp/oldck/tiny.txt) is gone; the copy measure needs one
    status, out, err = cli(["evaluate", "--checkpoint", CHECKPOINT, "--text", text, "--corpus", text, "--decoding", "greedy",
                            "--num-samples", "1", "--length", "20", "--prefix", "分开"], capsys)
    assert status == 0, err
    assert "perplexity 40.448 on the text" in out
