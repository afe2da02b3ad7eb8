"""A song form applied to one generation: each sample's plan, the streams' form state, the pick of candidates.

    FormJob(plans, words, candidates)      one Plan per (prefix, sample), prefix-major
        .state(rows, ...)  -> forms.constrain.FormState for the streams of one batch
        .length()          -> the most characters a sample needs
        .pick(drawn, K)    -> of each sample's K candidates, the most probable one that completed the form

Drawing several candidates per sample in the same batch and keeping the most probable (by the model's
own log-probability per character, before any constraint renormalised it) is what keeps a form fluent:
a mask alone makes a stream take a rhyme it did not want (docs/forms.md measures the cost).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from charlm.forms.chars_form import MAX_INNER_SPACES
from charlm.forms.constrain import FormState
from charlm.forms.rhyme_index import RhymeWords
from charlm.forms.template import Plan
from charlm.models.limits import MAX_LENGTH

COPY_COST = 100.0  # nats: a candidate whose form forced a copy past the guard loses to any that did not
WORD_CHARS_BOUND = 20  # a word (constrain.MAX_WORD letters), its punctuation and its space: a word line's bound


@dataclass
class FormJob:
    """The form of every sample of one call of decode.generate."""

    plans: list[Plan]  # len(prefixes) * num_samples, prefix-major
    num_samples: int
    bodies: list[str]  # per prefix: the user's part of it, inside the form's body (the title comes before)
    words: RhymeWords | None = None
    candidates: int = 1

    def candidates_for(self, on_step) -> int:
        """Streamed text is shown as it comes, so it cannot be chosen afterwards: one candidate then."""
        return 1 if on_step is not None else self.candidates

    def state(self, rows: list[int], prefixes: list[str], vocab, copies: int) -> FormState:
        """The form state of a batch whose stream i continues prefix rows[i] (`copies` candidates per sample)."""
        seen: dict[int, int] = {}
        plans, bodies = [], []
        for p in rows:
            j = seen.get(p, 0)
            seen[p] = j + 1
            plan = self.plans[p * self.num_samples + min(j // copies, self.num_samples - 1)]
            plans.append(plan)
            bodies.append(self.bodies[p])
        return FormState(plans, bodies, vocab, self.words)

    def line_choice(self, K: int) -> "LineChoice | None":
        """Candidates chosen line by line (LineChoice) when there are several (docs/forms.md measures it)."""
        return LineChoice(K) if K > 1 else None

    def check(self, prefixes: list[str], vocab) -> None:
        """Build the form state of one stream per prefix, so that a bad form fails before anything is printed."""
        self.state(list(range(len(prefixes))), prefixes, vocab, 1)

    def length(self) -> int:
        """Characters enough for the longest plan (its title and prefix come before and do not count)."""
        most = 0
        for plan in self.plans:
            if plan.units == "chars":  # a flexible line may also hold a few spaces between its phrases
                n = sum(len(line.slots) + 1 + (MAX_INNER_SPACES if line.shortest else 0) for line in plan.lines)
            else:
                n = sum(line.words * WORD_CHARS_BOUND + 4 for line in plan.lines)
            most = max(most, n)
        return min(most + 1, MAX_LENGTH)

    def pick(self, drawn: list, K: int) -> list:
        """Of each run of K candidates (one sample's), the best: complete first, then log-prob per character."""
        def rank(s):
            complete = bool(s.form and s.form.get("complete"))
            return (complete, -s.gave_way, s.logprob / max(1, len(s.logprobs)))
        return [max(drawn[i:i + K], key=rank) for i in range(0, len(drawn), K)]


class LineChoice:
    """Line by line, keep the most probable of a sample's K candidates: when all K finish a line at the
    same step (a template's lines have one length), each continues from the one whose text so far has
    the highest log-probability. Flexible lines end at different steps, so their candidates run whole."""

    def __init__(self, K: int):
        self.K, self.lines, self.choices = K, None, 0

    def before(self, state: FormState) -> None:
        self.lines = np.array([len(x) for x in state.line_classes])

    def after(self, state: FormState, logprobs: torch.Tensor, gave_way=None) -> torch.Tensor | None:
        """(B,) the rows each stream continues from, or None when no sample finished a line in step.
        `gave_way` (B,) counts each stream's steps where the copy guard had to give way to the form."""
        now = np.array([len(x) for x in state.line_classes])
        ready = torch.from_numpy((now > self.lines).reshape(-1, self.K).all(1)).to(logprobs.device)
        if not bool(ready.any()):
            return None
        self.choices += int(ready.sum())
        score = logprobs.sum(1)
        if gave_way is not None:  # a forced character that completed a copy: worse than any weak line
            score = score - COPY_COST * torch.as_tensor(gave_way, dtype=score.dtype, device=score.device)
        best = score.view(-1, self.K).argmax(1)  # (S,)
        base = torch.arange(0, len(now), self.K, device=logprobs.device)
        keep = base[:, None] + torch.arange(self.K, device=logprobs.device)
        return torch.where(ready[:, None], (base + best)[:, None].expand_as(keep), keep).reshape(-1)


class RunForms:
    """A run's learned forms (forms.extract.CorpusForms) and the rhyming words its vocabulary spells."""

    def __init__(self, forms, words: list[str] = ()):
        self.forms, self.words = forms, list(words)
        self._trie = None

    def rhyme_words(self, vocab) -> RhymeWords | None:
        """The trie of rhyming words (English only; built once, on first use)."""
        if self.forms.script != "en":
            return None
        if self._trie is None:
            self._trie = RhymeWords(self.words, vocab)
        return self._trie


def learn_run_forms(text: str) -> dict:
    """What a checkpoint stores about its corpus's forms (plain types: it is loaded with weights_only=True)."""
    from charlm.forms.rhyme_index import words_of
    from charlm.forms.extract import learn_forms

    forms = learn_forms(text)
    return {"forms": forms.to_dict(), "rhyme_words": words_of(text) if forms.script == "en" else []}


def run_forms(payload: dict, text_loader=None) -> RunForms | None:
    """The run's forms: stored at training time, or learned now from the training text for an older
    checkpoint (`text_loader()` gives it; None when there is none to read)."""
    from charlm.forms.extract import CorpusForms

    saved = payload.get("forms")
    if saved is None and text_loader is not None:
        text = text_loader()
        saved = learn_run_forms(text) if text is not None else None
    if saved is None:
        return None
    return RunForms(CorpusForms.from_dict(saved["forms"]), saved.get("rhyme_words", []))


def title_form(forms, prefixes: list[str]) -> str | None:
    """The named form whose title line every prefix starts with (a Song ci run's default prefix, 浣溪沙 and a
    line break), or None: without a form flag such a prefix is written in its tune's form."""
    if not forms.titled or not prefixes:
        return None
    title = prefixes[0].split("\n", 1)[0]
    if not all(p.startswith(title + "\n") for p in prefixes):
        return None
    return title if any(f.name == title for f in forms.named) else None


def plan_forms(req, run: RunForms | None, prefixes: list[str], vocab, generator) -> tuple[FormJob | None, list[str]]:
    """(the FormJob of a request, the prefixes to prime with: each form's title, then the user's prefix).

    No form flag: the run's own rhyme and line lengths when its corpus rhymes and no --length was
    given (forms.template.default_scheme), otherwise no form at all (None).
    """
    import random

    import torch

    from charlm.errors import CharlmError
    from charlm.forms.rhyme import NO_RHYME
    from charlm.forms.template import default_named, default_scheme, make_plans

    form = req.form
    scheme = None
    if not form.active:  # the corpus's own form, when it has one to lend
        if run is None or not req.shape.song_end:
            return None, prefixes
        fixed = default_named(run.forms) or title_form(run.forms, prefixes)
        if fixed is not None:
            form = replace(form, form=fixed)
            if run.forms.titled:  # the prefix was the title line: the form's own title takes its place
                prefixes = [p[len(fixed) + 1:] for p in prefixes]
        else:
            scheme = default_scheme(run.forms)
            if scheme is None:
                return None, prefixes
    if run is None:
        raise CharlmError("this run's forms are unknown (an old checkpoint whose training text cannot be read); "
                          "pass --corpus with the training text")
    if form.wants_rhyme and run.forms.script is None:
        raise CharlmError(NO_RHYME)
    seed = int(torch.randint(2**31 - 1, (1,), generator=generator, device=generator.device)) if generator else 0
    rng = random.Random(seed)  # drawn line lengths follow --seed like the characters do
    plans, primed = [], []
    for p in prefixes:
        made = make_plans(form, run.forms, run.forms.script, p, req.shape.lines, req.num_samples, rng, scheme)
        plans += made
        primed.append(made[0].title + p or "\n")  # nothing at all to read: a piece begins after a line break
    words = run.rhyme_words(vocab) if any(line.rhyme != "X" for plan in plans for line in plan.lines) else None
    return FormJob(plans, req.num_samples, list(prefixes), words, form.candidates), primed
