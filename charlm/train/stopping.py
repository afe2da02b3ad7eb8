"""When a run ends: its time budget, its epochs, or convergence judged part by part.

A mixture's tuning-slice perplexity is held nearly flat by its n-gram part while
the network part is still learning fast (on a sparse Markov text: the mixture at
9.2 for epochs on end while the network alone fell from 55 towards 10). So early
stopping counts an epoch as progress when the mixture improves *or* its network
part does, by the network's own tuning perplexity (`tune_neural_ppl`); best.pt is
still the epoch with the best mixture. A model without parts is judged by its
one figure, as before.
"""

from __future__ import annotations

import math

# The network part counts as improving when its tuning perplexity falls by more than this share: smaller steps
# are the last drift of a converged network, not learning.
MIN_GAIN = 1e-3


class Progress:
    """Epochs since the last progress (of the score or of the network part), and the network's best figure."""

    def __init__(self, patience: int, bad_epochs: int = 0, best_network: float | None = None):
        self.patience, self.bad_epochs = patience, bad_epochs
        self.best_network = math.inf if best_network is None else float(best_network)

    def update(self, score_improved: bool, record: dict) -> bool:
        """Note one epoch's record; True when its network part improved on its own (by more than MIN_GAIN)."""
        network = record.get("tune_neural_ppl")
        network_improved = network is not None and network < self.best_network * (1 - MIN_GAIN)
        if network is not None:
            self.best_network = min(self.best_network, network)
        self.bad_epochs = 0 if score_improved or network_improved else self.bad_epochs + 1
        return network_improved

    def converged(self) -> bool:
        return bool(self.patience) and self.bad_epochs >= self.patience

    def state(self) -> dict:
        return {"best_network_tune_ppl": None if math.isinf(self.best_network) else self.best_network}


def stop_reason(run, record: dict, out_of_time: bool, log) -> str | None:
    """Why the run ends after this epoch ("budget", "converged"), or None to go on; says it in one line."""
    config, result = run.config, run.result
    best = f"best validation perplexity {result.best_val_ppl:.3f} at epoch {result.best_epoch}"
    if out_of_time:
        log(f"time budget of {config.time_budget:g} min spent after {run.clock.done:,} minibatches: stopping ({best})")
        return "budget"
    if run.progress.converged():
        if record.get("tune_neural_ppl") is not None:
            which = "tuning-slice perplexity, of the mixture or of its network part alone,"
        else:
            which = "validation perplexity" if record.get("tune_ppl") is None else "tuning-slice perplexity"
        log(f"no better {which} for {config.patience} epochs: stopping early, converged ({best})")
        result.stopped_early = True
        return "converged"
    return None


def ending_line(config, reason: str, clock) -> str:
    """The line that says how training ended: converged, budget or epochs, and how much of the budget it used."""
    minutes = clock.elapsed() / 60
    used = f"{minutes:.1f} of {config.time_budget:g} min ({minutes / config.time_budget:.0%})" \
        if config.time_budget else f"{minutes:.1f} min"
    words = {"converged": "converged (the network part stopped improving)", "budget": "budget spent",
             "epochs": f"all {config.epochs} epochs done"}
    return f"training ended: {words.get(reason, reason)}; {used}"
