"""Synthetic qata-mini results: what ``benchmarks.accuracy.qata_mini`` writes per run, with chosen
Dice values, so the report, the levers and the figures are tested without training."""
from __future__ import annotations

from typing import Any, Callable, Optional

import pytest


def synthetic_result(key: str, dice: float, n: int = 600, seed: int = 0, curve: Optional[list] = None,
                     minutes: float = 30.0, val: Optional[float] = None, side_error: Optional[float] = None
                     ) -> dict[str, Any]:
    """A result as qata_mini writes it; its best validation Dice is ``val``, else ``dice``."""
    sides = 0 if side_error is None else 40
    return {"run": key, "test": {"dice": dice, "iou": dice / 2, "pooled_dice": dice + 0.05, "pooled_iou": dice / 2,
                                 "n_images": 300, "side_error": side_error, "side_error_n": sides},
            "trainable_params": 10, "total_params": 20, "budget_minutes": minutes, "train_seconds": 60.0 + dice,
            "epochs": 3, "steps": 30, "best_val_dice": dice if val is None else val, "best_epoch": 2, "seed": seed,
            "train_images": n, "val_curve": curve or [], "setup": {}}


def synthetic_report(results: dict[str, dict], **fields: Any) -> dict[str, Any]:
    """A qata_mini.json around ``results`` (its targets and notes computed as qata_mini computes them)."""
    from benchmarks.accuracy.qata_report import reasons, targets

    scored = targets(results)
    report = {"date": "2026-01-01 00:00", "commit": "abc1234", "data": "qata-mini", "n_train": 600, "n_valid": 150,
              "n_test": 300, "image_size": 224, "device": "cpu", "threads": 1, "torch": "x", "python": "3",
              "pretrained": None, "results": results, "targets": scored, "notes": reasons(results, scored, None)}
    return {**report, **fields}


@pytest.fixture
def result() -> Callable[..., dict[str, Any]]:
    return synthetic_result


@pytest.fixture
def report() -> Callable[..., dict[str, Any]]:
    return synthetic_report
