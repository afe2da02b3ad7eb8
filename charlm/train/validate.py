"""Validation perplexity: the held-out text read as contiguous streams, and the tuning slice.

Perplexity is exp(summed loss / characters predicted), weighted by characters (charlm.run.metrics).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from charlm.config import Config
from charlm.models import eval_mode
from charlm.run import metrics

FORWARD_CHUNK = 256  # steps per forward on the logits path
TARGETS_CHUNK = 512  # steps per call on the target-only path (no (rows x steps x V) array to bound)
IGNORE = -100  # cross_entropy's ignore_index: the padding of the last stream


@torch.no_grad()
def perplexity(model, indices, device=None, streams: int = 1, chunk: int | None = None, fast: bool = False) -> float:
    """Perplexity of `model` on an index array read as `streams` contiguous streams side by side.

    The n-1 predictions (x_t -> x_{t+1}) are cut into S streams of L = ceil((n-1)/S)
    steps; row s reads positions s·L .. s·L+L-1, its hidden state carried from
    chunk to chunk and starting from zero at the row's first character. The
    last row is padded (·) and its padded targets are not counted:

        positions  0 ............ L-1 | L ........... 2L-1 | 2L ...... n-2 · ·
        row 0      ══════════════════►                           (S = 3)
        row 1                         ══════════════════►
        row 2                                              ═════════════►· ·
                   └ chunk 1 ┘└ chunk 2 ┘ …   (each chunk: S rows × `chunk` steps, one call)

    S = 1 is the single stream, every character predicted from all before it
    (the exact figure). With S > 1 each row's first characters lack the text
    before them, which raises the perplexity slightly (docs/gpu.md measures how
    much); in return one forward covers S rows.

    `fast` scores through the model's target-only path where it has one (kn, mix:
    `fast_targets`), which builds no vocabulary-wide n-gram rows: the same figure up
    to float rounding. Otherwise each chunk is one forward and a summed cross-entropy.
    """
    with eval_mode(model):
        device = device or next(model.parameters()).device
        data = torch.as_tensor(indices, dtype=torch.long, device=device)  # (n,)
        m = data.numel() - 1  # predictions
        if m < 1:
            return metrics.perplexity(0.0, 0)
        length = -(-m // max(1, min(streams, m)))  # L: steps per row
        rows = -(-m // length)  # S, no empty row
        X = torch.zeros(rows * length, dtype=torch.long, device=device)
        Y = torch.full((rows * length,), IGNORE, dtype=torch.long, device=device)
        X[:m], Y[:m] = data[:-1], data[1:]
        X, Y = X.view(rows, length), Y.view(rows, length)  # (S, L)
        state = model.begin_state(rows, device)
        if fast and model.fast_targets:
            return metrics.perplexity(_target_loss(model, X, Y, state, chunk or TARGETS_CHUNK), m)
        return metrics.perplexity(_forward_loss(model, X, Y, state, chunk or FORWARD_CHUNK), m)


def _forward_loss(model, X, Y, state, chunk: int) -> float:
    """Summed cross-entropy of the streams (S, L), one forward per chunk of steps."""
    total = torch.zeros((), dtype=torch.float64, device=X.device)  # summed on the device: one sync at the end
    for j in range(0, X.shape[1], chunk):
        logits, state = model(X[:, j:j + chunk], state)  # (S, steps, vocab)
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), Y[:, j:j + chunk].reshape(-1),
                                 reduction="sum", ignore_index=IGNORE)
    return total.item()


def _target_loss(model, X, Y, state, chunk: int) -> float:
    """Summed -log P(target) of the streams (S, L) through `model.target_log_probs`, padding not scored."""
    counted = Y != IGNORE  # (S, L)
    Y = Y.clamp(min=0)  # the padding asks for character 0, whose answer is not counted
    total = 0.0
    for j in range(0, X.shape[1], chunk):
        logp, state = model.target_log_probs(X[:, j:j + chunk], Y[:, j:j + chunk], state)  # (S, steps)
        total -= float(logp.double()[counted[:, j:j + chunk]].sum())
    return total


def tune_perplexity(config: Config, model, tune, device, parts: dict | None = None) -> float:
    """Perplexity on the tuning slice, after the model fits what it fits there (--mix-fit; never validation text).

    The other figures the fit reports (a mixture's parts) go into `parts` (for metrics.jsonl).
    """
    fitted = model.tune(tune, getattr(config, "mix_fit", "none"), device)
    if fitted is None:
        return perplexity(model, tune, device, fast=True)
    if parts is not None:
        parts.update({k: v for k, v in fitted.items() if k != "tune_ppl"})
    return fitted["tune_ppl"]


def or_inf(compute) -> float:
    """`compute()`, or infinity when a diverged model's mean loss (above ~709 nats) overflows math.exp in it."""
    try:
        return compute()
    except OverflowError:
        return math.inf
