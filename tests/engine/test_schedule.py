"""The learning-rate schedule: warmup, cosine, and the wall-clock budget it anneals over."""
from __future__ import annotations

import pytest

from tgcnet.engine.schedule import TrainingClock, lr_factor


def test_lr_schedule_warmup_then_cosine():
    f = [lr_factor(s, total_steps=10, warmup_steps=2, min_ratio=0.1) for s in range(11)]
    assert f[0] == pytest.approx(0.5) and f[1] == pytest.approx(1.0) and f[2] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[2:], f[3:]))  # monotone decay after warmup
    assert f[10] == pytest.approx(0.1)
    # a wall-clock budget half used anneals at least half way
    assert lr_factor(3, 100, 2, 0.0, time_fraction=0.5) == pytest.approx(0.5)


def test_clock_keeps_elapsed_time_across_a_resume_and_reads_its_budget():
    clock = TrainingClock(budget_s=100.0, elapsed=40.0)
    assert clock.elapsed() >= 40.0
    clock.sync()
    assert 0.4 <= clock.fraction < 0.5 and not clock.out_of_time
    clock = TrainingClock(budget_s=100.0, elapsed=100.0)
    clock.sync()
    assert clock.fraction == 1.0 and clock.out_of_time
    unbounded = TrainingClock(budget_s=None, elapsed=1e9)
    unbounded.sync()
    assert unbounded.fraction == 0.0 and not unbounded.out_of_time
