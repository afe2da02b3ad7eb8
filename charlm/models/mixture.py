"""A neural model interpolated with the Kneser-Ney n-gram: p = λ·p_neural + (1−λ)·p_kn.

The two models make different mistakes (the n-gram remembers exact phrases,
the network generalises across similar contexts), so their average predicts
better than either. λ is fixed by `--mix-weight`, or fitted on the tuning slice
(`--mix-fit`, see `fit_mixture`); it is never fitted on the validation text.

With `--mix-fit count` λ depends on the context: one weight per bucket of how
often the longest matching n-gram context was seen in training (the counting
model is sure of frequent contexts, the network of unseen ones):

    count of the longest seen context   0   1   2-3   4-7   8-15  ...  2^13+
    bucket                              0   1    2     3     4    ...   14

Training and evaluation differ, as with dropout:

    model.train():  logits of the neural part alone   -> the trainer's loss trains it as usual
    model.eval():   log(λ·softmax(neural) + (1−λ)·p_kn) -> validation, generation, compare

The n-gram part is fitted by counting (`fit_counts`) on the training text;
its counts and the weights (buffers `mix_weights`, `mix_scheme`) travel in the
checkpoint with the network's weights.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from charlm.errors import CharlmError
from charlm.models.base import CharModel
from charlm.models.kn import KNModel
from charlm.models.registry import NETWORKS

# How `mix_weights` is indexed; the code is stored in the `mix_scheme` buffer.
SCHEMES = {"global": 0, "level": 1, "count": 2}
COUNT_BUCKETS = 15  # count buckets 0, 1, 2-3, ..., 2^13 and more
MIN_BUCKET = 200  # tuning positions a bucket needs for a weight of its own; smaller ones share one


def mixture_buckets(scheme: int, level: torch.Tensor, total: torch.Tensor, n_buckets: int) -> torch.Tensor:
    """Bucket of each position (same shape as `level`) from its context's (longest seen level, count)."""
    if scheme == SCHEMES["level"]:
        return level.long().clamp(0, n_buckets - 1)
    if scheme == SCHEMES["count"]:
        t = total.double()
        b = torch.where(t >= 1, torch.floor(torch.log2(t.clamp(min=1))) + 1, torch.zeros_like(t))
        return b.long().clamp(0, n_buckets - 1)
    return torch.zeros_like(level, dtype=torch.long)


class MixtureModel(CharModel):
    """Linear interpolation of a registered neural model (`--mix-neural`) and a KN n-gram (`--order`)."""

    counts_ngrams = True
    fast_targets = True

    def __init__(self, neural: nn.Module, kn: KNModel, weight: float):
        super().__init__()
        if not 0.0 <= weight <= 1.0:
            raise CharlmError(f"--mix-weight must lie in [0, 1], got {weight}")
        self.neural, self.kn = neural, kn
        self.register_buffer("mix_weights", torch.tensor([float(weight)], dtype=torch.float64))  # λ per bucket
        self.register_buffer("mix_scheme", torch.tensor([SCHEMES["global"]], dtype=torch.int64))

    @classmethod
    def from_config(cls, config, vocab_size: int) -> "MixtureModel":
        name = getattr(config, "mix_neural", "rnn")
        if name not in NETWORKS:
            raise CharlmError(f"--mix-neural must name a neural model ({', '.join(NETWORKS)}), got {name!r}")
        neural = NETWORKS[name].from_config(config, vocab_size)
        return cls(neural, KNModel.from_config(config, vocab_size), getattr(config, "mix_weight", 0.5))

    @classmethod
    def fit_recipe(cls, values: dict, config) -> dict:
        """The network part's own needs (a scratch network: no embedding, no tying)."""
        network = NETWORKS.get(getattr(config, "mix_neural", "rnn"))
        return network.fit_recipe(values, config) if network is not None else values

    @classmethod
    def recipe_words(cls, config, order_note: str = "") -> str:
        mixing = ("mixed by weights fitted per context count" if getattr(config, "mix_fit", None) == "count"
                  else f"mixed at λ {config.mix_weight:g}")
        return (f"{config.mix_neural} {config.hidden}" + (" tied" if config.tie_weights else "")
                + f", dropout {config.dropout:g} + {KNModel.recipe_words(config, order_note)}, {mixing}")

    def describe(self) -> str:
        return f"{self.neural.describe()} + KN {self.kn.describe()}, {self.extra_repr()}"

    @property
    def scheme(self) -> str:
        code = int(self.mix_scheme[0])
        return next(name for name, c in SCHEMES.items() if c == code)

    @property
    def weight(self) -> float:
        """The neural share λ when one weight serves every context (the mean over buckets otherwise)."""
        return float(self.mix_weights.mean())

    @weight.setter
    def weight(self, value: float) -> None:
        self.set_weights([float(value)], "global")

    def set_weights(self, weights, scheme: str = "global") -> None:
        """Use these λ (one per bucket of `scheme`), each in [0, 1]."""
        w = torch.as_tensor(weights, dtype=torch.float64).reshape(-1).cpu()
        if scheme not in SCHEMES or w.numel() < 1 or not bool(((w >= 0) & (w <= 1)).all()):
            raise CharlmError(f"mixture weights must lie in [0, 1] with a known scheme, got {scheme} {w.tolist()}")
        self.mix_weights = w.to(self.mix_weights.device)
        self.mix_scheme = torch.tensor([SCHEMES[scheme]], dtype=torch.int64, device=self.mix_scheme.device)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # Checkpoints from before fitted weights lack the buffers: keep the --mix-weight from their config.
        # Fitted ones may have more buckets than a freshly built model: take their shape.
        for name in ("mix_weights", "mix_scheme"):
            key = prefix + name
            if key not in state_dict:
                state_dict[key] = getattr(self, name)
            elif state_dict[key].shape != getattr(self, name).shape:
                setattr(self, name, torch.empty_like(state_dict[key], device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def fit_counts(self, train_indices, discounts=None, should_stop=None) -> bool:
        """Count the n-grams of the training text for the KN part (the network is trained by the trainer)."""
        return self.kn.fit_counts(train_indices, discounts, should_stop=should_stop)

    def tune(self, tune_indices, how: str = "none", device=None, log=None) -> dict | None:
        """Fit λ on the tuning slice (`fit_mixture`, --mix-fit): the mixture's and each part's tuning perplexity.

        None when `how` is "none" (λ stays as it is).
        """
        if how == "none":
            return None
        fitted = fit_mixture(self, tune_indices, device, how, log)
        return {"tune_ppl": fitted["mix_ppl"], "tune_neural_ppl": fitted["neural_ppl"],
                "tune_ngram_ppl": fitted["ngram_ppl"]}

    def begin_state(self, batch_size: int, device=None):
        return self.neural.begin_state(batch_size, device), self.kn.begin_state(batch_size, device)

    def _position_weights(self, stats) -> torch.Tensor:
        """λ of each position (B, T) float64 from the KN context stats."""
        level, total = stats
        buckets = mixture_buckets(int(self.mix_scheme[0]), level, total, self.mix_weights.numel())
        return self.mix_weights.to(level.device)[buckets]

    def forward(self, X: torch.Tensor, state):
        neural_state, context = state
        logits, neural_state = self.neural(X, neural_state)  # (B, T, V)
        if self.training:
            return logits, (neural_state, self.kn.advance(X, context))
        if int(self.mix_scheme[0]) == SCHEMES["global"]:
            kn_logp, context = self.kn(X, context)  # (B, T, V), already normalised
            weight = float(self.mix_weights[0])
            # log(λ p_n + (1-λ) p_kn) computed in log space; log 0 = -inf makes λ = 0 or 1 exact
            log_w = math.log(weight) if weight > 0 else -math.inf
            log_1mw = math.log1p(-weight) if weight < 1 else -math.inf
        else:
            kn_logp, stats, context = self.kn.forward_with_stats(X, context)
            w = self._position_weights(stats).to(logits.device)  # (B, T)
            log_w, log_1mw = torch.log(w).unsqueeze(-1).to(logits.dtype), torch.log1p(-w).unsqueeze(-1).to(logits.dtype)
        mixed = torch.logaddexp(F.log_softmax(logits, dim=-1) + log_w, kn_logp.to(logits.dtype) + log_1mw)
        return mixed, (neural_state, context)  # (B, T, V)

    def target_log_probs(self, X: torch.Tensor, Y: torch.Tensor, state):
        """log P_mix(Y[b, t] | ...) (B, T) float64 and the new state: the scoring fast path, no V-wide n-gram rows.

        Always the mixture (whatever the train/eval mode): call it under eval_mode for
        validation figures. Equals gathering Y from `forward`'s eval output (in float64).
        """
        neural_state, context = state
        logits, neural_state = self.neural(X, neural_state)  # (B, T, V)
        lp_n = F.log_softmax(logits.double(), dim=-1).gather(-1, Y.unsqueeze(-1)).squeeze(-1)  # (B, T)
        lp_k, stats, context = self.kn.target_log_probs(X, Y, context, with_stats=True)
        w = self._position_weights(stats).to(lp_n.device)
        return _mix_log(lp_n, lp_k.to(lp_n.device), w), (neural_state, context)

    def extra_repr(self) -> str:
        if int(self.mix_scheme[0]) == SCHEMES["global"]:
            return f"weight={float(self.mix_weights[0])}"
        return f"scheme={self.scheme}, weights={[round(w, 3) for w in self.mix_weights.tolist()]}"


def _mix_log(lp_n, lp_k, w):
    """log(w e^lp_n + (1-w) e^lp_k), exact at w = 0 and 1 (float64 tensors of one shape)."""
    return torch.logaddexp(lp_n + torch.log(w), lp_k + torch.log1p(-w))


# --------------------------------------------------------------------------- fitting the weights
def best_weight(lp_n: np.ndarray, lp_k: np.ndarray) -> float:
    """The λ in [0, 1] maximising sum log(λ p_n + (1-λ) p_k) over positions (a concave problem).

    The derivative sum (r-1)/(λ r + 1-λ) with r = p_n/p_k falls with λ, so λ = 0 or 1
    when it has one sign over [0, 1], else its root by bisection; the endpoints are
    compared at the end too, so the result is never worse than either part alone.
    """
    if lp_n.size == 0:
        return 0.5
    r = np.exp(np.clip(lp_n - lp_k, -700.0, 700.0))

    def slope(lam):
        return float(np.sum((r - 1.0) / (lam * r + 1.0 - lam)))

    if slope(0.0) <= 0:
        lam = 0.0
    elif slope(1.0) >= 0:
        lam = 1.0
    else:
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if slope(mid) > 0 else (lo, mid)
        lam = (lo + hi) / 2
    candidates = {lam, 0.0, 1.0}
    return max(candidates, key=lambda c: _total_log(lp_n, lp_k, c))


def _total_log(lp_n: np.ndarray, lp_k: np.ndarray, lam: float) -> float:
    with np.errstate(divide="ignore"):
        return float(np.logaddexp(lp_n + np.log(lam), lp_k + np.log1p(-lam)).sum())


def fit_bucket_weights(lp_n: np.ndarray, lp_k: np.ndarray, buckets: np.ndarray, n_buckets: int,
                       min_positions: int = MIN_BUCKET) -> np.ndarray:
    """One λ per bucket; buckets with fewer than `min_positions` positions share one λ fitted on them together.

    Each λ is optimal for its positions with 0 and 1 among the candidates, so the
    whole is never worse than the network alone or the n-gram alone on these positions.
    """
    sizes = np.bincount(buckets, minlength=n_buckets)
    weights = np.zeros(n_buckets)
    small = sizes < min_positions
    pooled = small[buckets]
    weights[small] = best_weight(lp_n[pooled], lp_k[pooled])
    for b in np.flatnonzero(~small):
        mask = buckets == b
        weights[b] = best_weight(lp_n[mask], lp_k[mask])
    return weights


def _neural_target_log_probs(neural: nn.Module, tune: torch.Tensor, chunk: int) -> np.ndarray:
    """log p_neural(tune[i+1] | tune[..i]) for i = 0..n-2, one stream, state carried, no dropout."""
    state = neural.begin_state(1, tune.device)
    out = []
    for j in range(0, tune.numel() - 1, chunk):
        Y = tune[j + 1:j + 1 + chunk].view(1, -1)
        X = tune[j:j + Y.shape[1]].view(1, -1)
        logits, state = neural(X, state)  # (1, steps, V)
        out.append(F.log_softmax(logits.detach().double(), -1).gather(-1, Y.unsqueeze(-1)).reshape(-1).cpu())
    return torch.cat(out).numpy()


def _ppl(logp: np.ndarray) -> float:
    return float(math.exp(-logp.mean())) if logp.size else math.nan


@torch.no_grad()
def fit_mixture(model: MixtureModel, tune_indices, device=None, how: str = "count", log=None,
                chunk: int = 1024) -> dict:
    """Fit the mixture's λ on the tuning slice and store them in the model (its `mix_weights` buffer).

    `how`: "none" changes nothing; "global" fits one λ; "count" one λ per bucket of
    the longest seen context's count (see the module docstring). Both parts are scored
    on `tune_indices` read as one stream from its first character (eval mode, the
    network's state carried across chunks); fitting maximises the mixture's
    likelihood there, with λ = 0 and 1 as candidates in every bucket, so the result
    is never worse on the slice than the better part. The counts and the network
    must not have seen the slice (count and train on the text before it).

    Returns {"neural_ppl", "ngram_ppl", "mix_ppl", "before_ppl" (with the weights it
    had), "weights", "scheme", "positions"}; for "none" only the weights and scheme.
    """
    if how not in ("none", "global", "count"):
        raise CharlmError(f"--mix-fit must be none, global or count, got {how!r}")
    if how == "none":
        return {"scheme": model.scheme, "weights": model.mix_weights.tolist()}
    tune = torch.as_tensor(np.asarray(tune_indices), dtype=torch.long)
    if tune.numel() < 2:
        raise CharlmError("the tuning slice needs at least 2 characters to fit the mixture weights")
    device = device or next(model.neural.parameters()).device
    was_training = model.training
    model.eval()
    try:
        lp_n = _neural_target_log_probs(model.neural, tune.to(device), chunk)
    finally:
        model.train(was_training)
    seq = tune.numpy()
    lp_k, level, total = model.kn.kn.stream_log_probs(seq[None, :-1], 0, seq[None, 1:], with_stats=True)
    lp_k, level, total = lp_k[0], torch.from_numpy(level[0]), torch.from_numpy(total[0])
    before = _mix_log(torch.from_numpy(lp_n), torch.from_numpy(lp_k),
                      model._position_weights((level, total)).cpu()).numpy()
    if how == "global":
        scheme, weights = "global", np.array([best_weight(lp_n, lp_k)])
    else:
        scheme, n = "count", COUNT_BUCKETS
        buckets = mixture_buckets(SCHEMES[scheme], level, total, n).numpy()
        weights = fit_bucket_weights(lp_n, lp_k, buckets, n)
    model.set_weights(weights, scheme)
    mixed = _mix_log(torch.from_numpy(lp_n), torch.from_numpy(lp_k), model._position_weights((level, total)).cpu())
    result = {"neural_ppl": _ppl(lp_n), "ngram_ppl": _ppl(lp_k), "mix_ppl": _ppl(mixed.numpy()),
              "before_ppl": _ppl(before), "weights": [float(w) for w in weights], "scheme": scheme,
              "positions": int(lp_n.size)}
    if log is not None:
        log(f"mixture fitted on {result['positions']:,} tuning positions ({scheme}): tune ppl {result['mix_ppl']:.3f} "
            f"(network {result['neural_ppl']:.3f}, n-gram {result['ngram_ppl']:.3f})")
    return result
