"""Turn a model and a prefix into text: the textbook's `predict`, batched `generate`, `beam_search` and `score`.

Each step asks a strategy from `sampling` (`greedy` or a `Sampler`) for the next index of every
stream, after the copy guard and the verse shape (`Rules`) have banned what they forbid.
`generate` runs many streams at once, one model call per step for all of them:

    prefixes        prime (one call per prefix)      step t (one call for every stream)
    分开   x N  ->  state copied to N streams  ->  [B streams] --choose--> (B,) --model--> (B, vocab)
    不分开 x N  ->  state copied to N streams  ->       ^________________________________|

`beam_search` keeps the K most probable continuations of each prefix instead.
The log-probabilities reported with every sample are the model's own
(log-softmax of the raw logits), whatever the strategy changed before choosing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from charlm.errors import CharlmError
from charlm.generate.prefix import encode_prefix
from charlm.generate.sampling import Decoding, apply_repetition_penalty, greedy
from charlm.generate.rules import Rules
from charlm.generate.verse import Shape
from charlm.models import eval_mode


@torch.no_grad()
def predict(prefix: str, num_chars: int, model, vocab, device=None, choose=greedy, generator=None) -> str:
    """Continue `prefix` by `num_chars` characters and return prefix + continuation (the textbook's name)."""
    with eval_mode(model):
        device = device or next(model.parameters()).device
        idx = encode_prefix(prefix, vocab)
        state = model.begin_state(1, device)
        logits, state = model(torch.tensor([idx], device=device), state)  # (1, len(prefix), vocab)
        out = []
        for _ in range(num_chars):
            nxt = choose(logits[:, -1], generator)  # (1,)
            out.append(int(nxt))
            logits, state = model(nxt.view(1, 1), state)
        return prefix + vocab.decode(out)


# --- hidden states of any model, batched ---------------------------------------------------

def _batch_dims(model, device):
    """Which dimension of each state tensor is the batch: where begin_state(1) and begin_state(2) differ.

    Works for a tensor, a tuple of tensors (LSTM) or nested tuples (a mixture), without asking the model's type.
    """
    def dims(a, b):
        if isinstance(a, torch.Tensor):
            return next((i for i, (x, y) in enumerate(zip(a.shape, b.shape)) if x != y), None)
        return tuple(dims(x, y) for x, y in zip(a, b))
    return dims(model.begin_state(1, device), model.begin_state(2, device))


def _select(state, dims, index: torch.Tensor):
    """The streams `index` of a batched state (repeats allowed: copies a stream)."""
    if isinstance(state, torch.Tensor):
        return state if dims is None else state.index_select(dims, index)
    return type(state)(_select(s, d, index) for s, d in zip(state, dims))


def _cat(states: list, dims):
    if isinstance(states[0], torch.Tensor):
        return states[0] if dims is None else torch.cat(states, dim=dims)
    return type(states[0])(_cat([s[i] for s in states], d) for i, d in enumerate(dims))


def _shape_key(state, dims):
    """The state's shape without its batch dimension: states with equal keys can share one batch."""
    if isinstance(state, torch.Tensor):
        return tuple(n for i, n in enumerate(state.shape) if i != dims)
    return tuple(_shape_key(s, d) for s, d in zip(state, dims))


@dataclass
class _Group:
    """Streams that step together: `rows[i]` is the prefix index of stream i."""

    rows: list[int]
    logits: torch.Tensor  # (streams, vocab): the next-character logits
    state: object


def _prime(model, encoded: list[list[int]], copies: int, dims, device) -> list[_Group]:
    """Read each prefix once, then copy its state to `copies` streams; prefixes whose states
    have the same shape (all of them, for recurrent nets) share one batch."""
    groups: dict = {}
    for p, idx in enumerate(encoded):
        logits, state = model(torch.tensor([idx], device=device), model.begin_state(1, device))  # (1, len, vocab)
        groups.setdefault(_shape_key(state, dims), []).append((p, logits[:, -1], state))
    out = []
    for members in groups.values():
        rows = [p for p, _, _ in members for _ in range(copies)]
        repeat = torch.arange(len(members), device=device).repeat_interleave(copies)  # (streams,)
        logits = torch.cat([lg for _, lg, _ in members]).index_select(0, repeat)  # (streams, vocab)
        state = _select(_cat([s for _, _, s in members], dims), dims, repeat)
        out.append(_Group(rows, logits, state))
    return out


def _seen_mask(encoded: list[list[int]], rows: list[int], vocab_size: int, device) -> torch.Tensor:
    seen = torch.zeros(len(rows), vocab_size, dtype=torch.bool, device=device)  # (streams, vocab)
    for i, p in enumerate(rows):
        seen[i, encoded[p]] = True
    return seen


# --- generation ----------------------------------------------------------------------------

@dataclass
class Sample:
    """One generated continuation and the model's log-probability (natural log) of each of its characters.

    `gave_way` counts the steps at which the copy guard and the verse rules together banned every
    character, so that this stream took its choice from the unconstrained distribution (never
    happens with N >= 1 unless the vocabulary is tiny).
    """

    prefix: str
    text: str
    logprobs: list[float] = field(default_factory=list)
    gave_way: int = 0
    form: dict | None = None  # under a song form: its name, scheme, each line's rhyme class, complete or not

    @property
    def logprob(self) -> float:
        """Total log-probability of the continuation given the prefix."""
        return float(sum(self.logprobs))


def _to_samples(prefixes, rows, tokens, logprobs, vocab, rules: Rules | None = None) -> list[Sample]:
    tokens, logprobs = tokens.tolist(), logprobs.tolist()
    out = []
    for i, (p, t, lp) in enumerate(zip(rows, tokens, logprobs)):
        gave_way = 0
        if rules is not None:
            end = int(rules.end[i])
            t, lp, gave_way = t[:end], lp[:end], int(rules.gave_way[i])
        text = vocab.decode(t)
        if rules is not None and rules.shape.tidy:  # a sample never ends in blank space
            text = text.rstrip()
            lp = lp[:len(text)]
        form = rules.form.report(i) if rules is not None and rules.form is not None else None
        out.append(Sample(prefixes[p], text, lp, gave_way, form))
    return out


def _group_rules(guard, shape: Shape, prefixes, encoded, rows: list[int], vocab, length: int,
                 form=None, copies: int = 1) -> Rules | None:
    """The copy guard's, verse shape's and form's rules for the streams `rows` of one group, or None when none is on."""
    state = form.state(rows, prefixes, vocab, copies) if form is not None else None
    rules = Rules(guard, shape, [prefixes[p] for p in rows], [encoded[p] for p in rows], vocab, length, state)
    return rules if rules.active else None


def _run_beams(model, group: _Group, K: int, V: int, length: int, penalty: float, seen, rules, dims):
    """Search `length` steps for the P prefixes x K beams of `group`; returns (tokens, logprobs), both
    (P*K, steps), the K beams of each prefix best first."""
    P, device = len(group.rows) // K, group.logits.device
    logits, state = group.logits, group.state  # (P*K, V)
    scores = torch.zeros(P, K, device=device)
    scores[:, 1:] = float("-inf")  # all K copies start equal: expand only the first at step 1
    tokens = torch.empty(P * K, 0, dtype=torch.long, device=device)
    logprobs = torch.empty(P * K, 0, dtype=torch.float32, device=device)
    base = (torch.arange(P, device=device) * K)[:, None]  # (P, 1): first row of each prefix
    for t in range(length):
        model_lp = logits.float().log_softmax(-1)  # (P*K, V)
        search_lp = (apply_repetition_penalty(logits, seen, penalty).float().log_softmax(-1)
                     if seen is not None else model_lp)
        if rules is not None:
            search_lp = rules.ban(search_lp)
        cand = (scores.view(-1, 1) + search_lp).view(P, K * V)  # (P, K*V)
        scores, best = cand.topk(K, dim=1)  # (P, K), best first
        rows = (base + best // V).view(-1)  # (P*K,): the parent of each new beam
        chars = (best % V).view(-1)  # (P*K,)
        tokens = torch.cat([tokens[rows], chars[:, None]], 1)  # (P*K, t+1)
        logprobs = torch.cat([logprobs[rows], model_lp[rows, chars][:, None]], 1)
        if seen is not None:
            seen = seen[rows].scatter_(1, chars[:, None], True)
        if rules is not None:
            rules.reorder(rows.cpu().numpy())
            rules.step(chars)
        if t + 1 < length:
            logits, state = model(chars[:, None], _select(state, dims, rows))  # (P*K, 1, V)
            logits = logits[:, -1]
    return tokens, logprobs


def _run_streams(model, group: _Group, length: int, choose, penalty: float, seen, generator, on_step, rules,
                 choice=None, dims=None):
    """Step every stream of `group` at most `length` times; returns (tokens, logprobs), both (streams, steps).
    `choice` (formed.LineChoice) makes a form's candidates continue from the best of them after each line."""
    logits, state = group.logits, group.state
    B, device = logits.shape[0], logits.device
    tokens = torch.zeros(B, length, dtype=torch.long, device=device)
    logprobs = torch.zeros(B, length, dtype=torch.float32, device=device)
    for t in range(length):
        scores = apply_repetition_penalty(logits, seen, penalty) if seen is not None else logits
        if rules is not None:
            scores = rules.ban(scores)
        nxt = choose(scores, generator)  # (B,)
        logprobs[:, t] = logits.float().log_softmax(-1).gather(1, nxt[:, None]).squeeze(1)
        tokens[:, t] = nxt
        if seen is not None:
            seen.scatter_(1, nxt[:, None], True)
        if choice is not None:
            choice.before(rules.form)
        keep = rules.step(nxt) if rules is not None else None
        rows = choice.after(rules.form, logprobs[:, :t + 1], rules.gave_way) if choice is not None else None
        if rows is not None:  # each candidate continues the best one's text, state and form
            tokens[:, :t + 1], logprobs[:, :t + 1] = tokens[rows, :t + 1], logprobs[rows, :t + 1]
            nxt, state = nxt[rows], _select(state, dims, rows)
            seen = seen[rows] if seen is not None else None
            rules.reorder(rows.cpu().numpy())
            keep = rules.alive
        if on_step is not None:
            on_step(nxt if keep is None else nxt.masked_fill(~torch.from_numpy(keep).to(device), -1))
        if keep is not None and not keep.any():
            break  # every stream has ended
        if t + 1 < length:  # the last character needs no further step
            logits, state = model(nxt[:, None], state)  # (B, 1, vocab)
            logits = logits[:, -1]
    return tokens, logprobs


def generate(model, vocab, prefixes, length: int, decoding: Decoding = Decoding(), num_samples: int = 1,
             generator: torch.Generator | None = None, device=None, on_step=None, *, guard=None,
             shape: Shape = Shape(), form=None) -> list[Sample]:
    """Continue each prefix `num_samples` times, all streams in one batch; returns prefix-major samples.

    `prefixes` is one string or a list; with beam search, `num_samples` is how many of the
    best beams to return per prefix. `guard` (a copyguard.CopyGuard) bans every character that
    would make a span of more than `guard.n` characters of the corpus (a span may start in the
    prefix; one inside the prefix is the user's own). `shape` (verse.Shape) stops streams after
    K lines or at the end of a song and keeps blank lines tidy; `length` is then the most
    characters a sample may have. `on_step(indices)` (a (streams,) tensor, -1 for a stream that
    has ended) is called after every step, e.g. to print characters as they come (not for beams).
    `form` (generate.formed.FormJob) holds each sample's song form: lines, templates and rhyme are
    then exact, `length` is the form's, and each sample is the most probable of the form's candidates.
    """
    prefixes = [prefixes] if isinstance(prefixes, str) else list(prefixes)
    decoding.validate()
    if num_samples < 1:
        raise CharlmError(f"--num-samples must be 1 or more, got {num_samples}")
    if length < 0:
        raise CharlmError(f"--length must be 0 or more, got {length}")
    if shape.lines < 0:
        raise CharlmError(f"--lines must be 0 (no limit) or more, got {shape.lines}")
    encoded = [encode_prefix(p, vocab) for p in prefixes]
    if guard is not None and guard.vocab_size != len(vocab):
        raise CharlmError(f"the copy-guard index is for a vocabulary of {guard.vocab_size} characters, "
                          f"the model has {len(vocab)}; it belongs to another run")
    if decoding.num_beams > 1:
        return beam_search(model, vocab, prefixes, length, decoding.num_beams, num_samples,
                           decoding.repetition_penalty, device, guard=guard, shape=shape, form=form)
    K = form.candidates_for(on_step) if form is not None else 1  # streams drawn per sample
    length = form.length() if form is not None else length
    if length == 0:
        return [Sample(p, "", []) for p in prefixes for _ in range(num_samples)]
    with eval_mode(model):
        with torch.inference_mode():
            device = device or next(model.parameters()).device
            dims = _batch_dims(model, device)
            choose, penalty = decoding.chooser(), decoding.repetition_penalty
            samples: dict[int, list[Sample]] = {}
            for group in _prime(model, encoded, num_samples * K, dims, device):
                seen = _seen_mask(encoded, group.rows, len(vocab), device) if penalty != 1.0 else None
                rules = _group_rules(guard, shape, prefixes, encoded, group.rows, vocab, length, form, K)
                choice = form.line_choice(K) if form is not None and rules is not None else None
                tokens, logprobs = _run_streams(model, group, length, choose, penalty, seen, generator, on_step, rules,
                                                choice, dims)
                for row, s in zip(group.rows, _to_samples(prefixes, group.rows, tokens, logprobs, vocab, rules)):
                    samples.setdefault(row, []).append(s)
            if K > 1:
                samples = {p: form.pick(drawn, K) for p, drawn in samples.items()}
            return [s for p in range(len(prefixes)) for s in samples[p]]


def beam_search(model, vocab, prefixes, length: int, num_beams: int, num_return: int = 1,
                repetition_penalty: float = 1.0, device=None, *, guard=None, shape: Shape = Shape(),
                form=None) -> list[Sample]:
    """Keep the `num_beams` most probable continuations of each prefix, all prefixes in one batch.

        step t:  K beams x V characters -> the K best (beam, character) pairs by total log-probability
                 -> each new beam copies its parent's state and history, then reads its character

    Returns the `num_return` best of each prefix, best first. Beam search finds a more probable
    text than arg-max on most models, but (with a fixed width) it is not guaranteed to. The copy
    guard and tidy rules remove candidates; a beam that reaches a stop (`shape.lines`, the end of a
    song) is cut there at the end (the search itself runs the full length).
    """
    prefixes = [prefixes] if isinstance(prefixes, str) else list(prefixes)
    K = num_beams
    if K > len(vocab):
        raise CharlmError(f"--num-beams {K} exceeds the vocabulary of {len(vocab)} characters")
    if not 1 <= num_return <= K:
        raise CharlmError(f"beam search returns at most --num-beams sequences per prefix: "
                          f"--num-samples {num_return} with --num-beams {K}")
    encoded = [encode_prefix(p, vocab) for p in prefixes]
    length = form.length() if form is not None else length
    if length == 0:
        return [Sample(p, "", []) for p in prefixes for _ in range(num_return)]
    with eval_mode(model):
        with torch.inference_mode():
            device = device or next(model.parameters()).device
            dims = _batch_dims(model, device)
            samples: dict[int, list[Sample]] = {}
            for group in _prime(model, encoded, K, dims, device):
                seen = _seen_mask(encoded, group.rows, len(vocab), device) if repetition_penalty != 1.0 else None
                rules = _group_rules(guard, shape, prefixes, encoded, group.rows, vocab, length, form, K)
                tokens, logprobs = _run_beams(model, group, K, len(vocab), length, repetition_penalty, seen, rules, dims)
                base = torch.arange(0, len(group.rows), K, device=device)[:, None]  # (P, 1): first row of each prefix
                keep = (base + torch.arange(num_return, device=device)).view(-1)  # beams are sorted best first
                if rules is not None:
                    rules.reorder(keep.cpu().numpy())
                rows = [group.rows[i] for i in keep.tolist()]
                for row, s in zip(rows, _to_samples(prefixes, rows, tokens[keep], logprobs[keep], vocab, rules)):
                    samples.setdefault(row, []).append(s)
            return [s for p in range(len(prefixes)) for s in samples[p]]


@torch.no_grad()
def score(model, vocab, prefix: str, text: str, device=None) -> list[float]:
    """The model's log-probability of each character of `text` following `prefix` (teacher forcing)."""
    if not text:
        return []
    with eval_mode(model):
        device = device or next(model.parameters()).device
        idx = encode_prefix(prefix, vocab) + encode_prefix(text, vocab)
        X = torch.tensor([idx[:-1]], device=device)  # (1, n-1)
        logits, _ = model(X, model.begin_state(1, device))  # (1, n-1, vocab)
        lp = logits[0, len(prefix) - 1:].float().log_softmax(-1)  # (len(text), vocab)
        return lp.gather(1, torch.tensor(idx[len(prefix):], device=device)[:, None]).squeeze(1).tolist()

