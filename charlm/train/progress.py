"""What training says as it goes: one line per epoch and the continuations of the progress prefixes."""

from __future__ import annotations

import torch

from charlm.config import Config
from charlm.generate.decode import predict
from charlm.generate.sampling import DEFAULT_DECODING, greedy


def format_line(r: dict) -> str:
    """The epoch's line: 'epoch 3 | train ppl ... | val ppl ... | seconds | chars/s | minutes so far'."""
    tune = f"tune ppl {r['tune_ppl']:9.3f} | " if r.get("tune_ppl") is not None else ""
    elapsed = f" | {r['elapsed'] / 60:5.1f} min" if "elapsed" in r else ""
    return (f"epoch {r['epoch']:4d} | train ppl {r['train_ppl']:9.3f} | {tune}val ppl {r['val_ppl']:9.3f} | "
            f"{r['seconds']:6.2f} s | {r['chars_per_sec']:8.0f} chars/s{elapsed}")


def log_predictions(config: Config, model, vocab, device, log) -> None:
    """The progress continuation of each prefix (prefixes the vocabulary cannot spell are skipped).

    The textbook presets keep the textbook's greedy predictor. The others sample as
    `generate` does by default (temperature and top-p), because greedy decoding of a
    language model loops and recites, which says little about what it has learned.
    The draws come from their own generator, seeded by --seed, so the lines are
    reproducible and training's random stream is untouched.
    """
    choose, generator = greedy, None
    if not config.preset.startswith("textbook"):
        choose = DEFAULT_DECODING.chooser()
        generator = torch.Generator(device=device).manual_seed(config.seed)
    for prefix in config.prefixes:
        if prefix and not vocab.unknown(prefix):
            text = predict(prefix, config.pred_len, model, vocab, device, choose=choose, generator=generator)
            log(" -> " + text.replace("\n", " / "))
