"""benchmarks/tta_lever.py: flip TTA scored on valid and test of trained runs, decided per group of seeds,
and called a gain only when it beats both the spread of the gain and the seed-to-seed spread."""
from __future__ import annotations

import json

import pytest

from helpers import BENCHMARKS, TINY_TRAIN_ARGS, benchmark_module
from tgcnet.cli import main as tgcnet_main
from tgcnet.data import sample_root


@pytest.fixture(scope="module")
def lever():
    with benchmark_module("tta_lever") as module:
        yield module


def _run(valid: tuple[float, float], test: tuple[float, float] = (0.5, 0.5)) -> dict:
    return {"valid": {"none": {"dice": valid[0], "pooled_dice": valid[0]},
                      "flip": {"dice": valid[1], "pooled_dice": valid[1]}},
            "test": {"none": {"dice": test[0], "pooled_dice": test[0]},
                     "flip": {"dice": test[1], "pooled_dice": test[1]}}}


def test_a_gain_counts_only_beyond_both_spreads(lever):
    steady = {"s0": _run((0.70, 0.72)), "s1": _run((0.71, 0.73)), "s2": _run((0.70, 0.72))}
    assert lever.decide(steady)["beats_spread"]
    noisy = {"s0": _run((0.70, 0.72)), "s1": _run((0.75, 0.77)), "s2": _run((0.65, 0.67))}   # seeds differ by 5
    assert not lever.decide(noisy)["beats_spread"]
    mixed = {"s0": _run((0.70, 0.74)), "s1": _run((0.70, 0.69)), "s2": _run((0.70, 0.70))}   # gain sd > mean
    assert not lever.decide(mixed)["beats_spread"]
    assert not lever.decide({"s0": _run((0.70, 0.80))})["beats_spread"]   # one run has no spread


def test_runs_are_decided_per_group_of_seeds(lever):
    runs = {"a": _run((0.70, 0.72)), "a@s1": _run((0.71, 0.73)), "b": _run((0.70, 0.69)),
            "b@s1": _run((0.71, 0.70))}
    decisions = lever.decide_groups(runs)
    assert list(decisions) == ["a", "b"]
    assert decisions["a"]["runs"] == ["a", "a@s1"] and decisions["a"]["beats_spread"]
    assert not decisions["b"]["beats_spread"]


def test_scores_trained_runs_and_writes_the_report(lever, tmp_path):
    runs = []
    for seed in (0, 1):
        run = tmp_path / f"tgcnet@s{seed}"
        assert tgcnet_main(["train", "--data", str(sample_root()), "--out", str(run), "--epochs", "1",
                            "--seed", str(seed), *TINY_TRAIN_ARGS]) == 0
        runs.append(str(run))
    assert lever.main([*runs, "--data", str(sample_root()), "--out", str(tmp_path / "out"), "--threads", "0"]) == 0
    report = json.loads((tmp_path / "out" / "tta_lever.json").read_text())
    assert list(report["runs"]) == ["tgcnet@s0", "tgcnet@s1"]
    for scores in report["runs"].values():
        assert set(scores) == {"valid", "test", "commit", "date", "machine"}
        assert all(set(scores[split]) == {"none", "flip"} for split in ("valid", "test"))
        assert all(0 <= m <= 1 for split in ("valid", "test") for tta in scores[split].values() for m in tta.values())
    assert list(report["decisions"]) == ["tgcnet"] and report["decisions"]["tgcnet"]["runs"] == ["tgcnet@s0", "tgcnet@s1"]
    md = (tmp_path / "out" / "tta_lever.md").read_text()
    assert "| tgcnet@s1 |" in md and "Verdict:" in md

    # --merge adds runs to the report already there; a run scored again replaces its row
    again = str(tmp_path / "tgcnet@s1")
    assert lever.main([again, "--data", str(sample_root()), "--out", str(tmp_path / "out"), "--threads", "0",
                       "--merge"]) == 0
    merged = json.loads((tmp_path / "out" / "tta_lever.json").read_text())
    assert list(merged["runs"]) == ["tgcnet@s0", "tgcnet@s1"]
    assert merged["runs"]["tgcnet@s0"] == report["runs"]["tgcnet@s0"]
    assert lever.main([again, "--data", str(sample_root()), "--out", str(tmp_path / "out"), "--threads", "0"]) == 0
    assert list(json.loads((tmp_path / "out" / "tta_lever.json").read_text())["runs"]) == ["tgcnet@s1"]
    assert lever.main([str(tmp_path / "nothing"), "--out", str(tmp_path / "out")]) == 2


def test_the_committed_report_is_its_json_rendered(lever):
    results = BENCHMARKS / "results"
    report = json.loads((results / "tta_lever.json").read_text())
    assert report["decisions"] == lever.decide_groups(report["runs"])
    assert (results / "tta_lever.md").read_text() == lever.to_markdown(report)
