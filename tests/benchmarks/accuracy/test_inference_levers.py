"""benchmarks.accuracy.inference_levers: runs grouped by their name less the seed, a group's decision by the one
rule, and its verdict line."""
from __future__ import annotations

import pytest

from benchmarks.accuracy.inference_levers import decision, group_name, group_runs, verdict_line


def test_a_group_is_the_name_less_its_seed():
    assert group_name("tgcnet_deepsup@s2") == "tgcnet_deepsup"
    assert group_name("tgcnet@m10@s1") == group_name("tgcnet@m10") == "tgcnet@m10"
    assert group_name("tgcnet@n75@s1@m4") == "tgcnet@n75@m4"
    assert group_name("tgcnet@s12x") == "tgcnet@s12x"   # not a seed mark: a group of its own
    groups = group_runs({"b@s1": 1, "a": 2, "b": 3})
    assert groups == {"b": {"b@s1": 1, "b": 3}, "a": {"a": 2}} and list(groups) == ["b", "a"]


def test_a_decision_compares_the_ranges_and_its_line_says_so():
    steady = decision(["r", "r@s1", "r@s2"], [0.70, 0.71, 0.70], [0.72, 0.73, 0.72],
                      {"dice": [0.01, 0.02, 0.03], "pooled_dice": [0.0, 0.0, 0.03]})
    assert steady["verdict"] == "better" and steady["valid_gain"]["mean"] == pytest.approx(0.02)
    assert steady["valid_gain"]["sd"] == pytest.approx(0.0, abs=1e-12)
    assert verdict_line("`r`", steady, "valid gain", "with the lever") == (
        "- `r` (3 runs): valid gain +2.00 points (sd over runs 0.00); valid Dice over the runs 0.7000-0.7100 plain, "
        "0.7200-0.7300 with the lever; test gain per-image +2.00, pooled +1.00 points. Verdict: better.")
    # the same gain at every run, but seeds 5 points apart: the ranges overlap
    noisy = decision(["r", "r@s1", "r@s2"], [0.70, 0.75, 0.65], [0.72, 0.77, 0.67], {"dice": [0], "pooled_dice": [0]})
    assert noisy["verdict"] == "within the spread"
    one = decision(["r"], [0.70], [0.80], {"dice": [0.1], "pooled_dice": [0.1]})
    assert one["verdict"] == "within the spread" and "(sd over runs n/a)" in verdict_line("r", one, "gain", "lever")
