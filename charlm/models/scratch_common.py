"""What the from-scratch models share: the textbook's initialisation and the options they refuse."""

from __future__ import annotations

import torch
from torch import nn

from charlm.errors import CharlmError

NN_MODELS = ("rnn", "gru", "lstm")  # the families that accept --layers, --embedding and --tie-weights


def normal(*shape) -> nn.Parameter:
    """A weight drawn from normal(0, 0.01), the textbook's initialisation."""
    return nn.Parameter(torch.randn(*shape) * 0.01)


def zeros(*shape) -> nn.Parameter:
    """A bias starting at zero, as in the textbook."""
    return nn.Parameter(torch.zeros(*shape))


def check_scratch_config(config, name: str) -> None:
    """Refuse the options a textbook model has no place for: stacked layers and learned embeddings.

    The scratch models keep the chapter's shape (one layer, one-hot input) so
    that the code reads beside the equations; the nn models offer the rest.
    """
    refused = [flag for flag, given in (("--layers %d" % config.layers, config.layers != 1),
                                        ("--embedding %d" % config.embedding, config.embedding != 0),
                                        ("--tie-weights", bool(config.tie_weights))) if given]
    if refused:
        raise CharlmError(f"{name} is the textbook's one-layer model on one-hot input and cannot use "
                          f"{' '.join(refused)}; use --model {name.removesuffix('-scratch')} "
                          f"(the models that can: {', '.join(NN_MODELS)})")


# What --preset auto gives a from-scratch model: its one-layer one-hot shape, and Adam at 0.002 (on the
# lyrics' first 30,000 characters, 4 epochs, gru-scratch reached validation perplexity 741 at lr 0.002,
# 908 at the embedded models' 0.004 and 809 at 0.01). Its width is the recipe's, by text size.
SCRATCH_RECIPE = dict(embedding=0, tie_weights=False, layers=1, lr=0.002)


class ScratchRecipe:
    """Mixin for the scratch families: the auto recipe never gives them an embedding, tying or layers."""

    @classmethod
    def fit_recipe(cls, values: dict, config) -> dict:
        return {**values, **SCRATCH_RECIPE}
