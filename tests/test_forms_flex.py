"""Flexible lines (lengths drawn from the corpus): a line ends within its range, at a character of its
rhyme class, and may hold single spaces between phrases. Brute-forced on the form state alone: every
choice the mask allows is taken at random, so whatever a model wanted, the form must hold.
"""

import random

import numpy as np
import pytest
import torch

from charlm.data.vocab import Vocab
from charlm.forms.constrain import FormState
from charlm.forms.chars_form import MAX_INNER_SPACES
from charlm.forms.rhyme_index import zh_groups_of
from charlm.forms.template import FLEX, SHORT_LINE, FormRequest, LinePlan, Plan, make_plans
from charlm.forms.extract import learn_forms

# characters of several rhyme classes (言前 天烟前边, 江阳 光长乡方, 一七 里衣你, 发花 家花), others, layout
CHARS = "天烟前边光乡方里衣你家花我的在风月水山人不一 ，。\n"


def _class(ch):
    groups = zh_groups_of(ch)
    return next(iter(groups)) if len(groups) == 1 else None


def _walk(plans, seed):
    """Write every stream to its end, choosing uniformly among what the form allows at each step."""
    vocab = Vocab(sorted(set(CHARS)))
    state = FormState(plans, [""] * len(plans), vocab)
    rng = torch.Generator().manual_seed(seed)
    for _ in range(400):
        if not state.alive.any():
            break
        allowed = state.allowed()
        assert allowed[torch.from_numpy(state.alive)].any(1).all()  # a living stream always has a choice
        nxt = torch.multinomial(allowed.float(), 1, generator=rng).squeeze(1)
        state.step(nxt.numpy())
    assert not state.alive.any()
    return state


@pytest.mark.parametrize("seed", range(6))
def test_flexible_lines_end_in_range_at_a_rhyme(seed):
    r = random.Random(seed)
    scheme = r.choice(["AABB", "ABAB", "AAXA", "XXXX"])
    plans = []
    for _ in range(16):
        lines = []
        for letter in scheme:
            n = r.randint(4, 9)
            lines.append(LinePlan(slots="_" * (n + FLEX), rhyme=letter, shortest=max(SHORT_LINE, n - FLEX)))
        plans.append(Plan(lines))
    state = _walk(plans, seed)
    for b, plan in enumerate(plans):
        text = state._written[b]
        lines = text.split("\n")
        assert len(lines) == len(plan.lines), text
        ends = {}
        for line, lp in zip(lines, plan.lines):
            body = line.replace(" ", "")
            assert lp.shortest <= len(body) <= len(lp.slots), (line, lp)
            assert "  " not in line and not line.startswith(" ") and not line.endswith(" ")
            assert line.count(" ") <= MAX_INNER_SPACES
            assert not any(c in "，。" for c in line)
            if lp.rhyme != "X":
                cls = _class(line[-1])
                assert cls is not None, line  # a rhyme slot holds a character of one class
                ends.setdefault(lp.rhyme, set()).add(cls)
        for letter, classes in ends.items():
            assert len(classes) == 1, (letter, classes, text)  # one letter, one class
        assert len(set().union(*ends.values())) == len(ends) if ends else True  # two letters, two classes
        assert state.report(b)["complete"]


def test_asked_lengths_stay_exact_and_drawn_ones_are_flexible():
    forms = learn_forms("春风吹过天边的云烟\n明月照着故乡\n" * 150)
    drawn = make_plans(FormRequest(rhyme_scheme="AA"), forms, "zh", "", 2, 3, random.Random(0))
    assert all(line.shortest and line.shortest < len(line.slots) for p in drawn for line in p.lines)
    asked = make_plans(FormRequest(line_lengths=(7, 5)), forms, "zh", "", 2, 3, random.Random(0))
    assert all(line.shortest == 0 for p in asked for line in p.lines)
    assert [len(line.slots) for line in asked[0].lines] == [7, 5]
    state = _walk(asked, 1)
    assert [[len(x) for x in state._written[b].split("\n")] for b in range(3)] == [[7, 5]] * 3


def test_a_prefix_may_end_a_flexible_line_only_where_it_rhymes():
    vocab = Vocab(sorted(set(CHARS)))
    plan = Plan([LinePlan(slots="_" * 8, rhyme="A", shortest=4), LinePlan(slots="_" * 8, rhyme="A", shortest=4)])
    state = FormState([plan], ["我的在风天\n"], vocab)  # 天 (言前) closes the first line and binds A
    assert state.bound[0, 0] == state.class_names.index("言前")
    allowed = state.allowed()[0]
    assert not allowed[vocab.char_to_idx["\n"]]  # nothing written in the second line yet
    from charlm.errors import CharlmError
    with pytest.raises(CharlmError, match="line break"):
        FormState([plan], ["我的在\n"], vocab)  # three characters: the line may not end before four
    assert np.all(state.alive)


def test_line_choice_continues_every_candidate_from_the_best_when_they_finish_a_line_together():
    from types import SimpleNamespace

    from charlm.generate.formed import LineChoice

    K = 3
    state = SimpleNamespace(line_classes=[[], [], [], [], [], []])  # two samples of three candidates
    choice = LineChoice(K)
    choice.before(state)
    state.line_classes = [["a"], ["a"], ["b"], ["a"], [], ["a"]]  # sample 0: all three finished a line
    logprobs = torch.tensor([[-1.0, -2.0], [-0.5, -0.5], [-3.0, -0.1], [-0.1, -0.1], [-5.0, -5.0], [-0.2, -0.2]])
    rows = choice.after(state, logprobs)
    assert rows.tolist() == [1, 1, 1, 3, 4, 5]  # sample 0 continues its most probable; sample 1 is not ready
    choice.before(state)
    assert choice.after(state, logprobs) is None  # no line finished in this step

