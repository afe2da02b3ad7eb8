"""Bounds checked before any work starts: model sizes that fit memory, n-gram orders the text can fill,
and flags that do nothing for the chosen model.

Each check turns what would be a long allocation, a hang or a silent no-op into
one line that says what to use instead (docs/errors.md).
"""

from __future__ import annotations

import os

from charlm.errors import CharlmError

MAX_LENGTH = 100_000  # characters per generated sample: beyond this, decoding runs for minutes with nothing printed
MAX_ORDER = 16  # longer contexts than this only recite the text, and counting them costs order x text memory
BYTES_PER_PARAMETER = 16  # float32 weight, gradient and Adam's two moments
GATES = {"rnn": 1, "gru": 3, "lstm": 4}  # weight blocks per recurrent layer

# Flags that mean nothing to a model fitted by counting (kn): it has no network and no optimizer.
NEURAL_FLAGS = ("hidden", "onehot", "layers", "dropout", "embedding", "tie_weights", "mix_neural", "mix_weight",
                "sampler", "num_steps", "batch_size", "random_offset", "optimizer", "lr", "clip", "weight_decay",
                "lr_schedule", "patience")
MIX_FLAGS = ("mix_neural", "mix_weight")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def memory_bytes() -> int:
    """Physical memory of this machine (64 GiB when it cannot be read)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 64 << 30


def estimate_parameters(config, vocab_size: int) -> int:
    """About how many parameters `config` builds for `vocab_size` characters, computed without building it."""
    model = config.mix_neural if config.model == "mix" else config.model
    if model == "kn":
        return 0
    cell = model.replace("-scratch", "")
    gates = GATES.get(cell, 4)
    hidden, layers = int(config.hidden), max(int(config.layers), 1)
    width = int(config.embedding) or vocab_size
    recurrent = gates * (hidden * (width + hidden) + 2 * hidden)  # first layer
    recurrent += (layers - 1) * gates * (hidden * 2 * hidden + 2 * hidden)
    return recurrent + (vocab_size * int(config.embedding)) + hidden * vocab_size + vocab_size


def check_model_fits(config, vocab_size: int, blame: str = "") -> None:
    """Refuse a model whose parameters alone (with gradient and optimizer state) would not fit in memory.

    `blame` names where the sizes came from (a checkpoint); by default the flags.
    """
    n = estimate_parameters(config, vocab_size)
    need, have = n * BYTES_PER_PARAMETER, memory_bytes()
    if need > have:
        where = blame or ("--hidden, --layers, --embedding")
        raise CharlmError(f"a {config.model} model with hidden {config.hidden}, {config.layers} layer(s) and "
                          f"embedding {config.embedding} has about {n:,} parameters, needing about "
                          f"{need / 2**30:,.0f} GiB to train, more than this machine's {have / 2**30:,.0f} GiB; "
                          f"{'the checkpoint is damaged or was edited' if blame else 'lower ' + where}")


def check_order(config, n_train: int | None = None, blame: str = "") -> None:
    """Refuse an n-gram order beyond MAX_ORDER or longer than the training text (kn, mix)."""
    if config.model not in ("kn", "mix"):
        return
    order = config.order
    source = blame or f"--order {order}"
    if order > MAX_ORDER:
        raise CharlmError(f"{source} is more than {MAX_ORDER}, the longest n-gram charlm counts (longer contexts "
                          f"only recite the text, and counting them needs order x text memory)"
                          + ("; the checkpoint is damaged or was edited" if blame else "; use --order 5 to 10"))
    if n_train is not None and order > n_train:
        raise CharlmError(f"{source} is longer than the training text ({n_train} characters); "
                          "lower --order or use a longer text")


def check_length(length: int, num_samples: int = 1, flag: str = "--length") -> None:
    """Refuse a generation so long that it would run (and allocate) for minutes before printing anything."""
    if length > MAX_LENGTH:
        raise CharlmError(f"{flag} {length:,} is more than {MAX_LENGTH:,} characters, the most one sample may have "
                          f"(a character-level model drifts long before that, and nothing is printed until the end "
                          f"without --stream); generate several shorter samples")
    if length * num_samples > 100 * MAX_LENGTH:
        raise CharlmError(f"--num-samples {num_samples:,} x {flag} {length:,} is more than {100 * MAX_LENGTH:,} "
                          "characters in one run; lower one of them")


def check_seed(seed: int | None, flag: str = "--seed") -> None:
    """torch's generators take seeds in 0 .. 2**64-1 (a bigger one is an overflow error deep inside)."""
    if seed is not None and not 0 <= seed < 2**64:
        raise CharlmError(f"{flag} must lie in 0 .. 2**64-1 (what the random generators accept), got {seed}")


def inapplicable_flags(config, explicit: set[str]) -> list[str]:
    """One warning line per group of explicitly given flags that the chosen model ignores.

    Only when the model (or sampler) was given explicitly too: a choice made by a preset or the
    auto recipe is not the user's mistake.
    """
    lines = []
    if "model" in explicit and config.model == "kn":
        unused = [n for n in NEURAL_FLAGS if n in explicit]
        if unused:
            lines.append(f"{', '.join(map(_flag, unused))} {'does' if len(unused) == 1 else 'do'} not apply to "
                         "--model kn (it is fitted by counting n-grams: no network, no optimizer); ignored")
    elif "model" in explicit:
        unused = [n for n in ("order",) + MIX_FLAGS if n in explicit and config.model != "mix"]
        if unused:
            lines.append(f"{', '.join(map(_flag, unused))} {'does' if len(unused) == 1 else 'do'} not apply to "
                         f"--model {config.model} (only to kn and mix); ignored")
    if "random_offset" in explicit and "sampler" in explicit and config.random_offset and config.sampler == "random":
        lines.append("--random-offset applies to --sampler consecutive only; ignored")
    return lines
