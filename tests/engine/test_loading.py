"""Finding a trained model: a run directory or a saved model, and its inference settings."""
from __future__ import annotations

import pytest

from tgcnet.engine.loading import resolve_checkpoint


def test_resolve_checkpoint(run_dir, tmp_path):
    model_dir, info = resolve_checkpoint(run_dir)
    assert model_dir == run_dir / "best" and info["image_size"] == 64 and info["knowledge"] == "none"
    assert resolve_checkpoint(run_dir / "best")[0] == run_dir / "best"
    with pytest.raises(FileNotFoundError, match="not found"):
        resolve_checkpoint(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="neither a saved model"):
        resolve_checkpoint(tmp_path)
