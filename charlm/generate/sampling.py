"""Decoding strategies: how the last logits of every stream, (batch, vocab), become the next indices, (batch,).

`greedy` is the textbook's arg-max; `Sampler` divides by the temperature, filters by top-k, then
top-p, and draws. A `Decoding` names one setting (from flags or from a spec such as 'top-k=5'),
and its `chooser()` is the rule `generate` calls at every step:

    logits (batch, vocab) -> repetition penalty -> / temperature -> top-k -> top-p -> draw -> (batch,)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from charlm import defaults
from charlm.errors import CharlmError


def greedy(logits: torch.Tensor, generator=None) -> torch.Tensor:
    """Arg-max over the vocabulary: (batch, vocab) -> (batch,)."""
    return logits.argmax(dim=-1)


# --- logits processors: (batch, vocab) -> (batch, vocab) ------------------------------------

def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Make characters already in the stream less likely (CTRL's rule): divide positive logits, multiply negative ones.

    `seen` is a (batch, vocab) boolean mask of the characters in each stream so far, prefix included.
    """
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    big = torch.finfo(penalised.dtype).max  # an extreme penalty must not overflow into +-inf
    penalised = torch.where(torch.isfinite(logits), penalised.clamp(-big, big), logits)
    return torch.where(seen, penalised, logits)  # (batch, vocab)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the `k` largest logits of each row and set the rest to -inf; k 0 (or >= vocab) keeps all."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = logits.topk(k, dim=-1).values[:, -1:]  # (batch, 1): the k-th largest
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most probable characters whose probability reaches `p`.

    A character is kept when the probability of the characters ranked above it is
    still below p, so the most probable one is always kept; p 1.0 keeps all.
    """
    if p >= 1.0:
        return logits
    probs = logits.softmax(dim=-1)  # (batch, vocab)
    V = probs.shape[-1]
    keep = torch.zeros_like(probs, dtype=torch.bool)
    rows = None  # the rows still to rank (None: all)
    k = min(V, 64)
    while True:  # rank only the top k (much cheaper than a full sort) unless a row's nucleus may be wider
        part = probs if rows is None else probs[rows]
        top, order = part.topk(k, dim=-1)  # (rows, k), most probable first
        total = top.cumsum(dim=-1)
        keep_sorted = total - top < p  # probability ranked strictly above each character is below p
        part_keep = torch.zeros_like(part, dtype=torch.bool).scatter_(-1, order, keep_sorted)
        covered = total[:, -1] >= p if k < V else torch.ones_like(total[:, -1], dtype=torch.bool)
        # each row is ranked only as widely as its own nucleus needs, whatever the other rows of the batch
        if rows is None and bool(covered.all()):
            return logits.masked_fill(~part_keep, float("-inf"))
        index = torch.arange(len(probs), device=probs.device) if rows is None else rows
        keep[index[covered]] = part_keep[covered]
        if bool(covered.all()):
            return logits.masked_fill(~keep, float("-inf"))
        rows, k = index[~covered], min(V, 4 * k)


def sample_from_logits(logits: torch.Tensor, generator=None, uniform: torch.Tensor | None = None) -> torch.Tensor:
    """Draw one index per row from softmax(logits): (batch, vocab) -> (batch,).

    Inverse-CDF sampling: one uniform number per row, located in the running sum of the
    probabilities (several times faster than torch.multinomial on CPU). Characters of
    probability 0 are never drawn: the search finds the first running sum above u.
    `uniform` (batch, 1) gives those numbers instead of drawing them from `generator`
    (a batch of several requests draws each request's rows from its own generator).
    """
    cdf = logits.float().softmax(dim=-1).cumsum(dim=-1)  # (batch, vocab)
    if uniform is None:
        uniform = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device)
    u = uniform * cdf[:, -1:]  # (batch, 1)
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=cdf.shape[-1] - 1)


@dataclass(frozen=True)
class Sampler:
    """Ancestral sampling: divide the logits by the temperature, filter by top-k then top-p, and draw.

    The row's largest logit is subtracted before dividing, so no temperature, however small,
    overflows: a tiny one leaves only the arg-max (ties drawn evenly), as the limit should.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __call__(self, logits: torch.Tensor, generator=None) -> torch.Tensor:
        return sample_from_logits(self.filtered(logits), generator)

    def filtered(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits to draw from: shifted, divided by the temperature, then top-k and top-p (batch, vocab)."""
        shifted = logits - logits.amax(dim=-1, keepdim=True)  # all <= 0: dividing never gives +inf
        if self.temperature < 1e-20:  # would round to 0 in float32 (0/0): the limit keeps only the maxima
            logits = shifted.masked_fill(shifted < 0, float("-inf"))
        else:
            logits = shifted / self.temperature
        return top_p_filter(top_k_filter(logits, self.top_k), self.top_p)


# --- one decoding setting, from flags or from a "top-k=5" spec -----------------------------

_SPEC_KEYS = {"temperature": float, "top_k": int, "top_p": float, "num_beams": int, "repetition_penalty": float}


def flag_name(field: str) -> str:
    """The command-line flag of a decoding field: top_k -> --top-k."""
    return "--" + field.replace("_", "-")


@dataclass(frozen=True)
class Decoding:
    """How to choose each next character: arg-max (the default), sampling, or beam search."""

    sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    num_beams: int = 1
    repetition_penalty: float = 1.0

    def validate(self, name=flag_name, arg_max: str = "--greedy") -> "Decoding":
        """Refuse settings that cannot decode, saying what to use instead.

        `name` spells a field in the messages (`--top-k` by default; the web passes its own) and
        `arg_max` says how to ask for arg-max decoding.
        """
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise CharlmError(f"{name('temperature')} must be a positive number, got {self.temperature}; "
                              f"for arg-max use {arg_max}")
        if self.top_k < 0:
            raise CharlmError(f"{name('top_k')} must be 0 (off) or more, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise CharlmError(f"{name('top_p')} must lie in (0, 1] (1 is off), got {self.top_p}")
        if self.num_beams < 1:
            raise CharlmError(f"{name('num_beams')} must be 1 (off) or more, got {self.num_beams}")
        if not (self.repetition_penalty > 0 and math.isfinite(self.repetition_penalty)):
            raise CharlmError(f"{name('repetition_penalty')} must be a positive number (1.0 is off), "
                              f"got {self.repetition_penalty}")
        if self.sample and self.num_beams > 1:
            raise CharlmError("beam search does not sample: drop --num-beams, or drop --temperature/--top-k/--top-p")
        return self

    @property
    def deterministic(self) -> bool:
        """True when every run gives the same text (arg-max and beam search)."""
        return not self.sample

    def chooser(self):
        """The (batch, vocab) -> (batch,) rule for one step (beam search has its own loop)."""
        return Sampler(self.temperature, self.top_k, self.top_p) if self.sample else greedy

    def label(self) -> str:
        """A short name that `parse_decoding` reads back, spelled as the flags are: 'greedy', 'top-k=5', 'num-beams=4'."""
        parts = []
        if self.num_beams > 1:
            parts.append(f"num-beams={self.num_beams}")
        elif self.sample:
            if self.temperature != 1.0 or (self.top_k == 0 and self.top_p == 1.0):
                parts.append(f"temperature={self.temperature:g}")
            if self.top_k:
                parts.append(f"top-k={self.top_k}")
            if self.top_p < 1.0:
                parts.append(f"top-p={self.top_p:g}")
        else:
            parts.append("greedy")
        if self.repetition_penalty != 1.0:
            parts.append(f"repetition-penalty={self.repetition_penalty:g}")
        return "+".join(parts)


# What `charlm generate` does when no strategy is named: chosen by an `evaluate` grid on a lyrics and a
# Song ci model (docs/decoding.md), together with the copy guard (copyguard.DEFAULT_MAX_COPY).
DEFAULT_DECODING = Decoding(sample=True, temperature=defaults.TEMPERATURE, top_p=defaults.TOP_P)


def parse_decoding(spec: str) -> Decoding:
    """One setting from text: 'greedy', 'temperature=0.8', 'top-k=5', 'top-p=0.9', 'num-beams=4',
    'repetition-penalty=1.2', or several joined by '+' (e.g. 'top-k=40+temperature=0.7').

    The keys are spelled as generate's flags; the older 'top_k' spelling is read too."""
    values: dict = {}
    sample = False
    for part in spec.strip().split("+"):
        part = part.strip()
        key, _, raw = part.partition("=")
        key = key.strip().replace("-", "_")
        if key == "greedy" and not raw:
            continue
        if key == "sample" and not raw:
            sample = True
            continue
        if key not in _SPEC_KEYS or not raw:
            raise CharlmError(f"cannot read decoding setting {part!r} in {spec!r}; use greedy, sample, "
                              + ", ".join(f"{k.replace('_', '-')}=N" for k in _SPEC_KEYS) + " (join several with '+')")
        try:
            values[key] = _SPEC_KEYS[key](raw.strip())
        except ValueError:
            raise CharlmError(f"{key.replace('_', '-')} needs a {_SPEC_KEYS[key].__name__} value, got {raw!r} in {spec!r}") from None
        sample = sample or key in ("temperature", "top_k", "top_p")
    if "greedy" in [p.strip() for p in spec.split("+")] and sample:
        raise CharlmError(f"{spec!r} asks for greedy and for sampling; choose one")
    return Decoding(sample=sample, **values).validate()


def parse_decodings(specs: str) -> list[Decoding]:
    """A comma-separated list of settings, e.g. 'greedy,temperature=0.8,top-k=5,top-p=0.9,num-beams=4'."""
    parts = [s for s in specs.split(",") if s.strip()]
    if not parts:
        raise CharlmError("--decoding is empty; give e.g. greedy,temperature=0.8")
    return [parse_decoding(s) for s in parts]
