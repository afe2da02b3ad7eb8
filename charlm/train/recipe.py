"""The automatic recipe (`--preset auto`, the default of `charlm train`).

Once the corpus is loaded, `choose_recipe` reads a few facts about it (characters,
distinct characters, how repetitive it is), the device and the time budget, and
picks the fields in `AUTO_FIELDS` by simple documented rules (the table in
docs/auto.md, derived from the panel benchmark in benchmarks/panel.py). It is
not a search: the same corpus, device and budget always give the same recipe.
Flags given explicitly on the command line always win over these choices.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields, replace

import numpy as np

# Config fields that `--preset auto` may choose (help texts say "--preset auto chooses").
AUTO_FIELDS = (
    "model", "mix_neural", "hidden", "embedding", "tie_weights", "layers", "dropout",
    "weight_decay", "order", "kn_discounts", "kn_discount_kinds", "mix_fit", "mix_weight", "sampler", "num_steps", "batch_size",
    "optimizer", "lr", "lr_schedule", "epochs", "patience", "time_budget", "tune_fraction",
)

# --- the rules' numbers (docs/auto.md explains each; benchmarks/panel.py measures them) ---------------
# Default time budget in minutes by training characters: a lyrics-sized text trains in a couple of
# minutes, a Song ci-sized one (2M characters) in ten.
BUDGET_MINUTES = ((100_000, 2.5), (500_000, 5.0), (math.inf, 9.0))
# Tuning slice: TUNE_SHARE of the training text (5% for a lyrics-sized text, whose network and
# counts gain more from the characters than the weights lose), at least TUNE_MIN and at most
# TUNE_MAX characters; none below NO_TUNE_BELOW characters (too short to fit anything on).
TUNE_SHARE = ((30_000, 0.10), (100_000, 0.05), (math.inf, 0.10))
TUNE_MIN, TUNE_MAX, NO_TUNE_BELOW = 1_000, 20_000, 5_000
# Adam weight decay by training characters: only a lyrics-sized text, where the GRU overfits
# within 10 epochs, gets some (a larger text does not need it, a Markov one learns worse with it).
WEIGHT_DECAY = ((30_000, 0.0), (100_000, 3e-4), (math.inf, 0.0))
# Minibatch (streams) on a CPU by training characters: a lyrics-sized text gains from the eight times
# more updates per epoch (docs/auto.md, "what was tried").
BATCH_CPU = ((30_000, 32), (100_000, 4), (math.inf, 32))
# Dropout by training characters: much for a tiny text, little for millions of characters.
DROPOUT = ((20_000, 0.6), (100_000, 0.5), (400_000, 0.15), (math.inf, 0.1))
# Hidden (= embedding, tied) width by training characters, on a CPU; a GPU doubles it.
HIDDEN = ((30_000, 128), (300_000, 192), (math.inf, 256))
# Highest n-gram order the recipe tries on the tuning slice (choose_order lowers it further to fit 1.5 GB);
# charlm.models.limits.MAX_ORDER is the most any run may ask for.
AUTO_MAX_ORDER = 8
# At most this many passes over a text: small texts overfit long before their budget runs out.
EPOCHS = ((100_000, 15), (500_000, 20), (math.inf, 40))
# Short memory: a text of at least SHORT_MIN_CHARS training characters whose best n-gram order on the
# tuning slice is SHORT_ORDER or less (a Markov-like text, a list of short items) has nothing past a few
# characters to learn, and a GRU, which reads every past character, fits noise in the longer contexts. It gets
# dropout SHORT_DROPOUT and weight decay SHORT_WEIGHT_DECAY, with up to SHORT_EPOCHS passes to learn under them.
SHORT_ORDER, SHORT_MIN_CHARS, SHORT_DROPOUT, SHORT_WEIGHT_DECAY, SHORT_EPOCHS = 4, 100_000, 0.3, 3e-4, 50
# Modified Kneser-Ney (three discounts a level) is used when, fitted on the tuning slice, it lowers the slice's
# perplexity by at least this share: below it the gain is within what 3x the fitted numbers buy by chance.
MODIFIED_GAIN = 0.01


def _by_size(table, n: int):
    """The value of the first (limit, value) row with n < limit."""
    return next(value for limit, value in table if n < limit)


@dataclass(frozen=True)
class CorpusStats:
    """What the recipe reads from the training text (validation text excluded)."""

    chars: int  # training characters (the tuning slice included)
    distinct: int  # distinct characters (the vocabulary of the whole text)
    repeated8: float  # share of 8-character windows of the training text that occurred earlier in it


@dataclass(frozen=True)
class DeviceInfo:
    kind: str  # "cpu" or "cuda"
    cores: int  # CPU threads torch uses


def repeated_share(indices: np.ndarray, n: int = 8) -> float:
    """Share of the n-character windows of `indices` that already occurred earlier (0: no repeats, near 1: a loop)."""
    indices = np.asarray(indices, dtype=np.int64)
    if len(indices) <= n:
        return 0.0
    h = np.zeros(len(indices) - n + 1, dtype=np.uint64)
    for j in range(n):  # a 64-bit rolling product hash; collisions only make the share a hair larger
        h = h * np.uint64(1_000_003) + indices[j:len(indices) - n + 1 + j].astype(np.uint64)
    return 1.0 - len(np.unique(h)) / len(h)


def corpus_stats(corpus) -> CorpusStats:
    train = np.concatenate([corpus.train, corpus.tune]) if len(getattr(corpus, "tune", ())) else corpus.train
    return CorpusStats(int(len(train)), int(len(corpus.vocab)), round(float(repeated_share(train)), 4))


def device_info(device: str = "auto") -> DeviceInfo:
    import torch

    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return DeviceInfo("cuda" if cuda else "cpu", int(torch.get_num_threads() or os.cpu_count() or 1))


def default_budget(chars: int) -> float:
    """Minutes of training `--preset auto` gives a text of `chars` training characters."""
    return _by_size(BUDGET_MINUTES, chars)


def choose_recipe(stats: CorpusStats, device: DeviceInfo, time_budget_min: float = 0.0) -> tuple[dict, str]:
    """The Config values auto picks for this text, device and budget (0: the default budget), and why, in one line.

    Pure rules over the numbers above, no search: docs/auto.md has them as a table.
    The n-gram order is not chosen here but on the tuning slice (see resolve_auto).
    """
    n = stats.chars
    budget = time_budget_min or default_budget(n)
    hidden = _by_size(HIDDEN, n) * (2 if device.kind == "cuda" else 1)
    tune_chars = 0 if n < NO_TUNE_BELOW else int(min(TUNE_MAX, max(TUNE_MIN, _by_size(TUNE_SHARE, n) * n)))
    values = dict(
        model="mix", mix_neural="gru", hidden=hidden, embedding=hidden, tie_weights=True, layers=1,
        dropout=_by_size(DROPOUT, n), weight_decay=_by_size(WEIGHT_DECAY, n), mix_weight=0.5,
        sampler="consecutive", num_steps=35, batch_size=_by_size(BATCH_CPU, n) if device.kind == "cpu" else 64,
        optimizer="adam", lr=0.004, lr_schedule="cosine", epochs=_by_size(EPOCHS, n), patience=4,
        time_budget=budget, tune_fraction=round(tune_chars / n, 6) if tune_chars else 0.0,
    )
    values = {k: v for k, v in values.items() if k in AUTO_FIELDS}
    size = "tiny" if n < 20_000 else "small" if n < 100_000 else "medium" if n < 400_000 else "large"
    reason = (f"{n:,} training characters ({size}), {stats.distinct:,} distinct, "
              f"{stats.repeated8:.0%} repeated 8-grams, {device.kind} x{device.cores}")
    return values, reason


def _short_memory(config, stats: CorpusStats, explicit: set):
    """(config, applied): the short-memory rule (more regularisation, more passes) when the fitted order says so."""
    if stats.chars < SHORT_MIN_CHARS or config.order > SHORT_ORDER:
        return config, False
    values = {"dropout": SHORT_DROPOUT, "weight_decay": SHORT_WEIGHT_DECAY, "epochs": SHORT_EPOCHS}
    return replace(config, **{k: v for k, v in values.items() if k not in explicit}), True


# With an explicit --optimizer sgd the recipe's Adam rate would barely move the weights: plain SGD with
# clipping at 1 takes steps of about this rate (the textbook's 100 came with --clip 0.01).
SGD_LR = 1.0


def _respect_explicit(config, values: dict, explicit: set):
    """`config` with the recipe's `values` for the fields the user left open, never one their flags rule out.

    The model family adjusts the values first (a scratch model: no embedding, no tying, one layer);
    then the choices that follow from explicit flags: a tied embedding follows --hidden, an --embedding
    that differs unties, --onehot drops the embedding, --mix-weight keeps that weight, SGD gets SGD's rate.
    """
    from charlm.models import MODELS

    chosen = replace(config, **{k: v for k, v in values.items() if k not in explicit})
    family = MODELS.get(chosen.model)
    if family is not None:
        values = family.fit_recipe(values, chosen)
    if config.onehot:  # the one-hot path has no embedding to learn or tie
        values = {**values, "embedding": 0, "tie_weights": False}
    if "mix_weight" in explicit and "mix_fit" in values:  # fitting λ would overrule the weight given
        values = {**values, "mix_fit": "none"}
    if "optimizer" in explicit and config.optimizer == "sgd":
        values = {**values, "lr": SGD_LR}
    config = replace(config, **{k: v for k, v in values.items() if k not in explicit})
    if not config.tune_fraction and "mix_fit" not in explicit and hasattr(config, "mix_fit"):
        config = replace(config, mix_fit="none")  # no tuning slice to fit λ on: say the weight that is used
    if config.tie_weights and "embedding" not in explicit:  # an explicit --hidden: the tied embedding follows it
        config = replace(config, embedding=config.hidden)
    if config.tie_weights and config.embedding != config.hidden and "tie_weights" not in explicit:
        config = replace(config, tie_weights=False)  # an explicit --embedding that differs: untie rather than refuse
    return config


MIN_BATCHES = 4  # minibatches an epoch of a tiny text gets at least, where its size allows


def _fit_minibatch(config, n_train: int, explicit: set):
    """A text too short for the recipe's minibatch gets smaller ones (fewer streams first, then shorter
    steps); a --batch-size or --num-steps given stays, and is refused in words if it does not fit
    (the steps of a --batch-size given are not cut to make room for it)."""
    from charlm.data.batches import num_batches

    while num_batches(n_train, config) < MIN_BATCHES:
        if "batch_size" not in explicit and config.batch_size > 1:
            config = replace(config, batch_size=config.batch_size // 2)
        elif not {"num_steps", "batch_size"} & explicit and config.num_steps > 4:
            config = replace(config, num_steps=max(4, config.num_steps // 2))
        else:
            break
    return config


def _fit_ngram(config, corpus, explicit: set):
    """(config, note): the n-gram order and discounts fitted on the tuning slice; modified KN where it gains enough."""
    from charlm.models.kn_tuning import choose_order

    kinds = config.kn_discount_kinds
    choice = choose_order(corpus.train, corpus.tune, len(corpus.vocab), AUTO_MAX_ORDER,
                          modified="kn_discount_kinds" not in explicit or kinds == 3)
    ppl = choice.tune_ppl[choice.order]
    if "kn_discount_kinds" not in explicit:
        kinds = 3 if ppl <= choice.single_ppl * (1 - MODIFIED_GAIN) else 1
    discounts = choice.discounts
    if kinds == 1 and choice.single_discounts is not None:  # the triples did not gain enough: one discount a level
        ppl, discounts = choice.single_ppl, choice.single_discounts
    flat = [x for d in discounts for x in (d if isinstance(d, list) else [d])]
    config = replace(config, order=int(choice.order), kn_discount_kinds=kinds)
    if "kn_discounts" not in explicit:
        config = replace(config, kn_discounts=tuple(round(float(d), 6) for d in flat))
    return config, f" (tune ppl {ppl:.1f})"


def resolve_auto(config, corpus, explicit: set):
    """Fill the fields auto chooses (those not in `explicit`), carve the tuning slice, pick the n-gram order on it.

    Returns (config, corpus, line): the resolved Config (preset still "auto", so a
    checkpoint says where its values came from), the corpus with its tuning slice,
    and the one line the CLI prints.
    """
    from charlm.data.corpus import carve_tune
    from charlm.models import MODELS

    stats = corpus_stats(corpus)
    values, reason = choose_recipe(stats, device_info(config.device),
                                   config.time_budget if "time_budget" in explicit else 0.0)
    if any(f.name == "mix_fit" for f in fields(config)):
        values["mix_fit"] = "count"
    config = _respect_explicit(config, values, explicit)
    corpus = carve_tune(corpus, config.tune_fraction)
    config = _fit_minibatch(config, len(corpus.train), explicit)
    order_note = ""
    family = MODELS.get(config.model)
    if family is not None and family.uses_ngram() and not {"order", "kn_discounts"} & explicit and len(corpus.tune) >= 2:
        config, order_note = _fit_ngram(config, corpus, explicit)
        config, short = _short_memory(config, stats, explicit)
        if short:
            reason += f", short memory (best order {config.order})"
    elif "kn_discounts" in explicit and "order" not in explicit:  # one discount (or three) per level: the order is theirs
        config = replace(config, order=max(1, len(config.kn_discounts) // config.kn_discount_kinds))
    elif "order" not in explicit:  # no tuning slice (a short text): the default order, if the text is that long
        config = replace(config, order=max(1, min(config.order, len(corpus.train) - 1)))
    config.validate()
    what = MODELS[config.model].recipe_words(config, order_note)
    wd = f" wd {config.weight_decay:g}" if config.weight_decay else ""
    plan = (f"adam lr {config.lr:g} {config.lr_schedule}{wd}"
            + f", batch {config.batch_size}, up to {config.epochs} epochs in {config.time_budget:g} min"
            if config.optimizer == "adam" else f"{config.optimizer} lr {config.lr:g}")
    tune = f"tuning slice {len(corpus.tune):,} chars" if len(corpus.tune) else "no tuning slice"
    line = f"auto: {what}; {plan}; {tune} -- {reason}"
    return config, corpus, line
