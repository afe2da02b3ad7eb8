"""A training time budget: time the first minibatches, plan how many steps fit, and lay the learning rate over them.

    |-- measure --|---------------- planned steps ----------------|
    lr: warm up    cosine decay from lr to lr * FLOOR at the planned last step

The plan is remade after every epoch from the rate measured so far (evaluation
included), so a machine that gets busier or quieter moves the end of the
schedule, not the end of the budget. Training stops (mid-epoch if need be) once
the elapsed time plus one evaluation would pass the budget.
"""

from __future__ import annotations

import math
import time

import torch

MEASURE_STEPS = 20  # minibatches timed before the first plan
WARMUP_STEPS = 20
FLOOR = 0.05  # the cosine ends at 5% of the peak rate, not 0: the last steps still learn a little


class Budget:
    """Elapsed time, planned steps and the per-step learning-rate factor of one run.

    `minutes` 0 means no time limit; `max_steps` (epochs x minibatches) bounds the
    plan either way. `cosine` False keeps the rate constant (after warm-up).
    """

    def __init__(self, minutes: float, max_steps: int, cosine: bool, saved: dict | None = None,
                 frozen: bool = False):
        self.seconds = minutes * 60.0
        self.max_steps, self.cosine = max_steps, cosine
        saved = saved or {}
        self.done = int(saved.get("done", 0))
        self.planned = int(saved.get("planned", max_steps if not self.seconds else 0))
        # A run extended on resume (more --epochs): the cosine keeps the length it was planned with and
        # the steps after its end hold the floor rate; never re-planned, so the rate cannot climb back.
        self.frozen = bool(frozen or saved.get("frozen"))
        if self.frozen and not self.planned:
            self.planned = max_steps
        self.spent = float(saved.get("elapsed", 0.0))  # from earlier sessions of a resumed run
        self.eval_seconds = float(saved.get("eval_seconds", 0.0))
        self.began = time.perf_counter()
        self._measure_from = (self.done, self.began)

    def elapsed(self) -> float:
        return self.spent + time.perf_counter() - self.began

    def over(self) -> bool:
        """True once the time is spent, keeping back the time one more evaluation takes (the epochs end on their own)."""
        return bool(self.seconds) and self.elapsed() + self.eval_seconds >= self.seconds

    def step(self) -> None:
        """Count one finished minibatch; plan as soon as the first ones are timed."""
        self.done += 1
        if self.seconds and not self.planned and self.done - self._measure_from[0] >= MEASURE_STEPS:
            self.plan()

    def plan(self) -> None:
        """Planned steps = steps done + what the remaining time allows at the rate measured so far."""
        if not self.seconds or self.frozen:
            return
        steps, since = self._measure_from
        rate = (self.done - steps) / max(time.perf_counter() - since, 1e-9)  # steps per second, evaluation included
        left = self.seconds - self.elapsed() - self.eval_seconds
        self.planned = int(min(self.max_steps, self.done + max(0.0, left) * rate))

    def after_epoch(self, eval_seconds: float) -> None:
        self.eval_seconds = max(self.eval_seconds, eval_seconds)
        if self.seconds and self.planned:
            self.plan()

    def lr_factor(self) -> float:
        """The multiplier of the base learning rate for the next step."""
        if not self.cosine:
            return 1.0
        warm = min(1.0, (self.done + 1) / WARMUP_STEPS)
        if not self.planned:
            return warm
        progress = min(1.0, self.done / max(self.planned, 1))
        return warm * (FLOOR + (1 - FLOOR) * 0.5 * (1 + math.cos(math.pi * progress)))

    def state(self) -> dict:
        state = {"done": self.done, "planned": self.planned, "elapsed": round(self.elapsed(), 3),
                 "eval_seconds": self.eval_seconds}
        return {**state, "frozen": True} if self.frozen else state


def step_epoch_schedule(scheduler, optimizer) -> None:
    """Step a per-epoch schedule; a cosine past its length (a run extended on resume) holds the floor rate.

    The floor is FLOOR x --lr, the rate a time-budgeted cosine ends at, so both kinds continue alike.
    """
    scheduler.step()
    hold_floor(scheduler, optimizer)


def hold_floor(scheduler, optimizer) -> None:
    """Past a cosine's last epoch: FLOOR x --lr (not the cosine's 0, and never back up its next period)."""
    if isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR) and scheduler.last_epoch >= scheduler.T_max:
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = base * FLOOR
