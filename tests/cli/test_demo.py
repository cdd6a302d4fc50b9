"""``tgcnet demo``: the embedded sample end to end."""
from __future__ import annotations

import json

import pytest

from tgcnet.cli.demo import run_demo


def test_demo_runs_end_to_end(tmp_path):
    result = run_demo(tmp_path / "demo", minutes=0.05, image_size=64, epochs=1, device="cpu", progress=False)
    m = result["metrics"]
    saved = json.loads((tmp_path / "demo" / "eval_test" / "metrics.json").read_text())
    assert m["n_images"] == 8 and (m["dice"], m["pooled_dice"]) == (saved["dice"], saved["pooled_dice"])
    assert result["n_overlays"] == 8 and len(list((tmp_path / "demo" / "overlays").glob("*_overlay.png"))) == 8
    assert (tmp_path / "demo" / "eval_test" / "metrics.json").is_file()
    with pytest.raises(ValueError, match="--force"):
        run_demo(tmp_path / "demo", minutes=0.05, image_size=64, epochs=1, device="cpu", progress=False)
