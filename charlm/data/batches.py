"""Cut an index array into (X, Y) minibatches: the textbook's random and consecutive sampling.

Both samplers yield `(X, Y)` LongTensors of shape (batch_size, num_steps), with
`Y` equal to `X` shifted one character to the right. The order of an epoch is
drawn from a generator seeded by (seed, epoch), so epoch k is the same
whether a run is fresh or resumed, and nothing global is consumed.
"""

from __future__ import annotations

import numpy as np
import torch

from charlm.errors import CharlmError


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The generator that decides the sampling order of one epoch."""
    return np.random.default_rng([seed, epoch])


def _check_length(n: int, batch_size: int, num_steps: int) -> None:
    if n < batch_size * num_steps + 1:
        raise CharlmError(
            f"training text has {n} characters, fewer than one minibatch needs "
            f"(--batch-size {batch_size} x --num-steps {num_steps} + 1 = {batch_size * num_steps + 1}); "
            "lower --batch-size or --num-steps, or use a longer text")


def data_iter_random(corpus_indices, batch_size: int, num_steps: int, rng: np.random.Generator, device=None):
    """Random sampling: each minibatch holds `batch_size` subsequences from random places.

        text:  [s0 ][s1 ][s2 ][s3 ][s4 ][s5 ][s6 ][s7 ]-   (s = num_steps characters)
        epoch order (shuffled):  s5 s2 | s7 s0 | s3 s6 | s1 s4   (batch_size = 2)
        minibatch 1: X = [s5, s2], Y = the same windows moved right by one character

    Every subsequence is used once per epoch; those left over after the last
    whole minibatch wait for another epoch. Neighbouring minibatches are
    unrelated, so the hidden state must start fresh for each.
    """
    corpus = torch.as_tensor(np.asarray(corpus_indices), dtype=torch.long)
    _check_length(len(corpus), batch_size, num_steps)
    num_examples = (len(corpus) - 1) // num_steps
    epoch_size = num_examples // batch_size
    example_indices = torch.from_numpy(rng.permutation(num_examples))
    windows = torch.arange(num_steps)
    for i in range(epoch_size):
        starts = example_indices[i * batch_size:(i + 1) * batch_size] * num_steps  # (batch,)
        pos = starts[:, None] + windows  # (batch, num_steps)
        yield corpus[pos].to(device), corpus[pos + 1].to(device)


def data_iter_consecutive(corpus_indices, batch_size: int, num_steps: int, offset: int = 0, device=None):
    """Consecutive sampling: `batch_size` parallel streams, each minibatch continuing the last.

        text:      a b c d e f g h i j k l m n o p q r s t u v w x
        streams:   row 0: a b c d e f g h i j k l     (batch_size = 2)
                   row 1: m n o p q r s t u v w x
        minibatch: 1       2       3                   (num_steps = 4)
                   a b c d e f g h i j k -
                   m n o p q r s t u v w -

    Row i of minibatch k+1 continues row i of minibatch k, so the hidden
    state is carried across minibatches (and detached between them).
    """
    corpus = torch.as_tensor(np.asarray(corpus_indices), dtype=torch.long)[offset:]
    _check_length(len(corpus), batch_size, num_steps)
    batch_len = len(corpus) // batch_size
    streams = corpus[: batch_size * batch_len].view(batch_size, batch_len)  # (batch, batch_len)
    epoch_size = (batch_len - 1) // num_steps
    for i in range(epoch_size):
        j = i * num_steps
        yield streams[:, j:j + num_steps].to(device), streams[:, j + 1:j + num_steps + 1].to(device)


# name -> (function that makes an epoch's minibatches, whether the state carries across them)
def _random(indices, config, epoch, device):
    return data_iter_random(indices, config.batch_size, config.num_steps, epoch_rng(config.seed, epoch), device)


def _consecutive(indices, config, epoch, device):
    offset = int(epoch_rng(config.seed, epoch).integers(config.num_steps)) if config.random_offset else 0
    return data_iter_consecutive(indices, config.batch_size, config.num_steps, offset, device)


SAMPLERS = {
    "random": (_random, False),
    "consecutive": (_consecutive, True),
}


def epoch_batches(indices, config, epoch: int, device=None):
    """The minibatches of one epoch for the sampler named in `config`."""
    if config.sampler not in SAMPLERS:
        raise CharlmError(f"unknown sampler {config.sampler!r}; choose one of: {', '.join(SAMPLERS)}")
    make, _ = SAMPLERS[config.sampler]
    return make(indices, config, epoch, device)


def carries_state(sampler: str) -> bool:
    """True when a sampler's minibatches continue each other, so the state is carried over."""
    return SAMPLERS[sampler][1]


def num_batches(n: int, config) -> int:
    """How many minibatches an epoch of `n` characters has (for progress bars)."""
    if config.sampler == "random":
        return ((n - 1) // config.num_steps) // config.batch_size
    n -= config.num_steps - 1 if config.random_offset else 0
    return (n // config.batch_size - 1) // config.num_steps
