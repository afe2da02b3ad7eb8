"""One configuration for a training run: filled by the CLI, read by the trainer, stored in every checkpoint.

Each field carries its command-line help in its metadata, so `charlm train --help`
is generated from this file and cannot drift from it.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields, replace

from charlm.errors import CharlmError


def _opt(default, help, **extra):
    """A dataclass field whose metadata holds the CLI help (and optional `flag`, `choices`)."""
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata={"help": help, **extra})
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class Config:
    """Everything that decides what a training run does (and nothing about how it is printed)."""

    # --- data -------------------------------------------------------------
    corpus: str | None = _opt(None, "Text file (.txt, .gz or .zip). Default: data/, then $CHARLM_DATA, then ../shared/data/ (the Jay Chou lyrics).")
    member: str | None = _opt(None, "Which member of a .zip to read (needed when the zip holds several text files).")
    encoding: str = _opt("utf-8", "Text encoding of the corpus, e.g. gbk for older Chinese files.")
    newlines: str = _opt("keep", "Keep line breaks as characters, or replace them with spaces as the textbook did.", choices=("keep", "space"))
    max_chars: int = _opt(0, "Keep only the first N characters (the textbook used 10000); 0 keeps the whole text.")
    val_fraction: float = _opt(0.1, "Hold out this last fraction of the text, contiguously, for validation perplexity.")
    # --- model ------------------------------------------------------------
    model: str = _opt("rnn", "Model family.")
    hidden: int = _opt(256, "Hidden units of the recurrent layer.")
    onehot: bool = _opt(False, "Use the textbook path: one-hot inputs multiplied step by step (slower, same result).")
    layers: int = _opt(1, "Stacked recurrent layers (nn models rnn, gru, lstm; the scratch models have one).")
    dropout: float = _opt(0.0, "Dropout probability in [0, 1) on the embedding, between layers and before the output layer; active only in training.")
    embedding: int = _opt(0, "0: one-hot input as in the textbook; N > 0: a learned N-wide embedding (nn models rnn, gru, lstm, ffn).")
    context: int = _opt(0, "ffn: characters of context the feed-forward n-gram network reads; 0: the n-gram order minus one (--order).")
    tie_weights: bool = _opt(False, "Share the output layer's weights with the embedding (needs --embedding equal to --hidden).")
    # --- n-gram and mixture (kn, mix) -------------------------------------
    order: int = _opt(5, "kn and mix: n-gram order of the Kneser-Ney model (5 = predict from the previous 4 characters).")
    kn_discounts: tuple = _opt((), "kn and mix: one Kneser-Ney discount per level (lowest first; D1, D2, D3+ per level with --kn-discounts 3), as --preset auto fits them on the tuning slice; empty: the closed-form estimate.", flag="--kn-discount", multiple=True)
    kn_discount_kinds: int = _opt(1, "kn and mix: discounts per n-gram level: 1 (interpolated Kneser-Ney) or 3 (modified Kneser-Ney, Chen & Goodman: D1, D2, D3+ for counts 1, 2, 3 and more; --kn-discount then takes three per level).", flag="--kn-discounts")
    mix_neural: str = _opt("rnn", "mix: the neural model family whose distribution is interpolated with the n-gram.")
    mix_weight: float = _opt(0.5, "mix: weight λ of the neural distribution; the n-gram gets 1-λ (fixed, never fitted on validation text).")
    mix_fit: str = _opt("none", "mix: fit λ on the tuning slice (--tune-fraction): none keeps --mix-weight; global fits one λ; count fits one λ per bucket of how often the n-gram context was seen. Never worse on the tuning slice than either part alone.", choices=("none", "global", "count"))
    # --- batches ----------------------------------------------------------
    sampler: str = _opt("consecutive", "random: fresh subsequences and a fresh state per minibatch; consecutive: streams that carry the state across minibatches.", choices=("random", "consecutive"))
    num_steps: int = _opt(35, "Time steps per minibatch (length of backpropagation through time).")
    batch_size: int = _opt(32, "Subsequences (or streams) per minibatch.")
    random_offset: bool = _opt(False, "consecutive sampler: start each epoch at a random offset below --num-steps.")
    # --- optimisation -----------------------------------------------------
    epochs: int = _opt(20, "Passes over the training text.")
    optimizer: str = _opt("adam", "sgd (the textbook's choice for the scratch model) or adam.", choices=("sgd", "adam"))
    lr: float = _opt(0.002, "Learning rate.")
    clip: float = _opt(1.0, "Clip gradients to this global norm (the textbook used 0.01); 0 turns clipping off.")
    weight_decay: float = _opt(0.0, "L2 weight decay added by the optimizer.")
    lr_schedule: str = _opt("none", "Learning-rate schedule: none, plateau (halve when validation stalls) or cosine.", choices=("none", "plateau", "cosine"))
    patience: int = _opt(0, "Stop after this many epochs without a better validation perplexity; 0 never stops early.")
    time_budget: float = _opt(0.0, "Minutes of training (the first minibatches are timed, then the steps and the learning-rate schedule are planned to fit); training ends by then, mid-epoch if need be. 0: no budget.")
    tune_fraction: float = _opt(0.0, "Carve this last fraction off the training text as a tuning slice: the n-gram order and mixture weights are fitted on it and early stopping reads it (never the validation text). 0: none.")
    seed: int = _opt(0, "Random seed for initialisation and sampling order.")
    device: str = _opt("auto", "auto uses CUDA when present.", choices=("auto", "cpu", "cuda"))
    precision: str = _opt("fp32", "Training arithmetic: fp32 (TF32 matrix products on CUDA), or bf16 / fp16 autocast on a CUDA GPU (with a loss scaler); the CPU trains in fp32 only.", choices=("fp32", "bf16", "fp16"))
    compile: bool = _opt(False, "torch.compile the model's forward on CUDA; ignored with a line on the CPU, where it measured no faster (docs/gpu.md).")
    val_streams: int = _opt(0, "Validate the held-out text as N contiguous streams read side by side (state carried within each); 1: one stream, the exact figure; 0: chosen from the text length and device (docs/gpu.md).")
    # --- reporting --------------------------------------------------------
    prefixes: tuple = _opt(("分开", "不分开"), "Prefix to continue in the progress samples (repeat the flag for several).", flag="--prefix", multiple=True)
    pred_every: int = _opt(5, "Print a continuation of each prefix every N epochs; 0 never.")
    pred_len: int = _opt(50, "Characters in each progress continuation.")
    out: str | None = _opt(None, "Run directory for metrics.jsonl, last.pt and best.pt. Default: checkpoints/<time>-<model>-<sampler>.")
    preset: str | None = _opt("auto", "Named set of hyperparameters; explicit flags override it. auto: chosen from the corpus, device and time budget (docs/auto.md); none: the plain field defaults.")

    def validate(self) -> "Config":
        """Refuse values that cannot train, with a line saying what to use instead."""
        for f in fields(self):  # nan slips through every comparison below, inf through most
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise CharlmError(f"{f.metadata.get('flag') or '--' + f.name.replace('_', '-')} must be a finite "
                                  f"number, got {value}")
        if not 0 <= self.seed < 2**64:
            raise CharlmError(f"--seed must lie in 0 .. 2**64-1 (what the random generators accept), got {self.seed}")
        positive = ("hidden", "num_steps", "batch_size", "epochs", "pred_len")
        for name in positive:
            if getattr(self, name) <= 0:
                raise CharlmError(f"--{name.replace('_', '-')} must be a positive whole number, got {getattr(self, name)}")
        if not self.lr > 0:
            raise CharlmError(f"--lr must be positive, got {self.lr}")
        if not 0 < self.val_fraction < 1:
            raise CharlmError(f"--val-fraction must lie strictly between 0 and 1, got {self.val_fraction}")
        for name in ("max_chars", "pred_every", "patience", "val_streams"):
            if getattr(self, name) < 0:
                raise CharlmError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(self, name)}")
        for name in ("clip", "weight_decay"):
            if getattr(self, name) < 0:
                raise CharlmError(f"--{name.replace('_', '-')} must be 0 or more (0 turns it off), got {getattr(self, name)}")
        if self.weight_decay > 1:  # a factor per step: above 1 the weights flip sign (and 1e39 overflows float32)
            raise CharlmError(f"--weight-decay must be at most 1 (1e-4 is usual; 0 turns it off), got {self.weight_decay}")
        self._validate_discounts()
        if self.time_budget < 0:
            raise CharlmError(f"--time-budget must be 0 (no budget) or a number of minutes, got {self.time_budget}")
        if not 0 <= self.tune_fraction < 0.5:
            raise CharlmError(f"--tune-fraction must lie in [0, 0.5) (a share of the training text; 0: none), got {self.tune_fraction}")
        if self.order < 1:
            raise CharlmError(f"--order must be 1 or more (1 = character frequencies, 5 = the usual baseline), got {self.order}")
        if self.order > 16:  # charlm.models.kneser_ney.MAX_ORDER: refused before any counting allocates per-order arrays
            raise CharlmError(f"--order must be at most 16 (character n-grams gain nothing beyond; 6-8 is usually best), got {self.order}")
        if not 0 <= self.mix_weight <= 1:
            raise CharlmError(f"--mix-weight must lie in [0, 1] (the neural share of the mixture), got {self.mix_weight}")
        # --- model shape (layers, dropout, embedding, tie_weights); the models refuse what they cannot use
        if self.layers < 1:
            raise CharlmError(f"--layers must be 1 or more, got {self.layers}")
        if not 0 <= self.dropout < 1:
            raise CharlmError(f"--dropout must lie in [0, 1) (a probability of zeroing a unit), got {self.dropout}")
        if self.embedding < 0:
            raise CharlmError(f"--embedding must be 0 (one-hot input) or a positive width, got {self.embedding}")
        if self.onehot and self.embedding:
            raise CharlmError(f"--onehot feeds one-hot vectors, --embedding {self.embedding} learned vectors; give only one")
        if self.tie_weights and self.embedding != self.hidden:
            raise CharlmError(f"--tie-weights shares the output layer ({self.hidden} wide, --hidden) with the embedding "
                              f"(--embedding {self.embedding}); give --embedding {self.hidden}")
        return self

    def _validate_discounts(self) -> None:
        """--kn-discounts 1 or 3, and --kn-discount: one number per level in (0, 1], or D1, D2, D3+ per level."""
        kinds = self.kn_discount_kinds
        if kinds not in (1, 3):
            raise CharlmError(f"--kn-discounts must be 1 (interpolated Kneser-Ney) or 3 (modified), got {kinds}")
        if self.context < 0:
            raise CharlmError(f"--context must be 0 (the order minus one) or a number of characters, got {self.context}")
        for i, d in enumerate(self.kn_discounts):
            limit = 1 + i % kinds  # D1 <= 1, D2 <= 2, D3+ <= 3
            try:
                ok = 0 < float(d) <= limit
            except (TypeError, ValueError):
                ok = False
            if not ok:
                what = "in (0, 1], one per n-gram level" if kinds == 1 else "D1, D2, D3+ per level in (0, 1], (0, 2], (0, 3]"
                raise CharlmError(f"--kn-discount takes numbers {what}, got {d!r}")
        if self.kn_discounts and len(self.kn_discounts) != kinds * self.order:
            raise CharlmError(f"--kn-discount was given {len(self.kn_discounts)} times; --order {self.order} needs "
                              + ("one per level" if kinds == 1 else f"{3 * self.order} (three per level, --kn-discounts 3)"))

    def to_dict(self) -> dict:
        """Plain dict for checkpoints (only str, int, float, bool, None and tuples: safe for weights_only loading)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Config":
        """Rebuild from a checkpoint; unknown keys (from a newer charlm) are ignored, missing ones take defaults."""
        known = {f.name for f in fields(cls)}
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in known}
        return cls(**values)


def field_default(f):
    """The default value of a Config field, whether given directly or by a factory."""
    return f.default_factory() if f.default is MISSING else f.default


# Presets set several fields at once. "per_model" entries apply only when the run
# uses that model, so one preset can give each model its textbook optimiser.
_TEXTBOOK = dict(
    max_chars=10000, newlines="space", epochs=250, num_steps=35, batch_size=32,
    hidden=256, clip=0.01, pred_every=50, pred_len=50,
    per_model={
        "rnn-scratch": dict(optimizer="sgd", lr=100.0),
        "rnn": dict(optimizer="adam", lr=0.001),
    },
)

PRESETS: dict[str, dict] = {
    "textbook": _TEXTBOOK,
    "textbook-scratch": {**_TEXTBOOK, "model": "rnn-scratch", "sampler": "random"},
    "textbook-rnn": {**_TEXTBOOK, "model": "rnn", "sampler": "consecutive"},
    # A small regularised GRU interpolated half and half with the KN 5-gram: validation
    # perplexity about 168 on the default split, where the 5-gram alone has 200 (docs/baseline.md).
    "best": dict(
        max_chars=0, newlines="keep", val_fraction=0.1, model="mix", mix_neural="gru", order=5, mix_weight=0.5,
        embedding=192, hidden=192, tie_weights=True, layers=1, dropout=0.5, sampler="consecutive",
        num_steps=35, batch_size=32, optimizer="adam", lr=0.004, clip=1.0, weight_decay=1e-4,
        lr_schedule="cosine", epochs=12, patience=3,
    ),
}


# Not in PRESETS: "auto" is chosen once the corpus is read (charlm/recipe.py), "none" keeps the field defaults.
PRESET_NAMES = ("auto", "none", *sorted(PRESETS))


def apply_preset(config: Config, name: str | None, explicit: set[str]) -> Config:
    """Return `config` with preset `name` applied to every field not named in `explicit`.

    "auto" and "none" change nothing here: auto is resolved later by
    `recipe.resolve_auto`, which needs the corpus.
    """
    if not name or name in ("auto", "none"):
        return config
    if name not in PRESETS:
        raise CharlmError(f"unknown preset {name!r}; choose one of: {', '.join(PRESET_NAMES)}")
    preset = PRESETS[name]
    values = {k: v for k, v in preset.items() if k != "per_model"}
    model = config.model if "model" in explicit else values.get("model", config.model)
    values.update(preset.get("per_model", {}).get(model, {}))
    values = {k: v for k, v in values.items() if k not in explicit}
    return replace(config, preset=name, **values)
