"""benchmarks/threshold_lever.py: the threshold chosen on valid, its gain cross-validated so that choosing
on valid does not flatter it, and test scored at 0.5 exactly as ``tgcnet evaluate`` scores it."""
from __future__ import annotations

import json

import pytest
import torch

from helpers import BENCHMARKS, TINY_TRAIN_ARGS, benchmark_module
from tgcnet.cli import main as tgcnet_main
from tgcnet.data import sample_root
from tgcnet.engine import evaluate


@pytest.fixture(scope="module")
def lever():
    with benchmark_module("threshold_lever") as module:
        yield module


def _dice(lever, best: float, per_image: list[float]) -> dict[float, torch.Tensor]:
    """Per-image Dice at every threshold: ``per_image`` at ``best``, 0.1 less everywhere else."""
    values = torch.tensor(per_image, dtype=torch.float64)
    return {t: values if t == best else values - 0.1 for t in lever.THRESHOLDS}


def test_the_choice_is_the_best_mean_and_the_lowest_on_a_tie(lever):
    assert 0.5 in lever.THRESHOLDS
    dice = _dice(lever, 0.35, [0.8, 0.6, 0.7, 0.9])
    assert lever.best_threshold(dice, torch.arange(4)) == 0.35
    flat = {t: torch.ones(4, dtype=torch.float64) for t in lever.THRESHOLDS}
    assert lever.best_threshold(flat, torch.arange(4)) == min(lever.THRESHOLDS)


def test_the_valid_gain_is_scored_on_the_half_that_did_not_choose(lever):
    assert lever.cross_validated_gain(_dice(lever, 0.35, [0.8, 0.6, 0.7, 0.9])) == pytest.approx(0.1)
    assert lever.cross_validated_gain(_dice(lever, 0.5, [0.8, 0.6, 0.7, 0.9])) == pytest.approx(0.0)
    # the even images prefer 0.3, the odd ones 0.6: each half's choice costs the other half
    even, odd = torch.tensor([0.9, 0.5, 0.9, 0.5], dtype=torch.float64), torch.tensor([0.5, 0.9, 0.5, 0.9],
                                                                                      dtype=torch.float64)
    dice = {t: torch.full((4,), 0.7, dtype=torch.float64) for t in lever.THRESHOLDS}
    dice[0.3], dice[0.6] = even, odd
    in_sample = float(dice[lever.best_threshold(dice, torch.arange(4))].mean()) - 0.7
    assert in_sample == pytest.approx(0.0) and lever.cross_validated_gain(dice) == pytest.approx(-0.2)


def test_scores_trained_runs_and_writes_the_report(lever, tmp_path):
    runs = []
    for seed in (0, 1):
        run = tmp_path / ("tgcnet" + (f"@s{seed}" if seed else ""))
        assert tgcnet_main(["train", "--data", str(sample_root()), "--out", str(run), "--epochs", "1",
                            "--seed", str(seed), *TINY_TRAIN_ARGS]) == 0
        runs.append(str(run))
    out = tmp_path / "out"
    assert lever.main([*runs, "--data", str(sample_root()), "--out", str(out), "--threads", "0"]) == 0
    report = json.loads((out / "threshold_lever.json").read_text())
    assert report["thresholds"] == list(lever.THRESHOLDS) and list(report["runs"]) == ["tgcnet", "tgcnet@s1"]
    for tta in lever.TTAS:
        plain = evaluate(runs[0], sample_root(), "test", device="cpu", progress=False, tta=tta)
        scored = report["runs"]["tgcnet"][tta]
        assert scored["test"]["default"]["dice"] == pytest.approx(plain["dice"], abs=1e-12)
        assert scored["test"]["default"]["pooled_dice"] == pytest.approx(plain["pooled_dice"], abs=1e-12)
        assert scored["valid"]["threshold"] in lever.THRESHOLDS
        assert scored["valid"]["dice_at_threshold"] >= scored["valid"]["dice"]
    assert list(report["decisions"]) == ["tgcnet"]
    assert set(report["decisions"]["tgcnet"]) == set(lever.TTAS)
    md = (out / "threshold_lever.md").read_text()
    assert "| tgcnet@s1 | flip |" in md and "cross-validated valid gain" in md
    assert lever.main([str(tmp_path / "nothing"), "--out", str(out)]) == 2


def test_the_committed_report_is_its_json_rendered(lever):
    results = BENCHMARKS / "results"
    report = json.loads((results / "threshold_lever.json").read_text())
    assert report["thresholds"] == list(lever.THRESHOLDS)
    assert report["decisions"] == lever.decide_groups(report["runs"])
    assert (results / "threshold_lever.md").read_text() == lever.to_markdown(report)
