"""benchmarks.accuracy.threshold_lever: the threshold chosen on valid, its gain cross-validated so that choosing on
valid does not flatter it, test scored at 0.5 exactly as ``tgcnet evaluate`` scores it, and the report rendered
from the scores alone."""
from __future__ import annotations

import json

import pytest
import torch

from benchmarks.accuracy import threshold_lever as lever
from helpers import TINY_TRAIN_ARGS
from tgcnet.cli import main as tgcnet_main
from tgcnet.data import sample_root
from tgcnet.engine import evaluate


def _dice(best: float, per_image: list[float]) -> dict[float, torch.Tensor]:
    """Per-image Dice at every threshold: ``per_image`` at ``best``, 0.1 less everywhere else."""
    values = torch.tensor(per_image, dtype=torch.float64)
    return {t: values if t == best else values - 0.1 for t in lever.THRESHOLDS}


def test_the_choice_is_the_best_mean_and_the_lowest_on_a_tie():
    assert 0.5 in lever.THRESHOLDS
    dice = _dice(0.35, [0.8, 0.6, 0.7, 0.9])
    assert lever.best_threshold(dice, torch.arange(4)) == 0.35
    flat = {t: torch.ones(4, dtype=torch.float64) for t in lever.THRESHOLDS}
    assert lever.best_threshold(flat, torch.arange(4)) == min(lever.THRESHOLDS)


def test_the_valid_gain_is_scored_on_the_half_that_did_not_choose():
    assert lever.cross_validated_gain(_dice(0.35, [0.8, 0.6, 0.7, 0.9])) == pytest.approx(0.1)
    assert lever.cross_validated_gain(_dice(0.5, [0.8, 0.6, 0.7, 0.9])) == pytest.approx(0.0)
    # the even images prefer 0.3, the odd ones 0.6: each half's choice costs the other half
    even, odd = torch.tensor([0.9, 0.5, 0.9, 0.5], dtype=torch.float64), torch.tensor([0.5, 0.9, 0.5, 0.9],
                                                                                      dtype=torch.float64)
    dice = {t: torch.full((4,), 0.7, dtype=torch.float64) for t in lever.THRESHOLDS}
    dice[0.3], dice[0.6] = even, odd
    in_sample = float(dice[lever.best_threshold(dice, torch.arange(4))].mean()) - 0.7
    assert in_sample == pytest.approx(0.0) and lever.cross_validated_gain(dice) == pytest.approx(-0.2)


def _scored(valid: float, cv_gain: float, threshold: float = 0.4) -> dict:
    cut = {"valid": {"threshold": threshold, "dice": valid, "dice_at_threshold": valid + 0.01, "cv_gain": cv_gain},
           "test": {"default": {"dice": 0.6, "pooled_dice": 0.7}, "chosen": {"dice": 0.61, "pooled_dice": 0.69}}}
    return {"none": cut, "flip": cut, "commit": "abc1234", "date": "2026-01-01 00:00", "machine": "x86_64"}


def test_the_report_compares_the_cross_validated_choice_with_the_default():
    runs = {"a": _scored(0.70, 0.02), "a@s1": _scored(0.71, 0.03), "b": _scored(0.70, -0.001),
            "b@s1": _scored(0.72, 0.001)}
    decided = lever.decide_groups(runs)
    assert [decided[g][tta]["verdict"] for g in ("a", "b") for tta in lever.TTAS] == [
        "better", "better", "within the spread", "within the spread"]
    md = lever.to_markdown({"data": "qata-mini", "thresholds": list(lever.THRESHOLDS), "runs": runs})
    assert "Written by `python -m benchmarks.accuracy.threshold_lever`." in md
    assert ("| a@s1 | flip | 0.4 | 0.7100 | 0.7200 | +3.00 | 0.6000 | 0.6100 | 0.7000 | 0.6900 | "
            "abc1234, 2026-01-01 00:00, x86_64 |") in md
    assert ("- `a`, TTA none (2 runs): cross-validated valid gain +2.50 points (sd over runs 0.71); valid Dice over "
            "the runs 0.7000-0.7100 plain, 0.7200-0.7400 at the cross-validated choice; test gain per-image +1.00, "
            "pooled -1.00 points. Verdict: better.") in md


def test_scores_trained_runs_and_writes_the_report(tmp_path):
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
        assert scored["valid"]["dice_at_threshold"] >= scored["valid"]["dice"]   # 0.5 was a candidate
    md = (out / "threshold_lever.md").read_text()
    assert md == lever.to_markdown(report) and "| tgcnet@s1 | flip |" in md
    assert md.count("- `tgcnet`, TTA ") == 2
    assert lever.main([str(tmp_path / "nothing"), "--out", str(out)]) == 2
