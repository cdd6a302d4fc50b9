"""The learning-rate schedule and the wall-clock budget it anneals over.

A time-bounded run (``--minutes``) must still anneal, so the schedule's end is whichever
comes first of the step count and the budget; the clock's elapsed time survives a resume
and, under torchrun, every rank reads rank 0's, so all see the same rate and stop together.
"""
from __future__ import annotations

import math
import time
from typing import Optional

import torch
import torch.distributed as dist

__all__ = ["lr_factor", "TrainingClock"]


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.0,
              time_fraction: float = 0.0) -> float:
    """Linear warmup to 1, then cosine to ``min_ratio`` at the end of training.

    "The end" is whichever comes first of ``total_steps`` and the wall-clock budget
    (``time_fraction`` of it used), so a time-bounded run still anneals.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, max((step - warmup_steps) / span, time_fraction))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class TrainingClock:
    """Wall-clock budget shared with the LR schedule; elapsed time survives a resume."""

    def __init__(self, budget_s: Optional[float], elapsed: float = 0.0) -> None:
        self.budget_s = budget_s
        self.offset = elapsed
        self.start = time.monotonic()
        self.synced = elapsed

    def elapsed(self) -> float:
        return self.offset + time.monotonic() - self.start

    def sync(self) -> None:
        """Agree on rank 0's time, so every rank sees the same LR and the same stop decision."""
        t = self.elapsed()
        if self.budget_s is not None and dist.is_available() and dist.is_initialized():
            box = torch.tensor([t], dtype=torch.float64)
            dist.broadcast(box, src=0)
            t = float(box.item())
        self.synced = t

    @property
    def fraction(self) -> float:
        return 0.0 if self.budget_s is None else min(1.0, self.synced / self.budget_s)

    @property
    def out_of_time(self) -> bool:
        return self.budget_s is not None and self.synced >= self.budget_s
