"""benchmarks/inference_levers.py: runs grouped by their name less the seed, and one rule for a gain."""
from __future__ import annotations

import pytest

from helpers import benchmark_module


@pytest.fixture(scope="module")
def levers():
    with benchmark_module("inference_levers") as module:
        yield module


def test_a_group_is_the_name_less_its_seed(levers):
    assert levers.group_name("tgcnet_deepsup@s2") == "tgcnet_deepsup"
    assert levers.group_name("tgcnet@m10@s1") == levers.group_name("tgcnet@m10") == "tgcnet@m10"
    assert levers.group_name("tgcnet@n75@s1@m4") == "tgcnet@n75@m4"
    assert levers.group_name("tgcnet@s12x") == "tgcnet@s12x"   # not a seed mark
    groups = levers.group_runs({"b@s1": 1, "a": 2, "b": 3})
    assert groups == {"b": {"b@s1": 1, "b": 3}, "a": {"a": 2}} and list(groups) == ["b", "a"]


def _stats(mean, sd):
    return {"mean": mean, "sd": sd}


def test_a_gain_must_beat_its_own_spread_and_the_seeds(levers):
    assert levers.beats_spread(_stats(0.02, 0.005), _stats(0.7, 0.01))
    assert not levers.beats_spread(_stats(0.02, 0.03), _stats(0.7, 0.01))    # the gain's own sd
    assert not levers.beats_spread(_stats(0.02, 0.005), _stats(0.7, 0.03))   # the seeds' sd
    assert not levers.beats_spread(_stats(-0.02, 0.005), _stats(0.7, 0.001))  # a loss
    assert not levers.beats_spread(_stats(0.02, None), _stats(0.7, None))    # one run has no spread
