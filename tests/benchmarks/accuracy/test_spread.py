"""benchmarks.accuracy.spread: the one rule for a finding, ranges over seeds that do not overlap."""
from __future__ import annotations

import pytest

from benchmarks.accuracy.spread import BETTER, WITHIN, WORSE, mean_sd, verdict


def test_a_lever_counts_only_where_the_ranges_do_not_overlap():
    assert verdict([0.73, 0.74, 0.75], [0.70, 0.71, 0.72]) == BETTER
    assert verdict([0.70, 0.71], [0.72, 0.73, 0.74]) == WORSE
    assert verdict([0.72, 0.74, 0.76], [0.70, 0.71, 0.725]) == WITHIN     # one seed of each inside the other's range
    assert verdict([0.73, 0.74], [0.70, 0.73]) == WITHIN                  # touching is overlapping


def test_a_single_value_has_no_spread_to_exceed():
    assert verdict([0.90], [0.70, 0.71]) == WITHIN and verdict([0.90], [0.70]) == WITHIN


def test_mean_sd():
    assert mean_sd([0.5, 0.7]) == {"values": [0.5, 0.7], "mean": pytest.approx(0.6),
                                   "sd": pytest.approx(0.1414, abs=1e-4)}
    assert mean_sd((0.5,))["sd"] is None
