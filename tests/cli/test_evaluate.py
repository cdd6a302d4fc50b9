"""``tgcnet evaluate``: the best checkpoint re-scores the validation Dice it was selected for."""
from __future__ import annotations

import json

import pytest

from helpers import TINY_TRAIN_ARGS as TINY
from tgcnet.cli import main
from tgcnet.data import sample_root

SAMPLE = str(sample_root())


def test_evaluate_reports_the_best_epoch(tmp_path):
    """The best/ checkpoint re-evaluated on valid gives the validation Dice it was selected for."""
    run = tmp_path / "run"
    assert main(["train", "--data", SAMPLE, "--out", str(run), "--epochs", "2", "--lr", "3e-3", *TINY]) == 0
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    best = max(log, key=lambda e: e["val_dice"])
    assert main(["evaluate", "--checkpoint", str(run), "--data", SAMPLE, "--split", "valid",
                 "--out", str(tmp_path / "ev")]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["dice"] == pytest.approx(best["val_dice"], abs=1e-9)
    assert metrics["pooled_dice"] == pytest.approx(best["val_pooled_dice"], abs=1e-9)


def test_evaluate_and_predict_take_tta(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--data", SAMPLE, "--out", str(run), "--epochs", "1", *TINY]) == 0
    assert main(["evaluate", "--checkpoint", str(run), "--data", SAMPLE, "--tta", "flip",
                 "--out", str(tmp_path / "ev")]) == 0
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["tta"] == "flip"
    test = sample_root() / "test"
    assert main(["predict", "--checkpoint", str(run), "--out", str(tmp_path / "pred"), "--tta", "flip",
                 "--images", str(test / "images"), "--captions", str(test / "prompts.csv")]) == 0
    assert len(list((tmp_path / "pred").glob("*_mask.png"))) == 8
    assert main(["evaluate", "--checkpoint", str(run), "--data", SAMPLE, "--tta", "rotate"]) == 2
