"""benchmarks.speed.report: the target ratios read from the one ``targets`` comparison, and n/a where a member
is missing."""
from __future__ import annotations

import pytest

from benchmarks.speed.report import ratios, targets


def _row(key: str, median: float) -> dict:
    model, mode = key.split("/")
    name, _, variant = model.partition(":")
    return {"key": key, "model": name, "mode": mode, "variant": variant or "default", "median_s": median}


def test_cached_training_target_row():
    comparison = {"members": [_row("tgcnet:feature_cache/train", 6 / 1.5), _row("clipseg/train", 6.0),
                              _row("tgcnet/train", 9.0), _row("method_core/train", 8.0)]}
    ratio = ratios(comparison)
    assert ratio["cached_train_throughput_over_clipseg"] == pytest.approx(1.5)
    assert ratio["train_throughput_over_clipseg"] == pytest.approx(6 / 9)
    assert ratio["train_over_method_core"] == pytest.approx(9 / 8)
    checks = {c["key"]: c["met"] for c in targets(ratio)}
    assert checks["cached_train_throughput_over_clipseg"] is True and checks["train_over_method_core"] is True
    assert "train_throughput_over_clipseg" not in checks      # shown as information, not a target
    assert checks["infer_over_floor"] is None                 # missing members: n/a, not a failure
