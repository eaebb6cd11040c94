"""Divergence guard: decides when a run has gone bad enough to roll back to a checkpoint.

A step is bad when its loss is not finite or exceeds `spike_factor` x the running mean of
recent good losses. After `patience` bad steps in a row the loop restores the last checkpoint
and skips the data batches seen since (they are what led here); after `max_rollbacks` such
rollbacks the run stops, since retrying is no longer helping. Its state travels in each
checkpoint, so restarts change none of these decisions.
"""

from __future__ import annotations

import math
from llmjax.errors import LlmjaxError


class DivergenceError(LlmjaxError, RuntimeError):
    """The run kept diverging after the allowed number of rollbacks."""


class DivergenceGuard:
    def __init__(self, spike_factor: float, patience: int, max_rollbacks: int,
                 warmup_steps: int = 20, decay: float = 0.95):
        self.spike_factor, self.patience, self.max_rollbacks = spike_factor, patience, max_rollbacks
        self.warmup_steps, self.decay = warmup_steps, decay
        self.mean, self.good_steps, self.bad_streak, self.rollbacks = None, 0, 0, 0

    def is_bad(self, loss: float) -> bool:
        if not math.isfinite(loss):
            return True
        spiking = (self.spike_factor > 0 and self.good_steps >= self.warmup_steps
                   and loss > self.spike_factor * self.mean)
        return spiking

    def observe(self, loss: float) -> bool:
        """Records one step's loss; True means: roll back now."""
        if self.is_bad(loss):
            self.bad_streak += 1
        else:
            self.bad_streak = 0
            self.good_steps += 1
            self.mean = loss if self.mean is None else self.decay * self.mean + (1 - self.decay) * loss
        return self.bad_streak >= self.patience

    def state(self) -> dict:
        """What a checkpoint records, so that a resumed run judges its next steps exactly as the
        uninterrupted run would: the same running mean, and no fresh rollback budget."""
        return {"mean": self.mean, "good_steps": self.good_steps, "bad_streak": self.bad_streak,
                "rollbacks": self.rollbacks}

    def load(self, state: dict | None) -> None:
        """Continues from `state()` of a checkpoint (checkpoints older than it start afresh)."""
        for key, value in (state or {}).items():
            setattr(self, key, value)

    @property
    def healthy(self) -> bool:
        """Whether the current params are trustworthy enough to checkpoint."""
        return self.bad_streak == 0

    def rolled_back(self) -> None:
        self.rollbacks += 1
        self.bad_streak = 0
        if self.rollbacks > self.max_rollbacks:
            raise DivergenceError(
                f"the loss diverged again after {self.max_rollbacks} rollbacks; stopping. Lower "
                f"optimizer.learning_rate, raise optimizer.warmup_steps or check the data, then "
                f"rerun (it resumes from the last checkpoint).")
