"""Spread over seeds, and the one rule for what counts as a finding.

A lever (a training change, flip TTA, a chosen threshold) is compared with its baseline over
several seeds. Seed-to-seed spread on qata-mini is as large as most effects worth having, so a
difference counts only where the two rows' ranges over seeds do not overlap: every seed of one
beats every seed of the other. The rule is strict on purpose: with three seeds a mean gain can
clear a standard deviation by chance, while no overlap at all cannot hide a seed that went the
other way. Every accuracy report decides with :func:`verdict` and states it with :data:`RULE`.
"""
from __future__ import annotations

import statistics
from typing import Any, Sequence

BETTER, WORSE, WITHIN = "better", "worse", "within the spread"

#: the rule in a report's words
RULE = (f'"{BETTER}" or "{WORSE}" where the two rows\' ranges over seeds do not overlap, '
        f'else "{WITHIN}"')


def mean_sd(values: Sequence[float]) -> dict[str, Any]:
    """``values``, their mean and sample standard deviation (None for a single value)."""
    values = list(values)
    return {"values": values, "mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else None}


def verdict(lever: Sequence[float], baseline: Sequence[float]) -> str:
    """:data:`BETTER` where every value of ``lever`` exceeds every value of ``baseline``, :data:`WORSE`
    where every one falls below, else :data:`WITHIN`. A row of a single value has no spread to
    exceed: within it."""
    if len(lever) < 2 or len(baseline) < 2:
        return WITHIN
    if min(lever) > max(baseline):
        return BETTER
    if max(lever) < min(baseline):
        return WORSE
    return WITHIN
